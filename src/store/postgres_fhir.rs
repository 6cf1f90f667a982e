//! PostgreSQL side of the FHIR projections: loading (and locking) the resources a batch touches,
//! writing what the projector made of them inside the batch's transaction, and the reads behind the
//! FHIR API.
//!
//! Several instances may project at once. The resources a batch reads are locked (`FOR UPDATE`,
//! in key order so two batches cannot deadlock over them), so one resource is updated by one batch
//! at a time, each reading the other's result. A resource that does not exist yet cannot be locked:
//! if two batches create it at once, the second one's upsert finds a version it did not expect,
//! writes nothing, and the batch fails with [`StoreError::Contention`] to be retried.

use sqlx::{PgConnection, PgPool, Postgres, Row};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::fhir::{FhirReader, ProjectionConn, Sql, StoredResource, bind_all};
use super::rows;
use super::{Backend, StoreError};
use crate::projections::{self, Loaded, Output, ResourceKey};
use crate::store::RecordedEvent;

/// SQLSTATEs that mean "another transaction got in the way": deadlock detected, serialization
/// failure, and a unique violation on the read-model tables.
pub(super) fn is_contention(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("40P01" | "40001"))
            || (db.is_unique_violation()
                && db.constraint().is_some_and(|c| c.starts_with("fhir_"))))
}

const LOAD_KEYS: &str = "SELECT r.hospital_id, r.resource_type, r.id, r.version_id, r.state \
     FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k (h, t, i, n) \
     JOIN fhir_resources AS r ON r.hospital_id = k.h AND r.resource_type = k.t AND r.id = k.i \
     ORDER BY k.n FOR UPDATE OF r";

async fn load_keys(
    conn: &mut PgConnection,
    keys: &[ResourceKey],
) -> Result<Vec<Loaded>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(LOAD_KEYS)
        .bind(keys.iter().map(|k| k.tenant.clone()).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|k| k.resource_type.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(rows::loaded).collect()
}

async fn load_patient(
    conn: &mut PgConnection,
    tenant: &str,
    patient: &str,
) -> Result<Vec<Loaded>, StoreError> {
    let rows = sqlx::query(
        "SELECT hospital_id, resource_type, id, version_id, state FROM fhir_resources \
         WHERE hospital_id = $1 AND patient_id = $2 ORDER BY resource_type, id FOR UPDATE",
    )
    .bind(tenant)
    .bind(patient)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(rows::loaded).collect()
}

/// The whole read-model write of a batch, one statement (one round trip instead of four):
/// updates the resources the batch read (locked, so at the version read), inserts the ones it
/// created, replaces the search rows of both and appends the history rows. The sub-statements
/// see the same snapshot, so the DELETE of a resource's old search rows does not see the new
/// ones inserted beside it. A resource another instance changed meanwhile is not updated, one it
/// created meanwhile fails the insert with a unique violation: either way the batch fails as
/// contention (the check function of migration 0005) and is retried.
const WRITE_SQL: &str = "WITH x AS ( \
       SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::timestamptz[], \
         $6::text[], $7::text[], $8::text[], $9::int8[]) AS x (h, t, i, v, u, p, s, b, before) \
     ), updated AS ( \
       UPDATE fhir_resources AS r SET version_id = x.v, last_updated = x.u, patient_id = x.p, \
         state = x.s, body = x.b \
       FROM x WHERE x.before > 0 AND r.hospital_id = x.h AND r.resource_type = x.t \
         AND r.id = x.i AND r.version_id = x.before \
       RETURNING 1 \
     ), inserted AS ( \
       INSERT INTO fhir_resources (hospital_id, resource_type, id, version_id, last_updated, \
         patient_id, state, body) \
       SELECT h, t, i, v, u, p, s, b FROM x WHERE x.before = 0 \
       RETURNING 1 \
     ), cleared AS ( \
       DELETE FROM fhir_search AS s USING x \
       WHERE x.before > 0 AND s.hospital_id = x.h AND s.resource_type = x.t AND s.id = x.i \
     ), history AS ( \
       INSERT INTO fhir_history (hospital_id, resource_type, id, version_id, last_updated, body) \
       SELECT * FROM UNNEST($10::text[], $11::text[], $12::text[], $13::int8[], \
         $14::timestamptz[], $15::text[]) \
     ), search AS ( \
       INSERT INTO fhir_search (hospital_id, resource_type, id, param, system, value, low, high) \
       SELECT * FROM UNNEST($16::text[], $17::text[], $18::text[], $19::text[], $20::text[], \
         $21::text[], $22::text[], $23::text[]) \
     ) \
     SELECT ferry_check_resources_written($24, \
       (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted))";

async fn write(conn: &mut PgConnection, output: &Output) -> Result<(), StoreError> {
    if output.current.is_empty() {
        return Ok(());
    }
    let c = &output.current;
    let h = &output.history;
    // Each row's version before this batch: the number of history rows it wrote for it.
    let before: Vec<i64> = c
        .iter()
        .map(|row| row.version - h.iter().filter(|x| x.key == row.key).count() as i64)
        .collect();
    let entries: Vec<(&ResourceKey, &projections::search::Entry)> = c
        .iter()
        .flat_map(|row| row.search.iter().map(move |e| (&row.key, e)))
        .collect();
    fn col<T, U>(rows: &[T], f: impl Fn(&T) -> U) -> Vec<U> {
        rows.iter().map(f).collect()
    }
    let tenant = |k: &ResourceKey| k.tenant.clone();
    let kind = |k: &ResourceKey| k.resource_type.as_str().to_owned();
    let id = |k: &ResourceKey| k.id.clone();
    sqlx::query(WRITE_SQL)
        .bind(col(c, |r| tenant(&r.key)))
        .bind(col(c, |r| kind(&r.key)))
        .bind(col(c, |r| id(&r.key)))
        .bind(col(c, |r| r.version))
        .bind(col(c, |r| r.last_updated))
        .bind(col(c, |r| r.patient.clone()))
        .bind(col(c, |r| r.state.clone()))
        .bind(col(c, |r| r.body.clone()))
        .bind(before)
        .bind(col(h, |r| tenant(&r.key)))
        .bind(col(h, |r| kind(&r.key)))
        .bind(col(h, |r| id(&r.key)))
        .bind(col(h, |r| r.version))
        .bind(col(h, |r| r.last_updated))
        .bind(col(h, |r| r.body.clone()))
        .bind(col(&entries, |(k, _)| tenant(k)))
        .bind(col(&entries, |(k, _)| kind(k)))
        .bind(col(&entries, |(k, _)| id(k)))
        .bind(col(&entries, |(_, e)| e.param.to_owned()))
        .bind(col(&entries, |(_, e)| e.system.clone()))
        .bind(col(&entries, |(_, e)| e.value.clone()))
        .bind(col(&entries, |(_, e)| e.low.clone()))
        .bind(col(&entries, |(_, e)| e.high.clone()))
        .bind(c.len() as i64)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Empties the read models (before a rebuild).
async fn clear(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("TRUNCATE fhir_search, fhir_history, fhir_resources")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl FhirReader for PgPool {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn resources(&self, sql: Sql) -> BoxFuture<'_, Result<Vec<StoredResource>, StoreError>> {
        async move {
            let rows = bind_all::<Postgres>(sql).fetch_all(self).await?;
            rows.iter().map(rows::stored_resource).collect()
        }
        .boxed()
    }

    fn count(&self, sql: Sql) -> BoxFuture<'_, Result<i64, StoreError>> {
        async move {
            let row = bind_all::<Postgres>(sql).fetch_one(self).await?;
            row.try_get(0)
                .map_err(|e| StoreError::Corrupt(format!("count(*): {e}")))
        }
        .boxed()
    }
}

impl ProjectionConn for PgConnection {
    fn load_keys<'a>(
        &'a mut self,
        keys: &'a [ResourceKey],
    ) -> BoxFuture<'a, Result<Vec<Loaded>, StoreError>> {
        load_keys(self, keys).boxed()
    }

    fn load_patient<'a>(
        &'a mut self,
        tenant: &'a str,
        patient: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Loaded>, StoreError>> {
        load_patient(self, tenant, patient).boxed()
    }

    fn write<'a>(&'a mut self, output: &'a Output) -> BoxFuture<'a, Result<(), StoreError>> {
        write(self, output).boxed()
    }

    fn clear(&mut self) -> BoxFuture<'_, Result<(), StoreError>> {
        clear(self).boxed()
    }

    fn events_after(
        &mut self,
        position: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>> {
        super::postgres::events_after(self, position, limit).boxed()
    }
}
