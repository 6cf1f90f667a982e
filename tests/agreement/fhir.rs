//! Another converter's FHIR R4 bundle, reduced to the compared fields.
//!
//! Read with `serde_json::Value` and JSON pointers, not a FHIR model crate: we read a dozen elements, and a
//! model crate would cost minutes of compile time for every test build (FINDINGS.md, "FHIR models").

use serde_json::Value;

use super::facts::{Facts, Ident, OrderFacts, Stamp, text, texts};

/// The system prefix Microsoft's converter builds from an HD namespace it has no URI for
/// (`http://example.com/v2-to-fhir-converter/Identifier/<namespace>`): the part after it is the authority name.
const MS_IDENTIFIER_SYSTEM: &str = "http://example.com/v2-to-fhir-converter/Identifier/";

/// ReportStream (CDC) keeps CX-4 in an extension on the identifier rather than in `system`.
const RS_ASSIGNING_AUTHORITY: &str =
    "https://reportstream.cdc.gov/fhir/StructureDefinition/assigning-authority";

/// The compared fields of a bundle: the first Patient, the first Encounter and every ServiceRequest.
///
/// "First" because both converters put the message's subject first; the later Patients and Encounters some
/// Microsoft bundles hold come from other segments (MRG, merged records), which Ferry keeps elsewhere.
pub fn extract(bundle: &Value) -> Facts {
    let resources: Vec<&Value> = bundle
        .pointer("/entry")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().filter_map(|e| e.get("resource")).collect())
        .unwrap_or_default();
    let of_type = |t: &str| -> Vec<&Value> {
        resources
            .iter()
            .copied()
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some(t))
            .collect()
    };
    let mut facts = Facts::default();
    if let Some(patient) = of_type("Patient").first() {
        facts.identifiers = patient
            .get("identifier")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| identifier(id, &resources))
                    .collect()
            })
            .unwrap_or_default();
        facts.family = text(patient, "/name/0/family");
        facts.given = texts(patient, "/name/0/given");
        facts.birth_date = text(patient, "/birthDate");
        facts.gender = text(patient, "/gender");
    }
    if let Some(encounter) = of_type("Encounter").first() {
        facts.encounter_class = text(encounter, "/class/code");
        facts.period_start = text(encounter, "/period/start").map(|t| Stamp::new(&t));
        facts.period_end = text(encounter, "/period/end").map(|t| Stamp::new(&t));
    }
    facts.orders = of_type("ServiceRequest")
        .into_iter()
        .map(|sr| OrderFacts {
            placer: typed_identifier(sr, "PLAC"),
            filler: typed_identifier(sr, "FILL"),
            code: text(sr, "/code/coding/0/code"),
            status: text(sr, "/status"),
            control: None,
        })
        .collect();
    facts
}

/// One Patient.identifier with every name of its assigning authority.
fn identifier(id: &Value, resources: &[&Value]) -> Option<Ident> {
    let value = text(id, "/value")?;
    let mut authorities = Vec::new();
    if let Some(system) = text(id, "/system") {
        if let Some(oid) = system.strip_prefix("urn:oid:") {
            authorities.push(oid.to_string());
        } else if let Some(ns) = system.strip_prefix(MS_IDENTIFIER_SYSTEM) {
            authorities.push(ns.to_string());
        }
        authorities.push(system);
    }
    if let Some(display) = text(id, "/assigner/display") {
        authorities.push(display);
    }
    if let Some(reference) = text(id, "/assigner/reference")
        && let Some(org) = resolve(&reference, resources)
    {
        authorities.extend(text(org, "/name"));
        if let Some(ids) = org.get("identifier").and_then(Value::as_array) {
            authorities.extend(ids.iter().filter_map(|i| text(i, "/value")));
        }
    }
    for ext in extensions(id, RS_ASSIGNING_AUTHORITY) {
        if let Some(inner) = ext.get("extension").and_then(Value::as_array) {
            authorities.extend(inner.iter().filter_map(|e| text(e, "/valueString")));
        }
    }
    authorities.dedup();
    Some(Ident { value, authorities })
}

/// The extensions of `v` with this URL.
fn extensions<'v>(v: &'v Value, url: &str) -> impl Iterator<Item = &'v Value> {
    v.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |e| e.get("url").and_then(Value::as_str) == Some(url))
}

/// The resource a relative reference (`Organization/<id>`) points at inside the bundle.
fn resolve<'r>(reference: &str, resources: &[&'r Value]) -> Option<&'r Value> {
    let (kind, id) = reference.split_once('/')?;
    resources.iter().copied().find(|r| {
        r.get("resourceType").and_then(Value::as_str) == Some(kind)
            && r.get("id").and_then(Value::as_str) == Some(id)
    })
}

/// The value of the request's identifier whose type is `code` (v2 table 0203: PLAC, FILL).
fn typed_identifier(sr: &Value, code: &str) -> Option<String> {
    sr.get("identifier")
        .and_then(Value::as_array)?
        .iter()
        .find(|i| i.pointer("/type/coding/0/code").and_then(Value::as_str) == Some(code))
        .and_then(|i| text(i, "/value"))
}
