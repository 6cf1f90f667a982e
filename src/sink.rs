//! `ferry bench sink`: an MLLP receiver that answers every message with one fixed acknowledgment
//! code and does nothing else, so that outbound delivery can be load-tested against a peer whose
//! own cost is close to nothing (the MLLP counterpart of `ferry bench http-peer`).
//!
//! Each connection is served by its own task, one message after another, so answers leave in the
//! order the messages arrived on that connection, as MLLP senders expect. The ACK is built by
//! Ferry's own [`build_ack`] from the message's MSH, so its MSA-2 echoes MSH-10 exactly as a
//! conforming receiver's would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hl7::ack::{AckCode, AckError, AckHeader, ErrorCode, build_ack};
use crate::mllp::codec::{Frame, MllpCodec};

/// How the sink answers.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// The code of every answer, whatever the message's MSH-15 asks for: a sink that always
    /// answers keeps a request/answer sender from waiting for an ACK that never comes.
    pub answer: AckCode,
    /// Larger frames are answered AR and the connection is closed, as Ferry's listener does.
    pub max_frame_bytes: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            answer: AckCode::AA,
            max_frame_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Counters of a running sink, read by the command's progress lines and by tests.
#[derive(Debug, Default)]
pub struct SinkStats {
    messages: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
}

impl SinkStats {
    /// Messages answered so far.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// A bound sink, ready to run.
pub struct Sink {
    listener: TcpListener,
    options: Arc<SinkOptions>,
    stats: Arc<SinkStats>,
    /// Lets shutdown wait until every connection has closed, so the final count is final.
    tracker: TaskTracker,
}

impl Sink {
    pub async fn bind(listen: SocketAddr, options: SinkOptions) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(listen).await?,
            options: Arc::new(options),
            stats: Arc::new(SinkStats::default()),
            tracker: TaskTracker::new(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Accepts connections until `shutdown` is cancelled, then closes them all (a message being
    /// answered is answered first) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, "Sink accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let number = self.stats.connections.fetch_add(1, Ordering::Relaxed);
            self.tracker.spawn(connection(
                stream,
                number,
                self.options.clone(),
                self.stats.clone(),
                shutdown.clone(),
            ));
        }
        drop(self.listener);
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Serves one connection: read a frame, answer it, read the next.
async fn connection(
    stream: TcpStream,
    number: u64,
    options: Arc<SinkOptions>,
    stats: Arc<SinkStats>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    stats.open.fetch_add(1, Ordering::Relaxed);
    let mut framed = Framed::new(stream, MllpCodec::new(options.max_frame_bytes));
    let mut answered: u64 = 0;
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            frame = framed.next() => frame,
        };
        let (payload, oversized) = match frame {
            Some(Ok(Frame::Message(payload))) => (payload, None),
            Some(Ok(Frame::Oversized {
                head,
                max_frame_bytes,
            })) => (head, Some(max_frame_bytes)),
            // EOF, or EOF in the middle of a frame: nothing left to answer.
            Some(Err(_)) | None => break,
        };
        let control_id = format!("SINK{number:x}-{answered}");
        let ack = answer(&payload, &options, oversized, &control_id);
        answered += 1;
        stats.messages.fetch_add(1, Ordering::Relaxed);
        if framed.send(ack.as_bytes()).await.is_err() || oversized.is_some() {
            break;
        }
    }
    stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// The ACK for one message: the configured code, with an ERR saying why for a negative one.
fn answer(
    payload: &[u8],
    options: &SinkOptions,
    oversized: Option<usize>,
    control_id: &str,
) -> String {
    // Only the MSH line is needed; decoding the rest would cost time for nothing.
    let msh_end = memchr::memchr2(b'\r', b'\n', payload).unwrap_or(payload.len());
    let header = AckHeader::from_raw(&String::from_utf8_lossy(&payload[..msh_end]));
    let (code, errors) = match oversized {
        Some(max) => (
            AckCode::AR,
            vec![AckError::new(
                ErrorCode::DataTypeError,
                None,
                format!("the message is larger than the sink's limit of {max} bytes"),
            )],
        ),
        None if options.answer.is_accept() => (options.answer, Vec::new()),
        None => (
            options.answer,
            vec![AckError::new(
                ErrorCode::ApplicationInternalError,
                None,
                format!(
                    "ferry bench sink answers {} to every message",
                    options.answer.as_str()
                ),
            )],
        ),
    };
    build_ack(
        &header,
        code,
        &errors,
        control_id,
        OffsetDateTime::now_utc(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::ack::summarize_ack;

    const MSG: &[u8] =
        b"MSH|^~\\&|HIS|H|FERRY|GW|20261122083000||ADT^A01^ADT_A01|C-1|P|2.5.1\rPID|1\r";

    #[test]
    fn answers_with_the_configured_code_and_echoes_msh_10() {
        let ack = answer(MSG, &SinkOptions::default(), None, "S0-0");
        assert!(ack.starts_with("MSH|^~\\&|FERRY|GW|HIS|H|"), "{ack}");
        assert!(
            ack.ends_with("|ACK^A01^ACK|S0-0|P|2.5.1\rMSA|AA|C-1\r"),
            "{ack}"
        );

        let options = SinkOptions {
            answer: AckCode::CE,
            ..SinkOptions::default()
        };
        let summary = summarize_ack(&answer(MSG, &options, None, "S0-1")).expect("an ACK");
        assert_eq!(summary.code, Some(AckCode::CE));
        assert_eq!(summary.control_id, "C-1");
        assert_eq!(summary.error_codes, vec!["207"]);
    }

    #[test]
    fn oversized_frame_is_rejected() {
        let summary =
            summarize_ack(&answer(MSG, &SinkOptions::default(), Some(10), "S0-2")).expect("an ACK");
        assert_eq!(summary.code, Some(AckCode::AR));
        assert_eq!(summary.control_id, "C-1");
    }
}
