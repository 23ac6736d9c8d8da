//! `${NAME}` references in a stack's `environment`: the one rule that both the validator (is
//! this value a reference or a committed secret? is it well formed?) and the agent (fill it in
//! from the device's secrets) follow, so the two cannot disagree about what a value means.
//!
//! Supported: `${NAME}`, `$NAME`, `${NAME:-default}` (default when unset or empty),
//! `${NAME-default}` (default when unset), `${NAME:?message}` / `${NAME?message}` (required),
//! and `$$` for a literal `$`. A `$` before anything else is literal, as in Compose.
//! The agent substitutes only in `environment` values; everywhere else a reference is text.

use std::collections::BTreeMap;

/// What a reference does when its variable is unset (or empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `${NAME}` or `$NAME`: the variable is required.
    Plain,
    /// `${NAME:-default}`.
    DefaultIfUnsetOrEmpty,
    /// `${NAME-default}`.
    DefaultIfUnset,
    /// `${NAME:?message}`.
    RequiredNonEmpty,
    /// `${NAME?message}`.
    Required,
}

/// A piece of a value: literal text, or a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text taken as it is (`$$` already turned into `$`).
    Text(String),
    /// A reference to a variable.
    Ref {
        /// The variable's name.
        name: String,
        /// What happens when it is unset.
        op: Op,
        /// The default (for `-` / `:-`) or the message (for `?` / `:?`); empty for `Plain`.
        arg: String,
    },
}

impl Piece {
    /// The default this reference falls back to, if it has one (`${NAME:-x}` gives `x`).
    pub fn default_value(&self) -> Option<&str> {
        match self {
            Piece::Ref {
                op: Op::DefaultIfUnset | Op::DefaultIfUnsetOrEmpty,
                arg,
                ..
            } => Some(arg),
            _ => None,
        }
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits `value` into text and references; a malformed reference is an error that says why.
pub fn parse(value: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = value.chars().peekable();
    let flush = |text: &mut String, pieces: &mut Vec<Piece>| {
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(text)));
        }
    };
    while let Some(c) = chars.next() {
        if c != '$' {
            text.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('$') => {
                chars.next();
                text.push('$');
            }
            Some('{') => {
                chars.next();
                let mut body = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    body.push(c);
                }
                if !closed {
                    return Err(format!("`${{{body}` has no closing `}}`"));
                }
                flush(&mut text, &mut pieces);
                pieces.push(parse_braced(&body)?);
            }
            Some(c) if is_name_start(c) => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if !is_name_char(c) {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                flush(&mut text, &mut pieces);
                pieces.push(Piece::Ref {
                    name,
                    op: Op::Plain,
                    arg: String::new(),
                });
            }
            _ => text.push('$'),
        }
    }
    flush(&mut text, &mut pieces);
    Ok(pieces)
}

fn parse_braced(body: &str) -> Result<Piece, String> {
    let name_len = body
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(body.len(), |(i, _)| i);
    let (name, rest) = body.split_at(name_len);
    if !name.starts_with(is_name_start) {
        return Err(format!(
            "`${{{body}}}` does not start with a variable name (letters, digits, `_`)"
        ));
    }
    let (op, arg) = if let Some(a) = rest.strip_prefix(":-") {
        (Op::DefaultIfUnsetOrEmpty, a)
    } else if let Some(a) = rest.strip_prefix(":?") {
        (Op::RequiredNonEmpty, a)
    } else if let Some(a) = rest.strip_prefix('-') {
        (Op::DefaultIfUnset, a)
    } else if let Some(a) = rest.strip_prefix('?') {
        (Op::Required, a)
    } else if rest.is_empty() {
        (Op::Plain, "")
    } else {
        return Err(format!(
            "`${{{body}}}` is not a supported reference; use ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}}"
        ));
    };
    Ok(Piece::Ref {
        name: name.to_owned(),
        op,
        arg: arg.to_owned(),
    })
}

/// The name of the first variable `value` refers to, if it is well formed and has one; used
/// to explain that a field the agent does not substitute in uses a variable.
pub fn first_reference(value: &str) -> Option<String> {
    parse(value).ok()?.into_iter().find_map(|p| match p {
        Piece::Ref { name, .. } => Some(name),
        Piece::Text(_) => None,
    })
}

/// Fills in the references of `value` from `vars`. Every missing variable is pushed to
/// `missing` (so one apply reports them all); a malformed reference is returned at once.
pub fn interpolate(
    value: &str,
    vars: &BTreeMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    for piece in parse(value)? {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Ref { name, op, arg } => match (op, vars.get(&name)) {
                (Op::DefaultIfUnsetOrEmpty, Some(v)) if !v.is_empty() => out.push_str(v),
                (Op::DefaultIfUnsetOrEmpty, _) | (Op::DefaultIfUnset, None) => out.push_str(&arg),
                (_, Some(v)) => out.push_str(v),
                (_, None) => missing.push(name),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("DB_PASSWORD".to_owned(), "hunter2".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ])
    }

    #[test]
    fn references_are_filled_in() {
        let cases = [
            ("plain", "plain"),
            ("${DB_PASSWORD}", "hunter2"),
            ("$DB_PASSWORD", "hunter2"),
            ("pw=$DB_PASSWORD!", "pw=hunter2!"),
            ("$$DB_PASSWORD", "$DB_PASSWORD"),
            ("${UNSET:-dflt}", "dflt"),
            ("${EMPTY:-dflt}", "dflt"),
            ("${EMPTY-dflt}", ""),
            ("${UNSET-x}", "x"),
            ("${DB_PASSWORD:?needed}", "hunter2"),
            ("cost: 5$", "cost: 5$"),
            ("a $ b", "a $ b"),
        ];
        for (input, want) in cases {
            let mut missing = Vec::new();
            let got = interpolate(input, &vars(), &mut missing);
            assert_eq!(got.as_deref(), Ok(want), "{input}");
            assert!(missing.is_empty(), "{input}: {missing:?}");
        }
    }

    #[test]
    fn every_missing_variable_is_reported() {
        let mut missing = Vec::new();
        let got = interpolate("${A}:$B:${C:?x}:${D:-ok}", &vars(), &mut missing);
        assert_eq!(got.as_deref(), Ok(":::ok"));
        assert_eq!(missing, ["A", "B", "C"]);
    }

    #[test]
    fn malformed_references_are_errors() {
        for input in ["${", "${A", "${1A}", "${A:+x}", "${}"] {
            assert!(parse(input).is_err(), "{input}");
            assert!(
                interpolate(input, &vars(), &mut Vec::new()).is_err(),
                "{input}"
            );
        }
    }

    #[test]
    fn pieces_say_what_is_text_and_what_is_a_default() {
        let p = parse("x${A:-y}$B").unwrap_or_default();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0], Piece::Text("x".into()));
        assert_eq!(p[1].default_value(), Some("y"));
        assert_eq!(p[2].default_value(), None);
        assert_eq!(
            first_reference("${MEDIA:-/srv}:/media").as_deref(),
            Some("MEDIA")
        );
        assert_eq!(first_reference("./conf:/etc/x"), None);
        assert_eq!(first_reference("$$HOME"), None);
    }
}
