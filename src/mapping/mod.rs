//! Declarative HL7 v2 → domain event mappings: the files in `mappings/`, checked on load, evaluated per message,
//! explainable and self-testing.
//!
//! Integration analysts, not Rust developers, keep interfaces running, so the mapping format is plain YAML with a
//! closed vocabulary (take a path, first non-empty, each repetition, pick a repetition, constant, named rule,
//! object; modifiers `as`, `table`, `default`, `transform`, `required`, `when`) and no scripting. The format is
//! described for analysts in `mappings/README.md` ("Mapping guide"); this module is its implementation:
//!
//! | file | role |
//! |---|---|
//! | `yaml.rs` | YAML → a tree with line and column on every node (saphyr-parser events; see there why not serde) |
//! | `load.rs` | tree → checked rules; every problem at once ([`Problem`]); the version hash |
//! | `ast.rs` | the checked rules |
//! | `eval.rs` | rules × parsed message → event payloads, errors with HL7 locations, explanations |
//! | `transform.rs` | the named transforms (trim, upper, lower, date, datetime, boolean) |
//! | `outbound.rs` | stored event → HL7 v2 message or JSON through `outbound/` files (rules read the event) |
//! | `examples.rs` | running the `examples:` of every mapping file |
//! | `schema.rs` | a JSON Schema of the files, for editors |
//!
//! A [`MappingSet`] is immutable once loaded: hot reload builds a new one and swaps an `Arc`, so a message is
//! always mapped by one whole set. The set's [`MappingSet::version`] goes into each event's metadata.

mod ast;
mod doc_hl7;
mod doc_json;
mod eval;
mod examples;
mod load;
mod outbound;
mod schema;
mod transform;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::domain::{Payload, StreamKeys, StreamKind};
use crate::hl7::ack::ErrorCode;
use crate::hl7::{Location, Message};

pub use ast::{FhirInteraction, OutboundFormat, WRITABLE_RESOURCES};
pub use examples::{
    EventFile, Example, ExampleOutcome, Expectation, OutboundCase, events_json, read_event,
    rendered_text,
};
pub use outbound::{OutboundError, OutboundInput, Rendered};
pub use schema::json_schema;
pub use transform::Transform;

/// How strictly to load a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Whether every example's input and expected file must exist (and the expected file be a JSON
    /// array). True for `check`/`test`; false for serving, because examples point outside the folder
    /// (`../../fixtures/…`) and a deployed folder (e.g. `/etc/ferry/mappings` in the Docker image)
    /// usually comes without them. Everything else is checked the same either way.
    pub example_files: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            example_files: true,
        }
    }
}

/// A loaded, checked set of mappings.
#[derive(Debug)]
pub struct MappingSet {
    dir: PathBuf,
    ast: ast::Ast,
    version: String,
    tz: jiff::tz::TimeZone,
    /// MSH-9.1 → MSH-9.2 → inbound files, in file-name order (nested so that a message is looked
    /// up by the borrowed texts of its MSH-9, without building a key).
    by_message: foldhash::HashMap<String, foldhash::HashMap<String, Vec<usize>>>,
    /// (resource type, interaction) → FHIR mapping files, in file-name order.
    by_resource: HashMap<(String, FhirInteraction), Vec<usize>>,
    /// `outbound/<name>` → outbound file.
    outbound_by_name: HashMap<String, usize>,
}

/// What a message maps to.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// No mapping file applies to this message type (or none of their `when` conditions held).
    Unmapped,
    /// The events, in message order of the groups they came from (files in name order within a group).
    Events(Vec<MappedEvent>),
}

/// One event built by a mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedEvent {
    /// The catalogue name, e.g. `PatientAdmitted`.
    pub event_type: String,
    pub schema_version: i32,
    /// The first stream kind of the file's `stream:` list whose key the payload has.
    pub stream: StreamKind,
    /// (assigning authority, value) of that key: the caller derives the stream id with the tenant.
    /// The value is empty only for a FHIR write whose resource has no key (no identifier): the API
    /// gives it a stream of its own.
    pub stream_key: (Option<String>, String),
    /// The keys of the patient, encounter and order streams the payload names: the event's
    /// `metadata.streams`.
    pub keys: StreamKeys,
    /// The payload, normalised by the domain (checked against the event's schema), as the JSON
    /// text the store writes.
    pub payload: Payload,
    /// The mapping file's name without `.yaml`, e.g. `adt_a01.patient_admitted`: for event metadata.
    pub mapping: String,
}

/// HL7 table 0357 codes a mapping failure answers with (always in an AE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapErrorCode {
    /// A `required` value is missing, or the event has no stream key.
    RequiredMissing = 101,
    /// A value cannot be read as what the rule says (a date that is not a date, Y/N that is neither).
    DataType = 102,
    /// A code is not in the rule's table and the rule has no default.
    TableValue = 103,
}

impl MapErrorCode {
    /// The number for ERR-3 and for examples' `expect_ack: {error: …}`.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The ACK module's code, for the ERR segment.
    pub fn error_code(self) -> ErrorCode {
        match self {
            MapErrorCode::RequiredMissing => ErrorCode::RequiredFieldMissing,
            MapErrorCode::DataType => ErrorCode::DataTypeError,
            MapErrorCode::TableValue => ErrorCode::TableValueNotFound,
        }
    }
}

/// Why a message could not be mapped: becomes an AE whose ERR points at `location`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct MapError {
    pub code: MapErrorCode,
    /// ERR-2: `location.to_erl('^')` gives e.g. `PID^1^3`. `None` when no field is to blame.
    pub location: Option<Location>,
    /// The same place in the path syntax of mapping files, e.g. `PID.3[2].1` (empty when no location).
    pub path: String,
    /// A plain sentence for ERR-8.
    pub message: String,
    /// The mapping file's name (without `.yaml`).
    pub mapping: String,
}

/// A problem found while loading: the file, where in it, and a plain sentence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file (missing, unreadable).
    pub line: usize,
    /// 1-based, in characters; 0 with line 0.
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    /// `file:line:column: message`, the form editors and CI logs turn into links.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Where one output field came from, for `ferry map --explain`.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Index of the event in [`Mapped::Events`] the field belongs to.
    pub event: usize,
    /// The output field, list indexes 0-based as in JSON: `patient.identifiers[1].value`.
    pub output: String,
    /// The chain of rules that produced it: `each PID.3[*] as CX → path .1 required`.
    pub rule: String,
    /// The concrete source, HL7 indexes 1-based: `PID.3[2].1`. `None` for constants.
    pub source: Option<String>,
    /// The value as it is in the message (escape sequences included).
    pub raw: Option<String>,
    /// The output value.
    pub value: serde_json::Value,
}

impl MappingSet {
    /// Loads and checks a mapping directory, reporting every problem at once, missing example files
    /// included: what `ferry mappings check|test` and the test suite use.
    pub fn load(dir: &Path) -> Result<MappingSet, Vec<Problem>> {
        Self::load_with(dir, LoadOptions::default())
    }

    /// Loads with options; serving uses `LoadOptions { example_files: false }`.
    pub fn load_with(dir: &Path, options: LoadOptions) -> Result<MappingSet, Vec<Problem>> {
        let loaded = load::load(dir, options.example_files)?;
        let mut by_message: foldhash::HashMap<String, foldhash::HashMap<String, Vec<usize>>> =
            foldhash::HashMap::default();
        let mut by_resource: HashMap<(String, FhirInteraction), Vec<usize>> = HashMap::new();
        for (i, m) in loaded.ast.inbound.iter().enumerate() {
            for key in &m.messages {
                by_message
                    .entry(key.0.clone())
                    .or_default()
                    .entry(key.1.clone())
                    .or_default()
                    .push(i);
            }
            if let Some(f) = &m.fhir {
                for interaction in &f.interactions {
                    by_resource
                        .entry((f.resource.clone(), *interaction))
                        .or_default()
                        .push(i);
                }
            }
        }
        let outbound_by_name = loaded
            .ast
            .outbound
            .iter()
            .enumerate()
            .map(|(i, o)| (o.name.clone(), i))
            .collect();
        let tz = loaded
            .ast
            .default_timezone
            .clone()
            .unwrap_or(jiff::tz::TimeZone::UTC);
        Ok(MappingSet {
            dir: dir.to_path_buf(),
            ast: loaded.ast,
            version: loaded.version,
            tz,
            by_message,
            by_resource,
            outbound_by_name,
        })
    }

    /// A set with no mappings: every message is unmapped. Used when the configured folder does not
    /// exist, so Ferry still runs (and says so) instead of refusing to start.
    pub fn empty() -> MappingSet {
        MappingSet {
            dir: PathBuf::new(),
            ast: ast::Ast::default(),
            version: "empty".to_owned(),
            tz: jiff::tz::TimeZone::UTC,
            by_message: foldhash::HashMap::default(),
            by_resource: HashMap::new(),
            outbound_by_name: HashMap::new(),
        }
    }

    /// Content hash of the loaded files (settings, datatypes, tables, inbound, fhir, outbound; sorted by relative path; example
    /// files excluded, since they do not change what a message maps to): 16 hex characters.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The directory the set was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names of the inbound mappings with what they apply to (message types, or a FHIR resource
    /// type and its interactions such as `Patient create`) and their event, for listings.
    pub fn mappings(&self) -> Vec<(String, Vec<String>, String)> {
        self.ast
            .inbound
            .iter()
            .map(|m| {
                let applies = match &m.fhir {
                    Some(f) => f
                        .interactions
                        .iter()
                        .map(|i| format!("{} {}", f.resource, i.as_str()))
                        .collect(),
                    None => m.messages.iter().map(|(t, e)| format!("{t}^{e}")).collect(),
                };
                (m.name.clone(), applies, m.event.clone())
            })
            .collect()
    }

    /// Whether some FHIR mapping file handles this interaction on this resource type.
    pub fn handles(&self, resource_type: &str, interaction: FhirInteraction) -> bool {
        self.by_resource
            .contains_key(&(resource_type.to_string(), interaction))
    }

    /// Maps a FHIR resource a client wrote (create or update) to events, as [`MappingSet::map`] does
    /// a message. Errors name the element (`Patient.birthDate`) in [`MapError::path`]; they have no
    /// HL7 location.
    pub fn map_fhir(
        &self,
        interaction: FhirInteraction,
        resource: &serde_json::Value,
    ) -> Result<Mapped, Box<MapError>> {
        self.run_fhir(interaction, resource, false).map(|(m, _)| m)
    }

    /// Maps a FHIR resource and says, for every output field, which rule and element produced it.
    pub fn explain_fhir(
        &self,
        interaction: FhirInteraction,
        resource: &serde_json::Value,
    ) -> Result<(Mapped, Vec<Explanation>), Box<MapError>> {
        self.run_fhir(interaction, resource, true)
    }

    fn run_fhir(
        &self,
        interaction: FhirInteraction,
        resource: &serde_json::Value,
        explain: bool,
    ) -> Result<(Mapped, Vec<Explanation>), Box<MapError>> {
        let resource_type = resource
            .get("resourceType")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let Some(files) = self
            .by_resource
            .get(&(resource_type.to_string(), interaction))
        else {
            return Ok((Mapped::Unmapped, Vec::new()));
        };
        let mut ev = eval::Eval::new(
            &self.ast,
            &self.tz,
            doc_json::JsonDoc::new(resource_type, resource),
            explain,
        );
        let mut events = Vec::new();
        for &i in files {
            ev.events(&self.ast.inbound[i], &mut events)?;
        }
        let explanations = ev.explain.take().unwrap_or_default();
        if events.is_empty() {
            return Ok((Mapped::Unmapped, Vec::new()));
        }
        Ok((
            Mapped::Events(events.into_iter().map(|(_, e)| e).collect()),
            explanations,
        ))
    }

    /// Maps a message to events.
    ///
    /// The error is boxed: it is rare, and a large `Err` would make every `Ok` bigger too.
    pub fn map(&self, message: &Message<'_>) -> Result<Mapped, Box<MapError>> {
        self.run(message, false).map(|(m, _)| m)
    }

    /// Maps a message and says, for every output field, which rule and source produced it.
    pub fn explain(
        &self,
        message: &Message<'_>,
    ) -> Result<(Mapped, Vec<Explanation>), Box<MapError>> {
        self.run(message, true)
    }

    /// The events of a message in message order of their groups, files in name order within one group.
    fn in_message_order(mut events: Vec<(usize, MappedEvent)>) -> Mapped {
        if events.is_empty() {
            return Mapped::Unmapped;
        }
        // The sort is stable; one event (the common case) needs none.
        if events.len() > 1 {
            events.sort_by_key(|(start, _)| *start);
        }
        Mapped::Events(events.into_iter().map(|(_, e)| e).collect())
    }

    fn run(
        &self,
        message: &Message<'_>,
        explain: bool,
    ) -> Result<(Mapped, Vec<Explanation>), Box<MapError>> {
        let msh9 = message.msh().field(9);
        let part = |n| {
            msh9.and_then(|f| f.component(n))
                .map(|v| v.decoded())
                .unwrap_or_default()
        };
        let files = self
            .by_message
            .get(part(1).as_ref())
            .and_then(|events| events.get(part(2).as_ref()));
        let Some(files) = files else {
            return Ok((Mapped::Unmapped, Vec::new()));
        };
        let mut events = Vec::new();
        if !explain {
            // Without locations first: only an error or an explanation asks where a value was, and
            // working locations out for every value is work most messages do not need. A message that
            // fails is mapped again with them, for the error to say where (the same rules fail the same
            // way: evaluating has no side effects).
            let mut ev = eval::Eval::new(
                &self.ast,
                &self.tz,
                doc_hl7::Unlocated(doc_hl7::Hl7Doc::new(message)),
                false,
            );
            if files
                .iter()
                .try_for_each(|&i| ev.events(&self.ast.inbound[i], &mut events))
                .is_ok()
            {
                return Ok((Self::in_message_order(events), Vec::new()));
            }
            events.clear();
        }
        let mut ev = eval::Eval::new(&self.ast, &self.tz, doc_hl7::Hl7Doc::new(message), explain);
        for &i in files {
            ev.events(&self.ast.inbound[i], &mut events)?;
        }
        if !explain {
            // Not reached: the same rules failed above.
            return Ok((Self::in_message_order(events), Vec::new()));
        }
        if events.is_empty() {
            return Ok((Mapped::Unmapped, Vec::new()));
        }
        // Message order of groups; files in name order within one group (the sort is stable). The
        // explanations follow their events.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| events[i].0);
        let mut explanations = ev.explain.take().unwrap_or_default();
        let mut new_index = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        for e in &mut explanations {
            e.event = new_index.get(e.event).copied().unwrap_or(e.event);
        }
        explanations.sort_by_key(|e| e.event);
        let mut slots: Vec<Option<MappedEvent>> =
            events.into_iter().map(|(_, e)| Some(e)).collect();
        let events = order.iter().filter_map(|&i| slots[i].take()).collect();
        Ok((Mapped::Events(events), explanations))
    }
}

#[cfg(test)]
mod tests;
