//! SQLite side of the FHIR projections: loading the resources a batch touches and writing what the
//! projector made of them, inside the batch's transaction; and the reads behind the FHIR API.

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Sqlite};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::fhir::{FhirReader, ProjectionConn, Sql, StoredResource, bind_all};
use super::rows;
use super::sqlite::{format_timestamp, get, multi_row_insert, rows_per_statement};
use super::{Backend, StoreError};
use crate::projections::{self, Loaded, Output, ResourceKey};
use crate::store::RecordedEvent;

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

async fn load_keys(
    conn: &mut SqliteConnection,
    keys: &[ResourceKey],
) -> Result<Vec<Loaded>, StoreError> {
    let mut found = Vec::new();
    for chunk in keys.chunks(rows_per_statement(3)) {
        let mut sql = String::from(
            "SELECT r.hospital_id, r.resource_type, r.id, r.version_id, r.state FROM (VALUES ",
        );
        for n in 0..chunk.len() {
            sql.push_str(if n == 0 { "(?,?,?)" } else { ",(?,?,?)" });
        }
        sql.push_str(
            ") AS k CROSS JOIN fhir_resources AS r ON r.hospital_id = k.column1 \
             AND r.resource_type = k.column2 AND r.id = k.column3",
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for key in chunk {
            query = bind_key(query, key);
        }
        for row in query.fetch_all(&mut *conn).await? {
            found.push(rows::loaded(&row)?);
        }
    }
    Ok(found)
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

/// Binds a resource's key columns (`hospital_id, resource_type, id`).
fn bind_key<'q>(query: SqliteQuery<'q>, key: &'q ResourceKey) -> SqliteQuery<'q> {
    query
        .bind(key.tenant.as_str())
        .bind(key.resource_type.as_str())
        .bind(key.id.as_str())
}

const RESOURCE_COLUMNS: &str =
    "hospital_id, resource_type, id, version_id, last_updated, patient_id, state, body";
const HISTORY_COLUMNS: &str = "hospital_id, resource_type, id, version_id, last_updated, body";
const SEARCH_COLUMNS: &str = "hospital_id, resource_type, id, param, system, value, low, high";

async fn write(conn: &mut SqliteConnection, output: &Output) -> Result<(), StoreError> {
    for chunk in output.current.chunks(rows_per_statement(8)) {
        let mut sql = multi_row_insert("fhir_resources", RESOURCE_COLUMNS, 8, chunk.len());
        sql.push_str(
            " ON CONFLICT (hospital_id, resource_type, id) DO UPDATE SET \
             version_id = excluded.version_id, last_updated = excluded.last_updated, \
             patient_id = excluded.patient_id, state = excluded.state, body = excluded.body",
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            query = bind_key(query, &row.key)
                .bind(row.version)
                .bind(format_timestamp(
                    row.last_updated,
                    "fhir_resources.last_updated",
                )?)
                .bind(row.patient.as_deref())
                .bind(row.state.as_str())
                .bind(row.body.as_str());
        }
        query.execute(&mut *conn).await?;

        // The search rows of these resources are replaced as a whole.
        let mut sql = String::new();
        for _ in chunk {
            sql.push_str(
                "DELETE FROM fhir_search WHERE hospital_id = ? AND resource_type = ? AND id = ?;\n",
            );
        }
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            query = bind_key(query, &row.key);
        }
        query.execute(&mut *conn).await?;
    }
    for chunk in output.history.chunks(rows_per_statement(6)) {
        let sql = multi_row_insert("fhir_history", HISTORY_COLUMNS, 6, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            query = bind_key(query, &row.key)
                .bind(row.version)
                .bind(format_timestamp(
                    row.last_updated,
                    "fhir_history.last_updated",
                )?)
                .bind(row.body.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    let entries: Vec<(&ResourceKey, &projections::search::Entry)> = output
        .current
        .iter()
        .flat_map(|row| row.search.iter().map(move |e| (&row.key, e)))
        .collect();
    for chunk in entries.chunks(rows_per_statement(8)) {
        let sql = multi_row_insert("fhir_search", SEARCH_COLUMNS, 8, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (key, e) in chunk {
            query = bind_key(query, key)
                .bind(e.param)
                .bind(e.system.as_str())
                .bind(e.value.as_str())
                .bind(e.low.as_deref())
                .bind(e.high.as_deref());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
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
