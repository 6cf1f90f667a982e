//! The data the events carry: patients, encounters, orders and observations, in the shape the FHIR API
//! (issue 4) and outbound messages (issue 5) need, and nothing HL7-specific in their names.
//!
//! Every struct denies unknown fields, so a mapping that writes a field the catalogue does not know is
//! refused when its output is checked, not silently stored.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// An identifier with the authority that assigned it (HL7 CX): MRN, visit number, order number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identifier {
    pub value: NonEmpty,
    /// Assigning authority (CX-4.1), the namespace that makes `value` unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Identifier type code (CX-5, HL7 table 0203: MR, PI, SS, VN, …).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_code: Option<String>,
    /// Assigning facility (CX-6.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<String>,
}

/// A person's name (HL7 XPN).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HumanName {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Given name first, then middle names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// FHIR name use (official, usual, nickname, anonymous, old, maiden, temp).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_code: Option<String>,
}

/// A postal address (HL7 XAD).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// FHIR address use (home, work, temp, old, billing).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_code: Option<String>,
}

/// A phone number, e-mail address or other contact point (HL7 XTN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Telecom {
    pub value: NonEmpty,
    /// FHIR contact point system (phone, fax, email, pager, url, sms, other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// FHIR contact point use (home, work, temp, old, mobile).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_code: Option<String>,
}

/// A doctor or other provider (HL7 XCN).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Practitioner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A place in the hospital (HL7 PL).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_of_care: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<String>,
}

/// A coded value (HL7 CE/CWE): the code, its display text and the coding system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Code {
    pub code: NonEmpty,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

/// Administrative sex, as FHIR's `AdministrativeGender`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sex {
    Male,
    Female,
    Other,
    Unknown,
}

/// The patient class of an encounter (HL7 table 0004, named as FHIR's v3 ActCode classes read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncounterClass {
    Inpatient,
    Outpatient,
    Emergency,
    Preadmission,
    Recurring,
    Obstetrics,
    Unknown,
}

/// The patient as a message describes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Patient {
    /// In the order the mapping chose; the first is the patient stream's key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<HumanName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub telecoms: Vec<Telecom>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deceased: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deceased_at: Option<FhirDateTime>,
}

/// A hospital stay or visit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Encounter {
    /// The encounter stream's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_number: Option<Identifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<EncounterClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_location: Option<Location>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attending: Vec<Practitioner>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hospital_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<FhirDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discharged_at: Option<FhirDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discharge_disposition: Option<String>,
}

/// A clinical order (imaging, lab, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// The order control code (ORC-1, HL7 table 0119) the event was derived from.
    pub control: NonEmpty,
    /// The order stream's key (or the filler number when there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placer_order_number: Option<Identifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filler_order_number: Option<Identifier>,
    /// The placer group number (ORC-4): the requisition several orders were placed under together
    /// (FHIR ServiceRequest.requisition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placer_group_number: Option<Identifier>,
    /// Order status (ORC-5, HL7 table 0038), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    /// FHIR request priority (routine, urgent, asap, stat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_provider: Option<Practitioner>,
    /// Diagnostic service section (OBR-24, HL7 table 0074): RAD, CT, MR, US, LAB, …; PACS routing uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostic_service_section: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<FhirDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_at: Option<FhirDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Code>,
}

/// One result (HL7 OBX).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_id: Option<String>,
    /// HL7 value type (OBX-2: NM, ST, CWE, …), which says how to read `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<String>,
    pub code: Code,
    /// The value as text, exactly as sent (decoded); numbers stay text so `1.50` stays `1.50`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_range: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abnormal_flags: Vec<String>,
    /// Result status (OBX-11, HL7 table 0085: F final, P preliminary, C corrected, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<FhirDateTime>,
}

/// What a merge retired (HL7 MRG).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Merged {
    /// The non-surviving patient's identifiers (MRG-1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit_number: Option<Identifier>,
}

/// A string that must not be empty: required values (an identifier without a value identifies nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NonEmpty(String);

impl NonEmpty {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NonEmpty {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("must not be empty".to_owned())
        } else {
            Ok(NonEmpty(s))
        }
    }
}

impl From<NonEmpty> for String {
    fn from(v: NonEmpty) -> String {
        v.0
    }
}

impl JsonSchema for NonEmpty {
    fn schema_name() -> Cow<'static, str> {
        "NonEmpty".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "minLength": 1 })
    }
}

/// A FHIR `date`: `YYYY`, `YYYY-MM` or `YYYY-MM-DD` (HL7 sends partial birth dates; precision is kept,
/// never invented).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FhirDate(String);

/// A FHIR `dateTime`: a partial date, or a full date and time that always carries its UTC offset
/// (HL7 times without one get the mapping set's default time zone before they get here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FhirDateTime(String);

const DATE_PATTERN: &str = r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$";
const DATE_TIME_PATTERN: &str = r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00)))?)?)?$";

/// The check of [`FhirDate`]'s `TryFrom`, also used by the payload fast check (`check.rs`).
/// `str::trim`, without decoding characters when the text starts and ends with ASCII that is not
/// whitespace, as nearly every value of a message does.
pub fn trim(s: &str) -> &str {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => s,
        _ => s.trim(),
    }
}

pub(super) fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    match b.len() {
        4 => digits(0..4),
        7 => digits(0..4) && b[4] == b'-' && digits(5..7) && (1..=12).contains(&num(5..7)),
        10 => {
            digits(0..4)
                && b[4] == b'-'
                && digits(5..7)
                && b[7] == b'-'
                && digits(8..10)
                && time::Month::try_from(num(5..7) as u8).is_ok_and(|m| {
                    let year = num(0..4) as i32;
                    (1..=u32::from(m.length(year))).contains(&num(8..10))
                })
        }
        _ => false,
    }
}

/// The check of [`FhirDateTime`]'s `TryFrom`, also used by the payload fast check (`check.rs`).
pub(super) fn valid_date_time(s: &str) -> bool {
    if s.len() <= 10 {
        return valid_date(s);
    }
    s.len() > 10
        && s.is_char_boundary(10)
        && valid_date(&s[..10])
        && s.as_bytes()[10] == b'T'
        && (plainly_valid_time(s.as_bytes())
            || time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .is_ok())
}

/// Whether a dateTime whose date is valid has the time and offset mappings write
/// (`hh:mm:ss[.f…]` with `Z` or `±hh:mm`, every number in its everyday range, the year well inside
/// what the time crate reads): those the time crate certainly accepts. Parsing them with it was
/// about a tenth of checking a whole order payload. Everything else (a leap second, an offset beyond
/// 23 hours, a year at the edge) is left to the time crate, which decides; `false` here means "not
/// sure", never "invalid". `plain_times_are_valid_rfc3339` pins that.
fn plainly_valid_time(b: &[u8]) -> bool {
    let two = |at: usize, max: u8| -> bool {
        match (b.get(at), b.get(at + 1)) {
            (Some(&h @ b'0'..=b'9'), Some(&l @ b'0'..=b'9')) => (h - b'0') * 10 + (l - b'0') <= max,
            _ => false,
        }
    };
    let year_inside = b[..4] != *b"0000" && b[..4] != *b"9999";
    if !(year_inside
        && two(11, 23)
        && b.get(13) == Some(&b':')
        && two(14, 59)
        && b.get(16) == Some(&b':')
        && two(17, 59))
    {
        return false;
    }
    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits) {
            return false;
        }
        at += 1 + digits;
    }
    match &b[at..] {
        [b'Z'] => true,
        [b'+' | b'-', ..] if b.len() == at + 6 => {
            two(at + 1, 23) && b[at + 3] == b':' && two(at + 4, 59)
        }
        _ => false,
    }
}

impl TryFrom<String> for FhirDate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if valid_date(&s) {
            Ok(FhirDate(s))
        } else {
            Err(format!("{s:?} is not a date (YYYY, YYYY-MM or YYYY-MM-DD)"))
        }
    }
}

impl TryFrom<String> for FhirDateTime {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if valid_date_time(&s) {
            Ok(FhirDateTime(s))
        } else {
            Err(format!(
                "{s:?} is not a dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with an offset)"
            ))
        }
    }
}

impl From<FhirDate> for String {
    fn from(v: FhirDate) -> String {
        v.0
    }
}

impl From<FhirDateTime> for String {
    fn from(v: FhirDateTime) -> String {
        v.0
    }
}

impl FhirDate {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FhirDateTime {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for FhirDate {
    fn schema_name() -> Cow<'static, str> {
        "FhirDate".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "fhir-date", "pattern": DATE_PATTERN })
    }
}

impl JsonSchema for FhirDateTime {
    fn schema_name() -> Cow<'static, str> {
        "FhirDateTime".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "fhir-dateTime", "pattern": DATE_TIME_PATTERN })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_keep_their_precision_and_refuse_impossible_days() {
        for ok in ["1980", "1980-02", "1980-02-29", "2000-12-31"] {
            assert!(valid_date(ok), "{ok}");
        }
        for bad in [
            "",
            "80",
            "1980-13",
            "1981-02-29",
            "1980-1-1",
            "19800229",
            "1980-02-30",
            "abcd",
        ] {
            assert!(!valid_date(bad), "{bad}");
        }
    }

    proptest::proptest! {
        /// The shortcut accepts only what the time crate accepts, over times near the everyday
        /// shape (edges, leap seconds, long fractions and odd offsets included).
        #[test]
        fn plain_times_are_valid_rfc3339(
            s in "(0000|0001|2026|9998|9999)-(01|02|12)-(01|28|29|31)T[0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{0,11})?(Z|z|[+-][0-2][0-9]:[0-6][0-9]|[+-][0-9]{2}[0-9]{2})?"
        ) {
            let b = s.as_bytes();
            if valid_date(&s[..10]) && plainly_valid_time(b) {
                proptest::prop_assert!(
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).is_ok(),
                    "{s}"
                );
            }
        }
    }

    #[test]
    fn date_times_need_an_offset_once_they_have_a_time() {
        for ok in [
            "2026",
            "2026-11-03",
            "2026-11-03T14:30:00+01:00",
            "2026-11-03T14:30:00Z",
            "2026-11-03T14:30:00.123-05:00",
        ] {
            assert!(valid_date_time(ok), "{ok}");
        }
        for bad in [
            "2026-11-03T14:30:00",
            "2026-11-03T25:00:00Z",
            "2026-11-03T14:60:00Z",
            "2026-11-03T14:30:00.Z",
            "2026-11-03T14:30:00+01:0",
            "2026-11-03T14:30:00+01:00Z",
            "2026-11-03 14:30:00+01:00",
            "2026-11-3",
        ] {
            assert!(!valid_date_time(bad), "{bad}");
        }
    }
}
