//! End-to-end ingest over real sockets, against both store backends: the app is started on port 0,
//! messages go over MLLP, and the ACK bytes and stored rows are checked.
//!
//! Each scenario is written once and run on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use ferry::app::App;
use ferry::config::{ListenerSettings, MllpListenerSettings, Settings};
use ferry::hl7::ack::{
    AckCode, AckHeader, AckSummary, Disposition, expects_accept_ack, summarize_ack,
};
use ferry::mllp::client::{ClientError, MllpClient};
use ferry::store::{DynStore, IdempotencyKey, InboundStatus};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A store location for one scenario run; keeps its temporary folder or database alive.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(common::PgTestDb),
}

impl Backend {
    fn url(&self) -> String {
        match self {
            Backend::Sqlite(dir) => format!("sqlite://{}/ferry.db", dir.path().display()),
            Backend::Postgres(db) => db.url.clone(),
        }
    }
}

async fn sqlite() -> Backend {
    Backend::Sqlite(tempfile::tempdir().unwrap())
}

async fn postgres() -> Option<Backend> {
    common::postgres_store().await.map(Backend::Postgres)
}

fn settings(url: &str, tweak: impl FnOnce(&mut MllpListenerSettings)) -> Settings {
    let mut listener = MllpListenerSettings {
        name: "test".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        hospital_id: "hospital-a".into(),
        ..MllpListenerSettings::default()
    };
    tweak(&mut listener);
    let mut s = Settings {
        listeners: vec![ListenerSettings::Mllp(listener)],
        shutdown_grace_secs: 5,
        ..Settings::default()
    };
    s.store.url = url.to_owned();
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    // These tests are about framing, ACKs and durability, and send the whole corpus: without
    // mappings every well-formed message is accepted unmapped. Mapped ingest is tests/mapped_ingest.rs.
    s.mappings.dir = "tests/no-mappings-here".into();
    s
}

async fn start(backend: &Backend) -> App {
    App::start(&settings(&backend.url(), |_| {})).await.unwrap()
}

async fn connect(app: &App) -> MllpClient {
    MllpClient::connect(app.mllp_addr(), TIMEOUT).await.unwrap()
}

fn summary(ack: &[u8]) -> AckSummary {
    let text = String::from_utf8_lossy(ack);
    summarize_ack(&text).unwrap_or_else(|| panic!("not an ACK: {text:?}"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/fixtures/hl7v2/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn msh_field(message: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(message);
    let line = text.split(['\r', '\n']).next().unwrap_or("");
    let fs = line.chars().nth(3).unwrap_or('|');
    if n == 1 {
        return fs.to_string();
    }
    line.split(fs).nth(n - 1).unwrap_or("").to_owned()
}

fn key(message: &[u8]) -> IdempotencyKey {
    IdempotencyKey {
        hospital_id: "hospital-a".into(),
        sending_application: msh_field(message, 3),
        sending_facility: msh_field(message, 4),
        control_id: msh_field(message, 10),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: the well-formed corpus, sent twice.
// ---------------------------------------------------------------------------------------------

/// What the oracle expects for one corpus message.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Accepted; `Some(code)` when an ACK is sent.
    Accepted(Option<AckCode>),
    /// Rejected for an empty MSH-10.
    NoControlId(Option<AckCode>),
    /// Same key as an earlier message with other content: AE/CE 205.
    DuplicateKey(Option<AckCode>),
}

async fn corpus_twice(backend: Backend) {
    let Some(files) = ferry::testing::hl7v2_corpus() else {
        return;
    };
    let app = start(&backend).await;
    let messages: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read(p).unwrap()))
        .collect();
    assert!(
        messages.len() >= 700,
        "corpus too small: {}",
        messages.len()
    );

    // The oracle: the corpus reuses control IDs across different messages (sample data), which
    // Ferry must answer with AE 205 after the first; empty MSH-10 gets AR 101.
    let mut first_by_key: HashMap<IdempotencyKey, usize> = HashMap::new();
    let mut expected = Vec::new();
    for (i, (_, m)) in messages.iter().enumerate() {
        let text = String::from_utf8_lossy(m);
        let mode = AckHeader::from_raw(&text).mode;
        let k = key(m);
        let e = if k.control_id.is_empty() {
            Expect::NoControlId(mode.code_for(Disposition::Reject))
        } else if let Some(first) = first_by_key.get(&k) {
            assert_ne!(messages[*first].1, *m, "corpus has exact duplicates");
            Expect::DuplicateKey(mode.code_for(Disposition::Error))
        } else {
            first_by_key.insert(k.clone(), i);
            Expect::Accepted(mode.code_for(Disposition::Accept))
        };
        expected.push(e);
    }

    // Messages with the same key go over the same connection, in corpus order, so "first" is
    // well defined; 6 connections in parallel.
    const CONNECTIONS: usize = 6;
    let lanes = {
        let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); CONNECTIONS];
        for (i, (_, m)) in messages.iter().enumerate() {
            let k = key(m);
            let h = k.sending_application.len() * 31
                + k.control_id.bytes().map(usize::from).sum::<usize>();
            lanes[h % CONNECTIONS].push(i);
        }
        lanes
    };

    let mut first_acks: HashMap<usize, Vec<u8>> = HashMap::new();
    for pass in 0..2 {
        let mut tasks = tokio::task::JoinSet::new();
        for lane in &lanes {
            let lane = lane.clone();
            let messages = messages.clone();
            let expected = expected.clone();
            let addr = app.mllp_addr();
            tasks.spawn(async move {
                let mut client = MllpClient::connect(addr, TIMEOUT).await.unwrap();
                let mut acks = Vec::new();
                for i in lane {
                    let (name, m) = &messages[i];
                    let code = match &expected[i] {
                        Expect::Accepted(c) | Expect::NoControlId(c) | Expect::DuplicateKey(c) => {
                            *c
                        }
                    };
                    let Some(code) = code else {
                        // No ACK by protocol (MSH-15 NE/ER). The next ACK on this connection
                        // proves it was processed; a stray ACK would fail the next check.
                        client.send(m).await.unwrap();
                        continue;
                    };
                    let ack = client
                        .request(m)
                        .await
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    let s = summary(&ack);
                    assert_eq!(
                        s.code,
                        Some(code),
                        "{name}: {:?}",
                        String::from_utf8_lossy(&ack)
                    );
                    assert_eq!(s.control_id, msh_field(m, 10), "{name}: MSA-2");
                    match &expected[i] {
                        Expect::Accepted(_) => assert!(s.error_codes.is_empty(), "{name}"),
                        Expect::NoControlId(_) => {
                            assert_eq!(s.error_codes, vec!["101"], "{name}");
                            assert_eq!(s.error_locations, vec!["MSH^1^10"], "{name}");
                        }
                        Expect::DuplicateKey(_) => {
                            assert_eq!(s.error_codes, vec!["205"], "{name}");
                            assert_eq!(s.error_locations, vec!["MSH^1^10"], "{name}");
                        }
                    }
                    acks.push((i, ack.to_vec()));
                }
                // A sentinel proves every message before it on this connection was processed.
                let sentinel = format!(
                    "MSH|^~\\&|SENTINEL|T|FERRY|GW|20261122||ADT^A01|S-{}-{pass}|P|2.5\r",
                    uuid::Uuid::now_v7().simple()
                );
                let s = summary(&client.request(sentinel.as_bytes()).await.unwrap());
                assert_eq!(s.code, Some(AckCode::AA));
                acks
            });
        }
        while let Some(acks) = tasks.join_next().await {
            for (i, ack) in acks.unwrap() {
                if pass == 0 {
                    first_acks.insert(i, ack);
                } else if matches!(expected[i], Expect::Accepted(_)) {
                    // A resend gets the byte-identical original ACK.
                    assert_eq!(
                        String::from_utf8_lossy(&ack),
                        String::from_utf8_lossy(&first_acks[&i]),
                        "{}: resend ACK differs",
                        messages[i].0
                    );
                }
            }
        }
    }

    // Rows: one accepted inbound row and one idempotency record per accepted message, whatever
    // the resends; rejected messages logged on each pass; raw bytes kept exactly.
    let accepted = expected
        .iter()
        .filter(|e| matches!(e, Expect::Accepted(_)))
        .count();
    let rejected = expected.len() - accepted;
    let store = &app.store;
    let counts = store.counts().await.unwrap();
    let sentinels = 2 * CONNECTIONS;
    assert_eq!(counts.idempotency as usize, accepted + sentinels);
    assert_eq!(counts.inbound as usize, accepted + 2 * rejected + sentinels);
    for (i, (name, m)) in messages.iter().enumerate() {
        if !matches!(expected[i], Expect::Accepted(_)) {
            continue;
        }
        let record = store
            .idempotency(&key(m))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}"));
        let row = store.inbound(record.inbound_id).await.unwrap().unwrap();
        assert_eq!(row.raw, *m, "{name}: raw bytes");
        assert_eq!(row.status, InboundStatus::Accepted);
        assert_eq!(row.hospital_id, "hospital-a");
        assert_eq!(row.listener, "test");
        assert_eq!(row.control_id.as_deref(), Some(msh_field(m, 10).as_str()));
        if let Some(first) = first_acks.get(&i) {
            assert_eq!(record.ack, *first, "{name}: stored ACK is the one sent");
        }
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_twice_sqlite() {
    corpus_twice(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_twice_postgres() {
    if let Some(b) = postgres().await {
        corpus_twice(b).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: malformed input gets AE/AR, and the connection goes on.
// ---------------------------------------------------------------------------------------------

async fn negative_corpus(backend: Backend) {
    let Some(dir) = ferry::testing::corpus_dir("hl7v2_negative") else {
        return;
    };
    let files = ferry::testing::files_under(&dir, &[]);
    assert!(files.len() >= 70, "negative corpus too small");
    let app = start(&backend).await;
    let mut client = connect(&app).await;
    let valid = fixture("adt_a01_utf8.hl7");
    for (n, file) in files.iter().enumerate() {
        let name = file.display().to_string();
        let bytes = std::fs::read(file).unwrap();
        let ack = client
            .request(&bytes)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let s = summary(&ack);
        assert!(
            matches!(
                s.code,
                Some(AckCode::AE | AckCode::AR | AckCode::CE | AckCode::CR)
            ),
            "{name} got {:?}",
            String::from_utf8_lossy(&ack)
        );
        assert_eq!(s.error_codes.len(), 1, "{name}: one ERR segment");
        assert!(!s.diagnostics[0].is_empty(), "{name}: ERR-8 diagnostic");
        // The same connection then accepts a valid message.
        let m = ferry::loadgen::with_control_id(&valid, &format!("NEG-OK-{n}")).unwrap();
        let s = summary(&client.request(&m).await.unwrap());
        assert_eq!(s.code, Some(AckCode::AA), "after {name}");
    }
    // Every bad message is kept, raw, as a rejected row.
    let counts = app.store.counts().await.unwrap();
    assert_eq!(counts.inbound as usize, 2 * files.len());
    assert_eq!(counts.idempotency as usize, files.len());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_corpus_sqlite() {
    negative_corpus(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_corpus_postgres() {
    if let Some(b) = postgres().await {
        negative_corpus(b).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: resends and reused control IDs, header errors, character sets.
// ---------------------------------------------------------------------------------------------

async fn resends_and_header_errors(backend: Backend) {
    let app = start(&backend).await;
    let mut client = connect(&app).await;
    let a01 = fixture("adt_a01_utf8.hl7");

    let first = client.request(&a01).await.unwrap();
    let s = summary(&first);
    assert_eq!(s.code, Some(AckCode::AA));
    assert_eq!(s.control_id, "FIX-A01-0001");
    let text = String::from_utf8(first.to_vec()).unwrap();
    assert!(
        text.starts_with("MSH|^~\\&|FERRY|GW|FERRY-TEST|TEST-HOSP|"),
        "sender and receiver swapped: {text}"
    );
    assert!(text.contains("||ACK^A01^ACK|"), "{text}");
    assert!(
        text.contains("|P|2.5.1||||||UNICODE UTF-8\rMSA|AA|FIX-A01-0001\r"),
        "{text}"
    );
    let before = app.store.counts().await.unwrap();

    // Same content again, also with LF line endings: byte-identical ACK, nothing written.
    let again = client.request(&a01).await.unwrap();
    assert_eq!(again, first);
    let lf: Vec<u8> = a01
        .iter()
        .map(|b| if *b == b'\r' { b'\n' } else { *b })
        .collect();
    assert_eq!(client.request(&lf).await.unwrap(), first);
    // From another connection too.
    let mut other = connect(&app).await;
    assert_eq!(other.request(&a01).await.unwrap(), first);
    assert_eq!(app.store.counts().await.unwrap(), before);

    // Same key, different content: AE 205 at MSH-10, the message logged as rejected.
    let changed = String::from_utf8(a01.clone())
        .unwrap()
        .replace("19700101", "19700102");
    let s = summary(&client.request(changed.as_bytes()).await.unwrap());
    assert_eq!(s.code, Some(AckCode::AE));
    assert_eq!(s.error_codes, vec!["205"]);
    assert_eq!(s.error_locations, vec!["MSH^1^10"]);
    let after = app.store.counts().await.unwrap();
    assert_eq!(after.inbound, before.inbound + 1);
    assert_eq!(after.idempotency, before.idempotency);
    let rows = app
        .store
        .inbound_by_control_id("hospital-a", "FIX-A01-0001")
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].status, InboundStatus::Rejected);
    assert_eq!(rows[1].raw, changed.as_bytes());
    assert_eq!(rows[1].ack_code.as_deref(), Some("AE"));

    // Header problems are the sender's: AR with the field located.
    let cases: &[(&str, &str, &str)] = &[
        ("MSH|^~\\&|A|B|C|D|2026|||H1|P|2.5\r", "101", "MSH^1^9"),
        (
            "MSH|^~\\&|A|B|C|D|2026||ADT^A01||P|2.5\r",
            "101",
            "MSH^1^10",
        ),
        (
            "MSH|^~\\&|A|B|C|D|2026||ADT^A01|H3|P|3.0\r",
            "203",
            "MSH^1^12",
        ),
        ("MSH|^~\\&|A|B|C|D|2026||ADT^A01|H4|P|\r", "101", "MSH^1^12"),
        (
            "MSH|^~\\&|A|B|C|D|2026||{}^A01|H5|P|2.5\r",
            "200",
            "MSH^1^9^1^1",
        ),
        (
            "MSH|^~\\&|A|B|C|D|2026||ADT^A01|H6|0|2.5\r",
            "202",
            "MSH^1^11",
        ),
        (
            "MSH|^~\\\\&|A|B|C|D|2026||ADT^A01|H7|P|2.5\r",
            "102",
            "MSH^1^2",
        ),
    ];
    for (message, code, location) in cases {
        let s = summary(&client.request(message.as_bytes()).await.unwrap());
        assert_eq!(s.code, Some(AckCode::AR), "{message}");
        assert_eq!(&s.error_codes, &[code.to_string()], "{message}");
        assert_eq!(&s.error_locations, &[location.to_string()], "{message}");
    }
    // A bad segment is a content problem: AE.
    let s = summary(
        &client
            .request(b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|C1|P|2.5\rPID|1\rpan|x\r")
            .await
            .unwrap(),
    );
    assert_eq!(s.code, Some(AckCode::AE));
    assert_eq!(s.error_codes, vec!["100"]);
    assert_eq!(s.control_id, "C1");

    // ISO-8859-1: decoded by MSH-18, the ACK written back in it.
    let latin1 = fixture("adt_a08_latin1.hl7");
    let ack = client.request(&latin1).await.unwrap();
    assert_eq!(summary(&ack).code, Some(AckCode::AA));
    let rows = app
        .store
        .inbound_by_control_id("hospital-a", "FIX-A08-0001")
        .await
        .unwrap();
    assert_eq!(rows[0].raw, latin1);
    assert!(
        rows[0]
            .decoded
            .as_deref()
            .unwrap()
            .contains("François^René")
    );
    assert_eq!(rows[0].charset.as_deref(), Some("8859/1"));

    // Enhanced mode: MSH-15 AL → commit ACK CA.
    let enhanced = fixture("orm_o01_enhanced.hl7");
    assert!(expects_accept_ack(&enhanced));
    assert_eq!(
        summary(&client.request(&enhanced).await.unwrap()).code,
        Some(AckCode::CA)
    );
    // MSH-15 NE: nothing is sent, but the message is committed before the next one's ACK.
    let ne = b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|NE-1|P|2.5|||NE|NE\r";
    client.send(ne).await.unwrap();
    let s = summary(
        &client
            .request(b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|NE-2|P|2.5\r")
            .await
            .unwrap(),
    );
    assert_eq!(s.control_id, "NE-2");
    assert_eq!(
        app.store
            .inbound_by_control_id("hospital-a", "NE-1")
            .await
            .unwrap()
            .len(),
        1
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_and_header_errors_sqlite() {
    resends_and_header_errors(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_and_header_errors_postgres() {
    if let Some(b) = postgres().await {
        resends_and_header_errors(b).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Framing and connection handling over real sockets (SQLite: the backend does not matter here).
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_split_frames_and_pipelining() {
    let backend = sqlite().await;
    let app = start(&backend).await;
    let mut client = connect(&app).await;
    let a01 = fixture("adt_a01_utf8.hl7");
    // Random bytes outside any frame are dropped; the next frame is answered.
    let noise: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .filter(|b| *b != 0x0b)
        .collect();
    client.send_raw(&noise).await.unwrap();
    assert_eq!(
        summary(&client.request(&a01).await.unwrap()).code,
        Some(AckCode::AA)
    );
    // Two frames in one write: two ACKs, in order.
    let m1 = ferry::loadgen::with_control_id(&a01, "PIPE-1").unwrap();
    let m2 = ferry::loadgen::with_control_id(&a01, "PIPE-2").unwrap();
    let mut both = ferry::mllp::codec::frame(&m1);
    both.extend(ferry::mllp::codec::frame(&m2));
    client.send_raw(&both).await.unwrap();
    assert_eq!(
        summary(&client.receive().await.unwrap()).control_id,
        "PIPE-1"
    );
    assert_eq!(
        summary(&client.receive().await.unwrap()).control_id,
        "PIPE-2"
    );
    // One frame trickled a byte at a time.
    let m3 = ferry::loadgen::with_control_id(&a01, "TRICKLE").unwrap();
    for b in ferry::mllp::codec::frame(&m3) {
        client.send_raw(&[b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        summary(&client.receive().await.unwrap()).control_id,
        "TRICKLE"
    );
    // A truncated frame then close: nothing stored, the server goes on.
    let mut cut = connect(&app).await;
    let m4 = ferry::loadgen::with_control_id(&a01, "CUT").unwrap();
    cut.send_raw(&ferry::mllp::codec::frame(&m4)[..100])
        .await
        .unwrap();
    drop(cut);
    let mut after = connect(&app).await;
    let m5 = ferry::loadgen::with_control_id(&a01, "AFTER").unwrap();
    assert_eq!(
        summary(&after.request(&m5).await.unwrap()).code,
        Some(AckCode::AA)
    );
    assert!(
        app.store
            .inbound_by_control_id("hospital-a", "CUT")
            .await
            .unwrap()
            .is_empty()
    );
    app.shutdown().await;
}

/// Random bytes inside frames (and random bytes behind a valid MSH) are answered with AE/AR, never
/// AA, and never take the connection or the process down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_get_naks() {
    let backend = sqlite().await;
    let app = start(&backend).await;
    let mut client = connect(&app).await;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64: deterministic, so a failure can be replayed.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let len = (next() % 400) as usize;
        let mut payload: Vec<u8> = (0..len)
            .map(|_| next() as u8)
            // The framing bytes cannot occur inside a frame.
            .filter(|b| *b != 0x0b && *b != 0x1c)
            .collect();
        if round % 2 == 1 {
            let mut with_header = b"MSH|^~\\&|R|F|G|W|2026||ADT^A01|RND|P|2.5\r".to_vec();
            with_header.append(&mut payload);
            payload = with_header;
        }
        let ack = client
            .request(&payload)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let s = summary(&ack);
        assert!(
            matches!(s.code, Some(AckCode::AE | AckCode::AR)),
            "round {round}: {:?} for {payload:?}",
            String::from_utf8_lossy(&ack)
        );
    }
    let s = summary(&client.request(&fixture("adt_a01_utf8.hl7")).await.unwrap());
    assert_eq!(s.code, Some(AckCode::AA));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_and_connection_closed() {
    let backend = sqlite().await;
    let app = App::start(&settings(&backend.url(), |l| l.max_frame_bytes = 1024))
        .await
        .unwrap();
    let mut client = connect(&app).await;
    let mut big = String::from("MSH|^~\\&|A|B|C|D|2026||ORU^R01|BIG-1|P|2.5\r");
    while big.len() < 4000 {
        big.push_str("OBX|1|TX|||lots of text\r");
    }
    let s = summary(&client.request(big.as_bytes()).await.unwrap());
    assert_eq!(s.code, Some(AckCode::AR));
    assert_eq!(s.control_id, "BIG-1");
    assert!(s.diagnostics[0].contains("1024"), "{:?}", s.diagnostics);
    assert!(matches!(client.receive().await, Err(ClientError::Closed)));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sender_is_cut_at_the_idle_timeout() {
    let backend = sqlite().await;
    let app = App::start(&settings(&backend.url(), |l| l.idle_timeout_secs = 2))
        .await
        .unwrap();
    let mut slow = connect(&app).await;
    let started = std::time::Instant::now();
    // One byte a second: the frame never completes within the idle timeout.
    let frame = ferry::mllp::codec::frame(b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|SLOW|P|2.5\r");
    let mut closed = false;
    for b in frame.iter().take(6) {
        if slow.send_raw(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !closed {
        assert!(matches!(
            slow.receive().await,
            Err(ClientError::Closed | ClientError::Mllp(_))
        ));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Others are served meanwhile and after.
    let mut fast = connect(&app).await;
    let s = summary(&fast.request(&fixture("adt_a01_utf8.hl7")).await.unwrap());
    assert_eq!(s.code, Some(AckCode::AA));
    assert!(
        app.store
            .inbound_by_control_id("hospital-a", "SLOW")
            .await
            .unwrap()
            .is_empty()
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit() {
    let backend = sqlite().await;
    let app = App::start(&settings(&backend.url(), |l| l.max_connections = 2))
        .await
        .unwrap();
    let a01 = fixture("adt_a01_utf8.hl7");
    let mut c1 = connect(&app).await;
    let mut c2 = connect(&app).await;
    assert_eq!(
        summary(&c1.request(&a01).await.unwrap()).code,
        Some(AckCode::AA)
    );
    assert_eq!(
        summary(&c2.request(&a01).await.unwrap()).code,
        Some(AckCode::AA)
    );
    let mut c3 = connect(&app).await;
    assert!(
        c3.request(&a01).await.is_err(),
        "third connection must be closed"
    );
    drop(c1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c4 = connect(&app).await;
    assert_eq!(
        summary(&c4.request(&a01).await.unwrap()).code,
        Some(AckCode::AA)
    );
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Health, shutdown, and a store that goes away.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_graceful_shutdown() {
    let backend = sqlite().await;
    let app = start(&backend).await;
    assert_eq!(common::http_get(app.http_addr, "/health/live").await.0, 200);
    let (status, body) = common::http_get(app.http_addr, "/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"backend\":\"sqlite\""), "{body}");

    let mllp = app.mllp_addr();
    let store = app.store.clone();
    let mut client = connect(&app).await;
    assert_eq!(
        summary(&client.request(&fixture("adt_a01_utf8.hl7")).await.unwrap()).code,
        Some(AckCode::AA)
    );
    app.shutdown().await;
    // Stopped accepting, and what was ACKed is stored.
    assert!(tokio::net::TcpStream::connect(mllp).await.is_err());
    assert_eq!(
        store
            .inbound_by_control_id("hospital-a", "FIX-A01-0001")
            .await
            .unwrap()
            .len(),
        1
    );
}

/// When the database goes away, Ferry answers AE with a retry-later diagnostic, never AA, and
/// readiness turns 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_gives_ae_never_aa() {
    let Some(db) = common::postgres_store().await else {
        return;
    };
    let app = App::start(&settings(&db.url, |_| {})).await.unwrap();
    let mut client = connect(&app).await;
    let a01 = fixture("adt_a01_utf8.hl7");
    assert_eq!(
        summary(&client.request(&a01).await.unwrap()).code,
        Some(AckCode::AA)
    );
    drop_database(&db.url).await;
    let m = ferry::loadgen::with_control_id(&a01, "DOWN-1").unwrap();
    let s = summary(&client.request(&m).await.unwrap());
    assert_eq!(s.code, Some(AckCode::AE));
    assert_eq!(s.error_codes, vec!["207"]);
    assert!(
        s.diagnostics[0].contains("resend it later"),
        "{:?}",
        s.diagnostics
    );
    assert_eq!(
        common::http_get(app.http_addr, "/health/ready").await.0,
        503
    );
    app.shutdown().await;
}

/// Drops a test database under a running app (its connections are ended by FORCE).
async fn drop_database(url: &str) {
    use sqlx::Connection;
    let admin = std::env::var("FERRY_TEST_POSTGRES_URL").unwrap();
    let name = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

// Keep the unused-import lint quiet when PostgreSQL is skipped.
#[allow(dead_code)]
fn _uses(_: DynStore) {}
