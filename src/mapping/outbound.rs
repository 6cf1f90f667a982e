//! Outbound mappings: one stored domain event → the bytes a destination receives (an HL7 v2 message for
//! MLLP, or a JSON document for HTTP).
//!
//! The rules are the inbound ones read the other way round: the source document is the event (payload
//! JSON plus the reserved `$event` and `$delivery` envelopes, read with the FHIR side's JSON paths), and the
//! output names are HL7 field, component and subcomponent numbers (`"3"`, `"4"`) instead of event fields. A
//! rule's value becomes a field by its shape: text is the field, a list its repetitions, an object keyed
//! by component numbers its components, and an object inside those its subcomponents. The HL7 text is
//! written by `hl7::write`; this module only turns values into that tree and fills MSH.
//!
//! Rendering is deterministic: MSH-7 is the event's recorded time and MSH-10 the delivery id the caller
//! passes, never "now" or a counter, so a retried delivery sends the same bytes and examples can pin them.

use serde_json::{Map, Value as J, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::Draft;
use crate::hl7::write::{Component, Repetition, WriteField, WriteSegment, write_message};
use crate::hl7::{Separators, escape::escape};

use super::ast::{Outbound, OutboundFormat};
use super::eval::Eval;
use super::load::MSH_FILLED;
use super::{Explanation, MapError, MappingSet, doc_json, transform};

/// What the delivery engine knows of one stored event and the delivery it is making.
#[derive(Debug, Clone, Copy)]
pub struct OutboundInput<'a> {
    pub tenant: &'a str,
    pub event_type: &'a str,
    pub payload: &'a serde_json::Value,
    pub metadata: &'a serde_json::Value,
    pub recorded_at: OffsetDateTime,
    pub stream_id: &'a str,
    pub stream_version: i64,
    /// Unique per delivery (the outbox row id as text): MSH-10, or the notification id.
    pub delivery_id: &'a str,
    /// The destination's name.
    pub destination: &'a str,
}

/// A rendered event, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub format: OutboundFormat,
    /// HL7 v2: the message with `\r` after each segment, UTF-8 (MLLP framing is the sender's); JSON: the
    /// document.
    pub body: Vec<u8>,
    /// `x-application/hl7-v2+er7` or `application/json` (`application/fhir+json` would claim more than a
    /// mapping can promise).
    pub content_type: &'static str,
    /// MSH-10 for HL7 v2, to match the receiver's MSA-2 against; `None` for JSON.
    pub control_id: Option<String>,
}

/// Why an event could not be rendered. Every case is permanent for that event and mapping set: sending it
/// again renders the same way (the delivery engine dead-letters it, or waits for corrected mappings).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutboundError {
    /// The subscription names a file the set does not have.
    #[error("there is no outbound mapping {0:?} (expected mappings/{0}.yaml)")]
    UnknownMapping(String),
    /// The file's `events:` does not list the event's type.
    #[error("{mapping} does not render {event} events (its events: {handled})")]
    EventNotHandled {
        mapping: String,
        event: String,
        handled: String,
    },
    /// The stored payload is not a JSON object (a corrupted row).
    #[error("the {event} payload is not a JSON object, so {mapping} cannot read it")]
    NotAnObject { mapping: String, event: String },
    /// A rule failed: a required value is missing, a value has no code in a reversed table, a time cannot
    /// be converted. [`MapError::path`] is the event field (`patient.identifiers[0].value`).
    #[error("{0}")]
    Rule(MapError),
    /// A rule made a value HL7 cannot hold where it stands (a list inside a component, a component key
    /// that is not a number): a mistake in the mapping file, named by the output field.
    #[error("{mapping}: {output}: {message}")]
    Shape {
        mapping: String,
        output: String,
        message: String,
    },
}

impl OutboundError {
    /// The event field the error is about, when it is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            OutboundError::Rule(e) if !e.path.is_empty() => Some(&e.path),
            _ => None,
        }
    }
}

type Res<T> = Result<T, Box<OutboundError>>;

/// The HL7 v2 media type used by HL7's own HTTP guidance; MLLP ignores it.
const HL7_CONTENT_TYPE: &str = "x-application/hl7-v2+er7";
const JSON_CONTENT_TYPE: &str = "application/json";
/// MSH-18 for UTF-8 (HL7 table 0211).
const UTF8_CHARSET: &str = "UNICODE UTF-8";

/// The source document: the payload's fields, and the envelope under names no payload field can have.
fn source_document(input: &OutboundInput<'_>, out: &Outbound) -> Res<J> {
    let Some(payload) = input.payload.as_object() else {
        return Err(Box::new(OutboundError::NotAnObject {
            mapping: out.name.clone(),
            event: input.event_type.to_string(),
        }));
    };
    let mut root: Map<String, J> = payload.clone();
    let recorded = input
        .recorded_at
        .format(&Rfc3339)
        .unwrap_or_else(|_| input.recorded_at.to_string());
    root.insert(
        "$event".into(),
        json!({
            "type": input.event_type,
            "recorded_at": recorded,
            "stream_id": input.stream_id,
            "stream_version": input.stream_version.to_string(),
            "tenant": input.tenant,
            "metadata": input.metadata,
        }),
    );
    root.insert(
        "$delivery".into(),
        json!({ "id": input.delivery_id, "destination": input.destination }),
    );
    Ok(J::Object(root))
}

impl MappingSet {
    fn outbound_file(&self, name: &str) -> Option<&Outbound> {
        self.outbound_by_name
            .get(name)
            .and_then(|&i| self.ast.outbound.get(i))
    }

    /// The event types an outbound file renders; `None` when the set has no file of that name
    /// (`outbound/pacs_orm_o01`, as a subscription writes it).
    pub fn outbound_events(&self, name: &str) -> Option<&[String]> {
        self.outbound_file(name).map(|o| o.events.as_slice())
    }

    /// What an outbound file renders; `None` when the set has no file of that name.
    pub fn outbound_format(&self, name: &str) -> Option<OutboundFormat> {
        self.outbound_file(name).map(|o| o.format)
    }

    /// The outbound files' names (`outbound/his_adt_a01`, …), sorted.
    pub fn outbound_names(&self) -> Vec<&str> {
        self.ast.outbound.iter().map(|o| o.name.as_str()).collect()
    }

    /// Renders one stored event through an outbound file.
    ///
    /// The error is boxed as inbound ones are: rare, and large.
    pub fn render_outbound(
        &self,
        name: &str,
        input: &OutboundInput<'_>,
    ) -> Result<Rendered, Box<OutboundError>> {
        self.run_outbound(name, input, false).map(|(r, _)| r)
    }

    /// Renders and says, for every output field (`PID.3[1].1`, or `entry[0].resource.id` for JSON), which
    /// rule and event field (`patient.identifiers[0].value`) it came from.
    pub fn explain_outbound(
        &self,
        name: &str,
        input: &OutboundInput<'_>,
    ) -> Result<(Rendered, Vec<Explanation>), Box<OutboundError>> {
        self.run_outbound(name, input, true)
    }

    fn run_outbound(
        &self,
        name: &str,
        input: &OutboundInput<'_>,
        explain: bool,
    ) -> Res<(Rendered, Vec<Explanation>)> {
        let Some(out) = self.outbound_file(name) else {
            return Err(Box::new(OutboundError::UnknownMapping(name.to_string())));
        };
        if !out.events.iter().any(|e| e == input.event_type) {
            return Err(Box::new(OutboundError::EventNotHandled {
                mapping: out.name.clone(),
                event: input.event_type.to_string(),
                handled: out.events.join(", "),
            }));
        }
        let root = source_document(input, out)?;
        let mut ev = Eval::new(
            &self.ast,
            &self.tz,
            doc_json::JsonDoc::new("", &root),
            explain,
        );
        ev.set_mapping(&out.name);
        let rule_err = |e: Box<MapError>| Box::new(OutboundError::Rule(*e));
        match out.format {
            OutboundFormat::Json => {
                let body = ev
                    .object_at("", &out.body, None)
                    .map_err(rule_err)?
                    .unwrap_or_else(|| Draft::Object(Vec::new()));
                let explanations = ev.explain.take().unwrap_or_default();
                let bytes = serde_json::to_vec(&body).map_err(|e| {
                    Box::new(OutboundError::Shape {
                        mapping: out.name.clone(),
                        output: String::new(),
                        message: e.to_string(),
                    })
                })?;
                Ok((
                    Rendered {
                        format: OutboundFormat::Json,
                        body: bytes,
                        content_type: JSON_CONTENT_TYPE,
                        control_id: None,
                    },
                    explanations,
                ))
            }
            OutboundFormat::Hl7v2 => {
                let mut segments: Vec<WriteSegment> = Vec::new();
                for seg in &out.segments {
                    let items = match &seg.each {
                        Some(p) => ev.select_all(p).into_iter().map(Some).collect(),
                        None => vec![None],
                    };
                    for (k, scope) in items.into_iter().enumerate() {
                        let prefix = match scope {
                            Some(_) => format!("{}[{}]", seg.id, k + 1),
                            None => seg.id.clone(),
                        };
                        if !ev.all_hold(&seg.when, scope) {
                            continue;
                        }
                        let value = ev
                            .object_at(&prefix, &seg.fields, scope)
                            .map_err(rule_err)?
                            .map(|d| d.to_value());
                        let mut w = WriteSegment::new(&seg.id);
                        if let Some(J::Object(fields)) = value {
                            for (n, v) in &fields {
                                let at = format!("{prefix}.{n}");
                                let field = to_field(v).map_err(|message| {
                                    Box::new(OutboundError::Shape {
                                        mapping: out.name.clone(),
                                        output: at.clone(),
                                        message,
                                    })
                                })?;
                                w.set(n.parse().unwrap_or(0), field);
                            }
                        }
                        // A repeated segment without a set ID gets its position: NK1-1, OBX-1 count 1, 2, ….
                        if scope.is_some() && !w.has(1) {
                            w.set_text(1, &(k + 1).to_string());
                        }
                        segments.push(w);
                    }
                }
                let mut filled = fill_msh(&mut segments, out, input);
                // The body is UTF-8; a receiver assumes ASCII (or its own 8-bit set) unless MSH-18 says
                // otherwise, so it is said whenever the message is not plain ASCII.
                let non_ascii = segments
                    .iter()
                    .flat_map(|s| s.fields.iter().flatten().flatten().flatten())
                    .any(|t| !t.is_ascii());
                if let Some(msh) = segments.first_mut()
                    && non_ascii
                    && !msh.has(18)
                {
                    msh.set_text(18, UTF8_CHARSET);
                    filled.push((18, None, UTF8_CHARSET.to_string()));
                }
                let control_id = msh_control_id(&segments);
                let mut explanations = ev.explain.take().unwrap_or_default();
                if explain {
                    // What Ferry wrote into MSH itself, so `--explain` accounts for every field.
                    let at = explanations
                        .iter()
                        .position(|e| !e.output.starts_with("MSH."));
                    let records = filled.into_iter().map(|(n, source, value)| Explanation {
                        event: 0,
                        output: format!("MSH.{n}"),
                        rule: "filled by Ferry".to_string(),
                        source: source.map(str::to_string),
                        raw: None,
                        value: J::String(value),
                    });
                    let at = at.unwrap_or(explanations.len());
                    explanations.splice(at..at, records);
                }
                for e in &mut explanations {
                    e.output = hl7_output_name(&e.output);
                }
                let text = write_message(&segments, &Separators::default());
                Ok((
                    Rendered {
                        format: OutboundFormat::Hl7v2,
                        body: text.into_bytes(),
                        content_type: HL7_CONTENT_TYPE,
                        control_id: Some(control_id),
                    },
                    explanations,
                ))
            }
        }
    }
}

/// Puts MSH first (adding it when the file has none) and fills what the file left to Ferry; returns what
/// it filled: (field, envelope source, value), for `explain`.
fn fill_msh(
    segments: &mut Vec<WriteSegment>,
    out: &Outbound,
    input: &OutboundInput<'_>,
) -> Vec<(usize, Option<&'static str>, String)> {
    if segments.first().is_none_or(|s| s.id != "MSH") {
        segments.insert(0, WriteSegment::new("MSH"));
    }
    let mut filled = Vec::new();
    let Some(msh) = segments.first_mut() else {
        return filled;
    };
    for &n in MSH_FILLED {
        if msh.has(n) {
            continue;
        }
        let (source, value) = match n {
            7 => (Some("$event.recorded_at"), recorded_dtm(input.recorded_at)),
            9 => (None, out.message_type.join("^")),
            10 => (Some("$delivery.id"), input.delivery_id.to_string()),
            11 => (None, "P".to_string()),
            _ => (None, out.version.clone()),
        };
        if n == 9 {
            msh.set(
                9,
                vec![out.message_type.iter().map(|c| vec![c.clone()]).collect()],
            );
        } else {
            msh.set_text(n, &value);
        }
        filled.push((n, source, value));
    }
    filled
}

/// MSH-10 as written (escaped), so that the receiver's MSA-2 can be compared with it.
fn msh_control_id(segments: &[WriteSegment]) -> String {
    let Some(msh) = segments.first() else {
        return String::new();
    };
    msh.fields
        .get(9)
        .and_then(|f| f.first())
        .and_then(|r| r.first())
        .and_then(|c| c.first())
        .map(|s| escape(s, &Separators::default()).into_owned())
        .unwrap_or_default()
}

/// The recorded time as HL7 DTM with seconds and offset: `20261103153000+0100`.
fn recorded_dtm(at: OffsetDateTime) -> String {
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&Rfc3339)
        .ok()
        .and_then(|s| transform::hl7_datetime(&s).ok())
        .unwrap_or_default()
}

/// `PID.3[0].1` (explain's JSON-style output name) → `PID.3[1].1`: HL7 repetitions count from 1. The segment
/// prefix (`NK1[2]`) is already 1-based.
fn hl7_output_name(name: &str) -> String {
    let Some(dot) = name.find('.') else {
        return name.to_string();
    };
    let (head, rest) = name.split_at(dot);
    let mut out = String::with_capacity(name.len());
    out.push_str(head);
    let mut digits = String::new();
    let mut in_index = false;
    for c in rest.chars() {
        match c {
            '[' => {
                in_index = true;
                digits.clear();
                out.push(c);
            }
            ']' if in_index => {
                in_index = false;
                let n = digits.parse::<usize>().map_or(0, |n| n + 1);
                out.push_str(&n.to_string());
                out.push(c);
            }
            _ if in_index => digits.push(c),
            _ => out.push(c),
        }
    }
    out
}

/// Text of a scalar: booleans as HL7 table 0136 writes them.
fn scalar_text(v: &J) -> Option<String> {
    match v {
        J::String(s) => Some(s.clone()),
        J::Bool(b) => Some(if *b { "Y" } else { "N" }.to_string()),
        J::Number(n) => Some(n.to_string()),
        J::Null => Some(String::new()),
        J::Array(_) | J::Object(_) => None,
    }
}

/// Children of an object keyed by position (`"1"`, `"4"`), placed at those positions.
fn numbered<T: Default + Clone>(
    map: &Map<String, J>,
    what: &str,
    each: impl Fn(&J) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut out: Vec<T> = Vec::new();
    for (k, v) in map {
        let n = k
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=99).contains(n))
            .ok_or_else(|| format!("`{k}` is not a {what} number (1 to 99)"))?;
        if out.len() < n {
            out.resize(n, T::default());
        }
        out[n - 1] = each(v)?;
    }
    Ok(out)
}

fn to_component(v: &J) -> Result<Component, String> {
    match v {
        J::Object(m) => numbered(m, "subcomponent", |s| {
            scalar_text(s).ok_or_else(|| "a subcomponent must be text".to_string())
        }),
        J::Array(_) => {
            Err("a list where a component is expected (HL7 repeats whole fields only)".into())
        }
        other => Ok(vec![scalar_text(other).unwrap_or_default()]),
    }
}

fn to_repetition(v: &J) -> Result<Repetition, String> {
    match v {
        J::Object(m) => numbered(m, "component", to_component),
        J::Array(_) => Err("a list inside a list (HL7 repeats whole fields only)".into()),
        other => Ok(vec![vec![scalar_text(other).unwrap_or_default()]]),
    }
}

/// A rule's value as an HL7 field: text, a list (repetitions), or an object keyed by component number.
fn to_field(v: &J) -> Result<WriteField, String> {
    match v {
        J::Array(items) => items.iter().map(to_repetition).collect(),
        other => Ok(vec![to_repetition(other)?]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn values_become_fields_by_their_shape() {
        let f =
            to_field(&json!([{"1": "100010", "4": {"1": "HOSP", "2": "1.2.3"}, "5": "MR"}, "X"]))
                .unwrap();
        assert_eq!(
            f,
            vec![
                vec![
                    vec!["100010".to_string()],
                    vec![],
                    vec![],
                    vec!["HOSP".to_string(), "1.2.3".to_string()],
                    vec!["MR".to_string()],
                ],
                vec![vec!["X".to_string()]],
            ]
        );
        assert_eq!(
            to_field(&json!(true)).unwrap(),
            vec![vec![vec!["Y".to_string()]]]
        );
        assert!(
            to_field(&json!({"x": "1"}))
                .unwrap_err()
                .contains("not a component number")
        );
        assert!(
            to_field(&json!({"1": ["a", "b"]}))
                .unwrap_err()
                .contains("list")
        );
        assert!(
            to_field(&json!([["a"]]))
                .unwrap_err()
                .contains("list inside a list")
        );
    }

    #[test]
    fn explain_names_count_repetitions_from_one() {
        assert_eq!(hl7_output_name("PID.3[0].4.1"), "PID.3[1].4.1");
        assert_eq!(hl7_output_name("NK1[2].5[1]"), "NK1[2].5[2]");
        assert_eq!(hl7_output_name("MSH.3"), "MSH.3");
    }

    #[test]
    fn recorded_time_is_seconds_with_offset() {
        let at = OffsetDateTime::parse("2026-11-03T15:30:00.5+01:00", &Rfc3339).unwrap();
        assert_eq!(recorded_dtm(at), "20261103153000+0100");
    }
}
