//! The closed list of named transforms a rule may apply to a text value (`transform: [trim, upper]`).
//!
//! Closed on purpose: analysts can read every one of them in the mapping guide, and each is tested here. A
//! transform that cannot read its input (a date that is not a date, `boolean` on `X`) fails with a message that
//! becomes ERR code 102 at the value's location.
//!
//! Times use `jiff` with its bundled time zone database (`tzdb-bundle-always`): IANA zones are needed to turn a
//! local HL7 time into an offset, and bundling makes the answer the same in a slim container image without
//! `/usr/share/zoneinfo` as on a developer's machine. `time` (already a dependency) has no IANA zones, and
//! `chrono-tz` would bring in chrono next to it; jiff alone does both the civil arithmetic and the zones.

use std::borrow::Cow;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};

use crate::domain::trim;

/// A named transform. See [`Transform::NAMES`] for the spelling in mapping files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Removes leading and trailing white space.
    Trim,
    /// Upper-cases (Unicode-aware), e.g. before a table lookup of codes sent in either case.
    Upper,
    /// Lower-cases (Unicode-aware).
    Lower,
    /// HL7 DT/DTM/TS → FHIR `date`, keeping the precision sent (`1970` → `1970`, `197001` → `1970-01`).
    Date,
    /// HL7 DTM/TS → FHIR `dateTime`, keeping the precision sent; a time always gets an offset: the one sent,
    /// else the set's `default_timezone` at that moment.
    DateTime,
    /// HL7 table 0136: `Y` → true, `N` → false (either case), and FHIR's `true`/`false`; anything else
    /// is an error: guessing at yes/no words is how wrong deaths get recorded (conformance/README.md,
    /// PID-30 `NO`).
    Boolean,
    /// A FHIR identifier system as the domain's assigning authority, the inverse of how Ferry writes
    /// systems: `urn:oid:1.2.3` → `1.2.3`, `urn:ferry:authority:HOSP` → `HOSP`, any other URI as it
    /// is. So an identifier a client writes keys the same stream as the same identifier in PID-3.
    Authority,
    /// FHIR `date` (or the date of a `dateTime`) → HL7 DT, precision kept: `1984-03-12` → `19840312`,
    /// `1978-05` → `197805`. For outbound files.
    Hl7Date,
    /// FHIR `dateTime` → HL7 DTM, precision and offset kept: `2026-11-03T15:30:00+01:00` →
    /// `20261103153000+0100`, `Z` → `+0000`, a fraction cut to HL7's 4 digits. For outbound files.
    Hl7DateTime,
}

/// What a transform produced: text, or a boolean (only from `boolean`). The text stays borrowed from the
/// message while no transform had to change it: most trimmed or upper-cased codes already were, and are then
/// only looked up in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out<'t> {
    Str(Cow<'t, str>),
    Bool(bool),
}

impl Transform {
    /// Every name, in the order the mapping guide lists them.
    pub const NAMES: &'static [&'static str] = &[
        "trim",
        "upper",
        "lower",
        "date",
        "datetime",
        "boolean",
        "authority",
        "hl7_date",
        "hl7_datetime",
    ];

    /// The transform a mapping file names; `None` for a name not in the closed list.
    pub fn from_name(name: &str) -> Option<Transform> {
        Some(match name {
            "trim" => Transform::Trim,
            "upper" => Transform::Upper,
            "lower" => Transform::Lower,
            "date" => Transform::Date,
            "datetime" => Transform::DateTime,
            "boolean" => Transform::Boolean,
            "authority" => Transform::Authority,
            "hl7_date" => Transform::Hl7Date,
            "hl7_datetime" => Transform::Hl7DateTime,
            _ => return None,
        })
    }

    /// The name as written in mapping files (and in `explain`'s rule descriptions).
    pub fn name(self) -> &'static str {
        match self {
            Transform::Trim => "trim",
            Transform::Upper => "upper",
            Transform::Lower => "lower",
            Transform::Date => "date",
            Transform::DateTime => "datetime",
            Transform::Boolean => "boolean",
            Transform::Authority => "authority",
            Transform::Hl7Date => "hl7_date",
            Transform::Hl7DateTime => "hl7_datetime",
        }
    }

    /// Applies the transform. `Err` is a plain sentence saying what was expected (for ERR-8).
    pub fn apply<'t>(self, value: Out<'t>, tz: &TimeZone) -> Result<Out<'t>, String> {
        let text = match value {
            Out::Str(s) => s,
            Out::Bool(b) => {
                return Err(format!(
                    "{} cannot be applied to the boolean {b}",
                    self.name()
                ));
            }
        };
        Ok(match self {
            Transform::Trim => Out::Str(match text {
                Cow::Borrowed(t) => Cow::Borrowed(trim(t)),
                Cow::Owned(t) if trim(&t).len() == t.len() => Cow::Owned(t),
                Cow::Owned(t) => Cow::Owned(trim(&t).to_owned()),
            }),
            Transform::Upper => recase(text, u8::is_ascii_lowercase, str::to_uppercase),
            Transform::Lower => recase(text, u8::is_ascii_uppercase, str::to_lowercase),
            Transform::Authority => Out::Str(authority(text)),
            Transform::Date => Out::Str(Cow::Owned(fhir_date(&text)?)),
            Transform::DateTime => Out::Str(Cow::Owned(fhir_datetime(&text, tz)?)),
            Transform::Hl7Date => Out::Str(Cow::Owned(hl7_date(&text)?)),
            Transform::Hl7DateTime => Out::Str(Cow::Owned(hl7_datetime(&text)?)),
            Transform::Boolean => match text.trim() {
                // Y/N as HL7 writes it (table 0136), true/false as FHIR's JSON does.
                "Y" | "y" | "true" => Out::Bool(true),
                "N" | "n" | "false" => Out::Bool(false),
                other => {
                    return Err(format!(
                        "{other:?} is not a yes/no value (expected Y or N, or true or false)"
                    ));
                }
            },
        })
    }
}

/// `convert` (to upper or lower case), or the text itself, still borrowed, when it is ASCII without a letter
/// of the other case (`other_case`): what `convert` would return anyway.
fn recase<'t>(
    text: Cow<'t, str>,
    other_case: fn(&u8) -> bool,
    convert: fn(&str) -> String,
) -> Out<'t> {
    if text.bytes().all(|b| b.is_ascii() && !other_case(&b)) {
        Out::Str(text)
    } else {
        Out::Str(Cow::Owned(convert(&text)))
    }
}

/// FHIR `date`/`dateTime` → HL7 DT: the date digits only.
pub(crate) fn hl7_date(text: &str) -> Result<String, String> {
    let full = hl7_datetime(text)?;
    Ok(full
        .chars()
        .take_while(char::is_ascii_digit)
        .take(8)
        .collect())
}

/// FHIR `date`/`dateTime` → HL7 DTM, keeping the precision given: `YYYY[-MM[-DD[Thh:mm[:ss[.f]]]]][Z|±hh:mm]`
/// → `YYYY[MM[DD[hhmm[ss[.ffff]]]]][±hhmm]`.
pub(crate) fn hl7_datetime(text: &str) -> Result<String, String> {
    let bad =
        || format!("{text:?} is not a FHIR date or dateTime (e.g. 2026-11-03T15:30:00+01:00)");
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let widths = [4, 2, 2];
    if parts.len() > 3
        || parts
            .iter()
            .zip(widths)
            .any(|(p, w)| p.len() != w || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let mut out: String = parts.concat();
    let Some(time) = time else {
        return Ok(out);
    };
    if parts.len() != 3 {
        return Err(bad());
    }
    // The offset starts at Z, + or - (the time itself has none of them).
    let (clock, offset) = match time.find(['Z', '+', '-']) {
        Some(i) => (&time[..i], Some(&time[i..])),
        None => (time, None),
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((c, f)) => (c, Some(f)),
        None => (clock, None),
    };
    let hms: Vec<&str> = hms.split(':').collect();
    if !(2..=3).contains(&hms.len())
        || hms
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    out.push_str(&hms.concat());
    if let Some(f) = fraction {
        if hms.len() != 3 || f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        out.push('.');
        out.push_str(&f[..f.len().min(4)]);
    }
    match offset {
        None => {}
        Some("Z") => out.push_str("+0000"),
        Some(o) => {
            let (h, m) = o[1..].split_once(':').ok_or_else(bad)?;
            if h.len() != 2
                || m.len() != 2
                || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            out.push_str(&o[..1]);
            out.push_str(h);
            out.push_str(m);
        }
    }
    Ok(out)
}

/// An HL7 DTM split into its parts; `None` parts were not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hl7Time<'a> {
    year: i16,
    month: Option<i8>,
    day: Option<i8>,
    hour: Option<i8>,
    minute: Option<i8>,
    second: Option<i8>,
    /// The digits after the decimal point, as sent.
    fraction: Option<&'a str>,
    /// Offset in minutes east of UTC, when sent.
    offset_minutes: Option<i32>,
}

const DTM_FORMAT: &str = "YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]";

fn parse_hl7_time(text: &str) -> Result<Hl7Time<'_>, String> {
    let bad = |why: &str| format!("{text:?} is not an HL7 date/time ({DTM_FORMAT}): {why}");
    // Byte searches rather than `find`/`split_once` with char patterns, whose searchers cost more than
    // the few bytes of a time; the bytes found are ASCII, so the cuts fall on character boundaries.
    let (main, offset) = match text.bytes().position(|b| b == b'+' || b == b'-') {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let (digits, fraction) = match main.bytes().position(|b| b == b'.') {
        Some(i) => (&main[..i], Some(&main[i + 1..])),
        None => (main, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            "only digits are allowed before the fraction and offset",
        ));
    }
    if ![4, 6, 8, 10, 12, 14].contains(&digits.len()) {
        return Err(bad(
            "the date and time part must have 4, 6, 8, 10, 12 or 14 digits",
        ));
    }
    // Every byte is a digit (checked above), so the numbers are read by arithmetic, not `str::parse`.
    let value = |r: std::ops::Range<usize>| -> Option<i16> {
        let d = digits.as_bytes().get(r)?;
        Some(d.iter().fold(0, |acc, b| acc * 10 + i16::from(b - b'0')))
    };
    let num = |r: std::ops::Range<usize>| value(r).and_then(|v| i8::try_from(v).ok());
    let year: i16 = value(0..4).ok_or_else(|| bad("no year"))?;
    let t = Hl7Time {
        year,
        month: num(4..6),
        day: num(6..8),
        hour: num(8..10),
        minute: num(10..12),
        second: num(12..14),
        fraction,
        offset_minutes: None,
    };
    if let Some(f) = fraction
        && (t.second.is_none()
            || f.is_empty()
            || f.len() > 4
            || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("a fraction needs seconds before it and 1 to 4 digits"));
    }
    let offset_minutes = match offset {
        None => None,
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let d = &o[1..];
            if d.len() != 4 || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the offset must be +HHMM or -HHMM"));
            }
            let h: i32 = d[..2].parse().map_err(|_| bad("bad offset hours"))?;
            let m: i32 = d[2..].parse().map_err(|_| bad("bad offset minutes"))?;
            if h > 14 || m > 59 {
                return Err(bad("the offset is out of range"));
            }
            Some(sign * (h * 60 + m))
        }
    };
    // Check the calendar and the clock with jiff, which knows month lengths and leap years.
    Date::new(year, t.month.unwrap_or(1), t.day.unwrap_or(1)).map_err(|_| bad("no such date"))?;
    if t.hour.is_some_and(|h| !(0..=23).contains(&h))
        || t.minute.is_some_and(|m| !(0..=59).contains(&m))
        || t.second.is_some_and(|s| !(0..=59).contains(&s))
    {
        return Err(bad("no such time of day"));
    }
    Ok(Hl7Time {
        offset_minutes,
        ..t
    })
}

/// Appends `n` zero-padded to `width` digits, as `{n:0width$}` would: every mapped message formats a few
/// dates, and `format!` costs several times this.
fn push_padded(s: &mut String, n: i32, width: u32) {
    // Widths of 2 and 4 only here; anything else, or a number that does not fit, goes to `format!`.
    let fits = match width {
        2 => (0..100).contains(&n),
        4 => (0..10_000).contains(&n),
        _ => false,
    };
    if !fits {
        use std::fmt::Write;
        let _ = write!(s, "{n:0w$}", w = width as usize);
        return;
    }
    // Each digit pushed as a character: going through a buffer and `from_utf8` cost more than the
    // arithmetic.
    let digit = |d: i32| char::from(b'0' + (d % 10) as u8);
    if width == 4 {
        s.push(digit(n / 1000));
        s.push(digit(n / 100));
    }
    s.push(digit(n / 10));
    s.push(digit(n));
}

fn push_date_part(s: &mut String, t: &Hl7Time<'_>) {
    push_padded(s, i32::from(t.year), 4);
    if let Some(m) = t.month {
        s.push('-');
        push_padded(s, i32::from(m), 2);
        if let Some(d) = t.day {
            s.push('-');
            push_padded(s, i32::from(d), 2);
        }
    }
}

fn date_part(t: &Hl7Time<'_>) -> String {
    let mut s = String::with_capacity(10);
    push_date_part(&mut s, t);
    s
}

/// HL7 DT or DTM → FHIR date (the date as written; a time and offset are dropped).
pub fn fhir_date(text: &str) -> Result<String, String> {
    Ok(date_part(&parse_hl7_time(trim(text))?))
}

/// HL7 DTM → FHIR dateTime; see [`Transform::DateTime`].
pub fn fhir_datetime(text: &str, tz: &TimeZone) -> Result<String, String> {
    let t = parse_hl7_time(trim(text))?;
    let (Some(month), Some(day), Some(hour)) = (t.month, t.day, t.hour) else {
        return Ok(date_part(&t));
    };
    let minute = t.minute.unwrap_or(0);
    let second = t.second.unwrap_or(0);
    let offset_secs = match t.offset_minutes {
        Some(m) => m * 60,
        None => {
            let civil = DateTime::new(t.year, month, day, hour, minute, second, 0)
                .map_err(|e| format!("{text:?}: {e}"))?;
            // In a DST gap or overlap, "compatible" picks what clocks on the wall meant (the later offset in a
            // gap, the earlier in an overlap), as RFC 5545 and java.time do: the offset of the instant
            // jiff's `compatible` gives. Looked up without building a `Zoned` (which clones the zone).
            let at = tz.to_ambiguous_timestamp(civil);
            let offset = match at.offset() {
                AmbiguousOffset::Unambiguous { offset }
                | AmbiguousOffset::Fold { before: offset, .. } => offset,
                AmbiguousOffset::Gap { .. } => {
                    let instant = at
                        .compatible()
                        .map_err(|e| format!("{text:?} in the default time zone: {e}"))?;
                    tz.to_offset(instant)
                }
            };
            offset.seconds()
        }
    };
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let abs = offset_secs.abs();
    // `{date}T{hour:02}:{minute:02}:{second:02}{.fraction}{sign}{hh:02}:{mm:02}`, without `format!`.
    let mut s = String::with_capacity(30);
    push_date_part(&mut s, &t);
    s.push('T');
    push_padded(&mut s, i32::from(hour), 2);
    s.push(':');
    push_padded(&mut s, i32::from(minute), 2);
    s.push(':');
    push_padded(&mut s, i32::from(second), 2);
    if let Some(f) = t.fraction {
        s.push('.');
        s.push_str(f);
    }
    s.push(sign);
    push_padded(&mut s, abs / 3600, 2);
    s.push(':');
    push_padded(&mut s, (abs % 3600) / 60, 2);
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn fhir_times_become_hl7_times_with_their_precision() {
        let t = |s: &str| super::hl7_datetime(s);
        assert_eq!(
            t("2026-11-03T15:30:00+01:00").as_deref(),
            Ok("20261103153000+0100")
        );
        assert_eq!(
            t("2026-11-03T15:30:00.123456Z").as_deref(),
            Ok("20261103153000.1234+0000")
        );
        assert_eq!(
            t("2026-11-03T15:30-05:00").as_deref(),
            Ok("202611031530-0500")
        );
        assert_eq!(t("1978-05").as_deref(), Ok("197805"));
        assert_eq!(t("2026").as_deref(), Ok("2026"));
        assert!(t("03.11.2026").is_err());
        assert!(t("2026-11T10:00").is_err());
        assert!(t("2026-11-03T1530").is_err());
        assert_eq!(super::hl7_date("1984-03-12").as_deref(), Ok("19840312"));
        assert_eq!(
            super::hl7_date("2026-11-03T15:30:00+01:00").as_deref(),
            Ok("20261103")
        );
        assert!(super::hl7_date("x").is_err());
    }

    use super::*;

    fn zurich() -> TimeZone {
        TimeZone::get("Europe/Zurich").unwrap()
    }

    #[test]
    fn padding_matches_format() {
        for (n, w) in [
            (0, 2),
            (7, 2),
            (42, 2),
            (123, 2),
            (-5, 2),
            (1980, 4),
            (33, 4),
            (0, 4),
            (10000, 4),
        ] {
            let mut s = String::new();
            push_padded(&mut s, n, w);
            assert_eq!(s, format!("{n:0w$}", w = w as usize), "{n} {w}");
        }
    }

    #[test]
    fn datetimes_keep_precision_and_get_an_offset() {
        let cases: &[(&str, &str)] = &[
            ("2026", "2026"),
            ("202611", "2026-11"),
            ("20261122", "2026-11-22"),
            ("2026112214", "2026-11-22T14:00:00+01:00"),
            ("202611221430", "2026-11-22T14:30:00+01:00"),
            ("20261122143005", "2026-11-22T14:30:05+01:00"),
            ("20260701143005", "2026-07-01T14:30:05+02:00"),
            ("20261122143005.1234", "2026-11-22T14:30:05.1234+01:00"),
            ("20261122143005-0500", "2026-11-22T14:30:05-05:00"),
            ("202611221430+0000", "2026-11-22T14:30:00+00:00"),
            ("20261122+0530", "2026-11-22"),
            (" 20261122 ", "2026-11-22"),
            // 02:30 does not exist on 29 March 2026 in Zurich: the later offset, as wall clocks meant.
            ("202603290230", "2026-03-29T02:30:00+02:00"),
            // 02:30 happens twice on 25 October 2026: the earlier, still summer time.
            ("202610250230", "2026-10-25T02:30:00+02:00"),
            ("202610250330", "2026-10-25T03:30:00+01:00"),
        ];
        for (input, want) in cases {
            assert_eq!(fhir_datetime(input, &zurich()).unwrap(), *want, "{input}");
        }
    }

    #[test]
    fn dates_drop_the_time() {
        for (input, want) in [
            ("19700101", "1970-01-01"),
            ("197001", "1970-01"),
            ("1970", "1970"),
            ("19700101123000+0100", "1970-01-01"),
        ] {
            assert_eq!(fhir_date(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn bad_times_say_why() {
        let cases: &[(&str, &str)] = &[
            ("", "4, 6, 8, 10, 12 or 14 digits"),
            ("2026-11-22", "offset must be"),
            ("20261", "4, 6, 8, 10, 12 or 14 digits"),
            ("20261322", "no such date"),
            ("20260230", "no such date"),
            ("202611222500", "no such time"),
            ("20261122T1430", "only digits"),
            ("2026112214.5", "fraction needs seconds"),
            ("20261122143000+01", "offset must be"),
            ("20261122143000+1600", "out of range"),
            ("yesterday", "only digits"),
        ];
        for (input, want) in cases {
            let e = fhir_datetime(input, &zurich()).unwrap_err();
            assert!(e.contains(want), "{input}: {e}");
        }
        assert!(fhir_date("19700230").is_err());
    }

    #[test]
    fn text_transforms_and_boolean() {
        let tz = zurich();
        let s = |v: &str| Out::Str(Cow::Owned(v.to_string()));
        let cases: &[(Transform, &str, Out)] = &[
            (Transform::Trim, "  a b ", s("a b")),
            (Transform::Trim, "a b", s("a b")),
            (Transform::Upper, "müller", s("MÜLLER")),
            (Transform::Upper, "HOME 1", s("HOME 1")),
            (Transform::Upper, "Home", s("HOME")),
            (Transform::Lower, "ÄB", s("äb")),
            (Transform::Lower, "ab-1", s("ab-1")),
            (Transform::Boolean, "Y", Out::Bool(true)),
            (Transform::Boolean, "n", Out::Bool(false)),
            (Transform::Date, "19700101", s("1970-01-01")),
        ];
        for (t, input, want) in cases {
            assert_eq!(&t.apply(s(input), &tz).unwrap(), want, "{t:?} {input}");
        }
        // Table 0136 only: `NO` (Microsoft's ADT01-23, PID-30) is refused, not guessed at.
        for bad in ["X", "NO", "Yes"] {
            assert!(Transform::Boolean.apply(s(bad), &tz).is_err(), "{bad}");
        }
        assert!(Transform::Upper.apply(Out::Bool(true), &tz).is_err());
        for name in Transform::NAMES {
            assert_eq!(Transform::from_name(name).unwrap().name(), *name);
        }
        assert_eq!(Transform::from_name("uppercase"), None);
    }
}

/// See [`Transform::Authority`].
fn authority(text: Cow<'_, str>) -> Cow<'_, str> {
    let t = text.trim();
    for prefix in ["urn:oid:", "urn:ferry:authority:"] {
        if let Some(rest) = t.strip_prefix(prefix) {
            return Cow::Owned(rest.to_owned());
        }
    }
    text
}

#[cfg(test)]
mod authority_tests {
    use super::*;

    #[test]
    fn authority_inverts_the_systems_ferry_writes() {
        let tz = TimeZone::UTC;
        let run =
            |s: &'static str| match Transform::Authority.apply(Out::Str(Cow::Borrowed(s)), &tz) {
                Ok(Out::Str(t)) => t.into_owned(),
                other => panic!("{other:?}"),
            };
        assert_eq!(run("urn:oid:1.2.276.0.76.4.17"), "1.2.276.0.76.4.17");
        assert_eq!(run("urn:ferry:authority:TEST-HOSP"), "TEST-HOSP");
        assert_eq!(
            run("http://hl7.org/fhir/sid/us-ssn"),
            "http://hl7.org/fhir/sid/us-ssn"
        );
        for system in [
            "urn:oid:1.2.3",
            "urn:ferry:authority:HOSP",
            "http://x.example/mrn",
        ] {
            let back = crate::projections::render::identifier_system(Some(&run(system)));
            assert_eq!(back.as_deref(), Some(system));
        }
    }
}
