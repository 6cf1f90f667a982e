//! YAML text → a small tree in which every node knows its line and column.
//!
//! Why not serde: mapping files are read by analysts, and every problem must point at a line and column. With
//! serde-saphyr, spans exist only through `Spanned<T>` wrappers, unknown keys stop deserialisation at the first
//! one, and untyped scalars are inferred YAML-1.1 style (`01` becomes the number 1, `N` may become `false`): a
//! code table keyed by `01` or `N` would silently change meaning. So this module drives `saphyr-parser` (the
//! maintained YAML 1.2 parser that serde-saphyr's own parser derives from) event by event and builds a tree of
//! maps, lists and scalars that keeps each scalar's exact text and whether it was quoted. The loader then
//! interprets the tree with the rule vocabulary in mind, collecting every problem instead of stopping at one.
//!
//! Anchors and aliases are resolved by copying the anchored node (they are rare in mapping files, and `use:`
//! rules are the intended way to share); tags are ignored.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in a file: 1-based line and column, the way editors count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One YAML node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

/// What a node holds. Map keys keep their own positions so that an unknown key can be pointed at.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A scalar's text exactly as resolved by YAML (escapes in quoted strings resolved), and whether it was
    /// plain (unquoted): only plain `true`/`false` are booleans and only a plain `~`/`null`/empty is null.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The text of a scalar that is not null.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    /// A plain `~`, `null` or nothing at all (`key:`).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if text.is_empty() || text == "~" || text == "null" || text == "Null" || text == "NULL")
    }

    /// A plain `true` or `false` (YAML 1.2 core schema spellings only).
    pub fn as_bool(&self) -> Option<bool> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A word for error messages: "a list", "a map", "the text \"x\"".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Scalar { .. } if self.is_null() => "nothing".to_string(),
            Kind::Scalar { text, .. } => format!("{text:?}"),
            Kind::Seq(_) => "a list".to_string(),
            Kind::Map(_) => "a map".to_string(),
        }
    }

    /// The position of the first character inside a scalar's text (after an opening quote), so that a problem
    /// at character `n` of a value can be pointed at exactly.
    pub fn text_start(&self) -> Pos {
        match &self.kind {
            Kind::Scalar {
                plain: false,
                text: _,
            } => Pos {
                line: self.pos.line,
                column: self.pos.column + 1,
            },
            _ => self.pos,
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

fn pos(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

/// Parses one YAML document. An empty file is an empty map (a file with only comments is allowed); a second
/// document in the same file is an error, because it would otherwise be silently ignored.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    enum Frame {
        Seq(Pos, usize, Vec<Node>),
        Map(Pos, usize, Vec<(Node, Node)>, Option<Node>),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;

    // Adds a finished node to its parent, or makes it the document's root.
    fn push(
        stack: &mut [Frame],
        root: &mut Option<Node>,
        anchors: &mut HashMap<usize, Node>,
        anchor: usize,
        node: Node,
    ) {
        if anchor > 0 {
            anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, key)) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => *key = Some(node),
            },
            None => *root = Some(node),
        }
    }

    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            pos: Pos {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_string(),
        })?;
        let at = pos(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos: at,
                        message: "a second YAML document (`---`): each mapping file holds one"
                            .into(),
                    });
                }
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let node = Node {
                    pos: at,
                    kind: Kind::Scalar {
                        text: value.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                };
                push(&mut stack, &mut root, &mut anchors, anchor, node);
            }
            Event::Alias(id) => {
                let node = match anchors.get(&id) {
                    Some(n) => Node {
                        pos: at,
                        kind: n.kind.clone(),
                    },
                    None => {
                        return Err(SyntaxError {
                            pos: at,
                            message: "an alias to an unknown anchor".into(),
                        });
                    }
                };
                push(&mut stack, &mut root, &mut anchors, 0, node);
            }
            Event::SequenceStart(anchor, _) => stack.push(Frame::Seq(at, anchor, Vec::new())),
            Event::MappingStart(anchor, _) => stack.push(Frame::Map(at, anchor, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    Some(Frame::Seq(p, a, items)) => (
                        Node {
                            pos: p,
                            kind: Kind::Seq(items),
                        },
                        a,
                    ),
                    Some(Frame::Map(p, a, entries, _)) => (
                        Node {
                            pos: p,
                            kind: Kind::Map(entries),
                        },
                        a,
                    ),
                    None => continue,
                };
                push(&mut stack, &mut root, &mut anchors, anchor, node);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(root.filter(|r| !r.is_null()).unwrap_or(Node {
        pos: Pos { line: 1, column: 1 },
        kind: Kind::Map(Vec::new()),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> (&str, bool) {
        match &n.kind {
            Kind::Scalar { text, plain } => (text, *plain),
            _ => panic!("not a scalar: {n:?}"),
        }
    }

    #[test]
    fn keeps_positions_and_scalar_text() {
        let n = parse("# comment\nmap:\n  I: inpatient\n  01: '02'\n  N: no\nlist: [a, \"b\"]\n")
            .unwrap();
        let Kind::Map(entries) = &n.kind else {
            panic!()
        };
        assert_eq!(entries[0].0.pos, Pos { line: 2, column: 1 });
        let Kind::Map(inner) = &entries[0].1.kind else {
            panic!()
        };
        assert_eq!(scalar(&inner[1].0), ("01", true));
        assert_eq!(scalar(&inner[1].1), ("'02'".trim_matches('\''), false));
        assert_eq!(inner[1].1.text_start(), Pos { line: 4, column: 8 });
        // YAML 1.1 would read `N` and `no` as booleans; here they stay text.
        assert_eq!(scalar(&inner[2].0), ("N", true));
        assert_eq!(inner[2].1.as_bool(), None);
        assert_eq!(inner[2].1.pos, Pos { line: 5, column: 6 });
        let Kind::Seq(items) = &entries[1].1.kind else {
            panic!()
        };
        assert_eq!(scalar(&items[1]), ("b", false));
        assert_eq!(
            items[1].pos,
            Pos {
                line: 6,
                column: 11
            }
        );
    }

    #[test]
    fn empty_documents_are_empty_maps_and_errors_have_positions() {
        assert_eq!(parse("# nothing\n").unwrap().kind, Kind::Map(Vec::new()));
        assert_eq!(parse("").unwrap().kind, Kind::Map(Vec::new()));
        let e = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.message.contains("second YAML document"));
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let n = parse("a: &x {k: v}\nb: *x\n").unwrap();
        let Kind::Map(entries) = &n.kind else {
            panic!()
        };
        assert_eq!(entries[0].1.kind, entries[1].1.kind);
        assert_eq!(entries[1].1.pos.line, 2);
    }
}
