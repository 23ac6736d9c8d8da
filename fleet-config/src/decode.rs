//! Typed reading of the positioned YAML tree, reporting every problem instead of the first.
//!
//! Each getter returns `None` after recording a diagnostic, so a decoder can go on and find
//! the next problem; the caller treats a `None` as "already reported".

use std::time::Duration;

use crate::diag::{Diagnostics, Pos};
use crate::units::{parse_duration, parse_size, Percent};
use crate::yaml::{parse_bool, Node, Value};

/// Where decoded problems go: the file being read and the shared collector.
pub struct Ctx<'d> {
    /// Repository-relative path of the file being decoded.
    pub file: String,
    /// The collector every problem goes to.
    pub diags: &'d mut Diagnostics,
}

/// The entries of a mapping whose keys have been checked against what is allowed.
pub struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node, &'n Node)>,
    /// Where the mapping starts.
    pub pos: Pos,
}

impl<'n> Fields<'n> {
    /// The value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, v)| *v)
    }

    /// All entries (key, key node, value node), in source order, unknown keys included.
    pub fn iter(&self) -> impl Iterator<Item = (&'n str, &'n Node, &'n Node)> + '_ {
        self.entries.iter().copied()
    }

    /// The value under `key`, or an error naming the missing key.
    pub fn required(&self, ctx: &mut Ctx<'_>, key: &str, what: &str) -> Option<&'n Node> {
        let v = self.get(key);
        if v.is_none() {
            ctx.error(
                self.pos,
                format!("{what} is missing the required key `{key}`"),
            );
        }
        v
    }
}

/// The closest allowed word to a misspelt one, when it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// How a mapping's keys are checked.
pub struct KeyRules<'a> {
    /// Keys that may appear.
    pub allowed: &'a [&'a str],
    /// Keys with a message of their own (e.g. `build`: devices do not build images).
    pub special: &'a [(&'a str, &'a str)],
    /// Whether `x-*` extension keys are accepted (Compose allows them in some places).
    pub extensions: bool,
}

impl<'a> KeyRules<'a> {
    /// Only the listed keys.
    pub const fn only(allowed: &'a [&'a str]) -> Self {
        KeyRules {
            allowed,
            special: &[],
            extensions: false,
        }
    }
}

impl Ctx<'_> {
    /// Records an error in this file.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.error(&self.file, pos, message);
    }

    /// Records a warning in this file.
    pub fn warning(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.warning(&self.file, pos, message);
    }

    fn wrong_type(&mut self, node: &Node, what: &str, expected: &str) {
        self.error(
            node.pos,
            format!("{what} must be {expected}, found {}", node.kind_name()),
        );
    }

    /// A mapping whose keys are all in `allowed`; unknown keys are reported with what is allowed.
    pub fn map<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        self.map_with(node, what, &KeyRules::only(allowed))
    }

    /// Like [`Ctx::map`] with special messages and extension keys.
    pub fn map_with<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        rules: &KeyRules<'_>,
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, what, "a mapping");
            return None;
        };
        let mut fields = Fields {
            entries: Vec::with_capacity(entries.len()),
            pos: node.pos,
        };
        for (k, v) in entries {
            let Some(key) = k.scalar() else {
                self.error(k.pos, format!("keys in {what} must be plain names"));
                continue;
            };
            if rules.allowed.contains(&key) {
                fields.entries.push((key, k, v));
                continue;
            }
            if rules.extensions && key.starts_with("x-") {
                fields.entries.push((key, k, v));
                continue;
            }
            if let Some((_, msg)) = rules.special.iter().find(|(s, _)| *s == key) {
                self.error(k.pos, format!("`{key}` in {what}: {msg}"));
                continue;
            }
            let hint = suggest(key, rules.allowed)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            self.error(
                k.pos,
                format!(
                    "unknown key `{key}` in {what}{hint}; allowed keys: {}",
                    rules.allowed.join(", ")
                ),
            );
        }
        Some(fields)
    }

    /// Any scalar as text (numbers and booleans as written).
    pub fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(s) => Some(s.text.clone()),
            _ => {
                self.wrong_type(node, what, "a string");
                None
            }
        }
    }

    /// A non-empty string.
    pub fn nonempty_string(&mut self, node: &Node, what: &str) -> Option<String> {
        let s = self.string(node, what)?;
        if s.trim().is_empty() {
            self.error(node.pos, format!("{what} must not be empty"));
            return None;
        }
        Some(s)
    }

    /// `true` or `false`.
    pub fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar(s) if s.plain => match parse_bool(&s.text) {
                Some(b) => Some(b),
                None => {
                    self.error(
                        node.pos,
                        format!("{what} must be true or false, found `{}`", s.text),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(node, what, "true or false");
                None
            }
        }
    }

    /// A whole number, 0 or more.
    pub fn uint(&mut self, node: &Node, what: &str) -> Option<u64> {
        match &node.value {
            Value::Scalar(s) if s.plain => match s.text.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(
                        node.pos,
                        format!("{what} must be a whole number, found `{}`", s.text),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(node, what, "a whole number");
                None
            }
        }
    }

    /// A whole number within `lo..=hi`.
    pub fn uint_in(&mut self, node: &Node, what: &str, lo: u64, hi: u64) -> Option<u64> {
        let n = self.uint(node, what)?;
        if n < lo || n > hi {
            self.error(
                node.pos,
                format!("{what} must be between {lo} and {hi}, found {n}"),
            );
            return None;
        }
        Some(n)
    }

    /// A number, quoted or not (`cpus: "0.5"` is common in Compose files).
    pub fn number(&mut self, node: &Node, what: &str) -> Option<f64> {
        match &node.value {
            Value::Scalar(s) => match s.text.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => Some(n),
                _ => {
                    self.error(
                        node.pos,
                        format!("{what} must be a number, found `{}`", s.text),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(node, what, "a number");
                None
            }
        }
    }

    /// A duration such as `15m`.
    pub fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let Value::Scalar(s) = &node.value else {
            self.wrong_type(node, what, "a duration such as `30s` or `15m`");
            return None;
        };
        match parse_duration(&s.text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(node.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    /// A percentage such as `5%`; with `allow_bare`, also `5`.
    pub fn percent(&mut self, node: &Node, what: &str, allow_bare: bool) -> Option<Percent> {
        let Value::Scalar(s) = &node.value else {
            self.wrong_type(node, what, "a percentage such as `5%`");
            return None;
        };
        match Percent::parse(&s.text, allow_bare) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(node.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    /// A byte size such as `500MB`, or a number of bytes.
    pub fn size(&mut self, node: &Node, what: &str) -> Option<u64> {
        let Value::Scalar(s) = &node.value else {
            self.wrong_type(node, what, "a size such as `512MB`");
            return None;
        };
        match parse_size(&s.text) {
            Ok(n) => Some(n),
            Err(e) => {
                self.error(node.pos, format!("{what}: {e}"));
                None
            }
        }
    }

    /// A list.
    pub fn seq<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(node, what, "a list");
                None
            }
        }
    }

    /// A list of strings; with `allow_single`, one string stands for a list of one.
    pub fn string_list(
        &mut self,
        node: &Node,
        what: &str,
        allow_single: bool,
    ) -> Option<Vec<(String, Pos)>> {
        match &node.value {
            Value::Scalar(s) if allow_single => Some(vec![(s.text.clone(), node.pos)]),
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(s) = self.string(item, &format!("each entry of {what}")) {
                        out.push((s, item.pos));
                    }
                }
                Some(out)
            }
            _ => {
                let expected = if allow_single {
                    "a string or a list of strings"
                } else {
                    "a list of strings"
                };
                self.wrong_type(node, what, expected);
                None
            }
        }
    }

    /// A mapping of names to scalar values, or a list of `NAME=value` strings (the two forms
    /// Compose accepts for `environment` and `labels`). A name without a value maps to `None`.
    pub fn key_values(
        &mut self,
        node: &Node,
        what: &str,
    ) -> Option<Vec<(String, Pos, Option<String>)>> {
        match &node.value {
            Value::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let Some(key) = k.scalar() else {
                        self.error(k.pos, format!("names in {what} must be plain strings"));
                        continue;
                    };
                    let value = match &v.value {
                        Value::Null => None,
                        Value::Scalar(s) => Some(s.text.clone()),
                        _ => {
                            self.error(
                                v.pos,
                                format!(
                                    "the value of `{key}` in {what} must be a string, found {}",
                                    v.kind_name()
                                ),
                            );
                            continue;
                        }
                    };
                    out.push((key.to_owned(), v.pos, value));
                }
                Some(out)
            }
            Value::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let Some(text) = self.string(item, &format!("each entry of {what}")) else {
                        continue;
                    };
                    match text.split_once('=') {
                        Some((k, v)) => out.push((k.to_owned(), item.pos, Some(v.to_owned()))),
                        None => out.push((text, item.pos, None)),
                    }
                }
                Some(out)
            }
            _ => {
                self.wrong_type(node, what, "a mapping or a list of `NAME=value` strings");
                None
            }
        }
    }
}

/// Parses `text` (a standalone YAML file such as an agent's or the controller's configuration,
/// named `file` in messages) and decodes its root with `decode`. Returns the value, or every
/// error (syntax, duplicate keys, decoding) sorted by place.
pub fn decode_document<T>(
    text: &str,
    file: &str,
    decode: impl FnOnce(&mut Ctx<'_>, &Node) -> Option<T>,
) -> Result<T, Vec<crate::diag::Diagnostic>> {
    let mut diags = Diagnostics::new();
    let value = {
        let mut ctx = Ctx {
            file: file.to_owned(),
            diags: &mut diags,
        };
        match crate::yaml::parse(text) {
            Ok(doc) => {
                for (pos, msg) in doc.problems {
                    ctx.error(pos, msg);
                }
                decode(&mut ctx, &doc.root)
            }
            Err(e) => {
                ctx.error(e.pos, e.message);
                None
            }
        }
    };
    match value {
        Some(v) if !diags.has_errors() => Ok(v),
        _ => Err(diags
            .sorted()
            .into_iter()
            .filter(|d| d.severity == crate::diag::Severity::Error)
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse;

    #[test]
    fn unknown_keys_name_the_key_and_what_is_allowed() {
        let doc = parse("bake: 1m\nbakee: 2m\n").expect("parses");
        let mut diags = Diagnostics::new();
        let mut ctx = Ctx {
            file: "fleet.yaml".into(),
            diags: &mut diags,
        };
        let f = ctx
            .map(&doc.root, "`rollout`", &["bake", "waves"])
            .expect("a map");
        assert!(f.get("bake").is_some());
        let all = diags.sorted();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].to_string(),
            "fleet.yaml:2:1: error: unknown key `bakee` in `rollout` (did you mean `bake`?); allowed keys: bake, waves"
        );
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            suggest("healthchek", &["healthcheck", "image"]),
            Some("healthcheck")
        );
        assert_eq!(suggest("links", &["healthcheck", "image"]), None);
    }

    #[test]
    fn key_values_accept_both_forms() {
        let doc = parse("a: [X=1, Y, Z=a=b]\nb: {X: 1, Y: null}\n").expect("parses");
        let Value::Map(e) = &doc.root.value else {
            panic!()
        };
        let mut diags = Diagnostics::new();
        let mut ctx = Ctx {
            file: "f".into(),
            diags: &mut diags,
        };
        let list = ctx.key_values(&e[0].1, "env").expect("list form");
        let list: Vec<_> = list.into_iter().map(|(k, _, v)| (k, v)).collect();
        assert_eq!(
            list,
            vec![
                ("X".into(), Some("1".into())),
                ("Y".into(), None),
                ("Z".into(), Some("a=b".into()))
            ]
        );
        let map = ctx.key_values(&e[1].1, "env").expect("map form");
        assert_eq!(map[0].2.as_deref(), Some("1"));
        assert_eq!(map[1].2, None);
        assert!(diags.is_empty());
    }
}
