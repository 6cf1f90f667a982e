//! Bytes → text, by the character set the message declares in MSH-18.
//!
//! HL7 v2 arrives as bytes. The header is ASCII in every character set we accept, so MSH-18 can be read from the
//! raw bytes of the first segment before anything is decoded. Valid UTF-8 (and ASCII) is borrowed, never copied:
//! that is the common case and the parser works on the borrowed text. When the bytes are invalid for the declared
//! set — senders often declare ASCII or UTF-8 and send windows-1252 — a configured fallback decodes them instead
//! and [`Decoded::used_fallback`] says so, for the inbound log. [`encode`] goes the other way, for ACKs.

use std::borrow::Cow;

use encoding_rs::{DecoderResult, EncoderResult, Encoding};
use memchr::{memchr_iter, memchr2};

/// A character set a message can be decoded from or encoded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// 7-bit ASCII (HL7 "ASCII", the default when MSH-18 is empty per the standard).
    Ascii,
    /// True ISO-8859-1, every byte one code point — not windows-1252, which encoding_rs substitutes for the
    /// "iso-8859-1" label as browsers do.
    Latin1,
    Utf8,
    /// Any other encoding_rs encoding that keeps ASCII bytes as ASCII in the header.
    Other(&'static Encoding),
}

/// HL7 table 0211 names (and a few common spellings) → charsets. Keys are upper case.
fn hl7_table(name: &str) -> Option<Charset> {
    use encoding_rs as e;
    Some(match name {
        "ASCII" | "US-ASCII" | "ISO IR6" | "ISO-IR6" | "ISO_IR 6" => Charset::Ascii,
        "8859/1" | "8859" | "ISO IR100" | "ISO-IR100" | "ISO_IR 100" | "ISO-8859-1"
        | "ISO8859-1" | "LATIN1" => Charset::Latin1,
        "UNICODE UTF-8" | "UNICODE" | "UTF-8" | "UTF8" | "ISO IR192" | "ISO-IR192"
        | "ISO_IR 192" => Charset::Utf8,
        "8859/2" => Charset::Other(e::ISO_8859_2),
        "8859/3" => Charset::Other(e::ISO_8859_3),
        "8859/4" => Charset::Other(e::ISO_8859_4),
        "8859/5" => Charset::Other(e::ISO_8859_5),
        "8859/6" => Charset::Other(e::ISO_8859_6),
        "8859/7" => Charset::Other(e::ISO_8859_7),
        "8859/8" => Charset::Other(e::ISO_8859_8),
        // encoding_rs has no ISO-8859-9; windows-1254 is its superset (as in WHATWG).
        "8859/9" => Charset::Other(e::WINDOWS_1254),
        "8859/15" => Charset::Other(e::ISO_8859_15),
        "GB 18030" | "GB18030" | "GB 18030-2000" => Charset::Other(e::GB18030),
        "BIG-5" | "BIG5" => Charset::Other(e::BIG5),
        "KS X 1001" | "KS X 1001-1998" => Charset::Other(e::EUC_KR),
        // JIS X 0208 (ISO IR87) and X 0212 (IR159) are carried with ISO-2022 escapes in practice.
        "ISO IR87" | "ISO IR159" | "JAS2020" | "JIS X 0202" => Charset::Other(e::ISO_2022_JP),
        "WINDOWS-1252" | "CP1252" => Charset::Other(e::WINDOWS_1252),
        _ => return None,
    })
}

impl Charset {
    /// Parses an MSH-18 value (its first component), case-insensitively and trimmed.
    pub fn from_hl7_name(name: &str) -> Option<Charset> {
        let n = name.trim().to_ascii_uppercase();
        hl7_table(&n)
    }

    /// A label for logs and the inbound log: `ASCII`, `8859/1`, `UNICODE UTF-8`, or the encoding_rs name.
    pub fn hl7_name(&self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Latin1 => "8859/1",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Other(e) => e.name(),
        }
    }

    /// From a config label in either syntax: an HL7 name (`UNICODE UTF-8`, `8859/1`) or a WHATWG/encoding_rs
    /// label (`windows-1252`, `shift_jis`). Encodings that are not ASCII-compatible (UTF-16) are refused because
    /// MSH could not be read from their bytes.
    pub fn from_label(label: &str) -> Option<Charset> {
        if let Some(c) = Charset::from_hl7_name(label) {
            return Some(c);
        }
        let enc = Encoding::for_label(label.trim().as_bytes())?;
        if enc == encoding_rs::UTF_8 {
            return Some(Charset::Utf8);
        }
        if enc == encoding_rs::UTF_16LE
            || enc == encoding_rs::UTF_16BE
            || enc == encoding_rs::REPLACEMENT
        {
            return None;
        }
        Some(Charset::Other(enc))
    }
}

/// How to decode when MSH-18 is silent or wrong.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Used when MSH-18 is empty. Default UTF-8: it is what modern senders mean, and ASCII is a subset.
    pub default_charset: Charset,
    /// Used when the bytes are invalid for the declared charset. Default windows-1252, which decodes any byte
    /// and is what mislabelled legacy senders almost always use. `None` makes invalid bytes an error.
    pub fallback: Option<Charset>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            default_charset: Charset::Utf8,
            fallback: Some(Charset::Other(encoding_rs::WINDOWS_1252)),
        }
    }
}

/// The decoded text and how it was obtained.
#[derive(Debug, Clone)]
pub struct Decoded<'a> {
    /// Borrowed from the input for valid UTF-8/ASCII (BOM excluded).
    pub text: Cow<'a, str>,
    /// The charset actually used.
    pub charset: Charset,
    /// The raw MSH-18 value, if any.
    pub declared: Option<String>,
    pub used_fallback: bool,
    pub bom_stripped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("character set {name:?} in MSH-18 is not supported")]
    UnknownCharset { name: String },
    #[error(
        "the message is not valid {charset} (first bad byte at offset {offset}) and no fallback character set is configured"
    )]
    Invalid {
        charset: &'static str,
        offset: usize,
    },
}

/// Reads the raw MSH-18 bytes from the first segment, if the bytes start with `MSH` and it is there.
fn find_msh18(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < 4 || &bytes[..3] != b"MSH" {
        return None;
    }
    let fs = bytes[3];
    let end = memchr2(b'\r', b'\n', bytes).unwrap_or(bytes.len());
    let line = &bytes[..end];
    // Splitting "MSH|^~\&|a|..." on the separator gives "MSH", MSH-2, MSH-3, …: MSH-n is piece n-1.
    let mut starts = std::iter::once(0).chain(memchr_iter(fs, line).map(|i| i + 1));
    let start = starts.nth(17)?;
    let stop = memchr::memchr(fs, &line[start..]).map_or(line.len(), |i| start + i);
    Some(&line[start..stop])
}

/// Decodes bytes strictly; `Err(offset)` gives the first bad byte.
fn decode_strict(bytes: &[u8], charset: Charset) -> Result<Cow<'_, str>, usize> {
    match charset {
        Charset::Utf8 => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| e.valid_up_to()),
        Charset::Ascii => match bytes.iter().position(|&b| b >= 0x80) {
            Some(i) => Err(i),
            None => std::str::from_utf8(bytes)
                .map(Cow::Borrowed)
                .map_err(|e| e.valid_up_to()),
        },
        Charset::Latin1 => Ok(encoding_rs::mem::decode_latin1(bytes)),
        Charset::Other(enc) => {
            if enc.is_ascii_compatible()
                && let Ok(s) = std::str::from_utf8(bytes)
                && s.is_ascii()
            {
                return Ok(Cow::Borrowed(s));
            }
            let mut decoder = enc.new_decoder_without_bom_handling();
            let cap = decoder
                .max_utf8_buffer_length_without_replacement(bytes.len())
                .unwrap_or(bytes.len().saturating_mul(3).saturating_add(16));
            let mut out = String::with_capacity(cap);
            let (res, read) = decoder.decode_to_string_without_replacement(bytes, &mut out, true);
            match res {
                DecoderResult::InputEmpty => Ok(Cow::Owned(out)),
                DecoderResult::Malformed(bad, after) => Err(read
                    .saturating_sub(bad as usize)
                    .saturating_sub(after as usize)),
                DecoderResult::OutputFull => Err(read),
            }
        }
    }
}

/// Strips a UTF-8 BOM, finds MSH-18 in the raw first segment, and decodes. Borrowed for valid UTF-8/ASCII.
/// ASCII declared but bytes ≥ 0x80 count as invalid and go to the fallback. Bytes that do not start with `MSH`
/// are still decoded with the default charset: the parser reports the missing MSH, with the text to show.
pub fn decode<'a>(bytes: &'a [u8], options: &DecodeOptions) -> Result<Decoded<'a>, DecodeError> {
    let (bytes, bom_stripped) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (rest, true),
        None => (bytes, false),
    };
    let declared_raw = find_msh18(bytes).filter(|v| !v.is_empty());
    let declared = declared_raw.map(|v| String::from_utf8_lossy(v).into_owned());
    let charset = match declared_raw {
        None => options.default_charset,
        Some(raw) => {
            // MSH-18 repeats (for code extension) and could carry components: the first of each names the set.
            let comp = bytes.get(4).copied();
            let rep = bytes.get(5).copied();
            let first = raw
                .split(|&b| Some(b) == rep)
                .next()
                .unwrap_or(raw)
                .split(|&b| Some(b) == comp)
                .next()
                .unwrap_or(raw);
            let name = String::from_utf8_lossy(first);
            if name.trim().is_empty() {
                options.default_charset
            } else {
                Charset::from_hl7_name(&name).ok_or_else(|| DecodeError::UnknownCharset {
                    name: declared.clone().unwrap_or_default(),
                })?
            }
        }
    };
    match decode_strict(bytes, charset) {
        Ok(text) => Ok(Decoded {
            text,
            charset,
            declared,
            used_fallback: false,
            bom_stripped,
        }),
        Err(offset) => {
            let invalid = DecodeError::Invalid {
                charset: charset.hl7_name(),
                offset,
            };
            let Some(fallback) = options.fallback else {
                return Err(invalid);
            };
            match decode_strict(bytes, fallback) {
                Ok(text) => Ok(Decoded {
                    text,
                    charset: fallback,
                    declared,
                    used_fallback: true,
                    bom_stripped,
                }),
                Err(_) => Err(invalid),
            }
        }
    }
}

/// Encodes text (e.g. an ACK) into a charset; characters it cannot represent become `?` (never HTML character
/// references, which encoding_rs would otherwise produce).
pub fn encode<'a>(text: &'a str, charset: Charset) -> Cow<'a, [u8]> {
    if text.is_ascii() {
        // Every supported charset except ISO-2022-JP in a non-ASCII state maps ASCII to itself.
        return Cow::Borrowed(text.as_bytes());
    }
    match charset {
        Charset::Utf8 => Cow::Borrowed(text.as_bytes()),
        Charset::Ascii => Cow::Owned(
            text.chars()
                .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                .collect(),
        ),
        Charset::Latin1 => Cow::Owned(
            text.chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect(),
        ),
        Charset::Other(enc) => {
            let mut encoder = enc.new_encoder();
            let out_enc = encoder.encoding();
            if out_enc == encoding_rs::UTF_8 {
                return Cow::Borrowed(text.as_bytes());
            }
            let mut out: Vec<u8> = Vec::with_capacity(text.len() + 16);
            let mut src = text;
            let mut buf = [0u8; 1024];
            loop {
                let (res, read, written) =
                    encoder.encode_from_utf8_without_replacement(src, &mut buf, true);
                out.extend_from_slice(&buf[..written]);
                src = src.get(read..).unwrap_or("");
                match res {
                    EncoderResult::InputEmpty => break,
                    EncoderResult::OutputFull => {}
                    EncoderResult::Unmappable(_) => out.push(b'?'),
                }
            }
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;
    use encoding_rs as e;

    #[test]
    fn charset_names() {
        let cases: &[(&str, Option<Charset>)] = &[
            ("ASCII", Some(Charset::Ascii)),
            (" iso ir6 ", Some(Charset::Ascii)),
            ("8859/1", Some(Charset::Latin1)),
            ("8859", Some(Charset::Latin1)),
            ("ISO IR100", Some(Charset::Latin1)),
            ("UNICODE UTF-8", Some(Charset::Utf8)),
            ("unicode", Some(Charset::Utf8)),
            ("UTF-8", Some(Charset::Utf8)),
            ("ISO IR192", Some(Charset::Utf8)),
            ("8859/2", Some(Charset::Other(e::ISO_8859_2))),
            ("8859/9", Some(Charset::Other(e::WINDOWS_1254))),
            ("8859/15", Some(Charset::Other(e::ISO_8859_15))),
            ("GB 18030", Some(Charset::Other(e::GB18030))),
            ("BIG-5", Some(Charset::Other(e::BIG5))),
            ("KS X 1001", Some(Charset::Other(e::EUC_KR))),
            ("ISO IR87", Some(Charset::Other(e::ISO_2022_JP))),
            ("windows-1252", Some(Charset::Other(e::WINDOWS_1252))),
            ("CP1252", Some(Charset::Other(e::WINDOWS_1252))),
            ("EBCDIC", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(Charset::from_hl7_name(name), *want, "{name:?}");
        }
        assert_eq!(
            Charset::from_label("windows-1252"),
            Some(Charset::Other(e::WINDOWS_1252))
        );
        assert_eq!(
            Charset::from_label("shift_jis"),
            Some(Charset::Other(e::SHIFT_JIS))
        );
        assert_eq!(Charset::from_label("utf-8"), Some(Charset::Utf8));
        assert_eq!(Charset::from_label("iso-8859-1"), Some(Charset::Latin1));
        assert_eq!(Charset::from_label("utf-16le"), None);
        assert_eq!(Charset::from_label("nonsense"), None);
        assert_eq!(Charset::Latin1.hl7_name(), "8859/1");
        assert_eq!(Charset::Other(e::WINDOWS_1252).hl7_name(), "windows-1252");
    }

    fn msg(charset: &str, body: &[u8]) -> Vec<u8> {
        let mut v = format!("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5||||||{charset}\rPID|||")
            .into_bytes();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn finds_msh18() {
        assert_eq!(find_msh18(&msg("8859/1", b"")), Some(&b"8859/1"[..]));
        assert_eq!(find_msh18(b"MSH|^~\\&|A"), None);
        assert_eq!(
            find_msh18(b"MSH|^~\\&|2|3|4|5|6|7|8|9|10|11|12|13|14|15|16|X\nPID"),
            Some(&b"X"[..])
        );
        assert_eq!(find_msh18(b"PID|1"), None);
        assert_eq!(find_msh18(b""), None);
    }

    #[test]
    fn decodes_by_declared_charset() {
        let opts = DecodeOptions::default();
        // UTF-8, borrowed.
        let bytes = msg("UNICODE UTF-8", "Müller".as_bytes());
        let d = decode(&bytes, &opts).unwrap();
        assert!(matches!(d.text, Cow::Borrowed(_)));
        assert!(d.text.ends_with("Müller"));
        assert_eq!(d.charset, Charset::Utf8);
        assert_eq!(d.declared.as_deref(), Some("UNICODE UTF-8"));
        assert!(!d.used_fallback);
        // Latin-1: true ISO-8859-1, so 0x80 is U+0080 rather than the euro sign.
        let bytes = msg("8859/1", b"M\xfcller\x80");
        let d = decode(&bytes, &opts).unwrap();
        assert!(d.text.ends_with("Müller\u{80}"));
        assert_eq!(d.charset, Charset::Latin1);
        // ISO-8859-2.
        let bytes = msg("8859/2", b"\xb1");
        assert!(decode(&bytes, &opts).unwrap().text.ends_with('ą'));
        // Empty MSH-18: the default.
        let bytes = msg("", "é".as_bytes());
        let d = decode(&bytes, &opts).unwrap();
        assert_eq!(d.charset, Charset::Utf8);
        assert_eq!(d.declared, None);
        // Repetitions and components of MSH-18: the first names the charset.
        let bytes = msg("8859/1~ISO IR87", b"\xe9");
        assert_eq!(decode(&bytes, &opts).unwrap().charset, Charset::Latin1);
    }

    #[test]
    fn falls_back_on_invalid_bytes() {
        let opts = DecodeOptions::default();
        let bytes = msg("ASCII", b"M\xfcller \x80");
        let d = decode(&bytes, &opts).unwrap();
        assert!(d.used_fallback);
        assert_eq!(d.charset, Charset::Other(e::WINDOWS_1252));
        assert!(d.text.ends_with("Müller €"));
        let bytes = msg("UNICODE UTF-8", b"M\xfcller");
        assert!(decode(&bytes, &opts).unwrap().used_fallback);
        let strict = DecodeOptions {
            fallback: None,
            ..DecodeOptions::default()
        };
        let err = decode(&bytes, &strict).unwrap_err();
        let at = bytes.iter().position(|&b| b == 0xfc).unwrap();
        assert!(
            matches!(err, DecodeError::Invalid { charset: "UNICODE UTF-8", offset } if offset == at),
            "{err}"
        );
        let bytes = msg("ASCII", b"\xfc");
        assert!(matches!(
            decode(&bytes, &strict),
            Err(DecodeError::Invalid {
                charset: "ASCII",
                ..
            })
        ));
        let bytes = msg("KLINGON", b"");
        let err = decode(&bytes, &opts).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownCharset { ref name } if name == "KLINGON"));
    }

    #[test]
    fn strips_bom_and_tolerates_non_msh() {
        let opts = DecodeOptions::default();
        let d = decode(b"\xEF\xBB\xBFMSH|^~\\&|A", &opts).unwrap();
        assert!(d.bom_stripped);
        assert_eq!(d.text, "MSH|^~\\&|A");
        let d = decode(b"garbage \xff", &opts).unwrap();
        assert!(d.used_fallback);
        assert_eq!(d.text, "garbage ÿ");
        let d = decode(b"", &opts).unwrap();
        assert_eq!(d.text, "");
    }

    #[test]
    fn encodes_with_question_marks() {
        assert!(matches!(encode("ACK", Charset::Latin1), Cow::Borrowed(_)));
        assert_eq!(&*encode("Müller €", Charset::Latin1), b"M\xfcller ?");
        assert_eq!(&*encode("Müller", Charset::Ascii), b"M?ller");
        assert_eq!(
            &*encode("Müller €", Charset::Other(e::WINDOWS_1252)),
            b"M\xfcller \x80"
        );
        assert_eq!(&*encode("ą€", Charset::Other(e::ISO_8859_2)), b"\xb1?");
        assert_eq!(&*encode("Müller", Charset::Utf8), "Müller".as_bytes());
        // ISO-2022-JP is stateful: the '?' must land in the ASCII state for the text to round-trip.
        let jis = encode("日本\u{1F600}語", Charset::Other(e::ISO_2022_JP));
        let (back, _, bad) = e::ISO_2022_JP.decode(&jis);
        assert!(!bad);
        assert_eq!(back, "日本?語");
        let big: String = "ü".repeat(5000);
        assert_eq!(encode(&big, Charset::Other(e::WINDOWS_1252)).len(), 5000);
    }
}
