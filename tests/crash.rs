//! Crash test: a `ferry serve` child process takes a stream of messages over 8 connections and is
//! killed with SIGKILL mid-stream. After a restart, every control ID that was ACKed is in the store
//! exactly once, and resending everything creates no duplicate. Run on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::serve::spawn_server;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::hl7::ack::{AckCode, summarize_ack};
use ferry::mllp::client::MllpClient;
use ferry::store::{ConnectOptions, IdempotencyKey, InboundStatus};

const CONNECTIONS: usize = 8;
const PER_CONNECTION: usize = 400;
const KILL_AFTER_ACKS: usize = 600;

fn message(c: usize, i: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|CRASHTEST|LAB|FERRY|GW|20261122090000||ADT^A08^ADT_A01|CRASH-{c}-{i}|P|2.5.1\rEVN|A08|20261122090000\rPID|1||{c}{i:05}^^^LAB^MR||Synthetic^Patient{i}||19800101|U\rPV1|1|O\r"
    )
    .into_bytes()
}

async fn crash_and_recover(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "auth = \"none\"\n[store]\nurl = \"{url}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\ntype = \"mllp\"\nname = \"crash\"\nlisten = \"127.0.0.1:0\"\nhospital_id = \"crash\"\n"
        ),
    )
    .unwrap();

    let mut server = spawn_server(&config).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        let acked = acked.clone();
        let addr = server.mllp;
        senders.spawn(async move {
            let Ok(mut client) = MllpClient::connect(addr, Duration::from_secs(10)).await else {
                return;
            };
            for i in 0..PER_CONNECTION {
                let Ok(ack) = client.request(&message(c, i)).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&ack);
                let s = summarize_ack(&text).expect("an ACK");
                assert_eq!(s.control_id, format!("CRASH-{c}-{i}"));
                if s.code == Some(AckCode::AA) {
                    acked.lock().unwrap().push(s.control_id);
                }
            }
        });
    }
    // Kill the server mid-stream, without warning.
    tokio::time::timeout(Duration::from_secs(120), async {
        while acked.lock().unwrap().len() < KILL_AFTER_ACKS {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("enough ACKs before the kill");
    server.child.start_kill().unwrap();
    let status = server.child.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
    while senders.join_next().await.is_some() {}
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER_ACKS);
    assert!(
        acked.len() < CONNECTIONS * PER_CONNECTION,
        "the kill came too late to test anything"
    );

    // Restart on the same store: every ACKed control ID is there exactly once.
    let server = spawn_server(&config).await;
    let store = ferry::store::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    for id in &acked {
        let rows = store.inbound_by_control_id("crash", id).await.unwrap();
        assert_eq!(rows.len(), 1, "{id} stored {} times", rows.len());
        assert_eq!(rows[0].status, InboundStatus::Accepted);
    }

    // Resend everything: all accepted, no duplicate anywhere.
    let mut resenders = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        let addr = server.mllp;
        resenders.spawn(async move {
            let mut client = MllpClient::connect(addr, Duration::from_secs(10))
                .await
                .unwrap();
            for i in 0..PER_CONNECTION {
                let ack = client.request(&message(c, i)).await.unwrap();
                let s = summarize_ack(&String::from_utf8_lossy(&ack)).unwrap();
                assert_eq!(s.code, Some(AckCode::AA), "CRASH-{c}-{i}");
            }
        });
    }
    while let Some(r) = resenders.join_next().await {
        r.unwrap();
    }
    let total = CONNECTIONS * PER_CONNECTION;
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.idempotency as usize, total);
    assert_eq!(counts.inbound as usize, total, "no duplicate inbound rows");
    let acked: HashSet<String> = acked.into_iter().collect();
    for c in 0..CONNECTIONS {
        for i in 0..PER_CONNECTION {
            let id = format!("CRASH-{c}-{i}");
            let rows = store.inbound_by_control_id("crash", &id).await.unwrap();
            assert_eq!(rows.len(), 1, "{id}");
            let key = IdempotencyKey {
                hospital_id: "crash".into(),
                sending_application: "CRASHTEST".into(),
                sending_facility: "LAB".into(),
                control_id: id.clone(),
            };
            let record = store.idempotency(&key).await.unwrap().expect("record");
            assert_eq!(
                record.inbound_id,
                rows[0].id,
                "{id} (acked before: {})",
                acked.contains(&id)
            );
        }
    }

    // SIGTERM: a graceful stop, exit status 0.
    let pid = server.child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = server.child;
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stopped within 30 s")
        .unwrap();
    assert!(exit.success(), "graceful stop: {exit:?}");
    let _ = server.http;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    crash_and_recover(format!("sqlite://{}/ferry.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_postgres() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    crash_and_recover(db.url.clone()).await;
}
