//! The checked form of mapping files: what the loader builds and the evaluator walks.
//!
//! Names are resolved to indexes at load time (datatypes, named rules, tables), paths are parsed once, and each
//! rule carries a short description of itself for `explain` (`path PID.3[*] as CX`). Nothing here is public:
//! the file format is the interface, and it is documented in `mappings/README.md`.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::domain::StreamKind;
use crate::hl7::Path;

use super::transform::Transform;
use super::yaml::Pos;

/// A path as written in a rule: absolute (`PID.3[*]`) or relative to the value in scope (`.4.1`, `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathRef {
    Abs(Path),
    /// Parsed with a placeholder segment ID, so `field`/`repetition`/`component`/`subcomponent` are the steps
    /// down from the value in scope (whatever its level); `field: None` is `.`, the value itself.
    Rel(Path),
}

impl PathRef {
    /// Whether the path can select several values (`[*]` somewhere).
    pub fn selects_many(&self) -> bool {
        let p = self.path();
        p.segment_index == crate::hl7::Index::All || p.repetition == crate::hl7::Index::All
    }

    pub fn path(&self) -> &Path {
        match self {
            PathRef::Abs(p) | PathRef::Rel(p) => p,
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
    pub pos: Pos,
    pub rule: Rule,
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
    pub default: Option<serde_json::Value>,
    pub required: bool,
    pub when: Vec<Condition>,
    /// For `explain`: e.g. `path PV1.2.1 table patient_class default unknown`.
    pub desc: String,
}

/// A datatype rule or a named rule of `datatypes.yaml`.
#[derive(Debug, Clone)]
pub(crate) struct Named {
    pub name: String,
    pub rule: Rule,
}

/// A code table (`tables/<name>.yaml`).
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub name: String,
    pub map: HashMap<String, String>,
    pub default: Option<String>,
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
}

/// One inbound mapping file.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    /// The file name without `.yaml`, e.g. `adt_a01.patient_admitted`: the mapping's name in event metadata.
    pub name: String,
    pub file: usize,
    pub messages: Vec<(String, String)>,
    pub event: String,
    pub schema_version: i32,
    pub stream: Vec<StreamKind>,
    pub when: Vec<Condition>,
    /// Segment IDs that start a group, in group order (`[ORC, OBR]`); empty: the whole message is one event.
    pub for_each: Vec<String>,
    pub fields: Vec<FieldRule>,
    pub examples: Vec<ExampleSpec>,
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
}
