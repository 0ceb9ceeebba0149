//! The route condition grammar: `user-agent = Chrome and has cookie group`,
//! `host != example.com`, `header x-canary contains beta`, `<raw haproxy acl>`.
//!
//! Keywords are case-insensitive except `not`, which must be lower-case (as in Vamp). A
//! comparison that is false (`!=`, `not`, `misses`) yields a negated operand.

use crate::parser::{BoolExpr, BoolSyntax, Cursor, parse_bool};

/// A test on a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionOperand {
    /// The `Host` header equals the value.
    Host(String),
    /// The `User-Agent` header contains the value.
    UserAgent(String),
    /// A cookie with this name is present.
    Cookie(String),
    /// A header with this name is present.
    Header(String),
    /// A cookie with this name contains the value.
    CookieContains(String, String),
    /// A header with this name contains the value.
    HeaderContains(String, String),
    /// A raw HAProxy ACL (`<hdr_sub(user-agent) Android>`).
    Value(String),
}

/// A parsed condition.
pub type ConditionExpr = BoolExpr<ConditionOperand>;

fn string<'a>(c: &mut Cursor<'a>) -> Option<String> {
    for quote in ['\'', '"'] {
        if c.rest().starts_with(quote) {
            let save = *c;
            c.eat(&quote.to_string(), false);
            let mut out = String::new();
            let rest = c.rest();
            let mut chars = rest.char_indices().peekable();
            while let Some((i, ch)) = chars.next() {
                if ch == quote {
                    if matches!(chars.peek(), Some((_, q)) if *q == quote) {
                        out.push(quote);
                        chars.next();
                        continue;
                    }
                    c.eat(&rest[..=i], false);
                    return Some(out);
                }
                if ch.is_control() {
                    break;
                }
                out.push(ch);
            }
            *c = save;
            return None;
        }
    }
    let s = c.take_while(|ch| !ch.is_whitespace() && !ch.is_control() && ch != '(' && ch != ')');
    (!s.is_empty()).then(|| s.to_owned())
}

/// `Cmp`: returns whether the comparison is positive.
fn cmp(c: &mut Cursor<'_>) -> Option<bool> {
    let save = *c;
    c.ws();
    if c.eat("==", false) || c.eat("=", false) {
        c.ws();
        return Some(true);
    }
    if c.eat("!=", false) || c.eat("!", false) {
        c.ws();
        return Some(false);
    }
    *c = save;
    if c.ws() && c.eat_word("not", false) {
        return Some(false);
    }
    *c = save;
    c.ws();
    if c.eat_word("has", true) || c.eat_word("contains", true) {
        return Some(true);
    }
    *c = save;
    if c.ws() && c.eat_word("is", true) {
        return Some(true);
    }
    *c = save;
    c.ws();
    if c.eat_word("misses", true) {
        return Some(false);
    }
    *c = save;
    None
}

/// `Contains`: returns whether the test is positive.
fn contains(c: &mut Cursor<'_>) -> Option<bool> {
    let save = *c;
    c.ws();
    if c.eat_word("has", true) || c.eat_word("contains", true) {
        return Some(true);
    }
    if c.eat_word("misses", true) {
        return Some(false);
    }
    *c = save;
    None
}

fn operand(c: &mut Cursor<'_>) -> Option<(bool, ConditionOperand)> {
    let start = *c;
    // HostOp
    if c.eat("host", true)
        && let Some(positive) = cmp(c)
        && let Some(v) = string(c)
    {
        return Some((positive, ConditionOperand::Host(v)));
    }
    *c = start;
    // UserAgentOp
    if c.eat("user", true) {
        if !c.eat("-", false) {
            c.eat(".", false);
        }
        if c.eat("agent", true)
            && let Some(positive) = cmp(c)
            && let Some(v) = string(c)
        {
            return Some((positive, ConditionOperand::UserAgent(v)));
        }
    }
    *c = start;
    // HeaderOp / CookieOp: Contains ("header" | "cookie") WS String
    if let Some(positive) = contains(c) {
        for (word, is_header) in [("header", true), ("cookie", false)] {
            let save = *c;
            if c.eat_word(word, true)
                && let Some(v) = string(c)
            {
                let op = if is_header {
                    ConditionOperand::Header(v)
                } else {
                    ConditionOperand::Cookie(v)
                };
                return Some((positive, op));
            }
            *c = save;
        }
    }
    *c = start;
    // CookieContainsOp / HeaderContainsOp: word WS String WS Contains String
    for (word, is_header) in [("cookie", false), ("header", true)] {
        if c.eat_word(word, true)
            && let Some(name) = string(c)
            && c.ws()
            && let Some(positive) = contains(c)
            && let Some(v) = string(c)
        {
            let op = if is_header {
                ConditionOperand::HeaderContains(name, v)
            } else {
                ConditionOperand::CookieContains(name, v)
            };
            return Some((positive, op));
        }
        *c = start;
    }
    // ValueOp := "<" [^<>]+ ">"
    if c.eat("<", false) {
        let inner = c.take_while(|ch| ch != '<' && ch != '>');
        if !inner.is_empty() && c.eat(">", false) {
            return Some((true, ConditionOperand::Value(inner.trim().to_owned())));
        }
    }
    *c = start;
    None
}

fn negate(e: BoolExpr<(bool, ConditionOperand)>) -> ConditionExpr {
    match e {
        BoolExpr::True => BoolExpr::True,
        BoolExpr::False => BoolExpr::False,
        BoolExpr::Value((true, op)) => BoolExpr::Value(op),
        BoolExpr::Value((false, op)) => BoolExpr::Not(Box::new(BoolExpr::Value(op))),
        BoolExpr::Not(x) => BoolExpr::Not(Box::new(negate(*x))),
        BoolExpr::And(a, b) => BoolExpr::And(Box::new(negate(*a)), Box::new(negate(*b))),
        BoolExpr::Or(a, b) => BoolExpr::Or(Box::new(negate(*a)), Box::new(negate(*b))),
    }
}

/// Parses a condition.
///
/// # Errors
/// A message when the text is not a condition. (Vamp's HAProxy driver then used the whole text
/// as a raw ACL; that decision belongs to the renderer, not to the parser.)
///
/// ```
/// use vamp_core::condition::{parse_condition, ConditionOperand};
/// use vamp_core::parser::BoolExpr;
/// assert_eq!(
///     parse_condition("User-Agent not Firefox").unwrap(),
///     BoolExpr::Not(Box::new(BoolExpr::Value(ConditionOperand::UserAgent("Firefox".into()))))
/// );
/// ```
pub fn parse_condition(text: &str) -> Result<ConditionExpr, String> {
    let syntax = BoolSyntax {
        constants: false,
        lower_case_not: true,
    };
    parse_bool(text, syntax, &mut operand).map(negate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConditionOperand::*;

    fn v(o: ConditionOperand) -> ConditionExpr {
        BoolExpr::Value(o)
    }
    fn not(e: ConditionExpr) -> ConditionExpr {
        BoolExpr::Not(Box::new(e))
    }
    fn ua(s: &str) -> ConditionExpr {
        v(UserAgent(s.into()))
    }

    // reader-fixtures.md A.1 ConditionDefinitionParserSpec.
    #[test]
    fn condition_definition_parser_spec() {
        let and = |a, b| BoolExpr::And(Box::new(a), Box::new(b));
        let mut cases: Vec<(&str, ConditionExpr)> = vec![
            (
                "user-agent == a and user-agent != b",
                and(ua("a"), not(ua("b"))),
            ),
            (
                "user-agent == a and not user-agent == b",
                and(ua("a"), not(ua("b"))),
            ),
        ];
        for s in [
            "<water ⇒ ice>",
            "< water ⇒ ice>",
            "< water ⇒ ice >",
            " <water ⇒ ice>",
            "<water ⇒ ice> ",
            " <water ⇒ ice> ",
        ] {
            cases.push((s, v(Value("water ⇒ ice".into()))));
        }
        cases.push(("  <  water  ⇒  ice  > ", v(Value("water  ⇒  ice".into()))));
        for s in [
            "User-Agent==Firefox",
            "User-Agent== Firefox ",
            "User-Agent == Firefox ",
            " User-Agent == Firefox ",
            "User-Agent is Firefox",
            " ( User-Agent == Firefox ) ",
        ] {
            cases.push((s, ua("Firefox")));
        }
        for s in [
            " User-Agent ! Firefox ",
            " User-Agent != Firefox ",
            "user.agent != Firefox",
            "User-Agent not Firefox",
        ] {
            cases.push((s, not(ua("Firefox"))));
        }
        for s in [
            "host == localhost",
            "host is localhost",
            "host has localhost",
            "host contains localhost",
        ] {
            cases.push((s, v(Host("localhost".into()))));
        }
        for s in [
            "host != localhost",
            "host not localhost",
            "host misses localhost",
            "! host is localhost",
            "not host is localhost",
        ] {
            cases.push((s, not(v(Host("localhost".into())))));
        }
        for s in ["has cookie vamp", "contains cookie vamp"] {
            cases.push((s, v(Cookie("vamp".into()))));
        }
        cases.push(("misses cookie vamp", not(v(Cookie("vamp".into())))));
        for s in ["has header vamp", "contains header vamp"] {
            cases.push((s, v(Header("vamp".into()))));
        }
        cases.push(("misses header vamp", not(v(Header("vamp".into())))));
        for s in ["cookie vamp has 12345", "cookie vamp contains 12345"] {
            cases.push((s, v(CookieContains("vamp".into(), "12345".into()))));
        }
        cases.push((
            "cookie vamp misses 12345",
            not(v(CookieContains("vamp".into(), "12345".into()))),
        ));
        for s in ["header vamp has 12345", "header vamp contains 12345"] {
            cases.push((s, v(HeaderContains("vamp".into(), "12345".into()))));
        }
        cases.push((
            "header vamp misses 12345",
            not(v(HeaderContains("vamp".into(), "12345".into()))),
        ));
        for (input, expected) in cases {
            assert_eq!(parse_condition(input), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(
            parse_condition(r#"User-Agent == "Mozilla/5.0 Macintosh""#),
            Ok(ua("Mozilla/5.0 Macintosh"))
        );
        let long = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_5) AppleWebKit/602.2.14 (KHTML, like Gecko) Version/10.0.1 Safari/602.2.14";
        assert_eq!(
            parse_condition(&format!("User-Agent = '{long}'")),
            Ok(ua(long))
        );
        assert_eq!(
            parse_condition("host = 'it''s'"),
            Ok(v(Host("it's".into())))
        );
    }

    #[test]
    fn not_must_be_lower_case_and_garbage_fails() {
        assert!(parse_condition("NOT host is x").is_err());
        assert!(parse_condition("android").is_err());
        assert!(parse_condition("host ==").is_err());
        assert!(parse_condition("(host == a").is_err());
        assert!(parse_condition("").is_err());
    }

    #[test]
    fn precedence() {
        let e =
            parse_condition("(User-Agent = Chrome OR User-Agent = Firefox) AND has cookie vamp")
                .unwrap();
        assert!(matches!(e, BoolExpr::And(ref a, _) if matches!(**a, BoolExpr::Or(..))));
        let e = parse_condition("host = a or host = b and host = c").unwrap();
        assert!(matches!(e, BoolExpr::Or(_, ref b) if matches!(**b, BoolExpr::And(..))));
    }
}
