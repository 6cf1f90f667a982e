//! Writing HL7 v2 messages (ER7): segments of fields, repetitions, components and subcomponents → text.
//!
//! The counterpart of `parse.rs` for outbound delivery. Values are held decoded and escaped only here, when
//! they are joined with the delimiters, so a `|` or `^` in a name can never break a field apart. Trailing
//! empty parts are dropped at every level (`PID|1||123^^^HOSP` rather than `PID|1||123^^^HOSP^^^|||`):
//! receivers treat the two alike, and the short form is what people expect to read in logs.
//!
//! MSH is special only in its first two fields: MSH-1 is the field delimiter itself and MSH-2 the encoding
//! characters, written as they are (never escaped); [`WriteSegment::set`] on them is ignored.

use super::escape::escape;
use super::parse::Separators;

/// One component: its subcomponents (most components have exactly one).
pub type Component = Vec<String>;
/// One repetition of a field: its components.
pub type Repetition = Vec<Component>;
/// One field: its repetitions (most fields have exactly one).
pub type WriteField = Vec<Repetition>;

/// A segment being written: an ID and fields numbered from 1, as in HL7.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteSegment {
    pub id: String,
    /// `fields[0]` is field 1. For MSH, fields 1 and 2 are written from the separators instead.
    pub fields: Vec<WriteField>,
}

impl WriteSegment {
    pub fn new(id: &str) -> WriteSegment {
        WriteSegment {
            id: id.to_string(),
            fields: Vec::new(),
        }
    }

    /// Sets field `n` (1-based), growing the segment as needed. `n == 0` is ignored: there is no field 0.
    pub fn set(&mut self, n: usize, field: WriteField) {
        let Some(i) = n.checked_sub(1) else {
            return;
        };
        if self.fields.len() <= i {
            self.fields.resize(i + 1, Vec::new());
        }
        self.fields[i] = field;
    }

    /// Sets field `n` to one plain text value.
    pub fn set_text(&mut self, n: usize, text: &str) {
        self.set(n, text_field(text));
    }

    /// Whether field `n` holds anything.
    pub fn has(&self, n: usize) -> bool {
        n.checked_sub(1)
            .and_then(|i| self.fields.get(i))
            .is_some_and(|f| !field_is_empty(f))
    }
}

/// A field holding one text value.
pub fn text_field(text: &str) -> WriteField {
    vec![vec![vec![text.to_string()]]]
}

fn field_is_empty(f: &WriteField) -> bool {
    f.iter().flatten().flatten().all(String::is_empty)
}

/// Joins parts with a delimiter after dropping trailing empty ones.
fn join_trimmed(parts: Vec<String>, delimiter: char) -> String {
    let keep = parts
        .iter()
        .rposition(|p| !p.is_empty())
        .map_or(0, |i| i + 1);
    let mut out = String::new();
    for (i, p) in parts.into_iter().take(keep).enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        out.push_str(&p);
    }
    out
}

fn write_field(f: &WriteField, seps: &Separators) -> String {
    let reps = f
        .iter()
        .map(|rep| {
            let comps = rep
                .iter()
                .map(|comp| {
                    let subs = comp.iter().map(|s| escape(s, seps).into_owned()).collect();
                    join_trimmed(subs, char::from(seps.subcomponent))
                })
                .collect();
            join_trimmed(comps, char::from(seps.component))
        })
        .collect();
    join_trimmed(reps, char::from(seps.repetition))
}

/// Writes segments as one message: `\r` after every segment, values escaped (`\F\ \S\ \T\ \R\ \E\`), trailing
/// empty fields, repetitions, components and subcomponents left out.
pub fn write_message(segments: &[WriteSegment], seps: &Separators) -> String {
    let mut out = String::new();
    let field_sep = char::from(seps.field);
    for seg in segments {
        out.push_str(&seg.id);
        let is_msh = seg.id == "MSH";
        let mut fields: Vec<String> = Vec::with_capacity(seg.fields.len());
        for (i, f) in seg.fields.iter().enumerate() {
            // MSH-1 is the delimiter between "MSH" and MSH-2, so it is not a field of its own in the text.
            if is_msh && i == 0 {
                continue;
            }
            if is_msh && i == 1 {
                fields.push(seps.encoding_characters());
                continue;
            }
            fields.push(write_field(f, seps));
        }
        if is_msh && fields.is_empty() {
            fields.push(seps.encoding_characters());
        }
        let text = join_trimmed(fields, field_sep);
        if !text.is_empty() {
            out.push(field_sep);
            out.push_str(&text);
        }
        out.push('\r');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::hl7::Message;
    use proptest::prelude::*;

    fn msh() -> WriteSegment {
        let mut msh = WriteSegment::new("MSH");
        msh.set_text(3, "FERRY");
        msh.set_text(9, "");
        msh.set(
            9,
            vec![vec![
                vec!["ADT".into()],
                vec!["A01".into()],
                vec!["ADT_A01".into()],
            ]],
        );
        msh.set_text(10, "42");
        msh.set_text(11, "P");
        msh.set_text(12, "2.5.1");
        msh
    }

    #[test]
    fn writes_msh_with_its_delimiters_and_trims_trailing_empties() {
        let mut pid = WriteSegment::new("PID");
        pid.set_text(1, "1");
        pid.set(
            3,
            vec![
                vec![
                    vec!["100010".into()],
                    vec![],
                    vec![],
                    vec!["TEST-HOSP".into()],
                    vec!["MR".into()],
                    vec![String::new()],
                ],
                vec![vec!["X9".into()], vec![String::new()]],
            ],
        );
        pid.set_text(9, "");
        let text = write_message(&[msh(), pid], &Separators::default());
        assert_eq!(
            text,
            "MSH|^~\\&|FERRY||||||ADT^A01^ADT_A01|42|P|2.5.1\rPID|1||100010^^^TEST-HOSP^MR~X9\r"
        );
    }

    #[test]
    fn escapes_delimiters_in_values() {
        let mut nte = WriteSegment::new("NTE");
        nte.set_text(3, "a|b^c~d\\e&f");
        let text = write_message(&[nte], &Separators::default());
        assert_eq!(text, "NTE|||a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\r");
    }

    #[test]
    fn subcomponents_and_empty_segments() {
        let mut pv1 = WriteSegment::new("PV1");
        pv1.set(
            3,
            vec![vec![
                vec!["W3".into()],
                vec!["312".into()],
                vec!["A".into()],
                vec!["HOSP".into(), "1.2.3".into(), "ISO".into()],
            ]],
        );
        let empty = WriteSegment::new("ZZZ");
        let text = write_message(&[pv1, empty], &Separators::default());
        assert_eq!(text, "PV1|||W3^312^A^HOSP&1.2.3&ISO\rZZZ\r");
    }

    #[test]
    fn field_zero_is_ignored_and_has_sees_content() {
        let mut s = WriteSegment::new("PID");
        s.set_text(0, "x");
        assert!(s.fields.is_empty());
        s.set_text(2, "");
        assert!(!s.has(2));
        s.set_text(2, "y");
        assert!(s.has(2) && !s.has(7));
    }

    proptest! {
        /// Whatever text goes into a component comes back out of Ferry's own parser, decoded.
        #[test]
        fn values_round_trip_through_the_parser(
            a in "[ -~]{0,12}",
            b in "[ -~\u{e4}\u{df}]{0,12}",
            c in "[ -~]{0,8}",
        ) {
            let mut pid = WriteSegment::new("PID");
            pid.set(5, vec![vec![vec![a.clone()], vec![b.clone()]], vec![vec![c.clone()]]]);
            let text = write_message(&[msh(), pid], &Separators::default());
            let msg = Message::parse(&text).unwrap();
            let got = |p: &str| msg.query(p).unwrap().map(|v| v.decoded().into_owned()).unwrap_or_default();
            prop_assert_eq!(got("PID.5[1].1.1"), a);
            prop_assert_eq!(got("PID.5[1].2.1"), b);
            prop_assert_eq!(got("PID.5[2].1.1"), c);
            prop_assert_eq!(got("MSH.10"), "42".to_string());
        }
    }
}
