//! The compared fields, as plain values both sides are reduced to before anything is compared.
//!
//! Both extractions (a FHIR bundle in `fhir.rs`, Ferry's events in `ours.rs`) fill the same struct, so the
//! comparison in `compare.rs` never looks at JSON and the equivalences live in one place. Values are kept as
//! each side wrote them (Ferry's `inpatient`, FHIR's `IMP`); translating between vocabularies is the
//! comparison's job, where it is visible.

/// What one converter said about one message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Facts {
    /// The patient's identifiers, in the converter's order.
    pub identifiers: Vec<Ident>,
    /// Family name of the first name the converter lists (HL7 PID-5, first repetition).
    pub family: Option<String>,
    /// Given names (first and middle) of that same name.
    pub given: Vec<String>,
    /// FHIR date (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`).
    pub birth_date: Option<String>,
    /// FHIR administrative gender on the FHIR side; Ferry's `sex` on ours (the same vocabulary).
    pub gender: Option<String>,
    /// v3 ActCode (`IMP`, `AMB`, …) on the FHIR side; Ferry's class word (`inpatient`, …) on ours.
    pub encounter_class: Option<String>,
    pub period_start: Option<Stamp>,
    pub period_end: Option<Stamp>,
    /// One per order the converter produced (FHIR ServiceRequest; Ferry order event), in its order.
    pub orders: Vec<OrderFacts>,
}

/// One patient identifier.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ident {
    pub value: String,
    /// Every name the converter gives the assigning authority. A FHIR identifier can say it several ways at
    /// once (a `system` URI, an `assigner` Organization with a name and identifiers, a display), so the FHIR
    /// side collects them all; Ferry's side has at most one, CX-4.1.
    pub authorities: Vec<String>,
}

/// A FHIR dateTime with, on Ferry's side, what the HL7 source looked like.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub text: String,
    /// The HL7 value it came from (Ferry's side only, from `explain`): whether the sender gave an offset decides
    /// how the comparison reads the time (see `compare::same_time`).
    pub source: Option<String>,
}

impl Stamp {
    pub fn new(text: &str) -> Self {
        Stamp {
            text: text.to_string(),
            source: None,
        }
    }
}

/// One order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OrderFacts {
    /// Placer order number (ORC-2/OBR-2 .1); pairs the two sides' orders.
    pub placer: Option<String>,
    /// Filler order number (ORC-3/OBR-3 .1); pairs them when there is no placer number.
    pub filler: Option<String>,
    /// The order code (FHIR `code.coding[0].code`; Ferry `order.code.code`).
    pub code: Option<String>,
    /// FHIR request status on the FHIR side; ORC-5 as sent (table 0038) on Ferry's.
    pub status: Option<String>,
    /// ORC-1 (table 0119), Ferry's side only: the status when ORC-5 is empty.
    pub control: Option<String>,
}

/// A non-empty string at a JSON pointer (both extractions read their side's JSON this way).
pub fn text(v: &serde_json::Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The strings of a JSON array at a pointer (given names on both sides); empty when absent.
pub fn texts(v: &serde_json::Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
