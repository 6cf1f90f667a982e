//! The `ferry` command line as users run it: `migrate`, `serve` (with port 0 and the listening
//! lines), `send`, `bench mllp` and `bench sink`, each as a child process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn fixture(name: &str) -> String {
    format!("{}/fixtures/hl7v2/{name}", env!("CARGO_MANIFEST_DIR"))
}

struct Serve {
    child: Child,
    mllp: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &std::path::Path) -> Serve {
    let mut child = Command::new(FERRY)
        .arg("serve")
        .env("FERRY_MLLP_LISTEN", "127.0.0.1:0")
        .env("FERRY_HTTP_LISTEN", "127.0.0.1:0")
        .env(
            "FERRY_DATABASE_URL",
            format!("sqlite://{}/data/ferry.db", dir.display()),
        )
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let mllp = first
        .strip_prefix("ferry: mllp listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    assert!(
        second.starts_with("ferry: http listening on 127.0.0.1:"),
        "{second:?}"
    );
    Serve { child, mllp }
}

#[test]
fn migrate_creates_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FERRY)
        .arg("migrate")
        .env(
            "FERRY_DATABASE_URL",
            format!("sqlite://{}/new/ferry.db", dir.path().display()),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ferry: sqlite store migrated\n"
    );
    assert!(dir.path().join("new/ferry.db").exists());
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[store]\nurll = \"typo\"\n").unwrap();
    let out = Command::new(FERRY)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `urll`"), "{err}");
}

#[test]
fn send_prints_acks_and_fails_on_a_nak() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let out = Command::new(FERRY)
        .arg("send")
        .arg(fixture("adt_a01_utf8.hl7"))
        .arg(fixture("adt_a08_latin1.hl7"))
        .args(["--to", &server.mllp])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("MSA|AA|FIX-A01-0001"), "{stdout}");
    assert!(stdout.contains("MSA|AA|FIX-A08-0001"), "{stdout}");

    let bad = dir.path().join("bad.hl7");
    std::fs::write(&bad, "MSH|^~\\&|A|B|C|D|2026||ADT^A01|BAD-1|P|9.9\r").unwrap();
    let out = Command::new(FERRY)
        .arg("send")
        .arg(&bad)
        .args(["--to", &server.mllp])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("MSA|AR|BAD-1"), "{stdout}");
    assert!(stdout.contains("ERR||MSH^1^12|203^"), "{stdout}");
}

#[test]
fn bench_mllp_checks_every_ack() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let out = Command::new(FERRY)
        .args(["bench", "mllp", "--to", &server.mllp])
        .args(["--connections", "3", "--messages", "300"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("sent 300 messages"), "{stdout}");
    assert!(
        stdout.contains("ACKs: 300 accepted, 0 rejected, 0 mismatched"),
        "{stdout}"
    );
    assert!(stdout.contains("p99"), "{stdout}");
}

/// A `ferry bench sink` child process; killed on drop if the test did not stop it.
struct Sink {
    child: Child,
    addr: String,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sink(answer: &str) -> Sink {
    let mut child = Command::new(FERRY)
        .args([
            "bench",
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--answer",
            answer,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("ferry: sink listening on 127.0.0.1:")
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    Sink { child, addr, lines }
}

#[test]
fn bench_sink_acks_every_message_and_prints_the_total_on_sigterm() {
    let mut sink = sink("AA");
    let out = Command::new(FERRY)
        .arg("send")
        .arg(fixture("adt_a01_utf8.hl7"))
        .arg(fixture("adt_a08_latin1.hl7"))
        .args(["--to", &sink.addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("\nMSA|AA|FIX-A01-0001\n"), "{stdout}");
    assert!(stdout.contains("\nMSA|AA|FIX-A08-0001\n"), "{stdout}");

    // The load generator checks MSA-2 of every answer against the message it sent.
    let out = Command::new(FERRY)
        .args(["bench", "mllp", "--to", &sink.addr])
        .args(["--connections", "4", "--messages", "200"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ACKs: 200 accepted, 0 rejected, 0 mismatched"),
        "{stdout}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &sink.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(sink.child.wait().unwrap().success());
    let rest: Vec<String> = sink.lines.by_ref().map(Result::unwrap).collect();
    let last = rest.last().map(String::as_str).unwrap_or("");
    assert!(
        last.starts_with("ferry: sink received 202 messages in total over 5 connections"),
        "{rest:?}"
    );
}

#[test]
fn bench_sink_answers_the_code_it_is_given() {
    let sink = sink("AE");
    let out = Command::new(FERRY)
        .arg("send")
        .arg(fixture("adt_a01_utf8.hl7"))
        .args(["--to", &sink.addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("\nMSA|AE|FIX-A01-0001|ferry bench sink answers AE to every message\n"),
        "{stdout}"
    );
    assert!(stdout.contains("\nERR||"), "{stdout}");
}
