//! The store: inbound message log, idempotency records and the event store, behind one trait with an
//! embedded SQLite backend (the default) and a PostgreSQL backend (one store shared by several Ferry
//! instances).
//!
//! The store knows no HL7 text, no sockets and no HTTP: the ingest pipeline hands it finished rows
//! ([`IngestWrite`]) and gets back what happened to each ([`IngestOutcome`]). Everything of one batch
//! is written in one transaction, so a message's log row, idempotency record and events are either all
//! durable or all absent. [`group_commit`] gathers writes from many connections into such batches.

pub mod fhir;
pub mod group_commit;
pub mod outbox;
mod plan;
pub mod postgres;
mod postgres_fhir;
mod postgres_outbox;
mod rows;
pub mod sqlite;
mod sqlite_fhir;
mod sqlite_outbox;

use std::sync::Arc;

use crate::domain::{Payload, PayloadRef};
use crate::projections::ResourceType;
pub use fhir::{HistoryQuery, SearchPage, SearchQuery, StoredResource};
pub use outbox::{NewDelivery, OutboxStore};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Which backend a store runs on; shown in logs and the readiness endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        })
    }
}

/// Errors of the store. Callers match on the variant; nobody parses the text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one we can use.
    #[error("unsupported database url {0:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// The database cannot be reached or answered with an error; the write did not happen.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed to apply.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An event was appended with an expected version that did not match the stream.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    VersionConflict {
        stream_id: String,
        expected: String,
        actual: i64,
    },
    /// Another writer (another Ferry instance) inserted the same idempotency key while this batch
    /// was in flight; the batch was rolled back and can be retried as a whole.
    #[error("concurrent insert of the same idempotency key; batch rolled back")]
    IdempotencyRace,
    /// A value could not be converted to or from its column.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The events could not be folded into the read models; nothing of the batch was written.
    #[error("projection failed: {0}")]
    Projection(#[from] crate::projections::ProjectionError),
    /// A write's [`Precondition`] did not hold when it was committed (FHIR `If-Match`, or a create
    /// of a resource that exists by now); nothing of the batch was written.
    #[error("{resource}: the write expected {expected}, found {actual}")]
    PreconditionFailed {
        /// `Patient/<id>`.
        resource: String,
        /// `no resource`, or the version number.
        expected: String,
        /// `no resource`, or the version number.
        actual: String,
    },
    /// Another instance changed the same read-model rows at the same time (PostgreSQL); the batch
    /// was rolled back and can be retried as a whole.
    #[error("concurrent update of the same resources by another writer; batch rolled back")]
    Contention,
}

/// The time a commit records (events' `recorded_at`, resources' `lastUpdated`), to the
/// microsecond both backends store, so that what the projector rendered equals what a rebuild
/// from the stored events renders.
pub(crate) fn commit_time() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

impl StoreError {
    /// True when the failure says nothing about the batch's content: a retry may well succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Database(_) | StoreError::IdempotencyRace | StoreError::Contention
        )
    }
}

/// What happened to an inbound message, as recorded in the inbound log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundStatus {
    /// Parsed, validated and committed; answered AA/CA.
    Accepted,
    /// Refused for its content or its header; answered AE/AR (or CE/CR).
    Rejected,
}

impl InboundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InboundStatus::Accepted => "accepted",
            InboundStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "accepted" => Some(InboundStatus::Accepted),
            "rejected" => Some(InboundStatus::Rejected),
            _ => None,
        }
    }
}

/// One row of the inbound message log: the message exactly as received, and what Ferry made of it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRecord {
    /// Generated by Ferry (UUID v7, so ids sort by time).
    pub id: Uuid,
    /// The tenant (`hospital_id`) of the listener that received the message.
    pub hospital_id: String,
    /// Name of the listener that received it.
    pub listener: String,
    /// Remote address of the sender (`ip:port`).
    pub peer: String,
    pub received_at: OffsetDateTime,
    /// The frame's payload, byte for byte, before any decoding.
    pub raw: Vec<u8>,
    /// The payload decoded to text, when decoding succeeded.
    pub decoded: Option<String>,
    /// Character set the text was decoded with (HL7 name, e.g. `UNICODE UTF-8`).
    pub charset: Option<String>,
    /// MSH-3 and MSH-4 as sent (raw, escape sequences not decoded).
    pub sending_application: Option<String>,
    pub sending_facility: Option<String>,
    /// MSH-10 as sent.
    pub control_id: Option<String>,
    /// MSH-9 as sent, e.g. `ADT^A01^ADT_A01`.
    pub message_type: Option<String>,
    pub status: InboundStatus,
    /// Acknowledgment code sent back (`AA`, `AE`, `AR`, `CA`, `CE`, `CR`), if any was sent.
    pub ack_code: Option<String>,
    /// Plain-language reason for a rejection.
    pub error: Option<String>,
}

/// The key under which a resend is recognised: tenant, MSH-3, MSH-4 and MSH-10 (raw values).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub hospital_id: String,
    pub sending_application: String,
    pub sending_facility: String,
    pub control_id: String,
}

/// Stored with every accepted message so that a resend gets the byte-identical ACK back.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub key: IdempotencyKey,
    /// SHA-256 of the message content (see the pipeline for what is hashed).
    pub content_hash: Vec<u8>,
    /// The exact ACK payload bytes sent (without MLLP framing).
    pub ack: Vec<u8>,
    /// The inbound log row of the original message.
    pub inbound_id: Uuid,
}

/// The version a stream must be at for an append to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version (versions start at 1).
    Exactly(i64),
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exactly(v) => write!(f, "{v}"),
        }
    }
}

/// An event to append. Several events of one write may target the same stream; they get consecutive
/// versions in order, and `expected_version` is checked for the first of them.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub stream_id: String,
    pub expected_version: ExpectedVersion,
    /// Past-tense type name, e.g. `PatientAdmitted`.
    pub event_type: String,
    pub schema_version: i32,
    /// JSON text (see [`Payload`]): the mapping's output as it is written.
    pub payload: Payload,
    /// Where the event came from: channel, sender, MSH-10, inbound log id, mapping name and version.
    pub metadata: serde_json::Value,
    /// Outbox rows to queue with the event (the subscriptions it matches), in the same transaction.
    pub deliveries: Vec<NewDelivery>,
}

impl NewEvent {
    /// The event as the projections see it, for `tenant`.
    pub fn view<'a>(&'a self, tenant: &'a str) -> crate::projections::EventView<'a> {
        crate::projections::EventView {
            tenant,
            event_type: &self.event_type,
            payload: PayloadRef::Text(&self.payload),
            metadata: &self.metadata,
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Position in the store's total order (1, 2, 3, … in commit order per backend sequence).
    pub global_position: i64,
    pub hospital_id: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: OffsetDateTime,
}

impl RecordedEvent {
    /// The event as the projections see it.
    pub fn view(&self) -> crate::projections::EventView<'_> {
        crate::projections::EventView {
            tenant: &self.hospital_id,
            event_type: &self.event_type,
            payload: PayloadRef::Value(&self.payload),
            metadata: &self.metadata,
        }
    }
}

/// Everything one inbound message writes, committed together or not at all.
#[derive(Debug, Clone)]
pub struct IngestWrite {
    pub inbound: InboundRecord,
    /// Present for accepted messages only: a rejected message may be resent after a fix and must then
    /// be processed again, not answered from the record.
    pub idempotency: Option<IdempotencyRecord>,
    /// Events produced by mapping (written under `inbound.hospital_id`).
    pub events: Vec<NewEvent>,
    /// Conditions on read-model resources checked inside the commit, after the rows are locked:
    /// FHIR writes (`If-Match`, create). Empty for HL7 messages.
    pub preconditions: Vec<Precondition>,
}

/// What a FHIR write expects of one resource when it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    pub key: crate::projections::ResourceKey,
    /// `None`: the resource must not exist; `Some(v)`: its current version must be `v`.
    pub version: Option<i64>,
}

/// What the store did with one [`IngestWrite`] of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    /// Inbound row, idempotency record and events are committed.
    Stored,
    /// The idempotency key was already recorded (by an earlier commit, or by an earlier write of the
    /// same batch): nothing of this write was stored. Carries the original record.
    Duplicate {
        content_hash: Vec<u8>,
        ack: Vec<u8>,
        inbound_id: Uuid,
    },
}

/// Counts used by tests, `ferry` operations and the readiness check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    pub inbound: i64,
    pub idempotency: i64,
    pub events: i64,
}

/// The store contract both backends implement, and which the rest of Ferry depends on.
///
/// Boxed futures keep the trait object-safe, so the application holds one `Arc<dyn EventStore>`
/// whatever the backend.
pub trait EventStore: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Applies pending migrations from `migrations/<backend>`.
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A cheap round trip proving the database answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Writes a batch in one transaction and returns one outcome per write, in order.
    ///
    /// Idempotency keys already present (or repeated earlier in the same batch) yield
    /// [`IngestOutcome::Duplicate`] and write nothing for that entry. On any error nothing of the
    /// batch is written. An expected-version mismatch fails the whole batch with
    /// [`StoreError::VersionConflict`].
    fn commit_ingest<'a>(
        &'a self,
        batch: &'a [IngestWrite],
    ) -> BoxFuture<'a, Result<Vec<IngestOutcome>, StoreError>>;

    /// One inbound log row by id.
    fn inbound(&self, id: Uuid) -> BoxFuture<'_, Result<Option<InboundRecord>, StoreError>>;

    /// Inbound log rows of a tenant with this MSH-10, oldest first.
    fn inbound_by_control_id<'a>(
        &'a self,
        hospital_id: &'a str,
        control_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InboundRecord>, StoreError>>;

    /// The idempotency record under a key.
    fn idempotency<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>>;

    /// All events of one stream of a tenant, in version order.
    fn read_stream<'a>(
        &'a self,
        hospital_id: &'a str,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>>;

    /// Row counts over all tenants.
    fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, StoreError>>;

    /// The current version of a resource (`version` None), or one version of it (vread).
    fn fhir_read<'a>(
        &'a self,
        tenant: &'a str,
        resource_type: ResourceType,
        id: &'a str,
        version: Option<i64>,
    ) -> BoxFuture<'a, Result<Option<StoredResource>, StoreError>>;

    /// One page of a type-level search, with the total number of matches.
    fn fhir_search<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StoreError>>;

    /// One page of a resource's or a type's history, newest first, with the total.
    fn fhir_history<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a HistoryQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StoreError>>;

    /// Up to `limit` events after `position` in the store's total order (all tenants).
    fn events_after(
        &self,
        position: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>>;

    /// Empties the read models and folds every event back in, in store order, in one transaction
    /// (readers see the old read models until it commits): `ferry projections rebuild`. Calls
    /// `progress` with the number of events replayed so far; returns the total.
    fn rebuild_projections<'a>(
        &'a self,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// The outbox: delivery's side of the store.
    fn outbox(&self) -> &dyn OutboxStore;
}

/// A shared handle to whichever store the configuration chose.
pub type DynStore = Arc<dyn EventStore>;

/// Options that apply to both backends.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Upper bound of pooled connections.
    pub max_connections: u32,
    /// How long to wait for a connection before failing.
    pub acquire_timeout: std::time::Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Opens the store named by `url` (`sqlite://PATH` creating the file and its folder if missing, or
/// `postgres://…`). Does not migrate; call [`EventStore::migrate`].
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<DynStore, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PostgresStore::connect(url, options).await?,
        ))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}
