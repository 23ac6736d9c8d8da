//! Splitting a `command:` or `entrypoint:` string into words the way Compose does (POSIX shell
//! quoting, no expansion).

/// Splits `s` into words; an unterminated quote or trailing backslash is an error.
pub fn split(s: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("an unterminated single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some('\n') => {}
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err("an unterminated double quote"),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("an unterminated double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(ch) => cur.push(ch),
                    None => return Err("a trailing backslash"),
                }
            }
            ch => {
                in_word = true;
                cur.push(ch);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split("httpd -f -p 8080"),
            Ok(vec![
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                "8080".into()
            ])
        );
        assert_eq!(
            split(r#"sh -c 'echo "hi there"'"#),
            Ok(vec!["sh".into(), "-c".into(), r#"echo "hi there""#.into()])
        );
        assert_eq!(
            split(r#"a "b \"c\"" d\ e"#),
            Ok(vec!["a".into(), r#"b "c""#.into(), "d e".into()])
        );
        assert_eq!(split("''"), Ok(vec![String::new()]));
        assert!(split("'open").is_err());
        assert!(split("\"open").is_err());
    }
}
