//! Builds the running application from [`Settings`]: store, group committer, ingest pipeline, MLLP
//! listeners and the HTTP listener, and stops them in order.
//!
//! Tests build the same [`App`] on port 0 that `ferry serve` runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwap;

use crate::auth::{AuthError, Authenticator};
use crate::config::{AuthMode, Settings};
use crate::hl7::{Charset, DecodeOptions};
use crate::listeners::http::{HealthState, router};
use crate::listeners::mllp::{MllpListener, MllpOptions};
use crate::mapping::MappingSet;
use crate::pipeline::{Ingest, ListenerContext, Mappings};
use crate::store::group_commit::{GroupCommitConfig, GroupCommitter};
use crate::store::{ConnectOptions, DynStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The mapping folder has problems; each is `file:line:column: sentence`.
    #[error("the mappings in {dir} have {} problem(s):\n{}", problems.len(), problems.join("\n"))]
    Mappings { dir: String, problems: Vec<String> },
    #[error("cannot watch the mappings folder {dir} for changes: {source}")]
    Watch { dir: String, source: notify::Error },
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    #[error("delivery: {0}")]
    Delivery(#[from] crate::delivery::DeliveryError),
}

/// Loads the mapping set at start-up. A folder with problems stops the start (better than
/// accepting messages and mapping them wrongly); a missing folder runs with no mappings, every
/// message accepted unmapped (or rejected, per listener), and says so.
pub fn load_mappings(settings: &Settings) -> Result<Option<MappingSet>, AppError> {
    let dir = &settings.mappings.dir;
    if !dir.is_dir() {
        tracing::warn!(dir = %dir.display(), "Mappings folder not found; running without mappings (messages are not mapped to events).");
        return Ok(None);
    }
    // Example files are for `ferry mappings check|test`; a deployed folder (the Docker image's
    // /etc/ferry/mappings) comes without the fixtures they point at.
    let options = crate::mapping::LoadOptions {
        example_files: false,
    };
    MappingSet::load_with(dir, options)
        .map(Some)
        .map_err(|problems| AppError::Mappings {
            dir: dir.display().to_string(),
            problems: problems.iter().map(ToString::to_string).collect(),
        })
}

/// Every subscription's outbound mapping must exist and handle the events it subscribes to: a
/// typo would otherwise queue messages that can only be dead-lettered.
fn check_subscriptions(settings: &Settings, set: &MappingSet) -> Result<(), AppError> {
    for s in &settings.subscriptions {
        let Some(handled) = set.outbound_events(&s.mapping) else {
            let known = set.outbound_names().join(", ");
            return Err(AppError::Config(format!(
                "subscription {:?}: no outbound mapping {:?} in {} (known: {known})",
                s.display_name(),
                s.mapping,
                settings.mappings.dir.display()
            )));
        };
        if let Some(missing) = s.events.iter().find(|e| !handled.contains(e)) {
            return Err(AppError::Config(format!(
                "subscription {:?}: {} does not handle {missing} (it handles {})",
                s.display_name(),
                s.mapping,
                handled.join(", ")
            )));
        }
    }
    Ok(())
}

/// A running Ferry.
pub struct App {
    /// Bound MLLP listeners by name, in configuration order.
    pub mllp_addrs: Vec<(String, SocketAddr)>,
    pub http_addr: SocketAddr,
    pub store: DynStore,
    /// The active mapping set (hot-reloaded when the folder changes).
    pub mappings: Mappings,
    /// Checks bearer tokens for the FHIR API (`auth` setting); its JWKS is loaded at start.
    pub authenticator: Authenticator,
    watcher: Option<JoinHandle<()>>,
    shutdown: CancellationToken,
    listeners: Vec<JoinHandle<()>>,
    http: JoinHandle<()>,
    committers: JoinSet<()>,
    listeners_up: Arc<AtomicBool>,
    grace: Duration,
    /// The dispatcher, when destinations are configured and delivery is enabled.
    delivery: Option<crate::delivery::Delivery>,
}

/// Opens and migrates the configured store.
pub async fn open_store(settings: &Settings) -> Result<DynStore, StoreError> {
    let store = crate::store::connect(
        &settings.store.url,
        &ConnectOptions {
            max_connections: settings.store.max_connections,
            ..ConnectOptions::default()
        },
    )
    .await?;
    store.migrate().await?;
    Ok(store)
}

fn charset(label: &str, what: &str) -> Result<Charset, AppError> {
    Charset::from_label(label)
        .ok_or_else(|| AppError::Config(format!("unknown character set {label:?} for {what}")))
}

impl App {
    /// Opens the store (migrating it), binds every listener and starts serving.
    pub async fn start(settings: &Settings) -> Result<App, AppError> {
        // The recorder first: metrics set during start-up (the active mapping version, the
        // delivery gauges) would otherwise go to the no-op recorder and be lost.
        let metrics = crate::telemetry::metrics_handle();
        let authenticator = match &settings.auth {
            AuthMode::None => {
                tracing::warn!(
                    "Authentication is off (auth = \"none\"): HTTP API requests are not checked and get every scope. For the embedded demo and local trials only."
                );
                Authenticator::disabled()
            }
            AuthMode::Bearer(auth) => {
                let authenticator = Authenticator::from_settings(auth).await?;
                tracing::info!(issuer = %auth.issuer, audience = %auth.audience, "Bearer-token authentication on.");
                authenticator
            }
        };
        let store = open_store(settings).await?;
        tracing::info!(backend = %store.backend(), "Store ready.");
        let (mut committer, committers) = GroupCommitter::start(
            store.clone(),
            GroupCommitConfig {
                max_wait: settings.group_commit_wait(),
                max_batch: settings.store.group_commit_max_batch,
                workers: settings.store.commit_workers,
            },
        );
        let shutdown = CancellationToken::new();
        let loaded = load_mappings(settings)?;
        let watching = loaded.is_some();
        let set = loaded.unwrap_or_else(MappingSet::empty);
        tracing::info!(
            version = set.version(),
            mappings = set.mappings().len(),
            "Mappings active."
        );
        crate::reload::announce(None, set.version());
        let mappings: Mappings = Arc::new(ArcSwap::from_pointee(set));
        let watcher = if watching {
            let dir = settings.mappings.dir.clone();
            Some(
                crate::reload::watch(dir.clone(), mappings.clone(), shutdown.clone()).map_err(
                    |source| AppError::Watch {
                        dir: dir.display().to_string(),
                        source,
                    },
                )?,
            )
        } else {
            None
        };
        check_subscriptions(settings, &mappings.load())?;
        let subscriptions = Arc::new(crate::delivery::Router::new(
            &settings.destinations,
            &settings.subscriptions,
        ));
        if !settings.subscriptions.is_empty() {
            committer = committer.with_router(subscriptions.clone());
        }
        let delivery = if settings.delivery.enabled && !settings.destinations.is_empty() {
            Some(crate::delivery::Delivery::start(
                store.clone(),
                &settings.destinations,
                &settings.delivery,
                &subscriptions,
                Arc::new(crate::delivery::render::MappingRenderer {
                    mappings: mappings.clone(),
                }),
            )?)
        } else {
            if !settings.destinations.is_empty() {
                tracing::warn!(
                    "Delivery is off (delivery.enabled = false): messages are queued in the outbox but not sent from this instance."
                );
            }
            None
        };
        let ingest = Arc::new(Ingest::new(
            committer.clone(),
            store.clone(),
            mappings.clone(),
        ));

        let mut bound = Vec::new();
        for l in settings.mllp_listeners() {
            let fallback = if l.charset_fallback.eq_ignore_ascii_case("none") {
                None
            } else {
                Some(charset(&l.charset_fallback, "charset_fallback")?)
            };
            let options = MllpOptions {
                context: ListenerContext {
                    name: l.name.clone(),
                    hospital_id: l.hospital_id.clone(),
                    decode: DecodeOptions {
                        default_charset: charset(&l.default_charset, "default_charset")?,
                        fallback,
                    },
                    unmapped: l.unmapped,
                },
                max_frame_bytes: l.max_frame_bytes,
                idle_timeout: Duration::from_secs(l.idle_timeout_secs),
                max_connections: l.max_connections,
            };
            let tcp = TcpListener::bind(l.listen)
                .await
                .map_err(|source| AppError::Bind {
                    what: format!("mllp listener {:?}", l.name),
                    addr: l.listen,
                    source,
                })?;
            let listener = MllpListener::new(tcp, options, ingest.clone());
            let addr = listener.local_addr().map_err(|source| AppError::Bind {
                what: format!("mllp listener {:?}", l.name),
                addr: l.listen,
                source,
            })?;
            bound.push((l.name.clone(), addr, listener));
        }
        drop(ingest);

        let http_tcp = TcpListener::bind(settings.http.listen)
            .await
            .map_err(|source| AppError::Bind {
                what: "http".into(),
                addr: settings.http.listen,
                source,
            })?;
        let http_addr = http_tcp.local_addr().map_err(|source| AppError::Bind {
            what: "http".into(),
            addr: settings.http.listen,
            source,
        })?;
        let listeners_up = Arc::new(AtomicBool::new(false));
        let app_router = router(HealthState {
            store: store.clone(),
            listeners_up: listeners_up.clone(),
            mappings: mappings.clone(),
            metrics,
        })
        .nest(
            "/fhir",
            crate::listeners::fhir::router(crate::listeners::fhir::FhirState::new(
                store.clone(),
                committer.clone(),
                mappings.clone(),
                authenticator.clone(),
                settings.http.hospital_id.clone(),
                settings.http.fhir_base_url.clone(),
            )),
        )
        .nest(
            "/admin",
            crate::listeners::admin::router(crate::listeners::admin::AdminState {
                store: store.clone(),
                subscriptions: subscriptions.clone(),
                auth: authenticator.clone(),
            }),
        );
        let http_shutdown = shutdown.clone();
        let http = tokio::spawn(async move {
            let serve = axum::serve(http_tcp, app_router)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
            if let Err(error) = serve.await {
                tracing::error!(%error, "HTTP server failed.");
            }
        });

        let mut mllp_addrs = Vec::new();
        let mut listeners = Vec::new();
        for (name, addr, listener) in bound {
            tracing::info!(listener = %name, %addr, "MLLP listener accepting.");
            mllp_addrs.push((name, addr));
            listeners.push(tokio::spawn(listener.run(shutdown.clone())));
        }
        listeners_up.store(true, Ordering::Release);
        tracing::info!(%http_addr, "HTTP listener accepting.");

        Ok(App {
            mllp_addrs,
            http_addr,
            store,
            mappings,
            authenticator,
            watcher,
            shutdown,
            listeners,
            http,
            committers,
            listeners_up,
            grace: Duration::from_secs(settings.shutdown_grace_secs),
            delivery,
        })
    }

    /// The first MLLP listener's address (what most callers want).
    pub fn mllp_addr(&self) -> SocketAddr {
        self.mllp_addrs
            .first()
            .map(|(_, a)| *a)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// A token that, when cancelled, starts the same shutdown as [`App::shutdown`].
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until the shutdown token is cancelled, then shuts down.
    pub async fn run_until_stopped(self) {
        self.shutdown.cancelled().await;
        self.shutdown().await;
    }

    /// Stops accepting, lets in-flight messages finish (up to the grace period), then drains the
    /// committer. Nothing is ACKed that was not committed: a message cut off by the grace period
    /// gets no ACK and will be resent by its sender.
    pub async fn shutdown(mut self) {
        tracing::info!("Shutting down: no new connections; finishing messages in flight.");
        self.listeners_up.store(false, Ordering::Release);
        self.shutdown.cancel();
        let listeners = futures::future::join_all(self.listeners.drain(..));
        if tokio::time::timeout(self.grace, listeners).await.is_err() {
            tracing::warn!(
                grace_secs = self.grace.as_secs(),
                "Grace period over with messages still in flight; they were not ACKed."
            );
        }
        let _ = tokio::time::timeout(self.grace, &mut self.http).await;
        if let Some(delivery) = self.delivery.take() {
            // Each lane finishes (and records) the message in flight, then gives the lane back.
            delivery.shutdown(self.grace).await;
        }
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.await;
        }
        // The listeners held the last handles on the ingest pipeline; once they are gone the
        // committer drains its queue and stops.
        let _ = tokio::time::timeout(self.grace, async {
            while self.committers.join_next().await.is_some() {}
        })
        .await;
        tracing::info!("Shutdown complete.");
    }
}
