//! The search index: what each resource can be found by, as rows the store keeps beside the resource
//! (`fhir_search`), replaced whenever the resource changes.
//!
//! Three kinds of values, one row each:
//! * tokens (`identifier`, `gender`, `status`, `class`, `code`): `system` and `value` as given;
//! * strings (`family`, `given`, `name`): `value` normalised by [`normalize`], matched by prefix;
//! * dates (`birthdate`, `date`, `authored`): the period the value covers, `low`..`high`, as
//!   fixed-width UTC text (`2026-11-22T08:00:00.000000Z`) so text order is time order on both
//!   backends;
//! * references (`patient`): the Patient id in `value`.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::State;
use super::render::{coding_system, identifier_system};
use crate::domain;

/// One row of the search index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub param: &'static str,
    pub system: String,
    pub value: String,
    pub low: Option<String>,
    pub high: Option<String>,
}

fn token(param: &'static str, system: Option<String>, value: &str) -> Entry {
    Entry {
        param,
        system: system.unwrap_or_default(),
        value: value.to_owned(),
        low: None,
        high: None,
    }
}

fn string(param: &'static str, value: &str) -> Entry {
    token(param, None, &normalize(value))
}

fn date(param: &'static str, value: &str) -> Option<Entry> {
    let (low, high) = range(value)?;
    Some(Entry {
        param,
        system: String::new(),
        value: String::new(),
        low: Some(low),
        high: Some(high),
    })
}

/// Case- and accent-insensitive form for string search (FHIR: "matches … ignoring case and
/// combining characters"): lower case, common Latin accents removed, ß as ss.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.trim().chars().flat_map(char::to_lowercase) {
        match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => out.push('a'),
            'ç' | 'č' | 'ć' => out.push('c'),
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => out.push('e'),
            'ì' | 'í' | 'î' | 'ï' | 'ī' => out.push('i'),
            'ñ' | 'ń' | 'ň' => out.push('n'),
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => out.push('o'),
            'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' => out.push('u'),
            'ý' | 'ÿ' => out.push('y'),
            'š' | 'ś' => out.push('s'),
            'ž' | 'ź' | 'ż' => out.push('z'),
            'ř' => out.push('r'),
            'ł' => out.push('l'),
            'ß' => out.push_str("ss"),
            c => out.push(c),
        }
    }
    out
}

const INDEX_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// An instant as the index writes it.
pub fn index_time(at: OffsetDateTime) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(INDEX_FORMAT)
        .unwrap_or_default()
}

/// The period a FHIR date or dateTime covers (FHIR search's implicit range: `2024` is the whole
/// year, `2024-03-01` the whole day, a time to the second that second), as index text. A date
/// without a time zone is read as UTC.
pub fn range(value: &str) -> Option<(String, String)> {
    let v = value.trim();
    let day_start = |d: Date| PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc();
    let num = |s: &str| s.parse::<i32>().ok();
    let (low, high) = match v.len() {
        4 => {
            let y = num(v)?;
            let start = Date::from_calendar_date(y, Month::January, 1).ok()?;
            let next = Date::from_calendar_date(y + 1, Month::January, 1).ok()?;
            (day_start(start), day_start(next))
        }
        7 => {
            let y = num(v.get(0..4)?)?;
            let m = Month::try_from(u8::try_from(num(v.get(5..7)?)?).ok()?).ok()?;
            let start = Date::from_calendar_date(y, m, 1).ok()?;
            let next = if m == Month::December {
                Date::from_calendar_date(y + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(y, m.next(), 1).ok()?
            };
            (day_start(start), day_start(next))
        }
        10 => {
            let start = Date::parse(v, format_description!("[year]-[month]-[day]")).ok()?;
            (day_start(start), day_start(start.next_day()?))
        }
        _ => {
            let at =
                OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()?;
            // Precision of the value: to the second unless it has a fraction.
            let fraction = v.get(19..).is_some_and(|rest| rest.starts_with('.'));
            let width = if fraction {
                time::Duration::microseconds(1)
            } else {
                time::Duration::seconds(1)
            };
            (at, at + width)
        }
    };
    let high = high - time::Duration::microseconds(1);
    Some((index_time(low), index_time(high)))
}

fn identifier(param: &'static str, id: &domain::Identifier) -> Entry {
    token(
        param,
        identifier_system(id.authority.as_deref()),
        id.value.as_str(),
    )
}

fn code(param: &'static str, c: &domain::Code) -> Entry {
    token(param, coding_system(c.system.as_deref()), c.code.as_str())
}

/// The index rows of a resource in a state.
pub fn entries(state: &State) -> Vec<Entry> {
    let mut out = Vec::new();
    match state {
        State::Patient(s) => {
            let p = &s.patient;
            for id in &p.identifiers {
                out.push(identifier("identifier", id));
            }
            for n in &p.names {
                if let Some(family) = &n.family {
                    out.push(string("family", family));
                    out.push(string("name", family));
                }
                for given in &n.given {
                    out.push(string("given", given));
                    out.push(string("name", given));
                }
                for part in n.prefix.iter().chain(&n.suffix) {
                    out.push(string("name", part));
                }
            }
            if let Some(b) = p
                .birth_date
                .as_ref()
                .and_then(|b| date("birthdate", b.as_str()))
            {
                out.push(b);
            }
            if let Some(sex) = p.sex {
                let g = match sex {
                    domain::Sex::Male => "male",
                    domain::Sex::Female => "female",
                    domain::Sex::Other => "other",
                    domain::Sex::Unknown => "unknown",
                };
                out.push(token(
                    "gender",
                    Some("http://hl7.org/fhir/administrative-gender".into()),
                    g,
                ));
            }
            out.push(token(
                "active",
                None,
                if s.active { "true" } else { "false" },
            ));
        }
        State::Encounter(s) => {
            out.push(token("patient", None, &s.patient));
            out.push(token(
                "status",
                Some("http://hl7.org/fhir/encounter-status".into()),
                &s.status,
            ));
            if let Some(v) = &s.encounter.visit_number {
                out.push(identifier("identifier", v));
            }
            let class = match s.encounter.class {
                Some(domain::EncounterClass::Inpatient | domain::EncounterClass::Obstetrics) => {
                    "IMP"
                }
                Some(domain::EncounterClass::Outpatient | domain::EncounterClass::Recurring) => {
                    "AMB"
                }
                Some(domain::EncounterClass::Emergency) => "EMER",
                Some(domain::EncounterClass::Preadmission) => "PRENC",
                _ => "UNK",
            };
            let class_system = if class == "UNK" {
                "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
            } else {
                "http://terminology.hl7.org/CodeSystem/v3-ActCode"
            };
            out.push(token("class", Some(class_system.into()), class));
            let e = &s.encounter;
            // The period: open at either end when a time is missing (FHIR: a missing end means
            // ongoing).
            let low = e
                .admitted_at
                .as_ref()
                .and_then(|a| range(a.as_str()))
                .map(|r| r.0);
            let high = e
                .discharged_at
                .as_ref()
                .and_then(|d| range(d.as_str()))
                .map(|r| r.1);
            if low.is_some() || high.is_some() {
                out.push(Entry {
                    param: "date",
                    system: String::new(),
                    value: String::new(),
                    low: Some(low.unwrap_or_else(|| "0000-01-01T00:00:00.000000Z".into())),
                    high: Some(high.unwrap_or_else(|| "9999-12-31T23:59:59.999999Z".into())),
                });
            }
        }
        State::ServiceRequest(s) => {
            out.push(token("patient", None, &s.patient));
            out.push(token(
                "status",
                Some("http://hl7.org/fhir/request-status".into()),
                &s.status,
            ));
            let o = &s.order;
            for id in [&o.placer_order_number, &o.filler_order_number]
                .into_iter()
                .flatten()
            {
                out.push(identifier("identifier", id));
            }
            if let Some(group) = &o.placer_group_number {
                out.push(identifier("requisition", group));
            }
            if let Some(c) = &o.code {
                out.push(code("code", c));
            }
            if let Some(d) = o
                .ordered_at
                .as_ref()
                .and_then(|d| date("authored", d.as_str()))
            {
                out.push(d);
            }
        }
        State::Observation(s) => {
            out.push(token("patient", None, &s.patient));
            out.push(code("code", &s.observation.code));
            out.push(token(
                "status",
                Some("http://hl7.org/fhir/observation-status".into()),
                s.observation.status.as_deref().unwrap_or("unknown"),
            ));
            let when = s
                .observation
                .observed_at
                .as_ref()
                .map(|d| d.as_str().to_owned())
                .or_else(|| s.issued.clone());
            if let Some(d) = when.as_deref().and_then(|d| date("date", d)) {
                out.push(d);
            }
        }
        State::DiagnosticReport(s) => {
            out.push(token("patient", None, &s.patient));
            out.push(token(
                "status",
                Some("http://hl7.org/fhir/diagnostic-report-status".into()),
                &s.status,
            ));
            if let Some(c) = s.order.as_ref().and_then(|o| o.code.as_ref()) {
                out.push(code("code", c));
            }
            let when = s.effective.as_deref().or(s.issued.as_deref());
            if let Some(d) = when.and_then(|d| date("date", d)) {
                out.push(d);
            }
        }
    }
    out
}
