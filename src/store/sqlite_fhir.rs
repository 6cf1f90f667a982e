//! SQLite side of the FHIR projections: loading the resources a batch touches and writing what the
//! projector made of them, inside the batch's transaction; and the reads behind the FHIR API.

use sqlx::sqlite::SqliteConnection;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::fhir::{FhirReader, ProjectionConn, Sql, StoredResource, bind_all};
use super::rows;
use super::sqlite::{format_timestamp, get};
use super::{Backend, StoreError};
use crate::projections::{Loaded, Output, ResourceKey};
use crate::store::RecordedEvent;

/// The current rows of the resources a batch touches, in one fixed statement (keys as a JSON array,
/// see [`WRITE_SQL`] for why).
async fn load_keys(
    conn: &mut SqliteConnection,
    keys: &[ResourceKey],
) -> Result<Vec<Loaded>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let json: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| serde_json::json!([k.tenant, k.resource_type.as_str(), k.id]))
        .collect();
    let rows = sqlx::query(
        "SELECT r.hospital_id, r.resource_type, r.id, r.version_id, r.state \
         FROM json_each(?) AS k JOIN fhir_resources AS r \
         ON r.hospital_id = k.value->>0 AND r.resource_type = k.value->>1 AND r.id = k.value->>2",
    )
    .bind(serde_json::Value::Array(json).to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(rows::loaded).collect()
}

async fn load_patient(
    conn: &mut SqliteConnection,
    tenant: &str,
    patient: &str,
) -> Result<Vec<Loaded>, StoreError> {
    let rows = sqlx::query(
        "SELECT hospital_id, resource_type, id, version_id, state FROM fhir_resources \
         WHERE hospital_id = ? AND patient_id = ?",
    )
    .bind(tenant)
    .bind(patient)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(rows::loaded).collect()
}

/// The projection write of a batch as one fixed multi-statement query whose rows travel as JSON
/// arrays (`json_each`): one trip to sqlx's SQLite worker thread, and a statement text that never
/// changes, so it is prepared once per connection. Row-count-dependent `VALUES (…),(…)` texts were
/// prepared again for nearly every batch (the number of search rows varies with every message),
/// and each statement was a trip of its own; on a busy two-core machine both cost more than the
/// inserts. The search rows of a changed resource are replaced as a whole; a new resource
/// (version 1) has none to delete.
pub(super) const WRITE_SQL: &str = "\
INSERT INTO fhir_resources (hospital_id, resource_type, id, version_id, last_updated, patient_id, state, body) \
SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5, j.value->>6, j.value->>7 \
FROM json_each(?) AS j WHERE true \
ON CONFLICT (hospital_id, resource_type, id) DO UPDATE SET \
version_id = excluded.version_id, last_updated = excluded.last_updated, \
patient_id = excluded.patient_id, state = excluded.state, body = excluded.body;
DELETE FROM fhir_search WHERE rowid IN (SELECT s.rowid FROM json_each(?) AS j \
JOIN fhir_search AS s ON s.hospital_id = j.value->>0 AND s.resource_type = j.value->>1 AND s.id = j.value->>2);
INSERT INTO fhir_history (hospital_id, resource_type, id, version_id, last_updated, body) \
SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5 FROM json_each(?) AS j;
INSERT INTO fhir_search (hospital_id, resource_type, id, param, system, value, low, high) \
SELECT j.value->>0, j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5, j.value->>6, j.value->>7 \
FROM json_each(?) AS j;";

async fn write(conn: &mut SqliteConnection, output: &Output) -> Result<(), StoreError> {
    let [resources, changed, history, search] = write_params(output)?;
    sqlx::query(WRITE_SQL)
        .bind(resources)
        .bind(changed)
        .bind(history)
        .bind(search)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The four JSON arrays [`WRITE_SQL`] binds, in order: current rows, keys of changed resources
/// (whose search rows are replaced), history rows and search rows.
pub(super) fn write_params(output: &Output) -> Result<[String; 4], StoreError> {
    use serde_json::json;
    let key = |k: &ResourceKey| json!([k.tenant, k.resource_type.as_str(), k.id]);
    let mut resources = Vec::with_capacity(output.current.len());
    let mut changed = Vec::new();
    let mut search = Vec::new();
    for row in &output.current {
        resources.push(json!([
            row.key.tenant,
            row.key.resource_type.as_str(),
            row.key.id,
            row.version,
            format_timestamp(row.last_updated, "fhir_resources.last_updated")?,
            row.patient,
            row.state,
            row.body,
        ]));
        if row.version > 1 {
            changed.push(key(&row.key));
        }
        for e in &row.search {
            search.push(json!([
                row.key.tenant,
                row.key.resource_type.as_str(),
                row.key.id,
                e.param,
                e.system,
                e.value,
                e.low,
                e.high,
            ]));
        }
    }
    let mut history = Vec::with_capacity(output.history.len());
    for row in &output.history {
        history.push(json!([
            row.key.tenant,
            row.key.resource_type.as_str(),
            row.key.id,
            row.version,
            format_timestamp(row.last_updated, "fhir_history.last_updated")?,
            row.body,
        ]));
    }
    let text = |rows: Vec<serde_json::Value>| serde_json::Value::Array(rows).to_string();
    Ok([text(resources), text(changed), text(history), text(search)])
}

/// Empties the read models (before a rebuild).
async fn clear(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM fhir_search; DELETE FROM fhir_history; DELETE FROM fhir_resources;")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl FhirReader for sqlx::SqlitePool {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn resources(&self, sql: Sql) -> BoxFuture<'_, Result<Vec<StoredResource>, StoreError>> {
        async move {
            let rows = bind_all::<sqlx::Sqlite>(sql).fetch_all(self).await?;
            rows.iter().map(rows::stored_resource).collect()
        }
        .boxed()
    }

    fn count(&self, sql: Sql) -> BoxFuture<'_, Result<i64, StoreError>> {
        async move {
            let row = bind_all::<sqlx::Sqlite>(sql).fetch_one(self).await?;
            get(&row, 0, "count(*)")
        }
        .boxed()
    }
}

impl ProjectionConn for SqliteConnection {
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
        super::sqlite::events_after(self, position, limit).boxed()
    }
}
