//! Container image references, checked against the grammar Docker itself uses
//! (`[host[:port]/]path[:tag][@algorithm:hex]`).

use std::fmt;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ImageRef {
    /// Registry host and port, when the reference names one.
    pub domain: Option<String>,
    /// Repository path, e.g. `library/nginx` or `fleet-test/app`.
    pub path: String,
    /// Tag, e.g. `v1`.
    pub tag: Option<String>,
    /// Content digest, e.g. `sha256:…`.
    pub digest: Option<String>,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.domain {
            write!(f, "{d}/")?;
        }
        f.write_str(&self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl ImageRef {
    /// True when the reference pins content: a digest, or a tag other than `latest`.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some() || self.tag.as_deref().is_some_and(|t| t != "latest")
    }

    /// Parses a reference; the error says what is wrong, to follow "image `…` ".
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.contains("${") || s.contains('$') {
            return Err("uses a variable; a release must name its image exactly".into());
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("contains the character {c:?}"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            check_digest(d)?;
        }
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if last_slash.is_none_or(|sl| i > sl) => {
                (&name_tag[..i], Some(&name_tag[i + 1..]))
            }
            _ => (name_tag, None),
        };
        if let Some(t) = tag {
            check_tag(t)?;
        }
        if name.len() > 255 {
            return Err("has a name longer than 255 characters".into());
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                check_domain(first)?;
                (Some(first), rest)
            }
            _ => (None, name),
        };
        if path.is_empty() {
            return Err("has no repository name".into());
        }
        for component in path.split('/') {
            check_path_component(component)?;
        }
        Ok(ImageRef {
            domain: domain.map(str::to_owned),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err(format!(
            "has a malformed digest `{d}`; expected `sha256:` and 64 hex digits"
        ));
    };
    let ok = match algo {
        "sha256" => hex.len() == 64,
        "sha512" => hex.len() == 128,
        _ => false,
    } && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        return Err(format!(
            "has a malformed digest `{d}`; expected `sha256:` and 64 lowercase hex digits"
        ));
    }
    Ok(())
}

fn check_tag(t: &str) -> Result<(), String> {
    let mut chars = t.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || t.len() > 128 {
        return Err(format!(
            "has an invalid tag `{t}`; a tag is up to 128 letters, digits, `_`, `.`, `-`, not starting with `.` or `-`"
        ));
    }
    Ok(())
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("has an invalid registry port in `{d}`"));
        }
    }
    let ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        return Err(format!("has an invalid registry host `{d}`"));
    }
    Ok(())
}

fn check_path_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("has an empty path component (`//` or a trailing `/`)".into());
    }
    if c.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Err(format!(
            "has `{c}` in its repository name, which must be lowercase"
        ));
    }
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    let bad = || {
        Err(format!(
            "has `{c}` in its repository name; use lowercase letters and digits separated by `.`, `_`, `__` or dashes"
        ))
    };
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return bad();
        }
        if i == b.len() {
            return Ok(());
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return bad(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_references() {
        for s in [
            "nginx",
            "nginx:1.27",
            "library/nginx:1.27-alpine",
            "fleet-test/app:v1",
            "ghcr.example.com/org/app:2.0",
            "localhost:5000/app",
            "registry.example.com:443/a/b/c:tag_1",
            "prom/node-exporter@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "a__b/c--d:x",
        ] {
            let r = ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn bad_references() {
        for s in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "nginx:1.0 ",
            "nginx@sha256:abc",
            "a//b",
            "app/",
            "-app",
            "app_:1",
            "${REGISTRY}/app:v1",
            "host:99999999/app",
        ] {
            assert!(ImageRef::parse(s).is_err(), "`{s}` must be refused");
        }
    }

    #[test]
    fn pinning() {
        assert!(!ImageRef::parse("nginx")
            .map(|r| r.is_pinned())
            .unwrap_or(true));
        assert!(!ImageRef::parse("nginx:latest")
            .map(|r| r.is_pinned())
            .unwrap_or(true));
        assert!(ImageRef::parse("nginx:1.27")
            .map(|r| r.is_pinned())
            .unwrap_or(false));
    }
}
