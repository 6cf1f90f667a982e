//! The HTTP listener: health endpoints and metrics now; the FHIR API joins here later.
//!
//! `GET /health/live` answers as long as the process serves requests. `GET /health/ready` answers
//! 200 only when the store answers a round trip and every MLLP listener is accepting, so a load
//! balancer or orchestrator sends traffic only to an instance that can commit it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::pipeline::Mappings;
use crate::store::DynStore;

/// What the health endpoints look at.
#[derive(Clone)]
pub struct HealthState {
    pub store: DynStore,
    /// Set once every MLLP listener is bound and accepting; cleared at shutdown.
    pub listeners_up: Arc<AtomicBool>,
    /// Shown in the readiness answer: which mapping set is active.
    pub mappings: Mappings,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The HTTP routes.
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn live() -> Response {
    Json(json!({ "status": "live" })).into_response()
}

/// Prometheus text exposition of every `ferry_…` metric.
async fn metrics(State(state): State<HealthState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn ready(State(state): State<HealthState>) -> Response {
    let listeners = state.listeners_up.load(Ordering::Acquire);
    let store = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    let (store_ok, store_error) = match store {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (false, Some("timed out".to_owned())),
    };
    if let Some(error) = &store_error {
        tracing::warn!(%error, "Readiness check: store unreachable.");
    }
    let ready = listeners && store_ok;
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "store": { "backend": state.store.backend(), "reachable": store_ok },
        "listeners": { "up": listeners },
        "mappings": {
            "version": state.mappings.load().version(),
            "files": state.mappings.load().mappings().len(),
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
