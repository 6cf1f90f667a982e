//! The checked form of mapping files: what the loader builds and the evaluator walks.
//!
//! Names are resolved to indexes at load time (datatypes, named rules, tables), paths are parsed once, and each
//! rule carries a short description of itself for `explain` (`path PID.3[*] as CX`). Nothing here is public:
//! the file format is the interface, and it is documented in `mappings/README.md`.

use std::path::PathBuf;

use crate::domain::StreamKind;
use crate::hl7::Path;

use super::transform::Transform;
use super::yaml::Pos;

/// A path as written in a rule: absolute (`PID.3[*]`) or relative to the value in scope (`.4.1`, `.`) in
/// HL7 files; a JSON element path (`identifier[*].value`, `.system`) in FHIR files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathRef {
    Abs(Path),
    /// Parsed with a placeholder segment ID, so `field`/`repetition`/`component`/`subcomponent` are the steps
    /// down from the value in scope (whatever its level); `field: None` is `.`, the value itself.
    Rel(Path),
    Json(JsonPath),
}

/// A path into a FHIR resource: element names, each with an optional index (0-based, as in FHIRPath),
/// from the resource (`name[0].given[*]`) or, starting with a dot, from the value in scope (`.system`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonPath {
    pub relative: bool,
    pub steps: Vec<JsonStep>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonStep {
    pub name: String,
    /// `Default`: the first item of an array (a single value is its own first item), as an HL7 path
    /// without an index reads the first repetition.
    pub index: crate::hl7::Index,
}

impl JsonPath {
    /// Parses `a.b[2].c[*]` (or `.b`, `.` when `relative` paths are allowed by the caller): the error is
    /// (character position, plain sentence).
    pub fn parse(text: &str) -> Result<JsonPath, (usize, String)> {
        use crate::hl7::Index;
        let (relative, body) = match text.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let mut steps = Vec::new();
        if body.is_empty() {
            return if relative {
                Ok(JsonPath { relative, steps })
            } else {
                Err((0, "the path is empty".into()))
            };
        }
        let mut at = usize::from(relative);
        for part in body.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((name, rest)) => {
                    let Some(inner) = rest.strip_suffix(']') else {
                        return Err((at + part.len(), "`[` without its closing `]`".into()));
                    };
                    let index = if inner == "*" {
                        Index::All
                    } else {
                        match inner.parse::<usize>() {
                            Ok(n) => Index::Nth(n),
                            Err(_) => {
                                return Err((
                                    at + name.len() + 1,
                                    format!("index {inner:?} is neither a number nor *"),
                                ));
                            }
                        }
                    };
                    (name, index)
                }
                None => (part, Index::Default),
            };
            // `$event`, `$delivery`: reserved names outbound files read the envelope by (the loader says
            // where they are allowed); `$` cannot start a payload field, so they never clash.
            let bare = match name.strip_prefix('$') {
                Some(rest) if steps.is_empty() && !relative => rest,
                _ => name,
            };
            let ok = bare.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err((
                    at,
                    format!("{name:?} is not an element name (letters and digits, e.g. birthDate)"),
                ));
            }
            steps.push(JsonStep {
                name: name.to_string(),
                index,
            });
            at += part.len() + 1;
        }
        Ok(JsonPath { relative, steps })
    }
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.relative {
            f.write_str(".")?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(&s.name)?;
            match s.index {
                crate::hl7::Index::All => f.write_str("[*]")?,
                crate::hl7::Index::Nth(n) => write!(f, "[{n}]")?,
                crate::hl7::Index::Default => {}
            }
        }
        Ok(())
    }
}

impl PathRef {
    /// Whether the path can select several values (`[*]` somewhere).
    pub fn selects_many(&self) -> bool {
        use crate::hl7::Index;
        match self {
            PathRef::Abs(p) | PathRef::Rel(p) => {
                p.segment_index == Index::All || p.repetition == Index::All
            }
            PathRef::Json(j) => j.steps.iter().any(|s| s.index == Index::All),
        }
    }
}

impl std::fmt::Display for PathRef {
    /// The path as the analyst wrote it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathRef::Abs(p) => write!(f, "{p}"),
            PathRef::Rel(p) => {
                let s = p.to_string();
                match s.find('.') {
                    Some(i) => f.write_str(&s[i..]),
                    None => f.write_str("."),
                }
            }
            PathRef::Json(j) => write!(f, "{j}"),
        }
    }
}

/// A `when:` condition.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    /// One path, or several: the test holds when it holds for any of them (`present`, `in`), or for none
    /// (`absent`, `not_in`, their negations).
    pub paths: Vec<PathRef>,
    pub test: Test,
}

#[derive(Debug, Clone)]
pub(crate) enum Test {
    In(Vec<String>),
    NotIn(Vec<String>),
    Present,
    Absent,
}

/// One `where:`/`prefer:` entry: a relative path and the values it may have.
pub(crate) type Match = (PathRef, Vec<String>);

/// How the value a scope source selected becomes output: a datatype rule or an object of fields.
#[derive(Debug, Clone)]
pub(crate) enum Build {
    As(usize),
    Fields(Vec<FieldRule>),
}

/// One entry of a `fields:` map: the output field's name, where the name is written, and its rule.
#[derive(Debug, Clone)]
pub(crate) struct FieldRule {
    pub name: String,
    /// The name as a JSON object key with its colon, `"name":`, written into every payload as it is.
    pub json_key: String,
    /// The name's place among its list's names, sorted: see [`rank_fields`].
    pub rank: u32,
    /// The index in its list of the field whose rank is this field's index, so that the list can be
    /// walked in rank order (`u32::MAX` while the list is unranked): see [`rank_fields`].
    pub by_rank: u32,
    pub pos: Pos,
    pub rule: Rule,
}

impl FieldRule {
    pub fn new(name: String, pos: Pos, rule: Rule) -> FieldRule {
        let json_key = format!("{}:", serde_json::Value::String(name.clone()));
        FieldRule {
            name,
            json_key,
            rank: 0,
            by_rank: u32::MAX,
            pos,
            rule,
        }
    }
}

/// Gives each field of one `fields:` list its [`FieldRule::rank`] and [`FieldRule::by_rank`], so that
/// the objects built from the list come out with their members in name order without being sorted:
/// the evaluator walks the list in rank order (see `Eval::fields`). A list left unranked still builds
/// correct objects, sorted by name at a higher cost.
pub(crate) fn rank_fields(fields: &mut [FieldRule]) {
    let mut order: Vec<usize> = (0..fields.len()).collect();
    order.sort_by(|&a, &b| fields[a].name.cmp(&fields[b].name));
    for (rank, i) in order.into_iter().enumerate() {
        fields[i].rank = u32::try_from(rank).unwrap_or(u32::MAX);
        fields[rank].by_rank = u32::try_from(i).unwrap_or(u32::MAX);
    }
}

/// Where a rule's value comes from: exactly one per rule.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Path(PathRef),
    First(Vec<Rule>),
    Each {
        paths: Vec<PathRef>,
        /// `where:` keeps only matching items.
        filter: Vec<Match>,
        /// `prefer:` moves matching items first (order otherwise kept): e.g. the MRN that keys the stream.
        prefer: Vec<Match>,
    },
    Pick {
        path: PathRef,
        conditions: Vec<Match>,
    },
    Const(serde_json::Value),
    Use(usize),
    Fields(Vec<FieldRule>),
    Join {
        parts: Vec<Rule>,
        separator: String,
    },
    /// A list of the rules' values, absent ones left out: for outbound JSON (`entry: [ … ]`), where the
    /// output has lists the event does not.
    List(Vec<Rule>),
}

/// One rule with its modifiers.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// The file the rule is written in, as an index into [`Ast::files`].
    pub file: usize,
    pub pos: Pos,
    pub source: Source,
    pub build: Option<Build>,
    pub transforms: Vec<Transform>,
    pub table: Option<usize>,
    /// `reverse: true`: the table is read value → code (outbound), see [`Table::reverse`].
    pub reverse: bool,
    pub default: Option<serde_json::Value>,
    pub required: bool,
    pub when: Vec<Condition>,
    /// For `explain`: e.g. `path PV1.2.1 table patient_class default unknown`.
    pub desc: String,
    /// Nothing but its source: no `as`/`fields`, transform, table, default, `required` or `when`
    /// (see [`Rule::finish`]). A plain path rule is a value's text as it is, and the evaluator takes
    /// it without the steps the other modifiers need.
    pub plain: bool,
}

impl Rule {
    /// Sets [`Rule::plain`] once the rule is complete.
    pub fn finish(mut self) -> Rule {
        self.plain = self.build.is_none()
            && self.transforms.is_empty()
            && self.table.is_none()
            && self.default.is_none()
            && !self.required
            && self.when.is_empty();
        self
    }
}

/// A datatype rule or a named rule of `datatypes.yaml`.
#[derive(Debug, Clone)]
pub(crate) struct Named {
    pub name: String,
    pub rule: Rule,
    /// Defined in `fhir/datatypes.yaml` (reads FHIR JSON) rather than `datatypes.yaml` (reads HL7).
    pub fhir: bool,
}

/// A code table (`tables/<name>.yaml`).
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub name: String,
    pub map: foldhash::HashMap<String, String>,
    pub default: Option<String>,
    /// Value → code, for outbound rules with `reverse: true`: the table file's `reverse:` entries, then for
    /// every other value the first code in file order that maps to it (so `unknown` → `U` needs
    /// `reverse: {unknown: U}` in a table where `C: unknown` comes first).
    pub reverse: foldhash::HashMap<String, String>,
}

/// One `examples:` entry of an inbound file.
#[derive(Debug, Clone)]
pub(crate) struct ExampleSpec {
    pub line: usize,
    pub input: PathBuf,
    pub expect: ExpectSpec,
}

#[derive(Debug, Clone)]
pub(crate) enum ExpectSpec {
    Events(PathBuf),
    Ack {
        code: String,
        error: Option<u16>,
        location: Option<String>,
    },
    /// A FHIR write the mapping refuses: the error code (table 0357, as for HL7) and the element path.
    Error {
        error: Option<u16>,
        path: Option<String>,
    },
}

/// The FHIR interactions a FHIR mapping file handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FhirInteraction {
    Create,
    Update,
}

impl FhirInteraction {
    pub fn as_str(self) -> &'static str {
        match self {
            FhirInteraction::Create => "create",
            FhirInteraction::Update => "update",
        }
    }
}

/// The resource types FHIR mapping files may read: those the API accepts writes of.
pub const WRITABLE_RESOURCES: &[&str] = &["Patient", "ServiceRequest"];

/// What a FHIR mapping file reads: a resource type and the interactions it applies to.
#[derive(Debug, Clone)]
pub(crate) struct FhirSource {
    pub resource: String,
    pub interactions: Vec<FhirInteraction>,
}

/// One inbound mapping file.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    /// The file name without `.yaml`, e.g. `adt_a01.patient_admitted`: the mapping's name in event metadata.
    pub name: String,
    pub file: usize,
    pub messages: Vec<(String, String)>,
    pub event: String,
    /// The event's catalogue entry (`None` only in a set that failed to load).
    pub spec: Option<&'static crate::domain::EventSpec>,
    pub schema_version: i32,
    pub stream: Vec<StreamKind>,
    /// Where `stream:` is written, for problems about it.
    pub stream_pos: Pos,
    pub when: Vec<Condition>,
    /// Segment IDs that start a group, in group order (`[ORC, OBR]`); empty: the whole message is one event.
    pub for_each: Vec<String>,
    pub fields: Vec<FieldRule>,
    pub fields_pos: Pos,
    /// Every key written under `fields:`, also those whose rule had a problem.
    pub written: Vec<String>,
    pub examples: Vec<ExampleSpec>,
    /// `Some` for a file under `fhir/` (FHIR resource → event); `None` for `inbound/` (HL7 → event).
    pub fhir: Option<FhirSource>,
}

/// What an outbound file renders: an HL7 v2 message or a JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundFormat {
    Hl7v2,
    Json,
}

impl OutboundFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundFormat::Hl7v2 => "hl7v2",
            OutboundFormat::Json => "json",
        }
    }
}

/// One entry of an outbound file's `segments:`.
#[derive(Debug, Clone)]
pub(crate) struct SegmentRule {
    pub id: String,
    /// `each:`: one segment per item the path selects (relative paths in the fields read the item).
    pub each: Option<PathRef>,
    pub when: Vec<Condition>,
    /// Output names are field numbers (`"3"`).
    pub fields: Vec<FieldRule>,
}

/// One `examples:` entry of an outbound file.
#[derive(Debug, Clone)]
pub(crate) struct OutboundExample {
    pub line: usize,
    /// A JSON file: an event `{event, stream, payload}` or an array of them (`index` picks one).
    pub input: PathBuf,
    pub index: usize,
    pub delivery_id: String,
    /// RFC 3339, the event's recorded time.
    pub recorded_at: String,
    /// The expected `.hl7` (segments one a line) or `.json` file.
    pub expect: PathBuf,
}

/// One outbound mapping file (`outbound/<name>.yaml`): stored event → message or JSON.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    /// As subscriptions name it: `outbound/pacs_orm_o01`.
    pub name: String,
    pub file: usize,
    pub events: Vec<String>,
    pub format: OutboundFormat,
    /// MSH-9 components, e.g. `[ORM, O01, ORM_O01]` (HL7 v2 only).
    pub message_type: Vec<String>,
    /// MSH-12 (HL7 v2 only).
    pub version: String,
    pub segments: Vec<SegmentRule>,
    /// The JSON document's fields (JSON only).
    pub body: Vec<FieldRule>,
    pub examples: Vec<OutboundExample>,
}

/// Everything loaded, names resolved.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ast {
    /// Loaded files, relative to the set's directory (index = `Rule::file`).
    pub files: Vec<PathBuf>,
    pub default_timezone: Option<jiff::tz::TimeZone>,
    pub datatypes: Vec<Named>,
    pub rules: Vec<Named>,
    pub tables: Vec<Table>,
    pub inbound: Vec<Inbound>,
    pub outbound: Vec<Outbound>,
}
