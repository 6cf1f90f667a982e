//! Building acknowledgments: original mode (AA/AE/AR) and enhanced mode (commit ACKs CA/CE/CR, sent
//! or not according to MSH-15), with an ERR segment for every error.
//!
//! The ACK mirrors the message it answers: sender and receiver swapped, same version, same encoding
//! characters and character set; MSA-2 echoes MSH-10. Values copied from the message are copied raw
//! (they are already escaped with the same delimiters); text Ferry writes is escaped.

use std::fmt::Write as _;

use time::OffsetDateTime;

use super::escape::escape;
use super::parse::{Message, Separators};

/// An acknowledgment code (HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Original mode: accepted.
    AA,
    /// Original mode: error in the content; the sender should fix and resend.
    AE,
    /// Original mode: rejected for a header problem (type, version, control ID).
    AR,
    /// Enhanced mode: committed.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "AA" => AckCode::AA,
            "AE" => AckCode::AE,
            "AR" => AckCode::AR,
            "CA" => AckCode::CA,
            "CE" => AckCode::CE,
            "CR" => AckCode::CR,
            _ => return None,
        })
    }

    /// True for AA and CA.
    pub fn is_accept(self) -> bool {
        matches!(self, AckCode::AA | AckCode::CA)
    }
}

/// What happened, independent of the acknowledgment mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Accept,
    Error,
    Reject,
}

/// MSH-15/MSH-16 values (HL7 table 0155).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    /// AL
    Always,
    /// NE
    Never,
    /// ER
    OnError,
    /// SU
    OnSuccess,
}

impl AckCondition {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "AL" => Some(AckCondition::Always),
            "NE" => Some(AckCondition::Never),
            "ER" => Some(AckCondition::OnError),
            "SU" => Some(AckCondition::OnSuccess),
            _ => None,
        }
    }
}

/// How the sender wants to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// MSH-15 and MSH-16 empty: one ACK, AA/AE/AR.
    Original,
    /// MSH-15 or MSH-16 set: a commit ACK (CA/CE/CR) on this connection when MSH-15 asks for it.
    /// The application ACK that MSH-16 asks for would be a separate message on a return channel;
    /// Ferry's processing is complete at commit, so none is sent.
    Enhanced {
        accept: AckCondition,
        application: Option<AckCondition>,
    },
}

impl AckMode {
    /// The code to send for a disposition, or `None` when MSH-15 says not to answer.
    pub fn code_for(self, disposition: Disposition) -> Option<AckCode> {
        match self {
            AckMode::Original => Some(match disposition {
                Disposition::Accept => AckCode::AA,
                Disposition::Error => AckCode::AE,
                Disposition::Reject => AckCode::AR,
            }),
            AckMode::Enhanced { accept, .. } => {
                let send = match accept {
                    AckCondition::Always => true,
                    AckCondition::Never => false,
                    AckCondition::OnError => disposition != Disposition::Accept,
                    AckCondition::OnSuccess => disposition == Disposition::Accept,
                };
                send.then_some(match disposition {
                    Disposition::Accept => AckCode::CA,
                    Disposition::Error => AckCode::CE,
                    Disposition::Reject => AckCode::CR,
                })
            }
        }
    }
}

/// HL7 table 0357, message error condition codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    SegmentSequenceError = 100,
    RequiredFieldMissing = 101,
    DataTypeError = 102,
    TableValueNotFound = 103,
    UnsupportedMessageType = 200,
    UnsupportedEventCode = 201,
    UnsupportedProcessingId = 202,
    UnsupportedVersionId = 203,
    UnknownKeyIdentifier = 204,
    DuplicateKeyIdentifier = 205,
    ApplicationRecordLocked = 206,
    ApplicationInternalError = 207,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The table's own wording, sent as ERR-3.2.
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequenceError => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::UnknownKeyIdentifier => "Unknown key identifier",
            ErrorCode::DuplicateKeyIdentifier => "Duplicate key identifier",
            ErrorCode::ApplicationRecordLocked => "Application record locked",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

/// ERR-4 severity (HL7 table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Information,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "E",
            Severity::Warning => "W",
            Severity::Information => "I",
        }
    }
}

/// Where an error is, as ERR-2 (ERL) parts: segment ID, occurrence, field, repetition, component,
/// subcomponent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorLocation {
    pub segment: String,
    pub occurrence: usize,
    pub field: Option<usize>,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

impl ErrorLocation {
    /// An MSH field, e.g. `ErrorLocation::msh(10)` → `MSH^1^10`.
    pub fn msh(field: usize) -> Self {
        Self {
            segment: "MSH".into(),
            occurrence: 1,
            field: Some(field),
            ..Self::default()
        }
    }

    /// A segment as a whole.
    pub fn segment(id: &str, occurrence: usize) -> Self {
        Self {
            segment: id.into(),
            occurrence,
            ..Self::default()
        }
    }

    fn write_erl(&self, out: &mut String, seps: &Separators) {
        let comp = seps.component as char;
        out.push_str(&escape(&self.segment, seps));
        let _ = write!(out, "{comp}{}", self.occurrence);
        let parts = [
            self.field,
            self.repetition,
            self.component,
            self.subcomponent,
        ];
        let last = parts.iter().rposition(Option::is_some);
        if let Some(last) = last {
            for part in &parts[..=last] {
                out.push(comp);
                if let Some(n) = part {
                    let _ = write!(out, "{n}");
                }
            }
        }
    }
}

impl From<super::parse::Location> for ErrorLocation {
    fn from(l: super::parse::Location) -> Self {
        Self {
            segment: l.segment,
            occurrence: l.occurrence,
            field: l.field,
            repetition: l.repetition,
            component: l.component,
            subcomponent: l.subcomponent,
        }
    }
}

/// One ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    pub location: Option<ErrorLocation>,
    pub code: ErrorCode,
    pub severity: Severity,
    /// Plain language: what is wrong and, where it helps, what to do (ERR-8).
    pub diagnostic: String,
}

impl AckError {
    pub fn new(
        code: ErrorCode,
        location: Option<ErrorLocation>,
        diagnostic: impl Into<String>,
    ) -> Self {
        Self {
            location,
            code,
            severity: Severity::Error,
            diagnostic: diagnostic.into(),
        }
    }
}

/// The parts of a message's header an ACK needs, read from a parsed message or, when parsing
/// failed, as far as the raw MSH line allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckHeader {
    pub separators: Separators,
    /// MSH-2 as it should be written (the message's own, when valid).
    pub encoding_characters: String,
    /// Raw MSH-3..MSH-6 of the message.
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// Raw MSH-9.2 (trigger event) of the message.
    pub trigger: String,
    /// Raw MSH-10 of the message.
    pub control_id: String,
    /// Raw MSH-11 of the message.
    pub processing_id: String,
    /// Raw MSH-12.1 of the message.
    pub version: String,
    /// Raw MSH-18 of the message (the ACK is written in the same character set).
    pub charset: String,
    pub mode: AckMode,
}

/// The version written in ACKs when the message's own cannot be read.
pub const FALLBACK_VERSION: &str = "2.5";

impl AckHeader {
    /// For input where no MSH could be read at all.
    pub fn unknown() -> Self {
        let separators = Separators::default();
        Self {
            encoding_characters: separators.encoding_characters(),
            separators,
            sending_application: String::new(),
            sending_facility: String::new(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
            trigger: String::new(),
            control_id: String::new(),
            processing_id: "P".into(),
            version: FALLBACK_VERSION.into(),
            charset: String::new(),
            mode: AckMode::Original,
        }
    }

    /// From a parsed message.
    pub fn from_message(message: &Message<'_>) -> Self {
        let separators = message.separators();
        let f = |n| message.msh_field(n);
        Self::from_fields(separators, separators.encoding_characters(), &f)
    }

    /// From text whose parse failed: reads the first line if it starts with `MSH` and a field
    /// separator, taking the encoding characters when they are valid and the defaults otherwise.
    pub fn from_raw(text: &str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let line_end = text.find(['\r', '\n']).unwrap_or(text.len());
        let line = &text[..line_end];
        let Some(rest) = line.strip_prefix("MSH") else {
            return Self::unknown();
        };
        let Some(fs) = rest.chars().next() else {
            return Self::unknown();
        };
        if !fs.is_ascii_punctuation() {
            return Self::unknown();
        }
        let fields: Vec<&str> = rest[1..].split(fs).collect();
        // fields[0] is MSH-2; MSH-n is fields[n - 2].
        let get = |n: usize| -> &str { fields.get(n - 2).copied().unwrap_or("") };
        let (separators, encoding) = match Separators::from_msh(fs, get(2)) {
            Some(s) => (s, s.encoding_characters()),
            None => {
                let s = Separators {
                    field: fs as u8,
                    ..Separators::default()
                };
                (s, s.encoding_characters())
            }
        };
        let f = |n: usize| -> &str {
            match n {
                1 => "",
                n => get(n),
            }
        };
        Self::from_fields(separators, encoding, &f)
    }

    fn from_fields<'t>(
        separators: Separators,
        encoding_characters: String,
        f: &dyn Fn(usize) -> &'t str,
    ) -> Self {
        let comp = separators.component as char;
        let rep = separators.repetition as char;
        let first_component = |v: &'t str| -> &'t str {
            let v = v.split(rep).next().unwrap_or("");
            v.split(comp).next().unwrap_or("")
        };
        let nth_component = |v: &'t str, n: usize| -> &'t str {
            let v = v.split(rep).next().unwrap_or("");
            v.split(comp).nth(n - 1).unwrap_or("")
        };
        let accept = first_component(f(15));
        let application = first_component(f(16));
        let mode = if accept.trim().is_empty() && application.trim().is_empty() {
            AckMode::Original
        } else {
            AckMode::Enhanced {
                // An enhanced-mode message with MSH-15 empty gets a commit ACK: the sender set
                // MSH-16, so it expects the enhanced protocol, and silence would look like loss.
                accept: AckCondition::parse(accept).unwrap_or(AckCondition::Always),
                application: AckCondition::parse(application),
            }
        };
        let version = first_component(f(12));
        // NUL never belongs in HL7 text (and a database column cannot hold it); these values
        // come from input that may be anything.
        let owned = |v: &str| -> String {
            if v.contains('\0') {
                v.replace('\0', "\u{fffd}")
            } else {
                v.to_owned()
            }
        };
        Self {
            separators,
            encoding_characters,
            sending_application: owned(f(3)),
            sending_facility: owned(f(4)),
            receiving_application: owned(f(5)),
            receiving_facility: owned(f(6)),
            trigger: owned(nth_component(f(9), 2)),
            control_id: owned(f(10)),
            processing_id: owned(f(11)),
            version: if version.is_empty() {
                FALLBACK_VERSION.to_owned()
            } else {
                owned(version)
            },
            charset: owned(f(18)),
            mode,
        }
    }
}

/// Compares dotted HL7 versions numerically (`2.3.1` < `2.5`).
fn version_at_least(version: &str, min: &[u32]) -> bool {
    let parts: Vec<u32> = version
        .split('.')
        .map(|p| p.trim().parse::<u32>().unwrap_or(0))
        .collect();
    for (i, m) in min.iter().enumerate() {
        let p = parts.get(i).copied().unwrap_or(0);
        if p != *m {
            return p > *m;
        }
    }
    true
}

/// Formats an HL7 timestamp with offset: `YYYYMMDDHHMMSS+ZZZZ`.
pub fn hl7_timestamp(t: OffsetDateTime) -> String {
    let (h, m, _) = t.offset().as_hms();
    let sign = if t.offset().is_negative() { '-' } else { '+' };
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{sign}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        h.unsigned_abs(),
        m.unsigned_abs()
    )
}

/// Writes the ACK for `header` as text, segments terminated by `\r`.
///
/// `control_id` is the ACK's own MSH-10; `now` its MSH-7.
pub fn build_ack(
    header: &AckHeader,
    code: AckCode,
    errors: &[AckError],
    control_id: &str,
    now: OffsetDateTime,
) -> String {
    let seps = &header.separators;
    let fs = seps.field as char;
    let cs = seps.component as char;
    let mut out = String::with_capacity(256 + errors.len() * 128);
    // MSH: the receiver answers as the sender, so MSH-3/4 and MSH-5/6 swap.
    let _ = write!(
        out,
        "MSH{fs}{enc}{fs}{ra}{fs}{rf}{fs}{sa}{fs}{sf}{fs}{ts}{fs}{fs}",
        enc = header.encoding_characters,
        ra = header.receiving_application,
        rf = header.receiving_facility,
        sa = header.sending_application,
        sf = header.sending_facility,
        ts = hl7_timestamp(now),
    );
    // MSH-9: ACK^trigger^ACK from 2.3.1 on (the message structure component appeared then).
    out.push_str("ACK");
    if !header.trigger.is_empty() {
        let _ = write!(out, "{cs}{}", header.trigger);
        if version_at_least(&header.version, &[2, 3, 1]) {
            let _ = write!(out, "{cs}ACK");
        }
    }
    let processing_id = if header.processing_id.is_empty() {
        "P"
    } else {
        &header.processing_id
    };
    let _ = write!(
        out,
        "{fs}{}{fs}{processing_id}{fs}{}",
        escape(control_id, seps),
        header.version
    );
    if !header.charset.is_empty() {
        // MSH-13..17 empty, MSH-18 mirrored: the ACK is encoded in the message's character set.
        let _ = write!(out, "{fs}{fs}{fs}{fs}{fs}{fs}{}", header.charset);
    }
    out.push('\r');

    // MSA-1 code, MSA-2 the message's control ID, MSA-3 (text) for errors: widely read by older
    // engines even though 2.5 deprecated it in favour of ERR.
    let _ = write!(out, "MSA{fs}{}{fs}{}", code.as_str(), header.control_id);
    if let Some(first) = errors.first() {
        let _ = write!(out, "{fs}{}", escape(&first.diagnostic, seps));
    }
    out.push('\r');

    let legacy_err = !version_at_least(&header.version, &[2, 5]);
    let ss = seps.subcomponent as char;
    for error in errors {
        out.push_str("ERR");
        out.push(fs);
        if legacy_err {
            // ERR-1 (ELD), the only ERR field before 2.5: segment^sequence^field^code&text&table.
            if let Some(loc) = &error.location {
                let _ = write!(
                    out,
                    "{}{cs}{}{cs}",
                    escape(&loc.segment, seps),
                    loc.occurrence
                );
                if let Some(field) = loc.field {
                    let _ = write!(out, "{field}");
                }
                out.push(cs);
            } else {
                let _ = write!(out, "{cs}{cs}{cs}");
            }
            let _ = write!(
                out,
                "{}{ss}{}{ss}HL70357",
                error.code.code(),
                escape(error.code.text(), seps)
            );
        }
        out.push(fs);
        if let Some(loc) = &error.location {
            loc.write_erl(&mut out, seps);
        }
        let _ = write!(
            out,
            "{fs}{}{cs}{}{cs}HL70357{fs}{}{fs}{fs}{fs}{fs}{}",
            error.code.code(),
            escape(error.code.text(), seps),
            error.severity.as_str(),
            escape(&error.diagnostic, seps)
        );
        out.push('\r');
    }
    out
}

/// Whether the sender of `message` (raw bytes) waits for an answer when the message is accepted:
/// false in enhanced mode with MSH-15 `NE` or `ER`. Senders (`ferry send`, the load generator)
/// use it so as not to wait for an ACK that by protocol never comes.
pub fn expects_accept_ack(message: &[u8]) -> bool {
    let head = &message[..message.len().min(4096)];
    AckHeader::from_raw(&String::from_utf8_lossy(head))
        .mode
        .code_for(Disposition::Accept)
        .is_some()
}

/// The parts of an ACK a sender checks, read back from ACK text (used by `ferry send`, the load
/// generator and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckSummary {
    pub code: Option<AckCode>,
    /// MSA-2.
    pub control_id: String,
    /// ERR-3.1 codes.
    pub error_codes: Vec<String>,
    /// ERR-2 raw values.
    pub error_locations: Vec<String>,
    /// Per ERR segment, ERR-8 (user message) or, when that is empty, ERR-7 (diagnostic
    /// information), decoded; MSA-3 when there is no ERR.
    pub diagnostics: Vec<String>,
}

/// Reads MSA and ERR of an ACK. Returns `None` when the text has no MSA segment.
pub fn summarize_ack(text: &str) -> Option<AckSummary> {
    let message = Message::parse(text).ok()?;
    let msa = message.segment("MSA")?;
    let value = |seg: &super::parse::Segment<'_, '_>, n: usize| -> String {
        seg.field(n).map(|f| f.raw().to_owned()).unwrap_or_default()
    };
    let mut summary = AckSummary {
        code: AckCode::parse(&value(&msa, 1)),
        control_id: value(&msa, 2),
        error_codes: Vec::new(),
        error_locations: Vec::new(),
        diagnostics: Vec::new(),
    };
    for seg in message.segments().filter(|s| s.id() == "ERR") {
        let code = seg
            .field(3)
            .and_then(|f| f.component(1))
            .map(|c| c.raw().to_owned())
            .unwrap_or_default();
        summary.error_codes.push(code);
        summary.error_locations.push(value(&seg, 2));
        summary.diagnostics.push(
            [8, 7]
                .into_iter()
                .filter_map(|n| seg.field(n))
                .map(|f| f.decoded().into_owned())
                .find(|d| !d.is_empty())
                .unwrap_or_default(),
        );
    }
    if summary.diagnostics.is_empty() {
        let text = msa
            .field(3)
            .map(|f| f.decoded().into_owned())
            .unwrap_or_default();
        if !text.is_empty() {
            summary.diagnostics.push(text);
        }
    }
    Some(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 08:30:05 UTC);

    fn header(text: &str) -> AckHeader {
        AckHeader::from_message(&Message::parse(text).unwrap())
    }

    #[test]
    fn original_mode_aa_mirrors_the_header() {
        let h = header(
            "MSH|^~\\&|LAB|HOSP|FERRY|GW|20261122083000||ADT^A01^ADT_A01|MSG0001|P|2.5.1\rPID|1\r",
        );
        assert_eq!(h.mode, AckMode::Original);
        let ack = build_ack(&h, AckCode::AA, &[], "F1", NOW);
        assert_eq!(
            ack,
            "MSH|^~\\&|FERRY|GW|LAB|HOSP|20261122083005+0000||ACK^A01^ACK|F1|P|2.5.1\rMSA|AA|MSG0001\r"
        );
    }

    #[test]
    fn error_ack_has_err_with_location_code_severity_and_diagnostic() {
        let h = header("MSH|^~\\&|A|B|C|D|20260101||ORM^O01|X9|T|2.6\r");
        let err = AckError::new(
            ErrorCode::RequiredFieldMissing,
            Some(ErrorLocation {
                segment: "PID".into(),
                occurrence: 1,
                field: Some(3),
                ..Default::default()
            }),
            "PID-3 (patient identifier list) is required | missing",
        );
        let ack = build_ack(&h, AckCode::AE, &[err], "F2", NOW);
        let lines: Vec<&str> = ack.split('\r').collect();
        assert_eq!(
            lines[0],
            "MSH|^~\\&|C|D|A|B|20261122083005+0000||ACK^O01^ACK|F2|T|2.6"
        );
        assert_eq!(
            lines[1],
            "MSA|AE|X9|PID-3 (patient identifier list) is required \\F\\ missing"
        );
        assert_eq!(
            lines[2],
            "ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 (patient identifier list) is required \\F\\ missing"
        );
        let summary = summarize_ack(&ack).unwrap();
        assert_eq!(summary.code, Some(AckCode::AE));
        assert_eq!(summary.control_id, "X9");
        assert_eq!(summary.error_codes, vec!["101"]);
        assert_eq!(summary.error_locations, vec!["PID^1^3"]);
        assert_eq!(
            summary.diagnostics,
            vec!["PID-3 (patient identifier list) is required | missing"]
        );
    }

    #[test]
    fn old_versions_also_get_err_1() {
        let h = header("MSH|^~\\&|A|B|C|D|20260101||ADT^A08|1|P|2.3\r");
        let err = AckError::new(
            ErrorCode::UnsupportedVersionId,
            Some(ErrorLocation::msh(12)),
            "x",
        );
        let ack = build_ack(&h, AckCode::AR, &[err], "F", NOW);
        assert!(ack.contains("\rERR|MSH^1^12^203&Unsupported version id&HL70357|MSH^1^12|203^"));
        // 2.3 predates the message structure component.
        assert!(ack.contains("||ACK^A08|F|P|2.3\r"));
    }

    #[test]
    fn custom_encoding_characters_are_kept() {
        let h = header("MSH|^~\\}|A|B|C|D|20260101||ADT^A01|1|P|2.4\r");
        let ack = build_ack(&h, AckCode::AA, &[], "F", NOW);
        assert!(ack.starts_with("MSH|^~\\}|C|D|A|B|"), "{ack}");
        let h = header("MSH#@~\\&#A#B#C#D#20260101##ADT@A01#1#P#2.4\r");
        let ack = build_ack(&h, AckCode::AA, &[], "F", NOW);
        assert!(ack.starts_with("MSH#@~\\&#C#D#A#B#"), "{ack}");
        assert!(ack.contains("#ACK@A01@ACK#F#P#2.4\rMSA#AA#1\r"), "{ack}");
    }

    #[test]
    fn charset_is_mirrored_in_msh_18() {
        let h = header("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5||||||8859/1\r");
        let ack = build_ack(&h, AckCode::AA, &[], "F", NOW);
        assert!(ack.contains("|F|P|2.5||||||8859/1\r"), "{ack}");
    }

    #[test]
    fn enhanced_mode_rules() {
        let cases = [
            ("AL", Disposition::Accept, Some(AckCode::CA)),
            ("AL", Disposition::Error, Some(AckCode::CE)),
            ("AL", Disposition::Reject, Some(AckCode::CR)),
            ("NE", Disposition::Accept, None),
            ("NE", Disposition::Error, None),
            ("ER", Disposition::Accept, None),
            ("ER", Disposition::Error, Some(AckCode::CE)),
            ("SU", Disposition::Accept, Some(AckCode::CA)),
            ("SU", Disposition::Reject, None),
        ];
        for (msh15, disposition, expected) in cases {
            let h = header(&format!(
                "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5|||{msh15}|AL\r"
            ));
            assert_eq!(
                h.mode.code_for(disposition),
                expected,
                "{msh15} {disposition:?}"
            );
        }
        let h = header("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5||||NE\r");
        assert_eq!(h.mode.code_for(Disposition::Accept), Some(AckCode::CA));
        assert_eq!(
            AckMode::Original.code_for(Disposition::Reject),
            Some(AckCode::AR)
        );
    }

    #[test]
    fn raw_header_when_encoding_characters_are_bad() {
        let h = AckHeader::from_raw("MSH|^~\\\\&|APP|FAC|R|RF|2021||OMP^O09|MSGID|T|2.6\rPID|1\r");
        assert_eq!(h.control_id, "MSGID");
        assert_eq!(h.encoding_characters, "^~\\&");
        assert_eq!(h.version, "2.6");
        assert_eq!(h.sending_application, "APP");
        let h = AckHeader::from_raw("garbage");
        assert_eq!(h, AckHeader::unknown());
        let h = AckHeader::from_raw("MSH|");
        assert_eq!(h.control_id, "");
    }

    #[test]
    fn timestamp_format() {
        assert_eq!(hl7_timestamp(NOW), "20261122083005+0000");
        let t = datetime!(2026-01-02 03:04:05 -05:30);
        assert_eq!(hl7_timestamp(t), "20260102030405-0530");
    }
}
