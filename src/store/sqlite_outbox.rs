//! The outbox on SQLite ([`OutboxStore`]): one instance (or processes sharing the file, which
//! SQLite's write lock serialises), so a lane is claimed with one `UPDATE … RETURNING`.
//!
//! Writes go through the store's one writer connection, like ingest commits; reads through the
//! reader pool. Lists of rows travel as one JSON array read with `json_each`, so each statement's
//! text is fixed and stays prepared.

use std::collections::BTreeSet;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::{Connection, Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::StoreError;
use super::outbox::{
    Attempt, AttemptResult, DeadLetter, DeliveredRow, DestinationStatus, DlqFilter, LaneBatch,
    OutboxStore, ReplayDelivery,
};
use super::plan::PlannedEvent;
use super::rows;
use super::sqlite::{SqliteStore, format_timestamp};

/// Inserts outbox rows and creates (or counts into) their lanes. Binds, in order: the time, the
/// rows (`[hospital, destination, lane, subscription, mapping, stream, version, type]` each, as a
/// JSON array, in queue order), then the time and the rows again; anonymous parameters, so that
/// it can follow other statements in one query (see `sqlite::write_general`).
pub(super) const QUEUE_SQL: &str = "\
INSERT INTO outbox (hospital_id, destination, lane, subscription, mapping, stream_id, \
stream_version, event_type, created_at) \
SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5, \
j.value->>6, j.value->>7, ? FROM json_each(?) AS j ORDER BY j.key;
INSERT INTO outbox_lanes (destination, lane, hospital_id, ready_at, enqueued) \
SELECT j.value->>1, j.value->>2, min(j.value->>0), ?, count(*) FROM json_each(?) AS j \
WHERE true GROUP BY 1, 2 \
ON CONFLICT (destination, lane) DO UPDATE SET enqueued = enqueued + excluded.enqueued;";

/// The outbox rows of the events of an ingest batch for [`QUEUE_SQL`]; `None` when no event has
/// a delivery.
pub(super) fn delivery_rows(events: &[PlannedEvent<'_>]) -> Option<String> {
    let mut rows = Vec::new();
    for e in events {
        for d in &e.event.deliveries {
            rows.push(json!([
                e.hospital_id,
                d.destination,
                d.lane,
                d.subscription,
                d.mapping,
                e.event.stream_id,
                e.version,
                e.event.event_type,
            ]));
        }
    }
    (!rows.is_empty()).then(|| serde_json::Value::Array(rows).to_string())
}

/// Inserts outbox rows (JSON, as [`QUEUE_SQL`] takes them), in order, and creates their lanes.
async fn insert_rows(
    tx: &mut Transaction<'_, Sqlite>,
    rows: String,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query(QUEUE_SQL)
        .bind(now)
        .bind(rows.as_str())
        .bind(now)
        .bind(rows.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

/// Runs `statements` (anonymous `?` parameters, bound in order by `bind`) with
/// `synchronous = NORMAL`, in one trip to SQLite's worker thread, and sets `FULL` back.
///
/// Why: delivery state (leases, "delivered" marks) changes once per message, and an fsync per
/// change made the shared writer the bottleneck. In WAL mode NORMAL loses nothing when the
/// process dies (SIGKILL included): the commit is in the WAL. Only a power failure or OS crash may
/// undo the last such commits before the next FULL commit (any ingest) syncs the WAL; the outbox
/// row itself was written by that FULL commit, so the worst case is a message sent again.
async fn relaxed<'q>(
    conn: &mut sqlx::SqliteConnection,
    statements: &str,
    transaction: bool,
    bind: impl FnOnce(SqliteQuery<'q>) -> SqliteQuery<'q>,
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
    let sql = if transaction {
        format!(
            "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE; {statements}; COMMIT; \
             PRAGMA synchronous = FULL;"
        )
    } else {
        format!("PRAGMA synchronous = NORMAL; {statements}; PRAGMA synchronous = FULL;")
    };
    let result = bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .fetch_all(&mut *conn)
        .await;
    match result {
        Ok(rows) => Ok(rows),
        Err(err) => {
            // Leave the connection as ingest needs it: no transaction, synchronous = FULL.
            if transaction {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            }
            if let Err(restore) = sqlx::query("PRAGMA synchronous = FULL")
                .execute(&mut *conn)
                .await
            {
                tracing::error!(error = %restore, "Cannot set synchronous = FULL back on the writer.");
            }
            Err(err.into())
        }
    }
}

fn ts(at: OffsetDateTime) -> Result<String, StoreError> {
    format_timestamp(at, "outbox")
}

/// The `WHERE` of a DLQ filter: `?1` id, `?2` destination, `?3` dead before, `?4` tenant.
const DLQ_WHERE: &str = "status = 'dead' AND (?1 IS NULL OR id = ?1) \
     AND (?2 IS NULL OR destination = ?2) AND (?3 IS NULL OR finished_at < ?3) \
     AND (?4 IS NULL OR hospital_id = ?4)";

impl OutboxStore for SqliteStore {
    fn claim_lanes<'a>(
        &'a self,
        destination: &'a str,
        owner: &'a str,
        limit: i64,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let (now, until) = (ts(now)?, ts(lease_until)?);
            let mut writer = self.writer().await?;
            // Lanes with work are found through a small partial index (enqueued > seen, not
            // blocked), oldest backoff first; leased ones are skipped.
            let rows = relaxed(
                &mut writer,
                "UPDATE outbox_lanes SET lease_owner = ?, lease_until = ? \
                 WHERE destination = ? AND lane IN ( \
                   SELECT lane FROM outbox_lanes \
                   WHERE destination = ? AND enqueued > seen AND blocked = 0 \
                     AND ready_at <= ? AND (lease_owner IS NULL OR lease_until < ?) \
                   ORDER BY ready_at LIMIT ?) \
                 RETURNING lane",
                false,
                |q| {
                    q.bind(owner)
                        .bind(until)
                        .bind(destination)
                        .bind(destination)
                        .bind(now.clone())
                        .bind(now)
                        .bind(limit)
                },
            )
            .await?;
            let lanes: Vec<(String,)> = rows
                .iter()
                .map(|r| {
                    r.try_get::<String, _>(0)
                        .map(|l| (l,))
                        .map_err(|e| StoreError::Corrupt(format!("outbox_lanes.lane: {e}")))
                })
                .collect::<Result<_, _>>()?;
            Ok(lanes.into_iter().map(|(l,)| l).collect())
        }
        .boxed()
    }

    fn lane_items<'a>(
        &'a self,
        destination: &'a str,
        lane: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<LaneBatch, StoreError>> {
        async move {
            // The lane's count and its rows in one statement (one snapshot): every row the
            // count includes is visible, and a row committed later raises the count past it.
            let rows = sqlx::query(
                "SELECT l.enqueued AS lane_enqueued, o.id AS o_id, o.destination AS o_destination, \
                 o.lane AS o_lane, o.subscription AS o_subscription, o.mapping AS o_mapping, \
                 o.attempts AS o_attempts, o.created_at AS o_created_at, \
                 e.global_position, e.hospital_id, e.stream_id, e.stream_version, e.event_type, \
                 e.schema_version, e.payload, e.metadata, e.recorded_at \
                 FROM outbox_lanes AS l \
                 LEFT JOIN (SELECT * FROM outbox WHERE destination = ?1 AND lane = ?2 \
                            AND status = 'pending' ORDER BY id LIMIT ?3) AS o ON true \
                 LEFT JOIN events AS e ON e.hospital_id = o.hospital_id \
                   AND e.stream_id = o.stream_id AND e.stream_version = o.stream_version \
                 WHERE l.destination = ?1 AND l.lane = ?2 \
                 ORDER BY o.id",
            )
            .bind(destination)
            .bind(lane)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
            rows::lane_batch(&rows)
        }
        .boxed()
    }

    fn record_attempts<'a>(
        &'a self,
        attempts: &'a [Attempt],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        async move {
            let mut writer = self.writer().await?;
            if attempts
                .iter()
                .all(|a| matches!(a.result, AttemptResult::Delivered))
            {
                return record_delivered(&mut writer, attempts).await;
            }
            let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
            let result = record(&mut tx, attempts).await;
            match result {
                Ok(held) => {
                    tx.commit().await?;
                    Ok(held)
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn renew_leases<'a>(
        &'a self,
        owner: &'a str,
        until: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let until = ts(until)?;
            let mut writer = self.writer().await?;
            let done = sqlx::query("UPDATE outbox_lanes SET lease_until = ? WHERE lease_owner = ?")
                .bind(until)
                .bind(owner)
                .execute(&mut *writer)
                .await?;
            Ok(done.rows_affected())
        }
        .boxed()
    }

    fn release_lane<'a>(
        &'a self,
        destination: &'a str,
        lane: &'a str,
        owner: &'a str,
        ready_at: OffsetDateTime,
        drained: Option<i64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let ready_at = ts(ready_at)?;
            let mut writer = self.writer().await?;
            sqlx::query(
                "UPDATE outbox_lanes SET lease_owner = NULL, lease_until = NULL, ready_at = ?, \
                 seen = max(seen, coalesce(?, seen)) \
                 WHERE destination = ? AND lane = ? AND lease_owner = ?",
            )
            .bind(ready_at)
            .bind(drained)
            .bind(destination)
            .bind(lane)
            .bind(owner)
            .execute(&mut *writer)
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn enqueue<'a>(
        &'a self,
        deliveries: &'a [ReplayDelivery],
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            if deliveries.is_empty() {
                return Ok(0);
            }
            let now = ts(now)?;
            let rows: Vec<serde_json::Value> = deliveries
                .iter()
                .map(|r| {
                    json!([
                        r.hospital_id,
                        r.delivery.destination,
                        r.delivery.lane,
                        r.delivery.subscription,
                        r.delivery.mapping,
                        r.stream_id,
                        r.stream_version,
                        r.event_type,
                    ])
                })
                .collect();
            let mut writer = self.writer().await?;
            let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
            let rows = serde_json::Value::Array(rows).to_string();
            match insert_rows(&mut tx, rows, &now).await {
                Ok(()) => {
                    tx.commit().await?;
                    Ok(deliveries.len() as u64)
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        }
        .boxed()
    }

    fn outbox_status(&self) -> BoxFuture<'_, Result<Vec<DestinationStatus>, StoreError>> {
        async move {
            // Only pending and dead rows are counted, through their partial indexes: delivered
            // rows stay in the table and would make this a full scan.
            let totals = sqlx::query(
                "SELECT destination, sum(p) AS pending, sum(d) AS dead, \
                 min(CASE WHEN p = 1 THEN created_at END) AS oldest_at FROM ( \
                   SELECT destination, created_at, 1 AS p, 0 AS d FROM outbox WHERE status = 'pending' \
                   UNION ALL \
                   SELECT destination, created_at, 0, 1 FROM outbox WHERE status = 'dead') \
                 GROUP BY destination ORDER BY destination",
            )
            .fetch_all(&self.reader)
            .await?;
            let mut out = Vec::new();
            for row in &totals {
                let mut status = rows::destination_status(row)?;
                let lanes = sqlx::query(
                    "SELECT x.lane, sum(x.p) AS pending, sum(x.d) AS dead, \
                     min(x.created_at) AS oldest_at, l.lease_owner, l.ready_at FROM ( \
                       SELECT lane, created_at, 1 AS p, 0 AS d FROM outbox \
                         WHERE status = 'pending' AND destination = ?1 \
                       UNION ALL \
                       SELECT lane, created_at, 0, 1 FROM outbox \
                         WHERE status = 'dead' AND destination = ?1) AS x \
                     LEFT JOIN outbox_lanes AS l ON l.destination = ?1 AND l.lane = x.lane \
                     GROUP BY x.lane ORDER BY sum(x.p) + sum(x.d) DESC, x.lane LIMIT 20",
                )
                .bind(&status.destination)
                .fetch_all(&self.reader)
                .await?;
                status.lanes = lanes
                    .iter()
                    .map(rows::lane_status)
                    .collect::<Result<_, _>>()?;
                out.push(status);
            }
            Ok(out)
        }
        .boxed()
    }

    fn dlq_list<'a>(
        &'a self,
        filter: &'a DlqFilter,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        async move {
            let sql = format!(
                "SELECT id, hospital_id, destination, lane, subscription, mapping, event_type, \
                 stream_id, stream_version, attempts, created_at, finished_at, last_error, \
                 last_response FROM outbox WHERE {DLQ_WHERE} ORDER BY id LIMIT ?5"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(filter.id)
                .bind(filter.destination.as_deref())
                .bind(filter.dead_before.map(ts).transpose()?)
                .bind(filter.hospital_id.as_deref())
                .bind(filter.limit.unwrap_or(i64::MAX))
                .fetch_all(&self.reader)
                .await?;
            rows.iter().map(rows::dead_letter).collect()
        }
        .boxed()
    }

    fn dlq_retry<'a>(
        &'a self,
        filter: &'a DlqFilter,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        // Back at the head of its lane, attempts from zero.
        self.dlq_act(
            "status = 'pending', attempts = 0, finished_at = NULL",
            filter,
            now,
        )
        .boxed()
    }

    fn dlq_discard<'a>(
        &'a self,
        filter: &'a DlqFilter,
        now: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.dlq_act("status = 'discarded', finished_at = ?5", filter, now)
            .boxed()
    }

    fn delivered_after<'a>(
        &'a self,
        destination: &'a str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<DeliveredRow>, StoreError>> {
        async move {
            let rows = sqlx::query(
                "SELECT id, destination, lane, attempts, created_at, finished_at FROM outbox \
                 WHERE destination = ? AND status = 'delivered' AND id > ? ORDER BY id LIMIT ?",
            )
            .bind(destination)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(rows::delivered_row).collect()
        }
        .boxed()
    }
}

/// Marks deliveries done and renews (or, for a lane's last message, gives back) their lanes: one
/// relaxed transaction, one trip (see [`relaxed`]); returns whether each lane was still held.
async fn record_delivered(
    conn: &mut sqlx::SqliteConnection,
    attempts: &[Attempt],
) -> Result<Vec<bool>, StoreError> {
    let list = serde_json::Value::Array(
        attempts
            .iter()
            .map(delivered_row)
            .collect::<Result<Vec<_>, _>>()?,
    )
    .to_string();
    let rows = relaxed(
        conn,
        &format!("{MARK_DELIVERED}; {RENEW_LANES}"),
        true,
        |q| q.bind(list.clone()).bind(list),
    )
    .await?;
    let mut held_lanes = BTreeSet::new();
    for row in &rows {
        let d: String = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(format!("outbox_lanes: {e}")))?;
        let l: String = row
            .try_get(1)
            .map_err(|e| StoreError::Corrupt(format!("outbox_lanes: {e}")))?;
        held_lanes.insert((d, l));
    }
    Ok(attempts
        .iter()
        .map(|a| held_lanes.contains(&(a.destination.clone(), a.lane.clone())))
        .collect())
}

/// One delivered attempt as the JSON row [`MARK_DELIVERED`] and [`RENEW_LANES`] read.
fn delivered_row(a: &Attempt) -> Result<serde_json::Value, StoreError> {
    Ok(json!([
        a.id,
        ts(a.at)?,
        a.response
            .as_deref()
            .map(|r| String::from_utf8_lossy(r).into_owned()),
        a.destination,
        a.lane,
        a.owner,
        ts(a.lease_until)?,
        a.release,
    ]))
}

/// Marks delivered the rows of a JSON list of [`delivered_row`]s.
const MARK_DELIVERED: &str = "UPDATE outbox SET status = 'delivered', attempts = attempts + 1, \
     last_attempt_at = j.value->>1, finished_at = j.value->>1, last_error = NULL, \
     last_response = CAST(j.value->>2 AS BLOB) \
     FROM json_each(?) AS j WHERE outbox.id = j.value->>0 AND outbox.status = 'pending'";

/// Renews the lanes of a JSON list of [`delivered_row`]s, or gives back (drained) those whose
/// row says so; returns the lanes the owner still held. RETURNING may name only the updated
/// table's columns.
const RENEW_LANES: &str = "UPDATE outbox_lanes SET \
       lease_until = CASE WHEN j.value->>7 IS NULL THEN j.value->>6 END, \
       lease_owner = CASE WHEN j.value->>7 IS NULL THEN lease_owner END, \
       seen = CASE WHEN j.value->>7 IS NULL THEN seen ELSE max(seen, j.value->>7) END \
     FROM json_each(?) AS j \
     WHERE outbox_lanes.destination = j.value->>3 AND outbox_lanes.lane = j.value->>4 \
       AND outbox_lanes.lease_owner = j.value->>5 \
     RETURNING destination, lane";

impl SqliteStore {
    /// Sets `set` (which may use `?5`, the time now) on the dead letters matching `filter`, and
    /// unblocks their lanes, due now: what retry and discard share. Returns how many.
    async fn dlq_act(
        &self,
        set: &str,
        filter: &DlqFilter,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let now = ts(now)?;
        let mut writer = self.writer().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let result = async {
            let sql =
                format!("UPDATE outbox SET {set} WHERE {DLQ_WHERE} RETURNING destination, lane");
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(filter.id)
                .bind(filter.destination.as_deref())
                .bind(filter.dead_before.map(ts).transpose()?)
                .bind(filter.hospital_id.as_deref());
            // SQLite counts parameters up to the highest one the statement names.
            if set.contains("?5") {
                query = query.bind(&now);
            }
            let lanes: Vec<(String, String)> = query.fetch_all(&mut *tx).await?;
            let count = lanes.len() as u64;
            let unique: BTreeSet<(String, String)> = lanes.into_iter().collect();
            let list = serde_json::to_string(&unique.into_iter().collect::<Vec<_>>())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "UPDATE outbox_lanes SET ready_at = ?1, blocked = 0 FROM json_each(?2) AS j \
                 WHERE outbox_lanes.destination = j.value->>0 AND outbox_lanes.lane = j.value->>1",
            )
            .bind(&now)
            .bind(list)
            .execute(&mut *tx)
            .await?;
            Ok::<_, StoreError>(count)
        }
        .await;
        match result {
            Ok(count) => {
                tx.commit().await?;
                Ok(count)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// The attempts of one [`OutboxStore::record_attempts`] call, inside its transaction. Deliveries
/// (nearly all of them) go as two statements for the whole list; failures one by one.
async fn record(
    tx: &mut Transaction<'_, Sqlite>,
    attempts: &[Attempt],
) -> Result<Vec<bool>, StoreError> {
    let mut held = vec![false; attempts.len()];
    let mut delivered = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        let at = ts(a.at)?;
        match &a.result {
            AttemptResult::Delivered => delivered.push(delivered_row(a)?),
            AttemptResult::Retry { .. } | AttemptResult::Dead => {
                let (status, finished, ready_at) = match &a.result {
                    AttemptResult::Retry { retry_at } => ("pending", None, ts(*retry_at)?),
                    _ => ("dead", Some(at.clone()), at.clone()),
                };
                sqlx::query(
                    "UPDATE outbox SET status = ?1, attempts = attempts + 1, last_attempt_at = ?2, \
                     finished_at = ?3, last_error = ?4, last_response = ?5 \
                     WHERE id = ?6 AND status = 'pending'",
                )
                .bind(status)
                .bind(&at)
                .bind(finished)
                .bind(a.error.as_deref())
                .bind(a.response.as_deref())
                .bind(a.id)
                .execute(&mut **tx)
                .await?;
                let released = sqlx::query(
                    "UPDATE outbox_lanes SET lease_owner = NULL, lease_until = NULL, ready_at = ?1, \
                     blocked = ?5 WHERE destination = ?2 AND lane = ?3 AND lease_owner = ?4",
                )
                .bind(ready_at)
                .bind(&a.destination)
                .bind(&a.lane)
                .bind(&a.owner)
                .bind(i64::from(status == "dead"))
                .execute(&mut **tx)
                .await?;
                held[i] = released.rows_affected() == 1;
            }
        }
    }
    if !delivered.is_empty() {
        let list = serde_json::Value::Array(delivered).to_string();
        sqlx::query(MARK_DELIVERED)
            .bind(&list)
            .execute(&mut **tx)
            .await?;
        let renewed: Vec<(String, String)> = sqlx::query_as(RENEW_LANES)
            .bind(&list)
            .fetch_all(&mut **tx)
            .await?;
        let lanes_held: BTreeSet<(String, String)> = renewed.into_iter().collect();
        for (i, a) in attempts.iter().enumerate() {
            if matches!(a.result, AttemptResult::Delivered) {
                held[i] = lanes_held.contains(&(a.destination.clone(), a.lane.clone()));
            }
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConnectOptions, EventStore};

    async fn synchronous(store: &SqliteStore) -> i64 {
        let mut writer = store.writer().await.expect("writer");
        let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&mut *writer)
            .await
            .expect("pragma");
        level
    }

    /// Delivery state is written with `synchronous = NORMAL`, but the shared writer always goes
    /// back to FULL (2), after a failed statement too: ingest commits rely on it.
    #[tokio::test]
    async fn the_writer_is_back_to_full_after_relaxed_writes() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}/ferry.db", dir.path().display());
        let store = SqliteStore::connect(&url, &ConnectOptions::default())
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        assert_eq!(synchronous(&store).await, 2);
        let now = OffsetDateTime::now_utc();
        let lanes = store
            .claim_lanes("his", "me", 4, now, now)
            .await
            .expect("claim");
        assert!(lanes.is_empty());
        assert_eq!(synchronous(&store).await, 2);
        {
            let mut writer = store.writer().await.expect("writer");
            let failed = relaxed(&mut writer, "UPDATE no_such_table SET x = ?", true, |q| {
                q.bind(1)
            })
            .await;
            assert!(failed.is_err());
        }
        assert_eq!(synchronous(&store).await, 2);
        let mut writer = store.writer().await.expect("writer");
        // And no transaction was left open.
        sqlx::query("BEGIN IMMEDIATE; ROLLBACK")
            .execute(&mut *writer)
            .await
            .expect("no transaction left open");
    }
}
