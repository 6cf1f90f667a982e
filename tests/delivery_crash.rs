//! Crash test of outbound delivery: a `ferry serve` child is killed with SIGKILL while it delivers
//! a backlog to a slow MLLP receiver. After a restart everything undelivered is delivered, in lane
//! order, and the only messages sent twice are the ones that were in flight when it died (at most
//! one per lane). Then two `ferry serve` processes on one PostgreSQL deliver a shared backlog of
//! 10,000 messages across 100 patients: each at least once, per-patient order kept, duplicates
//! counted (0 without a crash).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::receivers::{MllpAnswer, MllpReceiver, ReceivedMllp};
use common::serve::{Server, spawn_server};
use ferry::hl7::Message;
use ferry::hl7::ack::AckCode;
use ferry::mllp::client::MllpClient;

const LANES: usize = 4;

fn config(
    dir: &std::path::Path,
    url: &str,
    receiver: SocketAddr,
    enabled: bool,
) -> std::path::PathBuf {
    let path = dir.join(format!("ferry-{enabled}.toml"));
    let mappings = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    std::fs::write(
        &path,
        format!(
            r#"auth = "none"
[store]
url = "{url}"
[http]
listen = "127.0.0.1:0"
[mappings]
dir = "{mappings}"
[[listeners]]
type = "mllp"
name = "feed"
listen = "127.0.0.1:0"
hospital_id = "crash"
[delivery]
enabled = {enabled}
poll_interval_millis = 50
lease_secs = 3
[[destinations]]
name = "his"
type = "mllp"
endpoint = "{receiver}"
ack_timeout_secs = 2
parallel_lanes = {LANES}
retry = {{ initial_backoff_millis = 50, max_backoff_secs = 1 }}
[[subscriptions]]
destination = "his"
events = ["PatientUpdated"]
mapping = "outbound/his_adt_a08"
"#,
            mappings = mappings.display()
        ),
    )
    .unwrap();
    path
}

fn a08(patient: usize, seq: usize) -> Vec<u8> {
    format!(
        "MSH|^~\\&|FEED|NORTH|FERRY|GW|20261122090000||ADT^A08^ADT_A01|C-{patient}-{seq}|P|2.5.1\r\
         EVN|A08|20261122090000\r\
         PID|1||P{patient:03}^^^NORTH^MR||Seq{seq:05}^Pat||19800101|F\r\
         PV1|1|O\r"
    )
    .into_bytes()
}

/// Sends every message over `connections` connections (a patient's messages on one connection,
/// in order), checking each AA.
async fn ingest(addr: SocketAddr, patients: usize, per_patient: usize, connections: usize) {
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut client = MllpClient::connect(addr, Duration::from_secs(30))
                .await
                .unwrap();
            for seq in 1..=per_patient {
                for p in (0..patients).filter(|p| p % connections == c) {
                    common::request_accepted(&mut client, &a08(p, seq)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn lane_and_seq(r: &ReceivedMllp) -> (String, String) {
    let text = r.text();
    let m = Message::parse(&text).unwrap();
    let pid = m.segment("PID").unwrap();
    let get = |f: usize| {
        pid.field(f)
            .unwrap()
            .component(1)
            .unwrap()
            .decoded()
            .into_owned()
    };
    (get(3), get(5))
}

/// Per-lane order: in arrival order, a lane's sequence numbers never go back, except that the
/// message in flight may come again right after itself.
fn check_lane_order(received: &[ReceivedMllp]) -> BTreeMap<String, Vec<String>> {
    let mut lanes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in received {
        let (lane, seq) = lane_and_seq(r);
        let seen = lanes.entry(lane.clone()).or_default();
        if let Some(last) = seen.last() {
            assert!(seq >= *last, "lane {lane}: {seq} arrived after {last}");
        }
        if seen.last() != Some(&seq) {
            seen.push(seq);
        }
    }
    lanes
}

async fn wait_received(receiver: &MllpReceiver, distinct: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let ids: HashSet<String> = receiver
            .received()
            .into_iter()
            .map(|r| r.control_id)
            .collect();
        if ids.len() >= distinct {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {distinct} messages arrived",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kill(mut server: Server) {
    server.child.start_kill().unwrap();
    let status = server.child.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
}

async fn killed_while_delivering(url: String) {
    const PATIENTS: usize = 8;
    const PER_PATIENT: usize = 40;
    let his = MllpReceiver::start().await;
    // Slow enough that the kill lands mid-backlog.
    his.answer_always(MllpAnswer::Delay(Duration::from_millis(15), AckCode::AA));
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url, his.addr(), true);
    let server = spawn_server(&config).await;
    ingest(server.mllp, PATIENTS, PER_PATIENT, 4).await;
    his.wait_for(60, Duration::from_secs(60)).await.unwrap();
    kill(server).await;
    let before = his.received();
    // Per lane, the last message received before the kill: the only ones that may come twice.
    let mut in_flight: HashMap<String, String> = HashMap::new();
    for r in &before {
        in_flight.insert(lane_and_seq(r).0, r.control_id.clone());
    }

    let server = spawn_server(&config).await;
    wait_received(&his, PATIENTS * PER_PATIENT, Duration::from_secs(120)).await;
    let all = his.received();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &all {
        *count.entry(r.control_id.as_str()).or_default() += 1;
    }
    let twice: Vec<&str> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    println!(
        "crash test: {} delivered before the kill, {} sent twice after the restart: {twice:?}",
        before.len(),
        twice.len()
    );
    assert!(count.values().all(|n| *n <= 2), "{count:?}");
    assert!(twice.len() <= LANES, "{twice:?}");
    let in_flight: HashSet<&str> = in_flight.values().map(String::as_str).collect();
    for id in &twice {
        assert!(
            in_flight.contains(id),
            "{id} was sent twice but was not in flight"
        );
    }
    let lanes = check_lane_order(&all);
    assert_eq!(lanes.len(), PATIENTS);
    for seqs in lanes.values() {
        assert_eq!(seqs.len(), PER_PATIENT);
    }
    kill(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_delivering_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    killed_while_delivering(format!("sqlite://{}/ferry.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_delivering_postgres() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    killed_while_delivering(db.url.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_backlog() {
    const PATIENTS: usize = 100;
    const PER_PATIENT: usize = 100;
    let Some(db) = common::postgres_store().await else {
        return;
    };
    let his = MllpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The backlog: ingested with delivery off.
    let loader = spawn_server(&config(dir.path(), &db.url, his.addr(), false)).await;
    let started = Instant::now();
    ingest(loader.mllp, PATIENTS, PER_PATIENT, 8).await;
    println!(
        "two instances: {} messages ingested in {:.1} s",
        PATIENTS * PER_PATIENT,
        started.elapsed().as_secs_f64()
    );
    kill(loader).await;
    assert_eq!(his.received_count(), 0);

    let on = config(dir.path(), &db.url, his.addr(), true);
    let started = Instant::now();
    let (a, b) = tokio::join!(spawn_server(&on), spawn_server(&on));
    wait_received(&his, PATIENTS * PER_PATIENT, Duration::from_secs(300)).await;
    let took = started.elapsed();
    let all = his.received();
    let distinct: HashSet<&str> = all.iter().map(|r| r.control_id.as_str()).collect();
    let duplicates = all.len() - distinct.len();
    println!(
        "two instances: {} messages delivered in {:.1} s over {} connections, {duplicates} duplicates",
        distinct.len(),
        took.as_secs_f64(),
        his.connection_count()
    );
    assert_eq!(distinct.len(), PATIENTS * PER_PATIENT);
    assert_eq!(
        duplicates, 0,
        "no instance crashed, so nothing is sent twice"
    );
    let lanes = check_lane_order(&all);
    assert_eq!(lanes.len(), PATIENTS);
    assert!(lanes.values().all(|s| s.len() == PER_PATIENT));
    assert!(
        his.connection_count() > LANES,
        "both instances delivered ({} connections)",
        his.connection_count()
    );
    kill(a).await;
    kill(b).await;
}
