//! HL7 v2 escape sequences: reading (`unescape`) and writing (`escape`) values.
//!
//! Raw values keep their escape sequences; only decoded values resolve them, and only on demand. Decoding
//! borrows when there is nothing to resolve. Scanning works on the escape character, which is always ASCII, so
//! positions are always on character boundaries: non-ASCII text around escapes (`Müller\F\x`, `ÄÖÜ\S\y`) works,
//! where hl7-parser mixes character and byte positions and mis-decodes or panics.
//!
//! What each sequence becomes:
//! - `\F\ \S\ \T\ \R\ \E\` → the field, component, subcomponent, repetition and escape characters;
//!   `\P\` → the truncation character when MSH-2 declares one (otherwise kept literally).
//! - `\Xhh…\` → those bytes, read as UTF-8, or as Latin-1 byte by byte if they are not valid UTF-8
//!   (an odd number of hex digits or a non-hex digit: kept literally).
//! - `\.br\` and `\.sp\` → `"\n"`: FHIR strings and markdown want line breaks, not HL7 formatting commands.
//!   `\.spN\` → N line breaks (at most 100). Other formatting commands (`\.in+4\`, `\.ce\`, …) stay literal so
//!   that nothing is silently lost.
//! - `\H\ \N\` (highlighting on/off) → removed: there is no plain-text rendering of highlighting.
//! - `\Cxxyy\ \Mxxyy\ \Mxxyyzz\` (character set switches) → removed: the text is already decoded to Unicode.
//! - `\Z…\` (locally defined) and anything unknown → kept literally, as is an escape character without a
//!   closing one.

use std::borrow::Cow;

use memchr::memchr;

use super::parse::Separators;

/// Resolves escape sequences in a raw value; see the module documentation for each sequence.
pub fn unescape<'a>(raw: &'a str, seps: &Separators) -> Cow<'a, str> {
    let Some(esc) = seps.escape else {
        return Cow::Borrowed(raw);
    };
    let bytes = raw.as_bytes();
    let Some(first) = memchr(esc, bytes) else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(raw.get(..first).unwrap_or(""));
    let mut i = first;
    while i < bytes.len() {
        // Invariant: bytes[i] == esc.
        let Some(len) = memchr(esc, &bytes[i + 1..]) else {
            // Unterminated: keep literally.
            out.push_str(raw.get(i..).unwrap_or(""));
            return Cow::Owned(out);
        };
        let close = i + 1 + len;
        let content = raw.get(i + 1..close).unwrap_or("");
        if !resolve(content, seps, &mut out) {
            out.push_str(raw.get(i..=close).unwrap_or(""));
        }
        let next = close + 1;
        match memchr(esc, &bytes[next..]) {
            Some(j) => {
                out.push_str(raw.get(next..next + j).unwrap_or(""));
                i = next + j;
            }
            None => {
                out.push_str(raw.get(next..).unwrap_or(""));
                break;
            }
        }
    }
    Cow::Owned(out)
}

/// Appends what the escape sequence `content` (without its delimiters) stands for; `false` means "keep it
/// literally".
fn resolve(content: &str, seps: &Separators, out: &mut String) -> bool {
    let push = |out: &mut String, b: u8| out.push(char::from(b));
    match content {
        "F" => push(out, seps.field),
        "S" => push(out, seps.component),
        "T" => push(out, seps.subcomponent),
        "R" => push(out, seps.repetition),
        "E" => match seps.escape {
            Some(e) => push(out, e),
            None => return false,
        },
        "P" => match seps.truncation {
            Some(t) => push(out, t),
            None => return false,
        },
        "H" | "N" => {}
        ".br" | ".sp" => out.push('\n'),
        _ => {
            if let Some(hex) = content.strip_prefix('X') {
                return hex_bytes(hex, out);
            }
            if let Some(n) = content.strip_prefix(".sp") {
                let n = n.strip_prefix('+').unwrap_or(n);
                return match n.parse::<usize>() {
                    Ok(n) if n <= 100 => {
                        out.extend(std::iter::repeat_n('\n', n));
                        true
                    }
                    _ => false,
                };
            }
            if let Some(h) = content.strip_prefix('C') {
                return h.len() == 4 && h.bytes().all(|b| b.is_ascii_hexdigit());
            }
            if let Some(h) = content.strip_prefix('M') {
                return (h.len() == 4 || h.len() == 6) && h.bytes().all(|b| b.is_ascii_hexdigit());
            }
            return false;
        }
    }
    true
}

/// Decodes `\Xhh…\`: the bytes as UTF-8 when valid, otherwise as Latin-1 byte by byte (the common case of a
/// sender escaping a single 8-bit character).
fn hex_bytes(hex: &str, out: &mut String) -> bool {
    let h = hex.as_bytes();
    if h.is_empty() || !h.len().is_multiple_of(2) || !h.iter().all(u8::is_ascii_hexdigit) {
        return false;
    }
    let val = |b: u8| match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b.wrapping_sub(b'A').wrapping_add(10),
    };
    let bytes: Vec<u8> = h
        .chunks_exact(2)
        .map(|p| val(p[0]) << 4 | val(p[1]))
        .collect();
    match std::str::from_utf8(&bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.extend(bytes.iter().map(|&b| char::from(b))),
    }
    true
}

/// Escapes text for writing into a message: the delimiters become `\F\ \S\ \T\ \R\ \E\` (and `\P\` for a
/// declared truncation character); CR and LF become `\X0D\` and `\X0A\`.
///
/// `\X0D\`/`\X0A\` rather than `\.br\` because they round-trip exactly through [`unescape`] and are valid in
/// every data type, whereas `\.br\` is a formatted-text (FT) command that receivers may only honour in FT fields.
/// Borrows when nothing needs escaping. Without an escape character nothing can be escaped and the text is
/// returned unchanged.
pub fn escape<'a>(text: &'a str, seps: &Separators) -> Cow<'a, str> {
    let Some(esc) = seps.escape else {
        return Cow::Borrowed(text);
    };
    let special = |b: u8| {
        b == seps.field
            || b == seps.component
            || b == seps.subcomponent
            || b == seps.repetition
            || b == esc
            || Some(b) == seps.truncation
            || b == b'\r'
            || b == b'\n'
    };
    let Some(first) = text.bytes().position(special) else {
        return Cow::Borrowed(text);
    };
    let e = char::from(esc);
    let mut out = String::with_capacity(text.len() + 16);
    out.push_str(text.get(..first).unwrap_or(""));
    for c in text.get(first..).unwrap_or("").chars() {
        let code = match c {
            '\r' => Some("X0D"),
            '\n' => Some("X0A"),
            _ if !c.is_ascii() => None,
            _ => {
                let b = c as u8;
                if b == seps.field {
                    Some("F")
                } else if b == seps.component {
                    Some("S")
                } else if b == seps.subcomponent {
                    Some("T")
                } else if b == seps.repetition {
                    Some("R")
                } else if b == esc {
                    Some("E")
                } else if Some(b) == seps.truncation {
                    Some("P")
                } else {
                    None
                }
            }
        };
        match code {
            Some(code) => {
                out.push(e);
                out.push_str(code);
                out.push(e);
            }
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    fn seps() -> Separators {
        Separators {
            truncation: Some(b'#'),
            ..Separators::default()
        }
    }

    #[test]
    fn unescapes_every_sequence() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("a\\F\\b", "a|b"),
            ("a\\S\\b", "a^b"),
            ("a\\T\\b", "a&b"),
            ("a\\R\\b", "a~b"),
            ("a\\E\\b", "a\\b"),
            ("a\\P\\b", "a#b"),
            ("\\F\\\\S\\", "|^"),
            ("Müller\\F\\x", "Müller|x"),
            ("ÄÖÜ\\S\\y", "ÄÖÜ^y"),
            ("a\\X0D0A\\b", "a\r\nb"),
            ("\\X41\\", "A"),
            ("\\Xc3a9\\", "é"),
            ("\\XE9\\", "é"),
            ("\\XE9FC\\", "éü"),
            ("\\X4\\", "\\X4\\"),
            ("\\XZZ\\", "\\XZZ\\"),
            ("\\X\\", "\\X\\"),
            ("line\\.br\\next", "line\nnext"),
            ("a\\.sp\\b", "a\nb"),
            ("a\\.sp2\\b", "a\n\nb"),
            ("a\\.sp+3\\b", "a\n\n\nb"),
            ("a\\.sp999\\b", "a\\.sp999\\b"),
            ("\\H\\bold\\N\\ text", "bold text"),
            ("\\C2842\\abc\\C2B42\\", "abc"),
            ("\\M2442\\x\\M244228\\", "x"),
            ("\\C28\\", "\\C28\\"),
            ("\\.in+4\\x", "\\.in+4\\x"),
            ("\\.ce\\x", "\\.ce\\x"),
            ("\\Zabc\\x", "\\Zabc\\x"),
            ("\\Q\\", "\\Q\\"),
            ("open\\F", "open\\F"),
            ("\\", "\\"),
            ("a\\\\b", "a\\\\b"),
            ("x\\F\\y\\", "x|y\\"),
            ("\\F\\ü\\S\\ö", "|ü^ö"),
        ];
        for (raw, want) in cases {
            assert_eq!(unescape(raw, &seps()), *want, "{raw}");
        }
    }

    #[test]
    fn truncation_escape_without_truncation_character_is_literal() {
        assert_eq!(unescape("a\\P\\b", &Separators::default()), "a\\P\\b");
    }

    #[test]
    fn borrows_when_nothing_to_do() {
        assert!(matches!(unescape("Müller", &seps()), Cow::Borrowed(_)));
        assert!(matches!(escape("Müller", &seps()), Cow::Borrowed(_)));
        assert!(matches!(unescape("a\\F\\b", &seps()), Cow::Owned(_)));
    }

    #[test]
    fn custom_escape_character() {
        let s = Separators {
            escape: Some(b'$'),
            ..Separators::default()
        };
        assert_eq!(unescape("a$F$b\\c", &s), "a|b\\c");
        assert_eq!(escape("a|b$c\\d", &s), "a$F$b$E$c\\d");
        let none = Separators {
            escape: None,
            ..Separators::default()
        };
        assert_eq!(unescape("a\\F\\b", &none), "a\\F\\b");
        assert_eq!(escape("a|b", &none), "a|b");
    }

    #[test]
    fn escapes_and_round_trips() {
        let cases: &[(&str, &str)] = &[
            ("a|b^c&d~e\\f#g", "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\P\\g"),
            ("line1\r\nline2", "line1\\X0D\\\\X0A\\line2"),
            ("Müller|Jörg", "Müller\\F\\Jörg"),
        ];
        for (text, want) in cases {
            let e = escape(text, &seps());
            assert_eq!(e, *want);
            assert_eq!(unescape(&e, &seps()), *text);
        }
    }
}
