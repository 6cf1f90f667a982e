//! Ingest with mappings, end to end over MLLP: the shipped `mappings/` turn messages into domain
//! events committed with the message; mapping failures are AE with an ERR pointing at the field;
//! the unmapped policy; and hot reload while messages flow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry::app::App;
use ferry::config::{ListenerSettings, MllpListenerSettings, Settings, UnmappedPolicy};
use ferry::domain::{StreamKind, stream_id};
use ferry::hl7::ack::{AckCode, AckSummary, summarize_ack};
use ferry::mapping::MappingSet;
use ferry::mllp::client::MllpClient;
use ferry::store::InboundStatus;

const TIMEOUT: Duration = Duration::from_secs(20);
const TENANT: &str = "hospital-a";

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn settings(url: &str, mappings: &Path, unmapped: UnmappedPolicy) -> Settings {
    let listener = MllpListenerSettings {
        name: "adt-feed".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        hospital_id: TENANT.into(),
        unmapped,
        ..MllpListenerSettings::default()
    };
    let mut s = Settings {
        listeners: vec![ListenerSettings::Mllp(listener)],
        shutdown_grace_secs: 5,
        ..Settings::default()
    };
    s.store.url = url.to_owned();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.mappings.dir = mappings.to_owned();
    s
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(manifest("fixtures/hl7v2").join(name)).unwrap()
}

fn summary(ack: &[u8]) -> AckSummary {
    let text = String::from_utf8_lossy(ack);
    summarize_ack(&text).unwrap_or_else(|| panic!("not an ACK: {text:?}"))
}

/// Replaces every occurrence of `from` (a whole field value such as a control ID or visit number).
fn replace(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in the fixture");
    text.replace(from, to).into_bytes()
}

/// The shipped mappings and our fixtures, mapped and committed on one backend.
async fn mapped_messages_become_events(url: String) {
    let app = App::start(&settings(
        &url,
        &manifest("mappings"),
        UnmappedPolicy::Accept,
    ))
    .await
    .unwrap();
    let version = app.mappings.load().version().to_owned();
    let mut client = MllpClient::connect(app.mllp_addr(), TIMEOUT).await.unwrap();

    // ADT^A01 → PatientAdmitted on the encounter stream, with metadata saying where it came from.
    let a01 = fixture("adt_a01_basic.hl7");
    let ack = client.request(&a01).await.unwrap();
    assert_eq!(
        summary(&ack).code,
        Some(AckCode::AA),
        "{}",
        String::from_utf8_lossy(&ack)
    );
    let encounter = stream_id(StreamKind::Encounter, TENANT, Some("TEST-HOSP"), "V200010");
    let events = app.store.read_stream(TENANT, &encounter).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.event_type, "PatientAdmitted");
    assert_eq!(event.schema_version, 1);
    assert_eq!(event.stream_version, 1);
    assert_eq!(event.payload["encounter"]["class"], "inpatient");
    assert_eq!(
        event.payload["patient"]["identifiers"][0]["value"],
        "100010"
    );
    let inbound = app
        .store
        .inbound_by_control_id(TENANT, "FIX-A01-0002")
        .await
        .unwrap();
    assert_eq!(inbound.len(), 1);
    let meta = &event.metadata;
    assert_eq!(meta["inbound_id"], inbound[0].id.hyphenated().to_string());
    assert_eq!(meta["channel"], "adt-feed");
    assert_eq!(meta["control_id"], "FIX-A01-0002");
    assert_eq!(meta["sender"]["application"], "FERRY-TEST");
    assert_eq!(meta["sender"]["facility"], "TEST-HOSP");
    assert_eq!(meta["mapping"], "adt_a01.patient_admitted");
    assert_eq!(meta["mapping_version"], version.as_str());
    assert!(
        meta["received_at"].as_str().is_some_and(|t| t.len() >= 20),
        "{meta}"
    );
    assert_eq!(
        meta["streams"]["patient"],
        stream_id(StreamKind::Patient, TENANT, Some("TEST-HOSP"), "100010")
    );
    assert_eq!(meta["streams"]["encounter"], encounter);

    // A resend gets the original ACK and appends nothing.
    let again = client.request(&a01).await.unwrap();
    assert_eq!(again, ack);
    assert_eq!(
        app.store
            .read_stream(TENANT, &encounter)
            .await
            .unwrap()
            .len(),
        1
    );

    // The same patient admitted again under another visit: one more event on a new encounter
    // stream; a second message on the same visit continues its stream.
    let second = replace(
        &replace(&a01, "FIX-A01-0002", "MAP-2"),
        "V200010",
        "V200011",
    );
    assert_eq!(
        summary(&client.request(&second).await.unwrap()).code,
        Some(AckCode::AA)
    );
    let third = replace(&a01, "FIX-A01-0002", "MAP-3");
    assert_eq!(
        summary(&client.request(&third).await.unwrap()).code,
        Some(AckCode::AA)
    );
    let versions: Vec<i64> = app
        .store
        .read_stream(TENANT, &encounter)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
    let other = stream_id(StreamKind::Encounter, TENANT, Some("TEST-HOSP"), "V200011");
    assert_eq!(
        app.store.read_stream(TENANT, &other).await.unwrap().len(),
        1
    );

    // Required PID-3 missing: AE 101 at PID^1^3, the message logged as rejected, no event.
    let before = app.store.counts().await.unwrap();
    let ack = client
        .request(&fixture("adt_a01_empty_pid3.hl7"))
        .await
        .unwrap();
    let s = summary(&ack);
    assert_eq!(
        s.code,
        Some(AckCode::AE),
        "{}",
        String::from_utf8_lossy(&ack)
    );
    assert_eq!(s.error_codes, vec!["101"]);
    assert_eq!(s.error_locations, vec!["PID^1^3"]);
    let after = app.store.counts().await.unwrap();
    assert_eq!(after.events, before.events);
    assert_eq!(after.inbound, before.inbound + 1);
    let logged = app
        .store
        .inbound_by_control_id(TENANT, "FIX-A01-0004")
        .await
        .unwrap();
    assert_eq!(logged[0].status, InboundStatus::Rejected);

    // An unparseable birth date: AE 102 at PID-7.
    let ack = client
        .request(&fixture("adt_a04_bad_birth_date.hl7"))
        .await
        .unwrap();
    let s = summary(&ack);
    assert_eq!(
        s.code,
        Some(AckCode::AE),
        "{}",
        String::from_utf8_lossy(&ack)
    );
    assert_eq!(s.error_codes, vec!["102"]);
    assert!(s.error_locations[0].starts_with("PID^1^7"), "{s:?}");

    // A message type no mapping handles (the default policy): AA, stored, no event.
    let before = app.store.counts().await.unwrap();
    // Its own control ID: the A01 with this MSH-10 was stored above, and a different message under
    // the same ID is refused as a duplicate (AE 205) before mapping is asked.
    let unmapped = replace(
        &replace(
            &replace(&a01, "ADT^A01^ADT_A01", "ADT^A99^ADT_A01"),
            "EVN|A01",
            "EVN|A99",
        ),
        "|FIX-A01-0002|",
        "|FIX-A99-0001|",
    );
    assert_eq!(
        summary(&client.request(&unmapped).await.unwrap()).code,
        Some(AckCode::AA)
    );
    let after = app.store.counts().await.unwrap();
    assert_eq!(
        (after.inbound, after.events),
        (before.inbound + 1, before.events)
    );

    // The readiness answer names the active mapping version.
    let (status, body) = common::http_get(app.http_addr, "/health/ready").await;
    assert_eq!(status, 200);
    assert!(body.contains(&version), "{body}");
    let (status, body) = common::http_get(app.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    // The metrics recorder is global to the process: the hot-reload test in this binary may have
    // swapped the same set out meanwhile (its gauge then reads 0), so only the line is checked
    // here; the hot-reload test checks the values.
    assert!(
        body.contains(&format!("ferry_mappings_active{{version=\"{version}\"}}")),
        "{body}"
    );
    // The group committer reports each shared commit, its size and how long it took, as
    // histograms with buckets.
    for line in [
        "ferry_commit_batch_size_bucket{le=\"1\"} ",
        "ferry_commit_batch_size_count ",
        "ferry_commit_seconds_bucket{le=\"0.0005\"} ",
        "ferry_commit_seconds_count ",
    ] {
        assert!(body.contains(line), "{line}missing: {body}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_messages_become_events_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    mapped_messages_become_events(format!("sqlite://{}/ferry.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_messages_become_events_postgres() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    mapped_messages_become_events(db.url.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_messages_rejected_when_the_listener_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/ferry.db", dir.path().display());
    let app = App::start(&settings(
        &url,
        &manifest("mappings"),
        UnmappedPolicy::Reject,
    ))
    .await
    .unwrap();
    let mut client = MllpClient::connect(app.mllp_addr(), TIMEOUT).await.unwrap();
    let a01 = fixture("adt_a01_basic.hl7");
    let unmapped = replace(
        &replace(&a01, "ADT^A01^ADT_A01", "ADT^A99^ADT_A01"),
        "EVN|A01",
        "EVN|A99",
    );
    let s = summary(&client.request(&unmapped).await.unwrap());
    assert_eq!(s.code, Some(AckCode::AR));
    assert_eq!(s.error_codes, vec!["200"]);
    assert_eq!(s.error_locations, vec!["MSH^1^9"]);
    // Mapped types still pass on the same listener.
    assert_eq!(
        summary(&client.request(&a01).await.unwrap()).code,
        Some(AckCode::AA)
    );
    assert_eq!(app.store.counts().await.unwrap().events, 1);
    app.shutdown().await;
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

async fn wait_for_version(app: &App, accept: impl Fn(&str) -> bool) -> String {
    for _ in 0..200 {
        let v = app.mappings.load().version().to_owned();
        if accept(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("mapping version did not change in time");
}

/// Edits two files of a copy of the shipped mappings while four connections send admissions:
/// every message is acknowledged AA and mapped exactly once, and each event is consistent with one
/// whole set (patient class *and* sex from the same version: a half-loaded set would mix them). A
/// broken edit in between is refused and the previous set keeps mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_while_messages_flow() {
    let work = tempfile::tempdir().unwrap();
    // The examples point at ../../fixtures, so the copy keeps that layout.
    common::copy_tree(&manifest("mappings"), &work.path().join("mappings"));
    common::copy_tree(&manifest("fixtures"), &work.path().join("fixtures"));
    let dir = work.path().join("mappings");
    let class_table = dir.join("tables/patient_class.yaml");
    let sex_table = dir.join("tables/administrative_sex.yaml");
    let version_a = MappingSet::load(&dir).unwrap().version().to_owned();

    let url = format!("sqlite://{}/ferry.db", work.path().display());
    let app = App::start(&settings(&url, &dir, UnmappedPolicy::Accept))
        .await
        .unwrap();
    assert_eq!(app.mappings.load().version(), version_a);

    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for task in 0..4 {
        let stop = stop.clone();
        let addr = app.mllp_addr();
        senders.push(tokio::spawn(async move {
            let mut client = MllpClient::connect(addr, TIMEOUT).await.unwrap();
            let a01 = fixture("adt_a01_basic.hl7");
            let mut visits = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let visit = format!("HR{task}X{i}");
                let message = replace(
                    &replace(&a01, "FIX-A01-0002", &format!("HR-{task}-{i}")),
                    "V200010",
                    &visit,
                );
                let ack = client.request(&message).await.unwrap();
                assert_eq!(
                    summary(&ack).code,
                    Some(AckCode::AA),
                    "{}",
                    String::from_utf8_lossy(&ack)
                );
                visits.push(visit);
                i += 1;
            }
            visits
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    // Set B: two files changed one after the other, with a pause between, so the watcher sees a
    // half-written set; whatever it loads in between must not map any message.
    edit(&class_table, "I: inpatient", "I: emergency");
    let version_mid = MappingSet::load(&dir).unwrap().version().to_owned();
    tokio::time::sleep(Duration::from_millis(100)).await;
    edit(&sex_table, "F: female", "F: other");
    let version_b = MappingSet::load(&dir).unwrap().version().to_owned();
    wait_for_version(&app, |v| v == version_b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The metrics gauge names the set now active (only this test activates set B).
    let (_, body) = common::http_get(app.http_addr, "/metrics").await;
    assert!(
        body.contains(&format!(
            "ferry_mappings_active{{version=\"{version_b}\"}} 1"
        )),
        "{body}"
    );

    // A broken edit is refused: set B stays active.
    edit(&class_table, "map:", "mapp:");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(app.mappings.load().version(), version_b);

    // Back to set A.
    edit(&class_table, "mapp:", "map:");
    edit(&class_table, "I: emergency", "I: inpatient");
    edit(&sex_table, "F: other", "F: female");
    wait_for_version(&app, |v| v == version_a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut visits = Vec::new();
    for s in senders {
        visits.extend(s.await.unwrap());
    }
    let (mut seen_a, mut seen_b) = (0, 0);
    for visit in &visits {
        let stream = stream_id(StreamKind::Encounter, TENANT, Some("TEST-HOSP"), visit);
        let events = app.store.read_stream(TENANT, &stream).await.unwrap();
        assert_eq!(events.len(), 1, "{visit}: {events:?}");
        let e = &events[0];
        let version = e.metadata["mapping_version"].as_str().unwrap();
        let class = e.payload["encounter"]["class"].as_str().unwrap();
        let sex = e.payload["patient"]["sex"].as_str().unwrap();
        // Each event must match the one whole set its metadata names. The intermediate set (class
        // edited, sex not yet) is a complete set of its own on disk and may have been active.
        match (version, class, sex) {
            (v, "inpatient", "female") if v == version_a => seen_a += 1,
            (v, "emergency", "other") if v == version_b => seen_b += 1,
            (v, "emergency", "female") if v == version_mid => {}
            other => panic!("{visit}: {other:?} is not what that version maps to"),
        }
    }
    assert!(
        seen_a > 0 && seen_b > 0,
        "A {seen_a}, B {seen_b}: the reload was not exercised"
    );
    assert_eq!(
        app.store.counts().await.unwrap().events as usize,
        visits.len()
    );
    app.shutdown().await;
}
