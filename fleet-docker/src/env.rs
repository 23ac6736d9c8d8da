//! A service's environment as the container gets it: `env_file` lines, then `environment`
//! (which wins), with `${NAME}` references filled in from the device's secrets.
//!
//! Supported references: `${NAME}`, `$NAME`, `${NAME:-default}` (default when unset or empty),
//! `${NAME-default}` (default when unset), `${NAME:?message}` / `${NAME?message}` (required),
//! and `$$` for a literal `$`. A bare entry (`- NAME` or `NAME:` with no value, or a `NAME`
//! line without `=` in an env file) takes `NAME` from the secrets. A reference without a
//! default to a secret the device does not have is an error: an app started with an empty
//! password is worse than one not started.

use std::collections::BTreeMap;

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Fills in the references of `value`. Every missing secret is pushed to `missing` (so one
/// apply reports them all); a syntax error is returned at once.
pub(crate) fn interpolate(
    value: &str,
    secrets: &BTreeMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().map(|&(_, c)| c) {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                chars.next();
                let mut body = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    body.push(c);
                }
                if !closed {
                    return Err(format!("`${{{body}` has no closing `}}`"));
                }
                out.push_str(&expand_braced(&body, secrets, missing)?);
            }
            Some(c) if is_name_start(c) => {
                let mut name = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if !is_name_char(c) {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                match secrets.get(&name) {
                    Some(v) => out.push_str(v),
                    None => missing.push(name),
                }
            }
            // A `$` before anything else is literal, as in Compose.
            _ => out.push('$'),
        }
    }
    Ok(out)
}

fn expand_braced(
    body: &str,
    secrets: &BTreeMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<String, String> {
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
    let value = secrets.get(name);
    let (op, arg) = if let Some(a) = rest.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = rest.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = rest.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = rest.strip_prefix('?') {
        ("?", a)
    } else if rest.is_empty() {
        ("", "")
    } else {
        return Err(format!(
            "`${{{body}}}` is not a supported reference; use ${{NAME}}, ${{NAME:-default}} or ${{NAME:?message}}"
        ));
    };
    let out = match (op, value) {
        (":-", Some(v)) if !v.is_empty() => v.clone(),
        (":-", _) | ("-", None) => arg.to_owned(),
        ("-", Some(v)) => v.clone(),
        (_, Some(v)) => v.clone(),
        (_, None) => {
            missing.push(name.to_owned());
            String::new()
        }
    };
    Ok(out)
}

/// Parses an env file: `NAME=value` lines, `#` comments, blank lines, an optional `export `
/// prefix, values optionally in matching single or double quotes (taken literally). A line
/// with a name only takes the value from the secrets. Values are not interpolated.
pub(crate) fn parse_env_file(
    text: &str,
    secrets: &BTreeMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (name, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (line, None),
        };
        if !name.starts_with(is_name_start) || !name.chars().all(is_name_char) {
            return Err(format!("line {}: `{name}` is not a variable name", n + 1));
        }
        let value = match value {
            Some(v) => unquote(v.trim()).to_owned(),
            None => match secrets.get(name) {
                Some(v) => v.clone(),
                None => {
                    missing.push(name.to_owned());
                    continue;
                }
            },
        };
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> BTreeMap<String, String> {
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
            let got = interpolate(input, &secrets(), &mut missing);
            assert_eq!(got.as_deref(), Ok(want), "{input}");
            assert!(missing.is_empty(), "{input}: {missing:?}");
        }
    }

    #[test]
    fn every_missing_secret_is_reported() {
        let mut missing = Vec::new();
        let got = interpolate("${A}:$B:${C:?x}:${D:-ok}", &secrets(), &mut missing);
        assert_eq!(got.as_deref(), Ok(":::ok"));
        assert_eq!(missing, ["A", "B", "C"]);
    }

    #[test]
    fn malformed_references_are_errors() {
        for input in ["${", "${A", "${1A}", "${A:+x}", "${}"] {
            assert!(
                interpolate(input, &secrets(), &mut Vec::new()).is_err(),
                "{input}"
            );
        }
    }

    #[test]
    fn env_files_parse() {
        let text = "# comment\n\nA=1\nexport B = \"two words\"\nC='x=y'\nDB_PASSWORD\nNOPE\n";
        let mut missing = Vec::new();
        let got = parse_env_file(text, &secrets(), &mut missing);
        assert_eq!(
            got,
            Ok(vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "two words".to_owned()),
                ("C".to_owned(), "x=y".to_owned()),
                ("DB_PASSWORD".to_owned(), "hunter2".to_owned()),
            ])
        );
        assert_eq!(missing, ["NOPE"]);
        assert!(parse_env_file("1X=2", &secrets(), &mut Vec::new()).is_err());
    }
}
