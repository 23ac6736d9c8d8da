//! A YAML tree that remembers where every node came from.
//!
//! `serde` deserializers stop at the first error and lose positions; validation needs every
//! problem with its line and column, so the repository files are parsed into this tree first and
//! decoded by hand (see `decode`). Anchors, aliases and `<<` merge keys are resolved here, with
//! limits on nesting depth and on alias expansion so a hostile file cannot exhaust memory.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::Pos;

/// Deepest nesting accepted; real configuration is a handful of levels deep.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may expand to once aliases are resolved.
pub const MAX_NODES: usize = 100_000;

/// A scalar's text and whether it was written unquoted (only plain scalars can mean null,
/// a boolean or a number).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The text as YAML delivered it, escapes resolved.
    pub text: String,
    /// Unquoted in the source.
    pub plain: bool,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    /// Any scalar.
    Scalar(Scalar),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order, with `<<` merges applied.
    Map(Vec<(Node, Node)>),
}

/// A node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The content.
    pub value: Value,
    /// Where it starts in the file.
    pub pos: Pos,
}

/// A file that is not YAML at all; parsing cannot go on past it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    /// Where the parser gave up.
    pub pos: Pos,
    /// What it found.
    pub message: String,
}

/// A parsed document and the non-fatal problems met on the way (duplicate keys).
#[derive(Debug, Clone)]
pub struct Document {
    /// The root node; `Value::Null` for an empty file.
    pub root: Node,
    /// Problems that do not stop decoding, with their positions.
    pub problems: Vec<(Pos, String)>,
}

impl Node {
    /// A short description of the node's type for messages: "a mapping", "a list", ...
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing (null)",
            Value::Scalar(s) if s.plain && parse_bool(&s.text).is_some() => "a boolean",
            Value::Scalar(s) if s.plain && s.text.parse::<f64>().is_ok() => "a number",
            Value::Scalar(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The scalar text, if this is a scalar.
    pub fn scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    /// True for null.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Every scalar below this node (including itself), with its position, depth first.
    pub fn scalars(&self) -> Vec<(&str, Pos)> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(n) = stack.pop() {
            match &n.value {
                Value::Null => {}
                Value::Scalar(s) => out.push((s.text.as_str(), n.pos)),
                Value::Seq(items) => stack.extend(items.iter().rev()),
                Value::Map(entries) => {
                    for (k, v) in entries.iter().rev() {
                        stack.push(v);
                        stack.push(k);
                    }
                }
            }
        }
        out
    }
}

/// YAML 1.2 core-schema booleans.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn pos_of(m: &Marker) -> Pos {
    Pos {
        line: m.line().max(1),
        col: m.col() + 1,
    }
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    problems: Vec<(Pos, String)>,
    root: Option<Node>,
}

fn node_count(n: &Node) -> usize {
    let mut count = 0;
    let mut stack = vec![n];
    while let Some(n) = stack.pop() {
        count += 1;
        match &n.value {
            Value::Seq(items) => stack.extend(items.iter()),
            Value::Map(entries) => {
                for (k, v) in entries {
                    stack.push(k);
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    count
}

impl Builder {
    fn count(&mut self, n: usize, pos: Pos) -> Result<(), SyntaxError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                pos,
                message: format!(
                    "document expands to more than {MAX_NODES} nodes (aliases nested too deep?)"
                ),
            });
        }
        Ok(())
    }

    /// Attaches a finished node to its parent (or makes it the root).
    fn attach(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            let size = node_count(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_some() {
                    return Err(SyntaxError {
                        pos: node.pos,
                        message: "more than one YAML document in this file; keep one".into(),
                    });
                }
                self.root = Some(node);
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }

    fn finish_map(&mut self, pos: Pos, entries: Vec<(Node, Node)>) -> Node {
        // The parser marks a block mapping after its first key; its first key is where a
        // reader sees it start.
        let pos = entries.first().map_or(pos, |(k, _)| k.pos.min(pos));
        let mut explicit: Vec<(Node, Node)> = Vec::with_capacity(entries.len());
        let mut merged: Vec<(Node, Node)> = Vec::new();
        let mut seen: HashMap<String, Pos> = HashMap::new();
        for (k, v) in entries {
            let is_merge = matches!(&k.value, Value::Scalar(s) if s.plain && s.text == "<<");
            if is_merge {
                let sources = match v.value {
                    Value::Map(_) => vec![v],
                    Value::Seq(items) => items,
                    _ => {
                        self.problems.push((
                            v.pos,
                            "a `<<` merge key needs a mapping or a list of mappings".into(),
                        ));
                        continue;
                    }
                };
                for src in sources {
                    match src.value {
                        Value::Map(src_entries) => merged.extend(src_entries),
                        _ => self.problems.push((
                            src.pos,
                            "a `<<` merge key needs a mapping or a list of mappings".into(),
                        )),
                    }
                }
                continue;
            }
            if let Some(text) = k.scalar() {
                if let Some(first) = seen.get(text) {
                    self.problems.push((
                        k.pos,
                        format!(
                            "duplicate key `{text}` (first defined at line {}); keep one",
                            first.line
                        ),
                    ));
                    continue;
                }
                seen.insert(text.to_owned(), k.pos);
            }
            explicit.push((k, v));
        }
        for (k, v) in merged {
            let key = k.scalar().map(str::to_owned);
            match key {
                Some(text) if seen.contains_key(&text) => {}
                Some(text) => {
                    seen.insert(text, k.pos);
                    explicit.push((k, v));
                }
                None => explicit.push((k, v)),
            }
        }
        Node {
            value: Value::Map(explicit),
            pos,
        }
    }
}

/// Parses one YAML document. An empty file gives a null root.
pub fn parse(text: &str) -> Result<Document, SyntaxError> {
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        problems: Vec::new(),
        root: None,
    };
    loop {
        let (event, mark) = parser.next_token().map_err(|e| SyntaxError {
            pos: pos_of(e.marker()),
            message: format!("malformed YAML: {}", e.info()),
        })?;
        let pos = pos_of(&mark);
        match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
            Event::Alias(id) => {
                let (node, size) = b.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                    pos,
                    message: "alias refers to an unknown anchor".into(),
                })?;
                b.count(size, pos)?;
                let mut node = node;
                node.pos = pos;
                b.attach(node, 0)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                b.count(1, pos)?;
                let plain = style == TScalarStyle::Plain && tag.is_none();
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar(Scalar { text, plain })
                };
                b.attach(Node { value, pos }, anchor)?;
            }
            Event::SequenceStart(anchor, _) => {
                b.count(1, pos)?;
                if b.stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        pos,
                        message: format!("nested more than {MAX_DEPTH} levels deep"),
                    });
                }
                b.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                b.count(1, pos)?;
                if b.stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        pos,
                        message: format!("nested more than {MAX_DEPTH} levels deep"),
                    });
                }
                b.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                });
            }
            Event::SequenceEnd => match b.stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => {
                    b.attach(
                        Node {
                            value: Value::Seq(items),
                            pos,
                        },
                        anchor,
                    )?;
                }
                _ => {
                    return Err(SyntaxError {
                        pos,
                        message: "malformed YAML: unbalanced sequence".into(),
                    })
                }
            },
            Event::MappingEnd => match b.stack.pop() {
                Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) => {
                    let node = b.finish_map(pos, entries);
                    b.attach(node, anchor)?;
                }
                _ => {
                    return Err(SyntaxError {
                        pos,
                        message: "malformed YAML: unbalanced mapping".into(),
                    })
                }
            },
        }
    }
    let root = b.root.unwrap_or(Node {
        value: Value::Null,
        pos: Pos::START,
    });
    Ok(Document {
        root,
        problems: b.problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_keys(n: &Node) -> Vec<String> {
        match &n.value {
            Value::Map(e) => e
                .iter()
                .filter_map(|(k, _)| k.scalar())
                .map(String::from)
                .collect(),
            _ => panic!("not a map"),
        }
    }

    #[test]
    fn positions_are_one_based() {
        let doc = parse("a: 1\nbb:\n  c: x\n").expect("parses");
        let Value::Map(entries) = &doc.root.value else {
            panic!("map expected")
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 1, col: 4 });
        assert_eq!(entries[1].0.pos, Pos { line: 2, col: 1 });
        let Value::Map(inner) = &entries[1].1.value else {
            panic!("map expected")
        };
        assert_eq!(inner[0].0.pos, Pos { line: 3, col: 3 });
    }

    #[test]
    fn empty_file_is_null() {
        assert!(parse("").expect("parses").root.is_null());
        assert!(parse("# only a comment\n").expect("parses").root.is_null());
    }

    #[test]
    fn quoted_null_is_a_string() {
        let doc = parse("a: 'null'\nb: null\n").expect("parses");
        let Value::Map(e) = &doc.root.value else {
            panic!()
        };
        assert_eq!(e[0].1.scalar(), Some("null"));
        assert!(e[1].1.is_null());
    }

    #[test]
    fn duplicate_keys_are_reported_and_first_kept() {
        let doc = parse("a: 1\na: 2\n").expect("parses");
        assert_eq!(doc.problems.len(), 1);
        assert_eq!(doc.problems[0].0, Pos { line: 2, col: 1 });
        assert!(doc.problems[0].1.contains("duplicate key `a`"));
        let Value::Map(e) = &doc.root.value else {
            panic!()
        };
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].1.scalar(), Some("1"));
    }

    #[test]
    fn merge_keys_and_aliases() {
        let doc = parse("base: &b {x: 1, y: 2}\nsvc:\n  <<: *b\n  y: 3\n").expect("parses");
        let Value::Map(e) = &doc.root.value else {
            panic!()
        };
        assert_eq!(map_keys(&e[1].1), vec!["y", "x"]);
        let Value::Map(svc) = &e[1].1.value else {
            panic!()
        };
        assert_eq!(svc[0].1.scalar(), Some("3"));
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&text).expect_err("must refuse");
        assert!(err.message.contains("more than"), "{}", err.message);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(200) + &"]".repeat(200);
        let err = parse(&text).expect_err("must refuse");
        assert!(err.message.contains("nested"), "{}", err.message);
    }

    #[test]
    fn malformed_yaml_has_position() {
        let err = parse("a: [1, 2\nb: 3\n").expect_err("malformed");
        assert!(err.message.starts_with("malformed YAML"), "{}", err.message);
        assert!(err.pos.line >= 1);
    }

    #[test]
    fn two_documents_are_refused() {
        let err = parse("a: 1\n---\nb: 2\n").expect_err("two docs");
        assert!(err.message.contains("more than one YAML document"));
    }
}
