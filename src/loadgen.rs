//! `ferry bench mllp`: a load generator that sends messages over several MLLP connections, checks
//! every ACK against its message (MSA-1 accepting, MSA-2 equal to the MSH-10 sent) and reports
//! throughput and ACK latency percentiles.
//!
//! Each message gets a fresh MSH-10 so that the receiver's resend detection does not turn the run
//! into a replay. Written in Rust because a Python client tops out far below what Ferry should take
//! (see FINDINGS.md).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hl7::ack::{expects_accept_ack, summarize_ack};
use crate::mllp::client::{ClientError, MllpClient, split_messages};

/// A synthetic ADT^A01 (written for Ferry; no real person) used when no corpus is given.
pub const SYNTHETIC_ADT_A01: &str = "MSH|^~\\&|LOADGEN|FERRY-LAB|FERRY|GW|20261122083000||ADT^A01^ADT_A01|TEMPLATE|P|2.5.1|||AL|NE||UNICODE UTF-8\rEVN|A01|20261122083000\rPID|1||900001^^^FERRY&1.2.3.4&ISO^MR~S900001^^^SSA^SS||Testpatient^Alex^J^^^^L||19800101|U|||1 Example Street^^Springfield^ST^00000^USA^H||555-0100^PRN^PH|||S||A900001\rPV1|1|I|WARD1^101^A^FERRY||||1234^Doctor^Dana^^^^MD|||MED||||7|||1234^Doctor^Dana^^^^MD|IN|V900001|||||||||||||||||||||||||20261122080000\r";

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub to: String,
    pub connections: usize,
    pub messages: usize,
    pub timeout: Duration,
    /// A number in the templates (e.g. the synthetic A01's `900001`, which is its MRN, account
    /// and visit number) replaced in each message by that number plus the message's index, so
    /// that a run creates that many distinct patients and visits (to fill a store for read
    /// benchmarks). None: the templates are sent as they are.
    pub vary: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no messages to send: {0}")]
    NoMessages(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("connection {connection}: {source}")]
    Client {
        connection: usize,
        source: ClientError,
    },
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: usize,
    pub accepted: usize,
    /// ACKs with AE/AR/CE/CR.
    pub rejected: usize,
    /// ACKs whose MSA-2 did not match the message, or that could not be read.
    pub mismatched: usize,
    pub elapsed: Duration,
    pub bytes_sent: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl LoadReport {
    pub fn throughput(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sent {} messages ({:.1} MB) in {:.2} s: {:.0} msg/s",
            self.sent,
            self.bytes_sent as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.throughput()
        )?;
        writeln!(
            f,
            "ACKs: {} accepted, {} rejected, {} mismatched",
            self.accepted, self.rejected, self.mismatched
        )?;
        write!(
            f,
            "ACK latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}

/// Reads message templates: every message of every file under `dir` (recursively), or the
/// synthetic ADT^A01 when `dir` is `None`.
pub fn load_templates(dir: Option<&Path>) -> Result<Vec<Vec<u8>>, LoadError> {
    let Some(dir) = dir else {
        return Ok(vec![SYNTHETIC_ADT_A01.as_bytes().to_vec()]);
    };
    let mut out = Vec::new();
    let files = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        crate::testing::files_under(dir, &[".hl7", ".txt"])
    };
    for path in files {
        let data = std::fs::read(&path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        out.extend(split_messages(&data));
    }
    if out.is_empty() {
        return Err(LoadError::NoMessages(format!(
            "no HL7 messages found under {}",
            dir.display()
        )));
    }
    Ok(out)
}

/// `--vary NUMBER`: every occurrence of a number in a message replaced by number + index, zero
/// padded to the same width.
struct Vary {
    text: Vec<u8>,
    base: u64,
    width: usize,
}

impl Vary {
    fn new(text: &str) -> Self {
        Self {
            text: text.as_bytes().to_vec(),
            base: text.parse().unwrap_or(0),
            width: text.len(),
        }
    }

    fn apply(&self, message: &[u8], index: usize) -> Vec<u8> {
        let replacement = format!("{:0width$}", self.base + index as u64, width = self.width);
        let mut out = Vec::with_capacity(message.len() + 8);
        let mut rest = message;
        while let Some(at) = memchr::memmem::find(rest, &self.text) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(replacement.as_bytes());
            rest = &rest[at + self.text.len()..];
        }
        out.extend_from_slice(rest);
        out
    }
}

/// Replaces MSH-10 of a message (raw bytes, any ASCII-compatible charset) with `control_id`.
/// Returns `None` when the first segment is not a readable MSH.
pub fn with_control_id(message: &[u8], control_id: &str) -> Option<Vec<u8>> {
    if !message.starts_with(b"MSH") || message.len() < 4 {
        return None;
    }
    let fs = message[3];
    let line_end = memchr::memchr2(b'\r', b'\n', message).unwrap_or(message.len());
    // MSH-1 is the separator itself; the n-th separator (1-based) starts MSH-(n+1).
    let positions: Vec<usize> = memchr::memchr_iter(fs, &message[..line_end]).collect();
    let start = *positions.get(8)? + 1;
    let end = positions.get(9).copied().unwrap_or(line_end);
    let mut out = Vec::with_capacity(message.len() + control_id.len());
    out.extend_from_slice(&message[..start]);
    out.extend_from_slice(control_id.as_bytes());
    out.extend_from_slice(&message[end..]);
    Some(out)
}

/// Runs the load: `messages` in total over `connections`, templates used round-robin.
pub async fn run(options: &LoadOptions, templates: Vec<Vec<u8>>) -> Result<LoadReport, LoadError> {
    let templates: Vec<Vec<u8>> = templates
        .into_iter()
        // Messages in enhanced mode with MSH-15 NE/ER get no ACK when accepted, so a request/answer
        // load cannot use them.
        .filter(|t| with_control_id(t, "X").is_some() && expects_accept_ack(t))
        .collect();
    if templates.is_empty() {
        return Err(LoadError::NoMessages(
            "no template has an MSH segment with an MSH-10 to rewrite and asks for an ACK".into(),
        ));
    }
    let templates = Arc::new(templates);
    let connections = options.connections.max(1);
    // Unique per run so that repeated runs against one store are not resends.
    let run_id = format!("{:x}", uuid::Uuid::now_v7().as_u128() & 0xff_ffff);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let count =
            options.messages / connections + usize::from(c < options.messages % connections);
        let templates = templates.clone();
        let to = options.to.clone();
        let timeout = options.timeout;
        let run_id = run_id.clone();
        let vary = options.vary.as_deref().map(Vary::new);
        tasks.spawn(async move {
            let mut client =
                MllpClient::connect(&to, timeout)
                    .await
                    .map_err(|source| LoadError::Client {
                        connection: c,
                        source,
                    })?;
            let mut report = LoadReport::default();
            let mut latencies = Vec::with_capacity(count);
            for i in 0..count {
                let template = &templates[(c + i * connections) % templates.len()];
                let control_id = format!("{run_id}{c:x}-{i}");
                let Some(mut message) = with_control_id(template, &control_id) else {
                    continue;
                };
                if let Some(vary) = &vary {
                    message = vary.apply(&message, c + i * connections);
                }
                let t0 = Instant::now();
                let ack = client
                    .request(&message)
                    .await
                    .map_err(|source| LoadError::Client {
                        connection: c,
                        source,
                    })?;
                latencies.push(t0.elapsed());
                report.sent += 1;
                report.bytes_sent += message.len();
                let text = String::from_utf8_lossy(&ack);
                match summarize_ack(&text) {
                    Some(s) if s.control_id == control_id => {
                        if s.code.is_some_and(|c| c.is_accept()) {
                            report.accepted += 1;
                        } else {
                            report.rejected += 1;
                        }
                    }
                    _ => report.mismatched += 1,
                }
            }
            Ok::<_, LoadError>((report, latencies))
        });
    }
    let mut total = LoadReport::default();
    let mut latencies = Vec::with_capacity(options.messages);
    while let Some(joined) = tasks.join_next().await {
        let Ok(result) = joined else {
            continue;
        };
        let (r, l) = result?;
        total.sent += r.sent;
        total.accepted += r.accepted;
        total.rejected += r.rejected;
        total.mismatched += r.mismatched;
        total.bytes_sent += r.bytes_sent;
        latencies.extend(l);
    }
    total.elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx]
    };
    total.p50 = pct(0.50);
    total.p99 = pct(0.99);
    total.max = latencies.last().copied().unwrap_or_default();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_makes_each_message_a_distinct_patient() {
        let v = Vary::new("000900");
        assert_eq!(
            v.apply(b"PID|1||000900^^^H~X000900|V000900", 1234),
            b"PID|1||002134^^^H~X002134|V002134".to_vec()
        );
    }

    #[test]
    fn rewrites_msh_10_only() {
        let m = b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|OLD|P|2.5\rPID|1|OLD\r";
        assert_eq!(
            with_control_id(m, "NEW").unwrap(),
            b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|NEW|P|2.5\rPID|1|OLD\r".to_vec()
        );
        // MSH-10 as the last field of the segment.
        assert_eq!(
            with_control_id(b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|OLD", "N").unwrap(),
            b"MSH|^~\\&|A|B|C|D|2026||ADT^A01|N".to_vec()
        );
        assert!(with_control_id(b"MSH|^~\\&|A\r", "N").is_none());
        assert!(with_control_id(b"PID|1", "N").is_none());
    }
}
