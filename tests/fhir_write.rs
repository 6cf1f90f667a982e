//! FHIR writes end to end on both backends: create, update, conditional create, If-Match and
//! transaction Bundles of Patient and ServiceRequest go through `mappings/fhir/` and the same
//! append path as HL7 messages, so the events are in the store, the read models answer with
//! what was written, and an HL7 feed and the FHIR API keep one truth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http;
use ferry::app::App;
use ferry::config::Settings;
use ferry::hl7::ack::{AckCode, summarize_ack};
use ferry::mllp::client::MllpClient;
use serde_json::{Value, json};

const TENANT: &str = "hospital-w";
const TIMEOUT: Duration = Duration::from_secs(20);
const SYSTEM: &str = "urn:oid:1.2.276.0.76.4.17";

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn settings(url: &str) -> Settings {
    common::app_settings(url, TENANT)
}

fn fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(manifest("fixtures/fhir").join(name)).unwrap()).unwrap()
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> common::HttpResponse {
    let mut h = vec![("Content-Type", "application/fhir+json")];
    h.extend_from_slice(headers);
    http(addr, method, path, &h, body.to_string().as_bytes()).await
}

fn assert_outcome(r: &common::HttpResponse, status: u16, expression: Option<&str>) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let outcome = r.json();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    if let Some(e) = expression {
        assert_eq!(outcome["issue"][0]["expression"][0], e, "{outcome}");
    }
    outcome
}

async fn search(addr: SocketAddr, query: &str) -> Value {
    let r = http(addr, "GET", &format!("/fhir/{query}"), &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn writes_go_through_mappings_and_the_store(url: String) {
    let app = App::start(&settings(&url)).await.unwrap();
    let addr = app.http_addr;

    // Create: 201 with Location, ETag and the resource as the projection rendered it.
    let created = send(
        addr,
        "POST",
        "/fhir/Patient",
        &[],
        &fixture("patient_create.json"),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let patient = created.json();
    let id = patient["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.header("location").unwrap(),
        format!("http://ferry.test/fhir/Patient/{id}/_history/1")
    );
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    assert_eq!(patient["meta"]["versionId"], "1");
    assert_eq!(patient["name"][0]["family"], "Brenner");
    assert_eq!(patient["name"][0]["given"], json!(["Lena", "Marie"]));
    assert_eq!(patient["birthDate"], "1984-07-21");
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["identifier"][0]["system"], SYSTEM);
    assert_eq!(patient["identifier"][0]["value"], "FHIR-4711");
    assert_eq!(patient["address"][0]["city"], "Berlin");
    let read = http(addr, "GET", &format!("/fhir/Patient/{id}"), &[], b"").await;
    assert_eq!(read.json(), patient);
    let found = search(addr, &format!("Patient?identifier={SYSTEM}%7CFHIR-4711")).await;
    assert_eq!(found["total"], 1);

    // The event is in the store, on the patient's stream, with where it came from.
    let events = app
        .store
        .read_stream(TENANT, &format!("patient-{id}"))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "PatientRegistered");
    assert_eq!(events[0].metadata["channel"], "fhir");
    assert_eq!(
        events[0].metadata["mapping"],
        "patient_create.patient_registered"
    );
    assert_eq!(
        events[0].payload["patient"]["identifiers"][0]["value"],
        "FHIR-4711"
    );

    // The same identifier again: 409. Conditionally: the existing one, nothing new.
    let again = send(
        addr,
        "POST",
        "/fhir/Patient",
        &[],
        &fixture("patient_create.json"),
    )
    .await;
    assert_outcome(&again, 409, None);
    let criteria = format!("identifier={SYSTEM}|FHIR-4711");
    let conditional = send(
        addr,
        "POST",
        "/fhir/Patient",
        &[("If-None-Exist", &criteria)],
        &fixture("patient_create.json"),
    )
    .await;
    assert_eq!(conditional.status, 200, "{}", conditional.body);
    assert_eq!(conditional.json()["id"], id.as_str());
    // A conditional create whose criteria match nothing creates.
    let mut other = fixture("patient_create.json");
    other["identifier"] = json!([{ "system": SYSTEM, "value": "FHIR-4799" }]);
    let fresh = send(
        addr,
        "POST",
        "/fhir/Patient",
        &[("If-None-Exist", &format!("identifier={SYSTEM}|FHIR-4799"))],
        &other,
    )
    .await;
    assert_eq!(fresh.status, 201, "{}", fresh.body);
    // Criteria matching two: 412.
    let two = send(
        addr,
        "POST",
        "/fhir/Patient",
        &[("If-None-Exist", "family=Brenner")],
        &fixture("patient_create.json"),
    )
    .await;
    assert_outcome(&two, 412, None);
    // Unknown criteria are an error, not a silent create.
    let bad = send(
        addr,
        "POST",
        "/fhir/Patient",
        &[("If-None-Exist", "shoe-size=44")],
        &fixture("patient_create.json"),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Update with If-Match: 200 and version 2; the stale version again: 412, nothing written.
    let mut update = fixture("patient_update.json");
    update["id"] = json!(id);
    let path = format!("/fhir/Patient/{id}");
    let updated = send(addr, "PUT", &path, &[("If-Match", "W/\"1\"")], &update).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.header("etag"), Some("W/\"2\""));
    let body = updated.json();
    assert_eq!(body["name"][0]["family"], "Brenner-Kraus");
    assert_eq!(body["deceasedDateTime"], "2026-11-20T08:15:00+01:00");
    let stale = send(addr, "PUT", &path, &[("If-Match", "W/\"1\"")], &update).await;
    assert_outcome(&stale, 412, None);
    let current = http(addr, "GET", &path, &[], b"").await.json();
    assert_eq!(current["meta"]["versionId"], "2");
    // Without If-Match an update applies to the current version.
    update["name"][0]["given"] = json!(["Lena", "M."]);
    let plain = send(addr, "PUT", &path, &[], &update).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(plain.json()["meta"]["versionId"], "3");
    // Ids Ferry did not assign, mismatched ids and bad bodies.
    let mut unknown = update.clone();
    unknown["id"] = json!("no-such-patient");
    assert_outcome(
        &send(addr, "PUT", "/fhir/Patient/no-such-patient", &[], &unknown).await,
        404,
        None,
    );
    assert_outcome(
        &send(addr, "PUT", "/fhir/Patient/other-id", &[], &update).await,
        400,
        Some("Patient.id"),
    );
    assert_outcome(
        &send(addr, "PUT", &path, &[("If-Match", "yesterday")], &update).await,
        400,
        Some("If-Match"),
    );
    let bad_gender = fixture("patient_bad_gender.json");
    let before = app.store.counts().await.unwrap();
    assert_outcome(
        &send(addr, "POST", "/fhir/Patient", &[], &bad_gender).await,
        400,
        Some("Patient.gender"),
    );
    // A refused write is kept in the inbound log (with its reason), and writes no event.
    let after = app.store.counts().await.unwrap();
    assert_eq!(after.inbound, before.inbound + 1);
    assert_eq!(after.events, before.events);
    let wrong_type = send(
        addr,
        "POST",
        "/fhir/Patient",
        &[],
        &json!({"resourceType": "Observation"}),
    )
    .await;
    assert_outcome(&wrong_type, 400, Some("Patient.resourceType"));
    let not_json = http(addr, "POST", "/fhir/Patient", &[], b"{\"resourceType\": ").await;
    assert_outcome(&not_json, 400, None);
    assert_outcome(
        &send(
            addr,
            "POST",
            "/fhir/Encounter",
            &[],
            &json!({"resourceType": "Encounter"}),
        )
        .await,
        405,
        None,
    );

    // ServiceRequest for that patient: an order event with the patient's identifiers.
    let mut order = fixture("servicerequest_create.json");
    order["subject"] = json!({ "reference": format!("Patient/{id}") });
    let placed = send(addr, "POST", "/fhir/ServiceRequest", &[], &order).await;
    assert_eq!(placed.status, 201, "{}", placed.body);
    let sr = placed.json();
    let sr_id = sr["id"].as_str().unwrap().to_owned();
    assert_eq!(sr["subject"]["reference"], format!("Patient/{id}"));
    assert_eq!(sr["status"], "active");
    assert_eq!(sr["priority"], "urgent");
    assert_eq!(sr["code"]["coding"][0]["code"], "24627-2");
    assert_eq!(sr["identifier"][0]["value"], "ORD-2026-0042");
    assert_eq!(sr["category"][0]["coding"][0]["code"], "CT");
    let events = app
        .store
        .read_stream(TENANT, &format!("order-{sr_id}"))
        .await
        .unwrap();
    assert_eq!(events[0].event_type, "OrderPlaced");
    assert_eq!(events[0].payload["order"]["control"], "NW");
    assert_eq!(
        events[0].payload["patient"]["identifiers"][0]["value"],
        "FHIR-4711"
    );
    assert_eq!(
        events[0].metadata["streams"]["patient"],
        format!("patient-{id}")
    );
    let by_patient = search(addr, &format!("ServiceRequest?patient={id}")).await;
    assert_eq!(by_patient["total"], 1);
    assert_eq!(sr["requisition"]["value"], "REQ-2026-0007");
    let by_requisition = search(
        addr,
        &format!("ServiceRequest?requisition={SYSTEM}.3%7CREQ-2026-0007"),
    )
    .await;
    assert_eq!(by_requisition["total"], 1, "{by_requisition}");

    // A subject Ferry does not hold, or none at all: 422 at the element.
    let mut orphan = fixture("servicerequest_create.json");
    orphan["subject"] = json!({ "reference": "Patient/example" });
    orphan["identifier"][0]["value"] = json!("ORD-ORPHAN");
    assert_outcome(
        &send(addr, "POST", "/fhir/ServiceRequest", &[], &orphan).await,
        422,
        Some("ServiceRequest.subject.reference"),
    );
    assert_outcome(
        &send(
            addr,
            "POST",
            "/fhir/ServiceRequest",
            &[],
            &fixture("servicerequest_no_subject.json"),
        )
        .await,
        422,
        Some("ServiceRequest.subject"),
    );

    // An order cannot move to another patient by an update.
    let other_id = fresh.json()["id"].as_str().unwrap().to_owned();
    let mut moved = fixture("servicerequest_update.json");
    moved["id"] = json!(sr_id);
    moved["subject"] = json!({ "reference": format!("Patient/{other_id}") });
    assert_outcome(
        &send(
            addr,
            "PUT",
            &format!("/fhir/ServiceRequest/{sr_id}"),
            &[],
            &moved,
        )
        .await,
        422,
        Some("ServiceRequest.subject.reference"),
    );

    // Revoking the order is a cancellation.
    let mut revoke = fixture("servicerequest_revoke.json");
    revoke["id"] = json!(sr_id);
    revoke["subject"] = json!({ "reference": format!("Patient/{id}") });
    let revoked = send(
        addr,
        "PUT",
        &format!("/fhir/ServiceRequest/{sr_id}"),
        &[("If-Match", "W/\"1\"")],
        &revoke,
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.json()["status"], "revoked");
    let events = app
        .store
        .read_stream(TENANT, &format!("order-{sr_id}"))
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].event_type, "OrderCancelled");
    assert_eq!(events[1].payload["order"]["control"], "CA");

    // One truth: an HL7 A08 for the identifier a client created updates that same Patient.
    let a08 = "MSH|^~\\&|HIS|HOSP|FERRY|FERRY|202611221630||ADT^A08^ADT_A01|W-A08-1|P|2.5\r\
               EVN|A08|202611221630\r\
               PID|1||FHIR-4711^^^1.2.276.0.76.4.17^MR||Brenner^Lena^^^^^L||19840721|F\r\
               PV1|1|O\r";
    let mut client = MllpClient::connect(app.mllp_addr(), TIMEOUT).await.unwrap();
    let ack = client.request(a08.as_bytes()).await.unwrap();
    let summary = summarize_ack(&String::from_utf8_lossy(&ack)).unwrap();
    assert_eq!(summary.code, Some(AckCode::AA));
    let after = http(addr, "GET", &path, &[], b"").await.json();
    assert_eq!(after["name"][0]["family"], "Brenner", "{after}");
    assert_eq!(after["meta"]["versionId"], "4");

    // ORC-4 is the requisition: the two orders of one ORM share it.
    let two = std::fs::read(manifest("fixtures/hl7v2/orm_o01_nw_two_orders.hl7")).unwrap();
    let ack = client.request(&two).await.unwrap();
    let summary = summarize_ack(&String::from_utf8_lossy(&ack)).unwrap();
    assert_eq!(summary.code, Some(AckCode::AA));
    let group = search(
        addr,
        "ServiceRequest?requisition=urn:ferry:authority:FERRY-TEST%7CPG0107",
    )
    .await;
    assert_eq!(group["total"], 2, "{group}");
    assert_eq!(
        group["entry"][0]["resource"]["requisition"]["value"],
        "PG0107"
    );

    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_mappings_and_the_store_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    writes_go_through_mappings_and_the_store(format!("sqlite://{}/ferry.db", dir.path().display()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_mappings_and_the_store_postgres() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    writes_go_through_mappings_and_the_store(db.url.clone()).await;
}

async fn transactions_are_atomic(url: String) {
    let app = App::start(&settings(&url)).await.unwrap();
    let addr = app.http_addr;
    let patient_url = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a";
    let bundle = |order_code: Value| {
        json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": patient_url,
                    "resource": {
                        "resourceType": "Patient",
                        "identifier": [{ "system": SYSTEM, "value": "TX-1" }],
                        "name": [{ "family": "Tx" }]
                    },
                    "request": { "method": "POST", "url": "Patient" }
                },
                {
                    "resource": {
                        "resourceType": "ServiceRequest",
                        "status": "active",
                        "intent": "order",
                        "code": order_code,
                        "subject": { "reference": patient_url }
                    },
                    "request": { "method": "POST", "url": "ServiceRequest" }
                }
            ]
        })
    };
    // The second entry is refused (its code has neither coding nor text): nothing is written.
    let failed = send(
        addr,
        "POST",
        "/fhir",
        &[],
        &bundle(json!({"coding": [{"system": "http://loinc.org"}]})),
    )
    .await;
    assert_outcome(
        &failed,
        422,
        Some("Bundle.entry[1].resource.code.coding[0].code"),
    );
    let none = search(addr, &format!("Patient?identifier={SYSTEM}%7CTX-1")).await;
    assert_eq!(none["total"], 0, "{none}");

    let ok = send(
        addr,
        "POST",
        "/fhir",
        &[],
        &bundle(json!({"text": "MRI knee"})),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let answer = ok.json();
    assert_eq!(answer["type"], "transaction-response");
    let entries = answer["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    let patient = search(addr, &format!("Patient?identifier={SYSTEM}%7CTX-1")).await;
    assert_eq!(patient["total"], 1);
    let pid = patient["entry"][0]["resource"]["id"].as_str().unwrap();
    let orders = search(addr, &format!("ServiceRequest?patient={pid}")).await;
    assert_eq!(orders["total"], 1, "{orders}");
    assert_eq!(orders["entry"][0]["resource"]["code"]["text"], "MRI knee");
    assert!(
        entries[1]["response"]["location"]
            .as_str()
            .unwrap()
            .contains(orders["entry"][0]["resource"]["id"].as_str().unwrap())
    );
    // Only transactions: a batch is refused.
    let mut batch = bundle(json!({"text": "x"}));
    batch["type"] = json!("batch");
    assert_outcome(
        &send(addr, "POST", "/fhir", &[], &batch).await,
        422,
        Some("Bundle.type"),
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_atomic_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    transactions_are_atomic(format!("sqlite://{}/ferry.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_are_atomic_postgres() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    transactions_are_atomic(db.url.clone()).await;
}
