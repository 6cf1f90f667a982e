//! Test harness shared by the integration tests: fresh, migrated stores of both backends.
//!
//! * [`sqlite_store`]: a new database file in a temporary folder (kept alive by the returned guard).
//! * [`postgres_store`]: a new database on the server named by `FERRY_TEST_POSTGRES_URL` (start a
//!   throwaway one with `.ci/pg-start`), dropped again when the returned [`PgTestDb`] is dropped.
//!   Without that variable the PostgreSQL tests are skipped with a message, except under `CI=true`,
//!   where they fail: CI must not go green without having run them.
//! * [`receivers`]: MLLP and HTTP receivers that outbound delivery is tested against.
//! * [`serve`]: a `ferry serve` child process, for crash and multi-instance tests.
#![allow(dead_code)]

pub mod receivers;
pub mod serve;

use std::sync::Arc;

use ferry::store::postgres::PostgresStore;
use ferry::store::sqlite::SqliteStore;
use ferry::store::{ConnectOptions, DynStore, EventStore};
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// Runs each named case (an `async fn(DynStore)` of the test file) against a fresh SQLite store
/// and a fresh PostgreSQL database.
#[allow(unused_macros)]
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (store, _dir) = crate::common::sqlite_store().await;
                super::$case(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = crate::common::postgres_store().await else { return };
                super::$case(db.store.clone()).await;
            }
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use both_backends;

/// A migrated SQLite store in a fresh temporary folder; keep the `TempDir` alive while using it.
pub async fn sqlite_store() -> (DynStore, TempDir) {
    let dir = tempfile::tempdir().expect("temporary folder");
    // A sub-folder that does not exist yet: connect must create it.
    let url = format!("sqlite://{}/data/ferry.db", dir.path().display());
    let store = SqliteStore::connect(&url, &ConnectOptions::default())
        .await
        .expect("open sqlite store");
    store.migrate().await.expect("migrate sqlite store");
    (Arc::new(store), dir)
}

/// A database of its own on the test PostgreSQL server, dropped (best effort) on drop.
pub struct PgTestDb {
    /// A migrated store on the database.
    pub store: DynStore,
    /// URL of the test database, to open further stores ("other Ferry instances") on it.
    pub url: String,
    _guard: DropDatabase,
}

/// Drops the test database when dropped, even when the test panicked (or connecting failed).
struct DropDatabase {
    admin_url: String,
    name: String,
}

impl PgTestDb {
    /// Another store (own pool) on the same database, as a second Ferry instance would have.
    pub async fn another_store(&self) -> DynStore {
        let store = PostgresStore::connect(&self.url, &ConnectOptions::default())
            .await
            .expect("open second postgres store");
        Arc::new(store)
    }
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with its
        // own small runtime. WITH (FORCE) ends the pools' connections still open.
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// The admin URL of the test server, or `None` (after saying so) when PostgreSQL tests are skipped.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("FERRY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "FERRY_TEST_POSTGRES_URL is not set but CI=true: the PostgreSQL tests must run \
                     in CI (start a server with .ci/pg-start and export its URL)"
                );
            }
            eprintln!("FERRY_TEST_POSTGRES_URL not set: skipping PostgreSQL test");
            None
        }
    }
}

/// A migrated PostgreSQL store on a fresh database, or `None` when PostgreSQL tests are skipped.
pub async fn postgres_store() -> Option<PgTestDb> {
    let admin_url = postgres_admin_url()?;
    let name = format!("ferry_t_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("connect to FERRY_TEST_POSTGRES_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let _ = admin.close().await;
    let url = database_url(&admin_url, &name);
    let guard = DropDatabase { admin_url, name };
    let store = PostgresStore::connect(&url, &ConnectOptions::default())
        .await
        .expect("open postgres store");
    store.migrate().await.expect("migrate postgres store");
    Some(PgTestDb {
        store: Arc::new(store),
        url,
        _guard: guard,
    })
}

/// `admin_url` with its database (the path) replaced by `name`, query string kept.
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// One HTTP/1.1 GET over a fresh connection: (status, whole response text). Enough for the health
/// and metrics endpoints without pulling an HTTP client into the tests.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// Copies a folder recursively (a mapping set with its fixtures, to edit in a test).
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// An HTTP answer as the tests look at it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), for the FHIR API tests.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: ferry.test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// Settings for a whole `App` on loopback ports: one MLLP listener `adt-feed` and the FHIR API,
/// both for `tenant`, the shipped mappings, the store at `url`.
pub fn app_settings(url: &str, tenant: &str) -> ferry::config::Settings {
    use ferry::config::{ListenerSettings, MllpListenerSettings, Settings};
    let listener = MllpListenerSettings {
        name: "adt-feed".into(),
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        hospital_id: tenant.into(),
        ..MllpListenerSettings::default()
    };
    let mut s = Settings {
        listeners: vec![ListenerSettings::Mllp(listener)],
        shutdown_grace_secs: 5,
        ..Settings::default()
    };
    s.store.url = url.to_owned();
    s.http.listen = "127.0.0.1:0".parse().expect("loopback address");
    s.http.hospital_id = tenant.into();
    s.mappings.dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    s
}

/// Sends `message` on `client` and asserts that the answer is an AA (the ACK's text in the
/// failure message).
pub async fn request_accepted(client: &mut ferry::mllp::client::MllpClient, message: &[u8]) {
    use ferry::hl7::ack::{AckCode, summarize_ack};
    let ack = client.request(message).await.unwrap();
    let text = String::from_utf8_lossy(&ack);
    assert_eq!(
        summarize_ack(&text).unwrap().code,
        Some(AckCode::AA),
        "{text}"
    );
}
