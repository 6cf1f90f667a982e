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
//! | `examples.rs` | running the `examples:` of every mapping file |
//! | `schema.rs` | a JSON Schema of the files, for editors |
//!
//! A [`MappingSet`] is immutable once loaded: hot reload builds a new one and swaps an `Arc`, so a message is
//! always mapped by one whole set. The set's [`MappingSet::version`] goes into each event's metadata.

mod ast;
mod eval;
mod examples;
mod load;
mod schema;
mod transform;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::domain::StreamKind;
use crate::hl7::ack::ErrorCode;
use crate::hl7::{Location, Message};

pub use examples::{Example, ExampleOutcome, Expectation, events_json};
pub use schema::json_schema;
pub use transform::Transform;

/// A loaded, checked set of mappings.
#[derive(Debug)]
pub struct MappingSet {
    dir: PathBuf,
    ast: ast::Ast,
    version: String,
    tz: jiff::tz::TimeZone,
    /// (MSH-9.1, MSH-9.2) → inbound files, in file-name order.
    by_message: HashMap<(String, String), Vec<usize>>,
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
    pub stream_key: (Option<String>, String),
    /// The payload, normalised by the domain (checked against the event's schema).
    pub payload: serde_json::Value,
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
    /// Loads and checks a mapping directory, reporting every problem at once.
    pub fn load(dir: &Path) -> Result<MappingSet, Vec<Problem>> {
        let loaded = load::load(dir)?;
        let mut by_message: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, m) in loaded.ast.inbound.iter().enumerate() {
            for key in &m.messages {
                by_message.entry(key.clone()).or_default().push(i);
            }
        }
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
            by_message: HashMap::new(),
        }
    }

    /// Content hash of the loaded files (settings, datatypes, tables, inbound; sorted by relative path; example
    /// files excluded, since they do not change what a message maps to): 16 hex characters.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The directory the set was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The names of the inbound mappings with the message types they apply to, for listings.
    pub fn mappings(&self) -> Vec<(String, Vec<String>, String)> {
        self.ast
            .inbound
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.messages.iter().map(|(t, e)| format!("{t}^{e}")).collect(),
                    m.event.clone(),
                )
            })
            .collect()
    }

    /// Maps a message to events.
    #[allow(clippy::result_large_err)] // rare, and turned into one ACK: not worth a Box in the caller's API
    pub fn map(&self, message: &Message<'_>) -> Result<Mapped, MapError> {
        self.run(message, false).map(|(m, _)| m)
    }

    /// Maps a message and says, for every output field, which rule and source produced it.
    #[allow(clippy::result_large_err)] // as for `map`
    pub fn explain(&self, message: &Message<'_>) -> Result<(Mapped, Vec<Explanation>), MapError> {
        self.run(message, true)
    }

    #[allow(clippy::result_large_err)] // as for `map`
    fn run(
        &self,
        message: &Message<'_>,
        explain: bool,
    ) -> Result<(Mapped, Vec<Explanation>), MapError> {
        let msh9 = message.msh().field(9);
        let part = |n| {
            msh9.and_then(|f| f.component(n))
                .map(|v| v.decoded().into_owned())
                .unwrap_or_default()
        };
        let key = (part(1), part(2));
        let Some(files) = self.by_message.get(&key) else {
            return Ok((Mapped::Unmapped, Vec::new()));
        };
        let mut ev = eval::Eval::new(&self.ast, &self.tz, message, explain);
        let mut events = Vec::new();
        for &i in files {
            events.extend(ev.events(&self.ast.inbound[i]).map_err(|e| *e)?);
        }
        if events.is_empty() {
            return Ok((Mapped::Unmapped, Vec::new()));
        }
        // Message order of groups; files in name order within one group (the sort is stable).
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| events[i].0);
        let mut explanations = ev.explain.take().unwrap_or_default();
        if explain {
            let mut new_index = vec![0; order.len()];
            for (new, &old) in order.iter().enumerate() {
                new_index[old] = new;
            }
            for e in &mut explanations {
                e.event = new_index.get(e.event).copied().unwrap_or(e.event);
            }
            explanations.sort_by_key(|e| e.event);
        }
        let mut slots: Vec<Option<MappedEvent>> =
            events.into_iter().map(|(_, e)| Some(e)).collect();
        let events = order.iter().filter_map(|&i| slots[i].take()).collect();
        Ok((Mapped::Events(events), explanations))
    }
}

#[cfg(test)]
mod tests;
