//! Field-by-field comparison of Ferry's facts with another converter's, and every equivalence it relies on.
//!
//! A field is *compared* for a message only when both sides produce it; then it either agrees or is a
//! disagreement that `conformance/agreement-explanations.json` must explain. Where the two sides use different
//! vocabularies the translation is a table below, with the reason it is right.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::facts::{Facts, OrderFacts, Stamp};

/// The compared fields, in report order, named by the FHIR element the other converter fills.
pub const FIELDS: &[&str] = &[
    "Patient.identifier.value",
    "Patient.identifier.assigner",
    "Patient.name.family",
    "Patient.name.given",
    "Patient.birthDate",
    "Patient.gender",
    "Encounter.class",
    "Encounter.period.start",
    "Encounter.period.end",
    "ServiceRequest.code",
    "ServiceRequest.status",
];

/// How one field of one message came out.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// One side (or both) did not produce the field.
    NotCompared,
    Agreed,
    /// Both produced it and they differ: Ferry's value and the other converter's, as text for the report.
    Disagreed {
        ours: String,
        theirs: String,
    },
}

/// Every field of [`FIELDS`] for one message, in that order.
pub fn compare(ours: &Facts, theirs: &Facts) -> Vec<(&'static str, Outcome)> {
    let pairs = pair_orders(&ours.orders, &theirs.orders);
    FIELDS
        .iter()
        .map(|&field| {
            let outcome = match field {
                "Patient.identifier.value" => identifier_values(ours, theirs),
                "Patient.identifier.assigner" => identifier_assigners(ours, theirs),
                "Patient.name.family" => plain(&ours.family, &theirs.family),
                "Patient.name.given" => given(&ours.given, &theirs.given),
                "Patient.birthDate" => plain(&ours.birth_date, &theirs.birth_date),
                // Ferry's `sex` uses FHIR's AdministrativeGender codes (male|female|other|unknown) by design, so
                // the same text is the same gender: no table needed.
                "Patient.gender" => plain(&ours.gender, &theirs.gender),
                "Encounter.class" => {
                    encounter_class(&ours.encounter_class, &theirs.encounter_class)
                }
                "Encounter.period.start" => time(&ours.period_start, &theirs.period_start),
                "Encounter.period.end" => time(&ours.period_end, &theirs.period_end),
                "ServiceRequest.code" => orders(&pairs, |o| o.code.clone(), |t| t.code.clone()),
                "ServiceRequest.status" => orders(&pairs, request_status, |t| {
                    // FHIR `unknown` means "the converter could not tell", not a status: nothing to compare.
                    // ReportStream writes it for every order.
                    t.status.clone().filter(|s| s != "unknown")
                }),
                _ => unreachable!("field {field} has no comparison"),
            };
            (field, outcome)
        })
        .collect()
}

/// Ferry's encounter class → HL7 v3 ActCode, the code system FHIR R4 `Encounter.class` uses (and what the
/// HL7 v2-to-FHIR IG's PatientClass map produces from PV1-2). Ferry keeps a readable word instead of the v3
/// code because analysts and outbound v2 messages read it; this table is the defined equivalence.
fn act_code(class: &str) -> Option<&'static str> {
    Some(match class {
        "inpatient" => "IMP",
        "outpatient" => "AMB",
        "emergency" => "EMER",
        "preadmission" => "PRENC",
        // PV1-2 `B` (obstetrics) is an inpatient stay on a maternity ward; the IG maps it to IMP.
        "obstetrics" => "IMP",
        // PV1-2 `R` (recurring patient) is a series of outpatient visits (dialysis, therapy): ambulatory.
        "recurring" => "AMB",
        // `unknown` (PV1-2 empty, `U`, `N` "not applicable", or not in the table) has no ActCode.
        _ => return None,
    })
}

/// Ferry's class word against a v3 ActCode, through [`act_code`]. Ferry's `unknown` has no ActCode, so against
/// a converter that found a class it is a disagreement (Ferry did not recognise PV1-2), not a match.
fn encounter_class(ours: &Option<String>, theirs: &Option<String>) -> Outcome {
    let (Some(word), Some(code)) = (ours, theirs) else {
        return Outcome::NotCompared;
    };
    match act_code(word) {
        Some(ours_code) if ours_code == code => Outcome::Agreed,
        Some(ours_code) => Outcome::Disagreed {
            ours: format!("{word} (= {ours_code})"),
            theirs: code.clone(),
        },
        None => Outcome::Disagreed {
            ours: word.clone(),
            theirs: code.clone(),
        },
    }
}

/// Ferry's order → FHIR request status. Ferry keeps the order status (ORC-5, table 0038) and the order control
/// ORC-1 (table 0119) in `control`; FHIR has one status. ORC-5 decides when present, mapped as the HL7
/// v2-to-FHIR IG's OrderStatus ConceptMap does. The shipped `mappings/tables/order_status.yaml` turns ORC-5
/// into words (`scheduled`, `cancelled`, …); the table takes both the words and the raw codes, since the
/// domain documents the field as "as sent". Without ORC-5 only the controls that by themselves end or suspend
/// an order say something (`NW` says "new", not whether the filler accepted it): those map, the rest make
/// no claim.
fn request_status(order: &OrderFacts) -> Option<String> {
    let from_orc5 = |s: &str| match s {
        "partial" | "A" | "in-progress" | "IP" | "scheduled" | "SC" => Some("active"),
        "cancelled" | "CA" | "discontinued" | "DC" | "replaced" | "RP" => Some("revoked"),
        "completed" | "CM" => Some("completed"),
        "error" | "ER" => Some("entered-in-error"),
        "on-hold" | "HD" => Some("on-hold"),
        _ => None,
    };
    let from_orc1 = |c: &str| match c {
        "CA" | "OC" | "CR" | "DC" | "OD" | "DR" => Some("revoked"),
        "HD" | "OH" => Some("on-hold"),
        _ => None,
    };
    match order.status.as_deref() {
        Some(s) => from_orc5(s),
        None => order.control.as_deref().and_then(from_orc1),
    }
    .map(str::to_string)
}

fn plain(ours: &Option<String>, theirs: &Option<String>) -> Outcome {
    match (ours, theirs) {
        (Some(a), Some(b)) if a == b => Outcome::Agreed,
        (Some(a), Some(b)) => Outcome::Disagreed {
            ours: a.clone(),
            theirs: b.clone(),
        },
        _ => Outcome::NotCompared,
    }
}

fn given(ours: &[String], theirs: &[String]) -> Outcome {
    if ours.is_empty() || theirs.is_empty() {
        Outcome::NotCompared
    } else if ours == theirs {
        Outcome::Agreed
    } else {
        Outcome::Disagreed {
            ours: ours.join(" "),
            theirs: theirs.join(" "),
        }
    }
}

/// Agreed when every identifier value Ferry has is among the other side's. Not the other way round: FHIR
/// converters also put PID-2, PID-4, PID-19, PID-20 and guarantor or insurance numbers on Patient.identifier,
/// while Ferry's patient identifiers are PID-3 alone.
fn identifier_values(ours: &Facts, theirs: &Facts) -> Outcome {
    if ours.identifiers.is_empty() || theirs.identifiers.is_empty() {
        return Outcome::NotCompared;
    }
    let missing = ours
        .identifiers
        .iter()
        .any(|o| !theirs.identifiers.iter().any(|t| t.value == o.value));
    if missing {
        Outcome::Disagreed {
            ours: values(ours),
            theirs: values(theirs),
        }
    } else {
        Outcome::Agreed
    }
}

/// For each of Ferry's identifiers that has an authority and whose value the other side also has: the
/// authority must be one of the names the other side gives that identifier's assigner (see `fhir::identifier`).
fn identifier_assigners(ours: &Facts, theirs: &Facts) -> Outcome {
    let mut compared = false;
    let mut bad = Vec::new();
    for o in &ours.identifiers {
        let Some(authority) = o.authorities.first() else {
            continue;
        };
        let same: Vec<_> = theirs
            .identifiers
            .iter()
            .filter(|t| t.value == o.value)
            .collect();
        if same.is_empty() {
            continue;
        }
        compared = true;
        // A URI cannot hold a space, so Microsoft builds `…/Identifier/NIST-MPI` from the namespace `NIST MPI`:
        // the same authority.
        let hyphenated = authority.replace(' ', "-");
        if !same
            .iter()
            .any(|t| t.authorities.contains(authority) || t.authorities.contains(&hyphenated))
        {
            let names: Vec<String> = same
                .iter()
                .map(|t| {
                    if t.authorities.is_empty() {
                        "(none)".to_string()
                    } else {
                        t.authorities.join(" | ")
                    }
                })
                .collect();
            bad.push((
                format!("{}@{authority}", o.value),
                format!("{}@{}", o.value, names.join(", ")),
            ));
        }
    }
    match (compared, bad.is_empty()) {
        (false, _) => Outcome::NotCompared,
        (true, true) => Outcome::Agreed,
        (true, false) => Outcome::Disagreed {
            ours: bad
                .iter()
                .map(|b| b.0.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            theirs: bad
                .iter()
                .map(|b| b.1.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}

fn values(f: &Facts) -> String {
    f.identifiers
        .iter()
        .map(|i| i.value.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn time(ours: &Option<Stamp>, theirs: &Option<Stamp>) -> Outcome {
    match (ours, theirs) {
        (Some(a), Some(b)) if same_time(a, b) => Outcome::Agreed,
        (Some(a), Some(b)) => Outcome::Disagreed {
            ours: a.text.clone(),
            theirs: b.text.clone(),
        },
        _ => Outcome::NotCompared,
    }
}

/// Two FHIR dateTimes mean the same time.
///
/// When the sender gave an offset, both converters know the instant, and each may write it in another zone
/// (Microsoft's test data is written in its build machine's +05:30): compare instants. When the sender gave
/// none, the value is a wall-clock time and each converter attaches a zone of its own choosing (Ferry its
/// configured `default_timezone`, Microsoft the machine's): only the local text is comparable. Dates without
/// a time compare as text.
pub fn same_time(ours: &Stamp, theirs: &Stamp) -> bool {
    let sender_gave_offset = ours
        .source
        .as_deref()
        .is_none_or(|raw| raw.contains(['+', '-']));
    if sender_gave_offset
        && let (Ok(a), Ok(b)) = (
            OffsetDateTime::parse(&ours.text, &Rfc3339),
            OffsetDateTime::parse(&theirs.text, &Rfc3339),
        )
    {
        return a == b;
    }
    local(&ours.text) == local(&theirs.text)
}

/// The wall-clock part of a FHIR dateTime: the offset removed and a fraction without trailing zeros.
fn local(text: &str) -> String {
    let cut = text
        .char_indices()
        .skip(10)
        .find(|&(_, c)| matches!(c, '+' | '-' | 'Z'))
        .map_or(text.len(), |(i, _)| i);
    let local = &text[..cut];
    if local.contains('.') {
        local
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        local.to_string()
    }
}

/// Ferry's orders paired with the other side's: by placer number, else by filler number, else the next
/// unpaired one in order (ORU results often carry neither number on both sides).
pub fn pair_orders<'a>(
    ours: &'a [OrderFacts],
    theirs: &'a [OrderFacts],
) -> Vec<(&'a OrderFacts, &'a OrderFacts)> {
    let mut used = vec![false; theirs.len()];
    let mut pairs = Vec::new();
    let mut unpaired = Vec::new();
    for o in ours {
        let hit = theirs.iter().enumerate().position(|(i, t)| {
            !used[i]
                && ((o.placer.is_some() && o.placer == t.placer)
                    || (o.placer.is_none() && o.filler.is_some() && o.filler == t.filler))
        });
        match hit {
            Some(i) => {
                used[i] = true;
                pairs.push((o, &theirs[i]));
            }
            None => unpaired.push(o),
        }
    }
    for o in unpaired {
        if let Some(i) = used.iter().position(|u| !u) {
            used[i] = true;
            pairs.push((o, &theirs[i]));
        }
    }
    pairs
}

/// Compared when at least one pair has the value on both sides; agreed when every such pair agrees.
fn orders(
    pairs: &[(&OrderFacts, &OrderFacts)],
    ours: impl Fn(&OrderFacts) -> Option<String>,
    theirs: impl Fn(&OrderFacts) -> Option<String>,
) -> Outcome {
    let both: Vec<(String, String)> = pairs
        .iter()
        .filter_map(|(o, t)| Some((ours(o)?, theirs(t)?)))
        .collect();
    if both.is_empty() {
        Outcome::NotCompared
    } else if both.iter().all(|(a, b)| a == b) {
        Outcome::Agreed
    } else {
        Outcome::Disagreed {
            ours: both
                .iter()
                .map(|b| b.0.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            theirs: both
                .iter()
                .map(|b| b.1.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}
