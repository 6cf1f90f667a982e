//! The `examples:` of mapping files: input message (or FHIR resource) → expected events, or → expected ACK
//! error (or, for FHIR mappings, the expected error and element path).
//!
//! Examples make a mapping self-testing: `ferry mappings test` and the test suite run the same function, so a
//! changed mapping is checked against its examples before it is deployed. An example compares *all* events the
//! set produces for its input (several files may contribute, e.g. ORC-1 NW and CA groups of one ORM), as
//! `ferry map` prints them. A mismatch comes with a line diff of the pretty-printed JSON.

use std::path::{Path, PathBuf};

use serde_json::{Value as J, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::hl7::{DecodeOptions, Message, decode};

use super::ast::{ExpectSpec, FhirInteraction};
use super::{MapError, Mapped, MappingSet, OutboundError, OutboundFormat, OutboundInput, Rendered};

/// One example of one mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The mapping's name, e.g. `adt_a01.patient_admitted`.
    pub mapping: String,
    /// The mapping file and the line of the example in it.
    pub file: PathBuf,
    pub line: usize,
    /// The HL7 message file, or the FHIR resource (JSON) file.
    pub input: PathBuf,
    /// For a FHIR mapping: the interaction the example runs as (the file's first).
    pub interaction: Option<FhirInteraction>,
    /// For an outbound mapping: which event of the input and the fixed delivery values.
    pub outbound: Option<OutboundCase>,
    pub expectation: Expectation,
}

/// How an outbound example renders: the input is an event file (`{event, stream, payload}` or an array of
/// them, as `ferry map` prints), and what would vary per delivery is fixed so the output can be pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCase {
    /// `outbound/pacs_orm_o01`.
    pub mapping: String,
    /// The position of the event in an input array (0-based).
    pub index: usize,
    pub delivery_id: String,
    /// RFC 3339.
    pub recorded_at: String,
}

/// What an example expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// A JSON file holding an array of `{event, stream, payload}`.
    Events(PathBuf),
    /// A negative acknowledgement: ACK code (`AE`), ERR-3 code (`101`) and ERR-2 location (`PID^1^3`).
    Ack {
        code: String,
        error: Option<u16>,
        location: Option<String>,
    },
    /// A refused FHIR write: table 0357 code and element path (`Patient.birthDate`).
    Error {
        error: Option<u16>,
        path: Option<String>,
    },
    /// What an outbound mapping renders: an `.hl7` file (segments one a line) or a `.json` file.
    Rendered(PathBuf),
}

/// The result of running one example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleOutcome {
    pub example: Example,
    pub passed: bool,
    /// Empty when passed; otherwise what differed (a diff of expected → actual events, or a sentence).
    pub message: String,
}

/// The events of a mapped message as examples and `ferry map` show them: `[{event, stream, payload}]`.
pub fn events_json(mapped: &Mapped) -> J {
    match mapped {
        Mapped::Unmapped => json!([]),
        Mapped::Events(events) => J::Array(
            events
                .iter()
                .map(|e| json!({"event": e.event_type, "stream": e.stream, "payload": e.payload}))
                .collect(),
        ),
    }
}

/// A rendered body as examples and `ferry map --outbound` show it: HL7 segments one a line, JSON pretty
/// with sorted keys.
pub fn rendered_text(r: &Rendered) -> String {
    match r.format {
        OutboundFormat::Hl7v2 => String::from_utf8_lossy(&r.body).replace('\r', "\n"),
        OutboundFormat::Json => match serde_json::from_slice::<J>(&r.body) {
            Ok(v) => canonical(&v),
            Err(_) => String::from_utf8_lossy(&r.body).into_owned(),
        },
    }
}

/// One stored event as read from a file: what an outbound example (or `ferry map --outbound`) renders.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFile {
    pub event_type: String,
    pub stream: String,
    pub payload: J,
    pub metadata: J,
}

impl EventFile {
    /// The input for [`MappingSet::render_outbound`], with the delivery values given and the stream
    /// named after its kind (examples do not derive real stream ids).
    pub fn input<'a>(
        &'a self,
        destination: &'a str,
        delivery_id: &'a str,
        recorded_at: OffsetDateTime,
    ) -> OutboundInput<'a> {
        OutboundInput {
            tenant: "example",
            event_type: &self.event_type,
            payload: &self.payload,
            metadata: &self.metadata,
            recorded_at,
            stream_id: &self.stream,
            stream_version: 1,
            delivery_id,
            destination,
        }
    }
}

/// Reads an event file: one `{event, stream, payload, metadata?}` or an array of them (`index` picks one).
pub fn read_event(path: &Path, index: usize) -> Result<EventFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: J =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let item = match &v {
        J::Array(items) => items.get(index).ok_or_else(|| {
            format!(
                "{} has {} event(s); there is no index {index}",
                path.display(),
                items.len()
            )
        })?,
        other => other,
    };
    let event_type = item
        .get("event")
        .and_then(J::as_str)
        .ok_or_else(|| format!("{}: the event has no `event` (its type)", path.display()))?;
    let payload = item
        .get("payload")
        .cloned()
        .ok_or_else(|| format!("{}: the event has no `payload`", path.display()))?;
    Ok(EventFile {
        event_type: event_type.to_string(),
        stream: item
            .get("stream")
            .and_then(J::as_str)
            .unwrap_or("example")
            .to_string(),
        payload,
        metadata: item.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// The ACK an error turns into, as an example states it.
fn ack_of(e: &MapError) -> (String, u16, Option<String>) {
    (
        "AE".to_string(),
        e.code.code(),
        e.location.as_ref().map(|l| l.to_erl('^')),
    )
}

/// Pretty JSON with object keys sorted, so that a diff shows content, not key order.
fn canonical(v: &J) -> String {
    fn sort(v: &J) -> J {
        match v {
            J::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                J::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect())
            }
            J::Array(a) => J::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sort(v)).unwrap_or_default() + "\n"
}

/// A unified line diff, expected first.
pub(crate) fn diff(expected: &J, actual: &J) -> String {
    let (a, b) = (canonical(expected), canonical(actual));
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string()
}

impl MappingSet {
    /// Every example of every inbound file, in file order.
    pub fn examples(&self) -> Vec<Example> {
        let mut out = Vec::new();
        for m in &self.ast.inbound {
            for e in &m.examples {
                out.push(Example {
                    mapping: m.name.clone(),
                    file: self.dir.join(&self.ast.files[m.file]),
                    line: e.line,
                    input: e.input.clone(),
                    interaction: m
                        .fhir
                        .as_ref()
                        .and_then(|f| f.interactions.first().copied()),
                    outbound: None,
                    expectation: match &e.expect {
                        ExpectSpec::Events(p) => Expectation::Events(p.clone()),
                        ExpectSpec::Ack {
                            code,
                            error,
                            location,
                        } => Expectation::Ack {
                            code: code.clone(),
                            error: *error,
                            location: location.clone(),
                        },
                        ExpectSpec::Error { error, path } => Expectation::Error {
                            error: *error,
                            path: path.clone(),
                        },
                    },
                });
            }
        }
        for o in &self.ast.outbound {
            for e in &o.examples {
                out.push(Example {
                    mapping: o.name.clone(),
                    file: self.dir.join(&self.ast.files[o.file]),
                    line: e.line,
                    input: e.input.clone(),
                    interaction: None,
                    outbound: Some(OutboundCase {
                        mapping: o.name.clone(),
                        index: e.index,
                        delivery_id: e.delivery_id.clone(),
                        recorded_at: e.recorded_at.clone(),
                    }),
                    expectation: Expectation::Rendered(e.expect.clone()),
                });
            }
        }
        out
    }

    /// What an outbound example's event renders to (`Err` when the input cannot be read at all).
    pub fn render_example_input(
        &self,
        example: &Example,
    ) -> Result<Result<Rendered, Box<OutboundError>>, String> {
        let Some(case) = &example.outbound else {
            return Err("not an outbound example".into());
        };
        let event = read_event(&example.input, case.index)?;
        let recorded_at = OffsetDateTime::parse(&case.recorded_at, &Rfc3339)
            .map_err(|e| format!("recorded_at {:?}: {e}", case.recorded_at))?;
        let input = event.input("example", &case.delivery_id, recorded_at);
        Ok(self.render_outbound(&case.mapping, &input))
    }

    fn check_outbound_example(&self, example: &Example, expected: &Path) -> Result<(), String> {
        let rendered = self.render_example_input(example)?.map_err(|e| {
            format!(
                "expected output, got an error{}: {e}",
                e.path().map(|p| format!(" at {p}")).unwrap_or_default()
            )
        })?;
        let text = std::fs::read_to_string(expected)
            .map_err(|e| format!("cannot read {}: {e}", expected.display()))?;
        match rendered.format {
            OutboundFormat::Hl7v2 => {
                let want = text.replace("\r\n", "\n").replace('\r', "\n");
                let got = rendered_text(&rendered);
                if want == got {
                    return Ok(());
                }
                Err(format!(
                    "the message differs from {} (segments one a line):\n{}",
                    expected.display(),
                    similar::TextDiff::from_lines(&want, &got)
                        .unified_diff()
                        .context_radius(3)
                        .header("expected", "actual")
                ))
            }
            OutboundFormat::Json => {
                let want: J = serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not JSON: {e}", expected.display()))?;
                let got: J = serde_json::from_slice(&rendered.body)
                    .map_err(|e| format!("the rendered body is not JSON: {e}"))?;
                if want == got {
                    return Ok(());
                }
                Err(format!(
                    "the document differs from {}:\n{}",
                    expected.display(),
                    diff(&want, &got)
                ))
            }
        }
    }

    /// Runs every example (what `ferry mappings test` prints and the test suite asserts).
    pub fn run_examples(&self) -> Vec<ExampleOutcome> {
        self.examples()
            .into_iter()
            .map(|e| self.run_example(e))
            .collect()
    }

    /// Runs one example.
    pub fn run_example(&self, example: Example) -> ExampleOutcome {
        let message = self.check_example(&example).err().unwrap_or_default();
        ExampleOutcome {
            passed: message.is_empty(),
            example,
            message,
        }
    }

    /// What the set makes of an example's input (`Err` when the input cannot be read at all).
    pub(crate) fn map_example_input(
        &self,
        example: &Example,
    ) -> Result<Result<Mapped, Box<MapError>>, String> {
        let bytes = std::fs::read(&example.input)
            .map_err(|e| format!("cannot read {}: {e}", example.input.display()))?;
        Ok(match example.interaction {
            Some(interaction) => {
                let resource: J = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("the input is not JSON: {e}"))?;
                self.map_fhir(interaction, &resource)
            }
            None => {
                let decoded = decode(&bytes, &DecodeOptions::default())
                    .map_err(|e| format!("the input cannot be decoded: {e}"))?;
                let msg = Message::parse(&decoded.text)
                    .map_err(|e| format!("the input does not parse: {e}"))?;
                self.map(&msg)
            }
        })
    }

    fn check_example(&self, example: &Example) -> Result<(), String> {
        if let Expectation::Rendered(expected) = &example.expectation {
            return self.check_outbound_example(example, expected);
        }
        let result = self.map_example_input(example)?;
        match (&example.expectation, result) {
            (Expectation::Events(path), Ok(mapped)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let expected: J = serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
                let actual = events_json(&mapped);
                if expected == actual {
                    Ok(())
                } else {
                    Err(format!(
                        "the events differ from {}:\n{}",
                        path.display(),
                        diff(&expected, &actual)
                    ))
                }
            }
            (Expectation::Events(_), Err(e)) => Err(format!(
                "expected events, got error {} at {}: {}",
                e.code.code(),
                e.location
                    .as_ref()
                    .map(|l| l.to_erl('^'))
                    .or_else(|| (!e.path.is_empty()).then(|| e.path.clone()))
                    .unwrap_or_else(|| "no location".to_string()),
                e.message
            )),
            (Expectation::Error { error, path }, Err(e)) => {
                let error_ok = error.is_none_or(|n| n == e.code.code());
                let path_ok = path.as_ref().is_none_or(|p| *p == e.path);
                if error_ok && path_ok {
                    Ok(())
                } else {
                    Err(format!(
                        "expected error {} at {}, got {} at {} ({})",
                        error.map_or("(any)".to_string(), |n| n.to_string()),
                        path.as_deref().unwrap_or("(any element)"),
                        e.code.code(),
                        if e.path.is_empty() {
                            "no element"
                        } else {
                            &e.path
                        },
                        e.message
                    ))
                }
            }
            (Expectation::Error { .. }, Ok(mapped)) => Err(format!(
                "expected an error, but the resource mapped to:\n{}",
                canonical(&events_json(&mapped))
            )),
            (
                Expectation::Ack {
                    code,
                    error,
                    location,
                },
                Err(e),
            ) => {
                let (got_code, got_error, got_location) = ack_of(&e);
                let code_ok = *code == got_code;
                let error_ok = error.is_none_or(|n| n == got_error);
                let location_ok = location.is_none() || *location == got_location;
                if code_ok && error_ok && location_ok {
                    Ok(())
                } else {
                    Err(format!(
                        "expected {code} {} at {}, got {got_code} {got_error} at {} ({})",
                        error.map_or("(any error)".to_string(), |n| n.to_string()),
                        location.as_deref().unwrap_or("(any location)"),
                        got_location.as_deref().unwrap_or("no location"),
                        e.message
                    ))
                }
            }
            (Expectation::Rendered(_), _) => {
                Err("an outbound expectation on an inbound file".into())
            }
            (Expectation::Ack { code, .. }, Ok(mapped)) => {
                if code == "AA" {
                    return Ok(());
                }
                Err(format!(
                    "expected {code}, but the message mapped to:\n{}",
                    canonical(&events_json(&mapped))
                ))
            }
        }
    }
}
