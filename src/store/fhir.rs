//! The read side of the FHIR projections in the store contract: resources as stored, searches, and
//! the SQL both backends build searches with.
//!
//! A search is a list of filters ANDed together; each filter is a list of conditions ORed together
//! (FHIR: repeated parameters AND, comma-separated values OR). Every filter on an indexed parameter
//! becomes `r.id IN (SELECT id FROM fhir_search WHERE … param = ? AND (…))`, which the indexes on
//! `fhir_search` answer without touching the resources.

use std::collections::HashSet;

use futures::future::BoxFuture;
use time::OffsetDateTime;

use crate::projections::{self, EventView, Loaded, Output, Projector, ResourceKey, ResourceType};
use crate::store::{Backend, RecordedEvent, StoreError};

/// A resource version as stored: the FHIR JSON served, with its version and time.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub resource_type: ResourceType,
    pub id: String,
    pub version: i64,
    pub last_updated: OffsetDateTime,
    pub body: String,
}

/// FHIR search prefixes for dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// One condition on an indexed parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `[system]|[code]`: `system` None means any system; Some("") means no system.
    Token {
        system: Option<String>,
        value: Option<String>,
    },
    /// A normalised string the value starts with (FHIR's default string match).
    Prefix(String),
    /// A normalised string the value equals (`:exact`, compared after normalisation).
    Exact(String),
    /// A normalised string the value contains (`:contains`).
    Contains(String),
    /// A date range (index text) and how the resource's range must relate to it.
    Date {
        comparator: Comparator,
        low: String,
        high: String,
    },
}

/// One parameter's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `_id`: any of these ids.
    Id(Vec<String>),
    /// `_lastUpdated`: any of these ranges.
    LastUpdated(Vec<(Comparator, String, String)>),
    /// An indexed parameter (`identifier`, `family`, `patient`, `birthdate`, …): any condition.
    Index {
        param: &'static str,
        any: Vec<Condition>,
    },
}

/// A type-level search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    pub resource_type: ResourceType,
    pub filters: Vec<Filter>,
    /// Page size; 0 asks for the total only (`_summary=count`).
    pub count: usize,
    pub offset: usize,
}

/// One page of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub total: i64,
    pub resources: Vec<StoredResource>,
}

/// Which versions a `_history` interaction lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub resource_type: ResourceType,
    /// Instance history when set, type history otherwise.
    pub id: Option<String>,
    /// `_since`: only versions written at or after this instant (index text).
    pub since: Option<String>,
    pub count: usize,
    pub offset: usize,
}

/// A value bound into generated SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    Text(String),
    Int(i64),
}

/// SQL text with its binds, placeholders numbered for the backend (`?` or `$n`).
pub struct Sql {
    backend: Backend,
    pub text: String,
    pub binds: Vec<Bind>,
}

impl Sql {
    pub fn new(backend: Backend) -> Self {
        Self {
            backend,
            text: String::new(),
            binds: Vec::new(),
        }
    }

    pub fn push(&mut self, s: &str) -> &mut Self {
        self.text.push_str(s);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        match self.backend {
            Backend::Sqlite => self.text.push('?'),
            Backend::Postgres => {
                self.text.push('$');
                self.text.push_str(&self.binds.len().to_string());
            }
        }
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.bind(Bind::Text(value.to_owned()))
    }

    /// `LIMIT count OFFSET offset` of a page.
    ///
    /// SQLite gets them as literals: its planner (3.51, as bundled) reads a bound LIMIT or OFFSET
    /// while preparing (`sqlite3ExprIsInteger`, to cap the row estimate), which marks the
    /// statement as depending on that value; every execution with fresh binds then parsed and
    /// planned the whole statement again (`sqlite3Reprepare` inside `sqlite3_step`, the largest
    /// cost of a search by identifier in a profile). Literals keep the
    /// prepared statement valid; the usual page (`_count=20`, first page) is one cached statement,
    /// and other page sizes and offsets are others. PostgreSQL binds them as before.
    pub fn limit_offset(&mut self, count: usize, offset: usize) -> &mut Self {
        // As i64 on both backends, as the binds always were (an absurd `_offset` wraps the same).
        let (count, offset) = (count as i64, offset as i64);
        match self.backend {
            Backend::Sqlite => {
                use std::fmt::Write as _;
                // Writing into a String cannot fail.
                let _ = write!(self.text, " LIMIT {count} OFFSET {offset}");
            }
            Backend::Postgres => {
                self.push(" LIMIT ")
                    .bind(Bind::Int(count))
                    .push(" OFFSET ")
                    .bind(Bind::Int(offset));
            }
        }
        self
    }

    /// A placeholder for an instant in index text, typed for the backend's `last_updated` column.
    fn instant(&mut self, value: &str) -> &mut Self {
        self.text(value);
        if self.backend == Backend::Postgres {
            self.text.push_str("::timestamptz");
        }
        self
    }
}

/// The largest character: `prefix || MAX` bounds every string that starts with `prefix`.
const MAX_CHAR: char = '\u{10FFFF}';

/// `WHERE …` of a search over `fhir_resources AS r` (without the keyword).
fn where_clause(sql: &mut Sql, tenant: &str, query: &SearchQuery) {
    sql.push("r.hospital_id = ")
        .text(tenant)
        .push(" AND r.resource_type = ")
        .text(query.resource_type.as_str());
    for filter in &query.filters {
        sql.push(" AND ");
        match filter {
            Filter::Id(ids) => {
                sql.push("r.id IN (");
                for (n, id) in ids.iter().enumerate() {
                    if n > 0 {
                        sql.push(", ");
                    }
                    sql.text(id);
                }
                sql.push(")");
            }
            Filter::LastUpdated(ranges) => {
                sql.push("(");
                for (n, (comparator, low, high)) in ranges.iter().enumerate() {
                    if n > 0 {
                        sql.push(" OR ");
                    }
                    instant_condition(sql, *comparator, low, high);
                }
                sql.push(")");
            }
            Filter::Index { param, any } => {
                sql.push("r.id IN (SELECT s.id FROM fhir_search AS s WHERE s.hospital_id = ")
                    .text(tenant)
                    .push(" AND s.resource_type = ")
                    .text(query.resource_type.as_str())
                    .push(" AND s.param = ")
                    .text(param)
                    .push(" AND (");
                for (n, condition) in any.iter().enumerate() {
                    if n > 0 {
                        sql.push(" OR ");
                    }
                    index_condition(sql, condition);
                }
                sql.push("))");
            }
        }
    }
}

fn index_condition(sql: &mut Sql, condition: &Condition) {
    match condition {
        Condition::Token { system, value } => {
            sql.push("(1 = 1");
            if let Some(system) = system {
                sql.push(" AND s.system = ").text(system);
            }
            if let Some(value) = value {
                sql.push(" AND s.value = ").text(value);
            }
            sql.push(")");
        }
        Condition::Prefix(prefix) => {
            let mut upper = prefix.clone();
            upper.push(MAX_CHAR);
            sql.push("(s.value >= ")
                .text(prefix)
                .push(" AND s.value < ")
                .text(&upper)
                .push(")");
        }
        Condition::Exact(value) => {
            sql.push("s.value = ").text(value);
        }
        Condition::Contains(part) => {
            let escaped = part
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            sql.push("s.value LIKE ")
                .text(&format!("%{escaped}%"))
                .push(" ESCAPE '\\'");
        }
        Condition::Date {
            comparator,
            low,
            high,
        } => {
            sql.push("(");
            range_condition(sql, "s.low", "s.high", *comparator, low, high, false);
            sql.push(")");
        }
    }
}

fn instant_condition(sql: &mut Sql, comparator: Comparator, low: &str, high: &str) {
    sql.push("(");
    range_condition(
        sql,
        "r.last_updated",
        "r.last_updated",
        comparator,
        low,
        high,
        true,
    );
    sql.push(")");
}

/// How a resource's range [lo, hi] relates to the searched range [low, high] (FHIR search's date
/// prefixes, with `ap` read as "overlaps").
fn range_condition(
    sql: &mut Sql,
    lo: &str,
    hi: &str,
    comparator: Comparator,
    low: &str,
    high: &str,
    instant: bool,
) {
    let value = |sql: &mut Sql, v: &str| {
        if instant {
            sql.instant(v);
        } else {
            sql.text(v);
        }
    };
    match comparator {
        Comparator::Eq | Comparator::Ne => {
            if comparator == Comparator::Ne {
                sql.push("NOT ");
            }
            sql.push("(").push(lo).push(" >= ");
            value(sql, low);
            sql.push(" AND ").push(hi).push(" <= ");
            value(sql, high);
            sql.push(")");
        }
        Comparator::Gt => {
            sql.push(hi).push(" > ");
            value(sql, high);
        }
        Comparator::Lt => {
            sql.push(lo).push(" < ");
            value(sql, low);
        }
        Comparator::Ge => {
            sql.push(hi).push(" >= ");
            value(sql, low);
        }
        Comparator::Le => {
            sql.push(lo).push(" <= ");
            value(sql, high);
        }
        Comparator::Sa => {
            sql.push(lo).push(" > ");
            value(sql, high);
        }
        Comparator::Eb => {
            sql.push(hi).push(" < ");
            value(sql, low);
        }
        Comparator::Ap => {
            sql.push(lo).push(" <= ");
            value(sql, high);
            sql.push(" AND ").push(hi).push(" >= ");
            value(sql, low);
        }
    }
}

/// `SELECT count(*) …` of a search.
fn count_sql(backend: Backend, tenant: &str, query: &SearchQuery) -> Sql {
    let mut sql = Sql::new(backend);
    sql.push("SELECT count(*) FROM fhir_resources AS r WHERE ");
    where_clause(&mut sql, tenant, query);
    sql
}

/// `SELECT resource_type, id, version_id, last_updated, body …` of one page of a search, in id
/// order (stable across pages).
fn page_sql(backend: Backend, tenant: &str, query: &SearchQuery) -> Sql {
    let mut sql = Sql::new(backend);
    sql.push(
        "SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.body \
         FROM fhir_resources AS r WHERE ",
    );
    where_clause(&mut sql, tenant, query);
    sql.push(" ORDER BY r.id")
        .limit_offset(query.count, query.offset);
    sql
}

/// `WHERE …` of a history query over `fhir_history AS h`.
fn history_where(sql: &mut Sql, tenant: &str, query: &HistoryQuery) {
    sql.push("h.hospital_id = ")
        .text(tenant)
        .push(" AND h.resource_type = ")
        .text(query.resource_type.as_str());
    if let Some(id) = &query.id {
        sql.push(" AND h.id = ").text(id);
    }
    if let Some(since) = &query.since {
        sql.push(" AND h.last_updated >= ").instant(since);
    }
}

fn history_count_sql(backend: Backend, tenant: &str, query: &HistoryQuery) -> Sql {
    let mut sql = Sql::new(backend);
    sql.push("SELECT count(*) FROM fhir_history AS h WHERE ");
    history_where(&mut sql, tenant, query);
    sql
}

/// Newest first, as FHIR's `_history` requires.
fn history_page_sql(backend: Backend, tenant: &str, query: &HistoryQuery) -> Sql {
    let mut sql = Sql::new(backend);
    sql.push(
        "SELECT h.resource_type, h.id, h.version_id, h.last_updated, h.body \
         FROM fhir_history AS h WHERE ",
    );
    history_where(&mut sql, tenant, query);
    sql.push(" ORDER BY h.last_updated DESC, h.id, h.version_id DESC")
        .limit_offset(query.count, query.offset);
    sql
}

/// `SELECT … FROM fhir_resources` (current) or `fhir_history` (one version) of one resource.
fn read_sql(
    backend: Backend,
    tenant: &str,
    resource_type: ResourceType,
    id: &str,
    version: Option<i64>,
) -> Sql {
    let mut sql = Sql::new(backend);
    sql.push("SELECT resource_type, id, version_id, last_updated, body FROM ")
        .push(if version.is_some() {
            "fhir_history"
        } else {
            "fhir_resources"
        })
        .push(" WHERE hospital_id = ")
        .text(tenant)
        .push(" AND resource_type = ")
        .text(resource_type.as_str())
        .push(" AND id = ")
        .text(id);
    if let Some(v) = version {
        sql.push(" AND version_id = ").bind(Bind::Int(v));
    }
    sql
}

/// The query of generated SQL with its values bound, for either backend.
pub(super) fn bind_all<DB: sqlx::Database>(
    sql: Sql,
) -> sqlx::query::Query<'static, DB, <DB as sqlx::Database>::Arguments>
where
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.text));
    for b in sql.binds {
        query = match b {
            Bind::Text(t) => query.bind(t),
            Bind::Int(i) => query.bind(i),
        };
    }
    query
}

/// How a backend runs the generated SQL of the FHIR reads; the reads themselves are written once,
/// below.
pub(super) trait FhirReader: Sync {
    fn backend(&self) -> Backend;
    /// Rows of `resource_type, id, version_id, last_updated, body`.
    fn resources(&self, sql: Sql) -> BoxFuture<'_, Result<Vec<StoredResource>, StoreError>>;
    /// The single number of a `SELECT count(*)`.
    fn count(&self, sql: Sql) -> BoxFuture<'_, Result<i64, StoreError>>;
}

pub(super) async fn read(
    reader: &impl FhirReader,
    tenant: &str,
    resource_type: ResourceType,
    id: &str,
    version: Option<i64>,
) -> Result<Option<StoredResource>, StoreError> {
    let sql = read_sql(reader.backend(), tenant, resource_type, id, version);
    Ok(reader.resources(sql).await?.into_iter().next())
}

pub(super) async fn search(
    reader: &impl FhirReader,
    tenant: &str,
    query: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    let backend = reader.backend();
    if query.count == 0 {
        let total = reader.count(count_sql(backend, tenant, query)).await?;
        return Ok(SearchPage {
            total,
            resources: Vec::new(),
        });
    }
    let resources = reader.resources(page_sql(backend, tenant, query)).await?;
    // A first page that is not full holds every match: its length is the total, and the count
    // query (as costly as the search itself) is skipped. Most searches by identifier end here.
    let total = if query.offset == 0 && resources.len() < query.count {
        resources.len() as i64
    } else {
        reader.count(count_sql(backend, tenant, query)).await?
    };
    Ok(SearchPage { total, resources })
}

pub(super) async fn history(
    reader: &impl FhirReader,
    tenant: &str,
    query: &HistoryQuery,
) -> Result<SearchPage, StoreError> {
    let backend = reader.backend();
    let total = reader
        .count(history_count_sql(backend, tenant, query))
        .await?;
    let resources = reader
        .resources(history_page_sql(backend, tenant, query))
        .await?;
    Ok(SearchPage { total, resources })
}

/// What a backend does for the projections inside one of its transactions; the folding itself
/// ([`project`], [`rebuild`]) is written once, here.
pub(super) trait ProjectionConn: Send {
    /// The current rows of these resources (PostgreSQL also locks them, in the order given).
    fn load_keys<'a>(
        &'a mut self,
        keys: &'a [ResourceKey],
    ) -> BoxFuture<'a, Result<Vec<Loaded>, StoreError>>;
    /// Every resource belonging to a Patient (merges move them).
    fn load_patient<'a>(
        &'a mut self,
        tenant: &'a str,
        patient: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Loaded>, StoreError>>;
    /// Writes current rows, history rows and search rows.
    fn write<'a>(&'a mut self, output: &'a Output) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Empties the read models.
    fn clear(&mut self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Up to `limit` events after `position`, in store order.
    fn events_after(
        &mut self,
        position: i64,
        limit: i64,
    ) -> BoxFuture<'_, Result<Vec<RecordedEvent>, StoreError>>;
}

/// What a batch's projection must load before folding its events: the resources the events and
/// preconditions name (sorted, so two PostgreSQL transactions lock shared resources in the same
/// order and cannot deadlock over them), and the patients being merged away (every resource of
/// theirs moves to the survivor).
pub(super) struct Reads {
    pub(super) keys: Vec<ResourceKey>,
    pub(super) patients: Vec<(String, String)>,
}

pub(super) fn reads(events: &[EventView<'_>], preconditions: &[&super::Precondition]) -> Reads {
    let plan = projections::plan(events.iter().copied());
    let mut keys = plan.keys;
    keys.extend(preconditions.iter().map(|p| p.key.clone()));
    keys.sort();
    keys.dedup();
    Reads {
        keys,
        patients: plan.patients,
    }
}

/// Checks the preconditions against the `loaded` rows (on PostgreSQL: locked, so nothing can
/// change them before the commit; a row that does not exist cannot be locked, and a concurrent
/// create of it fails on the insert and is retried, and then sees the row), then folds `events`
/// into them. `loaded` may hold more than [`reads`] asked for, and the same row twice.
pub(super) fn fold(
    mut loaded: Vec<Loaded>,
    events: &[EventView<'_>],
    preconditions: &[&super::Precondition],
    now: OffsetDateTime,
) -> Result<Output, StoreError> {
    for p in preconditions {
        let actual = loaded.iter().find(|l| l.key == p.key).map(|l| l.version);
        if actual != p.version {
            let word =
                |v: Option<i64>| v.map_or_else(|| "no resource".to_owned(), |v| v.to_string());
            return Err(StoreError::PreconditionFailed {
                resource: format!("{}/{}", p.key.resource_type, p.key.id),
                expected: word(p.version),
                actual: word(actual),
            });
        }
    }
    let mut seen = HashSet::new();
    loaded.retain(|l| seen.insert(l.key.clone()));
    let mut projector = Projector::new(now, loaded)?;
    for event in events {
        projector.apply(event)?;
    }
    Ok(projector.finish()?)
}

/// Folds `events` into the read models, inside the caller's transaction: [`reads`], loaded
/// through `conn`, then [`fold`], then written through `conn`.
pub(super) async fn project(
    conn: &mut impl ProjectionConn,
    events: &[EventView<'_>],
    preconditions: &[&super::Precondition],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    if events.is_empty() && preconditions.is_empty() {
        return Ok(());
    }
    let reads = reads(events, preconditions);
    let mut loaded = conn.load_keys(&reads.keys).await?;
    for (tenant, patient) in &reads.patients {
        loaded.extend(conn.load_patient(tenant, patient).await?);
    }
    let output = fold(loaded, events, preconditions, now)?;
    conn.write(&output).await
}

/// Events read per round trip while rebuilding the projections.
const REBUILD_BATCH: i64 = 1_000;

/// Empties the read models and folds every event back in, inside the caller's transaction; each
/// event at the time it was recorded, as when it was first written. Returns the events replayed.
pub(super) async fn rebuild(
    conn: &mut impl ProjectionConn,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, StoreError> {
    conn.clear().await?;
    let mut position = 0;
    let mut replayed = 0_u64;
    loop {
        let events = conn.events_after(position, REBUILD_BATCH).await?;
        let Some(last) = events.last() else { break };
        position = last.global_position;
        for chunk in events.chunk_by(|a, b| a.recorded_at == b.recorded_at) {
            let views: Vec<EventView<'_>> = chunk.iter().map(RecordedEvent::view).collect();
            project(conn, &views, &[], chunk[0].recorded_at).await?;
        }
        replayed += events.len() as u64;
        progress(replayed);
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identifier_search(count: usize, offset: usize) -> SearchQuery {
        SearchQuery {
            resource_type: ResourceType::Patient,
            filters: vec![Filter::Index {
                param: "identifier",
                any: vec![Condition::Token {
                    system: Some("urn:x".into()),
                    value: Some("1".into()),
                }],
            }],
            count,
            offset,
        }
    }

    /// Regression: with `LIMIT ? OFFSET ?` SQLite parsed and planned a search again on every
    /// execution (a bound LIMIT makes the prepared statement depend on its value), which made a
    /// search by identifier cost three reads by id.
    #[test]
    fn sqlite_pages_write_limit_and_offset_as_literals() {
        let query = identifier_search(20, 40);
        let sql = page_sql(Backend::Sqlite, "t", &query);
        assert!(
            sql.text.ends_with(" ORDER BY r.id LIMIT 20 OFFSET 40"),
            "{}",
            sql.text
        );
        assert_eq!(
            sql.binds.len(),
            7,
            "tenant, type, tenant, type, param, system, value"
        );
        assert!(!sql.binds.iter().any(|b| matches!(b, Bind::Int(_))));

        // A search for another value is the same text, so the prepared statement is reused.
        let mut other = identifier_search(20, 40);
        other.filters = vec![Filter::Index {
            param: "identifier",
            any: vec![Condition::Token {
                system: Some("urn:y".into()),
                value: Some("2".into()),
            }],
        }];
        assert_eq!(page_sql(Backend::Sqlite, "u", &other).text, sql.text);

        let history = HistoryQuery {
            resource_type: ResourceType::Patient,
            id: None,
            since: None,
            count: 5,
            offset: 0,
        };
        let sql = history_page_sql(Backend::Sqlite, "t", &history);
        assert!(sql.text.ends_with(" LIMIT 5 OFFSET 0"), "{}", sql.text);
    }

    #[test]
    fn postgres_pages_bind_limit_and_offset() {
        let sql = page_sql(Backend::Postgres, "t", &identifier_search(20, 40));
        assert!(
            sql.text.ends_with(" ORDER BY r.id LIMIT $8 OFFSET $9"),
            "{}",
            sql.text
        );
        assert_eq!(sql.binds[7..], [Bind::Int(20), Bind::Int(40)]);
    }
}
