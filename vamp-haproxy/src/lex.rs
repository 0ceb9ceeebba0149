//! HAProxy's configuration line lexer (HAProxy 2.6 `parse_line`), as far as the gateway agent
//! and the update planner need it: a line becomes the words HAProxy would see.
//!
//! * Words are separated by spaces and tabs; a `#` outside quotes starts a comment.
//! * `'…'` is literal; `"…"` takes backslash escapes and would expand `$NAME` / `${NAME}` from
//!   HAProxy's environment, which this lexer refuses (a configuration must not read the
//!   environment of a process running as root).
//! * Outside single quotes `\\`, `\ `, `\#`, `\'`, `\"`, `\$` stand for the character,
//!   `\xHH` for a byte, `\r`, `\n`, `\t` for control characters (refused here); any other
//!   `\c` is kept as the two characters, as HAProxy keeps it.
//! * Quotes join with adjacent text into one word (`a'b c'd` is the word `ab cd`).
//!
//! Stricter than HAProxy on purpose: control characters (other than the tab) anywhere in the
//! line, `\x` escapes that decode to control characters, unclosed quotes and more than
//! [`MAX_WORDS`] words are errors, so that nothing the agent accepts is read differently by
//! HAProxy.
//!
//! ```
//! use vamp_haproxy::lex::words;
//! assert_eq!(words("  acl a req.hdr(host) -m sub 'a b' # comment").unwrap(),
//!            ["acl", "a", "req.hdr(host)", "-m", "sub", "a b"]);
//! assert_eq!(words(r#"x "a\"b" c\ d"#).unwrap(), ["x", "a\"b", "c d"]);
//! assert!(words(r#"log-format "$HOME""#).is_err());
//! ```

/// HAProxy reads at most this many words on a line (`MAX_LINE_ARGS`); it truncates the rest
/// with an error, so a longer line is refused here.
pub const MAX_WORDS: usize = 64;

/// Why a line cannot be read safely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LexError(pub &'static str);

impl std::fmt::Display for LexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for LexError {}

/// The words of one configuration line (without its line break), as HAProxy reads them.
///
/// # Errors
/// [`LexError`] for control characters, an unclosed quote, `$` inside double quotes, a bad
/// `\x` escape or an escape decoding to a control character, and more than [`MAX_WORDS`] words.
pub fn words(line: &str) -> Result<Vec<String>, LexError> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(LexError("control characters are not allowed"));
    }
    let mut out: Vec<String> = Vec::new();
    let mut word: Option<Vec<u8>> = None;
    let mut quote = Quote::None;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match (&quote, c) {
            (Quote::Single, b'\'') => quote = Quote::None,
            (Quote::Single, _) => word.get_or_insert_with(Vec::new).push(c),
            (_, b'\\') => {
                let next = bytes.get(i + 1).copied();
                let w = word.get_or_insert_with(Vec::new);
                match next {
                    Some(b' ' | b'\\' | b'#' | b'\'' | b'"' | b'$') => {
                        w.push(bytes[i + 1]);
                        i += 1;
                    }
                    Some(b'r' | b'n' | b't') => {
                        return Err(LexError("escaped control characters are not allowed"));
                    }
                    Some(b'x') => {
                        let hex = bytes
                            .get(i + 2..i + 4)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u8::from_str_radix(h, 16).ok());
                        match hex {
                            Some(b) if !b.is_ascii_control() && b < 0x80 => w.push(b),
                            Some(_) => {
                                return Err(LexError(
                                    "\\x escapes of control or non-ASCII bytes are not allowed",
                                ));
                            }
                            None => return Err(LexError("\\x must be followed by two hex digits")),
                        }
                        i += 3;
                    }
                    None => return Err(LexError("a trailing backslash")),
                    // Not an escape: HAProxy keeps the backslash.
                    Some(_) => w.push(b'\\'),
                }
            }
            (Quote::Double, b'"') => quote = Quote::None,
            (Quote::Double, b'$') => {
                return Err(LexError(
                    "'$' inside double quotes would read an environment variable",
                ));
            }
            (Quote::Double, _) => word.get_or_insert_with(Vec::new).push(c),
            (Quote::None, b' ' | b'\t') => {
                if let Some(w) = word.take() {
                    out.push(String::from_utf8(w).map_err(|_| LexError("not UTF-8"))?);
                }
            }
            (Quote::None, b'#') => break,
            (Quote::None, b'\'') => {
                quote = Quote::Single;
                word.get_or_insert_with(Vec::new);
            }
            (Quote::None, b'"') => {
                quote = Quote::Double;
                word.get_or_insert_with(Vec::new);
            }
            (Quote::None, _) => word.get_or_insert_with(Vec::new).push(c),
        }
        i += 1;
    }
    if quote != Quote::None {
        return Err(LexError("an unclosed quote"));
    }
    if let Some(w) = word.take() {
        out.push(String::from_utf8(w).map_err(|_| LexError("not UTF-8"))?);
    }
    if out.len() > MAX_WORDS {
        return Err(LexError(
            "more than 64 words on one line (HAProxy truncates the rest)",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_haproxy_quoting() {
        assert_eq!(words("").unwrap(), Vec::<String>::new());
        assert_eq!(words("   # only a comment").unwrap(), Vec::<String>::new());
        assert_eq!(words("a\tb  c").unwrap(), ["a", "b", "c"]);
        assert_eq!(words("a'b c'd").unwrap(), ["ab cd"]);
        assert_eq!(words("a '' b").unwrap(), ["a", "", "b"]);
        assert_eq!(words(r"a\#b #c").unwrap(), ["a#b"]);
        assert_eq!(words(r"'\#' x").unwrap(), [r"\#", "x"]);
        assert_eq!(words(r"^/api\.v1$").unwrap(), [r"^/api\.v1$"]);
        assert_eq!(words(r"a\x41").unwrap(), ["aA"]);
        assert_eq!(words(r#""a'b" '"'"#).unwrap(), ["a'b", "\""]);
    }

    #[test]
    fn what_haproxy_would_read_differently_is_refused() {
        for bad in [
            "a 'b",
            "a \"b",
            "a\\",
            r#"x "${HOME}""#,
            r"a\x0a",
            r"a\xzz",
            r"a\n",
            "a\u{85}b",
            "a\rb",
            "a\u{0}b",
        ] {
            assert!(words(bad).is_err(), "{bad:?}");
        }
        let long = vec!["w"; 65].join(" ");
        assert!(words(&long).is_err());
        assert_eq!(words(&vec!["w"; 64].join(" ")).unwrap().len(), 64);
    }

    #[test]
    fn unicode_spaces_are_not_separators() {
        // HAProxy splits on ASCII space and tab only.
        assert_eq!(words("a\u{a0}b").unwrap(), ["a\u{a0}b"]);
    }
}
