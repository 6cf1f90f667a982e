//! The one path syntax used everywhere — code, mapping files, error messages and docs:
//! `SEG[n].field[rep].component.subcomponent`, all 1-based, e.g. `PID.3[2].4.1`, `OBX[2].5`, `MSH.9.1`.
//!
//! It is hl7-parser's query syntax plus `[*]` ("every segment" / "every repetition"), which mappings need for
//! repeating identifiers and result segments. Parsing is done with small nom parsers driven step by step, so that
//! an error can name the exact character position it stumbled on.

use std::fmt;
use std::str::FromStr;

use nom::IResult;
use nom::Parser;
use nom::bytes::complete::take_while_m_n;
use nom::character::complete::{char as ch, digit1};
use nom::combinator::recognize;

/// Which segment occurrence or field repetition a path selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Index {
    /// Not given: the first one (for a whole field without components: the whole field, all repetitions).
    #[default]
    Default,
    /// `[n]`, 1-based.
    Nth(usize),
    /// `[*]`: every one.
    All,
}

/// A parsed path. `PID.3` is the whole field (all repetitions, raw); `PID.3.1` is component 1 of the first
/// repetition; `PID.3[*].1` is component 1 of every repetition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub segment: String,
    pub segment_index: Index,
    pub field: Option<usize>,
    pub repetition: Index,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

/// A path that does not parse, with the 0-based character position of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?}: {message}")]
pub struct PathError {
    pub path: String,
    pub position: usize,
    pub message: String,
}

type Res<'a, T> = IResult<&'a str, T>;

fn segment_id(i: &str) -> Res<'_, &str> {
    recognize((
        take_while_m_n(1, 1, |c: char| c.is_ascii_uppercase()),
        take_while_m_n(2, 2, |c: char| c.is_ascii_uppercase() || c.is_ascii_digit()),
    ))
    .parse(i)
}

fn number(i: &str) -> Res<'_, &str> {
    digit1(i)
}

/// Step-by-step parser state: the remaining input and where it starts in the original path.
struct Cursor<'p> {
    path: &'p str,
    rest: &'p str,
}

impl<'p> Cursor<'p> {
    fn pos(&self) -> usize {
        // Character position, so that a non-ASCII path still points at the right character.
        self.path[..self.path.len() - self.rest.len()]
            .chars()
            .count()
    }

    fn err(&self, message: impl Into<String>) -> PathError {
        PathError {
            path: self.path.to_string(),
            position: self.pos(),
            message: format!("{} at position {}", message.into(), self.pos()),
        }
    }

    fn eat(&mut self, c: char) -> bool {
        match ch::<&str, nom::error::Error<&str>>(c).parse(self.rest) {
            Ok((rest, _)) => {
                self.rest = rest;
                true
            }
            Err(_) => false,
        }
    }

    /// A 1-based number; `after` names what precedes it, for the error message.
    fn number(&mut self, after: &str) -> Result<usize, PathError> {
        match number(self.rest) {
            Ok((rest, digits)) => {
                let n: usize = digits
                    .parse()
                    .map_err(|_| self.err(format!("number too large after {after}")))?;
                if n == 0 {
                    return Err(self.err(format!("positions are 1-based, found 0 after {after}")));
                }
                self.rest = rest;
                Ok(n)
            }
            Err(_) => Err(self.err(format!("expected a number after {after}"))),
        }
    }

    /// An optional `[n]` or `[*]`.
    fn index(&mut self) -> Result<Index, PathError> {
        if !self.eat('[') {
            return Ok(Index::Default);
        }
        let idx = if self.eat('*') {
            Index::All
        } else {
            match self.number("'['") {
                Ok(n) => Index::Nth(n),
                Err(e) if e.message.starts_with("expected") => {
                    return Err(self.err("expected a number or '*' after '['"));
                }
                Err(e) => return Err(e),
            }
        };
        if !self.eat(']') {
            return Err(self.err("expected ']'"));
        }
        Ok(idx)
    }
}

impl FromStr for Path {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Path, PathError> {
        let mut c = Cursor { path: s, rest: s };
        let segment = match segment_id(c.rest) {
            Ok((rest, id)) => {
                c.rest = rest;
                id.to_string()
            }
            Err(_) => {
                return Err(c.err(
                    "expected a segment ID (an uppercase letter then two uppercase letters or digits)",
                ));
            }
        };
        let segment_index = c.index()?;
        let mut path = Path {
            segment,
            segment_index,
            field: None,
            repetition: Index::Default,
            component: None,
            subcomponent: None,
        };
        if c.eat('.') {
            path.field = Some(c.number("'.'")?);
            path.repetition = c.index()?;
            if c.eat('.') {
                path.component = Some(c.number("'.'")?);
                if c.eat('.') {
                    path.subcomponent = Some(c.number("'.'")?);
                }
            }
        }
        if !c.rest.is_empty() {
            let what = if path.subcomponent.is_some() {
                "expected the end of the path (subcomponents are the deepest level)"
            } else {
                "expected '.', '[' or the end of the path"
            };
            return Err(c.err(what));
        }
        Ok(path)
    }
}

impl fmt::Display for Path {
    /// Writes the path back in the syntax it was parsed from, so it round-trips.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn idx(f: &mut fmt::Formatter<'_>, i: Index) -> fmt::Result {
            match i {
                Index::Default => Ok(()),
                Index::Nth(n) => write!(f, "[{n}]"),
                Index::All => f.write_str("[*]"),
            }
        }
        f.write_str(&self.segment)?;
        idx(f, self.segment_index)?;
        if let Some(field) = self.field {
            write!(f, ".{field}")?;
            idx(f, self.repetition)?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on bad fixtures
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let cases: &[(&str, Path)] = &[
            (
                "PID.3[2].4.1",
                Path {
                    segment: "PID".into(),
                    segment_index: Index::Default,
                    field: Some(3),
                    repetition: Index::Nth(2),
                    component: Some(4),
                    subcomponent: Some(1),
                },
            ),
            (
                "OBX[2].5",
                Path {
                    segment: "OBX".into(),
                    segment_index: Index::Nth(2),
                    field: Some(5),
                    repetition: Index::Default,
                    component: None,
                    subcomponent: None,
                },
            ),
            (
                "PID.3[*].1",
                Path {
                    segment: "PID".into(),
                    segment_index: Index::Default,
                    field: Some(3),
                    repetition: Index::All,
                    component: Some(1),
                    subcomponent: None,
                },
            ),
            (
                "OBX[*].5",
                Path {
                    segment: "OBX".into(),
                    segment_index: Index::All,
                    field: Some(5),
                    repetition: Index::Default,
                    component: None,
                    subcomponent: None,
                },
            ),
            (
                "ZP1",
                Path {
                    segment: "ZP1".into(),
                    segment_index: Index::Default,
                    field: None,
                    repetition: Index::Default,
                    component: None,
                    subcomponent: None,
                },
            ),
        ];
        for (text, want) in cases {
            let p: Path = text.parse().unwrap();
            assert_eq!(&p, want, "{text}");
            assert_eq!(p.to_string(), *text);
        }
        for text in ["MSH.9.1", "PID[1].3[1].4.2", "NK1[*].2[*]", "MSH.2"] {
            let p: Path = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
    }

    #[test]
    fn errors_point_at_the_character() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "PID.3[x]",
                6,
                "expected a number or '*' after '[' at position 6",
            ),
            ("PID.3[2", 7, "expected ']' at position 7"),
            ("PID.", 4, "expected a number after '.' at position 4"),
            (
                "PID.0",
                4,
                "positions are 1-based, found 0 after '.' at position 4",
            ),
            ("pid.3", 0, "expected a segment ID"),
            ("PI", 0, "expected a segment ID"),
            ("PID.3.1.2.5", 9, "expected the end of the path"),
            (
                "PID-3",
                3,
                "expected '.', '[' or the end of the path at position 3",
            ),
            ("PID.3x", 5, "expected '.', '[' or the end of the path"),
            ("PID[0]", 4, "positions are 1-based"),
            ("PID.99999999999999999999999", 4, "number too large"),
            ("", 0, "expected a segment ID"),
            ("PÏD", 0, "expected a segment ID"),
            ("PID.3.ü", 6, "expected a number after '.' at position 6"),
        ];
        for (text, pos, msg) in cases {
            let e = text.parse::<Path>().unwrap_err();
            assert_eq!(e.position, *pos, "{text}: {e}");
            assert!(e.message.starts_with(msg), "{text}: {}", e.message);
            assert_eq!(e.path, *text);
        }
    }
}
