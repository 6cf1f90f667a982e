//! Outbound delivery end to end, on both backends: HL7 v2 in over MLLP, events stored with their
//! outbox rows, rendered by the shipped outbound mappings and delivered to real receivers (MLLP and
//! HTTP servers on loopback sockets) that answer AA, AE, AR, garbage, the wrong MSA-2, nothing,
//! close mid-message, go away and come back. Every message ends up delivered or dead-lettered as
//! the rules say, per-lane order is never broken, and a retried dead letter is delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::receivers::{HttpAnswer, HttpReceiver, MllpAnswer, MllpReceiver, ReceivedMllp};
use ferry::app::App;
use ferry::config::{
    AeAction, DestinationSettings, HttpDestination, LaneBy, MllpDestination, RetrySettings,
    Settings, SubscriptionSettings,
};
use ferry::hl7::Message;
use ferry::hl7::ack::{AckCode, summarize_ack};
use ferry::mllp::client::MllpClient;
use ferry::store::DynStore;
use ferry::store::outbox::DlqFilter;

const TENANT: &str = "north";

fn retry() -> RetrySettings {
    RetrySettings {
        initial_backoff_millis: 50,
        max_backoff_secs: 1,
        max_attempts: 4,
        max_age_secs: 0,
    }
}

fn mllp_destination(name: &str, endpoint: SocketAddr) -> DestinationSettings {
    DestinationSettings::Mllp(MllpDestination {
        name: name.into(),
        endpoint: endpoint.to_string(),
        tls: None,
        connect_timeout_secs: 2,
        ack_timeout_secs: 0.5,
        on_ae: AeAction::Retry,
        parallel_lanes: 4,
        lane_by: LaneBy::Patient,
        retry: retry(),
    })
}

fn subscription(destination: &str, events: &[&str], mapping: &str) -> SubscriptionSettings {
    SubscriptionSettings {
        name: None,
        destination: destination.into(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        when: Default::default(),
        mapping: mapping.into(),
        hospital_ids: Vec::new(),
    }
}

fn settings(url: &str) -> Settings {
    let mut s = common::app_settings(url, TENANT);
    s.delivery.poll_interval_millis = 50;
    s.delivery.lease_secs = 5;
    s
}

/// An ADT^A08 for `patient`; PID-5's family name carries the sequence number, so the order of
/// what arrives can be read off the outbound message.
fn a08(patient: &str, seq: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|FEED|NORTH|FERRY|GW|20261122090000||ADT^A08^ADT_A01|IN-{patient}-{seq}|P|2.5.1\r\
         EVN|A08|20261122090000\r\
         PID|1||{patient}^^^NORTH^MR||Seq{seq:04}^Pat||19800101|F\r\
         PV1|1|O\r"
    )
    .into_bytes()
}

async fn send_all(app: &App, messages: &[Vec<u8>]) {
    let mut client = MllpClient::connect(app.mllp_addr(), Duration::from_secs(10))
        .await
        .unwrap();
    for m in messages {
        let ack = client.request(m).await.unwrap();
        let text = String::from_utf8_lossy(&ack);
        let summary = summarize_ack(&text).unwrap();
        assert_eq!(summary.code, Some(AckCode::AA), "{text}");
    }
}

/// PID-3.1 and PID-5.1 of an outbound message.
fn patient_and_seq(text: &str) -> (String, String) {
    let m = Message::parse(text).unwrap();
    let pid = m.segment("PID").expect("outbound message has a PID");
    let get = |f: usize| {
        pid.field(f)
            .and_then(|f| f.component(1))
            .map(|c| c.decoded().into_owned())
            .unwrap_or_default()
    };
    (get(3), get(5))
}

/// Waits until the outbox of `destination` has exactly `pending` pending and `dead` dead rows.
async fn wait_outbox(store: &DynStore, destination: &str, pending: i64, dead: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = store.outbox().outbox_status().await.unwrap();
        let now = status
            .iter()
            .find(|s| s.destination == destination)
            .map(|s| (s.pending, s.dead))
            .unwrap_or((0, 0));
        if now == (pending, dead) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "outbox of {destination} stayed at {now:?}, expected ({pending}, {dead}): {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For each patient, the sequence numbers of the messages the receiver accepted, in arrival
/// order; and a check that within a lane nothing arrived out of order (a message is only sent
/// after every earlier one of its lane was accepted).
fn accepted_per_patient(received: &[ReceivedMllp]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last_seen: HashMap<String, String> = HashMap::new();
    for r in received {
        let (patient, seq) = patient_and_seq(&r.text());
        if let Some(previous) = last_seen.get(&patient) {
            assert!(
                seq >= *previous,
                "lane order broken for {patient}: {seq} after {previous}"
            );
        }
        last_seen.insert(patient.clone(), seq.clone());
        if matches!(r.answer, MllpAnswer::Ack(AckCode::AA)) {
            out.entry(patient).or_default().push(seq);
        }
    }
    out
}

fn seqs(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| format!("Seq{n:04}")).collect()
}

async fn receiver_answers_decide_each_message(url: String) {
    let his = MllpReceiver::start().await;
    // What each patient's receiver does, by PID-3 and by how often it has seen the message.
    his.set_policy(|m, seen| {
        let (patient, _) = patient_and_seq(&m.text());
        let first = seen == 1;
        match patient.as_str() {
            "AE2" if seen <= 2 => MllpAnswer::Ack(AckCode::AE),
            "NEVER" => MllpAnswer::Ack(AckCode::AE),
            "AR" => MllpAnswer::Ack(AckCode::AR),
            "GARBAGE" if first => MllpAnswer::Garbage,
            "WRONG" if first => MllpAnswer::WrongMsa2,
            "SILENT" if first => MllpAnswer::Silent,
            "CLOSE" if first => MllpAnswer::CloseBeforeAnswer,
            "HALF" if first => MllpAnswer::CloseMidAnswer,
            _ => MllpAnswer::Ack(AckCode::AA),
        }
    });
    let mut s = settings(&url);
    s.destinations = vec![mllp_destination("his", his.addr())];
    s.subscriptions = vec![subscription(
        "his",
        &["PatientUpdated"],
        "outbound/his_adt_a08",
    )];
    let app = App::start(&s).await.unwrap();

    let mut messages = Vec::new();
    for n in 1..=3 {
        messages.push(a08("OK", n));
        messages.push(a08("AR", n));
    }
    for p in [
        "AE2", "NEVER", "GARBAGE", "WRONG", "SILENT", "CLOSE", "HALF",
    ] {
        messages.push(a08(p, 1));
    }
    send_all(&app, &messages).await;

    // AR's first message is dead and holds its two successors back; NEVER is dead after
    // max_attempts (4) AEs; everything else is delivered.
    wait_outbox(&app.store, "his", 2, 2).await;
    let received = his.received();
    let accepted = accepted_per_patient(&received);
    assert_eq!(accepted["OK"], seqs(1..=3));
    for p in ["AE2", "GARBAGE", "WRONG", "SILENT", "CLOSE", "HALF"] {
        assert_eq!(accepted[p], seqs(1..=1), "{p}");
    }
    assert!(!accepted.contains_key("AR") && !accepted.contains_key("NEVER"));
    let tries = |p: &str| {
        received
            .iter()
            .filter(|r| patient_and_seq(&r.text()).0 == p)
            .count()
    };
    assert_eq!(tries("AE2"), 3, "two AEs retried, then AA");
    assert_eq!(tries("NEVER"), 4, "max_attempts");
    assert_eq!(
        tries("AR"),
        1,
        "AR is not retried, and the lane waits behind it"
    );
    for p in ["GARBAGE", "WRONG", "SILENT", "CLOSE", "HALF"] {
        assert_eq!(tries(p), 2, "{p}: retried once");
    }
    // Every attempt of one message carries the same control id.
    let ae2: Vec<&str> = received
        .iter()
        .filter(|r| patient_and_seq(&r.text()).0 == "AE2")
        .map(|r| r.control_id.as_str())
        .collect();
    assert!(ae2.windows(2).all(|w| w[0] == w[1]), "{ae2:?}");

    // The dead letters say why, through the admin API as through the store.
    let (status, body) = common::http_get(app.http_addr, "/admin/dlq?destination=his").await;
    assert_eq!(status, 200, "{body}");
    let dead = app
        .store
        .outbox()
        .dlq_list(&DlqFilter::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 2);
    let ar = dead.iter().find(|d| d.attempts == 1).expect("the AR");
    assert!(ar.last_error.as_deref().unwrap().contains("AR"), "{ar:?}");
    assert!(
        ar.last_response.as_deref().unwrap().contains("MSA|AR|"),
        "{ar:?}"
    );
    let never = dead.iter().find(|d| d.attempts == 4).expect("NEVER");
    assert!(
        never.last_error.as_deref().unwrap().contains("AE"),
        "{never:?}"
    );

    // The receiver is fixed; retrying the AR dead letter delivers it and then its lane.
    his.answer_always(MllpAnswer::Ack(AckCode::AA));
    let r = common::http(
        app.http_addr,
        "POST",
        &format!("/admin/dlq/{}/retry", ar.id),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["retried"], 1);
    wait_outbox(&app.store, "his", 0, 1).await;
    let accepted = accepted_per_patient(&his.received());
    assert_eq!(accepted["AR"], seqs(1..=3));
    // And the other by destination, as an operator would after an outage.
    let n = app
        .store
        .outbox()
        .dlq_retry(
            &DlqFilter {
                destination: Some("his".into()),
                ..DlqFilter::default()
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    wait_outbox(&app.store, "his", 0, 0).await;
    assert_eq!(accepted_per_patient(&his.received())["NEVER"], seqs(1..=1));
    app.shutdown().await;
}

async fn receiver_goes_away_and_comes_back(url: String) {
    let his = MllpReceiver::start().await;
    his.stop().await;
    let mut s = settings(&url);
    let mut his_settings = mllp_destination("his", his.addr());
    if let DestinationSettings::Mllp(m) = &mut his_settings {
        // An outage is not a reason to give up: no limit on attempts.
        m.retry.max_attempts = 0;
    }
    s.destinations = vec![his_settings];
    s.subscriptions = vec![subscription(
        "his",
        &["PatientUpdated"],
        "outbound/his_adt_a08",
    )];
    let app = App::start(&s).await.unwrap();
    let mut messages = Vec::new();
    for n in 1..=5 {
        for p in ["P1", "P2", "P3"] {
            messages.push(a08(p, n));
        }
    }
    send_all(&app, &messages).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Nothing could be delivered; nothing was given up either.
    wait_outbox(&app.store, "his", 15, 0).await;
    his.restart().await.unwrap();
    wait_outbox(&app.store, "his", 0, 0).await;
    let accepted = accepted_per_patient(&his.received());
    for p in ["P1", "P2", "P3"] {
        assert_eq!(accepted[p], seqs(1..=5), "{p}");
    }
    assert_eq!(his.received_count(), 15, "no message twice");
    app.shutdown().await;
}

async fn http_answers_decide_each_message(url: String) {
    let hook = HttpReceiver::start().await;
    // One lane (one patient), so the answers come in message order: the first message gets 429,
    // then 503 with Retry-After: 1, then 200; the second 400 (dead); the third waits behind it.
    hook.answer_in_turn(vec![
        HttpAnswer::status(429),
        HttpAnswer::status(503).retry_after("1"),
        HttpAnswer::status(200),
        HttpAnswer::status(400).body("unknown resource type"),
        HttpAnswer::status(201),
    ]);
    let mut s = settings(&url);
    s.destinations = vec![DestinationSettings::Http(HttpDestination {
        name: "hook".into(),
        endpoint: hook.url("/notify"),
        headers: [("X-Site".to_owned(), "north".to_owned())].into(),
        bearer_token: Some(ferry::config::Secret::new("s3cret")),
        connect_timeout_secs: 2,
        timeout_secs: 2.0,
        parallel_lanes: 2,
        lane_by: LaneBy::Patient,
        retry: retry(),
    })];
    s.subscriptions = vec![subscription(
        "hook",
        &["PatientUpdated"],
        "outbound/http_fhir_notification",
    )];
    let app = App::start(&s).await.unwrap();
    send_all(&app, &[a08("H1", 1), a08("H1", 2), a08("H1", 3)]).await;
    wait_outbox(&app.store, "hook", 1, 1).await;
    let got = hook.received();
    assert_eq!(got.len(), 4, "{got:?}");
    let first = &got[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/notify");
    assert_eq!(first.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(first.header("x-site"), Some("north"));
    assert!(first.header("content-type").unwrap().contains("json"));
    let key = first.header("idempotency-key").unwrap().to_owned();
    assert!(
        got[..3]
            .iter()
            .all(|r| r.header("idempotency-key") == Some(key.as_str()))
    );
    assert_ne!(got[3].header("idempotency-key"), Some(key.as_str()));
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(950),
        "Retry-After honoured: {:?}",
        got[2].at - got[1].at
    );
    assert!(
        first.text().contains("H1"),
        "the notification names the patient"
    );
    let dead = app
        .store
        .outbox()
        .dlq_list(&DlqFilter::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].last_error.as_deref().unwrap().contains("400"),
        "{dead:?}"
    );
    assert!(
        dead[0]
            .last_response
            .as_deref()
            .unwrap()
            .contains("unknown resource type")
    );
    // Discarding the dead letter lets the third message go.
    let r = common::http(
        app.http_addr,
        "POST",
        &format!("/admin/dlq/{}/discard", dead[0].id),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_outbox(&app.store, "hook", 0, 0).await;
    assert_eq!(hook.received_count(), 5);
    app.shutdown().await;
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                super::$case(format!("sqlite://{}/ferry.db", dir.path().display())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = crate::common::postgres_store().await else { return };
                super::$case(db.url.clone()).await;
            }
        }
    )*};
}

on_both_backends!(
    receiver_answers_decide_each_message,
    receiver_goes_away_and_comes_back,
    http_answers_decide_each_message,
    orders_to_the_pacs_and_updates_to_the_his,
);

/// An ORM^O01 for a CT study becomes an ORM^O01 at the PACS (a lab order does not: the
/// subscription's `when`); an ADT^A08 becomes an ADT^A08 at the HIS.
async fn orders_to_the_pacs_and_updates_to_the_his(url: String) {
    let pacs = MllpReceiver::start().await;
    let his = MllpReceiver::start().await;
    let mut s = settings(&url);
    s.destinations = vec![
        mllp_destination("pacs", pacs.addr()),
        mllp_destination("his", his.addr()),
    ];
    let mut imaging = subscription(
        "pacs",
        &["OrderPlaced", "OrderCancelled"],
        "outbound/pacs_orm_o01",
    );
    imaging.when.insert(
        "order.diagnostic_service_section".into(),
        vec!["RAD".into(), "CT".into(), "MR".into(), "US".into()],
    );
    s.subscriptions = vec![
        imaging,
        subscription("his", &["PatientUpdated"], "outbound/his_adt_a08"),
    ];
    let app = App::start(&s).await.unwrap();
    let fixture = |name: &str| {
        std::fs::read(format!(
            "{}/fixtures/hl7v2/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let ct = fixture("orm_o01_nw.hl7");
    let lab = String::from_utf8(ct.clone())
        .unwrap()
        .replace("FIX-O01-0002", "FIX-O01-LAB")
        .replace("PL0101^FERRY-TEST", "PL0999^FERRY-TEST")
        .replace("||||||||CT|||", "||||||||LAB|||")
        .into_bytes();
    let update = fixture("adt_a08_basic.hl7");
    send_all(&app, &[ct, lab, update]).await;
    wait_outbox(&app.store, "pacs", 0, 0).await;
    wait_outbox(&app.store, "his", 0, 0).await;

    let orders = pacs.received();
    assert_eq!(orders.len(), 1, "only the CT order goes to the PACS");
    let text = orders[0].text();
    let m = Message::parse(&text).unwrap();
    let value = |seg: &str, f: usize, c: usize| {
        m.segment(seg)
            .and_then(|s| s.field(f))
            .and_then(|f| f.component(c))
            .map(|v| v.decoded().into_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        (value("MSH", 9, 1), value("MSH", 9, 2)),
        ("ORM".into(), "O01".into())
    );
    assert_eq!(value("MSH", 10, 1), orders[0].control_id);
    assert_eq!(value("PID", 3, 1), "100010");
    assert_eq!(value("PID", 5, 1), "Brandt");
    assert_eq!(value("ORC", 1, 1), "NW");
    assert_eq!(value("ORC", 2, 1), "PL0101");
    assert_eq!(value("OBR", 4, 1), "70450");
    assert_eq!(value("OBR", 24, 1), "CT");

    let updates = his.received();
    assert_eq!(updates.len(), 1);
    let update_text = updates[0].text();
    let m = Message::parse(&update_text).unwrap();
    let msh9 = m.msh().field(9).unwrap();
    assert_eq!(msh9.component(1).unwrap().decoded(), "ADT");
    assert_eq!(msh9.component(2).unwrap().decoded(), "A08");
    let (patient, family) = patient_and_seq(&updates[0].text());
    assert_eq!((patient.as_str(), family.as_str()), ("100010", "Brandt"));
    app.shutdown().await;
}

const HS256_SECRET: &str = "admin-api-test-secret-0123456789abcdef";

fn token(tenant: &str, scope: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://auth.test", "aud": "https://ferry.test", "sub": "ops",
        "tenant": tenant, "scope": scope, "iat": now, "exp": now + 300,
    });
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {t}")
}

/// The admin API is protected like the FHIR API: a token, a `FerryOutbox` scope, and only the
/// token's tenant's dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_a_scope_and_stays_in_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let his = MllpReceiver::start().await;
    his.answer_always(MllpAnswer::Ack(AckCode::AR));
    let mut s = settings(&format!("sqlite://{}/ferry.db", dir.path().display()));
    s.auth = ferry::config::AuthMode::Bearer(ferry::config::AuthSettings {
        issuer: "https://auth.test".into(),
        audience: "https://ferry.test".into(),
        jwks_file: None,
        jwks_url: None,
        jwks_refresh_secs: 300,
        hs256_secret: Some(ferry::config::Secret::new(HS256_SECRET)),
        tenant_claim: "tenant".into(),
        leeway_secs: 30,
    });
    s.destinations = vec![mllp_destination("his", his.addr())];
    s.subscriptions = vec![subscription(
        "his",
        &["PatientUpdated"],
        "outbound/his_adt_a08",
    )];
    let app = App::start(&s).await.unwrap();
    send_all(&app, &[a08("T1", 1)]).await;
    wait_outbox(&app.store, "his", 0, 1).await;
    let id = app
        .store
        .outbox()
        .dlq_list(&DlqFilter::default())
        .await
        .unwrap()[0]
        .id;

    let get = |auth: Option<String>| {
        let addr = app.http_addr;
        async move {
            let headers: Vec<(&str, &str)> = match &auth {
                Some(a) => vec![("Authorization", a.as_str())],
                None => vec![],
            };
            common::http(addr, "GET", "/admin/dlq", &headers, b"").await
        }
    };
    assert_eq!(get(None).await.status, 401);
    assert_eq!(
        get(Some(token(TENANT, "system/Patient.rs"))).await.status,
        403
    );
    let mine = get(Some(token(TENANT, "system/FerryOutbox.rs"))).await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.json()["dead_letters"].as_array().unwrap().len(), 1);
    let theirs = get(Some(token("south", "system/FerryOutbox.rs"))).await;
    assert_eq!(theirs.json()["dead_letters"].as_array().unwrap().len(), 0);

    let retry = |auth: String| {
        let addr = app.http_addr;
        async move {
            common::http(
                addr,
                "POST",
                &format!("/admin/dlq/{id}/retry"),
                &[("Authorization", auth.as_str())],
                b"",
            )
            .await
        }
    };
    assert_eq!(
        retry(token(TENANT, "system/FerryOutbox.rs")).await.status,
        403
    );
    assert_eq!(
        retry(token("south", "system/FerryOutbox.rus")).await.status,
        404
    );
    his.answer_always(MllpAnswer::Ack(AckCode::AA));
    let ok = retry(token(TENANT, "system/FerryOutbox.u")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    wait_outbox(&app.store, "his", 0, 0).await;
    let status = common::http(
        app.http_addr,
        "GET",
        "/admin/outbox",
        &[(
            "Authorization",
            token(TENANT, "system/FerryOutbox.s").as_str(),
        )],
        b"",
    )
    .await;
    assert_eq!(status.status, 200, "{}", status.body);
    app.shutdown().await;
}

/// Replay queues stored events again for a destination: a time range, or one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_stored_events_again() {
    let dir = tempfile::tempdir().unwrap();
    let his = MllpReceiver::start().await;
    let mut s = settings(&format!("sqlite://{}/ferry.db", dir.path().display()));
    s.destinations = vec![mllp_destination("his", his.addr())];
    s.subscriptions = vec![subscription(
        "his",
        &["PatientUpdated"],
        "outbound/his_adt_a08",
    )];
    let app = App::start(&s).await.unwrap();
    send_all(&app, &[a08("R1", 1), a08("R2", 1), a08("R1", 2)]).await;
    wait_outbox(&app.store, "his", 0, 0).await;
    assert_eq!(his.received_count(), 3);

    let stream = ferry::domain::stream_id(
        ferry::domain::StreamKind::Patient,
        TENANT,
        Some("NORTH"),
        "R1",
    );
    let replay = |body: serde_json::Value| {
        let addr = app.http_addr;
        async move {
            common::http(
                addr,
                "POST",
                "/admin/replay",
                &[("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    let r =
        replay(serde_json::json!({"destination": "his", "stream": stream, "hospital_id": TENANT}))
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["queued"], 2);
    wait_outbox(&app.store, "his", 0, 0).await;
    // (A replay repeats old messages, so this is not a lane-order check.)
    let mut again: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in his.received() {
        let (patient, seq) = patient_and_seq(&r.text());
        again.entry(patient).or_default().push(seq);
    }
    assert_eq!(
        again["R1"],
        [seqs(1..=2), seqs(1..=2)].concat(),
        "R1 again, in order"
    );
    assert_eq!(again["R2"], seqs(1..=1));

    // A time range: everything from an hour ago; nothing from the future.
    let from = (time::OffsetDateTime::now_utc() - Duration::from_secs(3600))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = replay(serde_json::json!({"destination": "his", "to": from})).await;
    assert_eq!(r.json()["queued"], 0);
    let r = replay(serde_json::json!({"destination": "his", "from": from})).await;
    assert_eq!(r.json()["queued"], 3);
    wait_outbox(&app.store, "his", 0, 0).await;
    assert_eq!(his.received_count(), 8);
    let unknown = replay(serde_json::json!({"destination": "nowhere"})).await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    app.shutdown().await;
}

/// `ferry outbox status` and `ferry dlq …` as an operator runs them, on the store a running Ferry
/// uses (which picks the changes up at its next poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_retries_and_discards_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ferry.db", dir.path().display());
    let his = MllpReceiver::start().await;
    his.answer_always(MllpAnswer::Ack(AckCode::AR));
    let mut s = settings(&url);
    s.destinations = vec![mllp_destination("his", his.addr())];
    s.subscriptions = vec![subscription(
        "his",
        &["PatientUpdated"],
        "outbound/his_adt_a08",
    )];
    let app = App::start(&s).await.unwrap();
    send_all(&app, &[a08("C1", 1), a08("C2", 1)]).await;
    wait_outbox(&app.store, "his", 0, 2).await;

    let ferry = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("FERRY_DATABASE_URL", &url)
            .env("FERRY_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, _) = ferry(&["outbox", "status"]);
    assert!(ok);
    assert!(
        out.lines()
            .any(|l| l.starts_with("his") && l.contains(" 2 ")),
        "{out}"
    );
    assert!(out.contains("blocked by a dead letter"), "{out}");
    let (ok, out, _) = ferry(&["dlq", "list", "--json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let (ok, out, _) = ferry(&["dlq", "show", &ids[0].to_string()]);
    assert!(ok && out.contains("the receiver answered AR"), "{out}");
    let (ok, _, err) = ferry(&["dlq", "retry"]);
    assert!(!ok && err.contains("--all"), "{err}");
    let (ok, out, _) = ferry(&["dlq", "discard", &ids[0].to_string()]);
    assert!(ok && out.contains("1 dead letter(s) discarded"), "{out}");
    his.answer_always(MllpAnswer::Ack(AckCode::AA));
    let (ok, out, _) = ferry(&["dlq", "retry", "--destination", "his"]);
    assert!(ok && out.contains("1 dead letter(s) put back"), "{out}");
    wait_outbox(&app.store, "his", 0, 0).await;
    let accepted = accepted_per_patient(&his.received());
    assert_eq!(accepted.len(), 1, "only the retried one: {accepted:?}");
    app.shutdown().await;
}

/// A PACS that speaks MLLP over TLS: the destination's `tls` settings (its own CA file, the
/// server name) are used, and a certificate the CA did not sign is refused (the message waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_over_tls() {
    use futures::{SinkExt, StreamExt};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let chain = vec![CertificateDer::from_pem_file(keys.join("mllp-test-server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(keys.join("mllp-test-server.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let got = got_tx.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut framed = tokio_util::codec::Framed::new(
                    tls,
                    ferry::mllp::codec::MllpCodec::new(1 << 20),
                );
                while let Some(Ok(ferry::mllp::codec::Frame::Message(m))) = framed.next().await {
                    let text = String::from_utf8_lossy(&m).into_owned();
                    let id = Message::parse(&text).unwrap().msh_field(10).to_owned();
                    let ack = format!(
                        "MSH|^~\\&|PACS|RAD|FERRY|HOSP|20261122||ACK|T{id}|P|2.5.1\rMSA|AA|{id}\r"
                    );
                    framed.send(ack.as_bytes()).await.unwrap();
                    got.send(text).unwrap();
                }
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&format!("sqlite://{}/ferry.db", dir.path().display()));
    let mut pacs = mllp_destination("pacs", addr);
    if let DestinationSettings::Mllp(m) = &mut pacs {
        m.tls = Some(ferry::config::TlsSettings {
            ca_file: Some(keys.join("mllp-test-ca.pem")),
            server_name: Some("pacs.test".into()),
            client_cert_file: None,
            client_key_file: None,
        });
    }
    // The same receiver, trusted through the wrong CA (the server's own certificate as a root is
    // not its issuer): the handshake fails, and the message is retried, not lost.
    let mut wrong = mllp_destination("wrong-ca", addr);
    if let DestinationSettings::Mllp(m) = &mut wrong {
        m.tls = Some(ferry::config::TlsSettings {
            ca_file: Some(keys.join("mllp-test-server.pem")),
            server_name: Some("pacs.test".into()),
            client_cert_file: None,
            client_key_file: None,
        });
        m.retry.max_attempts = 0;
    }
    s.destinations = vec![pacs, wrong];
    s.subscriptions = vec![
        subscription("pacs", &["PatientUpdated"], "outbound/his_adt_a08"),
        subscription("wrong-ca", &["PatientUpdated"], "outbound/his_adt_a08"),
    ];
    let app = App::start(&s).await.unwrap();
    send_all(&app, &[a08("TLS", 1)]).await;
    wait_outbox(&app.store, "pacs", 0, 0).await;
    let text = tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(patient_and_seq(&text), ("TLS".into(), "Seq0001".into()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_outbox(&app.store, "wrong-ca", 1, 0).await;
    assert!(
        got_rx.try_recv().is_err(),
        "nothing arrived through the wrong CA"
    );
    app.shutdown().await;
}

/// Metrics per destination: attempts by outcome, failures by reason, latency, queue depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_metrics_per_destination() {
    let dir = tempfile::tempdir().unwrap();
    let his = MllpReceiver::start().await;
    his.answer_in_turn(vec![MllpAnswer::Garbage, MllpAnswer::Ack(AckCode::AA)]);
    let mut s = settings(&format!("sqlite://{}/ferry.db", dir.path().display()));
    s.destinations = vec![mllp_destination("metered", his.addr())];
    s.subscriptions = vec![subscription(
        "metered",
        &["PatientUpdated"],
        "outbound/his_adt_a08",
    )];
    let app = App::start(&s).await.unwrap();
    send_all(&app, &[a08("M1", 1)]).await;
    wait_outbox(&app.store, "metered", 0, 0).await;
    let (status, body) = common::http_get(app.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "ferry_delivery_attempts_total{destination=\"metered\",outcome=\"delivered\"} 1",
        "ferry_delivery_attempts_total{destination=\"metered\",outcome=\"retry\"} 1",
        "ferry_delivery_failures_total{destination=\"metered\",reason=\"garbage\"} 1",
        "ferry_delivery_latency_seconds",
        "ferry_delivery_send_seconds",
        "ferry_outbox_depth{destination=\"metered\"}",
        "ferry_outbox_oldest_age_seconds{destination=\"metered\"}",
    ] {
        assert!(body.contains(expected), "{expected} missing from:\n{body}");
    }
    app.shutdown().await;
}
