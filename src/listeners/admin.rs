//! The HTTP admin API for outbound delivery, on the HTTP port under `/admin`, protected like the
//! FHIR API: a bearer token whose scopes allow `FerryOutbox` (`system/FerryOutbox.rs` to look,
//! `system/FerryOutbox.u` to retry, discard and replay). A token sees and acts on its own tenant's
//! dead letters only.
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/outbox` | depth and oldest age per destination and lane |
//! | `GET /admin/dlq?destination=&older_than=&limit=` | dead letters |
//! | `GET /admin/dlq/{id}` | one dead letter |
//! | `POST /admin/dlq/{id}/retry`, `POST /admin/dlq/{id}/discard` | one |
//! | `POST /admin/dlq/retry?destination=&older_than=`, `POST /admin/dlq/discard?…` | many |
//! | `POST /admin/replay` | `{"destination", "from", "to", "stream", "hospital_id"}` |

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::auth::{AuthError, Authenticator, Interaction};
use crate::delivery::Router as Subscriptions;
use crate::delivery::ops::{ReplayError, ReplayRequest, parse_age, replay};
use crate::store::DynStore;
use crate::store::outbox::DlqFilter;

/// The scope resource type of the admin API.
pub const ADMIN_RESOURCE: &str = "FerryOutbox";

#[derive(Clone)]
pub struct AdminState {
    pub store: DynStore,
    pub subscriptions: Arc<Subscriptions>,
    pub auth: Authenticator,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/outbox", get(outbox_status))
        .route("/dlq", get(dlq_list))
        .route("/dlq/retry", post(dlq_retry_many))
        .route("/dlq/discard", post(dlq_discard_many))
        .route("/dlq/{id}", get(dlq_show))
        .route("/dlq/{id}/retry", post(dlq_retry_one))
        .route("/dlq/{id}/discard", post(dlq_discard_one))
        .route("/replay", post(replay_range))
        .with_state(state)
}

/// An error answer: status and a plain sentence.
struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::store::StoreError> for AdminError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "Admin API: store error.");
        AdminError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed; try again".into(),
        )
    }
}

/// Authenticates the caller and checks the scope; returns the tenant to confine to (`None` with
/// authentication off: every tenant).
async fn caller(
    state: &AdminState,
    headers: &HeaderMap,
    interaction: Interaction,
) -> Result<Option<String>, AdminError> {
    let deny = |e: AuthError| AdminError(e.status(), e.to_string());
    let header = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| AuthError::Malformed))
        .transpose()
        .map_err(deny)?;
    let principal = state.auth.authenticate(header).await.map_err(deny)?;
    principal
        .require(ADMIN_RESOURCE, interaction)
        .map_err(deny)?;
    Ok(principal.tenant)
}

async fn outbox_status(
    State(state): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    caller(&state, &headers, Interaction::SearchType).await?;
    let status = state.store.outbox().outbox_status().await?;
    Ok(Json(json!({ "destinations": status })).into_response())
}

/// The query string's parameters (the last of a repeated name wins).
fn pairs(raw: Option<String>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// `destination`, `older_than` (`90s`, `15m`, `2h`, `3d`), `limit`.
fn filter(
    query: &HashMap<String, String>,
    tenant: Option<String>,
) -> Result<DlqFilter, AdminError> {
    let bad = |m: String| AdminError(StatusCode::BAD_REQUEST, m);
    let dead_before = match query.get("older_than") {
        None => None,
        Some(age) => Some(
            OffsetDateTime::now_utc()
                - parse_age(age).ok_or_else(|| {
                    bad(format!(
                        "older_than={age:?}: expected e.g. 90s, 15m, 2h or 3d"
                    ))
                })?,
        ),
    };
    let limit = match query.get("limit") {
        None => None,
        Some(l) => Some(
            l.parse::<i64>()
                .ok()
                .filter(|l| *l > 0)
                .ok_or_else(|| bad(format!("limit={l:?} is not a positive number")))?,
        ),
    };
    Ok(DlqFilter {
        id: None,
        destination: query.get("destination").cloned(),
        dead_before,
        hospital_id: tenant,
        limit,
    })
}

async fn dlq_list(
    State(state): State<AdminState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, AdminError> {
    let tenant = caller(&state, &headers, Interaction::SearchType).await?;
    let mut f = filter(&pairs(raw), tenant)?;
    f.limit = f.limit.or(Some(100));
    let items = state.store.outbox().dlq_list(&f).await?;
    Ok(Json(json!({ "dead_letters": items })).into_response())
}

async fn dlq_show(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, AdminError> {
    let tenant = caller(&state, &headers, Interaction::Read).await?;
    let f = DlqFilter {
        id: Some(id),
        hospital_id: tenant,
        ..DlqFilter::default()
    };
    match state.store.outbox().dlq_list(&f).await?.into_iter().next() {
        Some(item) => Ok(Json(item).into_response()),
        None => Err(AdminError(
            StatusCode::NOT_FOUND,
            format!("no dead letter {id}"),
        )),
    }
}

#[derive(Clone, Copy)]
enum Action {
    Retry,
    Discard,
}

async fn act(
    state: &AdminState,
    headers: &HeaderMap,
    action: Action,
    f: impl FnOnce(Option<String>) -> Result<DlqFilter, AdminError>,
) -> Result<Response, AdminError> {
    let tenant = caller(state, headers, Interaction::Update).await?;
    let f = f(tenant)?;
    let now = OffsetDateTime::now_utc();
    let outbox = state.store.outbox();
    let count = match action {
        Action::Retry => outbox.dlq_retry(&f, now).await?,
        Action::Discard => outbox.dlq_discard(&f, now).await?,
    };
    if matches!(action, Action::Retry) && count > 0 {
        state.subscriptions.wake_all();
    }
    if f.id.is_some() && count == 0 {
        return Err(AdminError(
            StatusCode::NOT_FOUND,
            format!("no dead letter {}", f.id.unwrap_or_default()),
        ));
    }
    let key = match action {
        Action::Retry => "retried",
        Action::Discard => "discarded",
    };
    Ok(Json(json!({ key: count })).into_response())
}

async fn dlq_retry_one(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, AdminError> {
    act(&state, &headers, Action::Retry, |tenant| {
        Ok(DlqFilter {
            id: Some(id),
            hospital_id: tenant,
            ..DlqFilter::default()
        })
    })
    .await
}

async fn dlq_discard_one(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, AdminError> {
    act(&state, &headers, Action::Discard, |tenant| {
        Ok(DlqFilter {
            id: Some(id),
            hospital_id: tenant,
            ..DlqFilter::default()
        })
    })
    .await
}

/// Bulk actions need a `destination` or `older_than` (or `all=true`): one stray POST must not
/// resend or drop every dead letter.
fn bulk(query: &HashMap<String, String>, tenant: Option<String>) -> Result<DlqFilter, AdminError> {
    let f = filter(query, tenant)?;
    let all = query.get("all").is_some_and(|v| v == "true");
    if f.destination.is_none() && f.dead_before.is_none() && !all {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "say which dead letters: destination=…, older_than=…, or all=true".into(),
        ));
    }
    Ok(f)
}

async fn dlq_retry_many(
    State(state): State<AdminState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, AdminError> {
    act(&state, &headers, Action::Retry, |t| bulk(&pairs(raw), t)).await
}

async fn dlq_discard_many(
    State(state): State<AdminState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, AdminError> {
    act(&state, &headers, Action::Discard, |t| bulk(&pairs(raw), t)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    destination: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    to: Option<OffsetDateTime>,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    hospital_id: Option<String>,
}

async fn replay_range(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, AdminError> {
    let tenant = caller(&state, &headers, Interaction::Update).await?;
    let Json(body) = body.map_err(|e| AdminError(StatusCode::BAD_REQUEST, e.body_text()))?;
    // A tenant's token replays its own tenant's events only.
    let hospital_id = match (tenant, body.hospital_id) {
        (Some(t), Some(h)) if t != h => {
            return Err(AdminError(
                StatusCode::FORBIDDEN,
                "the token's tenant cannot replay another tenant's events".into(),
            ));
        }
        (Some(t), _) => Some(t),
        (None, h) => h,
    };
    let request = ReplayRequest {
        destination: body.destination,
        from: body.from,
        to: body.to,
        stream: body.stream,
        hospital_id,
    };
    match replay(&state.store, &state.subscriptions, &request).await {
        Ok(queued) => {
            if queued > 0 {
                state.subscriptions.wake_all();
            }
            Ok(Json(json!({ "queued": queued })).into_response())
        }
        Err(ReplayError::Store(e)) => Err(e.into()),
        Err(e) => Err(AdminError(StatusCode::BAD_REQUEST, e.to_string())),
    }
}
