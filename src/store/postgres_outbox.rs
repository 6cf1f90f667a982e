//! The outbox on PostgreSQL ([`OutboxStore`]), shared by several Ferry instances.
//!
//! A lane is taken with `FOR UPDATE SKIP LOCKED` and a lease (owner and expiry) in `outbox_lanes`:
//! instances polling at the same moment get different lanes, and a lane whose owner died is taken
//! over once its lease ran out. Lease times are the database's clock, so instances whose clocks
//! differ cannot steal each other's lanes early. Lists travel as arrays (`UNNEST`), so statement
//! texts are fixed and stay prepared.
//!
//! Delivery state (claims, leases, "delivered" marks) changes once per message, so it is written
//! on connections with `synchronous_commit = off` (the store's `relaxed` pool): the commit does
//! not wait for the WAL flush. A Ferry crash loses nothing (the server has the commit); a crash
//! of the PostgreSQL server itself may undo the last fraction of a second of such commits, so a
//! message delivered just then is sent again: at least once, as documented. Outbox rows are
//! written by the ingest commit, which is fully synchronous.

use std::collections::BTreeSet;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::Row;
use time::OffsetDateTime;

use super::StoreError;
use super::outbox::{
    Attempt, AttemptResult, DeadLetter, DeliveredRow, DestinationStatus, DlqFilter, LaneBatch,
    OutboxStore, ReplayDelivery,
};
use super::postgres::PostgresStore;
use super::rows;

/// The `WHERE` of a DLQ filter: `$1` id, `$2` destination, `$3` dead before, `$4` tenant.
const DLQ_WHERE: &str = "status = 'dead' AND ($1::int8 IS NULL OR id = $1) \
     AND ($2::text IS NULL OR destination = $2) AND ($3::timestamptz IS NULL OR finished_at < $3) \
     AND ($4::text IS NULL OR hospital_id = $4)";

impl OutboxStore for PostgresStore {
    fn claim_lanes<'a>(
        &'a self,
        destination: &'a str,
        owner: &'a str,
        limit: i64,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let lease = (lease_until - now).as_seconds_f64().max(1.0);
            let rows = sqlx::query(
                "UPDATE outbox_lanes AS u \
                 SET lease_owner = $1, lease_until = now() + make_interval(secs => $2) \
                 FROM ( \
                   SELECT l.destination, l.lane FROM outbox_lanes AS l \
                   WHERE l.destination = $3 AND l.enqueued > l.seen AND NOT l.blocked \
                     AND l.ready_at <= now() \
                     AND (l.lease_owner IS NULL OR l.lease_until < now()) \
                   ORDER BY l.ready_at LIMIT $4 \
                   FOR UPDATE OF l SKIP LOCKED) AS c \
                 WHERE u.destination = c.destination AND u.lane = c.lane \
                 RETURNING u.lane",
            )
            .bind(owner)
            .bind(lease)
            .bind(destination)
            .bind(limit)
            .fetch_all(&self.relaxed)
            .await?;
            rows.iter()
                .map(|r| {
                    r.try_get::<String, _>(0)
                        .map_err(|e| StoreError::Corrupt(format!("outbox_lanes.lane: {e}")))
                })
                .collect()
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
            // The lane's count and its rows in one statement (one snapshot): see the SQLite
            // store.
            let rows = sqlx::query(
                "SELECT l.enqueued AS lane_enqueued, o.id AS o_id, o.destination AS o_destination, \
                 o.lane AS o_lane, o.subscription AS o_subscription, o.mapping AS o_mapping, \
                 o.attempts AS o_attempts, o.created_at AS o_created_at, \
                 e.global_position, e.hospital_id, e.stream_id, e.stream_version, e.event_type, \
                 e.schema_version, e.payload::text AS payload, e.metadata::text AS metadata, e.recorded_at \
                 FROM outbox_lanes AS l \
                 LEFT JOIN (SELECT * FROM outbox WHERE destination = $1 AND lane = $2 \
                            AND status = 'pending' ORDER BY id LIMIT $3) AS o ON true \
                 LEFT JOIN events AS e ON e.hospital_id = o.hospital_id \
                   AND e.stream_id = o.stream_id AND e.stream_version = o.stream_version \
                 WHERE l.destination = $1 AND l.lane = $2 \
                 ORDER BY o.id",
            )
            .bind(destination)
            .bind(lane)
            .bind(limit)
            .fetch_all(&self.pool)
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
            let mut held = vec![false; attempts.len()];
            let delivered: Vec<&Attempt> = attempts
                .iter()
                .filter(|a| matches!(a.result, AttemptResult::Delivered))
                .collect();
            let mut rows = Vec::new();
            if delivered.len() == attempts.len() {
                // Deliveries only (nearly always): one statement, its own transaction.
                rows = delivered_query(&delivered).fetch_all(&self.relaxed).await?;
            } else {
                let mut tx = self.pool.begin().await?;
                if !delivered.is_empty() {
                    rows = delivered_query(&delivered).fetch_all(&mut *tx).await?;
                }
                for (i, a) in attempts.iter().enumerate() {
                    let (status, finished, ready_at) = match &a.result {
                        AttemptResult::Delivered => continue,
                        AttemptResult::Retry { retry_at } => ("pending", None, *retry_at),
                        AttemptResult::Dead => ("dead", Some(a.at), a.at),
                    };
                    sqlx::query(
                        "UPDATE outbox SET status = $1, attempts = attempts + 1, \
                         last_attempt_at = $2, finished_at = $3, last_error = $4, \
                         last_response = $5 WHERE id = $6 AND status = 'pending'",
                    )
                    .bind(status)
                    .bind(a.at)
                    .bind(finished)
                    .bind(a.error.as_deref())
                    .bind(a.response.as_deref())
                    .bind(a.id)
                    .execute(&mut *tx)
                    .await?;
                    let released = sqlx::query(
                        "UPDATE outbox_lanes SET lease_owner = NULL, lease_until = NULL, \
                         ready_at = $1, blocked = $5 \
                         WHERE destination = $2 AND lane = $3 AND lease_owner = $4",
                    )
                    .bind(ready_at)
                    .bind(&a.destination)
                    .bind(&a.lane)
                    .bind(&a.owner)
                    .bind(status == "dead")
                    .execute(&mut *tx)
                    .await?;
                    held[i] = released.rows_affected() == 1;
                }
                tx.commit().await?;
            }
            let mut lanes_held = BTreeSet::new();
            for row in rows {
                let d: String = row
                    .try_get(0)
                    .map_err(|e| StoreError::Corrupt(format!("outbox_lanes: {e}")))?;
                let l: String = row
                    .try_get(1)
                    .map_err(|e| StoreError::Corrupt(format!("outbox_lanes: {e}")))?;
                lanes_held.insert((d, l));
            }
            for (i, a) in attempts.iter().enumerate() {
                if matches!(a.result, AttemptResult::Delivered) {
                    held[i] = lanes_held.contains(&(a.destination.clone(), a.lane.clone()));
                }
            }
            Ok(held)
        }
        .boxed()
    }

    fn renew_leases<'a>(
        &'a self,
        owner: &'a str,
        until: OffsetDateTime,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let lease = (until - OffsetDateTime::now_utc())
                .as_seconds_f64()
                .max(1.0);
            let done = sqlx::query(
                "UPDATE outbox_lanes SET lease_until = now() + make_interval(secs => $1) \
                 WHERE lease_owner = $2",
            )
            .bind(lease)
            .bind(owner)
            .execute(&self.relaxed)
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
            sqlx::query(
                "UPDATE outbox_lanes SET lease_owner = NULL, lease_until = NULL, ready_at = $1, \
                 seen = greatest(seen, coalesce($5, seen)) \
                 WHERE destination = $2 AND lane = $3 AND lease_owner = $4",
            )
            .bind(ready_at)
            .bind(destination)
            .bind(lane)
            .bind(owner)
            .bind(drained)
            .execute(&self.relaxed)
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
            let col = |f: &dyn Fn(&ReplayDelivery) -> String| -> Vec<String> {
                deliveries.iter().map(f).collect()
            };
            let done = sqlx::query(
                "WITH queued AS ( \
                   INSERT INTO outbox (hospital_id, destination, lane, subscription, mapping, \
                     stream_id, stream_version, event_type, created_at) \
                   SELECT h, d, l, s, m, st, v, t, $9 FROM UNNEST($1::text[], $2::text[], \
                     $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::text[]) \
                     WITH ORDINALITY AS q (h, d, l, s, m, st, v, t, n) ORDER BY n \
                   RETURNING 1 \
                 ), lanes AS ( \
                   INSERT INTO outbox_lanes (destination, lane, hospital_id, ready_at, enqueued) \
                   SELECT d, l, min(h), $9, count(*) \
                   FROM UNNEST($1::text[], $2::text[], $3::text[]) AS q (h, d, l) GROUP BY d, l \
                   ON CONFLICT (destination, lane) DO UPDATE \
                     SET enqueued = outbox_lanes.enqueued + excluded.enqueued \
                 ) SELECT count(*) FROM queued",
            )
            .bind(col(&|r| r.hospital_id.clone()))
            .bind(col(&|r| r.delivery.destination.clone()))
            .bind(col(&|r| r.delivery.lane.clone()))
            .bind(col(&|r| r.delivery.subscription.clone()))
            .bind(col(&|r| r.delivery.mapping.clone()))
            .bind(col(&|r| r.stream_id.clone()))
            .bind(
                deliveries
                    .iter()
                    .map(|r| r.stream_version)
                    .collect::<Vec<_>>(),
            )
            .bind(col(&|r| r.event_type.clone()))
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
            let count: i64 = done
                .try_get(0)
                .map_err(|e| StoreError::Corrupt(format!("outbox: {e}")))?;
            Ok(u64::try_from(count).unwrap_or(0))
        }
        .boxed()
    }

    fn outbox_status(&self) -> BoxFuture<'_, Result<Vec<DestinationStatus>, StoreError>> {
        async move {
            let totals = sqlx::query(
                "SELECT destination, sum(p)::int8 AS pending, sum(d)::int8 AS dead, \
                 min(CASE WHEN p = 1 THEN created_at END) AS oldest_at FROM ( \
                   SELECT destination, created_at, 1 AS p, 0 AS d FROM outbox WHERE status = 'pending' \
                   UNION ALL \
                   SELECT destination, created_at, 0, 1 FROM outbox WHERE status = 'dead') AS x \
                 GROUP BY destination ORDER BY destination",
            )
            .fetch_all(&self.pool)
            .await?;
            let mut out = Vec::new();
            for row in &totals {
                let mut status = rows::destination_status(row)?;
                let lanes = sqlx::query(
                    "SELECT x.lane, sum(x.p)::int8 AS pending, sum(x.d)::int8 AS dead, \
                     min(x.created_at) AS oldest_at, min(l.lease_owner) AS lease_owner, \
                     min(l.ready_at) AS ready_at FROM ( \
                       SELECT lane, created_at, 1 AS p, 0 AS d FROM outbox \
                         WHERE status = 'pending' AND destination = $1 \
                       UNION ALL \
                       SELECT lane, created_at, 0, 1 FROM outbox \
                         WHERE status = 'dead' AND destination = $1) AS x \
                     LEFT JOIN outbox_lanes AS l ON l.destination = $1 AND l.lane = x.lane \
                     GROUP BY x.lane ORDER BY sum(x.p) + sum(x.d) DESC, x.lane LIMIT 20",
                )
                .bind(&status.destination)
                .fetch_all(&self.pool)
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
                 last_response FROM outbox WHERE {DLQ_WHERE} ORDER BY id LIMIT $5"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(filter.id)
                .bind(filter.destination.as_deref())
                .bind(filter.dead_before)
                .bind(filter.hospital_id.as_deref())
                .bind(filter.limit.unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
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
        self.dlq_act("status = 'discarded', finished_at = $5", filter, now)
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
                 WHERE destination = $1 AND status = 'delivered' AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(destination)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(rows::delivered_row).collect()
        }
        .boxed()
    }
}

impl PostgresStore {
    /// Sets `set` (which may use `$5`, the time now) on the dead letters matching `filter`, and
    /// unblocks their lanes, due now: what retry and discard share. Returns how many.
    async fn dlq_act(
        &self,
        set: &str,
        filter: &DlqFilter,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "WITH acted AS ( \
               UPDATE outbox SET {set} WHERE {DLQ_WHERE} RETURNING destination, lane \
             ), lanes AS ( \
               UPDATE outbox_lanes AS l SET ready_at = $5, blocked = false \
               FROM (SELECT DISTINCT destination, lane FROM acted) AS r \
               WHERE l.destination = r.destination AND l.lane = r.lane \
             ) SELECT count(*) FROM acted"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.id)
            .bind(filter.destination.as_deref())
            .bind(filter.dead_before)
            .bind(filter.hospital_id.as_deref())
            .bind(now)
            .fetch_one(&self.pool)
            .await?;
        let count: i64 = row
            .try_get(0)
            .map_err(|e| StoreError::Corrupt(format!("outbox: {e}")))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Marks deliveries done and renews their lanes' leases, returning the lanes still held.
fn delivered_query(delivered: &[&Attempt]) -> PgQuery<'static> {
    sqlx::query(
        "WITH done AS ( \
           UPDATE outbox AS o SET status = 'delivered', attempts = o.attempts + 1, \
             last_attempt_at = x.at, finished_at = x.at, last_error = NULL, last_response = x.resp \
           FROM UNNEST($1::int8[], $2::timestamptz[], $3::bytea[]) AS x (id, at, resp) \
           WHERE o.id = x.id AND o.status = 'pending' \
         ) \
         UPDATE outbox_lanes AS l SET \
           lease_until = CASE WHEN x.drained IS NULL THEN x.until END, \
           lease_owner = CASE WHEN x.drained IS NULL THEN l.lease_owner END, \
           seen = greatest(l.seen, coalesce(x.drained, l.seen)) \
         FROM (SELECT DISTINCT ON (d, ln) d, ln, ow, until, drained \
               FROM UNNEST($4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::int8[]) \
                 AS y (d, ln, ow, until, drained)) AS x \
         WHERE l.destination = x.d AND l.lane = x.ln AND l.lease_owner = x.ow \
         RETURNING l.destination, l.lane",
    )
    .bind(delivered.iter().map(|a| a.id).collect::<Vec<_>>())
    .bind(delivered.iter().map(|a| a.at).collect::<Vec<_>>())
    .bind(
        delivered
            .iter()
            .map(|a| a.response.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        delivered
            .iter()
            .map(|a| a.destination.clone())
            .collect::<Vec<_>>(),
    )
    .bind(delivered.iter().map(|a| a.lane.clone()).collect::<Vec<_>>())
    .bind(
        delivered
            .iter()
            .map(|a| a.owner.clone())
            .collect::<Vec<_>>(),
    )
    .bind(delivered.iter().map(|a| a.lease_until).collect::<Vec<_>>())
    .bind(delivered.iter().map(|a| a.release).collect::<Vec<_>>())
}
