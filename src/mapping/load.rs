//! Loading a mapping directory: YAML trees → checked [`Ast`], collecting every problem on the way.
//!
//! The loader never stops at the first problem: an analyst running `ferry mappings check` should see all of
//! them at once, each with file, line, column and a plain sentence. It reads only `settings.yaml`,
//! `datatypes.yaml`, `tables/*.yaml`, `inbound/*.yaml` (HL7 v2 → events) and `fhir/*.yaml` (FHIR writes →
//! events, with `fhir/datatypes.yaml` for FHIR datatypes) and `outbound/*.yaml`; other files and folders
//! (a README, `examples/`) are left alone. The two kinds share every rule and modifier; only paths differ
//! (`PID.3[*].4.1` against `identifier[*].value`), and a file of one kind cannot use the other's datatypes.
//! `outbound/*.yaml` (stored event → HL7 v2 message or JSON) read the event with the same JSON paths, plus
//! the reserved `$event`/`$delivery`, with datatypes of their own in `outbound/datatypes.yaml`.

use std::collections::{HashMap, HashSet};
use std::path::{Path as FsPath, PathBuf};

use sha2::{Digest, Sha256};

use crate::domain::{self, Shape, StreamKind};
use crate::hl7::{Index, Path};

use super::Problem;
use super::ast::{
    Ast, Build, Condition, ExampleSpec, ExpectSpec, FhirInteraction, FhirSource, FieldRule,
    Inbound, JsonPath, Match, Named, Outbound, OutboundExample, OutboundFormat, PathRef, Rule,
    SegmentRule, Source, Table, Test, WRITABLE_RESOURCES,
};
use super::transform::Transform;
use super::yaml::{self, Kind, Node, Pos};

pub(crate) const RULE_KEYS: &[&str] = &[
    "path",
    "first",
    "each",
    "pick",
    "where",
    "prefer",
    "const",
    "use",
    "fields",
    "join",
    "list",
    "separator",
    "as",
    "table",
    "reverse",
    "default",
    "transform",
    "required",
    "when",
];
const SOURCE_KEYS: &[&str] = &[
    "path", "first", "each", "pick", "const", "use", "join", "list",
];
const OUTBOUND_KEYS: &[&str] = &[
    "description",
    "events",
    "format",
    "message",
    "segments",
    "body",
    "examples",
];
/// The outbound datatypes file, beside the outbound mapping files.
const OUTBOUND_DATATYPES: &str = "outbound/datatypes.yaml";
/// The envelope names outbound paths may start with (see `mappings/README.md`, "Outbound mappings").
pub(crate) const RESERVED_ROOTS: &[&str] = &["$event", "$delivery"];
/// MSH fields Ferry writes itself when the file does not: MSH-7 (recorded time), MSH-9 (`message:`),
/// MSH-10 (the delivery id), MSH-11 (`P`), MSH-12 (`message.version`).
pub(crate) const MSH_FILLED: &[usize] = &[7, 9, 10, 11, 12];
const INBOUND_KEYS: &[&str] = &[
    "description",
    "messages",
    "event",
    "stream",
    "when",
    "for_each",
    "fields",
    "examples",
];
const FHIR_KEYS: &[&str] = &[
    "description",
    "resource",
    "interactions",
    "event",
    "stream",
    "when",
    "fields",
    "examples",
];
/// The FHIR datatypes file, beside the FHIR mapping files.
const FHIR_DATATYPES: &str = "fhir/datatypes.yaml";
const CONDITION_KEYS: &[&str] = &["path", "in", "not_in", "present", "absent"];

/// The result of loading: the checked tree and the version hash, or the problems.
pub(crate) struct Loaded {
    pub ast: Ast,
    pub version: String,
}

struct Loader<'d> {
    dir: &'d FsPath,
    problems: Vec<Problem>,
    ast: Ast,
    /// (relative path with `/`, content) of every loaded file, for the version hash.
    sources: Vec<(String, Vec<u8>)>,
    datatype_ids: HashMap<String, usize>,
    rule_ids: HashMap<String, usize>,
    table_ids: HashMap<String, usize>,
    /// Whether example files must exist (see [`super::LoadOptions`]).
    example_files: bool,
    /// `datatypes.yaml` exists but could not be read: its names are unknown, so "unknown datatype/rule"
    /// would only repeat that one problem everywhere.
    datatypes_broken: bool,
    /// The file being loaded is a FHIR one: paths are JSON element paths.
    fhir: bool,
    /// The file being loaded is an outbound one (also JSON paths, over the stored event): `$event`,
    /// `list:` and `reverse:` are allowed, and datatype and rule names are those of
    /// `outbound/datatypes.yaml`, kept apart in `other_datatype_ids`/`other_rule_ids` meanwhile.
    outbound: bool,
    other_datatype_ids: HashMap<String, usize>,
    other_rule_ids: HashMap<String, usize>,
}

/// Loads and checks a mapping directory.
pub(crate) fn load(dir: &FsPath, example_files: bool) -> Result<Loaded, Vec<Problem>> {
    let mut l = Loader {
        example_files,
        datatypes_broken: false,
        fhir: false,
        outbound: false,
        other_datatype_ids: HashMap::new(),
        other_rule_ids: HashMap::new(),
        dir,
        problems: Vec::new(),
        ast: Ast::default(),
        sources: Vec::new(),
        datatype_ids: HashMap::new(),
        rule_ids: HashMap::new(),
        table_ids: HashMap::new(),
    };
    if !dir.is_dir() {
        l.whole_file(
            dir.to_path_buf(),
            "the mapping directory does not exist or is not a directory",
        );
        return Err(l.problems);
    }
    l.settings();
    for rel in l.list("tables") {
        l.table(&rel);
    }
    l.datatypes(FsPath::new("datatypes.yaml"));
    for rel in l.list("inbound") {
        l.inbound(&rel);
    }
    l.fhir = true;
    l.datatypes(FsPath::new(FHIR_DATATYPES));
    for rel in l.list("fhir") {
        if rel != FsPath::new(FHIR_DATATYPES) {
            l.inbound(&rel);
        }
    }
    // Outbound files read stored events (JSON, so FHIR-style paths) and name their own datatypes: an
    // outbound CX builds components from an identifier, the inverse of the inbound CX, under the same name.
    l.outbound = true;
    std::mem::swap(&mut l.datatype_ids, &mut l.other_datatype_ids);
    std::mem::swap(&mut l.rule_ids, &mut l.other_rule_ids);
    let broken = std::mem::take(&mut l.datatypes_broken);
    l.datatypes(FsPath::new(OUTBOUND_DATATYPES));
    for rel in l.list("outbound") {
        if rel != FsPath::new(OUTBOUND_DATATYPES) {
            l.outbound_file(&rel);
        }
    }
    std::mem::swap(&mut l.datatype_ids, &mut l.other_datatype_ids);
    std::mem::swap(&mut l.rule_ids, &mut l.other_rule_ids);
    l.datatypes_broken = broken;
    l.outbound = false;
    l.fhir = false;
    l.check_cycles();
    l.check_targets();
    if !l.problems.is_empty() {
        let mut problems = l.problems;
        problems.sort_by(|a, b| {
            (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message))
        });
        problems.dedup();
        return Err(problems);
    }
    let version = l.version();
    Ok(Loaded {
        ast: l.ast,
        version,
    })
}

impl Loader<'_> {
    // ---- problems and files -------------------------------------------------------------------------------

    fn problem(&mut self, file: usize, pos: Pos, message: impl Into<String>) {
        let path = self.dir.join(&self.ast.files[file]);
        self.problems.push(Problem {
            file: path,
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }

    fn whole_file(&mut self, file: PathBuf, message: impl Into<String>) {
        self.problems.push(Problem {
            file,
            line: 0,
            column: 0,
            message: message.into(),
        });
    }

    /// The `.yaml`/`.yml` files of a sub-directory, sorted, as paths relative to the set's directory.
    fn list(&mut self, sub: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .filter_map(|p| p.file_name().map(|n| PathBuf::from(sub).join(n)))
            .collect();
        out.sort();
        out
    }

    /// Reads and parses a file; registers it for the hash. `None` after a problem was recorded.
    fn read(&mut self, rel: &FsPath, required: bool) -> Option<(usize, Node)> {
        let full = self.dir.join(rel);
        let bytes = match std::fs::read(&full) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return None,
            Err(e) => {
                self.whole_file(full, format!("cannot read the file: {e}"));
                return None;
            }
        };
        let file = self.ast.files.len();
        self.ast.files.push(rel.to_path_buf());
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        self.sources.push((key, bytes.clone()));
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                self.problem(
                    file,
                    Pos { line: 1, column: 1 },
                    "the file is not UTF-8 text",
                );
                return None;
            }
        };
        match yaml::parse(&text) {
            Ok(node) => Some((file, node)),
            Err(e) => {
                // The classic trap: `{ each: PID.3[*] }`. Brackets end a plain value inside { } and [ ].
                let near = |n: usize| text.lines().nth(n.saturating_sub(1)).unwrap_or("");
                let bracketed = |l: &str| {
                    l.contains("[*]")
                        || l.as_bytes().windows(2).any(|w| {
                            (w[0].is_ascii_uppercase() || w[0].is_ascii_digit()) && w[1] == b'['
                        })
                };
                let hint = if e.message.contains("flow")
                    && (bracketed(near(e.pos.line)) || bracketed(near(e.pos.line - 1)))
                {
                    "; inside { } or [ ], put paths with brackets in quotes: { each: \"PID.3[*]\" }"
                } else {
                    ""
                };
                self.problem(
                    file,
                    e.pos,
                    format!("YAML syntax error: {}{hint}", e.message),
                );
                None
            }
        }
    }

    /// The entries of a map node; reports a non-map, unknown keys (naming the allowed ones) and repeated keys.
    fn entries<'n>(
        &mut self,
        file: usize,
        node: &'n Node,
        allowed: &[&str],
        what: &str,
    ) -> Vec<(&'n str, &'n Node)> {
        let Kind::Map(entries) = &node.kind else {
            self.problem(
                file,
                node.pos,
                format!("{what} must be a map, found {}", node.describe()),
            );
            return Vec::new();
        };
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.as_str() else {
                self.problem(file, k.pos, format!("a key of {what} must be text"));
                continue;
            };
            if !allowed.is_empty() && !allowed.contains(&key) {
                self.problem(
                    file,
                    k.pos,
                    format!(
                        "unknown key `{key}` in {what}; allowed keys: {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            if !seen.insert(key) {
                self.problem(file, k.pos, format!("`{key}` is given twice in {what}"));
                continue;
            }
            out.push((key, v));
        }
        out
    }

    fn string(&mut self, file: usize, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) if matches!(node.kind, Kind::Scalar { .. }) => Some(s.to_string()),
            _ => {
                self.problem(
                    file,
                    node.pos,
                    format!("{what} must be text, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// A scalar or a list of scalars, as strings.
    fn strings(&mut self, file: usize, node: &Node, what: &str) -> Vec<String> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .filter_map(|i| self.string(file, i, what))
                .collect(),
            _ => self.string(file, node, what).into_iter().collect(),
        }
    }

    // ---- settings, tables -----------------------------------------------------------------------------

    fn settings(&mut self) {
        let Some((file, node)) = self.read(FsPath::new("settings.yaml"), true) else {
            return;
        };
        let entries = self.entries(file, &node, &["default_timezone"], "settings.yaml");
        let mut found = false;
        for (key, value) in entries {
            if key == "default_timezone" {
                found = true;
                let Some(name) = self.string(file, value, "default_timezone") else {
                    continue;
                };
                match jiff::tz::TimeZone::get(&name) {
                    Ok(tz) => self.ast.default_timezone = Some(tz),
                    Err(_) => self.problem(
                        file,
                        value.pos,
                        format!(
                            "unknown time zone {name:?}: use an IANA zone name such as Europe/Zurich or America/New_York"
                        ),
                    ),
                }
            }
        }
        if !found {
            self.problem(
                file,
                node.pos,
                "default_timezone is missing: HL7 times without an offset need a zone (e.g. `default_timezone: Europe/Zurich`)",
            );
        }
    }

    fn table(&mut self, rel: &FsPath) {
        let name = stem(rel);
        let Some((file, node)) = self.read(rel, true) else {
            // Known by name all the same, so rules using it are not reported as well.
            self.table_ids.insert(name.clone(), self.ast.tables.len());
            self.ast.tables.push(Table {
                name,
                map: foldhash::HashMap::default(),
                default: None,
                reverse: foldhash::HashMap::default(),
            });
            return;
        };
        let mut table = Table {
            name: name.clone(),
            map: foldhash::HashMap::default(),
            default: None,
            reverse: foldhash::HashMap::default(),
        };
        let mut has_map = false;
        let mut explicit = Vec::new();
        for (key, value) in self.entries(
            file,
            &node,
            &["description", "map", "default", "reverse"],
            "a table",
        ) {
            match key {
                "description" => {
                    self.string(file, value, "description");
                }
                "default" => table.default = self.string(file, value, "default"),
                "reverse" => {
                    for (v, code) in self.entries(file, value, &[], "reverse") {
                        if let Some(c) = self.string(file, code, "a code") {
                            explicit.push((v.to_string(), c, code.pos));
                        }
                    }
                }
                _ => {
                    has_map = true;
                    for (code, target) in self.entries(file, value, &[], "map") {
                        if let Some(t) = self.string(file, target, "a table value") {
                            // The first code in file order wins the reverse lookup: the file's
                            // order is the analyst's preference (`F: female` before `FEMALE: female`).
                            table
                                .reverse
                                .entry(t.clone())
                                .or_insert_with(|| code.to_string());
                            table.map.insert(code.to_string(), t);
                        }
                    }
                }
            }
        }
        for (value, code, pos) in explicit {
            if table.map.get(&code) != Some(&value) {
                self.problem(
                    file,
                    pos,
                    format!(
                        "reverse: {value} → {code:?}, but `map:` does not map {code:?} to {value:?}: a reverse entry must be one of the table's own pairs"
                    ),
                );
            }
            table.reverse.insert(value, code);
        }
        if !has_map {
            self.problem(
                file,
                node.pos,
                "a table needs `map:` (code: value, one a line)",
            );
        }
        self.table_ids.insert(name, self.ast.tables.len());
        self.ast.tables.push(table);
    }

    // ---- datatypes and named rules ---------------------------------------------------------------------

    fn datatypes(&mut self, rel: &FsPath) {
        let Some((file, node)) = self.read(rel, false) else {
            self.datatypes_broken |= self.dir.join(rel).exists();
            return;
        };
        let what = rel.to_string_lossy().into_owned();
        let entries = self.entries(file, &node, &["datatypes", "rules"], &what);
        // Names first, so rules may refer to datatypes and rules defined further down.
        let mut bodies: Vec<(bool, usize, &Node)> = Vec::new();
        for (key, section) in &entries {
            let is_datatype = *key == "datatypes";
            for (name, body) in self.entries(file, section, &[], key) {
                let ids = if is_datatype {
                    &self.datatype_ids
                } else {
                    &self.rule_ids
                };
                if self.fhir && ids.contains_key(name) {
                    self.problem(
                        file,
                        body.pos,
                        format!(
                            "{name:?} is already defined in datatypes.yaml: names are shared by datatypes.yaml and {FHIR_DATATYPES}"
                        ),
                    );
                    continue;
                }
                let id = if is_datatype {
                    self.datatype_ids
                        .insert(name.to_string(), self.ast.datatypes.len());
                    self.ast.datatypes.len()
                } else {
                    self.rule_ids.insert(name.to_string(), self.ast.rules.len());
                    self.ast.rules.len()
                };
                let placeholder = Named {
                    name: name.to_string(),
                    rule: placeholder_rule(file, body.pos),
                    fhir: self.fhir,
                };
                if is_datatype {
                    self.ast.datatypes.push(placeholder);
                } else {
                    self.ast.rules.push(placeholder);
                }
                bodies.push((is_datatype, id, body));
            }
        }
        for (is_datatype, id, body) in bodies {
            // Datatype rules read the value they are applied to (relative paths); named rules read the message.
            let Some(rule) = self.rule(file, body, is_datatype) else {
                continue;
            };
            if is_datatype {
                self.ast.datatypes[id].rule = rule;
            } else {
                self.ast.rules[id].rule = rule;
            }
        }
    }

    // ---- rules -------------------------------------------------------------------------------------------

    /// A datatype or rule of the other kind of file: HL7 rules read HL7 values, FHIR rules FHIR elements.
    fn wrong_dialect(&self, what: &str, name: &str) -> String {
        if self.fhir {
            format!(
                "{what} {name:?} reads HL7 v2 values (datatypes.yaml); FHIR mappings use those of {FHIR_DATATYPES}"
            )
        } else {
            format!(
                "{what} {name:?} reads FHIR elements ({FHIR_DATATYPES}); HL7 mappings use those of datatypes.yaml"
            )
        }
    }

    /// Parses a path at `node`; relative paths (`.4.1`, `.`) only where a value is in scope.
    fn path(&mut self, file: usize, node: &Node, scoped: bool) -> Option<PathRef> {
        let text = self.string(file, node, "a path")?;
        let start = node.text_start();
        if self.fhir {
            return match JsonPath::parse(&text) {
                Ok(p) if p.relative && !scoped => {
                    self.problem(
                        file,
                        start,
                        format!("relative path {text:?} outside a value: relative paths (starting with a dot) work inside `as:` datatypes and in the `fields:` of `each:`/`pick:`/`path:`; here write the element from the resource, e.g. identifier{text}"),
                    );
                    None
                }
                Ok(p) => {
                    let root = p.steps.first().map(|s| s.name.as_str()).unwrap_or("");
                    if root.starts_with('$') {
                        let problem = if !self.outbound {
                            Some(format!(
                                "{root} is a name of outbound files (the event envelope); FHIR mappings read the resource"
                            ))
                        } else if !RESERVED_ROOTS.contains(&root) {
                            Some(format!(
                                "unknown name {root}; outbound paths start with an event field (patient.names[*]) or one of {}",
                                RESERVED_ROOTS.join(", ")
                            ))
                        } else {
                            None
                        };
                        if let Some(message) = problem {
                            self.problem(file, start, message);
                            return None;
                        }
                    }
                    Some(PathRef::Json(p))
                }
                Err((at, message)) => {
                    let hint = if text.contains('-') && text.len() <= 12 {
                        "; FHIR mappings read FHIR elements (e.g. identifier[*].value), not HL7 fields"
                    } else {
                        ""
                    };
                    self.problem(
                        file,
                        Pos {
                            line: start.line,
                            column: start.column + at,
                        },
                        format!(
                            "bad path {text:?}: {message} (at character {}){hint}",
                            at + 1
                        ),
                    );
                    None
                }
            };
        }
        let at = |n: usize| Pos {
            line: start.line,
            column: start.column + n,
        };
        let strip = |m: &str| -> String {
            match m.rsplit_once(" at position ") {
                Some((head, _)) => head.to_string(),
                None => m.to_string(),
            }
        };
        if let Some(rest) = text.strip_prefix('.') {
            if !scoped {
                self.problem(
                    file,
                    start,
                    format!(
                        "relative path {text:?} outside a value: relative paths (starting with a dot) work inside `as:` datatypes and in the `fields:` of `each:`/`pick:`/`path:`; here write the segment, e.g. PID{text}"
                    ),
                );
                return None;
            }
            if rest.is_empty() {
                return Some(PathRef::Rel(Path {
                    segment: "ZZZ".into(),
                    segment_index: Index::Default,
                    field: None,
                    repetition: Index::Default,
                    component: None,
                    subcomponent: None,
                }));
            }
            return match format!("ZZZ{text}").parse::<Path>() {
                Ok(p) => Some(PathRef::Rel(p)),
                Err(e) => {
                    let pos = e.position.saturating_sub(3);
                    self.problem(
                        file,
                        at(pos),
                        format!(
                            "bad path {text:?}: {} (at character {})",
                            strip(&e.message),
                            pos + 1
                        ),
                    );
                    None
                }
            };
        }
        match text.parse::<Path>() {
            Ok(p) => Some(PathRef::Abs(p)),
            Err(e) => {
                let hint = if scoped && text.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("; a relative path starts with a dot: .{text}")
                } else {
                    String::new()
                };
                self.problem(
                    file,
                    at(e.position),
                    format!(
                        "bad path {text:?}: {} (at character {}){hint}",
                        strip(&e.message),
                        e.position + 1
                    ),
                );
                None
            }
        }
    }

    fn conditions(&mut self, file: usize, node: &Node, scoped: bool) -> Vec<Condition> {
        let items: Vec<&Node> = match &node.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        for item in items {
            let entries = self.entries(file, item, CONDITION_KEYS, "a `when` condition");
            let mut path = None;
            let mut tests = Vec::new();
            for (key, value) in entries {
                match key {
                    "path" => {
                        let nodes: Vec<&Node> = match &value.kind {
                            Kind::Seq(items) => items.iter().collect(),
                            _ => vec![value],
                        };
                        let paths: Vec<PathRef> = nodes
                            .iter()
                            .filter_map(|n| self.path(file, n, scoped))
                            .collect();
                        if paths.len() == nodes.len() && !paths.is_empty() {
                            path = Some(paths);
                        }
                    }
                    "in" => tests.push(Test::In(self.strings(file, value, "`in`"))),
                    "not_in" => tests.push(Test::NotIn(self.strings(file, value, "`not_in`"))),
                    _ => match value.as_bool() {
                        Some(true) => tests.push(if key == "present" {
                            Test::Present
                        } else {
                            Test::Absent
                        }),
                        _ => self.problem(
                            file,
                            value.pos,
                            format!("`{key}` takes `true` (write the other test for the opposite)"),
                        ),
                    },
                }
            }
            if tests.len() != 1 {
                self.problem(
                    file,
                    item.pos,
                    "a `when` condition has a `path` and exactly one test: `in`, `not_in`, `present: true` or `absent: true`",
                );
                continue;
            }
            match (path, tests.pop()) {
                (Some(paths), Some(test)) => out.push(Condition { paths, test }),
                (None, _) if !self.has_key(item, "path") => {
                    self.problem(file, item.pos, "a `when` condition needs `path:`")
                }
                _ => {}
            }
        }
        out
    }

    /// A `where:`/`prefer:` map: relative path → value or list of values.
    fn matches(&mut self, file: usize, w: &Node) -> Option<Vec<Match>> {
        let Kind::Map(ws) = &w.kind else {
            self.problem(
                file,
                w.pos,
                "`where`/`prefer` must be a map of relative path → value(s), e.g. {.5: MR}",
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in ws {
            let path = self.path(file, k, true);
            let values = self.strings(file, v, "a `where` value");
            if let Some(path) = path {
                out.push((path, values));
            }
        }
        Some(out)
    }

    fn has_key(&self, node: &Node, key: &str) -> bool {
        matches!(&node.kind, Kind::Map(e) if e.iter().any(|(k, _)| k.as_str() == Some(key)))
    }

    fn fields(&mut self, file: usize, node: &Node, scoped: bool) -> Vec<FieldRule> {
        let Kind::Map(entries) = &node.kind else {
            self.problem(
                file,
                node.pos,
                format!(
                    "`fields` must be a map of output field → rule, found {}",
                    node.describe()
                ),
            );
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (k, v) in entries {
            let Some(name) = k.as_str() else {
                self.problem(file, k.pos, "a field name must be text");
                continue;
            };
            if !seen.insert(name) {
                self.problem(file, k.pos, format!("field `{name}` is given twice"));
                continue;
            }
            if let Some(rule) = self.rule(file, v, scoped) {
                out.push(FieldRule::new(name.to_string(), k.pos, rule));
            }
        }
        super::ast::rank_fields(&mut out);
        out
    }

    /// A rule: a path string, or a map with one source and modifiers.
    /// The rules of a `first:` or `join:` list; `None` when any of them has a problem (each one
    /// reported), so that a half-checked list never becomes part of the set.
    fn rule_list(&mut self, file: usize, items: &[Node], scoped: bool) -> Option<Vec<Rule>> {
        let rules: Vec<Rule> = items
            .iter()
            .filter_map(|i| self.rule(file, i, scoped))
            .collect();
        (rules.len() == items.len()).then_some(rules)
    }

    fn rule(&mut self, file: usize, node: &Node, scoped: bool) -> Option<Rule> {
        self.rule_parts(file, node, scoped).map(Rule::finish)
    }

    /// [`Loader::rule`] before [`Rule::finish`].
    fn rule_parts(&mut self, file: usize, node: &Node, scoped: bool) -> Option<Rule> {
        let mut rule = placeholder_rule(file, node.pos);
        if let Kind::Scalar { .. } = node.kind {
            let path = self.path(file, node, scoped)?;
            rule.desc = format!("path {path}");
            rule.source = Source::Path(path);
            return Some(rule);
        }
        if let Kind::Seq(_) = node.kind {
            self.problem(
                file,
                node.pos,
                "a rule is a path or a map, not a list (for a fallback list write `first: [...]`, for repetitions `each: ...`)",
            );
            return None;
        }
        let entries = self.entries(file, node, RULE_KEYS, "a rule");
        let get = |k: &str| entries.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let sources: Vec<&str> = SOURCE_KEYS
            .iter()
            .copied()
            .filter(|k| get(k).is_some())
            .collect();
        let scope_source = matches!(sources.first(), Some(&("path" | "each" | "pick")));
        if sources.len() > 1 {
            self.problem(
                file,
                node.pos,
                format!(
                    "a rule has exactly one source, this one has {}; use `first: [...]` for a fallback",
                    sources.join(" and ")
                ),
            );
            return None;
        }
        if sources.is_empty() && get("fields").is_none() {
            self.problem(
                file,
                node.pos,
                "a rule needs a source: one of path, first, each, pick, const, use, join, or fields",
            );
            return None;
        }
        // Modifiers that only make sense with some sources.
        let misplaced: &[(&str, bool, &str)] = &[
            (
                "where",
                sources == ["pick"] || sources == ["each"],
                "`where` goes with `pick` or `each`",
            ),
            ("prefer", sources == ["each"], "`prefer` goes with `each`"),
            (
                "separator",
                sources == ["join"],
                "`separator` goes with `join`",
            ),
            (
                "as",
                scope_source,
                "`as` applies a datatype to what `path`, `each` or `pick` selects",
            ),
        ];
        for (key, ok, why) in misplaced {
            if let Some(v) = get(key)
                && !ok
            {
                self.problem(file, v.pos, *why);
            }
        }
        if let Some(v) = get("fields")
            && !sources.is_empty()
            && !scope_source
        {
            self.problem(
                file,
                v.pos,
                "`fields` builds an object on its own or from what `path`, `each` or `pick` selects",
            );
        }
        if get("as").is_some() && get("fields").is_some() {
            self.problem(file, node.pos, "a rule has `as` or `fields`, not both");
        }
        let mut desc: String;
        // The source.
        let source = match sources.first().copied() {
            Some("path") => {
                let p = self.path(file, get("path")?, scoped)?;
                desc = format!("path {p}");
                Source::Path(p)
            }
            Some("each") => {
                let v = get("each")?;
                let nodes: Vec<&Node> = match &v.kind {
                    Kind::Seq(items) => items.iter().collect(),
                    _ => vec![v],
                };
                let mut paths = Vec::new();
                for n in &nodes {
                    if let Some(p) = self.path(file, n, scoped) {
                        paths.push(p);
                    }
                }
                if paths.len() != nodes.len() {
                    return None;
                }
                if let [single] = paths.as_slice()
                    && !single.selects_many()
                {
                    self.problem(
                        file,
                        v.text_start(),
                        format!(
                            "`each: {single}` selects one value; add [*] for every repetition or segment (e.g. PID.3[*], OBX[*]), or list several paths"
                        ),
                    );
                }
                desc = format!(
                    "each {}",
                    paths
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let filter = match get("where") {
                    Some(w) => {
                        let m = self.matches(file, w)?;
                        desc.push_str(&format!(" where {}", describe_matches(&m)));
                        m
                    }
                    None => Vec::new(),
                };
                let prefer = match get("prefer") {
                    Some(w) => {
                        let m = self.matches(file, w)?;
                        desc.push_str(&format!(" prefer {}", describe_matches(&m)));
                        m
                    }
                    None => Vec::new(),
                };
                Source::Each {
                    paths,
                    filter,
                    prefer,
                }
            }
            Some("pick") => {
                let p = self.path(file, get("pick")?, scoped)?;
                if !p.selects_many() {
                    self.problem(
                        file,
                        get("pick")?.text_start(),
                        format!(
                            "`pick: {p}` selects one value; pick chooses among many, e.g. PID.3[*]"
                        ),
                    );
                }
                let conditions = match get("where") {
                    None => {
                        self.problem(
                            file,
                            node.pos,
                            "`pick` needs `where: {.5: MR}` (component → value or list of values)",
                        );
                        Vec::new()
                    }
                    Some(w) => self.matches(file, w)?,
                };
                desc = format!("pick {p} where {}", describe_matches(&conditions));
                Source::Pick {
                    path: p,
                    conditions,
                }
            }
            Some("first") => {
                let v = get("first")?;
                let Kind::Seq(items) = &v.kind else {
                    self.problem(
                        file,
                        v.pos,
                        "`first` takes a list of rules: first: [PID.7, PID.29]",
                    );
                    return None;
                };
                let rules = self.rule_list(file, items, scoped)?;
                desc = "first of".to_string();
                Source::First(rules)
            }
            Some("join") => {
                let v = get("join")?;
                let Kind::Seq(items) = &v.kind else {
                    self.problem(file, v.pos, "`join` takes a list of rules: join: [.6, .7]");
                    return None;
                };
                let parts = self.rule_list(file, items, scoped)?;
                let separator = match get("separator") {
                    Some(s) => self.string(file, s, "`separator`")?,
                    None => " ".to_string(),
                };
                desc = format!("join with {separator:?}");
                Source::Join { parts, separator }
            }
            Some("list") => {
                let v = get("list")?;
                if !self.outbound {
                    self.problem(
                        file,
                        v.pos,
                        "`list` builds output lists in outbound files; inbound lists come from `each`",
                    );
                    return None;
                }
                let Kind::Seq(items) = &v.kind else {
                    self.problem(
                        file,
                        v.pos,
                        "`list` takes a list of rules: list: [{ fields: … }]",
                    );
                    return None;
                };
                let rules = self.rule_list(file, items, scoped)?;
                desc = "list".to_string();
                Source::List(rules)
            }
            Some("const") => {
                let v = get("const")?;
                let value = scalar_json(v);
                let Some(value) = value else {
                    self.problem(
                        file,
                        v.pos,
                        format!("`const` takes text or true/false, found {}", v.describe()),
                    );
                    return None;
                };
                desc = format!("const {value}");
                Source::Const(value)
            }
            Some(_) => {
                let v = get("use")?;
                let name = self.string(file, v, "`use`")?;
                let Some(&id) = self.rule_ids.get(&name) else {
                    if self.datatypes_broken {
                        return None;
                    }
                    self.problem(
                        file,
                        v.pos,
                        format!(
                            "unknown rule {name:?}; named rules (datatypes.yaml `rules:`): {}",
                            known_names(&self.rule_ids)
                        ),
                    );
                    return None;
                };
                if self.ast.rules[id].fhir != self.fhir {
                    self.problem(file, v.pos, self.wrong_dialect("rule", &name));
                    return None;
                }
                desc = format!("use {name}");
                Source::Use(id)
            }
            None => {
                let fields = self.fields(file, get("fields")?, scoped);
                rule.source = Source::Fields(fields);
                rule.desc = "fields".to_string();
                self.modifiers(file, &entries, scoped, &mut rule);
                return Some(rule);
            }
        };
        rule.source = source;
        if scope_source {
            if let Some(v) = get("as") {
                let name = self.string(file, v, "`as`")?;
                match self.datatype_ids.get(&name) {
                    Some(&id) if self.ast.datatypes[id].fhir != self.fhir => {
                        self.problem(file, v.pos, self.wrong_dialect("datatype", &name));
                        return None;
                    }
                    Some(&id) => {
                        desc.push_str(&format!(" as {name}"));
                        rule.build = Some(Build::As(id));
                    }
                    None if self.datatypes_broken => return None,
                    None => {
                        self.problem(
                            file,
                            v.pos,
                            format!(
                                "unknown datatype {name:?}; datatypes (datatypes.yaml): {}",
                                known_names(&self.datatype_ids)
                            ),
                        );
                        return None;
                    }
                }
            } else if let Some(v) = get("fields") {
                rule.build = Some(Build::Fields(self.fields(file, v, true)));
            }
        }
        rule.desc = desc;
        self.modifiers(file, &entries, scoped, &mut rule);
        Some(rule)
    }

    /// `transform`, `table`, `default`, `required`, `when`: shared by every source.
    fn modifiers(&mut self, file: usize, entries: &[(&str, &Node)], scoped: bool, rule: &mut Rule) {
        for (key, v) in entries {
            match *key {
                "transform" => {
                    for name in self.strings(file, v, "a transform") {
                        match Transform::from_name(&name) {
                            Some(t) => {
                                rule.transforms.push(t);
                                rule.desc.push_str(&format!(" transform {name}"));
                            }
                            None => self.problem(
                                file,
                                v.pos,
                                format!(
                                    "unknown transform {name:?}; transforms: {}",
                                    Transform::NAMES.join(", ")
                                ),
                            ),
                        }
                    }
                }
                "table" => {
                    let Some(name) = self.string(file, v, "`table`") else {
                        continue;
                    };
                    match self.table_ids.get(&name) {
                        Some(&id) => {
                            rule.table = Some(id);
                            rule.desc.push_str(&format!(" table {name}"));
                        }
                        None => {
                            self.problem(
                                file,
                                v.pos,
                                format!(
                                    "unknown table {name:?} (no tables/{name}.yaml); tables: {}",
                                    known_names(&self.table_ids)
                                ),
                            );
                        }
                    }
                }
                "default" => match scalar_json(v) {
                    Some(value) => {
                        rule.desc.push_str(&format!(" default {value}"));
                        rule.default = Some(value);
                    }
                    None => self.problem(
                        file,
                        v.pos,
                        format!("`default` takes text or true/false, found {}", v.describe()),
                    ),
                },
                "required" => match v.as_bool() {
                    Some(b) => {
                        rule.required = b;
                        if b {
                            rule.desc.push_str(" required");
                        }
                    }
                    None => self.problem(file, v.pos, "`required` takes true or false"),
                },
                "when" => rule.when = self.conditions(file, v, scoped),
                "reverse" => match v.as_bool() {
                    Some(_) if !self.outbound => {
                        self.problem(
                            file,
                            v.pos,
                            "`reverse` reads a table value → code, for outbound files; inbound rules read code → value",
                        );
                    }
                    Some(b) => {
                        rule.reverse = b;
                        if b {
                            rule.desc.push_str(" reverse");
                        }
                    }
                    None => self.problem(file, v.pos, "`reverse` takes true or false"),
                },
                _ => {}
            }
        }
        if rule.reverse && rule.table.is_none() {
            self.problem(
                file,
                rule.pos,
                "`reverse: true` reads a table backwards (value → code): add `table:`",
            );
        }
        if rule.required && rule.default.is_some() {
            self.problem(
                file,
                rule.pos,
                "a rule with a `default` is never missing: drop `required` or the default",
            );
        }
    }

    // ---- inbound files -----------------------------------------------------------------------------------

    fn inbound(&mut self, rel: &FsPath) {
        let Some((file, node)) = self.read(rel, true) else {
            return;
        };
        let mut m = Inbound {
            name: stem(rel),
            file,
            messages: Vec::new(),
            event: String::new(),
            spec: None,
            schema_version: 0,
            stream: Vec::new(),
            stream_pos: node.pos,
            fields_pos: node.pos,
            written: Vec::new(),
            when: Vec::new(),
            for_each: Vec::new(),
            fields: Vec::new(),
            examples: Vec::new(),
            fhir: None,
        };
        let (keys, what, first): (&[&str], _, &[&str]) = if self.fhir {
            (FHIR_KEYS, "a FHIR mapping", &["resource", "interactions"])
        } else {
            (INBOUND_KEYS, "an inbound mapping", &["messages"])
        };
        let entries = self.entries(file, &node, keys, what);
        for required in first.iter().chain(&["event", "stream", "fields"]) {
            if !entries.iter().any(|(k, _)| k == required) {
                self.problem(file, node.pos, format!("`{required}` is missing"));
            }
        }
        let mut fhir = self.fhir.then(|| FhirSource {
            resource: String::new(),
            interactions: Vec::new(),
        });
        for (key, v) in &entries {
            match *key {
                "description" => {
                    self.string(file, v, "description");
                }
                "resource" => {
                    let Some(name) = self.string(file, v, "`resource`") else {
                        continue;
                    };
                    if WRITABLE_RESOURCES.contains(&name.as_str()) {
                        if let Some(f) = &mut fhir {
                            f.resource = name;
                        }
                    } else {
                        self.problem(
                            file,
                            v.pos,
                            format!(
                                "resource {name:?}: the FHIR API accepts writes of {}",
                                WRITABLE_RESOURCES.join(" and ")
                            ),
                        );
                    }
                }
                "interactions" => {
                    for text in self.strings(file, v, "an interaction") {
                        let interaction = match text.as_str() {
                            "create" => FhirInteraction::Create,
                            "update" => FhirInteraction::Update,
                            _ => {
                                self.problem(
                                    file,
                                    v.pos,
                                    format!(
                                        "unknown interaction {text:?}; interactions: create, update"
                                    ),
                                );
                                continue;
                            }
                        };
                        if let Some(f) = &mut fhir {
                            f.interactions.push(interaction);
                        }
                    }
                }
                "messages" => {
                    for (i, text) in self
                        .strings(file, v, "a message type")
                        .into_iter()
                        .enumerate()
                    {
                        let at = match &v.kind {
                            Kind::Seq(items) => items.get(i).map_or(v.pos, |n| n.pos),
                            _ => v.pos,
                        };
                        let ok = |s: &str| {
                            !s.is_empty()
                                && s.len() <= 20
                                && s.bytes().all(|b| {
                                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
                                })
                        };
                        match text.split_once('^') {
                            Some((t, e)) if ok(t) && ok(e) => {
                                m.messages.push((t.to_string(), e.to_string()))
                            }
                            _ => self.problem(
                                file,
                                at,
                                format!(
                                    "message type {text:?} must be MSH-9.1^MSH-9.2, e.g. ADT^A01"
                                ),
                            ),
                        }
                    }
                }
                "event" => {
                    let Some(name) = self.string(file, v, "`event`") else {
                        continue;
                    };
                    match domain::event_spec(&name) {
                        Some(spec) => {
                            m.event = spec.name.to_string();
                            m.spec = Some(spec);
                            m.schema_version = spec.schema_version;
                        }
                        None => {
                            let names: Vec<&str> =
                                domain::catalogue().iter().map(|s| s.name).collect();
                            self.problem(
                                file,
                                v.pos,
                                format!("unknown event {name:?}; events: {}", names.join(", ")),
                            );
                        }
                    }
                }
                "stream" => {
                    m.stream_pos = v.pos;
                    for text in self.strings(file, v, "a stream kind") {
                        match text.as_str() {
                            "patient" => m.stream.push(StreamKind::Patient),
                            "encounter" => m.stream.push(StreamKind::Encounter),
                            "order" => m.stream.push(StreamKind::Order),
                            _ => self.problem(
                                file,
                                v.pos,
                                format!(
                                    "unknown stream {text:?}; streams: patient, encounter, order"
                                ),
                            ),
                        }
                    }
                }
                "when" => m.when = self.conditions(file, v, false),
                "for_each" => {
                    for id in self.strings(file, v, "a segment ID") {
                        if id.len() == 3 && format!("{id}.1").parse::<Path>().is_ok() {
                            m.for_each.push(id);
                        } else {
                            self.problem(
                                file,
                                v.pos,
                                format!("for_each takes segment IDs (e.g. ORC, or [ORC, OBR]), found {id:?}"),
                            );
                        }
                    }
                }
                "fields" => {
                    m.fields_pos = v.pos;
                    if let Kind::Map(entries) = &v.kind {
                        m.written = entries
                            .iter()
                            .filter_map(|(k, _)| k.as_str().map(str::to_string))
                            .collect();
                    }
                    m.fields = self.fields(file, v, false);
                }
                _ => m.examples = self.examples(file, rel, v),
            }
        }
        m.fhir = fhir;
        self.ast.inbound.push(m);
    }

    fn examples(&mut self, file: usize, rel: &FsPath, node: &Node) -> Vec<ExampleSpec> {
        let Kind::Seq(items) = &node.kind else {
            self.problem(
                file,
                node.pos,
                "`examples` is a list of {input, expect} or {input, expect_ack}",
            );
            return Vec::new();
        };
        let base = self
            .dir
            .join(rel)
            .parent()
            .map(FsPath::to_path_buf)
            .unwrap_or_default();
        let mut out = Vec::new();
        for item in items {
            let keys: &[&str] = if self.fhir {
                &["input", "expect", "expect_error"]
            } else {
                &["input", "expect", "expect_ack"]
            };
            let entries = self.entries(file, item, keys, "an example");
            let mut input = None;
            let mut expect = None;
            for (key, v) in &entries {
                match *key {
                    "input" => {
                        if let Some(p) = self.string(file, v, "`input`") {
                            let full = base.join(&p);
                            if full.is_file() || !self.example_files {
                                input = Some(full);
                            } else {
                                self.problem(
                                    file,
                                    v.pos,
                                    format!(
                                        "example input {p:?} not found (looked for {})",
                                        full.display()
                                    ),
                                );
                            }
                        }
                    }
                    "expect" => {
                        if let Some(p) = self.string(file, v, "`expect`") {
                            let full = base.join(&p);
                            if !self.example_files
                                || self.check_expected_json(file, v.pos, &p, &full)
                            {
                                expect = Some(ExpectSpec::Events(full));
                            }
                        }
                    }
                    "expect_error" => {
                        let mut error = None;
                        let mut path = None;
                        for (k, a) in self.entries(file, v, &["error", "path"], "`expect_error`") {
                            match k {
                                "error" => error = self.error_code(file, a),
                                _ => path = self.string(file, a, "`path`"),
                            }
                        }
                        expect = Some(ExpectSpec::Error { error, path });
                    }
                    _ => {
                        let mut code = None;
                        let mut error = None;
                        let mut location = None;
                        for (k, a) in
                            self.entries(file, v, &["code", "error", "location"], "`expect_ack`")
                        {
                            match k {
                                "code" => match self.string(file, a, "`code`") {
                                    Some(c) if ["AA", "AE", "AR"].contains(&c.as_str()) => {
                                        code = Some(c)
                                    }
                                    Some(c) => self.problem(
                                        file,
                                        a.pos,
                                        format!("ACK code {c:?}: expected AA, AE or AR"),
                                    ),
                                    None => {}
                                },
                                "error" => error = self.error_code(file, a),
                                _ => location = self.string(file, a, "`location`"),
                            }
                        }
                        match code {
                            Some(code) => {
                                expect = Some(ExpectSpec::Ack {
                                    code,
                                    error,
                                    location,
                                })
                            }
                            None => self.problem(
                                file,
                                v.pos,
                                "`expect_ack` needs `code:` (AA, AE or AR)",
                            ),
                        }
                    }
                }
            }
            let has_expect = entries.iter().any(|(k, _)| *k != "input");
            if entries.iter().filter(|(k, _)| *k != "input").count() > 1 {
                self.problem(
                    file,
                    item.pos,
                    format!("an example has `expect` or `{}`, not both", keys[2]),
                );
            } else if !has_expect {
                self.problem(
                    file,
                    item.pos,
                    format!("an example needs `expect:` (events JSON) or `{}:`", keys[2]),
                );
            }
            if !entries.iter().any(|(k, _)| *k == "input") {
                self.problem(
                    file,
                    item.pos,
                    if self.fhir {
                        "an example needs `input:` (a FHIR resource, JSON)"
                    } else {
                        "an example needs `input:` (an HL7 message file)"
                    },
                );
            }
            if let (Some(input), Some(expect)) = (input, expect) {
                out.push(ExampleSpec {
                    line: item.pos.line,
                    input,
                    expect,
                });
            }
        }
        out
    }

    /// An example's expected error code (HL7 table 0357, e.g. 101).
    fn error_code(&mut self, file: usize, node: &Node) -> Option<u16> {
        let code = node.as_str().and_then(|s| s.parse::<u16>().ok());
        if code.is_none() {
            self.problem(
                file,
                node.pos,
                "`error` is an HL7 table 0357 code, e.g. 101",
            );
        }
        code
    }

    /// Whether an expected-events file exists and is a JSON array; problems point into that file when not.
    fn check_expected_json(&mut self, file: usize, pos: Pos, written: &str, full: &FsPath) -> bool {
        let bytes = match std::fs::read(full) {
            Ok(b) => b,
            Err(_) => {
                self.problem(
                    file,
                    pos,
                    format!(
                        "expected events file {written:?} not found (looked for {})",
                        full.display()
                    ),
                );
                return false;
            }
        };
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Array(_)) => true,
            Ok(_) => {
                self.problems.push(Problem {
                    file: full.to_path_buf(),
                    line: 1,
                    column: 1,
                    message: "expected events must be a JSON array of {event, stream, payload}"
                        .into(),
                });
                false
            }
            Err(e) => {
                self.problems.push(Problem {
                    file: full.to_path_buf(),
                    line: e.line(),
                    column: e.column(),
                    message: format!("invalid JSON: {e}"),
                });
                false
            }
        }
    }

    // ---- whole-set checks --------------------------------------------------------------------------------

    /// A datatype or named rule that reaches itself would never finish evaluating.
    fn check_cycles(&mut self) {
        let n_dt = self.ast.datatypes.len();
        let total = n_dt + self.ast.rules.len();
        let node_rule = |ast: &Ast, i: usize| -> Rule {
            if i < n_dt {
                ast.datatypes[i].rule.clone()
            } else {
                ast.rules[i - n_dt].rule.clone()
            }
        };
        let name = |ast: &Ast, i: usize| -> String {
            if i < n_dt {
                ast.datatypes[i].name.clone()
            } else {
                ast.rules[i - n_dt].name.clone()
            }
        };
        let edges: Vec<Vec<usize>> = (0..total)
            .map(|i| {
                let mut out = Vec::new();
                refs(&node_rule(&self.ast, i), n_dt, &mut out);
                out
            })
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; total];
        let mut reported = HashSet::new();
        for start in 0..total {
            let mut stack = vec![(start, 0usize)];
            let mut trail = vec![start];
            if state[start] != 0 {
                continue;
            }
            state[start] = 1;
            while let Some((node, next)) = stack.last_mut() {
                let node = *node;
                if let Some(&to) = edges[node].get(*next) {
                    *next += 1;
                    match state[to] {
                        0 => {
                            state[to] = 1;
                            stack.push((to, 0));
                            trail.push(to);
                        }
                        1 if reported.insert(to) => {
                            let from = trail.iter().position(|&t| t == to).unwrap_or(0);
                            let mut names: Vec<String> =
                                trail[from..].iter().map(|&i| name(&self.ast, i)).collect();
                            names.push(name(&self.ast, to));
                            let r = node_rule(&self.ast, to);
                            self.problem(
                                r.file,
                                r.pos,
                                format!(
                                    "{} refers to itself: {}",
                                    name(&self.ast, to),
                                    names.join(" → ")
                                ),
                            );
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    stack.pop();
                    trail.pop();
                }
            }
        }
    }

    /// Every output field must exist in the event's payload schema, with the right shape.
    fn check_targets(&mut self) {
        let inbound = std::mem::take(&mut self.ast.inbound);
        for m in &inbound {
            if m.event.is_empty() {
                continue;
            }
            let mut path = Vec::new();
            self.check_fields(m.file, &m.event, &mut path, &m.fields, &mut Vec::new());
            // The payload's own required fields (e.g. `patient`) must have a rule, or every message fails.
            let required: Vec<String> = domain::payload_schema(&m.event)
                .and_then(|s| s.get("required").cloned())
                .and_then(|r| serde_json::from_value(r).ok())
                .unwrap_or_default();
            for name in required {
                if !m.written.contains(&name) {
                    self.problem(
                        m.file,
                        m.fields_pos,
                        format!("{} needs `{name}` in `fields:`", m.event),
                    );
                }
            }
            for kind in &m.stream {
                let key: &[&str] = match kind {
                    StreamKind::Patient => &["patient", "identifiers"],
                    StreamKind::Encounter => &["encounter", "visit_number"],
                    StreamKind::Order => &["order", "placer_order_number"],
                };
                if domain::field_shape(&m.event, key).is_none() {
                    self.problem(
                        m.file,
                        m.stream_pos,
                        format!(
                            "stream `{}` needs {} in the payload, which {} does not have",
                            key[0],
                            key.join("."),
                            m.event
                        ),
                    );
                }
            }
        }
        self.ast.inbound = inbound;
    }

    fn check_fields(
        &mut self,
        file: usize,
        event: &str,
        path: &mut Vec<String>,
        fields: &[FieldRule],
        visiting: &mut Vec<(bool, usize)>,
    ) {
        for f in fields {
            path.push(f.name.clone());
            let names: Vec<&str> = path.iter().map(String::as_str).collect();
            match domain::field_shape(event, &names) {
                None => {
                    let parent = if path.len() > 1 {
                        format!(" at {}", path[..path.len() - 1].join("."))
                    } else {
                        String::new()
                    };
                    self.problem(
                        file,
                        f.pos,
                        format!(
                            "`{}` is not a field of the {event} payload{parent} (see the event catalogue in mappings/README.md)",
                            f.name
                        ),
                    );
                }
                Some(shape) => self.check_rule(event, path, &shape, &f.rule, visiting),
            }
            path.pop();
        }
    }

    fn check_rule(
        &mut self,
        event: &str,
        path: &mut Vec<String>,
        shape: &Shape,
        rule: &Rule,
        visiting: &mut Vec<(bool, usize)>,
    ) {
        let at = path.join(".");
        let mismatch = |l: &mut Self, made: &str| {
            l.problem(
                rule.file,
                rule.pos,
                format!(
                    "{at} is {} in {event}, but this rule makes {made}",
                    shape_word(shape)
                ),
            );
        };
        match &rule.source {
            Source::Fields(fields) => match shape {
                Shape::Object => self.check_fields(rule.file, event, path, fields, visiting),
                _ => mismatch(self, "an object"),
            },
            Source::Use(id) => {
                if visiting.contains(&(false, *id)) {
                    return;
                }
                visiting.push((false, *id));
                let r = self.ast.rules[*id].rule.clone();
                self.check_rule(event, path, shape, &r, visiting);
                visiting.pop();
            }
            Source::First(rules) => {
                for r in rules {
                    self.check_rule(event, path, shape, r, visiting);
                }
            }
            Source::Const(v) => {
                let ok = matches!(
                    (v, shape),
                    (serde_json::Value::Bool(_), Shape::Boolean)
                        | (serde_json::Value::String(_), Shape::String)
                );
                if !ok {
                    mismatch(self, if v.is_boolean() { "a boolean" } else { "text" });
                }
            }
            Source::Join { parts, .. } => {
                if !matches!(shape, Shape::String) {
                    mismatch(self, "text");
                }
                for p in parts {
                    self.check_rule(event, path, &Shape::String, p, visiting);
                }
            }
            Source::Each { .. } => match shape {
                Shape::List(inner) => self.check_item(event, path, inner, rule, visiting),
                _ => mismatch(self, "a list"),
            },
            Source::Path(_) | Source::Pick { .. } => {
                self.check_item(event, path, shape, rule, visiting)
            }
            // Only outbound files may build lists, and they are not checked against an event.
            Source::List(_) => mismatch(self, "a list"),
        }
    }

    /// What a scope source makes of the value it selected: a datatype, an object of fields, or a leaf.
    fn check_item(
        &mut self,
        event: &str,
        path: &mut Vec<String>,
        shape: &Shape,
        rule: &Rule,
        visiting: &mut Vec<(bool, usize)>,
    ) {
        match &rule.build {
            Some(Build::As(id)) => {
                if visiting.contains(&(true, *id)) {
                    return;
                }
                visiting.push((true, *id));
                let r = self.ast.datatypes[*id].rule.clone();
                self.check_rule(event, path, shape, &r, visiting);
                visiting.pop();
            }
            Some(Build::Fields(fields)) => match shape {
                Shape::Object => self.check_fields(rule.file, event, path, fields, visiting),
                _ => self.problem(
                    rule.file,
                    rule.pos,
                    format!(
                        "{} is {} in {event}, but this rule makes an object",
                        path.join("."),
                        shape_word(shape)
                    ),
                ),
            },
            None => {
                let makes_bool = rule.transforms.last() == Some(&Transform::Boolean);
                let ok = match shape {
                    Shape::String => !makes_bool,
                    Shape::Boolean => makes_bool,
                    _ => false,
                };
                if !ok {
                    let made = if makes_bool { "a boolean" } else { "text" };
                    let hint = match shape {
                        Shape::Object => " (add `as: <datatype>` or `fields:`)",
                        Shape::List(_) => " (use `each:` for a list)",
                        Shape::Boolean => " (add `transform: boolean` for Y/N)",
                        Shape::String => "",
                    };
                    self.problem(
                        rule.file,
                        rule.pos,
                        format!(
                            "{} is {} in {event}, but this rule makes {made}{hint}",
                            path.join("."),
                            shape_word(shape)
                        ),
                    );
                }
            }
        }
    }

    fn version(&self) -> String {
        let mut files: Vec<&(String, Vec<u8>)> = self.sources.iter().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = Sha256::new();
        for (name, content) in files {
            h.update(name.as_bytes());
            h.update([0]);
            h.update((content.len() as u64).to_le_bytes());
            h.update(content);
        }
        let digest = h.finalize();
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

// ---- outbound files ---------------------------------------------------------------------------------------

impl Loader<'_> {
    /// `outbound/<name>.yaml`: which events, which format, and the segments (HL7 v2) or body (JSON).
    fn outbound_file(&mut self, rel: &FsPath) {
        let Some((file, node)) = self.read(rel, true) else {
            return;
        };
        let mut m = Outbound {
            name: format!("outbound/{}", stem(rel)),
            file,
            events: Vec::new(),
            format: OutboundFormat::Hl7v2,
            message_type: Vec::new(),
            version: String::new(),
            segments: Vec::new(),
            body: Vec::new(),
            examples: Vec::new(),
        };
        let entries = self.entries(file, &node, OUTBOUND_KEYS, "an outbound mapping");
        let has = |k: &str| entries.iter().any(|(key, _)| *key == k);
        for required in ["events", "format"] {
            if !has(required) {
                self.problem(file, node.pos, format!("`{required}` is missing"));
            }
        }
        if let Some((_, v)) = entries.iter().find(|(k, _)| *k == "format") {
            match v.as_str() {
                Some("hl7v2") => m.format = OutboundFormat::Hl7v2,
                Some("json") => m.format = OutboundFormat::Json,
                _ => self.problem(
                    file,
                    v.pos,
                    format!("`format` is hl7v2 or json, found {}", v.describe()),
                ),
            }
        }
        let (needed, wrong): (&[&str], &[&str]) = match m.format {
            OutboundFormat::Hl7v2 => (&["message", "segments"], &["body"]),
            OutboundFormat::Json => (&["body"], &["message", "segments"]),
        };
        for k in needed {
            if !has(k) {
                self.problem(
                    file,
                    node.pos,
                    format!("`{k}` is missing (format {})", m.format.as_str()),
                );
            }
        }
        for (key, v) in &entries {
            if wrong.contains(key) {
                self.problem(
                    file,
                    v.pos,
                    format!("`{key}` does not apply to format {}", m.format.as_str()),
                );
                continue;
            }
            match *key {
                "description" | "format" => {
                    self.string(file, v, key);
                }
                "events" => {
                    let items: Vec<&Node> = match &v.kind {
                        Kind::Seq(items) => items.iter().collect(),
                        _ => vec![v],
                    };
                    for item in items {
                        let Some(name) = self.string(file, item, "an event") else {
                            continue;
                        };
                        match domain::event_spec(&name) {
                            Some(spec) => m.events.push(spec.name.to_string()),
                            None => {
                                let names: Vec<&str> =
                                    domain::catalogue().iter().map(|s| s.name).collect();
                                self.problem(
                                    file,
                                    item.pos,
                                    format!("unknown event {name:?}; events: {}", names.join(", ")),
                                );
                            }
                        }
                    }
                }
                "message" => {
                    for (k, a) in self.entries(file, v, &["type", "version"], "`message`") {
                        let Some(text) = self.string(file, a, k) else {
                            continue;
                        };
                        if k == "version" {
                            m.version = text;
                            continue;
                        }
                        let parts: Vec<String> = text.split('^').map(str::to_string).collect();
                        let ok = parts.len() >= 2
                            && parts.len() <= 3
                            && parts.iter().all(|p| {
                                !p.is_empty()
                                    && p.bytes().all(|b| {
                                        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
                                    })
                            });
                        if ok {
                            m.message_type = parts;
                        } else {
                            self.problem(
                                file,
                                a.pos,
                                format!("message type {text:?} must be MSH-9 as written, e.g. ORM^O01^ORM_O01"),
                            );
                        }
                    }
                    if m.message_type.is_empty() || m.version.is_empty() {
                        self.problem(
                            file,
                            v.pos,
                            "`message` needs `type` (MSH-9, e.g. ORM^O01^ORM_O01) and `version` (MSH-12, e.g. \"2.5.1\")",
                        );
                    }
                }
                "segments" => m.segments = self.segments(file, v),
                "body" => m.body = self.fields(file, v, false),
                _ => m.examples = self.outbound_examples(file, rel, v, m.format),
            }
        }
        self.ast.outbound.push(m);
    }

    /// `segments:`: a list of `- SEG: { "3": rule, when: …, each: … }`, MSH (if given) first.
    fn segments(&mut self, file: usize, node: &Node) -> Vec<SegmentRule> {
        let Kind::Seq(items) = &node.kind else {
            self.problem(
                file,
                node.pos,
                "`segments` is a list, one `- SEG: { field number: rule }` a segment",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Kind::Map(entries) = &item.kind else {
                self.problem(file, item.pos, "a segment is `- PID: { \"3\": rule, … }`");
                continue;
            };
            let [(k, body)] = entries.as_slice() else {
                self.problem(
                    file,
                    item.pos,
                    "a segment entry has exactly one key, the segment ID (`- PID: {…}`); put `when:`/`each:` inside it",
                );
                continue;
            };
            let id = k.as_str().unwrap_or("").to_string();
            let id_ok = id.len() == 3
                && id.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if !id_ok {
                self.problem(
                    file,
                    k.pos,
                    format!("{id:?} is not a segment ID (three capitals or digits, e.g. PID)"),
                );
                continue;
            }
            if id == "MSH" && i > 0 {
                self.problem(file, k.pos, "MSH must be the first segment");
            }
            let Kind::Map(fields) = &body.kind else {
                self.problem(
                    file,
                    body.pos,
                    format!(
                        "{id} is a map of field number → rule, found {}",
                        body.describe()
                    ),
                );
                continue;
            };
            let mut seg = SegmentRule {
                id: id.clone(),
                each: None,
                when: Vec::new(),
                fields: Vec::new(),
            };
            // `each` first: it decides whether the fields may use relative paths.
            if let Some((_, e)) = fields.iter().find(|(k, _)| k.as_str() == Some("each")) {
                seg.each = self.path(file, e, false);
                if let Some(p) = &seg.each
                    && !p.selects_many()
                {
                    self.problem(
                        file,
                        e.text_start(),
                        format!(
                            "`each: {p}` selects one value; add [*], e.g. patient.identifiers[*]"
                        ),
                    );
                }
            }
            let scoped = seg.each.is_some();
            let mut seen = HashSet::new();
            for (fk, rule) in fields {
                let Some(name) = fk.as_str() else {
                    self.problem(file, fk.pos, "a field number must be text");
                    continue;
                };
                if !seen.insert(name) {
                    self.problem(file, fk.pos, format!("{id}-{name} is given twice"));
                    continue;
                }
                match name {
                    "each" | "use" => continue,
                    "when" => {
                        seg.when = self.conditions(file, rule, scoped);
                        continue;
                    }
                    _ => {}
                }
                let n = name.parse::<usize>().ok().filter(|n| (1..=999).contains(n));
                let Some(n) = n else {
                    self.problem(
                        file,
                        fk.pos,
                        format!(
                            "unknown key `{name}` in segment {id}; allowed keys: field numbers (\"3\"), use, when, each"
                        ),
                    );
                    continue;
                };
                if id == "MSH" && n <= 2 {
                    self.problem(
                        file,
                        fk.pos,
                        "MSH-1 and MSH-2 are the delimiters, written by Ferry (|^~\\&)",
                    );
                    continue;
                }
                if let Some(r) = self.rule(file, rule, scoped) {
                    seg.fields.push(FieldRule::new(n.to_string(), fk.pos, r));
                }
            }
            if let Some((_, u)) = fields.iter().find(|(k, _)| k.as_str() == Some("use")) {
                self.segment_base(file, u, &mut seg);
            }
            super::ast::rank_fields(&mut seg.fields);
            out.push(seg);
        }
        out
    }

    /// `use: pid` in a segment: the fields of a named rule of `outbound/datatypes.yaml` (a `fields:` rule
    /// keyed by field numbers), under the ones the segment writes itself, which replace theirs. Flattened
    /// here, so that `explain` shows each field once, from the rule that wrote it.
    fn segment_base(&mut self, file: usize, node: &Node, seg: &mut SegmentRule) {
        let Some(name) = self.string(file, node, "`use`") else {
            return;
        };
        let Some(&id) = self.rule_ids.get(&name) else {
            if !self.datatypes_broken {
                self.problem(
                    file,
                    node.pos,
                    format!(
                        "unknown rule {name:?}; named rules ({OUTBOUND_DATATYPES} `rules:`): {}",
                        known_names(&self.rule_ids)
                    ),
                );
            }
            return;
        };
        let base = self.ast.rules[id].rule.clone();
        let Source::Fields(base_fields) = base.source else {
            self.problem(
                file,
                node.pos,
                format!("a segment's `use` takes a rule of field numbers (`{name}: {{ fields: {{ \"3\": … }} }}`)"),
            );
            return;
        };
        for f in &base_fields {
            if f.name.parse::<usize>().is_err() {
                self.problem(
                    file,
                    node.pos,
                    format!(
                        "rule {name:?} has field `{}`, which is not a field number",
                        f.name
                    ),
                );
                return;
            }
        }
        let mut merged: Vec<FieldRule> = base_fields
            .into_iter()
            .filter(|b| !seg.fields.iter().any(|f| f.name == b.name))
            .collect();
        merged.append(&mut seg.fields);
        merged.sort_by_key(|f| f.name.parse::<usize>().unwrap_or(0));
        seg.fields = merged;
        seg.when.extend(base.when);
    }

    fn outbound_examples(
        &mut self,
        file: usize,
        rel: &FsPath,
        node: &Node,
        format: OutboundFormat,
    ) -> Vec<OutboundExample> {
        let Kind::Seq(items) = &node.kind else {
            self.problem(
                file,
                node.pos,
                "`examples` is a list of {input, expect} (input: an event JSON file)",
            );
            return Vec::new();
        };
        let base = self
            .dir
            .join(rel)
            .parent()
            .map(FsPath::to_path_buf)
            .unwrap_or_default();
        let mut out = Vec::new();
        for item in items {
            let entries = self.entries(
                file,
                item,
                &["input", "index", "delivery_id", "recorded_at", "expect"],
                "an example",
            );
            let mut ex = OutboundExample {
                line: item.pos.line,
                input: PathBuf::new(),
                index: 0,
                delivery_id: "1".to_string(),
                recorded_at: "2026-11-03T15:30:00+01:00".to_string(),
                expect: PathBuf::new(),
            };
            let mut ok = true;
            for (key, v) in &entries {
                let Some(text) = self.string(file, v, key) else {
                    ok = false;
                    continue;
                };
                match *key {
                    "input" | "expect" => {
                        let full = base.join(&text);
                        if self.example_files && !full.is_file() {
                            self.problem(
                                file,
                                v.pos,
                                format!(
                                    "example {key} {text:?} not found (looked for {})",
                                    full.display()
                                ),
                            );
                            ok = false;
                        }
                        if *key == "input" {
                            ex.input = full;
                        } else {
                            let want = match format {
                                OutboundFormat::Hl7v2 => "hl7",
                                OutboundFormat::Json => "json",
                            };
                            if full.extension().and_then(|e| e.to_str()) != Some(want) {
                                self.problem(
                                    file,
                                    v.pos,
                                    format!(
                                        "the expected output of a {} mapping is a .{want} file",
                                        format.as_str()
                                    ),
                                );
                                ok = false;
                            }
                            ex.expect = full;
                        }
                    }
                    "index" => match text.parse() {
                        Ok(n) => ex.index = n,
                        Err(_) => {
                            self.problem(
                                file,
                                v.pos,
                                "`index` is the 0-based position of the event in the input array",
                            );
                            ok = false;
                        }
                    },
                    "delivery_id" => ex.delivery_id = text,
                    _ => {
                        if time::OffsetDateTime::parse(
                            &text,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .is_err()
                        {
                            self.problem(
                                file,
                                v.pos,
                                "`recorded_at` is an RFC 3339 time with offset, e.g. 2026-11-03T15:30:00+01:00",
                            );
                            ok = false;
                        }
                        ex.recorded_at = text;
                    }
                }
            }
            for required in ["input", "expect"] {
                if !entries.iter().any(|(k, _)| *k == required) {
                    self.problem(file, item.pos, format!("an example needs `{required}:`"));
                    ok = false;
                }
            }
            if ok {
                out.push(ex);
            }
        }
        out
    }
}

fn describe_matches(m: &[Match]) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} in [{}]", v.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn shape_word(shape: &Shape) -> &'static str {
    match shape {
        Shape::Object => "an object",
        Shape::List(_) => "a list",
        Shape::String => "text",
        Shape::Boolean => "a boolean",
    }
}

/// Datatype (index < n_dt) and named-rule (index ≥ n_dt) references of a rule, for the cycle check.
fn refs(rule: &Rule, n_dt: usize, out: &mut Vec<usize>) {
    match &rule.build {
        Some(Build::As(id)) => out.push(*id),
        Some(Build::Fields(fs)) => fs.iter().for_each(|f| refs(&f.rule, n_dt, out)),
        None => {}
    }
    match &rule.source {
        Source::Use(id) => out.push(n_dt + id),
        Source::First(rs) | Source::Join { parts: rs, .. } => {
            rs.iter().for_each(|r| refs(r, n_dt, out))
        }
        Source::Fields(fs) => fs.iter().for_each(|f| refs(&f.rule, n_dt, out)),
        Source::List(rs) => rs.iter().for_each(|r| refs(r, n_dt, out)),
        _ => {}
    }
}

fn placeholder_rule(file: usize, pos: Pos) -> Rule {
    Rule {
        file,
        pos,
        source: Source::Fields(Vec::new()),
        build: None,
        transforms: Vec::new(),
        table: None,
        reverse: false,
        default: None,
        required: false,
        when: Vec::new(),
        desc: String::new(),
        plain: false,
    }
}

/// A scalar as JSON: plain true/false are booleans, everything else text (numbers too: codes are text).
fn scalar_json(node: &Node) -> Option<serde_json::Value> {
    if let Some(b) = node.as_bool() {
        return Some(serde_json::Value::Bool(b));
    }
    match &node.kind {
        Kind::Scalar { text, .. } if !node.is_null() => {
            Some(serde_json::Value::String(text.clone()))
        }
        _ => None,
    }
}

/// `inbound/adt_a01.patient_admitted.yaml` → `adt_a01.patient_admitted`.
fn stem(rel: &FsPath) -> String {
    rel.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The names of a kind (datatypes, rules, tables), sorted, for "unknown …; known: …" problems.
fn known_names(ids: &HashMap<String, usize>) -> String {
    let mut known: Vec<&str> = ids.keys().map(String::as_str).collect();
    known.sort_unstable();
    if known.is_empty() {
        "none".to_owned()
    } else {
        known.join(", ")
    }
}
