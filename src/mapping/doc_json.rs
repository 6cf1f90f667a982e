//! The FHIR side of evaluation: JSON element paths over a resource a client wrote.
//!
//! Mirrors the HL7 side (`doc_hl7.rs`) so the same rules apply to both: a path without an index reads an
//! array's first item (an HL7 path without one reads the first repetition), `[*]` every item, `[n]` the
//! n-th (0-based, as in FHIRPath). A value used as text is a string, number or boolean; `null`, `""` and
//! empty objects or arrays are absent. Locations are FHIRPath-style element paths such as
//! `Patient.identifier[1].value`: what an OperationOutcome's `expression` and `ferry map --explain` show.
//!
//! Locations are kept in a small arena (an index into [`JsonDoc::steps`]) so they stay `Copy` like the HL7
//! ones; a resource has a few hundred elements at most, and nothing here is on the HL7 hot path.

use std::borrow::Cow;
use std::cell::RefCell;

use serde_json::Value as J;

use crate::hl7::{Index, Location};

use super::ast::{JsonPath, PathRef};
use super::eval::{Doc, Sink};

/// A location: an index into [`JsonDoc::steps`]; 0 is the resource itself.
pub(crate) type JLoc = u32;

/// One step of a location: its parent and the element name or array index it adds.
#[derive(Debug, Clone)]
enum Step {
    Root,
    Name(JLoc, String),
    Index(JLoc, usize),
}

/// A FHIR resource (JSON) as the evaluator reads it.
pub(crate) struct JsonDoc<'a> {
    root: &'a J,
    resource_type: String,
    steps: RefCell<Vec<Step>>,
}

type Scope<'a> = Option<(&'a J, JLoc)>;

impl<'a> JsonDoc<'a> {
    pub fn new(resource_type: &str, root: &'a J) -> Self {
        JsonDoc {
            root,
            resource_type: resource_type.to_string(),
            steps: RefCell::new(vec![Step::Root]),
        }
    }

    fn push(&self, step: Step) -> JLoc {
        let mut steps = self.steps.borrow_mut();
        steps.push(step);
        u32::try_from(steps.len() - 1).unwrap_or(u32::MAX)
    }

    fn name(&self, parent: JLoc, name: &str) -> JLoc {
        self.push(Step::Name(parent, name.to_string()))
    }

    fn index(&self, parent: JLoc, n: usize) -> JLoc {
        self.push(Step::Index(parent, n))
    }

    /// Walks `steps[from..]` down from `value`, putting every value reached.
    fn walk(
        &self,
        value: &'a J,
        loc: JLoc,
        path: &JsonPath,
        from: usize,
        first_only: bool,
        out: &mut impl Sink<(&'a J, JLoc)>,
    ) {
        let Some(step) = path.steps.get(from) else {
            out.put((value, loc));
            return;
        };
        let Some(child) = value.get(step.name.as_str()) else {
            return;
        };
        let loc = self.name(loc, &step.name);
        let next =
            |v: &'a J, l: JLoc, out: &mut _| self.walk(v, l, path, from + 1, first_only, out);
        match (child, step.index) {
            (J::Array(items), Index::All) => {
                for (i, item) in items.iter().enumerate() {
                    next(item, self.index(loc, i), out);
                    if first_only && out.full() {
                        return;
                    }
                }
            }
            (J::Array(items), Index::Default) => {
                if let Some(item) = items.first() {
                    next(item, self.index(loc, 0), out);
                }
            }
            (J::Array(items), Index::Nth(n)) => {
                if let Some(item) = items.get(n) {
                    next(item, self.index(loc, n), out);
                }
            }
            // A single value is its own first (and only) item.
            (single, Index::All | Index::Default | Index::Nth(0)) => next(single, loc, out),
            (_, Index::Nth(_)) => {}
        }
    }
}

fn text_of(v: &J) -> Option<Cow<'_, str>> {
    match v {
        J::String(s) if !s.trim().is_empty() => Some(Cow::Borrowed(s.as_str())),
        J::Number(n) => Some(Cow::Owned(n.to_string())),
        J::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

impl<'a> Doc<'a> for JsonDoc<'a> {
    type Item = &'a J;
    type Loc = JLoc;

    fn select(
        &self,
        scope: Scope<'a>,
        p: &PathRef,
        first_only: bool,
        out: &mut impl Sink<(&'a J, JLoc)>,
    ) {
        let PathRef::Json(path) = p else {
            return;
        };
        let (value, loc) = if path.relative {
            match scope {
                Some(s) => s,
                None => return,
            }
        } else {
            (self.root, 0)
        };
        self.walk(value, loc, path, 0, first_only, out);
    }

    fn loc_of(&self, scope: Scope<'a>, p: &PathRef) -> Option<JLoc> {
        let PathRef::Json(path) = p else {
            return None;
        };
        let mut loc = if path.relative { scope?.1 } else { 0 };
        for step in &path.steps {
            loc = self.name(loc, &step.name);
            if let Index::Nth(n) = step.index {
                loc = self.index(loc, n);
            }
        }
        Some(loc)
    }

    fn leaf(&self, item: &'a J) -> Option<(Cow<'a, str>, Cow<'a, str>)> {
        let text = text_of(item)?;
        Some((text.clone(), text))
    }

    fn leaf_loc(&self, _item: &'a J, loc: JLoc) -> JLoc {
        loc
    }

    fn present(&self, item: &'a J) -> bool {
        !self.blank(item)
    }

    fn text(&self, item: &'a J) -> Option<Cow<'a, str>> {
        text_of(item)
    }

    fn blank(&self, item: &'a J) -> bool {
        match item {
            J::Null => true,
            J::String(s) => s.trim().is_empty(),
            J::Array(a) => a.is_empty(),
            J::Object(o) => o.is_empty(),
            J::Number(_) | J::Bool(_) => false,
        }
    }

    fn location(&self, _loc: JLoc) -> Option<Location> {
        None
    }

    /// `Patient.identifier[1].value`.
    fn path(&self, loc: JLoc) -> String {
        let steps = self.steps.borrow();
        let mut parts = Vec::new();
        let mut at = loc;
        while let Some(step) = steps.get(at as usize) {
            match step {
                Step::Root => break,
                Step::Name(parent, name) => {
                    parts.push(format!(".{name}"));
                    at = *parent;
                }
                Step::Index(parent, n) => {
                    parts.push(format!("[{n}]"));
                    at = *parent;
                }
            }
        }
        parts.reverse();
        let path = parts.concat();
        // A stored event (outbound) has no resource type: its paths read `patient.names[0].family`.
        match (self.resource_type.is_empty(), path.strip_prefix('.')) {
            (true, Some(rest)) => rest.to_string(),
            _ => format!("{}{}", self.resource_type, path),
        }
    }

    fn groups(&mut self, _starts: &[String], out: &mut Vec<Option<(usize, usize)>>) -> bool {
        out.clear();
        out.push(None);
        false
    }

    fn enter(&mut self, _group: Option<(usize, usize)>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(doc: &JsonDoc<'_>, path: &str) -> Vec<(String, String)> {
        let p = PathRef::Json(JsonPath::parse(path).expect("path"));
        let mut out: Vec<(&J, JLoc)> = Vec::new();
        doc.select(None, &p, false, &mut out);
        out.into_iter()
            .map(|(v, l)| (doc.path(l), v.to_string()))
            .collect()
    }

    #[test]
    fn paths_select_like_fhirpath_with_first_item_default() {
        let r = json!({
            "resourceType": "Patient",
            "identifier": [{"system": "a", "value": "1"}, {"value": "2"}],
            "name": [{"given": ["Anna", "Maria"]}],
            "birthDate": "1980-01-02",
            "active": true
        });
        let doc = JsonDoc::new("Patient", &r);
        assert_eq!(
            all(&doc, "identifier[*].value"),
            vec![
                ("Patient.identifier[0].value".into(), "\"1\"".into()),
                ("Patient.identifier[1].value".into(), "\"2\"".into())
            ]
        );
        assert_eq!(
            all(&doc, "identifier.value"),
            vec![("Patient.identifier[0].value".into(), "\"1\"".into())]
        );
        assert_eq!(
            all(&doc, "name[0].given[1]"),
            vec![("Patient.name[0].given[1]".into(), "\"Maria\"".into())]
        );
        assert_eq!(
            all(&doc, "birthDate"),
            vec![("Patient.birthDate".into(), "\"1980-01-02\"".into())]
        );
        assert!(all(&doc, "identifier[2].value").is_empty());
        assert!(all(&doc, "birthDate[1]").is_empty());
        assert_eq!(doc.text(&r["active"]).as_deref(), Some("true"));
        let missing = PathRef::Json(JsonPath::parse("address[1].city").expect("path"));
        let loc = doc.loc_of(None, &missing).expect("loc");
        assert_eq!(doc.path(loc), "Patient.address[1].city");
    }

    #[test]
    fn bad_paths_are_explained() {
        assert!(JsonPath::parse("").is_err());
        assert!(JsonPath::parse("name[").is_err());
        assert!(JsonPath::parse("name[x]").is_err());
        assert!(JsonPath::parse("PID-3").is_err());
        assert!(JsonPath::parse(".").expect("dot").steps.is_empty());
        assert_eq!(
            JsonPath::parse("name[*].given[0]").expect("ok").to_string(),
            "name[*].given[0]"
        );
    }
}
