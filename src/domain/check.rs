//! A shortcut for [`super::normalize_payload`]: checks a payload against its event type by walking the
//! `Value`, compiled once from the payload's JSON Schema.
//!
//! Deserialising the typed struct from a borrowed `Value` copies every string into the struct and frees it
//! again: that was ~15 % of mapping a message, for payloads that are almost always valid. This walk
//! allocates nothing. It is only a shortcut, never the judge: it says "valid" only for payloads the typed
//! struct certainly accepts, and everything it is not sure of (a schema keyword it does not know, a `null`
//! where a struct is, an unknown field, …) goes to the typed deserialisation, which decides and words the
//! error. `fast_check_never_accepts_what_the_typed_struct_refuses` pins that.
//!
//! The schema is generated from the typed structs (schemars), so this adds no second description of the
//! payloads. What the schema cannot say is checked the way the types' `TryFrom<String>` check it: a
//! `minLength: 1` string is a [`NonEmpty`](super::NonEmpty) (not blank once trimmed), the formats
//! `fhir-date` and `fhir-dateTime` are [`FhirDate`](super::FhirDate) and
//! [`FhirDateTime`](super::FhirDateTime). A string type with its own validation must therefore have a
//! schema keyword of its own (a `format`): a plain `{"type": "string"}` is taken to accept any text.

use serde_json::{Map, Value};

use super::model::{valid_date, valid_date_time};
use super::payload::{Tree, View};

/// The check of one schema node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Check {
    /// A struct that denies unknown fields; members sorted by name.
    Object(Vec<Member>),
    List(Box<Check>),
    /// An `Option`: `null` or the inner check.
    Nullable(Box<Check>),
    Text(Text),
    Bool,
    /// A unit-variant enum, by its serialised names.
    OneOf(Vec<String>),
    /// A schema this module does not understand: never passes, so the typed struct decides.
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    name: String,
    check: Check,
    required: bool,
}

/// What a string must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text {
    Any,
    NonBlank,
    Date,
    DateTime,
}

/// Keywords that describe a schema without constraining values.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$defs",
    "title",
    "description",
    "default",
    "examples",
    "x-ferry-schema-version",
];

/// Nesting deeper than any payload type: a guard against a recursive `$ref`.
const MAX_DEPTH: usize = 32;

impl Check {
    /// Compiles a payload's schema (with its `$defs`).
    pub fn compile(schema: &Value) -> Check {
        let defs = schema.get("$defs").and_then(Value::as_object);
        compile(schema, defs, 0)
    }

    /// Whether the payload certainly fits; `false` also when not sure. When it fits, `droppable` says
    /// whether it has an object member [`prune`](super::prune) drops. Reads a `Value` and a mapping's
    /// [`Draft`](super::Draft) alike.
    pub fn passes<T: Tree>(&self, v: &T, droppable: &mut bool) -> bool {
        match (self, v.view()) {
            (Check::Object(members), View::Object(map)) => object_passes(members, map, droppable),
            (Check::List(item), View::List(items)) => {
                items.iter().all(|x| item.passes(x, droppable))
            }
            (Check::Nullable(_), View::Null) => true,
            (Check::Nullable(inner), _) => inner.passes(v, droppable),
            (Check::Text(t), View::Text(s)) => match t {
                Text::Any => true,
                Text::NonBlank => !super::model::trim(s).is_empty(),
                Text::Date => valid_date(s),
                Text::DateTime => valid_date_time(s),
            },
            (Check::Bool, View::Bool(_)) => true,
            (Check::OneOf(names), View::Text(s)) => names.iter().any(|n| n == s),
            _ => false,
        }
    }
}

/// Every field known and fitting, every required one there.
///
/// Walks the map and the members side by side, both sorted by name (serde_json's map without
/// `preserve_order` is a `BTreeMap`; a draft's objects are sorted when built), so each member name is
/// compared about once, and mostly only by its length: looking each key up among the members took three
/// times as long as the whole rest of the check. A map in another order (`preserve_order`) merely fails
/// the walk, and the typed struct decides.
fn object_passes<'x, T: Tree + 'x>(
    members: &[Member],
    map: impl Iterator<Item = (&'x str, &'x T)>,
    droppable: &mut bool,
) -> bool {
    let mut rest = members.iter();
    for (key, x) in map {
        let member = loop {
            match rest.next() {
                Some(m) if m.name == key => break m,
                // A required member is skipped: it is missing (or the map is not sorted).
                Some(m) if m.required => return false,
                Some(_) => {}
                // An unknown field (or an unsorted map).
                None => return false,
            }
        };
        if !member.check.passes(x, droppable) {
            return false;
        }
        *droppable |= super::dropped(key, x);
    }
    rest.all(|m| !m.required)
}

fn compile(node: &Value, defs: Option<&Map<String, Value>>, depth: usize) -> Check {
    let Some(obj) = node.as_object() else {
        return Check::Unknown;
    };
    if depth > MAX_DEPTH {
        return Check::Unknown;
    }
    let keys: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !ANNOTATIONS.contains(k))
        .collect();
    let only = |allowed: &[&str]| keys.iter().all(|k| allowed.contains(k));
    if let Some(reference) = obj.get("$ref") {
        let target = reference
            .as_str()
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .and_then(|name| defs?.get(name));
        return match target {
            Some(t) if only(&["$ref"]) => compile(t, defs, depth + 1),
            _ => Check::Unknown,
        };
    }
    if let Some(any) = obj.get("anyOf") {
        // `Option<T>` of a struct or enum: `anyOf: [T, {type: null}]`.
        return match any.as_array().map(Vec::as_slice) {
            Some([inner, null]) if only(&["anyOf"]) && is_null_type(null) => {
                nullable(compile(inner, defs, depth + 1))
            }
            _ => Check::Unknown,
        };
    }
    match obj.get("type") {
        Some(Value::String(t)) => typed(t, obj, &keys, defs, depth),
        // `Option<T>` of a string or boolean: `type: [T, "null"]`.
        Some(Value::Array(ts)) => match ts.as_slice() {
            [Value::String(t), Value::String(null)] if null == "null" => {
                nullable(typed(t, obj, &keys, defs, depth))
            }
            _ => Check::Unknown,
        },
        _ => Check::Unknown,
    }
}

fn nullable(inner: Check) -> Check {
    match inner {
        Check::Unknown => Check::Unknown,
        c => Check::Nullable(Box::new(c)),
    }
}

fn is_null_type(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get("type").and_then(Value::as_str) == Some("null"))
}

fn typed(
    t: &str,
    obj: &Map<String, Value>,
    keys: &[&str],
    defs: Option<&Map<String, Value>>,
    depth: usize,
) -> Check {
    let only = |allowed: &[&str]| keys.iter().all(|k| allowed.contains(k));
    match t {
        "object" if only(&["type", "properties", "required", "additionalProperties"]) => {
            // Without `additionalProperties: false` the struct would ignore unknown fields; refusing them
            // here too is merely stricter, but every payload struct denies them, so say so plainly.
            if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
                return Check::Unknown;
            }
            let required: Vec<&str> = match obj.get("required") {
                None => Vec::new(),
                Some(Value::Array(names)) => match names.iter().map(Value::as_str).collect() {
                    Some(names) => names,
                    None => return Check::Unknown,
                },
                Some(_) => return Check::Unknown,
            };
            let Some(properties) = obj.get("properties").and_then(Value::as_object) else {
                return Check::Unknown;
            };
            let mut members: Vec<Member> = properties
                .iter()
                .map(|(name, node)| Member {
                    name: name.clone(),
                    check: compile(node, defs, depth + 1),
                    required: required.contains(&name.as_str()),
                })
                .collect();
            if required.iter().any(|r| !properties.contains_key(*r)) {
                return Check::Unknown;
            }
            members.sort_by(|a, b| a.name.cmp(&b.name));
            Check::Object(members)
        }
        "array" if only(&["type", "items"]) => match obj.get("items") {
            Some(items) => match compile(items, defs, depth + 1) {
                Check::Unknown => Check::Unknown,
                c => Check::List(Box::new(c)),
            },
            None => Check::Unknown,
        },
        "boolean" if only(&["type"]) => Check::Bool,
        "string" => string(obj, keys),
        _ => Check::Unknown,
    }
}

/// The string schemas the payload types produce: plain, `NonEmpty`, the two FHIR date types, enums.
fn string(obj: &Map<String, Value>, keys: &[&str]) -> Check {
    let mut rest: Vec<&str> = keys.iter().copied().filter(|k| *k != "type").collect();
    rest.sort_unstable();
    let format = obj.get("format").and_then(Value::as_str);
    match rest.as_slice() {
        [] => Check::Text(Text::Any),
        ["minLength"] if obj.get("minLength") == Some(&Value::from(1)) => {
            Check::Text(Text::NonBlank)
        }
        // The pattern says in the schema what the format's check does.
        ["format"] | ["format", "pattern"] => match format {
            Some("fhir-date") => Check::Text(Text::Date),
            Some("fhir-dateTime") => Check::Text(Text::DateTime),
            _ => Check::Unknown,
        },
        ["enum"] => match obj.get("enum").and_then(Value::as_array) {
            Some(names) => match names
                .iter()
                .map(|n| n.as_str().map(str::to_owned))
                .collect()
            {
                Some(names) => Check::OneOf(names),
                None => Check::Unknown,
            },
            None => Check::Unknown,
        },
        _ => Check::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_the_shapes_the_payload_types_produce() {
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["b", "a"],
            "properties": {
                "b": { "type": "string", "minLength": 1 },
                "a": { "anyOf": [{ "$ref": "#/$defs/E" }, { "type": "null" }] },
                "c": { "type": ["string", "null"], "format": "fhir-date", "pattern": "^x$" },
                "d": { "type": "array", "items": { "type": "boolean" } },
            },
            "$defs": { "E": { "type": "string", "enum": ["x", "y"], "description": "an enum" } },
        });
        let check = Check::compile(&schema);
        let Check::Object(members) = &check else {
            panic!("{check:?}");
        };
        assert_eq!(members.iter().filter(|m| m.required).count(), 2);
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        let mut droppable = false;
        assert!(check.passes(
            &json!({ "a": "x", "b": "B", "c": "1980-02", "d": [true] }),
            &mut droppable
        ));
        assert!(!droppable);
        assert!(check.passes(&json!({ "a": null, "b": "B", "d": [] }), &mut droppable));
        assert!(droppable, "a null and an empty list are for prune to drop");
        for refused in [
            json!({ "b": "B" }),
            json!({ "a": "z", "b": "B" }),
            json!({ "a": "x", "b": " " }),
            json!({ "a": "x", "b": "B", "c": "1980-13" }),
            json!({ "a": "x", "b": "B", "d": [null] }),
            json!({ "a": "x", "b": "B", "e": 1 }),
            json!(["x", "B"]),
        ] {
            assert!(!check.passes(&refused, &mut false), "{refused}");
        }
    }

    #[test]
    fn anything_not_understood_never_passes() {
        for schema in [
            json!({ "type": "string", "maxLength": 3 }),
            json!({ "type": "string", "format": "email" }),
            json!({ "type": "string", "minLength": 2 }),
            json!({ "type": "integer" }),
            json!({ "type": "object", "properties": {} }),
            json!({ "type": "object", "properties": {}, "additionalProperties": false, "required": ["x"] }),
            json!({ "$ref": "#/$defs/Missing" }),
            json!({ "anyOf": [{ "type": "string" }, { "type": "boolean" }] }),
            json!({ "type": ["string", "boolean"] }),
        ] {
            assert_eq!(Check::compile(&schema), Check::Unknown, "{schema}");
        }
        let nested = json!({
            "type": "object", "additionalProperties": false,
            "properties": { "x": { "type": "number" } },
        });
        let check = Check::compile(&nested);
        assert!(check.passes(&json!({}), &mut false));
        assert!(!check.passes(&json!({ "x": 1 }), &mut false));
    }
}
