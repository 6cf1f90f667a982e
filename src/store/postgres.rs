//! PostgreSQL backend: one store shared by several Ferry instances.
//!
//! Every statement is a network round trip, so a batch is kept to a fixed handful: one idempotency
//! lookup (only when the batch has keys and may hold a resend), one stream-version lookup (only
//! when it has events that expect a version), and one statement that inserts the inbound rows,
//! idempotency records and events together (data-modifying CTEs). That statement is its own
//! transaction: all of the batch or nothing, and it returns only after PostgreSQL committed it
//! (`synchronous_commit = on`: flushed to disk), with no `BEGIN`/`COMMIT` round trips. The
//! lookups read committed data before it; inside a READ COMMITTED transaction they would see
//! exactly the same, so nothing is lost by that, and the races below are caught by the insert
//! itself either way.
//!
//! Rows travel as one array per column and are expanded with `UNNEST`, so each statement's text is
//! the same whatever the batch size: it is prepared once per connection and reused, and there is no
//! bind-parameter limit to chunk around.
//!
//! Other instances may write concurrently. Two races are detected and reported, never papered over:
//! * the same idempotency key inserted by another instance after our lookup: the insert fails the
//!   primary key, the batch is rolled back and [`StoreError::IdempotencyRace`] returned (a retry
//!   then sees the record: `Duplicate`);
//! * an append to the same stream after our version lookup: the unique constraint on
//!   (hospital_id, stream_id, stream_version) fails and becomes a [`StoreError::VersionConflict`].

use std::collections::HashMap;
use std::str::FromStr;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::fhir::{HistoryQuery, SearchPage, SearchQuery, StoredResource};
use super::plan::{self, PlannedEvent};
use super::postgres_fhir;
use super::rows::{self, StoreRow};
use super::{
    Backend, ConnectOptions, EventStore, ExpectedVersion, IdempotencyKey, IdempotencyRecord,
    InboundRecord, IngestOutcome, IngestWrite, RecordedEvent, StoreCounts, StoreError,
};
use crate::projections::EventView;
use crate::projections::ResourceType;
use sqlx::Connection;

/// The migrations of `migrations/postgres`, embedded in the binary (see [`plan::migrator`]).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "batch_guard",
        include_str!("../../migrations/postgres/0002_batch_guard.sql"),
    ),
    (
        3,
        "projections",
        include_str!("../../migrations/postgres/0003_projections.sql"),
    ),
    (
        4,
        "outbox",
        include_str!("../../migrations/postgres/0004_outbox.sql"),
    ),
    (
        5,
        "projection_guard",
        include_str!("../../migrations/postgres/0005_projection_guard.sql"),
    ),
    (
        6,
        "idempotency_link",
        include_str!("../../migrations/postgres/0006_idempotency_link.sql"),
    ),
    (
        7,
        "control_id_lookup",
        include_str!("../../migrations/postgres/0007_control_id_lookup.sql"),
    ),
];

/// Finds the idempotency records of a list of keys (given as four parallel arrays).
///
/// Written as a LATERAL subquery with LIMIT so that the plan is one primary-key lookup per key
/// whatever the statistics: a plain join, prepared while the table was small, kept a cached generic
/// plan that scanned the whole table (measured: 7 ms per lookup at 20,000 rows, growing with it).
const LOOKUP_IDEMPOTENCY: &str = "SELECT i.hospital_id, i.sending_application, \
     i.sending_facility, i.control_id, i.content_hash, i.ack, i.inbound_id::text AS inbound_id \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
         AS k (hospital_id, sending_application, sending_facility, control_id) \
     CROSS JOIN LATERAL ( \
         SELECT * FROM idempotency AS x \
         WHERE x.hospital_id = k.hospital_id AND x.sending_application = k.sending_application \
           AND x.sending_facility = k.sending_facility AND x.control_id = k.control_id \
         LIMIT 1) AS i";

/// Current version (NULL when absent) of a list of streams (two parallel arrays).
const LOOKUP_VERSIONS: &str = "SELECT k.hospital_id, k.stream_id, \
     (SELECT max(e.stream_version) FROM events AS e \
      WHERE e.hospital_id = k.hospital_id AND e.stream_id = k.stream_id) AS version \
     FROM UNNEST($1::text[], $2::text[]) AS k (hospital_id, stream_id)";

/// The inbound rows of a batch (`$1`–`$15`): the start of both insert statements below.
macro_rules! insert_inbound_cte {
    () => {
        "WITH inbound AS ( \
       INSERT INTO inbound_messages (id, hospital_id, listener, peer, received_at, raw, decoded, \
         charset, sending_application, sending_facility, control_id, message_type, status, \
         ack_code, error) \
       SELECT * FROM UNNEST($1::text[]::uuid[], $2::text[], $3::text[], $4::text[], \
         $5::timestamptz[], $6::bytea[], $7::text[], $8::text[], $9::text[], $10::text[], \
         $11::text[], $12::text[], $13::text[], $14::text[], $15::text[]) \
     ) "
    };
}

/// The idempotency records of a batch (`$16`–`$22`): the end of both insert statements below.
///
/// A plain insert: a key already stored (or committed by another instance meanwhile) fails the
/// primary key, and with it the whole statement, which [`is_idempotency_race`] recognises. The
/// statements used to insert `ON CONFLICT DO NOTHING` and count what went in (migration 0002's
/// function, which stays for instances of an older release during an upgrade): that costs an index
/// probe before each insert, a speculative-insertion record and a function call, for the same
/// answer (measured: BENCHMARKS.md, "PostgreSQL without mappings").
macro_rules! insert_idempotency {
    () => {
        "INSERT INTO idempotency (hospital_id, sending_application, sending_facility, control_id, \
         content_hash, ack, inbound_id) \
       SELECT * FROM UNNEST($16::text[], $17::text[], $18::text[], $19::text[], $20::bytea[], \
         $21::bytea[], $22::text[]::uuid[])"
    };
}

/// [`INSERT_BATCH`] for a batch without events: only the inbound rows and idempotency records.
/// Every table a statement writes is locked and opened (with each of its indexes) on every
/// execution, also when its insert is empty; leaving out the four inserts of events and outbox
/// saves that for unmapped batches (measured over 8 connections: 1–15 % more unmapped messages
/// per second in four interleaved pairs, within this machine's run-to-run noise; BENCHMARKS.md).
const INSERT_INBOUND: &str = concat!(insert_inbound_cte!(), insert_idempotency!());

/// Inserts a whole batch in one statement, its own transaction: all of it or, on any failure
/// (such as a key already stored), nothing.
/// UUIDs and JSON travel as text arrays and are cast here (sqlx is built without its uuid feature).
/// Each idempotency record points at the inbound row of the same write, inserted by the CTE
/// (checked before: `plan::check_storable`; migration 0006 says why that replaced a foreign key).
///
/// Stream versions (`$25`, and `$37` for the outbox rows) are absolute when `$39` is false. When it
/// is true they count from the stream's current end, which the `base` CTE reads in this statement's
/// own snapshot: that is how a batch that appends only at [`ExpectedVersion::Any`] spares the
/// separate [`LOOKUP_VERSIONS`] round trip (measured: PostgreSQL planned that lookup anew on every
/// call, 0.098 ms, for 0.034 ms of execution). Inside the read-model transaction this statement
/// runs after the locks, so it sees every append committed before them, as the lookup did. An
/// append by another instance after the snapshot still fails the unique constraint on
/// (hospital_id, stream_id, stream_version).
const INSERT_BATCH: &str = concat!(
    insert_inbound_cte!(),
    ", base AS ( \
       SELECT k.h, k.s, CASE WHEN $39::bool THEN COALESCE((SELECT max(x.stream_version) \
           FROM events AS x WHERE x.hospital_id = k.h AND x.stream_id = k.s), 0) ELSE 0 END AS b \
       FROM (SELECT DISTINCT h, s FROM UNNEST($23::text[], $24::text[]) AS u (h, s)) AS k \
     ), appended AS ( \
       INSERT INTO events (hospital_id, stream_id, stream_version, event_type, schema_version, \
         payload, metadata, recorded_at) \
       SELECT e.h, e.s, base.b + e.v, e.t, e.sv, e.p::jsonb, e.m::jsonb, $30::timestamptz \
       FROM UNNEST($23::text[], $24::text[], $25::int8[], $26::text[], $27::int4[], $28::text[], \
         $29::text[]) WITH ORDINALITY AS e (h, s, v, t, sv, p, m, n) \
         JOIN base ON base.h = e.h AND base.s = e.s \
       ORDER BY e.n \
     ), queued AS ( \
       INSERT INTO outbox (hospital_id, destination, lane, subscription, mapping, stream_id, \
         stream_version, event_type, created_at) \
       SELECT q.h, q.d, q.l, q.s, q.m, q.st, base.b + q.v, q.t, $30::timestamptz \
       FROM UNNEST($31::text[], $32::text[], $33::text[], $34::text[], $35::text[], $36::text[], \
         $37::int8[], $38::text[]) WITH ORDINALITY AS q (h, d, l, s, m, st, v, t, n) \
         JOIN base ON base.h = q.h AND base.s = q.st \
       ORDER BY q.n \
     ), lanes AS ( \
       INSERT INTO outbox_lanes (destination, lane, hospital_id, ready_at, enqueued) \
       SELECT d, l, min(h), $30::timestamptz, count(*) \
       FROM UNNEST($31::text[], $32::text[], $33::text[]) AS q (h, d, l) GROUP BY d, l \
       ON CONFLICT (destination, lane) DO UPDATE \
         SET enqueued = outbox_lanes.enqueued + excluded.enqueued \
     ) \
     ",
    insert_idempotency!()
);

/// The PostgreSQL store. Cheap to share behind an `Arc`; the pool does the synchronisation.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pub(super) pool: PgPool,
    /// Connections with `synchronous_commit = off`, for delivery state (leases, "delivered"
    /// marks): see `postgres_outbox.rs` for why that is safe.
    pub(super) relaxed: PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://…` (or `postgresql://…`).
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self, StoreError> {
        let connect_options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::UnsupportedUrl(url.to_owned()))?;
        // No ping before each acquire (sqlx's default): it is a network round trip per commit, and
        // a connection that broke meanwhile fails its commit, which is answered with a
        // retry-later NAK while sqlx drops the connection.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options.clone())
            .await?;
        let relaxed = PgPoolOptions::new()
            .max_connections(options.max_connections.clamp(1, 4))
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect_options.options([("synchronous_commit", "off")]));
        Ok(Self { pool, relaxed })
    }

    async fn commit_batch(&self, batch: &[IngestWrite]) -> Result<Vec<IngestOutcome>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        // Resends are rare: first try without looking the keys up. The insert statement itself
        // refuses a key already stored (its primary key), and then the batch goes the careful way.
        // That holds for batches with events too (their transaction is rolled back whole), as
        // long as nothing but the insert can tell a resend apart: an expected version or a
        // precondition would fail on the resend's behalf before the insert answers "duplicate".
        let optimistic = !plan::repeats_a_key(batch)
            && batch.iter().all(|w| {
                w.preconditions.is_empty()
                    && w.events
                        .iter()
                        .all(|e| e.expected_version == ExpectedVersion::Any)
            });
        if optimistic {
            match write_batch(&mut conn, batch, false).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(BatchError::Store(StoreError::IdempotencyRace)) => {}
                Err(BatchError::Store(e)) => return Err(e),
                Err(BatchError::ConcurrentAppend(err, streams)) => {
                    return Err(describe_concurrent_append(&mut conn, err, &streams).await);
                }
            }
        }
        match write_batch(&mut conn, batch, true).await {
            Ok(outcomes) => Ok(outcomes),
            Err(BatchError::Store(e)) => Err(e),
            Err(BatchError::ConcurrentAppend(err, streams)) => {
                Err(describe_concurrent_append(&mut conn, err, &streams).await)
            }
        }
    }
}

/// After a unique violation on events: find a stream that moved since we read it and report
/// its version now. `streams` holds (hospital, stream, version read, expected) per stream; the
/// version read is `None` when the statement counted from the stream's end itself (appends at
/// [`ExpectedVersion::Any`] only, which the committer retries): then the first stream that has
/// events is reported, as it may be the one that moved.
async fn describe_concurrent_append(
    conn: &mut PgConnection,
    err: sqlx::Error,
    streams: &[StreamRead],
) -> StoreError {
    let pairs: Vec<(&str, &str)> = streams
        .iter()
        .map(|(h, s, _, _)| (h.as_str(), s.as_str()))
        .collect();
    let Ok(now) = lookup_versions(conn, &pairs).await else {
        return StoreError::Database(err);
    };
    streams
        .iter()
        .find_map(|(h, s, read, expected)| {
            let actual = now.get(&(h.clone(), s.clone())).copied().unwrap_or(0);
            read.map_or(actual > 0, |read| actual != read)
                .then(|| StoreError::VersionConflict {
                    stream_id: s.clone(),
                    expected: expected.clone(),
                    actual,
                })
        })
        .unwrap_or(StoreError::Database(err))
}

/// Why a batch failed.
enum BatchError {
    Store(StoreError),
    /// Unique violation on events: another instance appended to one of these streams.
    ConcurrentAppend(sqlx::Error, Vec<StreamRead>),
}

/// A stream a failed batch appended to: (hospital, stream, version read, expected version).
type StreamRead = (String, String, Option<i64>, String);

impl From<StoreError> for BatchError {
    fn from(e: StoreError) -> Self {
        BatchError::Store(e)
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        BatchError::Store(StoreError::Database(e))
    }
}

/// The lookups (skipped when `look_up` is false), then the one statement that writes (and
/// commits) the batch.
async fn write_batch(
    conn: &mut PgConnection,
    batch: &[IngestWrite],
    look_up: bool,
) -> Result<Vec<IngestOutcome>, BatchError> {
    plan::check_storable(batch)?;
    let keys: Vec<&IdempotencyKey> = batch
        .iter()
        .filter_map(|w| w.idempotency.as_ref().map(|r| &r.key))
        .collect();
    let existing = if keys.is_empty() || !look_up {
        Vec::new()
    } else {
        lookup_idempotency(conn, &keys).await?
    };
    let outcomes = plan::dedup(batch, &existing);
    let stored: Vec<&IngestWrite> = batch
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, IngestOutcome::Stored))
        .map(|(w, _)| w)
        .collect();
    if stored.is_empty() {
        // All duplicates: nothing to write.
        return Ok(outcomes);
    }
    let views: Vec<EventView<'_>> = stored
        .iter()
        .flat_map(|w| w.events.iter().map(|e| e.view(&w.inbound.hospital_id)))
        .collect();
    let at = super::commit_time();
    let preconditions: Vec<&super::Precondition> =
        stored.iter().flat_map(|w| &w.preconditions).collect();
    if preconditions.is_empty()
        && !views
            .iter()
            .any(|v| crate::domain::event_spec(v.event_type).is_some())
    {
        // No event the read models know: one statement, its own transaction.
        return insert_batch(conn, batch, &outcomes, &stored, at).await;
    }
    // Events that update the read models: one transaction that first locks the resources they
    // touch, so instances fold events into one resource one at a time, in commit order. The
    // stream versions are read after the locks: a writer of the same patient's streams waited for
    // them, so its appends are already visible and do not collide with ours.
    let mut tx = conn.begin().await?;
    let result = async {
        super::fhir::project(&mut *tx, &views, &preconditions, at)
            .await
            .map_err(|e| match e {
                StoreError::Database(err) => classify(err, &[], false),
                other => other.into(),
            })?;
        insert_batch(&mut tx, batch, &outcomes, &stored, at).await
    }
    .await;
    match result {
        Ok(outcomes) => {
            tx.commit().await.map_err(|e| classify(e, &[], false))?;
            Ok(outcomes)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Assigns the stream versions and writes the batch with [`INSERT_BATCH`], or with
/// [`INSERT_INBOUND`] when it has no events. Only a batch with an expected version reads the
/// streams' versions first ([`LOOKUP_VERSIONS`]), to check them; otherwise the versions are
/// counted from each stream's end inside [`INSERT_BATCH`].
async fn insert_batch(
    conn: &mut PgConnection,
    batch: &[IngestWrite],
    outcomes: &[IngestOutcome],
    stored: &[&IngestWrite],
    at: OffsetDateTime,
) -> Result<Vec<IngestOutcome>, BatchError> {
    let relative = stored
        .iter()
        .flat_map(|w| &w.events)
        .all(|e| e.expected_version == ExpectedVersion::Any);
    let streams = if relative {
        Vec::new()
    } else {
        plan::touched_streams(batch, outcomes)
    };
    let current = if streams.is_empty() {
        HashMap::new()
    } else {
        lookup_versions(conn, &streams).await?
    };
    // With no versions read, each stream's events are numbered 1, 2, … from its end.
    let events = plan::assign_versions(batch, outcomes, &current)?;
    let records: Vec<&IdempotencyRecord> = stored
        .iter()
        .filter_map(|w| w.idempotency.as_ref())
        .collect();
    let query = if events.is_empty() {
        bind_inbound(sqlx::query(INSERT_INBOUND), stored, &records)
    } else {
        let query = bind_inbound(sqlx::query(INSERT_BATCH), stored, &records);
        let query = bind_events(query, &events)?.bind(at);
        bind_deliveries(query, &events).bind(relative)
    };
    // execute reads the response up to ReadyForQuery: outside a transaction that is past the
    // commit of this statement's own, i.e. durable.
    match query.execute(&mut *conn).await {
        Ok(_) => Ok(outcomes.to_vec()),
        Err(err) => Err(classify(err, &events, relative)),
    }
}

/// A failed statement as the caller handles it. `relative`: the events' versions were counted
/// from the streams' ends in the statement, not from versions read before.
fn classify(err: sqlx::Error, events: &[PlannedEvent<'_>], relative: bool) -> BatchError {
    if is_idempotency_race(&err) {
        StoreError::IdempotencyRace.into()
    } else if is_event_conflict(&err) {
        BatchError::ConcurrentAppend(err, first_per_stream(events, relative))
    } else if postgres_fhir::is_contention(&err) {
        StoreError::Contention.into()
    } else {
        err.into()
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds `$1`–`$22`: the inbound rows and idempotency records, one array per column.
fn bind_inbound<'q>(
    query: PgQuery<'q>,
    stored: &[&IngestWrite],
    records: &[&IdempotencyRecord],
) -> PgQuery<'q> {
    fn col<T, F: Fn(&InboundRecord) -> T>(stored: &[&IngestWrite], f: F) -> Vec<T> {
        stored.iter().map(|w| f(&w.inbound)).collect()
    }
    let query = query
        .bind(col(stored, |m| m.id.hyphenated().to_string()))
        .bind(col(stored, |m| m.hospital_id.clone()))
        .bind(col(stored, |m| m.listener.clone()))
        .bind(col(stored, |m| m.peer.clone()))
        .bind(col(stored, |m| m.received_at))
        .bind(col(stored, |m| m.raw.clone()))
        .bind(col(stored, |m| m.decoded.clone()))
        .bind(col(stored, |m| m.charset.clone()))
        .bind(col(stored, |m| m.sending_application.clone()))
        .bind(col(stored, |m| m.sending_facility.clone()))
        .bind(col(stored, |m| m.control_id.clone()))
        .bind(col(stored, |m| m.message_type.clone()))
        .bind(col(stored, |m| m.status.as_str().to_owned()))
        .bind(col(stored, |m| m.ack_code.clone()))
        .bind(col(stored, |m| m.error.clone()));

    fn rec<T, F: Fn(&IdempotencyRecord) -> T>(records: &[&IdempotencyRecord], f: F) -> Vec<T> {
        records.iter().map(|r| f(r)).collect()
    }
    query
        .bind(rec(records, |r| r.key.hospital_id.clone()))
        .bind(rec(records, |r| r.key.sending_application.clone()))
        .bind(rec(records, |r| r.key.sending_facility.clone()))
        .bind(rec(records, |r| r.key.control_id.clone()))
        .bind(rec(records, |r| r.content_hash.clone()))
        .bind(rec(records, |r| r.ack.clone()))
        .bind(rec(records, |r| r.inbound_id.hyphenated().to_string()))
}

/// Binds `$23`–`$29` of [`INSERT_BATCH`]: the events, one array per column.
fn bind_events<'q>(
    query: PgQuery<'q>,
    events: &[PlannedEvent<'_>],
) -> Result<PgQuery<'q>, StoreError> {
    let mut payloads = Vec::with_capacity(events.len());
    let mut metadata = Vec::with_capacity(events.len());
    for e in events {
        payloads.push(e.event.payload.as_str().to_owned());
        metadata.push(json_text(&e.event.metadata, "metadata")?);
    }
    Ok(query
        .bind(
            events
                .iter()
                .map(|e| e.hospital_id.to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.event.stream_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.version).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.event.schema_version)
                .collect::<Vec<_>>(),
        )
        .bind(payloads)
        .bind(metadata))
}

/// Binds `$32`–`$39` of [`INSERT_BATCH`]: the outbox rows of the events, one per delivery.
fn bind_deliveries<'q>(query: PgQuery<'q>, events: &[PlannedEvent<'_>]) -> PgQuery<'q> {
    let mut cols: [Vec<String>; 7] = Default::default();
    let mut versions = Vec::new();
    for e in events {
        for d in &e.event.deliveries {
            cols[0].push(e.hospital_id.to_owned());
            cols[1].push(d.destination.clone());
            cols[2].push(d.lane.clone());
            cols[3].push(d.subscription.clone());
            cols[4].push(d.mapping.clone());
            cols[5].push(e.event.stream_id.clone());
            cols[6].push(e.event.event_type.clone());
            versions.push(e.version);
        }
    }
    let [h, d, l, s, m, st, t] = cols;
    query
        .bind(h)
        .bind(d)
        .bind(l)
        .bind(s)
        .bind(m)
        .bind(st)
        .bind(versions)
        .bind(t)
}

/// An idempotency key of the batch is stored already: by another instance after our lookup, or
/// (when the batch skipped the lookup) by anyone; the batch then goes the careful way.
fn is_idempotency_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.constraint() == Some("idempotency_pkey"))
}

fn is_event_conflict(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.constraint() == Some("events_stream_version_unique"))
}

/// (hospital, stream, version read, expected) of the first planned event of each stream; no
/// version read when the versions were `relative` (see [`INSERT_BATCH`]).
fn first_per_stream(events: &[PlannedEvent<'_>], relative: bool) -> Vec<StreamRead> {
    let mut out: Vec<StreamRead> = Vec::new();
    for e in events {
        if !out
            .iter()
            .any(|(h, s, _, _)| h == e.hospital_id && *s == e.event.stream_id)
        {
            out.push((
                e.hospital_id.to_owned(),
                e.event.stream_id.clone(),
                (!relative).then_some(e.version - 1),
                e.event.expected_version.to_string(),
            ));
        }
    }
    out
}

async fn lookup_idempotency(
    tx: &mut PgConnection,
    keys: &[&IdempotencyKey],
) -> Result<Vec<IdempotencyRecord>, StoreError> {
    let field = |f: fn(&IdempotencyKey) -> &String| -> Vec<&str> {
        keys.iter().map(|k| f(k).as_str()).collect()
    };
    let rows = sqlx::query(LOOKUP_IDEMPOTENCY)
        .bind(field(|k| &k.hospital_id))
        .bind(field(|k| &k.sending_application))
        .bind(field(|k| &k.sending_facility))
        .bind(field(|k| &k.control_id))
        .fetch_all(&mut *tx)
        .await?;
    rows.iter().map(rows::idempotency).collect()
}

async fn lookup_versions(
    conn: &mut PgConnection,
    streams: &[(&str, &str)],
) -> Result<HashMap<(String, String), i64>, StoreError> {
    let rows = sqlx::query(LOOKUP_VERSIONS)
        .bind(streams.iter().map(|(h, _)| *h).collect::<Vec<_>>())
        .bind(streams.iter().map(|(_, s)| *s).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
    let mut current = HashMap::with_capacity(rows.len());
    for row in rows {
        let hospital_id: String = get(&row, 0, "events.hospital_id")?;
        let stream_id: String = get(&row, 1, "events.stream_id")?;
        let version: Option<i64> = get(&row, 2, "events.stream_version")?;
        current.insert((hospital_id, stream_id), version.unwrap_or(0));
    }
    Ok(current)
}

fn json_text(value: &serde_json::Value, column: &str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("events.{column}: {e}")))
}

/// A column by position or name; a value of the wrong type is a corrupt row, not a panic.
fn get<'r, T, I>(row: &'r PgRow, index: I, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    I: sqlx::ColumnIndex<PgRow>,
{
    row.try_get(index)
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// `SELECT <every inbound_messages column> FROM inbound_messages <tail>`: the one column list that
/// [`rows::inbound`] reads, for every query of the inbound log.
macro_rules! select_inbound {
    ($tail:literal $(,)?) => {
        concat!(
            "SELECT id::text AS id, hospital_id, listener, peer, received_at, raw, decoded, charset, \
             sending_application, sending_facility, control_id, message_type, status, ack_code, \
             error FROM inbound_messages ",
            $tail
        )
    };
}

impl EventStore for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            // sqlx takes an advisory lock, so instances starting together migrate one at a time.
            plan::migrator(MIGRATIONS).run(&self.pool).await?;
            Ok(())
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
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
            let row = sqlx::query(select_inbound!("WHERE id = $1::text::uuid"))
                .bind(id.hyphenated().to_string())
                .fetch_optional(&self.pool)
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
            // partial index (migration 0007_control_id_lookup).
            let rows = sqlx::query(concat!(
                select_inbound!(
                    "WHERE id IN (SELECT inbound_id FROM idempotency \
                     WHERE hospital_id = $1 AND control_id = $2) UNION ALL ",
                ),
                select_inbound!(
                    "WHERE hospital_id = $1 AND control_id = $2 AND status = 'rejected' \
                     ORDER BY received_at, id",
                ),
            ))
            .bind(hospital_id)
            .bind(control_id)
            .fetch_all(&self.pool)
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
                 content_hash, ack, inbound_id::text AS inbound_id FROM idempotency \
                 WHERE hospital_id = $1 AND sending_application = $2 AND sending_facility = $3 \
                 AND control_id = $4",
            )
            .bind(key.hospital_id.as_str())
            .bind(key.sending_application.as_str())
            .bind(key.sending_facility.as_str())
            .bind(key.control_id.as_str())
            .fetch_optional(&self.pool)
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
                 schema_version, payload::text AS payload, metadata::text AS metadata, recorded_at \
                 FROM events WHERE hospital_id = $1 AND stream_id = $2 ORDER BY stream_version",
            )
            .bind(hospital_id)
            .bind(stream_id)
            .fetch_all(&self.pool)
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
            .fetch_one(&self.pool)
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
        super::fhir::read(&self.pool, tenant, resource_type, id, version).boxed()
    }

    fn fhir_search<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a SearchQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StoreError>> {
        super::fhir::search(&self.pool, tenant, query).boxed()
    }

    fn fhir_history<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a HistoryQuery,
    ) -> BoxFuture<'a, Result<SearchPage, StoreError>> {
        super::fhir::history(&self.pool, tenant, query).boxed()
    }

    fn events_after(
        &self,
        position: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        async move {
            let mut conn = self.pool.acquire().await?;
            events_after(&mut conn, position, limit).await
        }
        .boxed()
    }

    fn outbox(&self) -> &dyn super::OutboxStore {
        self
    }

    fn rebuild_projections<'a>(
        &'a self,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut conn = self.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            // Writers wait until the rebuild commits: their events are then folded into the new
            // read models, not lost between the replay and the swap.
            sqlx::query("LOCK TABLE fhir_resources IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            let replayed = super::fhir::rebuild(&mut *tx, progress).await?;
            tx.commit().await?;
            Ok(replayed)
        }
        .boxed()
    }
}

pub(super) async fn events_after(
    conn: &mut PgConnection,
    position: i64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT global_position, hospital_id, stream_id, stream_version, event_type, \
         schema_version, payload::text AS payload, metadata::text AS metadata, recorded_at \
         FROM events WHERE global_position > $1 ORDER BY global_position LIMIT $2",
    )
    .bind(position)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(rows::event).collect()
}

impl StoreRow for PgRow {
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
        // BIGINT columns decode as i64, INTEGER ones (schema_version) only as i32.
        get::<i64, _>(self, column, name)
            .or_else(|_| get::<i32, _>(self, column, name).map(i64::from))
    }

    fn time(&self, column: &str, name: &str) -> Result<OffsetDateTime, StoreError> {
        get(self, column, name)
    }

    fn optional_time(
        &self,
        column: &str,
        name: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        get(self, column, name)
    }

    fn optional_bytes(&self, column: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        get(self, column, name)
    }

    fn optional_integer(&self, column: &str, name: &str) -> Result<Option<i64>, StoreError> {
        get(self, column, name)
    }
}
