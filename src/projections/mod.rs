//! Projections: the FHIR read models (Patient, Encounter, ServiceRequest, Observation,
//! DiagnosticReport) that the event store's events are folded into.
//!
//! The store calls this module inside the transaction that appends the events, so a read right
//! after an ACK sees the message (`store/sqlite.rs`, `store/postgres.rs`). The module itself knows no
//! SQL: the store loads the current [`State`] of every resource a batch touches ([`plan`]), hands
//! the events to a [`Projector`], and writes what [`Projector::finish`] returns (current rows,
//! history rows, search index rows). `ferry projections rebuild` replays all events through the
//! same code, which is why a rebuild yields exactly the same resources.
//!
//! Each resource keeps two things: its *state* (our own compact JSON: the domain data it was built
//! from, plus links such as the patient it belongs to), which the next event updates, and its *body*
//! (the FHIR JSON served, rendered from the state with fhir-sdk's models in [`render`]). A resource
//! gets a new version only when an event changes its state.
//!
//! Resource ids are the UUIDs of the streams (`patient-<uuid>` → `Patient/<uuid>`): stable, derived
//! from tenant, assigning authority and identifier, and revealing no identifier. Observations and
//! DiagnosticReports, which have no stream of their own, get name-based UUIDs under their report.

mod apply;
pub mod render;
pub mod search;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain;

pub use apply::{Plan, plan, resource_id};

/// The FHIR resource types Ferry projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceType {
    Patient,
    Encounter,
    ServiceRequest,
    Observation,
    DiagnosticReport,
}

impl ResourceType {
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Patient,
        ResourceType::Encounter,
        ResourceType::ServiceRequest,
        ResourceType::Observation,
        ResourceType::DiagnosticReport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Patient => "Patient",
            ResourceType::Encounter => "Encounter",
            ResourceType::ServiceRequest => "ServiceRequest",
            ResourceType::Observation => "Observation",
            ResourceType::DiagnosticReport => "DiagnosticReport",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub tenant: String,
    pub resource_type: ResourceType,
    pub id: String,
}

impl ResourceKey {
    pub fn new(tenant: &str, resource_type: ResourceType, id: impl Into<String>) -> Self {
        Self {
            tenant: tenant.to_owned(),
            resource_type,
            id: id.into(),
        }
    }
}

/// What a resource was built from; stored beside the body so the next event can update it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum State {
    Patient(PatientState),
    Encounter(EncounterState),
    ServiceRequest(OrderState),
    Observation(ObservationState),
    DiagnosticReport(ReportState),
}

impl State {
    pub fn resource_type(&self) -> ResourceType {
        match self {
            State::Patient(_) => ResourceType::Patient,
            State::Encounter(_) => ResourceType::Encounter,
            State::ServiceRequest(_) => ResourceType::ServiceRequest,
            State::Observation(_) => ResourceType::Observation,
            State::DiagnosticReport(_) => ResourceType::DiagnosticReport,
        }
    }

    /// The Patient id this resource belongs to (itself for a Patient).
    pub fn patient(&self) -> Option<&str> {
        match self {
            State::Patient(_) => None,
            State::Encounter(s) => Some(&s.patient),
            State::ServiceRequest(s) => Some(&s.patient),
            State::Observation(s) => Some(&s.patient),
            State::DiagnosticReport(s) => Some(&s.patient),
        }
    }

    fn set_patient(&mut self, id: &str) {
        let slot = match self {
            State::Patient(_) => return,
            State::Encounter(s) => &mut s.patient,
            State::ServiceRequest(s) => &mut s.patient,
            State::Observation(s) => &mut s.patient,
            State::DiagnosticReport(s) => &mut s.patient,
        };
        id.clone_into(slot);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientState {
    pub patient: domain::Patient,
    /// False once the record was merged into another.
    pub active: bool,
    /// The surviving Patient after a merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Patients merged into this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncounterState {
    pub patient: String,
    pub encounter: domain::Encounter,
    /// FHIR Encounter.status code.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub patient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    pub order: domain::Order,
    /// FHIR ServiceRequest.status code.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservationState {
    pub patient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<String>,
    pub observation: domain::Observation,
    /// When the result was reported (the message's receipt time), for Observation.issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportState {
    pub patient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<domain::Order>,
    /// Observation ids, in the order reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<String>,
    /// FHIR DiagnosticReport.status code.
    pub status: String,
    /// When the message was received (Ferry has no report time of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<String>,
    /// The clinically relevant time: the earliest observation time (OBX-14) reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<String>,
}

/// Why events could not be projected. Never swallowed: the batch fails and says so.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("event {event_type}: payload does not fit its schema: {reason}")]
    Payload { event_type: String, reason: String },
    #[error("stored state of {resource} is unreadable: {reason}")]
    State { resource: String, reason: String },
    #[error("cannot render {resource} as FHIR: {reason}")]
    Render { resource: String, reason: String },
}

/// An event as the projector sees it: the stored columns it needs, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub tenant: &'a str,
    pub event_type: &'a str,
    pub payload: crate::domain::PayloadRef<'a>,
    pub metadata: &'a serde_json::Value,
}

/// A resource as loaded from the store before a batch.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: ResourceKey,
    pub version: i64,
    pub state: String,
}

/// The current row of a changed resource.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentRow {
    pub key: ResourceKey,
    pub version: i64,
    pub last_updated: OffsetDateTime,
    pub patient: Option<String>,
    /// State as JSON text.
    pub state: String,
    /// FHIR JSON as served.
    pub body: String,
    pub search: Vec<search::Entry>,
}

/// One version of a resource, for vread and `_history`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub key: ResourceKey,
    pub version: i64,
    pub last_updated: OffsetDateTime,
    pub body: String,
}

/// Everything a batch changes in the read models.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    pub current: Vec<CurrentRow>,
    pub history: Vec<HistoryRow>,
}

struct Slot {
    version: i64,
    state: Option<State>,
    changed: bool,
}

/// Folds a batch's events into the resources it touches, in event order.
pub struct Projector {
    now: OffsetDateTime,
    slots: HashMap<ResourceKey, Slot>,
    /// Changed keys in first-change order (deterministic output order).
    order: Vec<ResourceKey>,
    seen: HashSet<ResourceKey>,
    history: Vec<HistoryRow>,
}

impl Projector {
    /// `now` is the commit's time: every version written by this batch carries it as lastUpdated
    /// (the same value the store records as the events' `recorded_at`).
    pub fn new(now: OffsetDateTime, loaded: Vec<Loaded>) -> Result<Self, ProjectionError> {
        let mut slots = HashMap::with_capacity(loaded.len());
        for l in loaded {
            let state: State =
                serde_json::from_str(&l.state).map_err(|e| ProjectionError::State {
                    resource: format!("{}/{}", l.key.resource_type, l.key.id),
                    reason: e.to_string(),
                })?;
            slots.insert(
                l.key,
                Slot {
                    version: l.version,
                    state: Some(state),
                    changed: false,
                },
            );
        }
        Ok(Self {
            now,
            slots,
            order: Vec::new(),
            seen: HashSet::new(),
            history: Vec::new(),
        })
    }

    /// The state of a resource, if it exists (loaded or created by an earlier event of the batch).
    fn get(&self, key: &ResourceKey) -> Option<&State> {
        self.slots.get(key).and_then(|s| s.state.as_ref())
    }

    /// Keys of resources (of the tenant) that belong to `patient`.
    fn belonging_to(&self, tenant: &str, patient: &str) -> Vec<ResourceKey> {
        let mut keys: Vec<ResourceKey> = self
            .slots
            .iter()
            .filter(|(k, s)| {
                k.tenant == tenant && s.state.as_ref().and_then(State::patient) == Some(patient)
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Sets a resource's state; a new version (with its history row) only when it changed.
    fn put(&mut self, key: ResourceKey, state: State) -> Result<(), ProjectionError> {
        let slot = self.slots.entry(key.clone()).or_insert(Slot {
            version: 0,
            state: None,
            changed: false,
        });
        if slot.state.as_ref() == Some(&state) {
            return Ok(());
        }
        slot.version += 1;
        let body = render::body(&key, slot.version, self.now, &state)?;
        slot.state = Some(state);
        slot.changed = true;
        self.history.push(HistoryRow {
            key: key.clone(),
            version: slot.version,
            last_updated: self.now,
            body,
        });
        if self.seen.insert(key.clone()) {
            self.order.push(key);
        }
        Ok(())
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &EventView<'_>) -> Result<(), ProjectionError> {
        apply::apply(self, event)
    }

    /// The rows to write: the current row of every changed resource (with its search entries) and
    /// one history row per new version.
    pub fn finish(self) -> Result<Output, ProjectionError> {
        let mut current = Vec::with_capacity(self.order.len());
        for key in self.order {
            let Some(slot) = self.slots.get(&key) else {
                continue;
            };
            let Some(state) = &slot.state else { continue };
            if !slot.changed {
                continue;
            }
            let body = self
                .history
                .iter()
                .rev()
                .find(|h| h.key == key)
                .map(|h| h.body.clone())
                .unwrap_or_default();
            current.push(CurrentRow {
                version: slot.version,
                last_updated: self.now,
                patient: state.patient().map(str::to_owned),
                state: serde_json::to_string(state).map_err(|e| ProjectionError::State {
                    resource: format!("{}/{}", key.resource_type, key.id),
                    reason: e.to_string(),
                })?,
                search: search::entries(state),
                body,
                key,
            });
        }
        Ok(Output {
            current,
            history: self.history,
        })
    }
}

#[cfg(test)]
mod tests;
