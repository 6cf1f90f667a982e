//! How each domain event changes the read models.
//!
//! The rules, in one place:
//! * ADT events (patient, encounter and merge payloads) are the master of demographics: they replace
//!   the Patient's data. Order and result messages carry a PID too, often sparser (no address, one
//!   identifier); they create a Patient Ferry has not seen, but never overwrite one.
//! * An encounter event sets Encounter.status by what happened (admitted → in-progress, discharged
//!   → finished, admission cancelled → cancelled, discharge cancelled → in-progress again) and
//!   updates the visit field by field: a value the message leaves empty keeps the one known.
//! * Order events set ServiceRequest.status (placed → active, cancelled/discontinued → revoked,
//!   status changed → ORC-5 read as FHIR's request status) and update the order field by field.
//! * A result creates or updates a DiagnosticReport (one per order, or per message without one) and
//!   one Observation per OBX (keyed by report, OBX-1 and code, so a corrected result replaces the
//!   preliminary one).
//! * A merge retires the absorbed Patient (inactive, `replaced-by` link), links the survivor
//!   (`replaces`) and moves every Encounter, ServiceRequest, Observation and DiagnosticReport of the
//!   absorbed record to the survivor.

use serde::Deserialize;
use uuid::Uuid;

use super::{
    EncounterState, EventView, ObservationState, OrderState, PatientState, ProjectionError,
    Projector, ReportState, ResourceKey, ResourceType, State,
};
use crate::domain::{
    self, EncounterPayload, MergePayload, OrderPayload, PatientPayload, PayloadKind, ResultPayload,
    StreamKind,
};

/// Namespace of the name-based ids of reports and observations (fixed once; changing it would move
/// every such resource).
const RESULT_NAMESPACE: Uuid = Uuid::from_u128(0x8f0e_61c2_7d4a_4b9e_a3f5_0c27_d9b1_44e6);

/// What a batch needs loaded before its events can be applied.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Resources the events name.
    pub keys: Vec<ResourceKey>,
    /// (tenant, Patient id) of records being merged away: every resource belonging to them is
    /// needed too, since it moves to the survivor.
    pub patients: Vec<(String, String)>,
}

/// The resources a batch of events touches.
pub fn plan<'a>(events: impl IntoIterator<Item = EventView<'a>>) -> Plan {
    let mut plan = Plan::default();
    let mut seen = std::collections::HashSet::new();
    for event in events {
        let ids = Ids::of(&event);
        let mut push = |t: ResourceType, id: &Option<String>| {
            if let Some(id) = id {
                let key = ResourceKey::new(event.tenant, t, id.clone());
                if seen.insert(key.clone()) {
                    plan.keys.push(key);
                }
            }
        };
        push(ResourceType::Patient, &ids.patient);
        push(ResourceType::Encounter, &ids.encounter);
        push(ResourceType::ServiceRequest, &ids.order);
        if event.event_type == "ResultReported" {
            let report = ids.report(&event);
            push(ResourceType::DiagnosticReport, &Some(report.clone()));
            if let Ok(payload) = event.payload.read::<ResultPayload>() {
                for (n, o) in payload.observations.iter().enumerate() {
                    push(
                        ResourceType::Observation,
                        &Some(observation_id(&report, n, o)),
                    );
                }
            }
        }
        if let Some(old) = merged_patient(&event) {
            push(ResourceType::Patient, &Some(old.clone()));
            plan.patients.push((event.tenant.to_owned(), old));
        }
    }
    plan
}

/// The stream-derived ids an event names, from `metadata.streams`.
struct Ids {
    patient: Option<String>,
    encounter: Option<String>,
    order: Option<String>,
}

impl Ids {
    fn of(event: &EventView<'_>) -> Self {
        let stream = |kind: StreamKind| {
            event
                .metadata
                .get("streams")
                .and_then(|s| s.get(kind.as_str()))
                .and_then(serde_json::Value::as_str)
                .map(|s| resource_id(s).to_owned())
        };
        Self {
            patient: stream(StreamKind::Patient),
            encounter: stream(StreamKind::Encounter),
            order: stream(StreamKind::Order),
        }
    }

    /// The DiagnosticReport of a result: the order's (same UUID as its ServiceRequest), or, for a
    /// result without an order, one per message.
    fn report(&self, event: &EventView<'_>) -> String {
        match &self.order {
            Some(order) => order.clone(),
            None => {
                let inbound = event
                    .metadata
                    .get("inbound_id")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                let name = format!("{}\u{1f}report\u{1f}{inbound}", event.tenant);
                Uuid::new_v5(&RESULT_NAMESPACE, name.as_bytes())
                    .hyphenated()
                    .to_string()
            }
        }
    }
}

/// `patient-<uuid>` → `<uuid>`: the resource id of a stream.
pub fn resource_id(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(_, id)| id)
}

fn observation_id(report: &str, index: usize, o: &domain::Observation) -> String {
    let position = o
        .set_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map_or_else(|| format!("#{index}"), str::to_owned);
    let name = format!("{report}\u{1f}{position}\u{1f}{}", o.code.code.as_str());
    Uuid::new_v5(&RESULT_NAMESPACE, name.as_bytes())
        .hyphenated()
        .to_string()
}

/// The Patient id of the record a `PatientsMerged` retires (from its first merged identifier, as
/// the patient stream of that record was derived).
fn merged_patient(event: &EventView<'_>) -> Option<String> {
    if event.event_type != "PatientsMerged" {
        return None;
    }
    let payload = event.payload.value().ok()?;
    let identifiers = payload.get("merged")?.get("identifiers")?;
    let wrapped = serde_json::json!({ "patient": { "identifiers": identifiers } });
    let (authority, value) = domain::stream_key(StreamKind::Patient, &wrapped)?;
    let stream = domain::stream_id(
        StreamKind::Patient,
        event.tenant,
        authority.as_deref(),
        &value,
    );
    Some(resource_id(&stream).to_owned())
}

fn payload<'a, T: Deserialize<'a>>(event: &EventView<'a>) -> Result<T, ProjectionError> {
    event.payload.read().map_err(|e| ProjectionError::Payload {
        event_type: event.event_type.to_owned(),
        reason: e.to_string(),
    })
}

pub(super) fn apply(p: &mut Projector, event: &EventView<'_>) -> Result<(), ProjectionError> {
    let Some(spec) = domain::event_spec(event.event_type) else {
        // An event type this version does not know (written by a newer Ferry): nothing to show.
        return Ok(());
    };
    let ids = Ids::of(event);
    let tenant = event.tenant;
    match spec.payload {
        PayloadKind::Patient => {
            let data: PatientPayload = payload(event)?;
            let Some(patient) = &ids.patient else {
                return Ok(());
            };
            put_patient(p, tenant, patient, &data.patient, true)?;
            if let Some(encounter) = &data.encounter {
                put_encounter(p, event, &ids, patient, encounter)?;
            }
        }
        PayloadKind::Encounter => {
            let data: EncounterPayload = payload(event)?;
            let Some(patient) = &ids.patient else {
                return Ok(());
            };
            put_patient(p, tenant, patient, &data.patient, true)?;
            put_encounter(p, event, &ids, patient, &data.encounter)?;
        }
        PayloadKind::Merge => {
            let data: MergePayload = payload(event)?;
            let Some(survivor) = &ids.patient else {
                return Ok(());
            };
            put_patient(p, tenant, survivor, &data.patient, true)?;
            if let Some(old) = merged_patient(event).filter(|old| old != survivor) {
                merge(p, tenant, survivor, &old, &data.merged)?;
            }
        }
        PayloadKind::Order => {
            let data: OrderPayload = payload(event)?;
            let Some(patient) = &ids.patient else {
                return Ok(());
            };
            put_patient(p, tenant, patient, &data.patient, false)?;
            if let Some(encounter) = &data.encounter {
                put_encounter(p, event, &ids, patient, encounter)?;
            }
            put_order(p, event, &ids, patient, &data.order)?;
        }
        PayloadKind::Result => {
            let data: ResultPayload = payload(event)?;
            let Some(patient) = &ids.patient else {
                return Ok(());
            };
            put_patient(p, tenant, patient, &data.patient, false)?;
            if let Some(encounter) = &data.encounter {
                put_encounter(p, event, &ids, patient, encounter)?;
            }
            if let Some(order) = &data.order {
                put_order(p, event, &ids, patient, order)?;
            }
            put_result(p, event, &ids, patient, &data)?;
        }
    }
    Ok(())
}

fn put_patient(
    p: &mut Projector,
    tenant: &str,
    id: &str,
    patient: &domain::Patient,
    authoritative: bool,
) -> Result<(), ProjectionError> {
    let key = ResourceKey::new(tenant, ResourceType::Patient, id);
    let next = match p.get(&key) {
        Some(State::Patient(current)) => {
            if !authoritative {
                return Ok(());
            }
            PatientState {
                patient: patient.clone(),
                ..current.clone()
            }
        }
        _ => PatientState {
            patient: patient.clone(),
            active: true,
            replaced_by: None,
            replaces: Vec::new(),
        },
    };
    p.put(key, State::Patient(next))
}

/// Encounter.status after an event, given the status before (None: new encounter).
fn encounter_status(event_type: &str, before: Option<&str>) -> String {
    let after = match event_type {
        "PatientPreadmitted" => "planned",
        "PatientAdmitted" | "PatientRegistered" | "PatientTransferred" | "TransferCancelled"
        | "DischargeCancelled" => "in-progress",
        "PatientDischarged" => "finished",
        "AdmissionCancelled" => "cancelled",
        // An update, an order or a result says nothing about the visit's status.
        _ => before.unwrap_or("unknown"),
    };
    after.to_owned()
}

fn put_encounter(
    p: &mut Projector,
    event: &EventView<'_>,
    ids: &Ids,
    patient: &str,
    encounter: &domain::Encounter,
) -> Result<(), ProjectionError> {
    let Some(id) = &ids.encounter else {
        return Ok(());
    };
    let key = ResourceKey::new(event.tenant, ResourceType::Encounter, id.as_str());
    let adt =
        !matches!(event.event_type, "ResultReported") && !event.event_type.starts_with("Order");
    let next = match p.get(&key) {
        Some(State::Encounter(current)) => {
            if !adt {
                return Ok(());
            }
            let mut data = merge_encounter(&current.encounter, encounter);
            if event.event_type == "DischargeCancelled" {
                data.discharged_at = None;
                data.discharge_disposition = None;
            }
            if event.event_type == "TransferCancelled" {
                data.prior_location = None;
            }
            EncounterState {
                patient: current.patient.clone(),
                encounter: data,
                status: encounter_status(event.event_type, Some(&current.status)),
            }
        }
        _ => EncounterState {
            patient: patient.to_owned(),
            encounter: encounter.clone(),
            status: encounter_status(event.event_type, None),
        },
    };
    p.put(key, State::Encounter(next))
}

/// Field by field: what the message says wins, what it leaves empty keeps the value known.
fn merge_encounter(old: &domain::Encounter, new: &domain::Encounter) -> domain::Encounter {
    fn pick<T: Clone>(new: &Option<T>, old: &Option<T>) -> Option<T> {
        new.clone().or_else(|| old.clone())
    }
    domain::Encounter {
        visit_number: pick(&new.visit_number, &old.visit_number),
        class: pick(&new.class, &old.class),
        location: pick(&new.location, &old.location),
        prior_location: pick(&new.prior_location, &old.prior_location),
        attending: if new.attending.is_empty() {
            old.attending.clone()
        } else {
            new.attending.clone()
        },
        hospital_service: pick(&new.hospital_service, &old.hospital_service),
        admitted_at: pick(&new.admitted_at, &old.admitted_at),
        discharged_at: pick(&new.discharged_at, &old.discharged_at),
        discharge_disposition: pick(&new.discharge_disposition, &old.discharge_disposition),
    }
}

/// The domain's order status (tables/order_status.yaml, result_status.yaml) as FHIR's
/// RequestStatus; None where it says nothing (`unknown`, a local code).
fn request_status(order_status: Option<&str>) -> Option<&'static str> {
    Some(match order_status? {
        "scheduled" | "in-progress" | "partial" => "active",
        "completed" => "completed",
        "cancelled" | "discontinued" | "replaced" => "revoked",
        "on-hold" => "on-hold",
        "error" => "entered-in-error",
        _ => return None,
    })
}

fn put_order(
    p: &mut Projector,
    event: &EventView<'_>,
    ids: &Ids,
    patient: &str,
    order: &domain::Order,
) -> Result<(), ProjectionError> {
    let Some(id) = &ids.order else {
        return Ok(());
    };
    let key = ResourceKey::new(event.tenant, ResourceType::ServiceRequest, id.as_str());
    let reported = request_status(order.status.as_deref());
    let current = match p.get(&key) {
        Some(State::ServiceRequest(current)) => Some(current.clone()),
        _ => None,
    };
    let status = match event.event_type {
        "OrderCancelled" | "OrderDiscontinued" => "revoked",
        "OrderPlaced" | "OrderChanged" => reported.unwrap_or("active"),
        // A status change or a result moves the status only when it names one.
        _ => reported
            .or(current.as_ref().map(|c| c.status.as_str()))
            .unwrap_or("active"),
    }
    .to_owned();
    let next = match current {
        Some(current) if event.event_type == "ResultReported" => OrderState { status, ..current },
        Some(current) => OrderState {
            patient: current.patient.clone(),
            encounter: ids.encounter.clone().or(current.encounter.clone()),
            order: merge_order(&current.order, order),
            status,
        },
        None => OrderState {
            patient: patient.to_owned(),
            encounter: ids.encounter.clone(),
            order: order.clone(),
            status,
        },
    };
    p.put(key, State::ServiceRequest(next))
}

fn merge_order(old: &domain::Order, new: &domain::Order) -> domain::Order {
    fn pick<T: Clone>(new: &Option<T>, old: &Option<T>) -> Option<T> {
        new.clone().or_else(|| old.clone())
    }
    domain::Order {
        control: new.control.clone(),
        placer_order_number: pick(&new.placer_order_number, &old.placer_order_number),
        filler_order_number: pick(&new.filler_order_number, &old.filler_order_number),
        placer_group_number: pick(&new.placer_group_number, &old.placer_group_number),
        status: pick(&new.status, &old.status),
        code: pick(&new.code, &old.code),
        priority: pick(&new.priority, &old.priority),
        ordering_provider: pick(&new.ordering_provider, &old.ordering_provider),
        diagnostic_service_section: pick(
            &new.diagnostic_service_section,
            &old.diagnostic_service_section,
        ),
        requested_at: pick(&new.requested_at, &old.requested_at),
        ordered_at: pick(&new.ordered_at, &old.ordered_at),
        reason: pick(&new.reason, &old.reason),
    }
}

/// DiagnosticReport.status: from the order's result status (OBR-25) when the message gives one,
/// else from the observations' statuses.
fn report_status(order: Option<&domain::Order>, observations: &[domain::Observation]) -> String {
    let from_order = match order.and_then(|o| o.status.as_deref()) {
        Some("completed") => Some("final"),
        Some("partial") => Some("partial"),
        Some("scheduled" | "in-progress") => Some("registered"),
        Some("cancelled") => Some("cancelled"),
        Some("error") => Some("entered-in-error"),
        _ => None,
    };
    let status = from_order.unwrap_or_else(|| {
        let statuses: Vec<&str> = observations
            .iter()
            .map(|o| o.status.as_deref().unwrap_or("unknown"))
            .collect();
        if statuses.is_empty() {
            "unknown"
        } else if statuses.iter().all(|s| matches!(*s, "final" | "corrected")) {
            "final"
        } else if statuses.contains(&"preliminary") {
            "preliminary"
        } else {
            "unknown"
        }
    });
    status.to_owned()
}

fn put_result(
    p: &mut Projector,
    event: &EventView<'_>,
    ids: &Ids,
    patient: &str,
    data: &ResultPayload,
) -> Result<(), ProjectionError> {
    let report = ids.report(event);
    let issued = event
        .metadata
        .get("received_at")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let mut results = Vec::with_capacity(data.observations.len());
    for (n, o) in data.observations.iter().enumerate() {
        let id = observation_id(&report, n, o);
        let key = ResourceKey::new(event.tenant, ResourceType::Observation, id.as_str());
        let state = ObservationState {
            patient: patient.to_owned(),
            encounter: ids.encounter.clone(),
            based_on: ids.order.clone(),
            observation: o.clone(),
            issued: issued.clone(),
        };
        p.put(key, State::Observation(state))?;
        results.push(id);
    }
    let key = ResourceKey::new(
        event.tenant,
        ResourceType::DiagnosticReport,
        report.as_str(),
    );
    let (mut all, known_effective) = match p.get(&key) {
        Some(State::DiagnosticReport(current)) => {
            (current.results.clone(), current.effective.clone())
        }
        _ => (Vec::new(), None),
    };
    // The earliest observation time, compared as instants (the texts may have other offsets).
    let effective = data
        .observations
        .iter()
        .filter_map(|o| o.observed_at.as_ref().map(|t| t.as_str().to_owned()))
        .chain(known_effective)
        .min_by_key(|t| super::search::range(t).map(|r| r.0));
    for id in results {
        if !all.contains(&id) {
            all.push(id);
        }
    }
    let state = ReportState {
        patient: patient.to_owned(),
        encounter: ids.encounter.clone(),
        based_on: ids.order.clone(),
        order: data.order.clone(),
        results: all,
        status: report_status(data.order.as_ref(), &data.observations),
        issued,
        effective,
    };
    p.put(key, State::DiagnosticReport(state))
}

fn merge(
    p: &mut Projector,
    tenant: &str,
    survivor: &str,
    old: &str,
    merged: &domain::Merged,
) -> Result<(), ProjectionError> {
    let survivor_key = ResourceKey::new(tenant, ResourceType::Patient, survivor);
    if let Some(State::Patient(s)) = p.get(&survivor_key) {
        let mut s = s.clone();
        if !s.replaces.iter().any(|r| r == old) {
            s.replaces.push(old.to_owned());
        }
        p.put(survivor_key, State::Patient(s))?;
    }
    let old_key = ResourceKey::new(tenant, ResourceType::Patient, old);
    let retired = match p.get(&old_key) {
        Some(State::Patient(o)) => PatientState {
            active: false,
            replaced_by: Some(survivor.to_owned()),
            ..o.clone()
        },
        // Never seen: the record still existed at the sender; keep what the merge says of it, so
        // a client holding its id learns where it went.
        _ => PatientState {
            patient: domain::Patient {
                identifiers: merged.identifiers.clone(),
                ..domain::Patient::default()
            },
            active: false,
            replaced_by: Some(survivor.to_owned()),
            replaces: Vec::new(),
        },
    };
    p.put(old_key, State::Patient(retired))?;
    for key in p.belonging_to(tenant, old) {
        if let Some(state) = p.get(&key) {
            let mut moved = state.clone();
            moved.set_patient(survivor);
            p.put(key, moved)?;
        }
    }
    Ok(())
}
