//! Device-local secrets: `<secrets_dir>/<stack>.env`, lines of `NAME=value`, never in Git.
//! The fleet repository references them as `${NAME}` in `environment`.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// The secrets file could not be read or has a malformed line.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Unreadable (absent is fine and means no secrets).
    #[error("cannot read secrets file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line that is not `NAME=value`.
    #[error("{path}:{line}: expected NAME=value")]
    Malformed {
        /// The file.
        path: String,
        /// The line number.
        line: usize,
    },
}

/// Reads the secrets for `stack`; a missing file is an empty set.
pub fn load(dir: &Path, stack: &str) -> Result<BTreeMap<String, String>, SecretsError> {
    let path = dir.join(format!("{stack}.env"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(SecretsError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(SecretsError::Malformed {
                path: path.display().to_string(),
                line: i + 1,
            });
        };
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_value_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path(), "app").expect("absent").is_empty());
        std::fs::write(
            dir.path().join("app.env"),
            "# c\nA=1\nB = \"two words\"\n\n",
        )
        .expect("write");
        let s = load(dir.path(), "app").expect("valid");
        assert_eq!(s.get("A").map(String::as_str), Some("1"));
        assert_eq!(s.get("B").map(String::as_str), Some("two words"));
        std::fs::write(dir.path().join("bad.env"), "A=1\nnonsense\n").expect("write");
        let e = load(dir.path(), "bad").expect_err("malformed");
        assert!(
            e.to_string().ends_with("bad.env:2: expected NAME=value"),
            "{e}"
        );
    }
}
