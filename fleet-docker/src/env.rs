//! A service's environment as the container gets it: `env_file` lines, then `environment`
//! (which wins), with `${NAME}` references filled in from the device's secrets.
//!
//! `environment` values are filled in by [`fleet_config::interpolate::interpolate`], the rule
//! the validator checks them with (`${NAME}`, `$NAME`, `${NAME:-default}`, `${NAME:?message}`,
//! `$$`). A bare entry (`- NAME` or `NAME:` with no value, or a `NAME` line without `=` in an
//! env file) takes `NAME` from the secrets. A reference without a
//! default to a secret the device does not have is an error: an app started with an empty
//! password is worse than one not started.

use std::collections::BTreeMap;

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
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
