//! The MLLP listener: accept loop, one task per connection, graceful shutdown.
//!
//! A connection reads frames with [`MllpCodec`], hands each to the ingest pipeline and writes the
//! ACK the pipeline returns; messages of one connection are handled strictly one after another, as
//! MLLP senders expect. On shutdown the listener stops accepting, and each connection finishes the
//! message in flight (its ACK goes out only after its commit) and then closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mllp::codec::{Frame, MllpCodec, MllpError};
use crate::pipeline::{Ingest, ListenerContext};

/// Settings of a running listener that the connections need.
#[derive(Debug, Clone)]
pub struct MllpOptions {
    pub context: ListenerContext,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// A bound MLLP listener, ready to run.
pub struct MllpListener {
    listener: TcpListener,
    options: Arc<MllpOptions>,
    ingest: Arc<Ingest>,
    /// Bounds concurrent connections (and so memory: each holds at most one frame).
    connections: Arc<Semaphore>,
    /// Lets shutdown wait for every connection task to finish its message in flight.
    tracker: TaskTracker,
}

impl MllpListener {
    pub fn new(listener: TcpListener, options: MllpOptions, ingest: Arc<Ingest>) -> Self {
        let connections = Arc::new(Semaphore::new(options.max_connections));
        Self {
            listener,
            options: Arc::new(options),
            ingest,
            connections,
            tracker: TaskTracker::new(),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` is cancelled, then waits for the connections to finish
    /// their message in flight.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.options.context.name.clone();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(%error, listener = %name, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(
                    listener = %name,
                    %peer,
                    max_connections = self.options.max_connections,
                    "Connection limit reached; closing the new connection."
                );
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let options = self.options.clone();
            let ingest = self.ingest.clone();
            let shutdown = shutdown.clone();
            self.tracker.spawn(async move {
                serve_connection(stream, peer, &options, &ingest, shutdown).await;
                drop(permit);
            });
        }
        drop(self.listener);
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!(listener = %name, "MLLP listener stopped.");
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    options: &MllpOptions,
    ingest: &Ingest,
    shutdown: CancellationToken,
) {
    let listener = &options.context.name;
    let peer_text = peer.to_string();
    tracing::debug!(%listener, peer = %peer_text, "Connection opened.");
    let mut framed = Framed::new(stream, MllpCodec::new(options.max_frame_bytes));
    let mut reported_discards = 0;
    loop {
        let next = tokio::select! {
            // Between messages only: a message already read is always finished.
            _ = shutdown.cancelled() => break,
            next = tokio::time::timeout(options.idle_timeout, framed.next()) => next,
        };
        let discarded = framed.codec().discarded_bytes();
        if discarded > reported_discards {
            tracing::warn!(
                %listener,
                peer = %peer_text,
                bytes = discarded - reported_discards,
                "Dropped bytes outside an MLLP frame."
            );
            reported_discards = discarded;
        }
        let frame = match next {
            Err(_) => {
                tracing::info!(%listener, peer = %peer_text, "Idle timeout; closing the connection.");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(MllpError::IncompleteFrame { buffered }))) => {
                tracing::warn!(%listener, peer = %peer_text, buffered, "Connection closed in the middle of a frame.");
                break;
            }
            Ok(Some(Err(MllpError::Io(error)))) => {
                tracing::info!(%listener, peer = %peer_text, %error, "Connection error.");
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let reply = match frame {
            Frame::Message(payload) => ingest.handle(&options.context, &peer_text, &payload).await,
            Frame::Oversized {
                head,
                max_frame_bytes,
            } => {
                ingest
                    .handle_oversized(&options.context, &peer_text, &head, max_frame_bytes)
                    .await
            }
        };
        if let Some(ack) = reply.ack
            && let Err(error) = framed.send(ack).await
        {
            tracing::info!(%listener, peer = %peer_text, %error, "Could not send the ACK.");
            break;
        }
        if reply.close {
            break;
        }
    }
    let _ = SinkExt::<bytes::Bytes>::close(&mut framed).await;
    tracing::debug!(%listener, peer = %peer_text, "Connection closed.");
}
