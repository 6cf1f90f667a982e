//! Ferry's events for a message, reduced to the compared fields.
//!
//! Works on the event payloads as JSON (the shape `ferry map` prints and the domain's JSON Schema describes),
//! so it does not depend on the engine's types beyond the payload.

use std::collections::HashMap;

use serde_json::Value;

use super::facts::{Facts, Ident, OrderFacts, Stamp, text, texts};

/// The compared fields of a message's events (their payloads, in event order).
///
/// The patient and the encounter are those of the first event that has one: every event of a message carries
/// the same PID and PV1. Orders are every event with an `order`, in event order (ORM groups, ORU OBRs).
/// `raw` gives the HL7 value behind an output field, keyed by (event index, output path) as `explain` reports
/// them; it tells the time comparison whether the sender gave an offset.
pub fn extract(events: &[&Value], raw: &HashMap<(usize, String), String>) -> Facts {
    let mut facts = Facts::default();
    if let Some(patient) = events.iter().find_map(|e| e.get("patient")) {
        facts.identifiers = patient
            .get("identifiers")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| {
                        Some(Ident {
                            value: text(id, "/value")?,
                            authorities: text(id, "/authority").into_iter().collect(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        facts.family = text(patient, "/names/0/family");
        facts.given = texts(patient, "/names/0/given");
        facts.birth_date = text(patient, "/birth_date");
        facts.gender = text(patient, "/sex");
    }
    if let Some((i, encounter)) = events
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.get("encounter").map(|enc| (i, enc)))
    {
        facts.encounter_class = text(encounter, "/class");
        let stamp = |field: &str| {
            text(encounter, &format!("/{field}")).map(|t| Stamp {
                text: t,
                source: raw.get(&(i, format!("encounter.{field}"))).cloned(),
            })
        };
        facts.period_start = stamp("admitted_at");
        facts.period_end = stamp("discharged_at");
    }
    facts.orders = events
        .iter()
        .filter_map(|e| e.get("order"))
        .map(|order| OrderFacts {
            placer: text(order, "/placer_order_number/value"),
            filler: text(order, "/filler_order_number/value"),
            code: text(order, "/code/code"),
            status: text(order, "/status"),
            control: text(order, "/control"),
        })
        .collect();
    facts
}
