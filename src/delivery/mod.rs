//! Outbound delivery: stored events to the HIS, the PACS and HTTP receivers, reliably.
//!
//! | file | role |
//! |---|---|
//! | `settings.rs` | `[[destinations]]`, `[[subscriptions]]`, `[delivery]` |
//! | `router.rs` | which events are queued where, in which lane (inside the ingest commit) |
//! | `dispatch.rs` | lanes taken with leases, strict order within a lane, retries, dead letters |
//! | `mllp.rs`, `http.rs` | sending, and reading what the receiver answered |
//! | `ops.rs` | replay and the operators' filters (CLI and HTTP admin API) |
//! | `render.rs` | an outbox row + its event → the bytes to send, by an outbound mapping |
//!
//! The outbox rows themselves are written by the store in the event's own transaction
//! (`store/outbox.rs` is the contract). Failures are classified once, at the edge, into
//! [`Failure`]: transient (retried with backoff) or permanent (dead-lettered); the dispatcher
//! matches on that and never parses error text.

pub mod dispatch;
pub mod http;
pub mod mllp;
pub mod ops;
pub mod render;
pub mod router;
pub mod settings;

use std::time::Duration;

pub use dispatch::{Delivery, DeliveryError};
pub use render::{Render, Rendered};
pub use router::Router;

/// What went wrong with one attempt, classified where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    permanent: bool,
    /// A plain sentence (kept in the outbox row and shown by the DLQ).
    pub message: String,
    /// The receiver asked to wait this long (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn transient(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            permanent: false,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            permanent: true,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Worth retrying (with backoff); otherwise it goes to the dead-letter queue at once.
    pub fn is_transient(&self) -> bool {
        !self.permanent
    }
}

/// The kinds of failure, for metrics (`reason` label) and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection (refused, unreachable, TLS handshake failed).
    Connect,
    /// No answer in time.
    Timeout,
    /// The connection broke or was closed before an answer.
    Closed,
    /// The answer is not an ACK.
    Garbage,
    /// The ACK's MSA-2 names another message.
    WrongControlId,
    /// The receiver answered AE/AR/CE/CR.
    Rejected,
    /// An HTTP status other than 2xx.
    HttpStatus,
    /// The outbound mapping could not render the event.
    Render,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Closed => "closed",
            FailureKind::Garbage => "garbage",
            FailureKind::WrongControlId => "wrong_control_id",
            FailureKind::Rejected => "rejected",
            FailureKind::HttpStatus => "http_status",
            FailureKind::Render => "render",
        }
    }
}
