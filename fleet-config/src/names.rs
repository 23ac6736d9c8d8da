//! The rules for names an operator chooses: fleet, device, stack and wave names, labels, branch
//! names and Git URLs. Each check returns the reason as text to be completed by the caller
//! ("device id `Pi 1` must ...").

/// Fleet names, device ids and stack names: 1–63 of `a-z 0-9 - _ .`, starting with a letter
/// or digit. They end up in container names, labels, URLs and file names.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters long".into());
    }
    let first = s.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(format!(
            "`{s}` must start with a lowercase letter or a digit"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "`{s}` may contain only lowercase letters, digits, `-`, `_` and `.`, not `{c}`"
        ));
    }
    Ok(())
}

/// A label `name: value` pair.
pub fn check_label(name: &str, value: &str) -> Result<(), String> {
    let ok_name = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok_name {
        return Err(format!(
            "label name `{name}` must be 1 to 63 of letters, digits, `-`, `_`, `.`, `/`"
        ));
    }
    let ok_value = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok_value {
        return Err(format!(
            "label `{name}` has value `{value}`; values must be 1 to 63 of letters, digits, `-`, `_`, `.`"
        ));
    }
    Ok(())
}

/// A Git branch name, by the rules of `git check-ref-format --branch`.
pub fn check_ref_name(s: &str) -> Result<(), String> {
    let bad = s.is_empty()
        || s.starts_with('-')
        || s.starts_with('/')
        || s.ends_with('/')
        || s.ends_with('.')
        || s.ends_with(".lock")
        || s.contains("..")
        || s.contains("//")
        || s.contains("@{")
        || s == "@"
        || s.split('/').any(|c| c.starts_with('.'))
        || s.chars().any(|c| {
            c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
        });
    if bad {
        return Err("is not a valid Git branch name".into());
    }
    Ok(())
}

/// A Git remote: `git://`, `ssh://`, `https://`, `http://` or `file://` URL, or scp-like
/// `user@host:path`.
pub fn check_git_url(s: &str) -> Result<(), String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces".into());
    }
    if let Some((scheme, rest)) = s.split_once("://") {
        if !matches!(scheme, "git" | "ssh" | "https" | "http" | "file") {
            return Err(format!(
                "has unsupported scheme `{scheme}`; use git://, ssh://, https://, http:// or file://"
            ));
        }
        if scheme == "file" {
            if !rest.starts_with('/') {
                return Err("must be file:///absolute/path".into());
            }
            return Ok(());
        }
        let host = rest.split('/').next().unwrap_or_default();
        let host = host.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || !rest.contains('/') {
            return Err(
                "needs a host and a repository path, e.g. https://git.example.com/fleet.git".into(),
            );
        }
        return Ok(());
    }
    // scp-like syntax: [user@]host:path
    match s.split_once(':') {
        Some((host, path)) if !host.is_empty() && !path.is_empty() && !host.contains('/') => Ok(()),
        _ => {
            Err("is not a Git URL; use git://, ssh://, https://, file:// or user@host:path".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("pi-01").is_ok());
        assert!(check_name("a.b_c").is_ok());
        for bad in ["", "-pi", "Pi", "pi 01", "pi/01", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refs() {
        assert!(check_ref_name("main").is_ok());
        assert!(check_ref_name("release/2026-11").is_ok());
        for bad in ["", "-x", "a..b", "a b", "x.lock", "a/", "a:b", "a/.b"] {
            assert!(check_ref_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        for good in [
            "git://127.0.0.1:9418/fleet.git",
            "https://git.example.com/org/fleet.git",
            "ssh://git@host/fleet.git",
            "git@github.example:org/fleet.git",
            "file:///srv/git/fleet.git",
        ] {
            assert!(check_git_url(good).is_ok(), "{good}");
        }
        for bad in [
            "ftp://x/y",
            "https://",
            "fleet",
            "file://relative",
            "https://h/a b",
        ] {
            assert!(check_git_url(bad).is_err(), "{bad}");
        }
    }
}
