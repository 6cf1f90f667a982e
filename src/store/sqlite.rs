//! SQLite backend: the default, embedded store of a single Ferry instance.
//!
//! Durability is the product: the database runs in WAL mode with `synchronous = FULL`, so a commit
//! that returned is on disk and an ACK may be sent. SQLite allows one writer at a time, so all writes go
//! through a dedicated pool of one connection (callers queue in the pool instead of failing with
//! `SQLITE_BUSY`) and start with `BEGIN IMMEDIATE` (the write lock is taken up front, so a transaction
//! never fails half-way trying to upgrade a read lock — matters when another process opens the file).
//! Reads use a separate pool and, thanks to WAL, never wait for the writer.
//!
//! A batch goes to SQLite in as few trips to sqlx's worker thread as it can: a batch without events
//! as one multi-statement query (`BEGIN IMMEDIATE`, the INSERTs, `COMMIT`), any other in two (the
//! transaction opened with every read the batch depends on, then every write with the COMMIT).
//! Each trip costs thread wake-ups worth more than the statements; group commit only pays off
//! that way.
//!
//! The batch planning shared with the PostgreSQL backend (duplicate detection, version assignment,
//! input checks) lives in [`plan`] (`store/plan.rs`): plain Rust over the contract's types.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, Sqlite};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use uuid::Uuid;

use super::fhir::{HistoryQuery, SearchPage, SearchQuery, StoredResource};
use super::plan::{self, PlannedEvent};
use super::rows::{self, StoreRow};
use super::{
    Backend, ConnectOptions, EventStore, IdempotencyKey, IdempotencyRecord, InboundRecord,
    IngestOutcome, IngestWrite, RecordedEvent, StoreCounts, StoreError,
};
use crate::projections::EventView;
use crate::projections::ResourceType;

/// SQLite's default upper bound on bind parameters per statement (SQLITE_MAX_VARIABLE_NUMBER).
const MAX_BIND_PARAMS: usize = 32_766;

/// The migrations of `migrations/sqlite`, embedded in the binary (see [`plan::migrator`]).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "projections",
        include_str!("../../migrations/sqlite/0002_projections.sql"),
    ),
    (
        3,
        "outbox",
        include_str!("../../migrations/sqlite/0003_outbox.sql"),
    ),
    (
        4,
        "control_id_lookup",
        include_str!("../../migrations/sqlite/0004_control_id_lookup.sql"),
    ),
];

/// How long a connection waits for a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Timestamps are stored as fixed-width RFC 3339 UTC text with microseconds, so that text order is
/// time order and values match PostgreSQL's precision.
const TIMESTAMP_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

const INBOUND_COLUMNS: &str = "id, hospital_id, listener, peer, received_at, raw, decoded, charset, \
     sending_application, sending_facility, control_id, message_type, status, ack_code, error";
const INBOUND_COLUMN_COUNT: usize = 15;
const IDEMPOTENCY_COLUMNS: &str = "hospital_id, sending_application, sending_facility, control_id, \
     content_hash, ack, inbound_id, created_at";
const IDEMPOTENCY_COLUMN_COUNT: usize = 8;
const EVENT_COLUMNS: &str = "hospital_id, stream_id, stream_version, event_type, schema_version, \
     payload, metadata, recorded_at";
const EVENT_COLUMN_COUNT: usize = 8;

/// The SQLite store. Cheap to share behind an `Arc`; the pools do the synchronisation.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: SQLite has one writer, and queueing here beats `SQLITE_BUSY`.
    writer: SqlitePool,
    /// Read connections; the same pool as `writer` for an in-memory database (each connection of an
    /// in-memory database would otherwise see its own, empty database).
    pub(super) reader: SqlitePool,
    /// For a database file, the writer pool's one connection, taken out once and kept: returning a
    /// connection to an sqlx pool is asynchronous, and acquiring it again cost ~0.15 ms per commit
    /// (see BENCHMARKS.md). `None` for an in-memory database, whose one connection also serves
    /// reads.
    held: Option<Arc<tokio::sync::Mutex<PoolConnection<Sqlite>>>>,
}

/// The writer connection, however it is kept.
pub(super) enum Writer<'a> {
    Held(tokio::sync::MutexGuard<'a, PoolConnection<Sqlite>>),
    Pooled(PoolConnection<Sqlite>),
}

impl std::ops::Deref for Writer<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            Writer::Held(guard) => guard,
            Writer::Pooled(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Writer::Held(guard) => &mut *guard,
            Writer::Pooled(conn) => &mut *conn,
        }
    }
}

impl SqliteStore {
    /// Opens (creating if missing, with its folder) the database at `url`: `sqlite://PATH`,
    /// `sqlite:PATH` or `sqlite::memory:`.
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, StoreError> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::UnsupportedUrl(url.to_owned()))?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Full)
            // Checkpoint the WAL into the database every ~40 MB instead of every ~4 MB: each
            // checkpoint costs fsyncs, and at 100 kB per batch the default means one every ~40
            // commits. Durability is unchanged (commits are durable in the WAL); the WAL file grows
            // larger between checkpoints and is truncated back to 64 MB at most afterwards.
            .pragma("wal_autocheckpoint", "10000")
            .pragma("journal_size_limit", "67108864")
            // Batches of different sizes are different statements; keep them all prepared.
            .statement_cache_capacity(512);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if in_memory {
            // One connection that never closes: the database lives exactly as long as it does.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(base)
                .await?;
            return Ok(Self {
                writer: pool.clone(),
                reader: pool,
                held: None,
            });
        }

        if let Some(parent) = base.get_filename().parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot create folder {}: {e}", parent.display()).into(),
                ))
            })?;
        }
        let with_wal = base
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(with_wal.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(with_wal)
            .await?;
        let held = Some(Arc::new(tokio::sync::Mutex::new(writer.acquire().await?)));
        Ok(Self {
            writer,
            reader,
            held,
        })
    }

    /// The one writer connection; waiting here is how writes queue.
    pub(super) async fn writer(&self) -> Result<Writer<'_>, StoreError> {
        Ok(match &self.held {
            Some(held) => Writer::Held(held.lock().await),
            None => Writer::Pooled(self.writer.acquire().await?),
        })
    }

    /// The database file, for logs (`:memory:` for an in-memory database).
    pub fn path(&self) -> PathBuf {
        self.writer.connect_options().get_filename().to_path_buf()
    }

    async fn commit_batch(&self, batch: &[IngestWrite]) -> Result<Vec<IngestOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(outcomes) = self.commit_fast(batch).await? {
            return Ok(outcomes);
        }
        self.commit_general(batch).await
    }
}

impl SqliteStore {
    /// The common case in one trip to sqlx's SQLite worker thread: a batch without events and
    /// without a key repeated inside it is written as `BEGIN IMMEDIATE; INSERT …; INSERT …;
    /// COMMIT` in one multi-statement query. The idempotency insert has no `ON CONFLICT`, so a
    /// key already in the store (a resend) aborts the statement before COMMIT; the transaction is
    /// rolled back and `None` sends the batch down the general path, which answers duplicates.
    /// Each trip to the worker thread costs a thread wake-up, which on a busy two-core machine is
    /// worth as much as the fsync itself.
    async fn commit_fast(
        &self,
        batch: &[IngestWrite],
    ) -> Result<Option<Vec<IngestOutcome>>, StoreError> {
        // Events also update the read models, which needs their current rows read first: the
        // general path.
        if batch
            .iter()
            .any(|w| !w.events.is_empty() || !w.preconditions.is_empty())
        {
            return Ok(None);
        }
        if plan::repeats_a_key(batch) {
            return Ok(None);
        }
        let records: Vec<&IdempotencyRecord> = batch
            .iter()
            .filter_map(|w| w.idempotency.as_ref())
            .collect();
        plan::check_storable(batch)?;
        let now = format_timestamp(OffsetDateTime::now_utc(), "recorded_at")?;
        let mut statements = Statements::default();
        statements.push("BEGIN IMMEDIATE");
        let writes: Vec<&IngestWrite> = batch.iter().collect();
        push_inbound(&mut statements, &writes, &records, &now)?;
        statements.push("COMMIT");
        let query = sqlx::query_with(AssertSqlSafe(statements.sql), statements.args);
        let mut conn = self.writer().await?;
        match query.execute(&mut *conn).await {
            Ok(_) => Ok(Some(vec![IngestOutcome::Stored; batch.len()])),
            Err(err) => {
                // Whatever failed, the connection must not go back to the pool inside a
                // transaction; a ROLLBACK without one is a harmless error.
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                let resend = matches!(&err, sqlx::Error::Database(db)
                    if db.is_unique_violation() && db.message().contains("idempotency."));
                if resend { Ok(None) } else { Err(err.into()) }
            }
        }
    }
}

/// Trip one of the general path: opens the write transaction and reads everything the batch's
/// writes depend on, tagged by kind: the idempotency records of its keys (`i`), the current
/// version of every stream its events append to (`v`), and the read-model rows its events touch
/// (`r`: by key, and every resource of a patient being merged away). The keys travel as JSON
/// arrays, so the text never changes and is prepared once. Every lookup is a join that starts from
/// the keys, so that SQLite searches each table by a whole key (`(hospital_id, patient_id) IN
/// (SELECT …)` was planned as a search by the tenant alone: a read of every resource per batch;
/// the test `ingest_reads_and_writes_go_through_whole_keys` checks the plans).
const READ_SQL: &str = "BEGIN IMMEDIATE;
SELECT 'i' AS tag, i.hospital_id, i.sending_application, i.sending_facility, i.control_id, \
i.content_hash, i.ack, i.inbound_id FROM json_each(?) AS k JOIN idempotency AS i \
ON i.hospital_id = k.value->>0 AND i.sending_application = k.value->>1 \
AND i.sending_facility = k.value->>2 AND i.control_id = k.value->>3;
SELECT 'v' AS tag, k.value->>0 AS hospital_id, k.value->>1 AS stream_id, \
(SELECT max(e.stream_version) FROM events AS e WHERE e.hospital_id = k.value->>0 \
AND e.stream_id = k.value->>1) AS stream_version FROM json_each(?) AS k;
SELECT 'r' AS tag, r.hospital_id, r.resource_type, r.id, r.version_id, r.state \
FROM json_each(?) AS k JOIN fhir_resources AS r ON r.hospital_id = k.value->>0 \
AND r.resource_type = k.value->>1 AND r.id = k.value->>2;
SELECT 'r' AS tag, r.hospital_id, r.resource_type, r.id, r.version_id, r.state \
FROM json_each(?) AS p JOIN fhir_resources AS r ON r.hospital_id = p.value->>0 \
AND r.patient_id = p.value->>1;";

/// What [`READ_SQL`] found.
#[derive(Default)]
struct BatchReads {
    existing: Vec<IdempotencyRecord>,
    versions: HashMap<(String, String), i64>,
    loaded: Vec<crate::projections::Loaded>,
}

impl BatchReads {
    fn from_rows(rows: &[SqliteRow]) -> Result<Self, StoreError> {
        let mut reads = Self::default();
        for row in rows {
            match get::<&str, _>(row, "tag", "tag")? {
                "i" => reads.existing.push(rows::idempotency(row)?),
                "v" => {
                    let version: Option<i64> = get(row, "stream_version", "events.stream_version")?;
                    reads.versions.insert(
                        (
                            get(row, "hospital_id", "events.hospital_id")?,
                            get(row, "stream_id", "events.stream_id")?,
                        ),
                        version.unwrap_or(0),
                    );
                }
                "r" => reads.loaded.push(rows::loaded(row)?),
                other => return Err(StoreError::Corrupt(format!("unknown read tag {other:?}"))),
            }
        }
        Ok(reads)
    }
}

/// One SQL text and its arguments, statement by statement: the writes of a batch and its COMMIT go
/// to SQLite as one multi-statement query, one trip to sqlx's worker thread. Statements use
/// anonymous `?` parameters only: SQLite numbers them per statement and sqlx binds each
/// statement's from where the previous one stopped.
#[derive(Default)]
struct Statements {
    sql: String,
    args: sqlx::sqlite::SqliteArguments,
}

impl Statements {
    fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
        if !sql.trim_end().ends_with(';') {
            self.sql.push(';');
        }
        self.sql.push('\n');
    }

    /// Appends an argument (sqlx copies it: SQLite arguments are owned).
    fn bind<'t, T>(&mut self, value: T) -> Result<(), StoreError>
    where
        T: sqlx::Encode<'t, Sqlite> + sqlx::Type<Sqlite>,
    {
        use sqlx::Arguments as _;
        self.args
            .add(value)
            .map_err(|e| StoreError::Corrupt(format!("cannot bind a value: {e}")))
    }
}

impl SqliteStore {
    /// The general path, in two trips to sqlx's worker thread: [`READ_SQL`] opens the transaction
    /// and reads, then every write of the batch and the COMMIT go as one query. Each trip costs
    /// thread wake-ups, which on a busy two-core machine are worth more than the statements: the
    /// step-by-step version (a trip per lookup, per table and per read-model statement, eight per
    /// commit) spent most of its time in the scheduler (BENCHMARKS.md).
    async fn commit_general(
        &self,
        batch: &[IngestWrite],
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        plan::check_storable(batch)?;
        // Reads cover every write of the batch; the resends among them, found by the reads, are
        // then left out. Reading a little more than needed costs nothing in a trip made anyway.
        let all_views: Vec<EventView<'_>> = batch
            .iter()
            .flat_map(|w| w.events.iter().map(|e| e.view(&w.inbound.hospital_id)))
            .collect();
        let all_preconditions: Vec<&super::Precondition> =
            batch.iter().flat_map(|w| &w.preconditions).collect();
        let wanted = super::fhir::reads(&all_views, &all_preconditions);
        let json = |values: Vec<serde_json::Value>| serde_json::Value::Array(values).to_string();
        let keys = json(
            batch
                .iter()
                .filter_map(|w| w.idempotency.as_ref())
                .map(|r| {
                    serde_json::json!([
                        r.key.hospital_id,
                        r.key.sending_application,
                        r.key.sending_facility,
                        r.key.control_id
                    ])
                })
                .collect(),
        );
        let all_stored = vec![IngestOutcome::Stored; batch.len()];
        let streams = json(
            plan::touched_streams(batch, &all_stored)
                .into_iter()
                .map(|(h, s)| serde_json::json!([h, s]))
                .collect(),
        );
        let resources = json(
            wanted
                .keys
                .iter()
                .map(|k| serde_json::json!([k.tenant, k.resource_type.as_str(), k.id]))
                .collect(),
        );
        let patients = json(
            wanted
                .patients
                .iter()
                .map(|(t, p)| serde_json::json!([t, p]))
                .collect(),
        );

        let mut writer = self.writer().await?;
        let read = sqlx::query(READ_SQL)
            .bind(keys)
            .bind(streams)
            .bind(resources)
            .bind(patients)
            .fetch_all(&mut *writer)
            .await;
        let result = match read {
            Ok(rows) => write_general(&mut writer, batch, &rows).await,
            Err(e) => Err(e.into()),
        };
        if result.is_err() {
            // Whatever failed, the transaction must not outlive it; a ROLLBACK without one (BEGIN
            // itself failed) is a harmless error.
            let _ = sqlx::query("ROLLBACK").execute(&mut *writer).await;
        }
        result
    }
}

/// Trip two of the general path: plans the batch on what [`READ_SQL`] found, and writes it all
/// with the COMMIT.
async fn write_general(
    conn: &mut SqliteConnection,
    batch: &[IngestWrite],
    rows: &[SqliteRow],
) -> Result<Vec<IngestOutcome>, StoreError> {
    let reads = BatchReads::from_rows(rows)?;
    let outcomes = plan::dedup(batch, &reads.existing);
    let events = plan::assign_versions(batch, &outcomes, &reads.versions)?;
    let stored: Vec<&IngestWrite> = batch
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, IngestOutcome::Stored))
        .map(|(w, _)| w)
        .collect();
    let records: Vec<&IdempotencyRecord> = stored
        .iter()
        .filter_map(|w| w.idempotency.as_ref())
        .collect();
    let at = super::commit_time();
    let now = format_timestamp(at, "recorded_at")?;

    let mut statements = Statements::default();
    // The records were looked up under the write lock (BEGIN IMMEDIATE), so none of these keys
    // can be in the table; one that is fails the query, and the batch with it.
    push_inbound(&mut statements, &stored, &records, &now)?;
    for chunk in events.chunks(rows_per_statement(EVENT_COLUMN_COUNT)) {
        statements.push(&multi_row_insert(
            "events",
            EVENT_COLUMNS,
            EVENT_COLUMN_COUNT,
            chunk.len(),
        ));
        for e in chunk {
            bind_event(&mut statements, e, &now)?;
        }
    }
    if let Some(deliveries) = super::sqlite_outbox::delivery_rows(&events) {
        statements.push(super::sqlite_outbox::QUEUE_SQL);
        statements.bind(now.clone())?;
        statements.bind(deliveries.clone())?;
        statements.bind(now.clone())?;
        statements.bind(deliveries)?;
    }
    let views: Vec<EventView<'_>> = events.iter().map(PlannedEvent::view).collect();
    let preconditions: Vec<&super::Precondition> =
        stored.iter().flat_map(|w| &w.preconditions).collect();
    if !views.is_empty() || !preconditions.is_empty() {
        let output = super::fhir::fold(reads.loaded, &views, &preconditions, at)?;
        if !output.current.is_empty() || !output.history.is_empty() {
            statements.push(super::sqlite_fhir::WRITE_SQL);
            for param in super::sqlite_fhir::write_params(&output)? {
                statements.bind(param)?;
            }
        }
    }
    statements.push("COMMIT");
    sqlx::query_with(AssertSqlSafe(statements.sql), statements.args)
        .execute(&mut *conn)
        .await
        .map_err(|err| map_event_insert_error(err, &events))?;
    Ok(outcomes)
}

/// The INSERTs of inbound-log rows and idempotency records, in statements that keep within the
/// bind-parameter limit.
fn push_inbound(
    statements: &mut Statements,
    writes: &[&IngestWrite],
    records: &[&IdempotencyRecord],
    now: &str,
) -> Result<(), StoreError> {
    for chunk in writes.chunks(rows_per_statement(INBOUND_COLUMN_COUNT)) {
        statements.push(&multi_row_insert(
            "inbound_messages",
            INBOUND_COLUMNS,
            INBOUND_COLUMN_COUNT,
            chunk.len(),
        ));
        for w in chunk {
            bind_inbound(statements, &w.inbound)?;
        }
    }
    for chunk in records.chunks(rows_per_statement(IDEMPOTENCY_COLUMN_COUNT)) {
        statements.push(&multi_row_insert(
            "idempotency",
            IDEMPOTENCY_COLUMNS,
            IDEMPOTENCY_COLUMN_COUNT,
            chunk.len(),
        ));
        for r in chunk {
            bind_idempotency(statements, r, now)?;
        }
    }
    Ok(())
}

/// Rows per statement so that `columns * rows` stays within the bind-parameter limit.
fn rows_per_statement(columns: usize) -> usize {
    (MAX_BIND_PARAMS / columns).max(1)
}

/// `INSERT INTO table (columns) VALUES (?, …), (?, …)` for `rows` rows.
fn multi_row_insert(table: &str, columns: &str, column_count: usize, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
    sql.reserve(rows * (column_count * 2 + 4));
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..column_count {
            if c > 0 {
                sql.push(',');
            }
            sql.push('?');
        }
        sql.push(')');
    }
    sql
}

fn bind_inbound(s: &mut Statements, m: &InboundRecord) -> Result<(), StoreError> {
    s.bind(m.id.hyphenated().to_string())?;
    s.bind(m.hospital_id.as_str())?;
    s.bind(m.listener.as_str())?;
    s.bind(m.peer.as_str())?;
    s.bind(format_timestamp(m.received_at, "received_at")?)?;
    s.bind(m.raw.as_slice())?;
    s.bind(m.decoded.as_deref())?;
    s.bind(m.charset.as_deref())?;
    s.bind(m.sending_application.as_deref())?;
    s.bind(m.sending_facility.as_deref())?;
    s.bind(m.control_id.as_deref())?;
    s.bind(m.message_type.as_deref())?;
    s.bind(m.status.as_str())?;
    s.bind(m.ack_code.as_deref())?;
    s.bind(m.error.as_deref())
}

fn bind_idempotency(
    s: &mut Statements,
    r: &IdempotencyRecord,
    now: &str,
) -> Result<(), StoreError> {
    s.bind(r.key.hospital_id.as_str())?;
    s.bind(r.key.sending_application.as_str())?;
    s.bind(r.key.sending_facility.as_str())?;
    s.bind(r.key.control_id.as_str())?;
    s.bind(r.content_hash.as_slice())?;
    s.bind(r.ack.as_slice())?;
    s.bind(r.inbound_id.hyphenated().to_string())?;
    s.bind(now)
}

fn bind_event(s: &mut Statements, e: &PlannedEvent<'_>, now: &str) -> Result<(), StoreError> {
    s.bind(e.hospital_id)?;
    s.bind(e.event.stream_id.as_str())?;
    s.bind(e.version)?;
    s.bind(e.event.event_type.as_str())?;
    s.bind(e.event.schema_version)?;
    s.bind(e.event.payload.as_str())?;
    s.bind(json_text(&e.event.metadata, "metadata")?)?;
    s.bind(now)
}

/// A unique violation while inserting events means another writer appended to one of the
/// streams after we read its version: report it as the version conflict it is.
fn map_event_insert_error(err: sqlx::Error, events: &[PlannedEvent<'_>]) -> StoreError {
    // SQLite names the columns, not the constraint: "UNIQUE constraint failed: events.hospital_id,
    // events.stream_id, events.stream_version". Other unique violations stay database errors.
    let unique = matches!(&err, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.message().contains("events.stream_version"));
    if !unique {
        return StoreError::Database(err);
    }
    // Only reachable if a writer outside the store's write lock appended meanwhile (with
    // BEGIN IMMEDIATE the SQLite backend reads versions under the lock, so in practice never).
    // The driver does not say which row collided: name the first stream of the batch's events
    // and the version this batch read for it.
    match events.first() {
        Some(first) => StoreError::VersionConflict {
            stream_id: first.event.stream_id.clone(),
            expected: first.event.expected_version.to_string(),
            actual: first.version - 1,
        },
        None => StoreError::Database(err),
    }
}

fn json_text(value: &serde_json::Value, column: &str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("events.{column}: {e}")))
}

pub(super) fn format_timestamp(at: OffsetDateTime, column: &str) -> Result<String, StoreError> {
    at.to_offset(time::UtcOffset::UTC)
        .format(TIMESTAMP_FORMAT)
        .map_err(|e| StoreError::Corrupt(format!("{column}: cannot format {at}: {e}")))
}

fn parse_timestamp(text: &str, column: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        StoreError::Corrupt(format!("{column}: {text:?} is not an RFC 3339 time: {e}"))
    })
}

/// A column by position or name; a value of the wrong type is a corrupt row, not a panic.
pub(super) fn get<'r, T, I>(row: &'r SqliteRow, index: I, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    I: sqlx::ColumnIndex<SqliteRow>,
{
    row.try_get(index)
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// `SELECT <every inbound_messages column> FROM inbound_messages <tail>`: the one column list that
/// [`rows::inbound`] reads, for every query of the inbound log.
macro_rules! select_inbound {
    ($tail:literal $(,)?) => {
        concat!(
            "SELECT id, hospital_id, listener, peer, received_at, raw, decoded, charset, \
             sending_application, sending_facility, control_id, message_type, status, ack_code, \
             error FROM inbound_messages ",
            $tail
        )
    };
}

impl EventStore for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut writer = self.writer().await?;
            plan::migrator(MIGRATIONS)
                .run_direct(None, &mut *writer, false)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            sqlx::query("SELECT 1").execute(&self.reader).await?;
            Ok(())
        }
        .boxed()
    }

    fn commit_ingest<'a>(
        &'a self,
        batch: &'a [IngestWrite],
    ) -> BoxFuture<'a, Result<Vec<IngestOutcome>, StoreError>> {
        self.commit_batch(batch).boxed()
    }

    fn inbound(&self, id: Uuid) -> BoxFuture<'_, Result<Option<InboundRecord>, StoreError>> {
        async move {
            let row = sqlx::query(select_inbound!("WHERE id = ?",))
                .bind(id.hyphenated().to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.as_ref().map(rows::inbound).transpose()
        }
        .boxed()
    }

    fn inbound_by_control_id<'a>(
        &'a self,
        hospital_id: &'a str,
        control_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InboundRecord>, StoreError>> {
        async move {
            // Accepted messages through their idempotency record, rejected ones through the
            // partial index (migration 0004_control_id_lookup).
            let rows = sqlx::query(concat!(
                select_inbound!(
                    "WHERE id IN (SELECT inbound_id FROM idempotency \
                     WHERE hospital_id = ?1 AND control_id = ?2) UNION ALL ",
                ),
                select_inbound!(
                    "WHERE hospital_id = ?1 AND control_id = ?2 AND status = 'rejected' \
                     ORDER BY received_at, id",
                ),
            ))
            .bind(hospital_id)
            .bind(control_id)
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(rows::inbound).collect()
        }
        .boxed()
    }

    fn idempotency<'a>(
        &'a self,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<IdempotencyRecord>, StoreError>> {
        async move {
            let row = sqlx::query(
                "SELECT hospital_id, sending_application, sending_facility, control_id, \
                 content_hash, ack, inbound_id FROM idempotency WHERE hospital_id = ? \
                 AND sending_application = ? AND sending_facility = ? AND control_id = ?",
            )
            .bind(key.hospital_id.as_str())
            .bind(key.sending_application.as_str())
            .bind(key.sending_facility.as_str())
            .bind(key.control_id.as_str())
            .fetch_optional(&self.reader)
            .await?;
            row.as_ref().map(rows::idempotency).transpose()
        }
        .boxed()
    }

    fn read_stream<'a>(
        &'a self,
        hospital_id: &'a str,
        stream_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        async move {
            let rows = sqlx::query(
                "SELECT global_position, hospital_id, stream_id, stream_version, event_type, \
                 schema_version, payload, metadata, recorded_at FROM events \
                 WHERE hospital_id = ? AND stream_id = ? ORDER BY stream_version",
            )
            .bind(hospital_id)
            .bind(stream_id)
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(rows::event).collect()
        }
        .boxed()
    }

    fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, StoreError>> {
        async move {
            let row = sqlx::query(
                "SELECT (SELECT count(*) FROM inbound_messages), \
                 (SELECT count(*) FROM idempotency), (SELECT count(*) FROM events)",
            )
            .fetch_one(&self.reader)
            .await?;
            Ok(StoreCounts {
                inbound: get(&row, 0, "count(inbound_messages)")?,
                idempotency: get(&row, 1, "count(idempotency)")?,
                events: get(&row, 2, "count(events)")?,
            })
        }
        .boxed()
    }

    fn fhir_read<'a>(
        &'a self,
        tenant: &'a str,
        resource_type: ResourceType,
        id: &'a str,
        version: Option<i64>,
    ) -> BoxFuture<'a, Result<Option<StoredResource>, StoreError>> {
        super::fhir::read(&self.reader, tenant, resource_type, id, version).boxed()
    }

    fn fhir_search<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StoreError>> {
        super::fhir::search(&self.reader, tenant, query).boxed()
    }

    fn fhir_history<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a HistoryQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StoreError>> {
        super::fhir::history(&self.reader, tenant, query).boxed()
    }

    fn events_after(
        &self,
        position: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        async move { events_after(&self.reader, position, limit).await }.boxed()
    }

    fn outbox(&self) -> &dyn super::OutboxStore {
        self
    }

    fn rebuild_projections<'a>(
        &'a self,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut writer = self.writer().await?;
            let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
            let replayed = super::fhir::rebuild(&mut *tx, progress).await?;
            tx.commit().await?;
            Ok(replayed)
        }
        .boxed()
    }
}

pub(super) async fn events_after<'e, E>(
    executor: E,
    position: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(
        "SELECT global_position, hospital_id, stream_id, stream_version, event_type, \
         schema_version, payload, metadata, recorded_at FROM events \
         WHERE global_position > ? ORDER BY global_position LIMIT ?",
    )
    .bind(position)
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(rows::event).collect()
}

impl StoreRow for SqliteRow {
    fn text(&self, column: &str, name: &str) -> Result<String, StoreError> {
        get(self, column, name)
    }

    fn optional_text(&self, column: &str, name: &str) -> Result<Option<String>, StoreError> {
        get(self, column, name)
    }

    fn bytes(&self, column: &str, name: &str) -> Result<Vec<u8>, StoreError> {
        get(self, column, name)
    }

    fn integer(&self, column: &str, name: &str) -> Result<i64, StoreError> {
        get(self, column, name)
    }

    fn time(&self, column: &str, name: &str) -> Result<OffsetDateTime, StoreError> {
        let text: String = get(self, column, name)?;
        parse_timestamp(&text, name)
    }

    fn optional_time(
        &self,
        column: &str,
        name: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let text: Option<String> = get(self, column, name)?;
        text.map(|t| parse_timestamp(&t, name)).transpose()
    }

    fn optional_bytes(&self, column: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        get(self, column, name)
    }

    fn optional_integer(&self, column: &str, name: &str) -> Result<Option<i64>, StoreError> {
        get(self, column, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of each statement of `sql` (empty JSON arrays bound to its parameters),
    /// with every step that reads a real table through less than a full key: a `SCAN` of it, or
    /// a `SEARCH` on the tenant alone. Such a step reads a share of the whole table per batch, which
    /// grows with the store: ingest got slower with every patient stored until the merged-away
    /// patients' lookup, written as `(hospital_id, patient_id) IN (SELECT …)`, was found to search
    /// `fhir_resources` by `hospital_id` alone.
    async fn wide_reads(store: &SqliteStore, sql: &str) -> Vec<String> {
        let mut conn = store.writer().await.unwrap();
        let mut wide = Vec::new();
        for statement in sql.split(";\n").map(str::trim) {
            if statement.is_empty() || statement.starts_with("BEGIN") {
                continue;
            }
            let mut query = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {statement}")));
            for _ in 0..statement.matches('?').count() {
                query = query.bind("[]");
            }
            for row in query.fetch_all(&mut *conn).await.unwrap() {
                let detail: String = row.get("detail");
                let scans_table = detail.starts_with("SCAN ") && !detail.contains("VIRTUAL TABLE");
                if scans_table || detail.ends_with("(hospital_id=?)") {
                    wide.push(format!("{detail}  in  {statement}"));
                }
            }
        }
        wide
    }

    #[tokio::test]
    async fn ingest_reads_and_writes_go_through_whole_keys() {
        let store = SqliteStore::connect("sqlite::memory:", &ConnectOptions::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        for sql in [
            READ_SQL,
            super::super::sqlite_fhir::WRITE_SQL,
            super::super::sqlite_outbox::QUEUE_SQL,
        ] {
            let wide = wide_reads(&store, sql).await;
            assert!(wide.is_empty(), "{wide:#?}");
        }
    }
}
