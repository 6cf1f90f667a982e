//! Search parameters: which ones each resource type supports, and how a request's parameters become
//! a [`SearchQuery`]. The same table feeds the CapabilityStatement, so it states exactly what works.

use axum::http::StatusCode;

use super::outcome::FhirError;
use crate::projections::ResourceType;
use crate::projections::search::{normalize, range};
use crate::store::fhir::{Comparator, Condition, Filter, SearchQuery};

/// The kind of a search parameter (FHIR's SearchParamType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Token,
    String,
    Date,
    Reference,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::String => "string",
            Kind::Date => "date",
            Kind::Reference => "reference",
        }
    }
}

/// One supported search parameter: its name, kind, the index `param` it searches and a sentence
/// for the CapabilityStatement.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub index: &'static str,
    pub doc: &'static str,
}

const fn p(name: &'static str, kind: Kind, index: &'static str, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        index,
        doc,
    }
}

/// `patient` and `subject` of every resource that belongs to a Patient (both search the same index).
const PATIENT_REF: Param = p(
    "patient",
    Kind::Reference,
    "patient",
    "The patient (Patient/id or id).",
);
const SUBJECT_REF: Param = p(
    "subject",
    Kind::Reference,
    "patient",
    "The patient (Patient/id or id).",
);

const PATIENT: &[Param] = &[
    p(
        "identifier",
        Kind::Token,
        "identifier",
        "A patient identifier (system|value).",
    ),
    p(
        "family",
        Kind::String,
        "family",
        "Family name (starts with; case and accents ignored).",
    ),
    p(
        "given",
        Kind::String,
        "given",
        "Given name (starts with; case and accents ignored).",
    ),
    p(
        "name",
        Kind::String,
        "name",
        "Any part of a name (starts with; case and accents ignored).",
    ),
    p(
        "birthdate",
        Kind::Date,
        "birthdate",
        "Date of birth (prefixes eq ne gt lt ge le sa eb ap).",
    ),
    p("gender", Kind::Token, "gender", "Administrative gender."),
    p(
        "active",
        Kind::Token,
        "active",
        "false for a record merged into another.",
    ),
];

const ENCOUNTER: &[Param] = &[
    PATIENT_REF,
    SUBJECT_REF,
    p("status", Kind::Token, "status", "Encounter status."),
    p(
        "class",
        Kind::Token,
        "class",
        "Encounter class (v3 ActCode).",
    ),
    p(
        "date",
        Kind::Date,
        "date",
        "The encounter's period, by FHIR's date prefixes (eq: the period lies within the value; an ongoing encounter matches ge/gt/sa/ap, not eq).",
    ),
    p(
        "identifier",
        Kind::Token,
        "identifier",
        "Visit number (system|value).",
    ),
];

const SERVICE_REQUEST: &[Param] = &[
    PATIENT_REF,
    SUBJECT_REF,
    p("status", Kind::Token, "status", "Request status."),
    p(
        "code",
        Kind::Token,
        "code",
        "What is being requested (system|code).",
    ),
    p(
        "authored",
        Kind::Date,
        "authored",
        "When the request was made.",
    ),
    p(
        "identifier",
        Kind::Token,
        "identifier",
        "Placer or filler order number (system|value).",
    ),
    p(
        "requisition",
        Kind::Token,
        "requisition",
        "Placer group number: the requisition orders were placed under together (system|value).",
    ),
];

const OBSERVATION: &[Param] = &[
    PATIENT_REF,
    SUBJECT_REF,
    p(
        "code",
        Kind::Token,
        "code",
        "The observation code (system|code).",
    ),
    p(
        "date",
        Kind::Date,
        "date",
        "When observed (else when reported).",
    ),
    p("status", Kind::Token, "status", "Observation status."),
];

const DIAGNOSTIC_REPORT: &[Param] = &[
    PATIENT_REF,
    SUBJECT_REF,
    p(
        "code",
        Kind::Token,
        "code",
        "The report's code: the order's code (system|code).",
    ),
    p(
        "date",
        Kind::Date,
        "date",
        "The report's clinically relevant time (the earliest OBX-14), else when it was received.",
    ),
    p("status", Kind::Token, "status", "Report status."),
];

/// The search parameters of a type.
pub fn params(resource_type: ResourceType) -> &'static [Param] {
    match resource_type {
        ResourceType::Patient => PATIENT,
        ResourceType::Encounter => ENCOUNTER,
        ResourceType::ServiceRequest => SERVICE_REQUEST,
        ResourceType::Observation => OBSERVATION,
        ResourceType::DiagnosticReport => DIAGNOSTIC_REPORT,
    }
}

/// Paging defaults and limits.
pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1_000;

/// A parsed search request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    pub query: SearchQuery,
    /// `_include` of the subject: include the referenced Patients.
    pub include_patient: bool,
    /// The parameters as understood, for the self and paging links (without `_count`/`_offset`).
    pub canonical: Vec<(String, String)>,
}

/// Parses the parameters of a search; `strict` (Prefer: handling=strict) turns unknown or
/// unsupported parameters into an error instead of ignoring them.
pub fn parse(
    resource_type: ResourceType,
    pairs: &[(String, String)],
    strict: bool,
) -> Result<Search, FhirError> {
    let mut filters = Vec::new();
    let mut count = DEFAULT_COUNT;
    let mut offset = 0;
    let mut include_patient = false;
    let mut summary_count = false;
    let mut canonical = Vec::new();
    let unknown = |name: &str, why: String| -> Result<(), FhirError> {
        if strict {
            Err(FhirError::bad_request(why).at(name.to_owned()))
        } else {
            Ok(())
        }
    };
    for (raw_name, value) in pairs {
        let (name, modifier) = match raw_name.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (raw_name.as_str(), None),
        };
        match name {
            "_count" => {
                count = value
                    .parse::<usize>()
                    .map_err(|_| {
                        FhirError::bad_request("_count must be a whole number").at("_count")
                    })?
                    .min(MAX_COUNT);
                continue;
            }
            "_offset" => {
                offset = value.parse::<usize>().map_err(|_| {
                    FhirError::bad_request("_offset must be a whole number").at("_offset")
                })?;
                continue;
            }
            "_format" => continue,
            "_summary" if value == "count" => {
                summary_count = true;
                canonical.push((raw_name.clone(), value.clone()));
                continue;
            }
            "_summary" => {
                unknown(
                    name,
                    format!("_summary={value} is not supported (only _summary=count)"),
                )?;
                continue;
            }
            "_include" => {
                let wanted = [
                    format!("{resource_type}:patient"),
                    format!("{resource_type}:subject"),
                    format!("{resource_type}:subject:Patient"),
                    format!("{resource_type}:patient:Patient"),
                ];
                if resource_type != ResourceType::Patient && wanted.contains(value) {
                    include_patient = true;
                    canonical.push((raw_name.clone(), value.clone()));
                } else {
                    unknown(
                        name,
                        format!(
                            "_include={value} is not supported (only {resource_type}:patient and \
                             {resource_type}:subject)"
                        ),
                    )?;
                }
                continue;
            }
            "_id" => {
                if modifier.is_some() {
                    unknown(
                        raw_name,
                        format!(
                            "modifier :{} on _id is not supported",
                            modifier.unwrap_or_default()
                        ),
                    )?;
                    continue;
                }
                filters.push(Filter::Id(split(value).map(str::to_owned).collect()));
                canonical.push((raw_name.clone(), value.clone()));
                continue;
            }
            "_lastUpdated" => {
                let mut ranges = Vec::new();
                for v in split(value) {
                    let (comparator, low, high) = date_value(v).ok_or_else(|| {
                        FhirError::bad_request(format!(
                            "_lastUpdated={v} is not a date or dateTime with an optional prefix"
                        ))
                        .at("_lastUpdated")
                    })?;
                    ranges.push((comparator, low, high));
                }
                filters.push(Filter::LastUpdated(ranges));
                canonical.push((raw_name.clone(), value.clone()));
                continue;
            }
            _ => {}
        }
        let Some(param) = params(resource_type).iter().find(|p| p.name == name) else {
            unknown(
                name,
                format!("unknown search parameter {name} for {resource_type}"),
            )?;
            continue;
        };
        let mut any = Vec::new();
        for v in split(value) {
            any.push(condition(param, modifier, v, raw_name)?);
        }
        filters.push(Filter::Index {
            param: param.index,
            any,
        });
        canonical.push((raw_name.clone(), value.clone()));
    }
    if summary_count {
        count = 0;
    }
    Ok(Search {
        query: SearchQuery {
            resource_type,
            filters,
            count,
            offset,
        },
        include_patient,
        canonical,
    })
}

/// Comma-separated values (OR). FHIR escapes a literal comma as `\,`; identifiers with commas
/// are rare enough that Ferry does not support them, and says so in the CapabilityStatement.
fn split(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

fn condition(
    param: &Param,
    modifier: Option<&str>,
    value: &str,
    raw_name: &str,
) -> Result<Condition, FhirError> {
    let unsupported = || {
        FhirError::not_supported(
            StatusCode::BAD_REQUEST,
            format!(
                "modifier :{} is not supported on {} parameter {}",
                modifier.unwrap_or_default(),
                param.kind.as_str(),
                param.name
            ),
        )
        .at(raw_name.to_owned())
    };
    Ok(match param.kind {
        Kind::Token => {
            if modifier.is_some() {
                return Err(unsupported());
            }
            match value.split_once('|') {
                Some((system, code)) => Condition::Token {
                    system: Some(system.to_owned()),
                    value: (!code.is_empty()).then(|| code.to_owned()),
                },
                None => Condition::Token {
                    system: None,
                    value: Some(value.to_owned()),
                },
            }
        }
        Kind::String => match modifier {
            None => Condition::Prefix(normalize(value)),
            Some("exact") => Condition::Exact(normalize(value)),
            Some("contains") => Condition::Contains(normalize(value)),
            Some(_) => return Err(unsupported()),
        },
        Kind::Reference => {
            if !matches!(modifier, None | Some("Patient")) {
                return Err(unsupported());
            }
            // `id`, `Patient/id` or an absolute URL ending in `Patient/id`; another type can
            // never match (only Patients are subjects here).
            let id = match value.rsplit_once('/') {
                Some((before, id)) if before == "Patient" || before.ends_with("/Patient") => id,
                Some(_) => "",
                None => value,
            };
            Condition::Token {
                system: None,
                value: Some(id.to_owned()),
            }
        }
        Kind::Date => {
            if modifier.is_some() {
                return Err(unsupported());
            }
            let (comparator, low, high) = date_value(value).ok_or_else(|| {
                FhirError::bad_request(format!(
                    "{}={value} is not a date or dateTime with an optional prefix (eq, ne, gt, lt, \
                     ge, le, sa, eb, ap)",
                    param.name
                ))
                .at(raw_name.to_owned())
            })?;
            Condition::Date {
                comparator,
                low,
                high,
            }
        }
    })
}

/// `[prefix]date` → comparator and the range the date covers.
fn date_value(value: &str) -> Option<(Comparator, String, String)> {
    let (comparator, rest) = match value.get(..2) {
        Some("eq") => (Comparator::Eq, &value[2..]),
        Some("ne") => (Comparator::Ne, &value[2..]),
        Some("gt") => (Comparator::Gt, &value[2..]),
        Some("lt") => (Comparator::Lt, &value[2..]),
        Some("ge") => (Comparator::Ge, &value[2..]),
        Some("le") => (Comparator::Le, &value[2..]),
        Some("sa") => (Comparator::Sa, &value[2..]),
        Some("eb") => (Comparator::Eb, &value[2..]),
        Some("ap") => (Comparator::Ap, &value[2..]),
        _ => (Comparator::Eq, value),
    };
    let (low, high) = range(rest)?;
    Some((comparator, low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn parses_tokens_strings_dates_and_references() {
        let s = parse(
            ResourceType::Patient,
            &pairs(&[
                ("identifier", "urn:oid:1.2|123,456"),
                ("family", "Müller"),
                ("birthdate", "ge1980-01"),
                ("_count", "5"),
            ]),
            true,
        )
        .unwrap_or_else(|e| panic!("{}", e.diagnostics));
        assert_eq!(s.query.count, 5);
        assert_eq!(s.query.filters.len(), 3);
        assert_eq!(
            s.query.filters[0],
            Filter::Index {
                param: "identifier",
                any: vec![
                    Condition::Token {
                        system: Some("urn:oid:1.2".into()),
                        value: Some("123".into())
                    },
                    Condition::Token {
                        system: None,
                        value: Some("456".into())
                    }
                ]
            }
        );
        assert_eq!(
            s.query.filters[1],
            Filter::Index {
                param: "family",
                any: vec![Condition::Prefix("muller".into())]
            }
        );
        let Filter::Index { any, .. } = &s.query.filters[2] else {
            panic!("not an index filter")
        };
        assert_eq!(
            any[0],
            Condition::Date {
                comparator: Comparator::Ge,
                low: "1980-01-01T00:00:00.000000Z".into(),
                high: "1980-01-31T23:59:59.999999Z".into()
            }
        );

        let r = parse(
            ResourceType::Encounter,
            &pairs(&[
                ("subject", "http://x/fhir/Patient/abc"),
                ("_include", "Encounter:subject"),
            ]),
            true,
        )
        .unwrap_or_else(|e| panic!("{}", e.diagnostics));
        assert!(r.include_patient);
        assert_eq!(
            r.query.filters[0],
            Filter::Index {
                param: "patient",
                any: vec![Condition::Token {
                    system: None,
                    value: Some("abc".into())
                }]
            }
        );
    }

    #[test]
    fn unknown_parameters_are_ignored_unless_strict_and_bad_values_are_errors() {
        let lenient = parse(ResourceType::Patient, &pairs(&[("shoe-size", "42")]), false);
        assert!(lenient.is_ok_and(|s| s.query.filters.is_empty() && s.canonical.is_empty()));
        let strict = parse(ResourceType::Patient, &pairs(&[("shoe-size", "42")]), true);
        assert!(
            strict.is_err_and(|e| e.status == StatusCode::BAD_REQUEST
                && e.expression.as_deref() == Some("shoe-size"))
        );
        let bad_date = parse(
            ResourceType::Patient,
            &pairs(&[("birthdate", "yesterday")]),
            false,
        );
        assert!(bad_date.is_err_and(|e| e.expression.as_deref() == Some("birthdate")));
        let summary = parse(
            ResourceType::Patient,
            &pairs(&[("_summary", "count")]),
            true,
        );
        assert!(summary.is_ok_and(|s| s.query.count == 0));
    }
}
