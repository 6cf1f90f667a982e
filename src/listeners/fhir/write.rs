//! FHIR writes: create and update of Patient and ServiceRequest, conditional create
//! (`If-None-Exist`), `If-Match` (412 on a stale version) and `transaction` Bundles.
//!
//! A write goes the way an HL7 message goes: the body is checked against the FHIR model (errors
//! name the element), mapped to domain events by the declarative files in `mappings/fhir/`, and
//! appended through the same group committer, in the same transaction as its inbound log row and
//! the read models. So the answer's resource is the projection of the events, exactly what a read
//! returns, and outbound subscribers see a FHIR write as they see an ADT or ORM message.
//!
//! Ids: a created resource's stream (and so its id) is keyed by its identifier as for HL7 feeds
//! (`mappings/fhir/*.yaml` say which), so an ADT message for the same MRN updates the Patient a
//! client created. A resource without an identifier gets a stream of its own. A create of an
//! identifier Ferry already holds is refused with 409: update it, or create conditionally.
//! Preconditions (the resource must not exist for a create; its version must equal `If-Match`)
//! are checked inside the commit, on the locked rows.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_fhir::codes::IssueType;
use serde_json::{Value as J, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::outcome::FhirError;
use super::{
    Caller, FHIR_JSON, FhirState, base_url, check_id, etag, negotiate, query_pairs, resource_type,
};
use crate::auth::Interaction;
use crate::domain::{StreamKind, stream_id};
use crate::mapping::{FhirInteraction, MapError, Mapped, MappingSet};
use crate::projections::{ResourceKey, ResourceType, resource_id};
use crate::store::group_commit::CommitError;
use crate::store::{
    ExpectedVersion, InboundRecord, InboundStatus, IngestWrite, NewEvent, Precondition, StoreError,
};

/// The name writes are logged under in the inbound log (`listener` column).
const CHANNEL: &str = "fhir";

/// One write of a request (a plain create/update, or one entry of a transaction).
struct Planned {
    resource_type: ResourceType,
    id: String,
    created: bool,
    events: Vec<NewEvent>,
    preconditions: Vec<Precondition>,
    /// `If-None-Exist` matched: nothing to write, answer with this resource.
    existing: Option<crate::store::StoredResource>,
}

/// What a request asks of one resource.
struct Request<'a> {
    interaction: FhirInteraction,
    resource_type: ResourceType,
    /// The id in the URL (update).
    id: Option<&'a str>,
    body: J,
    if_match: Option<i64>,
    if_none_exist: Option<String>,
    /// Where errors point: `Patient`, or `Bundle.entry[2].resource` inside a transaction.
    at: String,
}

pub(super) async fn create(
    State(state): State<FhirState>,
    caller: Caller,
    Path(type_name): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, FhirError> {
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let rt = writable_type(&type_name, FhirInteraction::Create)?;
    caller.allow(rt, Interaction::Create)?;
    let value = parse_body(&body)?;
    let request = Request {
        interaction: FhirInteraction::Create,
        resource_type: rt,
        id: None,
        body: value,
        if_match: None,
        if_none_exist: header_text(&headers, "if-none-exist")?,
        at: rt.as_str().to_owned(),
    };
    single(state, &caller, &headers, request, &body).await
}

pub(super) async fn update(
    State(state): State<FhirState>,
    caller: Caller,
    Path((type_name, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, FhirError> {
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let rt = writable_type(&type_name, FhirInteraction::Update)?;
    caller.allow(rt, Interaction::Update)?;
    check_id(&id)?;
    let if_match = match header_text(&headers, "if-match")? {
        Some(tag) => Some(parse_etag(&tag)?),
        None => None,
    };
    let value = parse_body(&body)?;
    let request = Request {
        interaction: FhirInteraction::Update,
        resource_type: rt,
        id: Some(&id),
        body: value,
        if_match,
        if_none_exist: None,
        at: rt.as_str().to_owned(),
    };
    single(state, &caller, &headers, request, &body).await
}

/// `POST /fhir` with a `transaction` Bundle: every entry is applied, or none. A refused Bundle is
/// kept in the inbound log with the reason, as a refused single write is.
pub(super) async fn transaction(
    State(state): State<FhirState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, FhirError> {
    negotiate(&headers, &query_pairs(raw.as_deref()))?;
    let result = apply_transaction(&state, &caller, &headers, &body).await;
    if let Err(e) = &result {
        log_rejected(&state, caller.tenant(), "Bundle transaction", &body, e).await;
    }
    result
}

async fn apply_transaction(
    state: &FhirState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, FhirError> {
    let bundle = parse_body(body)?;
    if bundle.get("resourceType").and_then(J::as_str) != Some("Bundle") {
        return Err(FhirError::bad_request(
            "POST to the base URL takes a Bundle of type transaction",
        )
        .at("resourceType"));
    }
    if let Err(e) = ferry_fhir::from_value(&bundle) {
        return Err(invalid(e));
    }
    if bundle.get("type").and_then(J::as_str) != Some("transaction") {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::NotSupported,
            "Ferry processes Bundles of type transaction only",
        )
        .at("Bundle.type"));
    }
    let entries = bundle
        .get("entry")
        .and_then(J::as_array)
        .cloned()
        .unwrap_or_default();
    let mappings = state.mappings.load_full();
    let tenant = caller.tenant().to_owned();
    // fullUrl (`urn:uuid:…`) of entries created here → their new `Type/id`, and the resources
    // themselves, for references between entries.
    let mut local: HashMap<String, (String, J)> = HashMap::new();
    let mut planned = Vec::new();
    // POSTs before PUTs, as FHIR orders a transaction's processing; the answer keeps entry order.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| {
        entries[i]
            .pointer("/request/method")
            .and_then(J::as_str)
            .map_or(2, |m| if m == "POST" { 0 } else { 1 })
    });
    let mut slots: Vec<Option<Planned>> = (0..entries.len()).map(|_| None).collect();
    for i in order {
        let entry = &entries[i];
        let at = format!("Bundle.entry[{i}]");
        let method = entry
            .pointer("/request/method")
            .and_then(J::as_str)
            .unwrap_or_default();
        let url = entry
            .pointer("/request/url")
            .and_then(J::as_str)
            .unwrap_or_default();
        let Some(resource) = entry.get("resource").cloned() else {
            return Err(
                FhirError::bad_request("the entry has no resource").at(format!("{at}.resource"))
            );
        };
        let (interaction, type_name, id) = match (method, url.split_once('/')) {
            ("POST", None) => (FhirInteraction::Create, url, None),
            ("PUT", Some((t, id))) => (FhirInteraction::Update, t, Some(id)),
            _ => {
                return Err(FhirError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    IssueType::NotSupported,
                    format!(
                        "{method} {url}: a transaction takes POST <type> (create) and PUT <type>/<id> (update)"
                    ),
                )
                .at(format!("{at}.request")));
            }
        };
        let rt =
            writable_type(type_name, interaction).map_err(|e| e.at(format!("{at}.request.url")))?;
        caller.allow(
            rt,
            match interaction {
                FhirInteraction::Create => Interaction::Create,
                FhirInteraction::Update => Interaction::Update,
            },
        )?;
        if let Some(id) = id {
            check_id(id).map_err(|e| e.at(format!("{at}.request.url")))?;
        }
        let if_match = match entry.pointer("/request/ifMatch").and_then(J::as_str) {
            Some(tag) => Some(parse_etag(tag).map_err(|e| e.at(format!("{at}.request.ifMatch")))?),
            None => None,
        };
        let mut resource = resource;
        resolve_local_references(&mut resource, &local);
        let request = Request {
            interaction,
            resource_type: rt,
            id,
            body: resource,
            if_match,
            if_none_exist: entry
                .pointer("/request/ifNoneExist")
                .and_then(J::as_str)
                .map(str::to_owned),
            at: format!("{at}.resource"),
        };
        let local_body = request.body.clone();
        let plan = plan(state, &mappings, &tenant, request, &local).await?;
        if let Some(full_url) = entry.get("fullUrl").and_then(J::as_str) {
            local.insert(
                full_url.to_owned(),
                (format!("{}/{}", plan.resource_type, plan.id), local_body),
            );
        }
        slots[i] = Some(plan);
    }
    planned.extend(slots.into_iter().flatten());
    let inbound_id = commit(state, &tenant, "Bundle transaction", body, &mut planned).await?;
    let base = base_url(state, headers);
    let mut response_entries = Vec::with_capacity(planned.len());
    for p in &planned {
        let stored = match &p.existing {
            Some(r) => Some(r.clone()),
            None => {
                state
                    .store
                    .fhir_read(&tenant, p.resource_type, &p.id, None)
                    .await?
            }
        };
        let Some(r) = stored else {
            return Err(FhirError::internal(&format!(
                "{}/{} is missing after transaction {inbound_id}",
                p.resource_type, p.id
            )));
        };
        let status = if p.existing.is_some() {
            "200 OK"
        } else if p.created {
            "201 Created"
        } else {
            "200 OK"
        };
        response_entries.push(json!({
            "fullUrl": format!("{base}/{}/{}", r.resource_type, r.id),
            "response": {
                "status": status,
                "location": format!("{base}/{}/{}/_history/{}", r.resource_type, r.id, r.version),
                "etag": etag(r.version),
                "lastModified": r.last_updated
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            }
        }));
    }
    let answer = json!({
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": response_entries,
    });
    let mut response = (
        StatusCode::OK,
        serde_json::to_vec(&answer).unwrap_or_default(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    Ok(response)
}

/// A create or update of one resource, answered with the resource as stored.
async fn single(
    state: FhirState,
    caller: &Caller,
    headers: &HeaderMap,
    request: Request<'_>,
    raw: &[u8],
) -> Result<Response, FhirError> {
    let mappings = state.mappings.load_full();
    let tenant = caller.tenant().to_owned();
    let what = format!("{} {}", request.resource_type, request.interaction.as_str());
    let rt = request.resource_type;
    let conditional = request.if_none_exist.clone();
    let planned = match plan(&state, &mappings, &tenant, request, &HashMap::new()).await {
        Ok(p) => p,
        Err(e) => {
            log_rejected(&state, &tenant, &what, raw, &e).await;
            return Err(e);
        }
    };
    let base = base_url(&state, headers);
    if let Some(existing) = planned.existing {
        // If-None-Exist matched one resource: nothing is written, the match is the answer.
        return Ok(written(StatusCode::OK, existing, &base));
    }
    let mut planned = vec![planned];
    if let Err(e) = commit(&state, &tenant, &what, raw, &mut planned).await {
        // Two conditional creates of the same resource raced: the other one created it between
        // our search and our commit (its identifier keys the same stream). FHIR's answer to a
        // conditional create that finds its match is that match.
        if e.status == StatusCode::CONFLICT
            && let Some(criteria) = &conditional
            && let Some(existing) = find_one(&state, &tenant, rt, criteria).await?
        {
            return Ok(written(StatusCode::OK, existing, &base));
        }
        return Err(e);
    }
    let p = &planned[0];
    let stored = state.store.fhir_read(&tenant, rt, &p.id, None).await?;
    let r = stored.ok_or_else(|| {
        FhirError::internal(&format!("{rt}/{} is missing right after its write", p.id))
    })?;
    let status = if p.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(written(status, r, &base))
}

fn written(status: StatusCode, r: crate::store::StoredResource, base: &str) -> Response {
    super::versioned(status, r, base, header::LOCATION)
}

/// Checks, resolves and maps one resource; reads what the preconditions depend on.
async fn plan(
    state: &FhirState,
    mappings: &MappingSet,
    tenant: &str,
    request: Request<'_>,
    local: &HashMap<String, (String, J)>,
) -> Result<Planned, FhirError> {
    let rt = request.resource_type;
    let at = request.at.clone();
    let mut body = request.body;
    let Some(object) = body.as_object_mut() else {
        return Err(
            FhirError::bad_request("the body is not a FHIR resource (a JSON object)").at(at),
        );
    };
    let declared = object
        .get("resourceType")
        .and_then(J::as_str)
        .unwrap_or_default()
        .to_owned();
    if declared != rt.as_str() {
        return Err(FhirError::bad_request(format!(
            "the body is a {:?} resource, the URL names {rt}",
            declared
        ))
        .at(format!("{at}.resourceType")));
    }
    // Server-assigned: the client's meta is not kept; a create's id is ignored, as FHIR says.
    object.remove("meta");
    match (request.interaction, request.id) {
        (FhirInteraction::Create, _) => {
            object.remove("id");
        }
        (FhirInteraction::Update, Some(url_id)) => match object.get("id").and_then(J::as_str) {
            Some(id) if id == url_id => {}
            Some(id) => {
                return Err(FhirError::bad_request(format!(
                    "the body's id {id:?} differs from the id in the URL {url_id:?}"
                ))
                .at(format!("{at}.id")));
            }
            None => {
                return Err(FhirError::bad_request(
                    "an update's body needs the resource's id (the same as in the URL)",
                )
                .at(format!("{at}.id")));
            }
        },
        (FhirInteraction::Update, None) => {
            return Err(FhirError::bad_request("an update needs an id in the URL").at(at));
        }
    }
    if let Err(e) = ferry_fhir::from_value(&body) {
        return Err(relocate(invalid(e), rt, &at));
    }

    // Conditional create: a match is the answer; several are an error (412, as FHIR says).
    if let Some(criteria) = &request.if_none_exist
        && let Some(existing) = find_one(state, tenant, rt, criteria).await?
    {
        return Ok(Planned {
            resource_type: rt,
            id: existing.id.clone(),
            created: false,
            events: Vec::new(),
            preconditions: Vec::new(),
            existing: Some(existing),
        });
    }

    // Update: the resource must exist, and be at the version If-Match names.
    let mut current_version = None;
    let mut current_subject = None;
    if let Some(id) = request.id {
        let current = state.store.fhir_read(tenant, rt, id, None).await?;
        let Some(current) = current else {
            return Err(FhirError::not_found(format!(
                "{rt}/{id} is not known; Ferry assigns ids when it creates a resource (POST), so an update cannot create one"
            )));
        };
        if let Some(expected) = request.if_match
            && expected != current.version
        {
            return Err(stale(rt, id, expected, current.version));
        }
        current_version = Some(current.version);
        current_subject = serde_json::from_str::<J>(&current.body).ok().and_then(|b| {
            b.pointer("/subject/reference")
                .and_then(J::as_str)
                .and_then(|r| r.strip_prefix("Patient/"))
                .map(str::to_owned)
        });
    }

    // ServiceRequest.subject: the Patient it names, for the mapping to read (`subject.resolved`).
    let mut patient_stream = None;
    if rt == ResourceType::ServiceRequest {
        patient_stream = resolve_subject(state, tenant, &mut body, &at, local).await?;
        // An order belongs to its patient: an update naming another one would be silently
        // ignored by the read models, so it is refused (a merge is how records move).
        if let (Some(subject), Some(stream)) = (&current_subject, &patient_stream)
            && format!("{}-{subject}", StreamKind::Patient.as_str()) != *stream
        {
            return Err(unprocessable(
                format!(
                    "this ServiceRequest is for Patient/{subject}; an order cannot move to another patient (merge the patients instead)"
                ),
                format!("{at}.subject.reference"),
            ));
        }
    }

    let mapped = mappings
        .map_fhir(request.interaction, &body)
        .map_err(|e| mapping_error(&e, rt, &at))?;
    let Mapped::Events(events) = mapped else {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::NotSupported,
            format!(
                "no mapping in mappings/fhir/ turns this {rt} {} into an event",
                request.interaction.as_str()
            ),
        )
        .at(at));
    };

    let kind = own_stream(rt);
    let own = match request.id {
        Some(id) => format!("{}-{id}", kind.as_str()),
        None => {
            let keyed = events
                .iter()
                .find(|e| e.stream == kind && !e.stream_key.1.is_empty());
            match keyed {
                Some(e) => stream_id(kind, tenant, e.stream_key.0.as_deref(), &e.stream_key.1),
                None => format!("{}-{}", kind.as_str(), Uuid::now_v7().hyphenated()),
            }
        }
    };
    let id = resource_id(&own).to_owned();
    let key = ResourceKey::new(tenant, rt, id.clone());
    // A create: the resource must not exist when the write commits (an identifier Ferry holds is
    // a 409). An update with If-Match: the version read above must still be current then.
    // Without If-Match an update applies to whatever version is current by then.
    let preconditions = match (request.interaction, request.if_match) {
        (FhirInteraction::Create, _) => vec![Precondition { key, version: None }],
        (FhirInteraction::Update, Some(_)) => vec![Precondition {
            key,
            version: current_version,
        }],
        (FhirInteraction::Update, None) => Vec::new(),
    };
    let new_events = events
        .into_iter()
        .map(|e| {
            let mut streams = e.keys.ids(tenant);
            streams.insert(kind.as_str().to_owned(), own.clone().into());
            if let Some(p) = &patient_stream {
                streams.insert(StreamKind::Patient.as_str().to_owned(), p.clone().into());
            }
            NewEvent {
                stream_id: own.clone(),
                expected_version: ExpectedVersion::Any,
                deliveries: Vec::new(),
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
                metadata: json!({
                    "channel": CHANNEL,
                    "interaction": request.interaction.as_str(),
                    "resource": format!("{rt}/{id}"),
                    "mapping": e.mapping,
                    "mapping_version": mappings.version(),
                    "streams": streams,
                }),
            }
        })
        .collect();
    Ok(Planned {
        resource_type: rt,
        id,
        created: request.interaction == FhirInteraction::Create,
        events: new_events,
        preconditions,
        existing: None,
    })
}

/// The one resource `If-None-Exist` criteria match; `None` when none does; 412 when several do.
async fn find_one(
    state: &FhirState,
    tenant: &str,
    rt: ResourceType,
    criteria: &str,
) -> Result<Option<crate::store::StoredResource>, FhirError> {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(criteria.trim_start_matches('?').as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let mut search = super::params::parse(rt, &pairs, true).map_err(|e| e.at("If-None-Exist"))?;
    search.query.count = 2;
    search.query.offset = 0;
    let page = state.store.fhir_search(tenant, &search.query).await?;
    if page.resources.len() > 1 {
        return Err(FhirError::new(
            StatusCode::PRECONDITION_FAILED,
            IssueType::MultipleMatches,
            format!("If-None-Exist {criteria:?} matches more than one {rt}"),
        ));
    }
    Ok(page.resources.into_iter().next())
}

/// Commits the planned writes as one inbound record and one transaction. Returns the inbound id.
async fn commit(
    state: &FhirState,
    tenant: &str,
    what: &str,
    raw: &[u8],
    planned: &mut [Planned],
) -> Result<Uuid, FhirError> {
    let inbound_id = Uuid::now_v7();
    let received = time::format_description::well_known::Rfc3339;
    let now = OffsetDateTime::now_utc();
    let mut events = Vec::new();
    let mut preconditions = Vec::new();
    for p in planned.iter_mut() {
        for e in &mut p.events {
            if let Some(m) = e.metadata.as_object_mut() {
                m.insert(
                    "inbound_id".into(),
                    inbound_id.hyphenated().to_string().into(),
                );
                m.insert(
                    "received_at".into(),
                    now.format(&received).unwrap_or_default().into(),
                );
            }
        }
        events.append(&mut p.events);
        preconditions.append(&mut p.preconditions);
    }
    if events.is_empty() {
        return Ok(inbound_id);
    }
    let write = IngestWrite {
        inbound: inbound_record(inbound_id, tenant, what, raw, now, None),
        idempotency: None,
        events,
        preconditions,
    };
    let failed = match state.committer.commit(write).await {
        Ok(_) => return Ok(inbound_id),
        Err(CommitError::Store(e)) => e,
        Err(e) => return Err(FhirError::internal(&e)),
    };
    match &*failed {
        StoreError::PreconditionFailed {
            resource,
            expected,
            actual,
        } => Err(if expected == "no resource" {
            FhirError::new(
                StatusCode::CONFLICT,
                IssueType::Duplicate,
                format!(
                    "{resource} exists already: a resource with this identifier is known (update it, or create with If-None-Exist)"
                ),
            )
        } else {
            FhirError::new(
                StatusCode::PRECONDITION_FAILED,
                IssueType::Conflict,
                format!(
                    "{resource} is at version {actual}, not {expected} (If-Match): read it again and retry"
                ),
            )
        }),
        _ => Err(FhirError::internal(&failed)),
    }
}

fn inbound_record(
    id: Uuid,
    tenant: &str,
    what: &str,
    raw: &[u8],
    now: OffsetDateTime,
    error: Option<String>,
) -> InboundRecord {
    InboundRecord {
        id,
        hospital_id: tenant.to_owned(),
        listener: CHANNEL.to_owned(),
        peer: String::new(),
        received_at: now,
        raw: raw.to_vec(),
        decoded: std::str::from_utf8(raw).ok().map(str::to_owned),
        charset: Some("UTF-8".to_owned()),
        sending_application: None,
        sending_facility: None,
        control_id: None,
        message_type: Some(what.to_owned()),
        status: if error.is_some() {
            InboundStatus::Rejected
        } else {
            InboundStatus::Accepted
        },
        ack_code: None,
        error,
    }
}

/// A refused write is kept in the inbound log with the reason, as a refused HL7 message is.
async fn log_rejected(state: &FhirState, tenant: &str, what: &str, raw: &[u8], e: &FhirError) {
    if e.status.is_server_error() {
        return;
    }
    let record = inbound_record(
        Uuid::now_v7(),
        tenant,
        what,
        raw,
        OffsetDateTime::now_utc(),
        Some(e.diagnostics.clone()),
    );
    let write = IngestWrite {
        inbound: record,
        idempotency: None,
        events: Vec::new(),
        preconditions: Vec::new(),
    };
    if let Err(error) = state.committer.commit(write).await {
        tracing::error!(%error, "Could not log a refused FHIR write.");
    }
}

/// The stream a resource type's events go on.
fn own_stream(rt: ResourceType) -> StreamKind {
    match rt {
        ResourceType::ServiceRequest => StreamKind::Order,
        _ => StreamKind::Patient,
    }
}

/// `subject` of a ServiceRequest: a reference to a Patient Ferry holds (or one created earlier in
/// the same transaction) gets its content as `subject.resolved`; a logical reference (identifier)
/// is left to the mapping. Returns the Patient's stream when the reference named one.
async fn resolve_subject(
    state: &FhirState,
    tenant: &str,
    body: &mut J,
    at: &str,
    local: &HashMap<String, (String, J)>,
) -> Result<Option<String>, FhirError> {
    let Some(subject) = body.get_mut("subject").and_then(J::as_object_mut) else {
        return Err(unprocessable(
            "a ServiceRequest needs a subject: a reference to a Patient Ferry holds (Patient/<id>) or the patient's identifier",
            format!("{at}.subject"),
        ));
    };
    subject.remove("resolved");
    let reference = subject
        .get("reference")
        .and_then(J::as_str)
        .map(str::to_owned);
    let Some(reference) = reference else {
        if subject.get("identifier").is_some() {
            return Ok(None);
        }
        return Err(unprocessable(
            "the subject names no patient: give a reference to a Patient Ferry holds (Patient/<id>) or the patient's identifier",
            format!("{at}.subject"),
        ));
    };
    let base = state.base_url.as_deref().unwrap_or("");
    let relative = if !base.is_empty() {
        reference
            .strip_prefix(base)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(&reference)
    } else {
        &reference
    };
    let id = match relative.split_once('/') {
        Some(("Patient", id)) if check_id(id).is_ok() => id.to_owned(),
        _ => {
            return Err(unprocessable(
                format!(
                    "subject {reference:?} is not a reference to a Patient Ferry holds (Patient/<id>)"
                ),
                format!("{at}.subject.reference"),
            ));
        }
    };
    let target = format!("Patient/{id}");
    let created_here = local
        .values()
        .find(|(t, _)| *t == target)
        .map(|(_, r)| r.clone());
    let stored = match created_here {
        Some(r) => Some(r),
        None => match state
            .store
            .fhir_read(tenant, ResourceType::Patient, &id, None)
            .await?
        {
            Some(p) => {
                Some(serde_json::from_str::<J>(&p.body).map_err(|e| FhirError::internal(&e))?)
            }
            None => None,
        },
    };
    let content = match stored {
        Some(content) => content,
        None => {
            return Err(unprocessable(
                format!("subject Patient/{id} is not known"),
                format!("{at}.subject.reference"),
            ));
        }
    };
    subject.insert("resolved".into(), content);
    Ok(Some(format!("{}-{id}", StreamKind::Patient.as_str())))
}

/// Rewrites references to resources created earlier in the same transaction (`urn:uuid:…`
/// fullUrls) to their new `Type/id`, and hands their content to subject resolution.
fn resolve_local_references(resource: &mut J, local: &HashMap<String, (String, J)>) {
    match resource {
        J::Object(map) => {
            if let Some(J::String(r)) = map.get_mut("reference")
                && let Some((target, _)) = local.get(r.as_str())
            {
                *r = target.clone();
            }
            for (_, v) in map.iter_mut() {
                resolve_local_references(v, local);
            }
        }
        J::Array(items) => {
            for v in items {
                resolve_local_references(v, local);
            }
        }
        _ => {}
    }
}

fn writable_type(name: &str, interaction: FhirInteraction) -> Result<ResourceType, FhirError> {
    let rt = resource_type(name)?;
    if !crate::mapping::WRITABLE_RESOURCES.contains(&rt.as_str()) {
        return Err(FhirError::not_supported(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} of {rt} is not supported: Ferry accepts writes of {}; see /fhir/metadata",
                interaction.as_str(),
                crate::mapping::WRITABLE_RESOURCES.join(" and ")
            ),
        ));
    }
    Ok(rt)
}

fn parse_body(body: &[u8]) -> Result<J, FhirError> {
    serde_json::from_slice(body)
        .map_err(|e| FhirError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, FhirError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| FhirError::bad_request(format!("the {name} header is not text")))
        })
        .transpose()
}

/// `W/"3"` (or `"3"`, or `3`) → 3.
fn parse_etag(tag: &str) -> Result<i64, FhirError> {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    t.parse::<i64>().map_err(|_| {
        FhirError::bad_request(format!(
            "If-Match {tag:?} is not a version ETag such as W/\"3\""
        ))
        .at("If-Match")
    })
}

fn stale(rt: ResourceType, id: &str, expected: i64, actual: i64) -> FhirError {
    FhirError::new(
        StatusCode::PRECONDITION_FAILED,
        IssueType::Conflict,
        format!(
            "{rt}/{id} is at version {actual}, not {expected} (If-Match): read it again and retry"
        ),
    )
}

fn unprocessable(diagnostics: impl Into<String>, at: String) -> FhirError {
    FhirError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        IssueType::Processing,
        diagnostics,
    )
    .at(at)
}

/// A body the FHIR model refuses: 400 at the element.
fn invalid(e: ferry_fhir::ParseError) -> FhirError {
    let error = FhirError::bad_request(e.message);
    if e.path.is_empty() {
        error
    } else {
        error.at(e.path)
    }
}

/// Inside a transaction, `Patient.gender` becomes `Bundle.entry[2].resource.gender`.
fn relocate(mut e: FhirError, rt: ResourceType, at: &str) -> FhirError {
    if at != rt.as_str()
        && let Some(x) = e.expression.take()
    {
        e.expression = Some(match x.strip_prefix(rt.as_str()) {
            Some(rest) => format!("{at}{rest}"),
            None => x,
        });
    }
    e
}

/// A mapping's refusal: 422 at the element it names.
fn mapping_error(e: &MapError, rt: ResourceType, at: &str) -> FhirError {
    let error = FhirError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        IssueType::Processing,
        format!("{} (mapping {})", e.message, e.mapping),
    );
    let error = if e.path.is_empty() {
        error
    } else {
        error.at(e.path.clone())
    };
    relocate(error, rt, at)
}
