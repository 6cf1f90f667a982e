//! Settings: defaults, then a TOML file, then `FERRY_…` environment variables for the common ones.
//!
//! Every section is a plain struct with `deny_unknown_fields`, so a typo in the file is an error at
//! start-up rather than a silently ignored setting. Units are in the names (`_secs`, `_bytes`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth::{AuthMode, AuthSettings, Secret};
pub use crate::delivery::settings::{
    AeAction, DeliverySettings, DestinationSettings, HttpDestination, LaneBy, MllpDestination,
    RetrySettings, SubscriptionSettings, TlsSettings,
};

/// Errors reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub store: StoreSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub mappings: MappingsSettings,
    /// How long shutdown waits for in-flight messages before giving up on them (they were not
    /// ACKed, so the sender will resend).
    pub shutdown_grace_secs: u64,
    /// Threads of the async runtime that runs listeners, parsing, mapping and the HTTP API. 0 (the
    /// default) picks: on SQLite one fewer than the machine's cores (at least one), since
    /// SQLite's one writer is a thread of its own that should not have to fight the runtime for
    /// a core; on PostgreSQL as many as the cores. Measured on 2 cores, SQLite ingest went from
    /// 9,100 to 11,300 messages/s with one runtime thread instead of two (BENCHMARKS.md).
    /// Environment: `FERRY_WORKER_THREADS`.
    pub worker_threads: usize,
    /// Inbound listeners. Without any in the file, one MLLP listener on 127.0.0.1:2575.
    pub listeners: Vec<ListenerSettings>,
    /// Bearer-token checks for the FHIR API: `"none"` or an `[auth]` table. Off in the built-in
    /// defaults (the embedded demo); a config file must say which (see [`Settings::from_toml`]).
    pub auth: AuthMode,
    /// Receivers Ferry delivers to (`[[destinations]]`, `type = "mllp"` or `"http"`).
    pub destinations: Vec<DestinationSettings>,
    /// Which events go where (`[[subscriptions]]`).
    pub subscriptions: Vec<SubscriptionSettings>,
    /// The dispatcher (`[delivery]`).
    pub delivery: DeliverySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            store: StoreSettings::default(),
            http: HttpSettings::default(),
            log: LogSettings::default(),
            mappings: MappingsSettings::default(),
            shutdown_grace_secs: 10,
            worker_threads: 0,
            listeners: vec![ListenerSettings::Mllp(MllpListenerSettings::default())],
            auth: AuthMode::None,
            destinations: Vec::new(),
            subscriptions: Vec::new(),
            delivery: DeliverySettings::default(),
        }
    }
}

/// Where events, the inbound log and idempotency records live.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `sqlite://PATH` (embedded, the default) or `postgres://USER@HOST:PORT/DB`.
    /// Environment: `FERRY_DATABASE_URL`.
    pub url: String,
    pub max_connections: u32,
    /// How long a batch may wait, after its first write, for as many writes as there were writers
    /// around the last commit (`store/group_commit.rs` says why). 0 commits whatever is queued at
    /// once. Unset: 1000 on PostgreSQL, where one commit for all connections beats two for half
    /// each (a commit costs a round trip and a WAL flush); 0 on SQLite, where a commit of 8 takes
    /// about 1.7 times as long as one of 4, the writer idles while the batch waits, and the wait
    /// measured slower (BENCHMARKS.md).
    /// tokio's timers tick in milliseconds, so a wait that runs out ends up to 1 ms after it.
    pub group_commit_wait_micros: Option<u64>,
    /// Upper bound of messages in one shared commit.
    pub group_commit_max_batch: usize,
    /// Batches gathered and committed in parallel. One (the default) makes the largest batches
    /// and measured fastest on both backends (BENCHMARKS.md); more may pay off with PostgreSQL on
    /// a machine with more cores.
    pub commit_workers: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://./ferry-data/ferry.db".into(),
            max_connections: 8,
            group_commit_wait_micros: None,
            group_commit_max_batch: 256,
            commit_workers: 1,
        }
    }
}

/// The HTTP port: health endpoints, metrics and the FHIR API (`/fhir`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Environment: `FERRY_HTTP_LISTEN`. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The tenant whose data the FHIR API serves when authentication is off.
    pub hospital_id: String,
    /// The FHIR API's public base URL (`https://ferry.example/fhir`), used in Bundle links and
    /// `fullUrl`s. Unset: `http://<Host header>/fhir`.
    pub fhir_base_url: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            hospital_id: "default".into(),
            fhir_base_url: None,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter such as `info` or `ferry=debug,sqlx=warn`. Environment: `FERRY_LOG`.
    pub filter: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The folder of mapping files (used from the mapping issue on).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MappingsSettings {
    /// Environment: `FERRY_MAPPINGS_DIR`.
    pub dir: PathBuf,
}

impl Default for MappingsSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("mappings"),
        }
    }
}

/// An inbound listener, picked by its `type`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ListenerSettings {
    Mllp(MllpListenerSettings),
}

/// An MLLP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MllpListenerSettings {
    /// Name used in logs and the inbound log.
    pub name: String,
    /// Address to bind; environment `FERRY_MLLP_LISTEN` overrides the first MLLP listener's.
    pub listen: SocketAddr,
    /// The tenant every message of this listener belongs to.
    pub hospital_id: String,
    /// Frames larger than this are answered with AR (when MSH can be read) and the connection is
    /// closed.
    pub max_frame_bytes: usize,
    /// A connection with no complete frame for this long is closed.
    pub idle_timeout_secs: u64,
    /// Connections beyond this are closed straight after accept.
    pub max_connections: usize,
    /// Character set assumed when MSH-18 is empty (an HL7 name such as `UNICODE UTF-8`, `ASCII`,
    /// `8859/1`).
    pub default_charset: String,
    /// Character set used when the bytes are not valid in the declared one (feeds that say ASCII
    /// but send windows-1252 are common), or `none` to answer AE instead.
    pub charset_fallback: String,
    /// What to do with a message whose type no mapping handles: `accept` (AA, logged as unmapped;
    /// the default, so a new feed never blocks) or `reject` (AR with code 200, for feeds that must
    /// only carry what is mapped).
    pub unmapped: UnmappedPolicy,
}

/// See [`MllpListenerSettings::unmapped`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnmappedPolicy {
    #[default]
    Accept,
    Reject,
}

impl Default for MllpListenerSettings {
    fn default() -> Self {
        Self {
            name: "mllp".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 2575)),
            hospital_id: "default".into(),
            max_frame_bytes: 1024 * 1024,
            idle_timeout_secs: 300,
            max_connections: 256,
            default_charset: "UNICODE UTF-8".into(),
            charset_fallback: "windows-1252".into(),
            unmapped: UnmappedPolicy::Accept,
        }
    }
}

impl Settings {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut settings = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        settings.apply_env(|name| std::env::var(name).ok())?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses a config file's text. Unlike every other setting, `auth` has no default here: a
    /// file that leaves it out is refused, so authentication is off only where a file says
    /// `auth = "none"` (the built-in defaults, used without any file, are the exception).
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        /// Whether the text sets `auth` at all (serde's struct default would hide it).
        #[derive(Deserialize)]
        struct AuthGiven {
            auth: Option<serde::de::IgnoredAny>,
        }
        let mut settings: Settings = toml::from_str(text)?;
        if toml::from_str::<AuthGiven>(text)?.auth.is_none() {
            return Err(serde::de::Error::custom(
                "the `auth` setting is missing: write `auth = \"none\"` (at the top, before any [table]) to run the FHIR API without authentication, or an `[auth]` table (issuer, audience, jwks_file or jwks_url) to require bearer tokens",
            ));
        }
        if settings.listeners.is_empty() {
            settings.listeners = Settings::default().listeners;
        }
        Ok(settings)
    }

    /// The group commit's wait: [`StoreSettings::group_commit_wait_micros`], or its default for
    /// the store's backend.
    pub fn group_commit_wait(&self) -> Duration {
        let micros = self.store.group_commit_wait_micros.unwrap_or(
            if self.store.url.starts_with("sqlite:") {
                0
            } else {
                1000
            },
        );
        Duration::from_micros(micros)
    }

    /// The runtime's thread count: [`Settings::worker_threads`], or when that is 0, the choice it
    /// describes for a machine with `cores` cores.
    pub fn runtime_threads(&self, cores: usize) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        if self.store.url.starts_with("sqlite:") {
            cores.saturating_sub(1).max(1)
        } else {
            cores.max(1)
        }
    }

    /// Applies `FERRY_…` overrides read through `var` (a function, so tests need not touch the
    /// process environment).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn addr(name: &'static str, value: String) -> Result<SocketAddr, ConfigError> {
            value
                .parse()
                .map_err(|e: std::net::AddrParseError| ConfigError::Env {
                    name,
                    value,
                    reason: e.to_string(),
                })
        }
        if let Some(v) = var("FERRY_MLLP_LISTEN") {
            let listen = addr("FERRY_MLLP_LISTEN", v)?;
            match self
                .listeners
                .iter_mut()
                .map(|ListenerSettings::Mllp(m)| m)
                .next()
            {
                Some(first) => first.listen = listen,
                None => self
                    .listeners
                    .push(ListenerSettings::Mllp(MllpListenerSettings {
                        listen,
                        ..MllpListenerSettings::default()
                    })),
            }
        }
        if let Some(v) = var("FERRY_HTTP_LISTEN") {
            self.http.listen = addr("FERRY_HTTP_LISTEN", v)?;
        }
        if let Some(v) = var("FERRY_DATABASE_URL") {
            self.store.url = v;
        }
        if let Some(v) = var("FERRY_MAPPINGS_DIR") {
            self.mappings.dir = PathBuf::from(v);
        }
        if let Some(v) = var("FERRY_LOG") {
            self.log.filter = v;
        }
        if let Some(v) = var("FERRY_WORKER_THREADS") {
            self.worker_threads =
                v.trim()
                    .parse()
                    .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                        name: "FERRY_WORKER_THREADS",
                        value: v.clone(),
                        reason: e.to_string(),
                    })?;
        }
        Ok(())
    }

    /// Checks what serde cannot: names unique, sizes sane, character sets known.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for ListenerSettings::Mllp(l) in &self.listeners {
            if !names.insert(l.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "two listeners are named {:?}",
                    l.name
                )));
            }
            if l.hospital_id.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "listener {:?} needs a hospital_id",
                    l.name
                )));
            }
            if l.max_frame_bytes < 16 {
                return Err(ConfigError::Invalid(format!(
                    "listener {:?}: max_frame_bytes must be at least 16",
                    l.name
                )));
            }
            if l.max_connections == 0 {
                return Err(ConfigError::Invalid(format!(
                    "listener {:?}: max_connections must be at least 1",
                    l.name
                )));
            }
            if crate::hl7::Charset::from_label(&l.default_charset).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "listener {:?}: unknown default_charset {:?}",
                    l.name, l.default_charset
                )));
            }
            if !l.charset_fallback.eq_ignore_ascii_case("none")
                && crate::hl7::Charset::from_label(&l.charset_fallback).is_none()
            {
                return Err(ConfigError::Invalid(format!(
                    "listener {:?}: unknown charset_fallback {:?} (a character set, or \"none\")",
                    l.name, l.charset_fallback
                )));
            }
        }
        if let AuthMode::Bearer(auth) = &self.auth {
            auth.validate().map_err(ConfigError::Invalid)?;
        }
        self.validate_delivery()?;
        if self.store.group_commit_max_batch == 0 || self.store.commit_workers == 0 {
            return Err(ConfigError::Invalid(
                "store.group_commit_max_batch and store.commit_workers must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Destinations and subscriptions: names unique, references resolvable, endpoints readable.
    /// (That each subscription's mapping exists is checked against the loaded mappings at start.)
    fn validate_delivery(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for d in &self.destinations {
            let name = d.name();
            if name.trim().is_empty() || !names.insert(name) {
                return Err(ConfigError::Invalid(format!(
                    "destination names must be unique and not empty: {name:?}"
                )));
            }
            if d.parallel_lanes() == 0 {
                return Err(ConfigError::Invalid(format!(
                    "destination {name:?}: parallel_lanes must be at least 1"
                )));
            }
            match d {
                DestinationSettings::Mllp(m) => {
                    let ok = m.endpoint.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok()
                    });
                    if !ok {
                        return Err(ConfigError::Invalid(format!(
                            "destination {name:?}: endpoint {:?} is not host:port",
                            m.endpoint
                        )));
                    }
                    if !seconds_ok(m.ack_timeout_secs) {
                        return Err(ConfigError::Invalid(format!(
                            "destination {name:?}: ack_timeout_secs must be above 0 and at most 86400"
                        )));
                    }
                    if let Some(tls) = &m.tls
                        && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
                    {
                        return Err(ConfigError::Invalid(format!(
                            "destination {name:?}: tls.client_cert_file and tls.client_key_file go together"
                        )));
                    }
                }
                DestinationSettings::Http(h) => {
                    let ok =
                        h.endpoint.starts_with("http://") || h.endpoint.starts_with("https://");
                    if !ok || reqwest::Url::parse(&h.endpoint).is_err() {
                        return Err(ConfigError::Invalid(format!(
                            "destination {name:?}: endpoint {:?} is not an http(s) URL",
                            h.endpoint
                        )));
                    }
                    if !seconds_ok(h.timeout_secs) {
                        return Err(ConfigError::Invalid(format!(
                            "destination {name:?}: timeout_secs must be above 0 and at most 86400"
                        )));
                    }
                }
            }
        }
        for s in &self.subscriptions {
            if !names.contains(s.destination.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "subscription {:?} names destination {:?}, which is not configured",
                    s.display_name(),
                    s.destination
                )));
            }
            if s.events.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "subscription {:?} lists no events",
                    s.display_name()
                )));
            }
            if !s.mapping.starts_with("outbound/") {
                return Err(ConfigError::Invalid(format!(
                    "subscription {:?}: mapping {:?} must name a file under outbound/ (e.g. outbound/pacs_orm_o01)",
                    s.display_name(),
                    s.mapping
                )));
            }
        }
        let d = &self.delivery;
        if d.lease_secs == 0 || d.lane_batch == 0 || d.poll_interval_millis == 0 {
            return Err(ConfigError::Invalid(
                "delivery.lease_secs, lane_batch and poll_interval_millis must be at least 1"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The MLLP listeners.
    pub fn mllp_listeners(&self) -> impl Iterator<Item = &MllpListenerSettings> {
        self.listeners.iter().map(|ListenerSettings::Mllp(m)| m)
    }
}

/// A timeout in (fractional) seconds that `Duration::from_secs_f64` takes: finite, above zero, at
/// most a day.
fn seconds_ok(secs: f64) -> bool {
    secs.is_finite() && secs > 0.0 && secs <= 86_400.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_readme() {
        let s = Settings::default();
        assert_eq!(s.store.url, "sqlite://./ferry-data/ferry.db");
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
        let l: Vec<_> = s.mllp_listeners().collect();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].listen.to_string(), "127.0.0.1:2575");
        assert_eq!(l[0].max_frame_bytes, 1 << 20);
        s.validate().unwrap();
    }

    #[test]
    fn file_then_environment() {
        let mut s = Settings::from_toml(
            r#"
            shutdown_grace_secs = 3
            auth = "none"
            [store]
            url = "sqlite://x.db"
            [[listeners]]
            type = "mllp"
            name = "adt"
            listen = "0.0.0.0:2600"
            hospital_id = "st-mary"
            [[listeners]]
            type = "mllp"
            name = "orders"
            listen = "0.0.0.0:2601"
            hospital_id = "st-mary"
            "#,
        )
        .unwrap();
        assert_eq!(s.shutdown_grace_secs, 3);
        s.apply_env(|name| match name {
            "FERRY_MLLP_LISTEN" => Some("127.0.0.1:0".into()),
            "FERRY_DATABASE_URL" => Some("postgres://u@h/db".into()),
            "FERRY_LOG" => Some("debug".into()),
            _ => None,
        })
        .unwrap();
        let l: Vec<_> = s.mllp_listeners().collect();
        assert_eq!(l[0].listen.to_string(), "127.0.0.1:0");
        assert_eq!(l[1].listen.to_string(), "0.0.0.0:2601");
        assert_eq!(s.store.url, "postgres://u@h/db");
        assert_eq!(s.log.filter, "debug");
        s.validate().unwrap();
    }

    #[test]
    fn group_commit_waits_on_postgres_unless_told_otherwise() {
        let mut s = Settings::default();
        assert_eq!(s.group_commit_wait(), Duration::ZERO);
        s.store.url = "postgres://u@h/db".into();
        assert_eq!(s.group_commit_wait(), Duration::from_millis(1));
        let s = Settings::from_toml(
            "auth = \"none\"\n[store]\nurl = \"postgres://u@h/db\"\ngroup_commit_wait_micros = 0\n",
        )
        .unwrap();
        assert_eq!(s.group_commit_wait(), Duration::ZERO);
        let s = Settings::from_toml("auth = \"none\"\n[store]\ngroup_commit_wait_micros = 300\n")
            .unwrap();
        assert_eq!(s.group_commit_wait(), Duration::from_micros(300));
    }

    #[test]
    fn runtime_threads_leave_sqlite_its_writer_core() {
        let mut s = Settings::default();
        assert_eq!(s.runtime_threads(2), 1);
        assert_eq!(s.runtime_threads(8), 7);
        assert_eq!(s.runtime_threads(1), 1);
        s.store.url = "postgres://u@h/db".into();
        assert_eq!(s.runtime_threads(2), 2);
        s.apply_env(|n| (n == "FERRY_WORKER_THREADS").then(|| "3".to_string()))
            .unwrap();
        assert_eq!(s.runtime_threads(2), 3);
        assert!(
            s.apply_env(|n| (n == "FERRY_WORKER_THREADS").then(|| "many".to_string()))
                .is_err()
        );
        let s = Settings::from_toml("auth = \"none\"\nworker_threads = 4\n").unwrap();
        assert_eq!(s.runtime_threads(2), 4);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Settings::from_toml("[store]\nurl = \"x\"\ntypo = 1\n").is_err());
        assert!(Settings::from_toml("[[listeners]]\ntype = \"smtp\"\n").is_err());
        let mut s = Settings::default();
        assert!(
            s.apply_env(|n| (n == "FERRY_HTTP_LISTEN").then(|| "nope".to_string()))
                .is_err()
        );
        let s = Settings::from_toml(
            "auth = \"none\"\n[[listeners]]\ntype = \"mllp\"\ncharset_fallback = \"klingon\"\n",
        )
        .unwrap();
        assert!(s.validate().is_err());
    }
}
