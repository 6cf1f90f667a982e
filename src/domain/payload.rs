//! A payload on its way from a mapping to the store: built as a [`Draft`] that borrows its texts,
//! checked and normalised, then kept as [`Payload`], the JSON text the store writes.
//!
//! Mapping a message used to build a `serde_json::Value`: a `String` for every key and value and a
//! `BTreeMap` per object, built, checked, serialised by the store and freed per message. That was a
//! quarter of the instructions of mapping an order (BENCHMARKS.md, "Mapping throughput"). A draft's
//! keys are the mapping file's field names and its texts are slices of the message wherever no
//! transform or escape sequence changed them, so it costs one small vector per object; it is written
//! out once, as the text that is stored and that projections read their typed structs from.

use std::borrow::Cow;

use serde::ser::{Serialize, Serializer};
use serde_json::Value;

use super::StreamKind;

/// A payload under construction: JSON whose texts and keys are borrowed where they can be.
#[derive(Debug, Clone, PartialEq)]
pub enum Draft<'a> {
    Null,
    Bool(bool),
    /// Only from constants of a mapping file: mapped values are texts.
    Number(&'a serde_json::Number),
    Text(Cow<'a, str>),
    List(Vec<Draft<'a>>),
    /// Members sorted by key, keys unique: build it with [`Draft::object`].
    Object(Vec<(Key<'a>, Draft<'a>)>),
}

/// An object member's name, with its JSON text when the mapping file has it ready.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub name: &'a str,
    /// `"name":`, written as it is: every mapped object's keys are the field names of a mapping
    /// file, and escaping each of them again for every message cost as much as all the values.
    pub json: Option<&'a str>,
    /// The name's place among its object's member names, sorted (0 when not known): the mapping
    /// knows it for the fields of a mapping file, and comparing two numbers sorts an object's
    /// members for much less than comparing their names. See [`Draft::object_ranked`].
    pub rank: u32,
}

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(name: &'a str) -> Self {
        Key {
            name,
            json: None,
            rank: 0,
        }
    }
}

impl<'a> Draft<'a> {
    /// An object from its members in any order (keys unique): sorted by key, the order a
    /// `serde_json::Map` keeps and the stored text has.
    pub fn object(mut members: Vec<(Key<'a>, Draft<'a>)>) -> Draft<'a> {
        // The first bytes mostly differ, and comparing them spares a `memcmp` call per comparison.
        members.sort_unstable_by(|a, b| {
            let (a, b) = (a.0.name.as_bytes(), b.0.name.as_bytes());
            match (a.first(), b.first()) {
                (Some(x), Some(y)) if x != y => x.cmp(y),
                _ => a.cmp(b),
            }
        });
        Draft::Object(members)
    }

    /// [`Draft::object`] for members whose keys carry their [`Key::rank`]: sorted by rank, and by
    /// name only where ranks are equal (so unranked keys still come out sorted by name).
    pub fn object_ranked(mut members: Vec<(Key<'a>, Draft<'a>)>) -> Draft<'a> {
        members
            .sort_unstable_by(|a, b| a.0.rank.cmp(&b.0.rank).then_with(|| a.0.name.cmp(b.0.name)));
        Draft::Object(members)
    }

    /// A JSON value as a draft that borrows it (constants and defaults of mapping files).
    pub fn from_value(v: &'a Value) -> Draft<'a> {
        match v {
            Value::Null => Draft::Null,
            Value::Bool(b) => Draft::Bool(*b),
            Value::Number(n) => Draft::Number(n),
            Value::String(s) => Draft::Text(Cow::Borrowed(s)),
            Value::Array(items) => Draft::List(items.iter().map(Draft::from_value).collect()),
            // A map is already sorted by key.
            Value::Object(map) => Draft::Object(
                map.iter()
                    .map(|(k, v)| (Key::from(k.as_str()), Draft::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// The same JSON as a `Value` (for explanations and the typed check's slow path).
    pub fn to_value(&self) -> Value {
        match self {
            Draft::Null => Value::Null,
            Draft::Bool(b) => Value::Bool(*b),
            Draft::Number(n) => Value::Number((*n).clone()),
            Draft::Text(t) => Value::String(t.as_ref().to_owned()),
            Draft::List(items) => Value::Array(items.iter().map(Draft::to_value).collect()),
            Draft::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.name.to_owned(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// What serialising the payload's typed struct drops (see `super::prune`), removed in place.
    pub(super) fn prune(&mut self) {
        match self {
            Draft::Object(members) => {
                for (_, x) in members.iter_mut() {
                    x.prune();
                }
                members.retain(|(k, x)| !super::dropped(k.name, x));
            }
            Draft::List(items) => items.iter_mut().for_each(Draft::prune),
            _ => {}
        }
    }
}

impl Serialize for Draft<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Draft::Null => s.serialize_unit(),
            Draft::Bool(b) => s.serialize_bool(*b),
            Draft::Number(n) => n.serialize(s),
            Draft::Text(t) => s.serialize_str(t),
            Draft::List(items) => s.collect_seq(items),
            Draft::Object(members) => s.collect_map(members.iter().map(|(k, v)| (k.name, v))),
        }
    }
}

/// A payload as stored: compact JSON text, object members sorted by key (the text
/// `serde_json::to_string` gives for the same `Value`). Built by the mapping from a checked
/// [`Draft`]; [`Payload::from`] a `Value` for events written by other means (tests, tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(String);

impl Payload {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The payload as a `Value`.
    pub fn to_value(&self) -> serde_json::Result<Value> {
        serde_json::from_str(&self.0)
    }

    /// The payload read as a typed struct.
    pub fn read<'de, T: serde::Deserialize<'de>>(&'de self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }

    /// The text of a checked draft: what `serde_json::to_string` gives for it, byte for byte
    /// (`draft_text_is_serde_json_text` pins that), written by [`write_json`].
    pub(super) fn of_draft(draft: &Draft<'_>) -> Payload {
        let mut out = String::with_capacity(1024);
        write_json(draft, &mut out);
        Payload(out)
    }
}

/// Writes a draft as compact JSON.
///
/// Written out rather than through serde_json's serializer: that goes through `io::Write` a piece at a
/// time and escapes strings byte by byte through its formatter, about 11 instructions a byte, which
/// was a tenth of mapping an order once the payload was no longer a `Value`. Texts in payloads are
/// short and almost never need an escape, so each is checked with a table and copied whole.
fn write_json(d: &Draft<'_>, out: &mut String) {
    match d {
        Draft::Null => out.push_str("null"),
        Draft::Bool(true) => out.push_str("true"),
        Draft::Bool(false) => out.push_str("false"),
        // serde_json's own formatting of the number (constants only).
        Draft::Number(n) => out.push_str(&n.to_string()),
        Draft::Text(t) => write_str(t, out),
        Draft::List(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Draft::Object(members) => {
            out.push('{');
            for (i, (k, x)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match k.json {
                    Some(json) => out.push_str(json),
                    None => {
                        write_str(k.name, out);
                        out.push(':');
                    }
                }
                write_json(x, out);
            }
            out.push('}');
        }
    }
}

/// Which bytes a JSON string must escape: `"`, `\\` and the control characters below 0x20.
fn escaped(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any byte of `bytes` must be escaped, eight bytes at a time (the bit tricks of "Bit
/// Twiddling Hacks", "Determine if a word has a byte less than n" and "… has a zero byte": both exact
/// as yes/no answers). A byte-by-byte check cost more than all the rest of writing the payload.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    fn has_zero(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x & HIGH
    }
    fn word(x: u64) -> bool {
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        let quote = has_zero(x ^ (ONES * u64::from(b'"')));
        let backslash = has_zero(x ^ (ONES * u64::from(b'\\')));
        control | quote | backslash != 0
    }
    let load = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| escaped(b));
    }
    let mut at = 0;
    while at + 8 <= bytes.len() {
        if word(load(at)) {
            return true;
        }
        at += 8;
    }
    // The last eight bytes, overlapping words already checked.
    at < bytes.len() && word(load(bytes.len() - 8))
}

/// A JSON string, escaped as serde_json escapes it (short escapes where JSON has them, else
/// `\\u00xx` in lower case; everything else, non-ASCII included, as it is).
fn write_str(s: &str, out: &mut String) {
    out.reserve(s.len() + 2);
    out.push('"');
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if !escaped(b) {
            continue;
        }
        // Escaped bytes are ASCII, so `i` is on a character boundary.
        out.push_str(s.get(start..i).unwrap_or_default());
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

impl Serialize for Payload {
    /// As the JSON it is (not as a string holding it).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl From<&Value> for Payload {
    fn from(v: &Value) -> Payload {
        // `Value`'s `Display` is `serde_json::to_string`, which cannot fail for a `Value`.
        Payload(v.to_string())
    }
}

/// A payload as projections read it: the text of a new event, or the value of a stored one.
#[derive(Debug, Clone, Copy)]
pub enum PayloadRef<'a> {
    Text(&'a Payload),
    Value(&'a Value),
}

impl<'a> PayloadRef<'a> {
    /// The payload read as a typed struct.
    pub fn read<T: serde::Deserialize<'a>>(self) -> serde_json::Result<T> {
        match self {
            PayloadRef::Text(p) => p.read(),
            PayloadRef::Value(v) => T::deserialize(v),
        }
    }

    /// The payload as a `Value`, borrowed when it is one.
    pub fn value(self) -> serde_json::Result<Cow<'a, Value>> {
        match self {
            PayloadRef::Text(p) => p.to_value().map(Cow::Owned),
            PayloadRef::Value(v) => Ok(Cow::Borrowed(v)),
        }
    }
}

impl<'a> From<&'a Payload> for PayloadRef<'a> {
    fn from(p: &'a Payload) -> Self {
        PayloadRef::Text(p)
    }
}

impl<'a> From<&'a Value> for PayloadRef<'a> {
    fn from(v: &'a Value) -> Self {
        PayloadRef::Value(v)
    }
}

/// One node of a JSON tree, whichever tree: what the payload check and the stream keys read, so
/// that they read a `Value` and a [`Draft`] alike.
pub(crate) enum View<'x, T: Tree + 'x> {
    Null,
    Bool(bool),
    Number,
    Text(&'x str),
    List(&'x [T]),
    Object(T::Members<'x>),
}

/// A JSON tree: `serde_json::Value` or [`Draft`].
pub(crate) trait Tree: Sized {
    /// An object's members in the tree's order (sorted by key for both).
    type Members<'x>: Iterator<Item = (&'x str, &'x Self)>
    where
        Self: 'x;

    fn view(&self) -> View<'_, Self>;

    /// The member `key` of an object.
    fn member(&self, key: &str) -> Option<&Self> {
        match self.view() {
            View::Object(mut members) => members.find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self.view() {
            View::Text(t) => Some(t),
            _ => None,
        }
    }
}

type ValueMember<'x> = (&'x String, &'x Value);

fn value_member<'x>((k, v): ValueMember<'x>) -> (&'x str, &'x Value) {
    (k.as_str(), v)
}

impl Tree for Value {
    type Members<'x> =
        std::iter::Map<serde_json::map::Iter<'x>, fn(ValueMember<'x>) -> (&'x str, &'x Value)>;

    fn view(&self) -> View<'_, Self> {
        match self {
            Value::Null => View::Null,
            Value::Bool(b) => View::Bool(*b),
            Value::Number(_) => View::Number,
            Value::String(s) => View::Text(s),
            Value::Array(items) => View::List(items),
            Value::Object(map) => View::Object(map.iter().map(value_member as fn(_) -> _)),
        }
    }
}

type DraftMember<'x, 'a> = &'x (Key<'a>, Draft<'a>);

fn draft_member<'x, 'a>((k, v): DraftMember<'x, 'a>) -> (&'x str, &'x Draft<'a>) {
    (k.name, v)
}

impl<'a> Tree for Draft<'a> {
    type Members<'x>
        = std::iter::Map<
        std::slice::Iter<'x, (Key<'a>, Draft<'a>)>,
        fn(DraftMember<'x, 'a>) -> (&'x str, &'x Draft<'a>),
    >
    where
        Self: 'x;

    fn view(&self) -> View<'_, Self> {
        match self {
            Draft::Null => View::Null,
            Draft::Bool(b) => View::Bool(*b),
            Draft::Number(_) => View::Number,
            Draft::Text(t) => View::Text(t),
            Draft::List(items) => View::List(items),
            Draft::Object(members) => View::Object(members.iter().map(draft_member as fn(_) -> _)),
        }
    }
}

/// A stream key: (assigning authority, value).
pub type StreamKey = (Option<String>, String);

/// The keys of the patient, encounter and order streams a payload names (those it has).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamKeys([Option<StreamKey>; 3]);

const KINDS: [StreamKind; 3] = [
    StreamKind::Patient,
    StreamKind::Encounter,
    StreamKind::Order,
];

impl StreamKeys {
    pub(crate) fn of<T: Tree>(payload: &T) -> StreamKeys {
        StreamKeys(KINDS.map(|kind| key_of(kind, payload)))
    }

    pub fn get(&self, kind: StreamKind) -> Option<&StreamKey> {
        let i = KINDS.iter().position(|k| *k == kind)?;
        self.0[i].as_ref()
    }

    /// The stream ids, by kind, of the keys there are: what events carry as `metadata.streams`, so
    /// projections and outbound lanes need not derive them again.
    pub fn ids(&self, tenant: &str) -> serde_json::Map<String, Value> {
        let mut streams = serde_json::Map::new();
        for (kind, key) in KINDS.iter().zip(&self.0) {
            if let Some((a, v)) = key {
                streams.insert(
                    kind.as_str().to_owned(),
                    super::stream_id(*kind, tenant, a.as_deref(), v).into(),
                );
            }
        }
        streams
    }
}

/// See [`super::stream_key`].
pub(crate) fn key_of<T: Tree>(kind: StreamKind, payload: &T) -> Option<StreamKey> {
    let identifier = match kind {
        StreamKind::Patient => {
            // As the JSON pointer's token `0` would: an array's first item, or an object's member "0".
            let ids = payload.member("patient")?.member("identifiers")?;
            match ids.view() {
                View::List(items) => items.first(),
                _ => ids.member("0"),
            }
        }
        StreamKind::Encounter => payload.member("encounter")?.member("visit_number"),
        StreamKind::Order => {
            let order = payload.member("order")?;
            order
                .member("placer_order_number")
                .or_else(|| order.member("filler_order_number"))
        }
    }?;
    let value = super::model::trim(identifier.member("value")?.text()?);
    if value.is_empty() {
        return None;
    }
    let authority = identifier
        .member("authority")
        .and_then(Tree::text)
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned);
    Some((authority, value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Strings with every character class the escaper treats apart.
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just('"'),
                Just('\\'),
                Just('/'),
                (0u8..0x20).prop_map(char::from),
                Just('\u{7f}'),
                Just('ü'),
                Just('€'),
                Just('😀'),
                prop::char::range('a', 'z'),
            ],
            0..12,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(text(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn draft_text_is_serde_json_text(v in value()) {
            let draft = Draft::from_value(&v);
            let text = Payload::of_draft(&draft);
            prop_assert_eq!(text.as_str(), serde_json::to_string(&v).unwrap());
            prop_assert_eq!(draft.to_value(), v);
        }
    }

    /// Every byte value at every position of words and tails, against the plain check.
    #[test]
    fn the_word_check_finds_every_byte_to_escape() {
        for len in 1..=17 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = b;
                    assert_eq!(
                        needs_escape(&bytes),
                        escaped(b),
                        "byte {b:#04x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("Müller 😀 ~!".as_bytes()));
    }

    #[test]
    fn objects_are_sorted_by_key_as_a_map_sorts_them() {
        let draft = Draft::object(vec![
            (
                Key {
                    name: "zeta",
                    json: Some("\"zeta\":"),
                    rank: 0,
                },
                Draft::Bool(true),
            ),
            ("Alpha".into(), Draft::Null),
            ("alpha".into(), Draft::Text("x".into())),
            ("ä".into(), Draft::List(vec![])),
        ]);
        let expected = json!({ "zeta": true, "Alpha": null, "alpha": "x", "ä": [] });
        assert_eq!(Payload::of_draft(&draft).as_str(), expected.to_string());
        assert_eq!(draft.to_value(), expected);
    }
}
