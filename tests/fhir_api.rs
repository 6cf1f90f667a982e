//! The FHIR API end to end on both backends: HL7 v2 messages sent over MLLP are readable through
//! `/fhir` as soon as their AA arrives (Patient, Encounter, ServiceRequest, Observation,
//! DiagnosticReport), updates and merges are reflected, and read/vread/history/search behave as
//! FHIR says; a rebuild of the projections yields exactly the same resources.
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
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(20);
const TENANT: &str = "hospital-a";
const MRN: &str = "urn:ferry:authority:TEST-HOSP";

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn settings(url: &str) -> Settings {
    common::app_settings(url, TENANT)
}

fn fixture(name: &str) -> String {
    String::from_utf8(std::fs::read(manifest("fixtures/hl7v2").join(name)).unwrap()).unwrap()
}

async fn send(client: &mut MllpClient, message: &str) {
    let ack = client.request(message.as_bytes()).await.unwrap();
    let text = String::from_utf8_lossy(&ack);
    let summary = summarize_ack(&text).unwrap_or_else(|| panic!("not an ACK: {text:?}"));
    assert_eq!(summary.code, Some(AckCode::AA), "{text}");
}

async fn get(addr: SocketAddr, path: &str) -> common::HttpResponse {
    http(addr, "GET", path, &[], b"").await
}

/// GET that must answer 200 with JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/fhir+json")),
        "{:?}",
        r.headers
    );
    r.json()
}

/// The resources of a searchset, in order.
fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

/// The one Patient with this MRN.
async fn patient_by_mrn(addr: SocketAddr, mrn: &str) -> Value {
    let bundle = get_json(addr, &format!("/fhir/Patient?identifier={MRN}%7C{mrn}")).await;
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 1, "{bundle}");
    entries(&bundle).remove(0)
}

/// Every current resource and every version, as the API serves them (for the rebuild check).
async fn snapshot(addr: SocketAddr) -> Vec<Value> {
    let mut all = Vec::new();
    for t in [
        "Patient",
        "Encounter",
        "ServiceRequest",
        "Observation",
        "DiagnosticReport",
    ] {
        let bundle = get_json(addr, &format!("/fhir/{t}?_count=1000")).await;
        all.extend(entries(&bundle));
        let history = get_json(addr, &format!("/fhir/{t}/_history?_count=1000")).await;
        let mut versions = entries(&history);
        versions.sort_by_key(|v| format!("{}/{}", v["id"], v["meta"]["versionId"]));
        all.extend(versions);
    }
    all
}

async fn feeds_become_fhir_resources(url: String) {
    let app = App::start(&settings(&url)).await.unwrap();
    let addr = app.http_addr;
    let mut client = MllpClient::connect(app.mllp_addr(), TIMEOUT).await.unwrap();

    // ADT^A01: Patient and Encounter readable as soon as the AA is in.
    send(&mut client, &fixture("adt_a01_basic.hl7")).await;
    let patient = patient_by_mrn(addr, "100010").await;
    let id = patient["id"].as_str().unwrap().to_owned();
    assert_eq!(patient["name"][0]["family"], "Brandt");
    assert_eq!(patient["birthDate"], "1984-03-12");
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["meta"]["versionId"], "1");
    let read = get(addr, &format!("/fhir/Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    assert!(read.header("last-modified").is_some());
    assert_eq!(read.json(), patient);
    let encounters = get_json(addr, &format!("/fhir/Encounter?patient={id}")).await;
    assert_eq!(encounters["total"], 1);
    let encounter = entries(&encounters).remove(0);
    assert_eq!(encounter["status"], "in-progress");
    assert_eq!(encounter["class"]["code"], "IMP");
    assert_eq!(encounter["subject"]["reference"], format!("Patient/{id}"));
    let enc_id = encounter["id"].as_str().unwrap().to_owned();

    // ORM^O01 NW: a ServiceRequest for the patient.
    send(&mut client, &fixture("orm_o01_nw.hl7")).await;
    let orders = get_json(addr, &format!("/fhir/ServiceRequest?subject=Patient/{id}")).await;
    assert_eq!(orders["total"], 1, "{orders}");
    let order = entries(&orders).remove(0);
    assert_eq!(order["status"], "active");
    assert_eq!(order["intent"], "order");
    assert_eq!(order["code"]["coding"][0]["code"], "70450");
    let sr_id = order["id"].as_str().unwrap().to_owned();

    // ADT^A08: the Patient's phone changed: version 2, the old one still readable (vread).
    send(&mut client, &fixture("adt_a08_basic.hl7")).await;
    let updated = get_json(addr, &format!("/fhir/Patient/{id}")).await;
    assert_eq!(updated["meta"]["versionId"], "2");
    assert!(
        updated["telecom"].to_string().contains("23125011"),
        "{updated}"
    );
    let v1 = get_json(addr, &format!("/fhir/Patient/{id}/_history/1")).await;
    assert!(v1["telecom"].to_string().contains("23125010"), "{v1}");
    let history = get_json(addr, &format!("/fhir/Patient/{id}/_history")).await;
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 2);
    assert_eq!(entries(&history)[0]["meta"]["versionId"], "2");

    // ADT^A40: 100010 merged into 100018: the old Patient is inactive and points at the
    // survivor, which points back; the encounter and the order now belong to the survivor.
    let a40 = fixture("adt_a40_basic.hl7").replace("100019^^^TEST-HOSP", "100010^^^TEST-HOSP");
    send(&mut client, &a40).await;
    let survivor = patient_by_mrn(addr, "100018").await;
    let survivor_id = survivor["id"].as_str().unwrap().to_owned();
    let retired = get_json(addr, &format!("/fhir/Patient/{id}")).await;
    assert_eq!(retired["active"], false);
    assert_eq!(retired["link"][0]["type"], "replaced-by");
    assert_eq!(
        retired["link"][0]["other"]["reference"],
        format!("Patient/{survivor_id}")
    );
    assert_eq!(survivor["link"][0]["type"], "replaces");
    assert_eq!(
        survivor["link"][0]["other"]["reference"],
        format!("Patient/{id}")
    );
    let moved = get_json(addr, &format!("/fhir/Encounter/{enc_id}")).await;
    assert_eq!(
        moved["subject"]["reference"],
        format!("Patient/{survivor_id}")
    );
    let moved = get_json(addr, &format!("/fhir/ServiceRequest/{sr_id}")).await;
    assert_eq!(
        moved["subject"]["reference"],
        format!("Patient/{survivor_id}")
    );
    let of_survivor = get_json(addr, &format!("/fhir/Encounter?patient={survivor_id}")).await;
    assert_eq!(of_survivor["total"], 1);
    let of_retired = get_json(addr, &format!("/fhir/Encounter?patient={id}")).await;
    assert_eq!(of_retired["total"], 0);

    // ORU^R01: a DiagnosticReport with its Observations.
    send(&mut client, &fixture("oru_r01_lab.hl7")).await;
    let lab_patient = patient_by_mrn(addr, "100014").await;
    let lab_id = lab_patient["id"].as_str().unwrap();
    let reports = get_json(
        addr,
        &format!("/fhir/DiagnosticReport?patient={lab_id}&_include=DiagnosticReport:subject"),
    )
    .await;
    assert_eq!(reports["total"], 1, "{reports}");
    let modes: Vec<&str> = reports["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["search"]["mode"].as_str())
        .collect();
    assert_eq!(modes, vec!["match", "include"]);
    let report = entries(&reports).remove(0);
    assert_eq!(report["code"]["coding"][0]["code"], "24357-6");
    let observations = get_json(addr, &format!("/fhir/Observation?patient={lab_id}")).await;
    let count = observations["total"].as_i64().unwrap();
    assert!(count > 0);
    assert_eq!(report["result"].as_array().unwrap().len() as i64, count);
    let by_code = get_json(
        addr,
        "/fhir/DiagnosticReport?code=http://loinc.org%7C24357-6&status=final,partial,preliminary,registered,unknown",
    )
    .await;
    assert_eq!(by_code["total"], 1, "{by_code}");
    // Its date is the observations' time (OBX-14, 5 November 08:10 Berlin), not when it arrived.
    assert_eq!(report["effectiveDateTime"], "2026-11-05T08:10:00+01:00");
    let by_date = get_json(addr, "/fhir/DiagnosticReport?date=2026-11-05").await;
    assert_eq!(by_date["total"], 1, "{by_date}");
    let before = get_json(addr, "/fhir/DiagnosticReport?date=lt2026-11-05").await;
    assert_eq!(before["total"], 0, "{before}");

    // A rebuild from the events yields exactly the same resources and versions.
    let before = snapshot(addr).await;
    let replayed = app.store.rebuild_projections(&|_| {}).await.unwrap();
    assert!(replayed >= 5, "{replayed}");
    let after = snapshot(addr).await;
    assert_eq!(before.len(), after.len());
    assert_eq!(before, after);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_become_fhir_resources_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    feeds_become_fhir_resources(format!("sqlite://{}/ferry.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_become_fhir_resources_postgres() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    feeds_become_fhir_resources(db.url.clone()).await;
}

/// Search semantics, paging and the error answers, on one store with a few patients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_paging_and_errors_follow_fhir() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(&settings(&format!(
        "sqlite://{}/ferry.db",
        dir.path().display()
    )))
    .await
    .unwrap();
    let addr = app.http_addr;
    let mut client = MllpClient::connect(app.mllp_addr(), TIMEOUT).await.unwrap();
    let a01 = fixture("adt_a01_basic.hl7");
    for n in 0..5 {
        let message = a01
            .replace("FIX-A01-0002", &format!("PAGE-{n}"))
            .replace("100010^^^TEST-HOSP", &format!("30000{n}^^^TEST-HOSP"))
            .replace("V200010", &format!("V30000{n}"))
            .replace("19840312", &format!("198{n}0312"))
            .replace(
                "Brandt^Lena",
                if n == 4 {
                    "Müller^Jörg"
                } else {
                    "Brandt^Lena"
                },
            );
        send(&mut client, &message).await;
    }

    // Paging: total, _count, next/previous links that work.
    let page1 = get_json(addr, "/fhir/Patient?family=brandt&_count=2").await;
    assert_eq!(page1["total"], 4);
    assert_eq!(entries(&page1).len(), 2);
    let next = link(&page1, "next").expect("next link");
    assert!(link(&page1, "previous").is_none());
    let page2 = get_json(addr, &path_of(&next)).await;
    assert_eq!(entries(&page2).len(), 2);
    assert!(
        link(&page2, "next").is_none(),
        "4 matches, 2 per page: two pages"
    );
    let back = get_json(
        addr,
        &path_of(&link(&page2, "previous").expect("previous link")),
    )
    .await;
    assert_eq!(entries(&back), entries(&page1));
    let mut ids: Vec<Value> = entries(&page1)
        .into_iter()
        .chain(entries(&page2))
        .map(|p| p["id"].clone())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);

    // Strings ignore case and accents; dates take prefixes; tokens OR with commas.
    assert_eq!(
        get_json(addr, "/fhir/Patient?name=MULLER").await["total"],
        1
    );
    assert_eq!(
        get_json(addr, "/fhir/Patient?family:exact=brandt").await["total"],
        4
    );
    assert_eq!(
        get_json(addr, "/fhir/Patient?birthdate=ge1982-01-01").await["total"],
        3
    );
    assert_eq!(
        get_json(addr, "/fhir/Patient?birthdate=lt1982").await["total"],
        2
    );
    assert_eq!(
        get_json(addr, "/fhir/Patient?birthdate=1983-03").await["total"],
        1
    );
    assert_eq!(
        get_json(
            addr,
            &format!("/fhir/Patient?identifier={MRN}%7C300001,{MRN}%7C300002")
        )
        .await["total"],
        2
    );
    assert_eq!(
        get_json(addr, "/fhir/Patient?identifier=urn:other%7C300001").await["total"],
        0
    );
    assert_eq!(
        get_json(addr, "/fhir/Patient?gender=female&birthdate=ge1984").await["total"],
        1
    );
    let count = get_json(addr, "/fhir/Patient?_summary=count").await;
    assert_eq!(count["total"], 5);
    assert!(count.get("entry").is_none());
    assert_eq!(
        get_json(addr, "/fhir/Encounter?class=IMP&status=in-progress").await["total"],
        5
    );

    // POST _search with a form body answers like GET.
    let posted = http(
        addr,
        "POST",
        "/fhir/Patient/_search",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"family=brandt&_count=1",
    )
    .await;
    assert_eq!(posted.status, 200, "{}", posted.body);
    assert_eq!(posted.json()["total"], 4);

    // Unknown parameters: ignored by default, an error when the client asks for strictness.
    let lenient = get_json(addr, "/fhir/Patient?shoe-size=42").await;
    assert_eq!(lenient["total"], 5);
    let strict = http(
        addr,
        "GET",
        "/fhir/Patient?shoe-size=42",
        &[("Prefer", "handling=strict")],
        b"",
    )
    .await;
    assert_eq!(strict.status, 400);
    assert_outcome(&strict, "shoe-size");

    // Errors are OperationOutcomes.
    let bad_date = get(addr, "/fhir/Patient?birthdate=yesterday").await;
    assert_eq!(bad_date.status, 400);
    assert_outcome(&bad_date, "birthdate");
    let missing = get(addr, "/fhir/Patient/no-such-patient").await;
    assert_eq!(missing.status, 404);
    assert_outcome(&missing, "");
    let unknown_type = get(addr, "/fhir/Medication/1").await;
    assert_eq!(unknown_type.status, 404);
    assert_outcome(&unknown_type, "");
    let xml = http(
        addr,
        "GET",
        "/fhir/metadata",
        &[("Accept", "application/fhir+xml")],
        b"",
    )
    .await;
    assert_eq!(xml.status, 406);
    assert_outcome(&xml, "");
    let xml_param = get(addr, "/fhir/Patient?_format=xml").await;
    assert_eq!(xml_param.status, 406);
    let json_param = get(addr, "/fhir/metadata?_format=json").await;
    assert_eq!(json_param.status, 200);
    let delete = http(addr, "DELETE", "/fhir/Patient/x", &[], b"").await;
    assert_eq!(delete.status, 405);
    assert_outcome(&delete, "");
    let patch = http(addr, "PATCH", "/fhir/Patient/x", &[], b"").await;
    assert_eq!(patch.status, 405);
    assert_outcome(&patch, "");
    let bad_version = get(addr, "/fhir/Patient/x/_history/one").await;
    assert_eq!(bad_version.status, 400);

    // Conditional read by ETag.
    let any = entries(&get_json(addr, "/fhir/Patient?_count=1").await).remove(0);
    let path = format!("/fhir/Patient/{}", any["id"].as_str().unwrap());
    let not_modified = http(addr, "GET", &path, &[("If-None-Match", "W/\"1\"")], b"").await;
    assert_eq!(not_modified.status, 304);

    let metadata = get_json(addr, "/fhir/metadata").await;
    assert_eq!(metadata["resourceType"], "CapabilityStatement");
    assert_eq!(metadata["fhirVersion"], "4.0.1");
    app.shutdown().await;
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// `http://host/fhir/...` → `/fhir/...`.
fn path_of(url: &str) -> String {
    let start = url.find("/fhir/").expect("a FHIR URL");
    url[start..].to_owned()
}

fn assert_outcome(r: &common::HttpResponse, expression: &str) {
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/fhir+json")),
        "{:?}",
        r.headers
    );
    let outcome = r.json();
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    let issue = &outcome["issue"][0];
    assert_eq!(issue["severity"], "error");
    assert!(issue["diagnostics"].as_str().is_some_and(|d| !d.is_empty()));
    if !expression.is_empty() {
        assert_eq!(issue["expression"][0], expression, "{outcome}");
    }
}

/// `ferry projections rebuild` on a stopped instance's store: replays every event and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_command_replays_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ferry.db", dir.path().display());
    let app = App::start(&settings(&url)).await.unwrap();
    let mut client = MllpClient::connect(app.mllp_addr(), TIMEOUT).await.unwrap();
    send(&mut client, &fixture("adt_a01_basic.hl7")).await;
    send(&mut client, &fixture("adt_a08_basic.hl7")).await;
    let before = snapshot(app.http_addr).await;
    drop(client);
    app.shutdown().await;

    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!("auth = \"none\"\n[store]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["projections", "rebuild", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("projections rebuilt from 2 events"),
        "{stdout}"
    );

    let app = App::start(&settings(&url)).await.unwrap();
    assert_eq!(snapshot(app.http_addr).await, before);
    app.shutdown().await;
}
