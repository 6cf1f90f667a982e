//! Two Ferry instances on one PostgreSQL database fold messages about the same patient into the
//! read models at the same time. Each batch locks the resources it read; a resource the other
//! instance created or changed meanwhile makes the batch's one-statement read-model write fail as
//! contention (a unique violation, or migration 0005's check), and the batch is retried. Nothing
//! may be lost: every change becomes its own version, with its history row, in one unbroken
//! sequence, and the search rows are the current version's. (When this test was written, 2 to 4
//! batches per run were rolled back as contention and retried.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use ferry::app::App;
use ferry::mllp::client::MllpClient;
use sqlx::Connection as _;

const TENANT: &str = "hospital-a";
const CONNECTIONS_PER_INSTANCE: usize = 3;
const PATIENTS: usize = 20;
/// Messages per patient on each connection.
const ROUNDS: usize = 2;

/// An A08 for `patient`; every message gives the patient a new family name, so every one of them
/// changes the Patient resource.
fn a08(patient: usize, instance: usize, connection: usize, round: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|FEED|NORTH|FERRY|GW|20261122090000||ADT^A08^ADT_A01|P{patient}I{instance}C{connection}R{round}|P|2.5.1\r\
         EVN|A08|20261122090000\r\
         PID|1||P{patient:03}^^^NORTH^MR||Name{instance}x{connection}x{round}^Pat||19800101|F\r\
         PV1|1|O\r"
    )
    .into_bytes()
}

/// Every connection of both instances goes through the patients in the same order, so the two
/// instances create each patient at about the same moment and then update it side by side.
async fn send_all(addr: SocketAddr, instance: usize) {
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS_PER_INSTANCE {
        tasks.push(tokio::spawn(async move {
            let mut client = MllpClient::connect(addr, Duration::from_secs(30))
                .await
                .unwrap();
            for patient in 0..PATIENTS {
                for round in 0..ROUNDS {
                    common::request_accepted(&mut client, &a08(patient, instance, c, round)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_fold_the_same_patients_without_losing_a_change() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    let a = App::start(&common::app_settings(&db.url, TENANT))
        .await
        .unwrap();
    let b = App::start(&common::app_settings(&db.url, TENANT))
        .await
        .unwrap();
    tokio::join!(send_all(a.mllp_addr(), 1), send_all(b.mllp_addr(), 2));

    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let per_patient = (2 * CONNECTIONS_PER_INSTANCE * ROUNDS) as i64;
    let (events,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM events WHERE hospital_id = $1 AND event_type = 'PatientUpdated'",
    )
    .bind(TENANT)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        events,
        per_patient * PATIENTS as i64,
        "one event per message"
    );
    let current: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, version_id FROM fhir_resources WHERE hospital_id = $1 \
         AND resource_type = 'Patient' ORDER BY id",
    )
    .bind(TENANT)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        current.len(),
        PATIENTS,
        "one Patient per patient: {current:?}"
    );
    for (id, version) in current {
        // Every message changed the name: one version each, numbered 1, 2, 3, … without a gap
        // or a repeat (a lost update would leave a version out or write one twice).
        assert_eq!(version, per_patient, "Patient/{id}");
        let history: Vec<(i64,)> = sqlx::query_as(
            "SELECT version_id FROM fhir_history WHERE hospital_id = $1 \
             AND resource_type = 'Patient' AND id = $2 ORDER BY version_id",
        )
        .bind(TENANT)
        .bind(&id)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let numbers: Vec<i64> = history.into_iter().map(|(v,)| v).collect();
        assert_eq!(
            numbers,
            (1..=per_patient).collect::<Vec<_>>(),
            "Patient/{id}"
        );
        // The current row holds its last history version's body.
        let (same,): (bool,) = sqlx::query_as(
            "SELECT r.body = h.body FROM fhir_resources AS r JOIN fhir_history AS h \
             ON h.hospital_id = r.hospital_id AND h.resource_type = r.resource_type \
             AND h.id = r.id AND h.version_id = r.version_id \
             WHERE r.hospital_id = $1 AND r.resource_type = 'Patient' AND r.id = $2",
        )
        .bind(TENANT)
        .bind(&id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(same, "Patient/{id}");
        // The search rows are the current version's only: the write replaced the old ones in
        // the statement that inserted the new ones.
        let families: Vec<(String,)> = sqlx::query_as(
            "SELECT value FROM fhir_search WHERE hospital_id = $1 AND resource_type = 'Patient' \
             AND id = $2 AND param = 'family'",
        )
        .bind(TENANT)
        .bind(&id)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert_eq!(families.len(), 1, "Patient/{id}: {families:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}
