//! The FHIR R4 REST API under `/fhir`: CapabilityStatement, read, vread, history and search over
//! the projections (`src/projections/`), answered as FHIR JSON.
//!
//! Resources are served as the store holds them (rendered once, when the event that changed them
//! was committed), so a read is one indexed row and a search one index query plus one page query.
//! Bundles are assembled around those stored bodies without parsing them again.

mod capability;
pub mod outcome;
pub mod params;
mod write;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::value::RawValue;

use self::outcome::FhirError;
use crate::auth::{AuthError, Authenticator, Interaction, Principal};
use crate::projections::ResourceType;
use crate::store::DynStore;
use crate::store::fhir::{Filter, HistoryQuery, SearchQuery, StoredResource};

/// The media type of every answer.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// What the FHIR handlers need.
#[derive(Clone)]
pub struct FhirState {
    pub store: DynStore,
    /// Writes go through the same committer as HL7 messages.
    pub committer: crate::store::group_commit::GroupCommitter,
    /// The active mapping set (hot-reloaded): `mappings/fhir/` turns writes into events.
    pub mappings: crate::pipeline::Mappings,
    /// Checks the bearer token of every request but `/metadata`.
    pub auth: Authenticator,
    /// The tenant whose data the API serves when authentication is off (`auth = "none"`).
    pub default_tenant: String,
    /// Public base URL (`https://ferry.example/fhir`) for links; None: taken from the request's
    /// Host header.
    pub base_url: Option<String>,
    capability: Arc<Vec<u8>>,
}

impl FhirState {
    pub fn new(
        store: DynStore,
        committer: crate::store::group_commit::GroupCommitter,
        mappings: crate::pipeline::Mappings,
        auth: Authenticator,
        default_tenant: String,
        base_url: Option<String>,
    ) -> Self {
        Self {
            store,
            committer,
            mappings,
            auth,
            default_tenant,
            base_url: base_url.map(|b| b.trim_end_matches('/').to_owned()),
            capability: Arc::new(capability::statement()),
        }
    }
}

/// The `/fhir` routes (nest them under `/fhir`).
pub fn router(state: FhirState) -> Router {
    Router::new()
        .route("/", axum::routing::post(write::transaction))
        .route("/metadata", get(metadata))
        .route("/{type}", get(search_get).post(write::create))
        .route("/{type}/_search", axum::routing::post(search_post))
        .route("/{type}/_history", get(type_history))
        .route(
            "/{type}/{id}",
            get(read).put(write::update).delete(delete_not_supported),
        )
        .route("/{type}/{id}/_history", get(instance_history))
        .route("/{type}/{id}/_history/{vid}", get(vread))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(unknown_path)
        .with_state(state)
}

async fn method_not_allowed(method: Method) -> FhirError {
    FhirError::not_supported(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed here; see /fhir/metadata for what is supported"),
    )
}

async fn unknown_path() -> FhirError {
    FhirError::not_found("no FHIR interaction at this path; see /fhir/metadata")
}

async fn delete_not_supported(Path((resource_type, _)): Path<(String, String)>) -> FhirError {
    writes_not_supported("delete", &resource_type)
}

fn writes_not_supported(interaction: &str, resource_type: &str) -> FhirError {
    FhirError::not_supported(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{interaction} of {resource_type} is not supported: Ferry keeps what the HL7 v2 feeds \
             and FHIR writes said (a Patient merged away stays, inactive); see /fhir/metadata"
        ),
    )
}

/// The authenticated caller of a request: its tenant and scopes. Every handler but
/// `/metadata` (which SMART clients read before they have a token) takes one, so no data is
/// served without the token check; every store call is confined to [`Caller::tenant`].
pub struct Caller {
    principal: Principal,
    tenant: String,
}

impl Caller {
    /// Ok when the token's scopes allow `interaction` on `resource_type` (403 otherwise).
    fn allow(
        &self,
        resource_type: ResourceType,
        interaction: Interaction,
    ) -> Result<(), FhirError> {
        self.principal
            .require(resource_type.as_str(), interaction)
            .map_err(auth_error)
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl axum::extract::FromRequestParts<FhirState> for Caller {
    type Rejection = FhirError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &FhirState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().map_err(|_| AuthError::Malformed))
            .transpose()
            .map_err(auth_error)?;
        let principal = state.auth.authenticate(header).await.map_err(auth_error)?;
        let tenant = principal.tenant_or(&state.default_tenant).to_owned();
        Ok(Caller { principal, tenant })
    }
}

/// An authentication or authorisation failure as FHIR answers it: 401 with the challenge, or 403.
fn auth_error(e: AuthError) -> FhirError {
    let status = e.status();
    let code = match status {
        StatusCode::UNAUTHORIZED => ferry_fhir::codes::IssueType::Login,
        StatusCode::FORBIDDEN => ferry_fhir::codes::IssueType::Forbidden,
        _ => ferry_fhir::codes::IssueType::Exception,
    };
    if status.is_server_error() {
        return FhirError::internal(&e);
    }
    let mut error = FhirError::new(status, code, e.to_string());
    error.challenge = e.www_authenticate();
    error
}

/// Checks the requested format: JSON (`application/fhir+json`, `application/json`, `json`) is
/// served; XML and anything else is answered 406.
fn negotiate(headers: &HeaderMap, pairs: &[(String, String)]) -> Result<(), FhirError> {
    if let Some((_, format)) = pairs.iter().find(|(k, _)| k == "_format") {
        let f = format.trim().to_ascii_lowercase();
        let json = matches!(
            f.as_str(),
            "json" | "application/json" | "application/fhir+json"
        ) || f.starts_with("application/fhir+json;")
            || f.starts_with("application/json;");
        if !json {
            return Err(not_acceptable(format));
        }
        return Ok(());
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let acceptable = accept.split(',').any(|part| {
        let media = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            media.as_str(),
            "" | "*/*" | "application/*" | "application/json" | "application/fhir+json"
        )
    });
    if acceptable {
        Ok(())
    } else {
        Err(not_acceptable(accept))
    }
}

fn not_acceptable(format: &str) -> FhirError {
    FhirError::not_supported(
        StatusCode::NOT_ACCEPTABLE,
        format!("format {format:?} is not supported; Ferry serves application/fhir+json only"),
    )
    .at("_format")
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

fn resource_type(name: &str) -> Result<ResourceType, FhirError> {
    ResourceType::parse(name).ok_or_else(|| {
        FhirError::not_found(format!(
            "resource type {name:?} is not supported; see /fhir/metadata"
        ))
    })
}

/// FHIR's id syntax: `[A-Za-z0-9\-\.]{1,64}`.
fn check_id(id: &str) -> Result<(), FhirError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(FhirError::bad_request(format!(
            "{id:?} is not a valid resource id"
        )))
    }
}

fn base_url(state: &FhirState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.base_url {
        return base.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/fhir")
}

fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// A resource answer with ETag, Last-Modified and Content-Location.
fn resource_response(r: StoredResource, base: &str, headers: &HeaderMap) -> Response {
    let tag = etag(r.version);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    versioned(StatusCode::OK, r, base, header::CONTENT_LOCATION)
}

/// A resource with its version headers: ETag, Last-Modified, and the version's URL under
/// `location` (Content-Location for a read, Location for a write).
fn versioned(
    status: StatusCode,
    r: StoredResource,
    base: &str,
    location: header::HeaderName,
) -> Response {
    let tag = etag(r.version);
    let modified = httpdate::fmt_http_date(std::time::SystemTime::from(r.last_updated));
    let url = format!("{base}/{}/{}/_history/{}", r.resource_type, r.id, r.version);
    let mut response = (status, r.body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    for (name, value) in [
        (header::ETAG, tag),
        (header::LAST_MODIFIED, modified),
        (location, url),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    response
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

async fn metadata(
    State(state): State<FhirState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    Ok(json_response(StatusCode::OK, state.capability.to_vec()))
}

async fn read(
    State(state): State<FhirState>,
    caller: Caller,
    Path((type_name, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let rt = resource_type(&type_name)?;
    caller.allow(rt, Interaction::Read)?;
    check_id(&id)?;
    let found = state
        .store
        .fhir_read(caller.tenant(), rt, &id, None)
        .await?;
    let r = found.ok_or_else(|| FhirError::not_found(format!("{rt}/{id} is not known")))?;
    Ok(resource_response(r, &base_url(&state, &headers), &headers))
}

async fn vread(
    State(state): State<FhirState>,
    caller: Caller,
    Path((type_name, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let rt = resource_type(&type_name)?;
    caller.allow(rt, Interaction::VRead)?;
    check_id(&id)?;
    let version: i64 = vid
        .parse()
        .map_err(|_| FhirError::bad_request(format!("{vid:?} is not a version id (1, 2, …)")))?;
    let found = state
        .store
        .fhir_read(caller.tenant(), rt, &id, Some(version))
        .await?;
    let r =
        found.ok_or_else(|| FhirError::not_found(format!("{rt}/{id} has no version {version}")))?;
    Ok(resource_response(r, &base_url(&state, &headers), &headers))
}

#[derive(Serialize)]
struct Link<'a> {
    relation: &'a str,
    url: String,
}

#[derive(Serialize)]
struct EntrySearch {
    mode: &'static str,
}

#[derive(Serialize)]
struct EntryRequest {
    method: &'static str,
    url: String,
}

#[derive(Serialize)]
struct EntryResponse {
    status: &'static str,
    etag: String,
    #[serde(rename = "lastModified")]
    last_modified: String,
}

#[derive(Serialize)]
struct Entry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    resource: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    search: Option<EntrySearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<EntryResponse>,
}

#[derive(Serialize)]
struct Bundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    id: String,
    meta: BundleMeta,
    #[serde(rename = "type")]
    kind: &'static str,
    total: i64,
    link: Vec<Link<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct BundleMeta {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn raw_json(body: &str) -> Result<&RawValue, FhirError> {
    serde_json::from_str::<&RawValue>(body).map_err(|e| FhirError::internal(&e))
}

/// `base/Type?params&_count=n&_offset=o`.
fn page_url(
    base: &str,
    path: &str,
    canonical: &[(String, String)],
    count: usize,
    offset: usize,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in canonical {
        q.append_pair(k, v);
    }
    q.append_pair("_count", &count.to_string());
    if offset > 0 {
        q.append_pair("_offset", &offset.to_string());
    }
    format!("{base}/{path}?{}", q.finish())
}

fn paging_links<'a>(
    base: &str,
    path: &str,
    canonical: &[(String, String)],
    count: usize,
    offset: usize,
    total: i64,
) -> Vec<Link<'a>> {
    let mut links = vec![Link {
        relation: "self",
        url: page_url(base, path, canonical, count, offset),
    }];
    if count > 0 && ((offset + count) as i64) < total {
        links.push(Link {
            relation: "next",
            url: page_url(base, path, canonical, count, offset + count),
        });
    }
    if count > 0 && offset > 0 {
        links.push(Link {
            relation: "previous",
            url: page_url(base, path, canonical, count, offset.saturating_sub(count)),
        });
    }
    links
}

fn strict_handling(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=strict"))
}

async fn search_get(
    State(state): State<FhirState>,
    caller: Caller,
    Path(type_name): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    let pairs = query_pairs(raw.as_deref());
    search(state, &caller, &type_name, &headers, pairs).await
}

async fn search_post(
    State(state): State<FhirState>,
    caller: Caller,
    Path(type_name): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, FhirError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !body.is_empty() && !form {
        return Err(FhirError::not_supported(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST _search takes its parameters as application/x-www-form-urlencoded",
        ));
    }
    let mut pairs = query_pairs(raw.as_deref());
    pairs.extend(form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())));
    search(state, &caller, &type_name, &headers, pairs).await
}

async fn search(
    state: FhirState,
    caller: &Caller,
    type_name: &str,
    headers: &HeaderMap,
    pairs: Vec<(String, String)>,
) -> Result<Response, FhirError> {
    negotiate(headers, &pairs)?;
    let rt = resource_type(type_name)?;
    caller.allow(rt, Interaction::SearchType)?;
    let parsed = params::parse(rt, &pairs, strict_handling(headers))?;
    if parsed.include_patient {
        // The included Patients are served too: the token must allow reading them.
        caller.allow(ResourceType::Patient, Interaction::Read)?;
    }
    let tenant = caller.tenant();
    let page = state.store.fhir_search(tenant, &parsed.query).await?;
    let base = base_url(&state, headers);

    // _include: the Patients the page's resources point at.
    let mut included = Vec::new();
    if parsed.include_patient && !page.resources.is_empty() {
        let mut ids: Vec<String> = page
            .resources
            .iter()
            .filter_map(|r| subject_patient(&r.body))
            .collect();
        ids.sort();
        ids.dedup();
        if !ids.is_empty() {
            let query = SearchQuery {
                resource_type: ResourceType::Patient,
                count: ids.len(),
                filters: vec![Filter::Id(ids)],
                offset: 0,
            };
            included = state.store.fhir_search(tenant, &query).await?.resources;
        }
    }

    let mut entries = Vec::with_capacity(page.resources.len() + included.len());
    for (r, mode) in page
        .resources
        .iter()
        .map(|r| (r, "match"))
        .chain(included.iter().map(|r| (r, "include")))
    {
        entries.push(Entry {
            full_url: format!("{base}/{}/{}", r.resource_type, r.id),
            resource: raw_json(&r.body)?,
            search: Some(EntrySearch { mode }),
            request: None,
            response: None,
        });
    }
    let links = paging_links(
        &base,
        rt.as_str(),
        &parsed.canonical,
        parsed.query.count,
        parsed.query.offset,
        page.total,
    );
    bundle_response("searchset", page.total, links, entries)
}

/// A Bundle answer around entries whose resources are the stored bodies.
fn bundle_response(
    kind: &'static str,
    total: i64,
    link: Vec<Link<'_>>,
    entry: Vec<Entry<'_>>,
) -> Result<Response, FhirError> {
    let bundle = Bundle {
        resource_type: "Bundle",
        id: uuid::Uuid::now_v7().hyphenated().to_string(),
        meta: BundleMeta {
            last_updated: now_text(),
        },
        kind,
        total,
        link,
        entry,
    };
    let body = serde_json::to_vec(&bundle).map_err(|e| FhirError::internal(&e))?;
    Ok(json_response(StatusCode::OK, body))
}

/// The Patient id of a stored resource's `subject` (`Patient/<id>`).
fn subject_patient(body: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Subject {
        reference: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct WithSubject {
        subject: Option<Subject>,
    }
    let parsed: WithSubject = serde_json::from_str(body).ok()?;
    let reference = parsed.subject?.reference?;
    reference.strip_prefix("Patient/").map(str::to_owned)
}

async fn type_history(
    State(state): State<FhirState>,
    caller: Caller,
    Path(type_name): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    history(state, &caller, &type_name, None, &headers, raw.as_deref()).await
}

async fn instance_history(
    State(state): State<FhirState>,
    caller: Caller,
    Path((type_name, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, FhirError> {
    check_id(&id)?;
    history(
        state,
        &caller,
        &type_name,
        Some(id),
        &headers,
        raw.as_deref(),
    )
    .await
}

async fn history(
    state: FhirState,
    caller: &Caller,
    type_name: &str,
    id: Option<String>,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<Response, FhirError> {
    let pairs = query_pairs(raw);
    negotiate(headers, &pairs)?;
    let rt = resource_type(type_name)?;
    caller.allow(
        rt,
        if id.is_some() {
            Interaction::HistoryInstance
        } else {
            Interaction::HistoryType
        },
    )?;
    let mut count = params::DEFAULT_COUNT;
    let mut offset = 0;
    let mut since = None;
    let mut canonical = Vec::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| {
                        FhirError::bad_request("_count must be a whole number").at("_count")
                    })?
                    .min(params::MAX_COUNT);
            }
            "_offset" => {
                offset = v.parse().map_err(|_| {
                    FhirError::bad_request("_offset must be a whole number").at("_offset")
                })?;
            }
            "_since" => {
                let (low, _) = crate::projections::search::range(v).ok_or_else(|| {
                    FhirError::bad_request(format!("_since={v} is not an instant")).at("_since")
                })?;
                since = Some(low);
                canonical.push((k.clone(), v.clone()));
            }
            "_format" => {}
            other if strict_handling(headers) => {
                return Err(FhirError::bad_request(format!(
                    "parameter {other} is not supported on _history"
                ))
                .at(other.to_owned()));
            }
            _ => {}
        }
    }
    let query = HistoryQuery {
        resource_type: rt,
        id: id.clone(),
        since,
        count,
        offset,
    };
    let tenant = caller.tenant();
    let page = state.store.fhir_history(tenant, &query).await?;
    if page.total == 0
        && let Some(id) = &id
        && state.store.fhir_read(tenant, rt, id, None).await?.is_none()
    {
        return Err(FhirError::not_found(format!("{rt}/{id} is not known")));
    }
    let base = base_url(&state, headers);
    let mut entries = Vec::with_capacity(page.resources.len());
    for r in &page.resources {
        let created = r.version == 1;
        entries.push(Entry {
            full_url: format!("{base}/{}/{}", r.resource_type, r.id),
            resource: raw_json(&r.body)?,
            search: None,
            request: Some(EntryRequest {
                method: if created { "POST" } else { "PUT" },
                url: if created {
                    r.resource_type.as_str().to_owned()
                } else {
                    format!("{}/{}", r.resource_type, r.id)
                },
            }),
            response: Some(EntryResponse {
                status: if created { "201 Created" } else { "200 OK" },
                etag: etag(r.version),
                last_modified: r
                    .last_updated
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            }),
        });
    }
    let path = match &id {
        Some(id) => format!("{rt}/{id}/_history"),
        None => format!("{rt}/_history"),
    };
    let links = paging_links(&base, &path, &canonical, count, offset, page.total);
    bundle_response("history", page.total, links, entries)
}
