//! A JSON Schema for mapping files, so that an editor with the YAML language server completes keys and flags
//! unknown ones while an analyst types (`ferry mappings schema > mappings/schema.json`).
//!
//! Written by hand rather than derived with schemars: the loader reads YAML trees, not serde structs, and the
//! schema should carry the guide's short descriptions. One schema covers every kind of file (inbound mapping,
//! `datatypes.yaml`, a table, `settings.yaml`) through `anyOf`, so a single editor setting is enough. The
//! loader stays the authority (it also checks names, paths and event fields); the schema is for comfort.

use serde_json::{Value, json};

use crate::domain;

use super::transform::Transform;

/// The JSON Schema (draft 2020-12) for every YAML file in a mapping directory.
pub fn json_schema() -> Value {
    let events: Vec<&str> = domain::catalogue().iter().map(|s| s.name).collect();
    let path = json!({
        "type": "string",
        "description": "A path. HL7 files: PID.3[*].4.1 (segment[occurrence].field[repetition].component.subcomponent, 1-based; [*] = every one). FHIR files (fhir/): identifier[*].value (element[index], 0-based; [*] = every item); outbound files read the event the same way (patient.identifiers[*], $event.type). Inside `as:` datatypes and the `fields:` of each/pick/path, relative paths start with a dot: .4.1 or .system, or . for the value itself.",
        "anyOf": [
            {"pattern": "^([A-Z][A-Z0-9]{2}(\\[([0-9]+|\\*)\\])?)?(\\.([0-9]+(\\[([0-9]+|\\*)\\])?(\\.[0-9]+){0,2})?)?$"},
            {"pattern": "^(\\.|\\.?\\$?[A-Za-z][A-Za-z0-9_]*(\\[([0-9]+|\\*)\\])?(\\.[A-Za-z][A-Za-z0-9_]*(\\[([0-9]+|\\*)\\])?)*)$"}
        ]
    });
    let scalar = json!({"type": ["string", "boolean", "number"]});
    let condition = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["path"],
        "properties": {
            "path": {"$ref": "#/$defs/path"},
            "in": {"description": "holds when the value is one of these", "type": ["array", "string"], "items": {"type": "string"}},
            "not_in": {"description": "holds when the value is absent or none of these", "type": ["array", "string"], "items": {"type": "string"}},
            "present": {"const": true, "description": "holds when there is a value (or the segment exists)"},
            "absent": {"const": true, "description": "holds when there is no value"}
        }
    });
    let rule = json!({
        "description": "A rule: a path (shorthand for {path: …}) or a map with exactly one source (path, first, each, pick, const, use, join, or fields alone) and modifiers.",
        "anyOf": [
            {"$ref": "#/$defs/path"},
            {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "path": {"$ref": "#/$defs/path", "description": "the value at this path"},
                    "first": {"type": "array", "items": {"$ref": "#/$defs/rule"}, "description": "the first rule that gives a value"},
                    "each": {"description": "a list: one item per repetition or segment ([*]), or per path of a list", "anyOf": [{"$ref": "#/$defs/path"}, {"type": "array", "items": {"$ref": "#/$defs/path"}}]},
                    "pick": {"$ref": "#/$defs/path", "description": "the first repetition that matches `where`"},
                    "where": {"type": "object", "description": "relative path → value or list of values, e.g. {.5: MR}", "additionalProperties": {"type": ["string", "array"], "items": {"type": "string"}}},
                    "prefer": {"type": "object", "description": "with each: items matching these relative path → value(s) come first, e.g. {.5: MR}", "additionalProperties": {"type": ["string", "array"], "items": {"type": "string"}}},
                    "const": {"type": ["string", "boolean"], "description": "a constant"},
                    "use": {"type": "string", "description": "a named rule of datatypes.yaml `rules:`"},
                    "join": {"type": "array", "items": {"$ref": "#/$defs/rule"}, "description": "the values of these rules joined by `separator` (default one space)"},
                    "list": {"type": "array", "items": {"$ref": "#/$defs/rule"}, "description": "outbound files: a list of these rules' values (absent ones left out)"},
                    "separator": {"type": "string"},
                    "fields": {"type": "object", "description": "an object: output field → rule", "additionalProperties": {"$ref": "#/$defs/rule"}},
                    "as": {"type": "string", "description": "apply a datatype of datatypes.yaml to the selected value (CX, XPN, …)"},
                    "table": {"type": "string", "description": "look the value up in tables/<name>.yaml"},
                    "reverse": {"type": "boolean", "description": "outbound files: read the table value → code (the table's `reverse:`, else the first code in the file)"},
                    "default": {"type": ["string", "boolean"], "description": "when there is no value, or the table has no entry for it"},
                    "transform": {"description": "named transforms, applied in order", "anyOf": [{"enum": Transform::NAMES}, {"type": "array", "items": {"enum": Transform::NAMES}}]},
                    "required": {"type": "boolean", "description": "missing → AE 101 at the source path"},
                    "when": {"description": "conditions that must all hold, else the rule gives nothing", "anyOf": [{"$ref": "#/$defs/condition"}, {"type": "array", "items": {"$ref": "#/$defs/condition"}}]}
                }
            }
        ]
    });
    let inbound = json!({
        "title": "Ferry inbound mapping (mappings/inbound/*.yaml)",
        "type": "object",
        "additionalProperties": false,
        "required": ["messages", "event", "stream", "fields"],
        "properties": {
            "description": {"type": "string"},
            "messages": {"description": "MSH-9.1^MSH-9.2 this file applies to, e.g. ADT^A01", "anyOf": [{"type": "string", "pattern": "^[A-Z0-9_]+\\^[A-Z0-9_]+$"}, {"type": "array", "items": {"type": "string", "pattern": "^[A-Z0-9_]+\\^[A-Z0-9_]+$"}}]},
            "event": {"enum": events},
            "stream": {"description": "stream kinds in order of preference: the first whose key the payload has", "anyOf": [{"enum": ["patient", "encounter", "order"]}, {"type": "array", "items": {"enum": ["patient", "encounter", "order"]}}]},
            "when": {"anyOf": [{"$ref": "#/$defs/condition"}, {"type": "array", "items": {"$ref": "#/$defs/condition"}}]},
            "for_each": {"description": "one event per segment group starting at this segment (or these, in order: [ORC, OBR])", "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "fields": {"type": "object", "additionalProperties": {"$ref": "#/$defs/rule"}},
            "examples": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["input"],
                    "properties": {
                        "input": {"type": "string", "description": "HL7 message file, relative to this file"},
                        "expect": {"type": "string", "description": "JSON file: array of {event, stream, payload}"},
                        "expect_ack": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["code"],
                            "properties": {
                                "code": {"enum": ["AA", "AE", "AR"]},
                                "error": {"type": ["integer", "string"]},
                                "location": {"type": "string", "description": "ERR-2, e.g. PID^1^3"}
                            }
                        }
                    }
                }
            }
        }
    });
    let mut fhir = inbound.clone();
    fhir["title"] = json!("Ferry FHIR mapping (mappings/fhir/*.yaml)");
    fhir["required"] = json!(["resource", "interactions", "event", "stream", "fields"]);
    if let Some(props) = fhir["properties"].as_object_mut() {
        props.remove("messages");
        props.remove("for_each");
        props.insert(
            "resource".into(),
            json!({"enum": super::ast::WRITABLE_RESOURCES, "description": "the resource type written"}),
        );
        props.insert(
            "interactions".into(),
            json!({"description": "the FHIR interactions this file maps", "anyOf": [{"enum": ["create", "update"]}, {"type": "array", "items": {"enum": ["create", "update"]}}]}),
        );
    }
    if let Some(example) = fhir["properties"]["examples"]["items"]["properties"].as_object_mut() {
        example.remove("expect_ack");
        example.insert(
            "input".into(),
            json!({"type": "string", "description": "FHIR resource file (JSON), relative to this file"}),
        );
        example.insert(
            "expect_error".into(),
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "error": {"type": ["integer", "string"], "description": "101, 102 or 103"},
                    "path": {"type": "string", "description": "the element, e.g. Patient.gender"}
                }
            }),
        );
    }
    let datatypes = json!({
        "title": "Ferry datatypes.yaml",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "datatypes": {"type": "object", "additionalProperties": {"$ref": "#/$defs/rule"}},
            "rules": {"type": "object", "additionalProperties": {"$ref": "#/$defs/rule"}}
        }
    });
    let table = json!({
        "title": "Ferry code table (mappings/tables/*.yaml)",
        "type": "object",
        "additionalProperties": false,
        "required": ["map"],
        "properties": {
            "description": {"type": "string"},
            "map": {"type": "object", "additionalProperties": scalar},
            "default": {"type": "string"},
            "reverse": {"type": "object", "description": "for outbound rules with `reverse: true`: value → code where the first code in `map` is not the one to send", "additionalProperties": {"type": "string"}}
        }
    });
    let segment_body = json!({
        "type": "object",
        "description": "field number → rule; `use` a rule of field numbers from outbound/datatypes.yaml (fields given here replace its ones), `when` conditions, `each` one segment per item",
        "properties": {
            "use": {"type": "string"},
            "when": {"anyOf": [{"$ref": "#/$defs/condition"}, {"type": "array", "items": {"$ref": "#/$defs/condition"}}]},
            "each": {"$ref": "#/$defs/path"}
        },
        "patternProperties": {"^[0-9]+$": {"$ref": "#/$defs/rule"}},
        "additionalProperties": false
    });
    let outbound = json!({
        "title": "Ferry outbound mapping (mappings/outbound/*.yaml)",
        "type": "object",
        "additionalProperties": false,
        "required": ["events", "format"],
        "properties": {
            "description": {"type": "string"},
            "events": {"description": "the event types this file renders", "anyOf": [{"enum": events}, {"type": "array", "items": {"enum": events}}]},
            "format": {"enum": ["hl7v2", "json"]},
            "message": {
                "type": "object",
                "additionalProperties": false,
                "required": ["type", "version"],
                "properties": {
                    "type": {"type": "string", "description": "MSH-9, e.g. ORM^O01^ORM_O01", "pattern": "^[A-Z0-9_]+\\^[A-Z0-9_]+(\\^[A-Z0-9_]+)?$"},
                    "version": {"type": "string", "description": "MSH-12, e.g. \"2.5.1\""}
                }
            },
            "segments": {
                "type": "array",
                "description": "the message's segments in order, MSH (if given) first",
                "items": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "patternProperties": {"^[A-Z][A-Z0-9]{2}$": segment_body},
                    "additionalProperties": false
                }
            },
            "body": {"type": "object", "description": "format json: the document's fields", "additionalProperties": {"$ref": "#/$defs/rule"}},
            "examples": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["input", "expect"],
                    "properties": {
                        "input": {"type": "string", "description": "an event JSON file ({event, stream, payload} or an array of them), relative to this file"},
                        "index": {"type": ["integer", "string"], "description": "which event of an array (0-based)"},
                        "delivery_id": {"type": "string", "description": "MSH-10 / $delivery.id"},
                        "recorded_at": {"type": "string", "description": "the event's recorded time, RFC 3339"},
                        "expect": {"type": "string", "description": "the expected .hl7 (segments one a line) or .json file"}
                    }
                }
            }
        }
    });
    let settings = json!({
        "title": "Ferry settings.yaml",
        "type": "object",
        "additionalProperties": false,
        "required": ["default_timezone"],
        "properties": {"default_timezone": {"type": "string", "description": "IANA zone, e.g. Europe/Zurich"}}
    });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ferry.invalid/schemas/mapping.json",
        "title": "Ferry mapping files",
        "anyOf": [
            {"$ref": "#/$defs/inbound"},
            {"$ref": "#/$defs/fhir"},
            {"$ref": "#/$defs/outbound"},
            {"$ref": "#/$defs/datatypes"},
            {"$ref": "#/$defs/table"},
            {"$ref": "#/$defs/settings"}
        ],
        "$defs": {
            "path": path,
            "condition": condition,
            "rule": rule,
            "inbound": inbound,
            "fhir": fhir,
            "outbound": outbound,
            "datatypes": datatypes,
            "table": table,
            "settings": settings
        }
    })
}
