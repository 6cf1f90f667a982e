//! Zero-copy HL7 v2 (ER7, "pipe and hat") parser.
//!
//! Parsing indexes segments and fields eagerly into two flat vectors of byte ranges — one pass of `memchr` over
//! the text, no allocation per field — and splits repetitions, components and subcomponents lazily when a caller
//! asks for them. Every value keeps its raw text (a slice of the input) apart from its decoded text (escape
//! sequences resolved), and every match carries a [`Location`] so that an error can point at segment, field,
//! repetition and component in an ERR segment. The delimiters are always read from MSH-1 and MSH-2; nothing here
//! assumes `|^~\&`.

use std::borrow::Cow;
use std::fmt;

use memchr::{memchr, memchr2, memchr3_iter};

use super::escape::unescape;
use super::path::{Index, Path, PathError};

/// The delimiters read from MSH-1 and MSH-2 — never assume `^~\&`.
///
/// All delimiters are single ASCII bytes (parse rejects anything else), which is what lets the parser split UTF-8
/// text on bytes without ever cutting a multi-byte character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    /// MSH-1, usually `|`.
    pub field: u8,
    /// First character of MSH-2, usually `^`.
    pub component: u8,
    /// Second character of MSH-2, usually `~`.
    pub repetition: u8,
    /// Third character of MSH-2, usually `\`. Optional because a caller may build separators for a message
    /// that has no escape character; parsed messages always have one.
    pub escape: Option<u8>,
    /// Fourth character of MSH-2, usually `&`.
    pub subcomponent: u8,
    /// Fifth character of MSH-2 (v2.7+), usually `#`.
    pub truncation: Option<u8>,
}

impl Default for Separators {
    fn default() -> Self {
        Separators {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: Some(b'\\'),
            subcomponent: b'&',
            truncation: None,
        }
    }
}

impl Separators {
    /// MSH-2 as it should be written back, e.g. `"^~\\&"` or `"^~\\&#"`.
    pub fn encoding_characters(&self) -> String {
        let mut s = String::with_capacity(5);
        s.push(char::from(self.component));
        s.push(char::from(self.repetition));
        if let Some(e) = self.escape {
            s.push(char::from(e));
        }
        s.push(char::from(self.subcomponent));
        if let Some(t) = self.truncation {
            s.push(char::from(t));
        }
        s
    }

    /// The field separator as a `char`, for building text.
    pub fn field_char(&self) -> char {
        char::from(self.field)
    }

    /// The component separator as a `char`, e.g. for [`Location::to_erl`].
    pub fn component_char(&self) -> char {
        char::from(self.component)
    }

    /// Separators from a field separator and an MSH-2 value, when they are valid (the same rules
    /// as [`Message::parse`]); used to answer messages whose parse failed further on.
    pub fn from_msh(field: char, encoding_characters: &str) -> Option<Separators> {
        let field = u8::try_from(field).ok().filter(u8::is_ascii_punctuation)?;
        check_encoding_characters(field, encoding_characters).ok()
    }
}

/// Why MSH-2 was rejected; kept as a static string so the error stays cheap and comparable.
fn check_encoding_characters(field: u8, enc: &str) -> Result<Separators, &'static str> {
    let b = enc.as_bytes();
    if b.is_empty() {
        return Err("MSH-2 is empty");
    }
    if b.len() < 4 {
        return Err(
            "there must be 4 or 5 characters (component, repetition, escape, subcomponent, truncation)",
        );
    }
    if b.len() > 5 {
        return Err(
            "there must be at most 5 characters (component, repetition, escape, subcomponent, truncation)",
        );
    }
    for (i, &c) in b.iter().enumerate() {
        if !c.is_ascii_punctuation() {
            return Err("each encoding character must be printable ASCII punctuation");
        }
        if c == field {
            return Err("an encoding character equals the field separator");
        }
        if b[..i].contains(&c) {
            return Err("the encoding characters must all be distinct");
        }
    }
    Ok(Separators {
        field,
        component: b[0],
        repetition: b[1],
        escape: Some(b[2]),
        subcomponent: b[3],
        truncation: b.get(4).copied(),
    })
}

/// Keeps at most `max` characters of untrusted text for an error, with control characters (CR, LF, NUL, …)
/// escaped so that the text stays printable on one line in logs and ERR segments. Other characters, backslash
/// included, are kept as they are: the error's `{:?}` formatting escapes them once for display.
fn printable_prefix(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A parse failure. Each variant can say where it points via [`ParseError::location`], for ERR-2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message is empty")]
    Empty,
    #[error("the message does not start with an MSH segment (found {found:?})")]
    NoMsh { found: String },
    #[error("MSH-1 field separator {found:?} is not a printable ASCII punctuation character")]
    BadFieldSeparator { found: String },
    #[error("MSH-2 encoding characters {found:?} are invalid: {reason}")]
    BadEncodingCharacters { found: String, reason: &'static str },
    #[error(
        "segment {position} has an invalid segment ID {id:?}: segment IDs are three characters, an uppercase letter then uppercase letters or digits"
    )]
    BadSegmentId { position: usize, id: String },
}

impl ParseError {
    /// The ERR-2 location the error points at, when there is one: `MSH^1` for a missing MSH, `MSH^1^1` for a bad
    /// field separator, `MSH^1^2` for bad encoding characters, the offending segment (by position) for a bad ID.
    pub fn location(&self) -> Option<Location> {
        let msh = |field| Location {
            segment: "MSH".to_string(),
            occurrence: 1,
            position: 1,
            field,
            repetition: None,
            component: None,
            subcomponent: None,
        };
        match self {
            ParseError::Empty => None,
            ParseError::NoMsh { .. } => Some(msh(None)),
            ParseError::BadFieldSeparator { .. } => Some(msh(Some(1))),
            ParseError::BadEncodingCharacters { .. } => Some(msh(Some(2))),
            ParseError::BadSegmentId { position, id } => Some(Location {
                segment: id.clone(),
                occurrence: 1,
                position: *position,
                field: None,
                repetition: None,
                component: None,
                subcomponent: None,
            }),
        }
    }
}

/// Where a value sits in a message. Positions are 1-based like everything in HL7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Segment ID, e.g. `PID`.
    pub segment: String,
    /// 1-based among segments with the same ID (what ERR-2.2 wants).
    pub occurrence: usize,
    /// 1-based among all segments of the message.
    pub position: usize,
    pub field: Option<usize>,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

impl Location {
    /// HL7 ERL as ERR-2 wants it: `PID^1^3^1^4` (segment ID ^ occurrence ^ field ^ field repetition ^ component ^
    /// subcomponent), stopping at the last known part. A missing repetition before a known component is written
    /// as 1, because ERL has no "whole field" marker in the middle.
    pub fn to_erl(&self, component_separator: char) -> String {
        let mut parts: Vec<String> = vec![self.segment.clone(), self.occurrence.to_string()];
        let tail = [
            self.field,
            self.repetition,
            self.component,
            self.subcomponent,
        ];
        let last = tail.iter().rposition(Option::is_some);
        if let Some(last) = last {
            for p in tail.iter().take(last + 1) {
                parts.push(p.unwrap_or(1).to_string());
            }
        }
        parts.join(&component_separator.to_string())
    }
}

impl fmt::Display for Location {
    /// The path syntax, e.g. `PID[1].3[1].4`: the same syntax [`Path`] parses, so a location in a log line can be
    /// pasted back into a query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.segment, self.occurrence)?;
        if let Some(field) = self.field {
            write!(f, ".{field}")?;
            if let Some(r) = self.repetition {
                write!(f, "[{r}]")?;
            }
            if let Some(c) = self.component {
                write!(f, ".{c}")?;
                if let Some(s) = self.subcomponent {
                    write!(f, ".{s}")?;
                }
            }
        }
        Ok(())
    }
}

/// One indexed segment: byte range of the line (without terminator) and its slice of the field table.
#[derive(Debug, Clone, Copy)]
struct SegEntry {
    start: usize,
    end: usize,
    first_field: usize,
    field_count: usize,
    occurrence: usize,
}

/// A parsed message: the text plus flat indexes of segments and fields. Cheap to build, cheap to query.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    text: &'a str,
    seps: Separators,
    segments: Vec<SegEntry>,
    /// Byte ranges of field contents, segment by segment (field 1 first; the segment ID is not a field).
    fields: Vec<(usize, usize)>,
}

/// Per-message occurrence counter for segment IDs. A short vector beats hashing for the usual ~10–30 distinct
/// IDs; a map takes over for hostile inputs with thousands of distinct IDs, so parsing stays linear.
struct OccurrenceCounter {
    small: Vec<([u8; 3], usize)>,
    large: Option<std::collections::HashMap<[u8; 3], usize>>,
}

impl OccurrenceCounter {
    fn next(&mut self, id: [u8; 3]) -> usize {
        if let Some(map) = &mut self.large {
            let n = map.entry(id).or_insert(0);
            *n += 1;
            return *n;
        }
        if let Some(e) = self.small.iter_mut().find(|e| e.0 == id) {
            e.1 += 1;
            return e.1;
        }
        if self.small.len() >= 32 {
            let mut map: std::collections::HashMap<[u8; 3], usize> = self.small.drain(..).collect();
            map.insert(id, 1);
            self.large = Some(map);
            return 1;
        }
        self.small.push((id, 1));
        1
    }
}

fn valid_segment_id(id: &[u8]) -> bool {
    id.len() == 3
        && id[0].is_ascii_uppercase()
        && id[1..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

impl<'a> Message<'a> {
    /// Parses a message. Segment terminators may be `\r`, `\n` or `\r\n` (mixed too); empty lines are skipped; a
    /// leading UTF-8 BOM is ignored. Fails when the header cannot be trusted (no MSH, bad delimiters) or a segment
    /// ID is malformed — hl7-parser instead silently drops everything after a bad segment, which would let us ACK
    /// a message we did not fully read.
    pub fn parse(text: &'a str) -> Result<Message<'a>, ParseError> {
        let base = if text.starts_with('\u{feff}') { 3 } else { 0 };
        let bytes = text.as_bytes();
        // Skip leading blank lines: they are empty segments, which we skip everywhere.
        let mut start = base;
        while start < bytes.len() && (bytes[start] == b'\r' || bytes[start] == b'\n') {
            start += 1;
        }
        if start >= bytes.len() {
            return Err(ParseError::Empty);
        }
        let rest = text.get(start..).unwrap_or("");
        if !rest.starts_with("MSH") {
            return Err(ParseError::NoMsh {
                found: printable_prefix(rest, 10),
            });
        }
        let after = rest.get(3..).unwrap_or("");
        let fs_char = match after.chars().next() {
            Some(c) => c,
            None => {
                return Err(ParseError::BadFieldSeparator {
                    found: String::new(),
                });
            }
        };
        if !fs_char.is_ascii_punctuation() {
            return Err(ParseError::BadFieldSeparator {
                found: printable_prefix(after, 1),
            });
        }
        let fs = fs_char as u8;
        // MSH-2 runs from after MSH-1 to the next field separator or the end of the line.
        let enc_start = start + 4;
        let line_end = memchr2(b'\r', b'\n', &bytes[enc_start..])
            .map(|i| enc_start + i)
            .unwrap_or(bytes.len());
        let enc_end = memchr(fs, &bytes[enc_start..line_end])
            .map(|i| enc_start + i)
            .unwrap_or(line_end);
        let enc = text.get(enc_start..enc_end).unwrap_or("");
        let seps = check_encoding_characters(fs, enc).map_err(|reason| {
            ParseError::BadEncodingCharacters {
                found: printable_prefix(enc, 10),
                reason,
            }
        })?;

        let mut msg = Message {
            text,
            seps,
            segments: Vec::with_capacity(bytes.len() / 64 + 1),
            fields: Vec::with_capacity(bytes.len() / 8 + 1),
        };
        let mut counter = OccurrenceCounter {
            small: Vec::new(),
            large: None,
        };

        // One pass of memchr3 over the rest finds field separators and segment terminators alike. The header
        // was validated above, so the first MSH goes through the same loop as every other segment.
        let mut seg_start = start;
        // Where the current field starts; `None` while still inside the segment ID.
        let mut field_start: Option<usize> = None;
        for at in memchr3_iter(fs, b'\r', b'\n', &bytes[start..]).map(|i| i + start) {
            if bytes[at] == fs {
                match field_start {
                    None => {
                        msg.check_id(seg_start, at)?;
                        if &bytes[seg_start..at] == b"MSH" {
                            // MSH-1 is the field separator itself.
                            msg.fields.push((at, at + 1));
                        }
                    }
                    Some(f) => msg.fields.push((f, at)),
                }
                field_start = Some(at + 1);
            } else {
                if at > seg_start {
                    msg.finish_segment(seg_start, at, field_start, &mut counter)?;
                }
                seg_start = at + 1;
                field_start = None;
            }
        }
        if seg_start < bytes.len() {
            msg.finish_segment(seg_start, bytes.len(), field_start, &mut counter)?;
        }
        Ok(msg)
    }

    /// Rejects a malformed segment ID at `start..end`.
    fn check_id(&self, start: usize, end: usize) -> Result<(), ParseError> {
        if valid_segment_id(&self.text.as_bytes()[start..end]) {
            return Ok(());
        }
        Err(ParseError::BadSegmentId {
            position: self.segments.len() + 1,
            id: printable_prefix(self.text.get(start..end).unwrap_or(""), 10),
        })
    }

    /// Closes the segment `start..end` whose fields (after the first) have been pushed since the last one.
    fn finish_segment(
        &mut self,
        start: usize,
        end: usize,
        field_start: Option<usize>,
        counter: &mut OccurrenceCounter,
    ) -> Result<(), ParseError> {
        match field_start {
            None => self.check_id(start, end)?,
            Some(f) => self.fields.push((f, end)),
        }
        let first_field = self
            .segments
            .last()
            .map_or(0, |s| s.first_field + s.field_count);
        let b = self.text.as_bytes();
        self.segments.push(SegEntry {
            start,
            end,
            first_field,
            field_count: self.fields.len() - first_field,
            occurrence: counter.next([b[start], b[start + 1], b[start + 2]]),
        });
        Ok(())
    }

    /// The text the message was parsed from (including a BOM, if any).
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The delimiters declared in MSH-1 and MSH-2.
    pub fn separators(&self) -> Separators {
        self.seps
    }

    /// All segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_, 'a>> {
        (0..self.segments.len()).map(move |i| Segment {
            msg: self,
            index: i,
        })
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The first segment with this ID.
    pub fn segment(&self, id: &str) -> Option<Segment<'_, 'a>> {
        self.segment_n(id, 1)
    }

    /// The n-th (1-based) segment with this ID.
    pub fn segment_n(&self, id: &str, n: usize) -> Option<Segment<'_, 'a>> {
        if n == 0 {
            return None;
        }
        self.segments().filter(|s| s.id() == id).nth(n - 1)
    }

    /// Segments whose ID is `id`, in order.
    pub fn segments_with_id<'s>(&'s self, id: &'s str) -> impl Iterator<Item = Segment<'s, 'a>> {
        self.segments().filter(move |s| s.id() == id)
    }

    /// The MSH segment. Parsing guarantees it is first.
    pub fn msh(&self) -> Segment<'_, 'a> {
        Segment {
            msg: self,
            index: 0,
        }
    }

    /// Field n of MSH as raw text (MSH-1 is the field separator, MSH-2 the encoding characters), `""` if absent.
    pub fn msh_field(&self, n: usize) -> &'a str {
        self.msh().field(n).map(|f| f.raw()).unwrap_or("")
    }

    /// First match of a path given as text, e.g. `PID.3[2].4`.
    pub fn query(&self, path: &str) -> Result<Option<Value<'a>>, PathError> {
        let p: Path = path.parse()?;
        Ok(self.get(&p))
    }

    /// Every match of a path given as text; `[*]` selects all segments or repetitions.
    pub fn query_all(&self, path: &str) -> Result<Vec<(Location, Value<'a>)>, PathError> {
        let p: Path = path.parse()?;
        Ok(self.get_all(&p))
    }

    /// First match of a parsed path.
    pub fn get(&self, path: &Path) -> Option<Value<'a>> {
        let mut found = None;
        self.visit(path, &mut |_, v| {
            found = Some(v);
            false
        });
        found
    }

    /// Every match of a parsed path, with its location.
    pub fn get_all(&self, path: &Path) -> Vec<(Location, Value<'a>)> {
        let mut out = Vec::new();
        self.visit(path, &mut |loc, v| {
            out.push((loc(), v));
            true
        });
        out
    }

    /// Walks the matches of `path`; `f` gets a lazy location builder (so `get` never allocates) and returns
    /// whether to continue.
    fn visit(&self, path: &Path, f: &mut dyn FnMut(&dyn Fn() -> Location, Value<'a>) -> bool) {
        let mut seen = 0usize;
        for seg in self.segments() {
            if seg.id() != path.segment {
                continue;
            }
            seen += 1;
            match path.segment_index {
                Index::Default if seen > 1 => return,
                Index::Nth(n) if seen < n => continue,
                Index::Nth(n) if seen > n => return,
                _ => {}
            }
            let base = |field, repetition, component, subcomponent| Location {
                segment: seg.id().to_string(),
                occurrence: seg.occurrence(),
                position: seg.position(),
                field,
                repetition,
                component,
                subcomponent,
            };
            let Some(fnum) = path.field else {
                let v = Value::new(seg.raw(), self.seps, Level::Leaf);
                if !f(&|| base(None, None, None, None), v) {
                    return;
                }
                continue;
            };
            let Some(field) = seg.field(fnum) else {
                continue;
            };
            if path.component.is_none() && path.repetition == Index::Default {
                if !f(&|| base(Some(fnum), None, None, None), field.value()) {
                    return;
                }
                continue;
            }
            let mut emit = |rnum: usize, rep: Value<'a>| -> bool {
                let Some(cnum) = path.component else {
                    return f(&|| base(Some(fnum), Some(rnum), None, None), rep);
                };
                let Some(comp) = rep.component(cnum) else {
                    return true;
                };
                let Some(snum) = path.subcomponent else {
                    return f(&|| base(Some(fnum), Some(rnum), Some(cnum), None), comp);
                };
                match comp.subcomponent(snum) {
                    Some(sub) => f(
                        &|| base(Some(fnum), Some(rnum), Some(cnum), Some(snum)),
                        sub,
                    ),
                    None => true,
                }
            };
            match path.repetition {
                Index::Default => {
                    if let Some(rep) = field.repetition(1)
                        && !emit(1, rep)
                    {
                        return;
                    }
                }
                Index::Nth(r) => {
                    if let Some(rep) = field.repetition(r)
                        && !emit(r, rep)
                    {
                        return;
                    }
                }
                Index::All => {
                    for (i, rep) in field.repetitions().enumerate() {
                        if !emit(i + 1, rep) {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// A view of one segment of a [`Message`].
#[derive(Debug, Clone, Copy)]
pub struct Segment<'m, 'a> {
    msg: &'m Message<'a>,
    index: usize,
}

impl<'m, 'a> Segment<'m, 'a> {
    fn entry(&self) -> SegEntry {
        self.msg.segments[self.index]
    }

    /// The three-character segment ID.
    pub fn id(&self) -> &'a str {
        let e = self.entry();
        self.msg.text.get(e.start..e.start + 3).unwrap_or("")
    }

    /// 1-based index among all segments.
    pub fn position(&self) -> usize {
        self.index + 1
    }

    /// 1-based index among segments with the same ID: what ERR-2.2 wants.
    pub fn occurrence(&self) -> usize {
        self.entry().occurrence
    }

    /// The segment line without its terminator.
    pub fn raw(&self) -> &'a str {
        let e = self.entry();
        self.msg.text.get(e.start..e.end).unwrap_or("")
    }

    /// Byte offset of the segment in [`Message::text`].
    pub fn offset(&self) -> usize {
        self.entry().start
    }

    /// Highest field number present (a trailing empty field after a final separator counts).
    pub fn field_count(&self) -> usize {
        self.entry().field_count
    }

    /// Field `n` (1-based); `None` for 0 or past the end. MSH-1 is the field separator and MSH-2 the encoding
    /// characters; neither is ever split into components.
    pub fn field(&self, n: usize) -> Option<Field<'a>> {
        let e = self.entry();
        if n == 0 || n > e.field_count {
            return None;
        }
        let (s, t) = self.msg.fields[e.first_field + n - 1];
        let raw = self.msg.text.get(s..t).unwrap_or("");
        // In every MSH (also a second one, as in a batch) fields 1 and 2 are delimiters, not data.
        let atomic = n <= 2 && self.id() == "MSH";
        Some(Field {
            raw,
            seps: self.msg.seps,
            atomic,
        })
    }

    /// All fields, field 1 first.
    pub fn fields(&self) -> impl Iterator<Item = Field<'a>> + 'm {
        let s = *self;
        (1..=self.field_count()).filter_map(move |n| s.field(n))
    }
}

/// One field of a segment, all repetitions included.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    seps: Separators,
    /// MSH-1 and MSH-2 contain delimiter characters literally and must never be split.
    atomic: bool,
}

impl<'a> Field<'a> {
    /// The field as it appears in the message, repetitions and escapes included.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The field with escape sequences resolved. The delimiters between repetitions and components stay, and an
    /// escaped delimiter (`\S\`) becomes indistinguishable from a real one: split first, then decode the parts.
    pub fn decoded(&self) -> Cow<'a, str> {
        self.value().decoded()
    }

    /// The field as a [`Value`] at field level.
    pub fn value(&self) -> Value<'a> {
        Value::new(
            self.raw,
            self.seps,
            if self.atomic {
                Level::Leaf
            } else {
                Level::Field
            },
        )
    }

    /// The field repetitions (a field without repetition separator has exactly one).
    pub fn repetitions(&self) -> Split<'a> {
        self.value().repetitions()
    }

    /// Repetition `n` (1-based).
    pub fn repetition(&self, n: usize) -> Option<Value<'a>> {
        self.value().repetition(n)
    }

    /// Component `n` of the first repetition.
    pub fn component(&self, n: usize) -> Option<Value<'a>> {
        self.value().component(n)
    }
}

/// What a [`Value`] is, so it knows which delimiter splits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A whole field, possibly with several repetitions.
    Field,
    /// One field repetition: splits into components.
    Repetition,
    /// One component: splits into subcomponents.
    Component,
    /// A subcomponent, or text that must never be split (MSH-1, MSH-2, a whole segment).
    Leaf,
}

/// A piece of a message at some level, with the separators needed to split it further.
#[derive(Debug, Clone, Copy)]
pub struct Value<'a> {
    raw: &'a str,
    seps: Separators,
    level: Level,
}

impl<'a> Value<'a> {
    /// Builds a value from raw text, e.g. for tests or for values taken from elsewhere.
    pub fn new(raw: &'a str, seps: Separators, level: Level) -> Self {
        Value { raw, seps, level }
    }

    /// The text as it appears in the message.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The text with escape sequences resolved; borrowed when there are none.
    pub fn decoded(&self) -> Cow<'a, str> {
        unescape(self.raw, &self.seps)
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn separators(&self) -> Separators {
        self.seps
    }

    /// Empty text. HL7 distinguishes this ("no value sent, keep what you have") from [`Value::is_null`].
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// `""`: HL7's explicit null ("delete the value you have").
    pub fn is_null(&self) -> bool {
        self.raw == "\"\""
    }

    /// Field repetitions; for a value below field level, the value itself.
    pub fn repetitions(&self) -> Split<'a> {
        match self.level {
            Level::Field => {
                Split::new(self.raw, self.seps.repetition, self.seps, Level::Repetition)
            }
            _ => Split::single(*self),
        }
    }

    /// Repetition `n` (1-based).
    pub fn repetition(&self, n: usize) -> Option<Value<'a>> {
        nth1(self.repetitions(), n)
    }

    /// Splits one level down: a field (its first repetition) or a repetition into components, a component into
    /// subcomponents; a leaf yields itself.
    pub fn components(&self) -> Split<'a> {
        match self.level {
            Level::Field => match self.repetitions().next() {
                Some(first) => first.components(),
                None => Split::single(*self),
            },
            Level::Repetition => {
                Split::new(self.raw, self.seps.component, self.seps, Level::Component)
            }
            Level::Component => {
                Split::new(self.raw, self.seps.subcomponent, self.seps, Level::Leaf)
            }
            Level::Leaf => Split::single(*self),
        }
    }

    /// Component `n` (1-based); see [`Value::components`] for what "component" means at each level.
    pub fn component(&self, n: usize) -> Option<Value<'a>> {
        nth1(self.components(), n)
    }

    /// Subcomponents: of this component, or of the first component of a field or repetition.
    pub fn subcomponents(&self) -> Split<'a> {
        match self.level {
            Level::Field | Level::Repetition => match self.components().next() {
                Some(first) => first.subcomponents(),
                None => Split::single(*self),
            },
            Level::Component => {
                Split::new(self.raw, self.seps.subcomponent, self.seps, Level::Leaf)
            }
            Level::Leaf => Split::single(*self),
        }
    }

    /// Subcomponent `n` (1-based).
    pub fn subcomponent(&self, n: usize) -> Option<Value<'a>> {
        nth1(self.subcomponents(), n)
    }
}

impl fmt::Display for Value<'_> {
    /// Shows the decoded text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.decoded())
    }
}

fn nth1<'a>(mut it: Split<'a>, n: usize) -> Option<Value<'a>> {
    if n == 0 {
        return None;
    }
    it.nth(n - 1)
}

/// Where `sep` first occurs. Most values a mapping splits are a few bytes long, where a plain loop costs
/// less than `memchr`'s dispatch and setup; long ones (free text, encapsulated data) still get `memchr`.
#[inline]
fn find_byte(sep: u8, hay: &[u8]) -> Option<usize> {
    if hay.len() < 32 {
        hay.iter().position(|&b| b == sep)
    } else {
        memchr(sep, hay)
    }
}

/// Lazily splits a value on one delimiter (see [`find_byte`]).
#[derive(Debug, Clone)]
pub struct Split<'a> {
    rest: Option<&'a str>,
    sep: u8,
    seps: Separators,
    level: Level,
    /// When set, yield the whole text once without splitting.
    single: bool,
}

impl<'a> Split<'a> {
    fn new(raw: &'a str, sep: u8, seps: Separators, level: Level) -> Self {
        Split {
            rest: Some(raw),
            sep,
            seps,
            level,
            single: false,
        }
    }

    fn single(v: Value<'a>) -> Self {
        Split {
            rest: Some(v.raw),
            sep: 0,
            seps: v.seps,
            level: v.level,
            single: true,
        }
    }
}

impl<'a> Iterator for Split<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        let rest = self.rest?;
        if self.single {
            self.rest = None;
            return Some(Value::new(rest, self.seps, self.level));
        }
        match find_byte(self.sep, rest.as_bytes()) {
            Some(i) => {
                // The separator is ASCII, so both slices fall on character boundaries.
                let head = rest.get(..i).unwrap_or("");
                self.rest = Some(rest.get(i + 1..).unwrap_or(""));
                Some(Value::new(head, self.seps, self.level))
            }
            None => {
                self.rest = None;
                Some(Value::new(rest, self.seps, self.level))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|SND|FAC|RCV|FAC|20240101120000||ADT^A01^ADT_A01|MSG0001|P|2.5.1\r\
EVN|A01|20240101120000\r\
PID|1||123^^^HOSP^MR~456^^^NAT^SS&X&Y||M\\S\\ller^Hans||19700101|M|||\"\"\r\
OBX|1|ST|CODE^Name||first\r\
OBX|2|ST|CODE^Name||second\r\
ZPI|custom\r";

    #[test]
    fn separators_default_and_encoding_characters() {
        let s = Separators::default();
        assert_eq!(s.encoding_characters(), "^~\\&");
        let t = Separators {
            truncation: Some(b'#'),
            ..s
        };
        assert_eq!(t.encoding_characters(), "^~\\&#");
    }

    #[test]
    fn reads_separators_from_msh() {
        let cases: &[(&str, Separators)] = &[
            ("MSH|^~\\&|A", Separators::default()),
            (
                "MSH|^~\\&#|A",
                Separators {
                    truncation: Some(b'#'),
                    ..Separators::default()
                },
            ),
            (
                "MSH^~|\\&^A",
                Separators {
                    field: b'^',
                    component: b'~',
                    repetition: b'|',
                    escape: Some(b'\\'),
                    subcomponent: b'&',
                    truncation: None,
                },
            ),
            (
                "MSH|^~\\}|A",
                Separators {
                    subcomponent: b'}',
                    ..Separators::default()
                },
            ),
        ];
        for (text, want) in cases {
            let m = Message::parse(text).unwrap();
            assert_eq!(m.separators(), *want, "{text}");
            assert_eq!(m.msh_field(3), "A", "{text}");
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let cases: &[(&str, &str)] = &[
            ("", "Empty"),
            ("\r\n\r", "Empty"),
            ("PID|1", "NoMsh"),
            ("MSHH0", "BadFieldSeparator"),
            ("MSH", "BadFieldSeparator"),
            ("MSH |^~\\&|", "BadFieldSeparator"),
            ("MSH|^~}|A", "BadEncodingCharacters"),
            ("MSH||A", "BadEncodingCharacters"),
            ("MSH|^~\\\\&|", "BadEncodingCharacters"),
            ("MSH|^&&^|", "BadEncodingCharacters"),
            ("MSH|0000|", "BadEncodingCharacters"),
            ("MSH|^~\\&#!|", "BadEncodingCharacters"),
            ("MSH|^~ &|", "BadEncodingCharacters"),
            ("MSH|^~\\é|", "BadEncodingCharacters"),
            ("MSH|^~\\&|\rpan|1", "BadSegmentId"),
            ("MSH|^~\\&|\rMov|1", "BadSegmentId"),
            ("MSH|^~\\&|\rPI|1", "BadSegmentId"),
            ("MSH|^~\\&|\rPIDX|1", "BadSegmentId"),
            ("MSH|^~\\&|\r1PI|1", "BadSegmentId"),
            ("MSH|^~\\&|\r  \r", "BadSegmentId"),
        ];
        for (text, want) in cases {
            let err = Message::parse(text).unwrap_err();
            let got = format!("{err:?}");
            assert!(got.starts_with(want), "{text:?}: got {got}, want {want}");
        }
    }

    #[test]
    fn error_locations() {
        let e = Message::parse("MSH|^~}|A").unwrap_err();
        assert_eq!(e.location().unwrap().to_erl('^'), "MSH^1^2");
        let e = Message::parse("MSHH0").unwrap_err();
        assert_eq!(e.location().unwrap().to_erl('^'), "MSH^1^1");
        let e = Message::parse("MSH|^~\\&|\rEVN|\rpan|x").unwrap_err();
        assert_eq!(
            e,
            ParseError::BadSegmentId {
                position: 3,
                id: "pan".into()
            }
        );
        assert_eq!(e.location().unwrap().position, 3);
        assert_eq!(ParseError::Empty.location(), None);
    }

    #[test]
    fn line_endings_bom_and_blank_lines() {
        for text in [
            "MSH|^~\\&|A\rPID|1\rPV1|2",
            "MSH|^~\\&|A\nPID|1\nPV1|2\n",
            "MSH|^~\\&|A\r\nPID|1\r\nPV1|2\r\n",
            "MSH|^~\\&|A\r\n\r\nPID|1\n\rPV1|2\r",
            "\u{feff}MSH|^~\\&|A\nPID|1\rPV1|2",
        ] {
            let m = Message::parse(text).unwrap();
            assert_eq!(m.segment_count(), 3, "{text:?}");
            let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
            assert_eq!(ids, ["MSH", "PID", "PV1"]);
            assert_eq!(m.msh_field(3), "A");
            assert_eq!(m.segment("PV1").unwrap().field(1).unwrap().raw(), "2");
        }
    }

    #[test]
    fn msh_fields_are_numbered_like_the_standard() {
        let m = Message::parse(ADT).unwrap();
        assert_eq!(m.msh_field(1), "|");
        assert_eq!(m.msh_field(2), "^~\\&");
        assert_eq!(m.msh_field(9), "ADT^A01^ADT_A01");
        assert_eq!(m.msh_field(10), "MSG0001");
        assert_eq!(m.msh_field(12), "2.5.1");
        assert_eq!(m.msh_field(13), "");
        assert_eq!(m.msh().field_count(), 12);
        // MSH-2 is never split, even though it contains every delimiter.
        let f = m.msh().field(2).unwrap();
        assert_eq!(f.repetitions().count(), 1);
        assert_eq!(f.component(1).unwrap().raw(), "^~\\&");
        assert_eq!(f.decoded(), "^~\\&");
        assert_eq!(m.query("MSH.9.2").unwrap().unwrap().raw(), "A01");
    }

    #[test]
    fn segments_positions_occurrences_offsets() {
        let m = Message::parse(ADT).unwrap();
        assert_eq!(m.segment_count(), 6);
        let obx2 = m.segment_n("OBX", 2).unwrap();
        assert_eq!(obx2.position(), 5);
        assert_eq!(obx2.occurrence(), 2);
        assert_eq!(obx2.raw(), "OBX|2|ST|CODE^Name||second");
        assert_eq!(&ADT[obx2.offset()..obx2.offset() + 3], "OBX");
        assert!(m.segment_n("OBX", 3).is_none());
        assert!(m.segment_n("OBX", 0).is_none());
        let z = m.segment("ZPI").unwrap();
        assert_eq!(z.field(1).unwrap().raw(), "custom");
        assert!(z.field(2).is_none());
        assert!(z.field(0).is_none());
    }

    #[test]
    fn fields_repetitions_components_subcomponents() {
        let m = Message::parse(ADT).unwrap();
        let pid = m.segment("PID").unwrap();
        let f3 = pid.field(3).unwrap();
        assert_eq!(f3.raw(), "123^^^HOSP^MR~456^^^NAT^SS&X&Y");
        assert_eq!(f3.repetitions().count(), 2);
        assert_eq!(f3.component(1).unwrap().raw(), "123");
        let r2 = f3.repetition(2).unwrap();
        assert_eq!(r2.component(5).unwrap().raw(), "SS&X&Y");
        assert_eq!(r2.component(5).unwrap().component(2).unwrap().raw(), "X");
        assert_eq!(r2.component(5).unwrap().subcomponent(3).unwrap().raw(), "Y");
        assert!(r2.component(6).is_none());
        assert!(f3.repetition(3).is_none());
        assert!(f3.repetition(0).is_none());
        let name = pid.field(5).unwrap();
        assert_eq!(name.decoded(), "M^ller^Hans");
        assert_eq!(name.component(1).unwrap().decoded(), "M^ller");
        assert_eq!(name.component(2).unwrap().decoded(), "Hans");
    }

    #[test]
    fn a_second_msh_is_numbered_like_the_first() {
        let m = Message::parse("MSH|^~\\&|A\rPID|1\rMSH|^~\\&|B|C\r").unwrap();
        let second = m.segment_n("MSH", 2).unwrap();
        assert_eq!(second.field(1).unwrap().raw(), "|");
        assert_eq!(second.field(2).unwrap().raw(), "^~\\&");
        assert_eq!(second.field(2).unwrap().repetitions().count(), 1);
        assert_eq!(second.field(4).unwrap().raw(), "C");
        assert_eq!(m.query("MSH[2].3").unwrap().unwrap().raw(), "B");
    }

    #[test]
    fn segments_without_fields() {
        let m = Message::parse("MSH|^~\\&|A\rZZZ\rPID|\r").unwrap();
        assert_eq!(m.segment("ZZZ").unwrap().field_count(), 0);
        assert_eq!(m.segment("PID").unwrap().field_count(), 1);
        assert_eq!(m.segment("PID").unwrap().field(1).unwrap().raw(), "");
        assert_eq!(Message::parse("MSH|^~\\&").unwrap().msh().field_count(), 2);
    }

    #[test]
    fn null_versus_empty() {
        let m = Message::parse(ADT).unwrap();
        let pid = m.segment("PID").unwrap();
        let null = pid.field(11).unwrap().value();
        assert!(null.is_null());
        assert!(!null.is_empty());
        let empty = pid.field(10).unwrap().value();
        assert!(empty.is_empty());
        assert!(!empty.is_null());
    }

    #[test]
    fn queries() {
        let m = Message::parse(ADT).unwrap();
        let q = |p: &str| m.query(p).unwrap().map(|v| v.raw());
        let cases: &[(&str, Option<&str>)] = &[
            ("PID.3", Some("123^^^HOSP^MR~456^^^NAT^SS&X&Y")),
            ("PID.3.1", Some("123")),
            ("PID.3[2].1", Some("456")),
            ("PID.3[2].5.2", Some("X")),
            ("PID.3[3].1", None),
            ("OBX.5", Some("first")),
            ("OBX[2].5", Some("second")),
            ("OBX[3].5", None),
            ("ZPI.1", Some("custom")),
            ("PV1.1", None),
            ("PID.99", None),
            ("MSH.1", Some("|")),
            ("MSH.2", Some("^~\\&")),
            ("EVN", Some("EVN|A01|20240101120000")),
        ];
        for (p, want) in cases {
            assert_eq!(q(p), *want, "{p}");
        }
    }

    #[test]
    fn query_all_with_stars_and_locations() {
        let m = Message::parse(ADT).unwrap();
        let all = m.query_all("PID.3[*].1").unwrap();
        let raws: Vec<_> = all.iter().map(|(_, v)| v.raw()).collect();
        assert_eq!(raws, ["123", "456"]);
        assert_eq!(all[1].0.to_string(), "PID[1].3[2].1");
        assert_eq!(all[1].0.to_erl('^'), "PID^1^3^2^1");
        let obx = m.query_all("OBX[*].5").unwrap();
        let raws: Vec<_> = obx.iter().map(|(_, v)| v.raw()).collect();
        assert_eq!(raws, ["first", "second"]);
        assert_eq!(obx[1].0.position, 5);
        assert_eq!(obx[1].0.to_erl('^'), "OBX^2^5");
        assert!(m.query_all("NTE[*].3").unwrap().is_empty());
        assert!(m.query("PID.3[").is_err());
    }

    #[test]
    fn location_to_erl_stops_at_last_known_part() {
        let mut l = Location {
            segment: "PID".into(),
            occurrence: 1,
            position: 3,
            field: None,
            repetition: None,
            component: None,
            subcomponent: None,
        };
        assert_eq!(l.to_erl('^'), "PID^1");
        l.field = Some(3);
        assert_eq!(l.to_erl('^'), "PID^1^3");
        l.component = Some(4);
        assert_eq!(l.to_erl('^'), "PID^1^3^1^4");
        l.repetition = Some(2);
        l.subcomponent = Some(1);
        assert_eq!(l.to_erl('~'), "PID~1~3~2~4~1");
        assert_eq!(l.to_string(), "PID[1].3[2].4.1");
    }

    #[test]
    fn non_ascii_text_is_split_on_character_boundaries() {
        let m = Message::parse("MSH|^~\\&|Zürich|\rPID|||Ärzte^Jörg~Ünal\r").unwrap();
        assert_eq!(m.msh_field(3), "Zürich");
        assert_eq!(m.query("PID.3[2].1").unwrap().unwrap().raw(), "Ünal");
        assert_eq!(m.query("PID.3.2").unwrap().unwrap().raw(), "Jörg");
    }

    #[test]
    fn big_inputs() {
        let mut s = String::from("MSH|^~\\&|A\r");
        for i in 0..10_000 {
            s.push_str(&format!("OBX|{i}|ST|||v{i}\r"));
        }
        let m = Message::parse(&s).unwrap();
        assert_eq!(m.segment_count(), 10_001);
        assert_eq!(m.segment_n("OBX", 10_000).unwrap().occurrence(), 10_000);
        assert_eq!(m.query_all("OBX[*].5").unwrap().len(), 10_000);
        let long = format!(
            "MSH|^~\\&|{}\rPID|{}",
            "x".repeat(1_000_000),
            "^".repeat(100_000)
        );
        let m = Message::parse(&long).unwrap();
        assert_eq!(m.msh_field(3).len(), 1_000_000);
        assert_eq!(
            m.segment("PID")
                .unwrap()
                .field(1)
                .unwrap()
                .value()
                .components()
                .count(),
            100_001
        );
        // Many distinct segment IDs switch the occurrence counter to a map.
        let mut s = String::from("MSH|^~\\&|A\r");
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                s.push_str(&format!(
                    "Z{}{}|1\rZ{}{}|2\r",
                    a as char, b as char, a as char, b as char
                ));
            }
        }
        let m = Message::parse(&s).unwrap();
        assert_eq!(m.segment_n("ZQQ", 2).unwrap().occurrence(), 2);
    }
}
