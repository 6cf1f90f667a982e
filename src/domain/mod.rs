//! The domain events: what happened to patients, encounters and orders, in past tense, independent of
//! the HL7 v2 or FHIR message that told Ferry about it.
//!
//! This module depends on nothing but serde, schemars and time types. Mappings (`crate::mapping`)
//! produce these events; the store keeps them as JSON; projections and outbound delivery read them.
//! Every event type has a stable name and a schema version; a payload is checked against its typed
//! struct ([`normalize_payload`]) before it is stored, so what is in the store always matches the
//! catalogue (`mappings/README.md` documents it; [`payload_schema`] is its JSON Schema).

mod check;
pub mod model;
mod payload;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use model::*;
pub use payload::{Draft, Key, Payload, PayloadRef, StreamKey, StreamKeys};
use payload::{Tree, View};

/// The kinds of stream events are appended to. A stream's id is derived from the data (see
/// [`stream_id`]), so every message about the same patient, visit or order lands on the same stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Patient,
    Encounter,
    Order,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Patient => "patient",
            StreamKind::Encounter => "encounter",
            StreamKind::Order => "order",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "patient" => Some(StreamKind::Patient),
            "encounter" => Some(StreamKind::Encounter),
            "order" => Some(StreamKind::Order),
            _ => None,
        }
    }

    /// The payload field holding this stream's key, for messages that say which field is missing.
    pub fn key_field(self) -> &'static str {
        match self {
            StreamKind::Patient => "patient.identifiers",
            StreamKind::Encounter => "encounter.visit_number",
            StreamKind::Order => "order.placer_order_number",
        }
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Payload of patient-level events that may mention a visit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatientPayload {
    pub patient: Patient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<Encounter>,
}

/// Payload of encounter events (admit, transfer, discharge and their cancellations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncounterPayload {
    pub patient: Patient,
    pub encounter: Encounter,
}

/// Payload of `PatientsMerged`: `patient` survives, `merged` names what it absorbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergePayload {
    pub patient: Patient,
    pub merged: Merged,
}

/// Payload of order events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderPayload {
    pub patient: Patient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<Encounter>,
    pub order: Order,
}

/// Payload of `ResultReported`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultPayload {
    pub patient: Patient,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<Encounter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<Observation>,
}

/// Which payload struct an event type carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    Patient,
    Encounter,
    Merge,
    Order,
    Result,
}

/// One entry of the event catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpec {
    /// Stable type name, stored with every event.
    pub name: &'static str,
    /// Bumped when the payload changes incompatibly.
    pub schema_version: i32,
    pub payload: PayloadKind,
    /// One sentence: what happened.
    pub summary: &'static str,
    /// The messages it typically comes from.
    pub triggers: &'static str,
}

const fn spec(
    name: &'static str,
    payload: PayloadKind,
    summary: &'static str,
    triggers: &'static str,
) -> EventSpec {
    EventSpec {
        name,
        schema_version: 1,
        payload,
        summary,
        triggers,
    }
}

static CATALOGUE: &[EventSpec] = &[
    spec(
        "PatientRegistered",
        PayloadKind::Patient,
        "A patient was registered (an outpatient visit, or a person added without a visit).",
        "ADT^A04, ADT^A28",
    ),
    spec(
        "PatientPreadmitted",
        PayloadKind::Encounter,
        "A patient was pre-admitted for a planned stay.",
        "ADT^A05",
    ),
    spec(
        "PatientAdmitted",
        PayloadKind::Encounter,
        "A patient was admitted: an inpatient stay began.",
        "ADT^A01",
    ),
    spec(
        "PatientTransferred",
        PayloadKind::Encounter,
        "A patient moved to another location; `encounter.prior_location` says from where.",
        "ADT^A02",
    ),
    spec(
        "PatientDischarged",
        PayloadKind::Encounter,
        "A stay or visit ended.",
        "ADT^A03",
    ),
    spec(
        "PatientUpdated",
        PayloadKind::Patient,
        "Patient (and possibly visit) information changed.",
        "ADT^A08, ADT^A31",
    ),
    spec(
        "AdmissionCancelled",
        PayloadKind::Encounter,
        "An admission was cancelled (entered in error or did not happen).",
        "ADT^A11",
    ),
    spec(
        "TransferCancelled",
        PayloadKind::Encounter,
        "A transfer was cancelled; the patient is back at `encounter.location`.",
        "ADT^A12",
    ),
    spec(
        "DischargeCancelled",
        PayloadKind::Encounter,
        "A discharge was cancelled; the stay continues.",
        "ADT^A13",
    ),
    spec(
        "PatientsMerged",
        PayloadKind::Merge,
        "Two patient records were merged; `patient` survives, `merged` is retired.",
        "ADT^A40, ADT^A34, ADT^A18",
    ),
    spec(
        "OrderPlaced",
        PayloadKind::Order,
        "A new order was placed.",
        "ORM^O01 and OML^O21 with ORC-1 NW",
    ),
    spec(
        "OrderChanged",
        PayloadKind::Order,
        "An order was changed.",
        "ORM^O01 and OML^O21 with ORC-1 XO or XX",
    ),
    spec(
        "OrderCancelled",
        PayloadKind::Order,
        "An order was cancelled before it was carried out.",
        "ORM^O01 and OML^O21 with ORC-1 CA or OC",
    ),
    spec(
        "OrderDiscontinued",
        PayloadKind::Order,
        "An order in progress was stopped.",
        "ORM^O01 and OML^O21 with ORC-1 DC or OD",
    ),
    spec(
        "OrderStatusChanged",
        PayloadKind::Order,
        "The filler reported a new order status (ORC-5).",
        "ORM^O01 and OML^O21 with ORC-1 SC",
    ),
    spec(
        "ResultReported",
        PayloadKind::Result,
        "Results were reported (by a lab or a PACS) for a patient, usually for an order.",
        "ORU^R01",
    ),
];

/// Every event type Ferry knows, in catalogue order.
pub fn catalogue() -> &'static [EventSpec] {
    CATALOGUE
}

/// The catalogue entry of an event type.
pub fn event_spec(name: &str) -> Option<&'static EventSpec> {
    CATALOGUE.iter().find(|s| s.name == name)
}

/// Why a payload does not fit its event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("unknown event type {0:?}")]
    UnknownEvent(String),
    /// serde's message names the field and what was wrong with it.
    #[error("payload of {event} does not match its schema: {message}")]
    Invalid { event: String, message: String },
}

fn normalize<T: serde::de::DeserializeOwned>(
    event: &str,
    check: &check::Check,
    mut payload: Value,
) -> Result<Value, DomainError> {
    // The typed struct only checks: deserialising from a borrowed `Value` validates without moving the
    // payload, and `prune` then gives the canonical form the typed round trip (`Value` → `T` → `Value`)
    // would give, without rebuilding every string and map (the round trip was a quarter of the mapping
    // cost). `prune_equals_the_typed_round_trip` pins the two together. Before that, the allocation-free
    // walk of `check.rs` accepts what certainly fits, and notes on the way whether there is anything to
    // prune (mapped payloads seldom have: walking them again for nothing was a third of the check); only
    // the rest is deserialised, which decides and says what is wrong.
    let mut droppable = false;
    if !check.passes(&payload, &mut droppable) {
        T::deserialize(&payload).map_err(|e| DomainError::Invalid {
            event: event.to_owned(),
            message: e.to_string(),
        })?;
        droppable = true;
    }
    if droppable {
        prune(&mut payload);
    }
    Ok(payload)
}

/// What serialising a payload's typed struct drops, once the struct has accepted the payload:
/// - `null` object members: a `null` deserialises only into an `Option` (every other field type refuses it),
///   and every `Option` field is `skip_serializing_if = "Option::is_none"`;
/// - empty arrays as object members: arrays deserialise only into `Vec` fields, all of them
///   `skip_serializing_if = "Vec::is_empty"` (no payload type has a list of lists or of options, so arrays
///   never hold `null` or `[]` themselves);
/// - `deceased: false`: `Patient::deceased` is the only field named `deceased` (every struct denies unknown
///   fields) and the only `bool`, skipped when false.
///
/// Nothing else changes: strings (also dates and enum names) serialise back as they came, no payload type
/// holds a number, empty objects stay (a `Some` of an all-default struct serialises as `{}`), and maps are
/// ordered by key either way (serde_json without `preserve_order`).
fn prune(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let mut any = false;
            for (k, x) in map.iter_mut() {
                prune(x);
                any |= dropped(k, x);
            }
            // Mapped payloads seldom hold anything to drop, and `retain` rebuilds the map's nodes.
            if any {
                map.retain(|k, x| !dropped(k, x));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

/// Whether `prune` drops the object member `k: x`.
fn dropped<T: Tree>(k: &str, x: &T) -> bool {
    match x.view() {
        View::Null => true,
        View::List(items) => items.is_empty(),
        View::Bool(false) => k == "deceased",
        _ => false,
    }
}

/// Checks a payload against its event type's struct (required fields, enums, date formats, no unknown
/// fields) and returns it in canonical form (empty lists and absent options dropped).
pub fn normalize_payload(event: &str, payload: Value) -> Result<Value, DomainError> {
    let (spec, check) = spec_and_check(event)?;
    typed_normalize(spec, check, event, payload)
}

/// Checks and normalises a payload a mapping built, as [`normalize_payload`] does a `Value`, and
/// writes it out as the text to store, with the stream keys it names.
///
/// The draft is checked by the walk of `check.rs`; only a draft that walk is not sure of becomes a
/// `Value` for the typed struct to decide (and word the error).
pub fn normalize_draft(
    spec: &'static EventSpec,
    mut draft: Draft<'_>,
) -> Result<(Payload, StreamKeys), DomainError> {
    let event = spec.name;
    // The entry's position in the catalogue: by address (mappings hold the catalogue's own entry),
    // else by name.
    let index = CATALOGUE
        .iter()
        .position(|s| std::ptr::eq(s, spec))
        .or_else(|| CATALOGUE.iter().position(|s| s.name == event))
        .ok_or_else(|| DomainError::UnknownEvent(event.to_owned()))?;
    let check = &checks()[index];
    let mut droppable = false;
    if check.passes(&draft, &mut droppable) {
        if droppable {
            draft.prune();
        }
        return Ok((Payload::of_draft(&draft), StreamKeys::of(&draft)));
    }
    let value = typed_normalize(spec, check, event, draft.to_value())?;
    Ok((Payload::from(&value), StreamKeys::of(&value)))
}

fn spec_and_check(event: &str) -> Result<(&'static EventSpec, &'static check::Check), DomainError> {
    let index = CATALOGUE
        .iter()
        .position(|s| s.name == event)
        .ok_or_else(|| DomainError::UnknownEvent(event.to_owned()))?;
    Ok((&CATALOGUE[index], &checks()[index]))
}

fn typed_normalize(
    spec: &EventSpec,
    check: &check::Check,
    event: &str,
    payload: Value,
) -> Result<Value, DomainError> {
    match spec.payload {
        PayloadKind::Patient => normalize::<PatientPayload>(event, check, payload),
        PayloadKind::Encounter => normalize::<EncounterPayload>(event, check, payload),
        PayloadKind::Merge => normalize::<MergePayload>(event, check, payload),
        PayloadKind::Order => normalize::<OrderPayload>(event, check, payload),
        PayloadKind::Result => normalize::<ResultPayload>(event, check, payload),
    }
}

/// The fast check of every event type's payload, in catalogue order, compiled once from its schema.
fn checks() -> &'static [check::Check] {
    static CHECKS: std::sync::OnceLock<Vec<check::Check>> = std::sync::OnceLock::new();
    CHECKS.get_or_init(|| {
        CATALOGUE
            .iter()
            .map(|spec| {
                schemas()
                    .get(spec.name)
                    .map_or(check::Check::Unknown, check::Check::compile)
            })
            .collect()
    })
}

/// The JSON Schema (draft 2020-12) of an event type's payload.
pub fn payload_schema(event: &str) -> Option<Value> {
    schemas().get(event).cloned()
}

/// Every payload schema, generated once: mapping checks ask for field shapes thousands of times
/// per load.
fn schemas() -> &'static std::collections::HashMap<&'static str, Value> {
    static SCHEMAS: std::sync::OnceLock<std::collections::HashMap<&'static str, Value>> =
        std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| {
        CATALOGUE
            .iter()
            .map(|spec| (spec.name, generate_schema(spec)))
            .collect()
    })
}

fn generate_schema(spec: &EventSpec) -> Value {
    let schema = match spec.payload {
        PayloadKind::Patient => schemars::schema_for!(PatientPayload),
        PayloadKind::Encounter => schemars::schema_for!(EncounterPayload),
        PayloadKind::Merge => schemars::schema_for!(MergePayload),
        PayloadKind::Order => schemars::schema_for!(OrderPayload),
        PayloadKind::Result => schemars::schema_for!(ResultPayload),
    };
    let mut value = schema.to_value();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("title".into(), Value::String(spec.name.to_owned()));
        obj.insert("description".into(), Value::String(spec.summary.to_owned()));
        obj.insert(
            "x-ferry-schema-version".into(),
            Value::from(spec.schema_version),
        );
    }
    value
}

/// One JSON Schema document for the whole catalogue: every event's envelope (`event`, `schema_version`,
/// `payload`) as a `oneOf`, for tools that validate stored events or mapping examples.
pub fn catalogue_schema() -> Value {
    let variants: Vec<Value> = CATALOGUE
        .iter()
        .filter_map(|spec| {
            let payload = payload_schema(spec.name)?;
            Some(serde_json::json!({
                "type": "object",
                "title": spec.name,
                "description": spec.summary,
                "required": ["event", "schema_version", "payload"],
                "properties": {
                    "event": { "const": spec.name },
                    "schema_version": { "const": spec.schema_version },
                    "payload": payload,
                },
            }))
        })
        .collect();
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ferry.invalid/schemas/events.json",
        "title": "Ferry domain events",
        "oneOf": variants,
    })
}

/// What sits at a field path of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Object,
    List(Box<Shape>),
    String,
    Boolean,
}

/// What is at `path` (e.g. `["patient", "identifiers"]`) of an event type's payload, or `None` when
/// the schema has no such field. Mapping checks use it to refuse targets the catalogue does not know.
pub fn field_shape(event: &str, path: &[&str]) -> Option<Shape> {
    let schema = schemas().get(event)?;
    let defs = schema.get("$defs").unwrap_or(&Value::Null);
    let mut node = schema;
    for field in path {
        let mut object = resolve(node, defs)?;
        // A field of a list's items: `patient.identifiers.value` is the value of each identifier.
        while let Some(items) = object.get("items") {
            object = resolve(items, defs)?;
        }
        node = object.get("properties")?.get(*field)?;
    }
    shape_of(node, defs)
}

/// Follows `$ref` and unwraps `Option`'s `anyOf [T, null]` to the schema of `T`.
fn resolve<'a>(node: &'a Value, defs: &'a Value) -> Option<&'a Value> {
    if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let name = reference.strip_prefix("#/$defs/")?;
        return resolve(defs.get(name)?, defs);
    }
    if let Some(any) = node.get("anyOf").and_then(Value::as_array) {
        let non_null: Vec<&Value> = any
            .iter()
            .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [only] = non_null.as_slice() {
            return resolve(only, defs);
        }
    }
    Some(node)
}

fn shape_of(node: &Value, defs: &Value) -> Option<Shape> {
    let node = resolve(node, defs)?;
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ if node.get("enum").is_some() || node.get("oneOf").is_some() => vec!["string"],
        _ => return None,
    };
    let t = types.into_iter().find(|t| *t != "null")?;
    match t {
        "object" => Some(Shape::Object),
        "array" => Some(Shape::List(Box::new(shape_of(node.get("items")?, defs)?))),
        "string" => Some(Shape::String),
        "boolean" => Some(Shape::Boolean),
        _ => None,
    }
}

/// The key of the stream of `kind` a payload belongs on, as (assigning authority, value): the first
/// patient identifier; the visit number; the placer order number, else the filler order number.
pub fn stream_key(kind: StreamKind, payload: &Value) -> Option<StreamKey> {
    payload::key_of(kind, payload)
}

/// Namespace of Ferry's name-based stream ids (a random v4 UUID fixed once; changing it would move
/// every stream).
const STREAM_NAMESPACE: Uuid = Uuid::from_u128(0x5d1c_9a7e_42b3_4f0e_9c61_3b8e_f2a4_d017);

/// A stable stream id derived from the data: `<kind>-<UUID v5 of tenant, kind, authority, value>`.
/// The same identifier from the same authority always gives the same stream, whichever message or
/// instance sees it; the id is safe as a FHIR resource id and reveals no identifier.
pub fn stream_id(kind: StreamKind, tenant: &str, authority: Option<&str>, value: &str) -> String {
    // Unit separators keep ("a", "bc") and ("ab", "c") apart.
    let name = format!(
        "{tenant}\u{1f}{}\u{1f}{}\u{1f}{value}",
        kind.as_str(),
        authority.unwrap_or("")
    );
    let id = Uuid::new_v5(&STREAM_NAMESPACE, name.as_bytes());
    format!("{}-{}", kind.as_str(), id.hyphenated())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catalogue_has_every_event_the_issue_names_once() {
        let names: Vec<&str> = catalogue().iter().map(|s| s.name).collect();
        for required in [
            "PatientRegistered",
            "PatientPreadmitted",
            "PatientAdmitted",
            "PatientTransferred",
            "PatientDischarged",
            "PatientUpdated",
            "AdmissionCancelled",
            "TransferCancelled",
            "DischargeCancelled",
            "PatientsMerged",
            "OrderPlaced",
            "OrderChanged",
            "OrderCancelled",
            "OrderDiscontinued",
            "OrderStatusChanged",
            "ResultReported",
        ] {
            assert_eq!(
                names.iter().filter(|n| **n == required).count(),
                1,
                "{required}"
            );
        }
        for spec in catalogue() {
            assert!(payload_schema(spec.name).is_some());
        }
    }

    #[test]
    fn field_shapes_follow_the_schema_through_options_and_lists() {
        let shape = |p: &[&str]| field_shape("PatientAdmitted", p);
        assert_eq!(shape(&["patient"]), Some(Shape::Object));
        assert_eq!(
            shape(&["patient", "identifiers"]),
            Some(Shape::List(Box::new(Shape::Object)))
        );
        assert_eq!(
            shape(&["patient", "identifiers", "authority"]),
            Some(Shape::String)
        );
        assert_eq!(
            shape(&["patient", "identifiers", "type"]),
            Some(Shape::String)
        );
        assert_eq!(
            shape(&["patient", "names", "given"]),
            Some(Shape::List(Box::new(Shape::String)))
        );
        assert_eq!(shape(&["patient", "sex"]), Some(Shape::String));
        assert_eq!(shape(&["patient", "deceased"]), Some(Shape::Boolean));
        assert_eq!(shape(&["patient", "birth_date"]), Some(Shape::String));
        assert_eq!(
            shape(&["encounter", "visit_number", "value"]),
            Some(Shape::String)
        );
        assert_eq!(shape(&["encounter", "class"]), Some(Shape::String));
        assert_eq!(shape(&["encounter", "admitted_at"]), Some(Shape::String));
        assert_eq!(shape(&["patient", "nickname"]), None);
        assert_eq!(shape(&["order"]), None);
        assert_eq!(
            field_shape("OrderPlaced", &["order", "code", "system"]),
            Some(Shape::String)
        );
        assert_eq!(
            field_shape("ResultReported", &["observations", "abnormal_flags"]),
            Some(Shape::List(Box::new(Shape::String)))
        );
        assert_eq!(field_shape("NoSuchEvent", &["patient"]), None);
    }

    #[test]
    fn normalize_checks_required_fields_enums_and_dates() {
        let ok = json!({
            "patient": { "identifiers": [{ "value": "123", "authority": "HOSP", "type": "MR" }],
                         "names": [], "birth_date": "1980-02", "sex": "female" },
            "encounter": { "class": "inpatient", "admitted_at": "2026-11-03T14:30:00+01:00" }
        });
        let normalized = normalize_payload("PatientAdmitted", ok).unwrap();
        assert!(
            normalized["patient"].get("names").is_none(),
            "empty lists are dropped"
        );

        let cases = [
            ("PatientAdmitted", json!({ "patient": {} }), "encounter"),
            (
                "PatientAdmitted",
                json!({ "patient": { "sex": "M" }, "encounter": {} }),
                "unknown variant",
            ),
            (
                "PatientAdmitted",
                json!({ "patient": { "birth_date": "19801345" }, "encounter": {} }),
                "not a date",
            ),
            (
                "PatientAdmitted",
                json!({ "patient": { "identifiers": [{ "value": "" }] }, "encounter": {} }),
                "empty",
            ),
            (
                "PatientAdmitted",
                json!({ "patient": { "nick": "x" }, "encounter": {} }),
                "unknown field",
            ),
            (
                "OrderPlaced",
                json!({ "patient": {}, "order": {} }),
                "control",
            ),
        ];
        for (event, payload, needle) in cases {
            let err = normalize_payload(event, payload.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{payload}: {err}");
        }
        assert!(matches!(
            normalize_payload("Nope", json!({})),
            Err(DomainError::UnknownEvent(_))
        ));
    }

    /// The payload as the typed struct's serialisation gives it: what `normalize` returned before `prune`.
    fn round_trip<T: serde::de::DeserializeOwned + Serialize>(payload: &Value) -> Option<Value> {
        let typed: T = serde_json::from_value(payload.clone()).ok()?;
        serde_json::to_value(typed).ok()
    }

    fn round_trip_for(event: &str, payload: &Value) -> Option<Value> {
        match event_spec(event)?.payload {
            PayloadKind::Patient => round_trip::<PatientPayload>(payload),
            PayloadKind::Encounter => round_trip::<EncounterPayload>(payload),
            PayloadKind::Merge => round_trip::<MergePayload>(payload),
            PayloadKind::Order => round_trip::<OrderPayload>(payload),
            PayloadKind::Result => round_trip::<ResultPayload>(payload),
        }
    }

    #[test]
    fn prune_equals_the_typed_round_trip() {
        let payloads = sample_payloads();
        // Why `prune` may drop every `null`: only `Option` fields accept one.
        for refused in [
            json!({ "patient": { "telecoms": null } }),
            json!({ "patient": { "deceased": null } }),
            json!({ "patient": { "names": [null] } }),
            json!({ "patient": null }),
        ] {
            assert!(
                normalize_payload("PatientUpdated", refused.clone()).is_err(),
                "{refused}"
            );
        }
        for (event, payload) in payloads {
            let expected = round_trip_for(event, &payload).expect(event);
            let pruned = normalize_payload(event, payload.clone()).unwrap();
            assert_eq!(pruned, expected, "{event}: {payload}");
        }
    }

    /// Valid payloads of every kind: hand-made ones with what `prune` drops, and every example's expected
    /// payload, as the shipped mappings produce them.
    fn sample_payloads() -> Vec<(&'static str, Value)> {
        let mut payloads = vec![
            (
                "PatientAdmitted",
                json!({
                    "patient": { "identifiers": [{ "value": "1", "authority": null, "type": "MR", "facility": "" }],
                                 "names": [{ "given": [], "family": "X", "use": null }, {}],
                                 "addresses": [], "telecoms": [], "deceased": false, "deceased_at": null,
                                 "birth_date": "1980", "sex": "unknown" },
                    "encounter": { "location": {}, "prior_location": { "room": null }, "attending": [{}],
                                   "visit_number": null, "class": "inpatient", "hospital_service": "" }
                }),
            ),
            (
                "PatientUpdated",
                json!({ "patient": { "deceased": true, "deceased_at": "2026-11-03T14:30:00Z" }, "encounter": null }),
            ),
            ("PatientUpdated", json!({ "patient": {}, "encounter": {} })),
            (
                "PatientsMerged",
                json!({ "patient": { "names": [] }, "merged": { "identifiers": [], "visit_number": null } }),
            ),
            (
                "OrderPlaced",
                json!({ "patient": {}, "encounter": null,
                        "order": { "control": "NW", "code": { "code": "C", "display": null }, "reason": null,
                                   "ordering_provider": { "given": [], "prefix": null }, "priority": "stat" } }),
            ),
            (
                "ResultReported",
                json!({ "patient": {}, "order": null, "observations": [
                    { "code": { "code": "X" }, "abnormal_flags": [], "units": null, "value": "1.50" },
                    { "code": { "code": "Y", "system": "LN" }, "abnormal_flags": ["H", "A"] } ] }),
            ),
            (
                "ResultReported",
                json!({ "patient": {}, "observations": [] }),
            ),
        ];
        // Every example's expected payload too, as the shipped mappings produce them.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/examples");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // `examples/outbound/` holds rendered messages, not events.
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            let mut found = Vec::new();
            collect_events(&doc, &mut found);
            payloads.extend(found);
        }
        assert!(payloads.len() > 10, "the examples hold events");
        payloads
    }

    /// The fast check may only ever be stricter than the typed struct: it passes every valid sample (else
    /// it would save nothing), and of the samples broken in every place it knows of (each value replaced
    /// by the wrong type, an empty, blank or impossible text, an unknown enum name; each field removed; an
    /// unknown field added to each object), it passes none the struct refuses.
    #[test]
    fn fast_check_never_accepts_what_the_typed_struct_refuses() {
        let replacements = [
            json!(null),
            json!(""),
            json!(" "),
            json!("x"),
            json!("1980-13"),
            json!("2026-11-03T14:30:00"),
            json!(true),
            json!(1),
            json!([]),
            json!(["x"]),
            json!([{}]),
            json!({}),
        ];
        let mut broken = 0;
        for (event, payload) in sample_payloads() {
            let index = CATALOGUE.iter().position(|s| s.name == event).unwrap();
            let check = &checks()[index];
            assert!(check.passes(&payload, &mut false), "{event}: {payload}");
            let mut variants = Vec::new();
            let all = pointers(&payload, String::new());
            for pointer in std::iter::once(String::new()).chain(all.iter().cloned()) {
                let mut v = payload.clone();
                if let Some(Value::Object(m)) = v.pointer_mut(&pointer) {
                    m.insert("zz".to_owned(), json!("x"));
                    variants.push(v);
                }
            }
            for pointer in all {
                for r in &replacements {
                    let mut v = payload.clone();
                    *v.pointer_mut(&pointer).unwrap() = r.clone();
                    variants.push(v);
                }
                let mut v = payload.clone();
                if let Some((parent, key)) = pointer.rsplit_once('/')
                    && let Some(Value::Object(m)) = v.pointer_mut(parent)
                {
                    m.remove(key);
                    variants.push(v);
                }
            }
            for variant in variants {
                let typed = round_trip_for(event, &variant).is_some();
                assert!(
                    typed || !check.passes(&variant, &mut false),
                    "{event}: {variant}"
                );
                broken += usize::from(!typed);
            }
        }
        assert!(broken > 1000, "only {broken} refused variants");
    }

    /// JSON pointers of every value below the root.
    fn pointers(v: &Value, at: String) -> Vec<String> {
        let mut out = Vec::new();
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = format!("{at}/{k}");
                    out.push(p.clone());
                    out.extend(pointers(x, p));
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    out.extend(pointers(x, p));
                }
            }
            _ => {}
        }
        out
    }

    /// `{"event": …, "payload": …}` objects anywhere in an example file.
    fn collect_events(v: &Value, out: &mut Vec<(&'static str, Value)>) {
        match v {
            Value::Object(m) => {
                if let (Some(Value::String(e)), Some(p)) = (m.get("event"), m.get("payload"))
                    && let Some(spec) = event_spec(e)
                {
                    out.push((spec.name, p.clone()));
                }
                m.values().for_each(|x| collect_events(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| collect_events(x, out)),
            _ => {}
        }
    }

    #[test]
    fn stream_keys_and_ids_are_stable_and_tenant_scoped() {
        let payload = json!({
            "patient": { "identifiers": [{ "value": " 123 ", "authority": "HOSP" }, { "value": "9" }] },
            "encounter": { "visit_number": { "value": "V1" } },
            "order": { "filler_order_number": { "value": "F7", "authority": "RIS" } }
        });
        assert_eq!(
            stream_key(StreamKind::Patient, &payload),
            Some((Some("HOSP".into()), "123".into()))
        );
        assert_eq!(
            stream_key(StreamKind::Encounter, &payload),
            Some((None, "V1".into()))
        );
        assert_eq!(
            stream_key(StreamKind::Order, &payload),
            Some((Some("RIS".into()), "F7".into()))
        );
        assert_eq!(stream_key(StreamKind::Order, &json!({ "order": {} })), None);

        let a = stream_id(StreamKind::Patient, "h1", Some("HOSP"), "123");
        assert_eq!(a, stream_id(StreamKind::Patient, "h1", Some("HOSP"), "123"));
        assert!(
            a.starts_with("patient-") && a.len() == "patient-".len() + 36,
            "{a}"
        );
        assert_ne!(a, stream_id(StreamKind::Patient, "h2", Some("HOSP"), "123"));
        assert_ne!(a, stream_id(StreamKind::Patient, "h1", None, "123"));
        assert_ne!(
            a,
            stream_id(StreamKind::Encounter, "h1", Some("HOSP"), "123")
        );
        assert_ne!(
            stream_id(StreamKind::Patient, "h1", Some("a"), "bc"),
            stream_id(StreamKind::Patient, "h1", Some("ab"), "c")
        );
    }
}
