//! The outbox contract: what delivery asks of the store. Both backends implement [`OutboxStore`].
//!
//! Rows are queued by the ingest commit itself ([`NewDelivery`] on each [`super::NewEvent`]), so
//! an event and its deliveries are stored together or not at all. Everything else here is the
//! dispatcher's side: take lanes (with an expiring lease), read a lane's next messages in order,
//! record what each attempt did; and the operator's side: status, dead-letter queue, replay.

use futures::future::BoxFuture;
use serde::Serialize;
use time::OffsetDateTime;

use super::StoreError;

/// One delivery to queue with an event: written in the event's own transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub destination: String,
    /// The lane: the patient's (or order's) stream id.
    pub lane: String,
    pub subscription: String,
    /// The outbound mapping file, e.g. `outbound/pacs_orm_o01`.
    pub mapping: String,
}

/// A delivery of an event already stored (replay), queued on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayDelivery {
    pub hospital_id: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub delivery: NewDelivery,
}

/// A queued message with the event it renders, as the dispatcher reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub id: i64,
    pub hospital_id: String,
    pub destination: String,
    pub lane: String,
    pub subscription: String,
    pub mapping: String,
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    pub event: super::RecordedEvent,
}

/// A lane's next messages, and the lane's `enqueued` count read just before them: when the
/// messages turn out to be all there was, the lane is released with `seen` at that count (see
/// `migrations/sqlite/0003_outbox.sql`), so anything queued meanwhile keeps the lane due.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneBatch {
    pub items: Vec<OutboxItem>,
    pub enqueued: i64,
}

/// What one attempt came to, as the dispatcher decided it.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    /// The receiver accepted it.
    Delivered,
    /// Failed; try the lane again at `retry_at`.
    Retry { retry_at: OffsetDateTime },
    /// Failed for good: into the dead-letter queue (which blocks the lane).
    Dead,
}

/// One attempt to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub id: i64,
    pub destination: String,
    pub lane: String,
    /// The instance holding the lane; the lease is renewed (or, after a failure, released) only if
    /// it still holds it.
    pub owner: String,
    pub at: OffsetDateTime,
    pub result: AttemptResult,
    /// The plain-language reason of a failure.
    pub error: Option<String>,
    /// What the receiver answered (ACK bytes, HTTP status line and body start).
    pub response: Option<Vec<u8>>,
    /// New lease expiry when delivered (the lane stays taken).
    pub lease_until: OffsetDateTime,
    /// When delivered and this was the lane's last message: give the lane back, drained up to
    /// this `enqueued` count.
    pub release: Option<i64>,
}

/// Queue depth of one destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationStatus {
    pub destination: String,
    pub pending: i64,
    pub dead: i64,
    /// Queued time of the oldest pending message.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_pending_at: Option<OffsetDateTime>,
    /// Lanes with pending or dead messages, deepest first (at most 20 shown).
    pub lanes: Vec<LaneStatus>,
}

/// Queue depth of one lane.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaneStatus {
    pub lane: String,
    pub pending: i64,
    pub dead: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_at: Option<OffsetDateTime>,
    /// Who holds the lane now (an instance id), if anyone.
    pub lease_owner: Option<String>,
    /// Not tried before this time (backoff).
    #[serde(with = "time::serde::rfc3339::option")]
    pub ready_at: Option<OffsetDateTime>,
}

/// Which dead letters an operation applies to; fields left empty match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlqFilter {
    pub id: Option<i64>,
    pub destination: Option<String>,
    /// Only messages dead-lettered before this time ("older than").
    pub dead_before: Option<OffsetDateTime>,
    /// Only this tenant's (the HTTP admin API confines a token to its tenant).
    pub hospital_id: Option<String>,
    /// At most this many (listing).
    pub limit: Option<i64>,
}

impl DlqFilter {
    pub fn is_unrestricted(&self) -> bool {
        self.id.is_none()
            && self.destination.is_none()
            && self.dead_before.is_none()
            && self.hospital_id.is_none()
    }
}

/// A dead letter as the DLQ shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub hospital_id: String,
    pub destination: String,
    pub lane: String,
    pub subscription: String,
    pub mapping: String,
    pub event_type: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub dead_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    /// The receiver's last answer, as text (lossy for non-UTF-8 bytes).
    pub last_response: Option<String>,
}

/// A finished delivery, for lag figures and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveredRow {
    pub id: i64,
    pub destination: String,
    pub lane: String,
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    pub finished_at: OffsetDateTime,
}

/// The delivery side of the store.
pub trait OutboxStore: Send + Sync {
    /// Takes up to `limit` lanes of `destination` that have work (enqueued > seen), are not
    /// blocked by a dead letter, are past their backoff and are not leased by a live owner; leases them to
    /// `owner` until `lease_until`. Several instances may call this at once: each lane goes to one.
    fn claim_lanes<'a>(
        &'a self,
        destination: &'a str,
        owner: &'a str,
        limit: i64,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// The next `limit` pending messages of a lane, in order, with their events.
    fn lane_items<'a>(
        &'a self,
        destination: &'a str,
        lane: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<LaneBatch, StoreError>>;

    /// Records attempts in one transaction. Per attempt: whether `owner` still held the lane
    /// (false: another instance took it over; the caller stops delivering it).
    fn record_attempts<'a>(
        &'a self,
        attempts: &'a [Attempt],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>>;

    /// Extends every lease `owner` holds to `until` (the dispatcher's heartbeat).
    fn renew_leases<'a>(
        &'a self,
        owner: &'a str,
        until: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Gives a lane back (its lease ends) so any instance may take it from `ready_at` on;
    /// `drained`: it had no more messages as of this `enqueued` count.
    fn release_lane<'a>(
        &'a self,
        destination: &'a str,
        lane: &'a str,
        owner: &'a str,
        ready_at: OffsetDateTime,
        drained: Option<i64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Queues deliveries of stored events (replay); returns how many were queued.
    fn enqueue<'a>(
        &'a self,
        deliveries: &'a [ReplayDelivery],
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Depth per destination (every destination with rows).
    fn outbox_status(&self) -> BoxFuture<'_, Result<Vec<DestinationStatus>, StoreError>>;

    /// Dead letters matching `filter`, oldest first.
    fn dlq_list<'a>(
        &'a self,
        filter: &'a DlqFilter,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>>;

    /// Puts matching dead letters back in their lanes (attempts reset); returns how many.
    fn dlq_retry<'a>(
        &'a self,
        filter: &'a DlqFilter,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Gives up on matching dead letters (kept, marked discarded; their lanes move on).
    fn dlq_discard<'a>(
        &'a self,
        filter: &'a DlqFilter,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Delivered messages of a destination with id above `after`, in id order (lag figures).
    fn delivered_after<'a>(
        &'a self,
        destination: &'a str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeliveredRow>, StoreError>>;
}
