//! A `ferry serve` child process, as operators run it: for crash tests and multi-instance tests.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `ferry serve` and the addresses it printed.
pub struct Server {
    pub child: Child,
    pub mllp: SocketAddr,
    pub http: SocketAddr,
}

pub async fn spawn_server(config: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("FERRY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut mllp, mut http) = (None, None);
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(a) = line.strip_prefix("ferry: mllp listening on ") {
                mllp = Some(a.parse().expect("mllp addr"));
            } else if let Some(a) = line.strip_prefix("ferry: http listening on ") {
                http = Some(a.parse().expect("http addr"));
            }
            if mllp.is_some() && http.is_some() {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("ferry serve printed its listening lines");
    Server {
        child,
        mllp: mllp.expect("mllp line"),
        http: http.expect("http line"),
    }
}
