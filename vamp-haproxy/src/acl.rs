//! Route conditions to HAProxy ACLs (Vamp's `HaProxyAclResolver`, corrected).
//!
//! 1. Parse the condition ([`vamp_core::condition`]); text that does not parse is a raw ACL
//!    criterion, as in Vamp.
//! 2. Expand user-agent aliases (`Chrome`, `Firefox`, `Safari` = Safari **and** Version,
//!    `Edge`, `IE` = MSIE).
//! 3. Minimise to a disjunctive normal form that is **logically equivalent** to the condition
//!    (Quine–McCluskey over the distinct tests). Vamp's single-pass flattener dropped terms and
//!    depended on hash order; where it was right, the terms and ACLs come out in Vamp's order.
//! 4. Map each test to an ACL criterion, quoting values so that no input can add a line, a
//!    directive or a comment.

use std::collections::{BTreeMap, BTreeSet};

use vamp_core::condition::{ConditionExpr, ConditionOperand, parse_condition};
use vamp_core::parser::BoolExpr;

use crate::config::{Acl, Acls};
use crate::error::RenderError;

/// At most this many distinct tests in one condition.
pub const MAX_CONDITION_TESTS: usize = 12;

fn alias(user_agent: &str) -> Option<ConditionExpr> {
    let sub = |s: &str| {
        BoolExpr::Value(ConditionOperand::Value(format!(
            "req.fhdr(User-Agent) -m sub '{s}'"
        )))
    };
    Some(match user_agent.to_ascii_uppercase().as_str() {
        "CHROME" => sub("Chrome"),
        "FIREFOX" => sub("Firefox"),
        "SAFARI" => BoolExpr::And(Box::new(sub("Safari")), Box::new(sub("Version"))),
        "EDGE" => sub("Edge"),
        "IE" => sub("MSIE"),
        _ => return None,
    })
}

fn expand(e: ConditionExpr) -> ConditionExpr {
    match e {
        BoolExpr::Value(ConditionOperand::UserAgent(ua)) => {
            alias(&ua).unwrap_or(BoolExpr::Value(ConditionOperand::UserAgent(ua)))
        }
        BoolExpr::Not(x) => BoolExpr::Not(Box::new(expand(*x))),
        BoolExpr::And(a, b) => BoolExpr::And(Box::new(expand(*a)), Box::new(expand(*b))),
        BoolExpr::Or(a, b) => BoolExpr::Or(Box::new(expand(*a)), Box::new(expand(*b))),
        other => other,
    }
}

/// A term of the minimised form: the tests it needs, with their polarity.
pub type Term = Vec<(usize, bool)>;

/// The minimised form of a condition over its distinct tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dnf {
    /// Never holds.
    False,
    /// Always holds.
    True,
    /// Holds when any term holds; a term holds when all its tests have their polarity.
    Terms(Vec<Term>),
}

/// Parses, expands aliases and minimises a condition. Returns the distinct tests (in
/// first-occurrence order) and the minimised form.
///
/// # Errors
/// [`RenderError::ConditionTooComplex`] beyond [`MAX_CONDITION_TESTS`] distinct tests.
pub fn minimise(definition: &str) -> Result<(Vec<ConditionOperand>, Dnf), RenderError> {
    let expr = match parse_condition(definition) {
        Ok(e) => expand(e),
        Err(_) => BoolExpr::Value(ConditionOperand::Value(definition.trim().to_owned())),
    };
    let mut tests: Vec<ConditionOperand> = Vec::new();
    for op in expr.operands() {
        if !tests.contains(op) {
            tests.push(op.clone());
        }
    }
    if tests.len() > MAX_CONDITION_TESTS {
        return Err(RenderError::ConditionTooComplex {
            condition: definition.to_owned(),
            tests: tests.len(),
            max: MAX_CONDITION_TESTS,
        });
    }
    let n = tests.len();
    let index: BTreeMap<&ConditionOperand, usize> =
        tests.iter().enumerate().map(|(i, t)| (t, i)).collect();
    let minterms: Vec<u32> = (0..1u32 << n)
        .filter(|v| expr.eval(&mut |op| v & (1 << index[op]) != 0))
        .collect();
    if minterms.is_empty() {
        return Ok((tests, Dnf::False));
    }
    if minterms.len() == 1 << n {
        return Ok((tests, Dnf::True));
    }
    Ok((tests, Dnf::Terms(quine_mccluskey(n, &minterms))))
}

/// Prime implicants as (value, don't-care mask), then a cover: essential primes, then greedily
/// the prime covering most uncovered minterms. Terms are ordered by their smallest minterm,
/// then by mask (which reproduces Vamp's order where Vamp was right).
fn quine_mccluskey(n: usize, minterms: &[u32]) -> Vec<Term> {
    let mut current: BTreeSet<(u32, u32)> = minterms.iter().map(|&m| (m, 0)).collect();
    let mut primes: BTreeSet<(u32, u32)> = BTreeSet::new();
    while !current.is_empty() {
        let mut next = BTreeSet::new();
        let mut combined = BTreeSet::new();
        let items: Vec<(u32, u32)> = current.iter().copied().collect();
        for (i, &(v1, m1)) in items.iter().enumerate() {
            for &(v2, m2) in &items[i + 1..] {
                let diff = v1 ^ v2;
                if m1 == m2 && diff.count_ones() == 1 {
                    next.insert((v1 & !diff, m1 | diff));
                    combined.insert((v1, m1));
                    combined.insert((v2, m2));
                }
            }
        }
        primes.extend(current.difference(&combined).copied());
        current = next;
    }
    let covers = |&(v, m): &(u32, u32), x: u32| x & !m == v;
    let mut uncovered: BTreeSet<u32> = minterms.iter().copied().collect();
    let mut chosen: Vec<(u32, u32)> = Vec::new();
    // Essential primes: the only prime covering some minterm.
    for &x in minterms {
        let covering: Vec<&(u32, u32)> = primes.iter().filter(|p| covers(p, x)).collect();
        if covering.len() == 1 && !chosen.contains(covering[0]) {
            chosen.push(*covering[0]);
        }
    }
    uncovered.retain(|&x| !chosen.iter().any(|p| covers(p, x)));
    while let Some(&first) = uncovered.iter().next() {
        let best = primes
            .iter()
            .filter(|p| !chosen.contains(p))
            .max_by_key(|p| {
                (
                    uncovered.iter().filter(|&&x| covers(p, x)).count(),
                    covers(p, first),
                    std::cmp::Reverse(p.1.count_ones()),
                )
            })
            .copied()
            .expect("every minterm is covered by some prime");
        chosen.push(best);
        uncovered.retain(|&x| !covers(&best, x));
    }
    let min_minterm = |&(v, m): &(u32, u32)| {
        minterms
            .iter()
            .copied()
            .filter(|&x| x & !m == v)
            .min()
            .unwrap_or(v)
    };
    chosen.sort_by_key(|p| (min_minterm(p), p.1));
    chosen
        .into_iter()
        .map(|(v, m)| {
            (0..n)
                .filter(|i| m & (1 << i) == 0)
                .map(|i| (i, v & (1 << i) != 0))
                .collect()
        })
        .collect()
}

// === quoting ===

/// Characters that may stand bare in an ACL pattern.
fn bare_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@%+=~^*?,".contains(c))
}

fn double_quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn no_control(value: &str, what: &'static str) -> Result<(), RenderError> {
    if value.chars().any(char::is_control) {
        return Err(RenderError::Unsafe {
            what,
            value: value.to_owned(),
            reason: "control characters are not allowed",
        });
    }
    Ok(())
}

/// A pattern as HAProxy reads it as one word: bare when safe, else single-quoted, else
/// double-quoted with `\`, `"` and `$` escaped.
///
/// # Errors
/// [`RenderError::Unsafe`] for control characters.
pub fn quote(value: &str, what: &'static str) -> Result<String, RenderError> {
    no_control(value, what)?;
    Ok(if bare_ok(value) {
        value.to_owned()
    } else if !value.contains('\'') && !value.contains('\\') {
        format!("'{value}'")
    } else {
        double_quoted(value)
    })
}

/// Single quotes whenever possible (Vamp wrote `-m sub 'value'`), else double quotes.
fn quote_sub(value: &str, what: &'static str) -> Result<String, RenderError> {
    no_control(value, what)?;
    Ok(if !value.contains('\'') && !value.contains('\\') {
        format!("'{value}'")
    } else {
        double_quoted(value)
    })
}

/// A header or cookie name: an HTTP token without `#`, `$`, `'`, `` ` ``, `(`, `)` or `,`.
fn name(value: &str, what: &'static str) -> Result<String, RenderError> {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!%&*+.^_|~-".contains(c))
    {
        Ok(value.to_owned())
    } else {
        Err(RenderError::Unsafe {
            what,
            value: value.to_owned(),
            reason: "must be an HTTP token (letters, digits and !%&*+.^_|~-)",
        })
    }
}

/// Checks raw text with HAProxy's line lexer rules: single quotes are literal, double quotes
/// allow backslash escapes and would expand `$NAME` (refused: raw text must not read the
/// environment), `\\xHH` needs two hex digits, and quotes must close.
fn lex(v: &str) -> Result<(), &'static str> {
    #[derive(PartialEq)]
    enum State {
        Plain,
        Single,
        Double,
    }
    let mut state = State::Plain;
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match (&state, c) {
            (State::Single, '\'') => state = State::Plain,
            (State::Single, _) => {}
            (_, '\\') => match chars.next() {
                None => return Err("a trailing backslash"),
                Some('x') => {
                    let hex = (chars.next(), chars.next());
                    if !matches!(hex, (Some(a), Some(b)) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit())
                    {
                        return Err("\\x must be followed by two hex digits");
                    }
                }
                Some(_) => {}
            },
            (State::Plain, '\'') => state = State::Single,
            (State::Plain, '"') => state = State::Double,
            (State::Double, '"') => state = State::Plain,
            (State::Double, '$') => {
                return Err("'$' inside double quotes would read an environment variable");
            }
            _ => {}
        }
    }
    if state == State::Plain {
        Ok(())
    } else {
        Err("an unclosed quote")
    }
}

/// A raw HAProxy criterion (`<...>` in a condition, or a condition that does not parse):
/// passed through, but it must stay on its line and hold no comment.
pub fn raw(value: &str, what: &'static str) -> Result<String, RenderError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(RenderError::Unsafe {
            what,
            value: value.to_owned(),
            reason: "empty",
        });
    }
    if v.chars().any(char::is_control) {
        return Err(RenderError::Unsafe {
            what,
            value: value.to_owned(),
            reason: "control characters are not allowed",
        });
    }
    if v.contains('#') {
        return Err(RenderError::Unsafe {
            what,
            value: value.to_owned(),
            reason: "'#' would start a comment",
        });
    }
    lex(v).map_err(|reason| RenderError::Unsafe {
        what,
        value: value.to_owned(),
        reason,
    })?;
    Ok(v.to_owned())
}

/// Splits on whitespace outside single and double quotes.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some('"'), '\\') => escaped = true,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => {
                quote = Some(c);
                start.get_or_insert(i);
            }
            (None, c) if c.is_whitespace() => {
                if let Some(s) = start.take() {
                    out.push(&text[s..i]);
                }
            }
            (None, _) => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// A raw ACL criterion (`<hdr_sub(user-agent) Android>`, or a condition that does not parse):
/// it must start with a known HAProxy fetch ([`crate::fetches`]), use only the `-i`, `-n`,
/// `-m <method>` and `--` flags (no `-f` or `-M` files), and pass [`raw`]'s line checks.
pub fn raw_criterion(value: &str) -> Result<String, RenderError> {
    let v = raw(value, "raw ACL")?;
    let unsafe_raw = |reason: &'static str| RenderError::Unsafe {
        what: "raw ACL",
        value: value.to_owned(),
        reason,
    };
    let ws = words(&v);
    let first = ws.first().copied().unwrap_or_default();
    let (fetch, args) = match first.find('(') {
        Some(i) => (&first[..i], &first[i..]),
        None => (first, ""),
    };
    if !crate::fetches::is_fetch(fetch) {
        return Err(unsafe_raw(
            "must start with an HAProxy 2.6 sample fetch (e.g. hdr_sub(user-agent), path_beg, req.hdr(host))",
        ));
    }
    if !args.is_empty() && (!args.ends_with(')') || args[1..args.len() - 1].contains(['(', ')'])) {
        return Err(unsafe_raw("the fetch's arguments must be one (...) group"));
    }
    let mut rest = ws[1..].iter();
    while let Some(w) = rest.next() {
        match *w {
            "--" => break,
            "-i" | "-n" => {}
            "-m" => {
                let method = rest.next().copied().unwrap_or_default();
                if ![
                    "found", "bool", "int", "ip", "bin", "len", "str", "sub", "reg", "beg", "end",
                    "dir", "dom",
                ]
                .contains(&method)
                {
                    return Err(unsafe_raw(
                        "-m needs a match method (found, bool, int, ip, bin, len, str, sub, reg, beg, end, dir, dom)",
                    ));
                }
            }
            w if w.starts_with('-')
                && w.len() > 1
                && !w[1..].starts_with(|c: char| c.is_ascii_digit()) =>
            {
                return Err(unsafe_raw("only the -i, -n, -m and -- flags are allowed"));
            }
            _ => break,
        }
    }
    Ok(v)
}

/// A pattern, after `--` when HAProxy would otherwise misread it: a leading `-` is a flag, and
/// a first word that names a converter is taken as a converter ([`crate::fetches::CONVERTERS`]).
fn pattern(quoted: String, value: &str) -> String {
    let lead: String = value
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect::<String>()
        .to_ascii_lowercase();
    if value.starts_with('-') || crate::fetches::is_converter(&lead) {
        format!("-- {quoted}")
    } else {
        quoted
    }
}

/// The ACL criterion of a test with a polarity; the bool says whether the criterion already
/// includes the negation (Vamp's `req.cook_cnt(x) eq 0` for a missing cookie).
fn criterion(test: &ConditionOperand, positive: bool) -> Result<(String, bool), RenderError> {
    Ok(match (test, positive) {
        (ConditionOperand::Host(v), _) => (
            format!("req.hdr(host) {}", pattern(quote(v, "host")?, v)),
            false,
        ),
        (ConditionOperand::Cookie(v), true) => (
            format!("req.cook({}) -m found", name(v, "cookie name")?),
            false,
        ),
        (ConditionOperand::Cookie(v), false) => (
            format!("req.cook_cnt({}) eq 0", name(v, "cookie name")?),
            true,
        ),
        (ConditionOperand::Header(v), true) => (
            format!("req.hdr_cnt({}) gt 0", name(v, "header name")?),
            false,
        ),
        (ConditionOperand::Header(v), false) => (
            format!("req.hdr_cnt({}) eq 0", name(v, "header name")?),
            true,
        ),
        (ConditionOperand::UserAgent(v), _) => (
            format!(
                "req.fhdr(User-Agent) -m sub {}",
                pattern(quote_sub(v, "user agent")?, v)
            ),
            false,
        ),
        // Vamp wrote `req.cook_sub(n) v`, which HAProxy rejects: the fetch is req.cook.
        (ConditionOperand::CookieContains(n, v), _) => (
            format!(
                "req.cook({}) -m sub {}",
                name(n, "cookie name")?,
                pattern(quote(v, "cookie value")?, v)
            ),
            false,
        ),
        (ConditionOperand::HeaderContains(n, v), _) => (
            format!(
                "req.fhdr({}) -m sub {}",
                name(n, "header name")?,
                pattern(quote_sub(v, "header value")?, v)
            ),
            false,
        ),
        (ConditionOperand::Value(v), _) => (raw_criterion(v)?, false),
    })
}

/// Resolves a condition to ACLs: `None` when it never holds, `Acls { condition: None }` when
/// it always does.
///
/// # Errors
/// [`RenderError::Unsafe`] for a value that cannot be written safely,
/// [`RenderError::ConditionTooComplex`] beyond [`MAX_CONDITION_TESTS`] tests.
///
/// ```
/// use vamp_haproxy::acl::resolve;
/// let acls = resolve("(User-Agent = Chrome OR User-Agent = Firefox) AND has cookie vamp").unwrap().unwrap();
/// assert_eq!(acls.condition.as_deref(), Some("de0de9d22824714a c506a28623f9f83d or 7b796e5d25d870c6 c506a28623f9f83d"));
/// ```
pub fn resolve(definition: &str) -> Result<Option<Acls>, RenderError> {
    let (tests, dnf) = minimise(definition)?;
    let terms = match dnf {
        Dnf::False => return Ok(None),
        Dnf::True => {
            return Ok(Some(Acls {
                acls: Vec::new(),
                condition: None,
            }));
        }
        Dnf::Terms(t) => t,
    };
    let mut acls: Vec<Acl> = Vec::new();
    let mut rendered_terms = Vec::new();
    for term in terms {
        let mut literals = Vec::new();
        for (i, positive) in term {
            let (definition, negation_included) = criterion(&tests[i], positive)?;
            let acl = Acl::new(definition);
            let literal = if positive || negation_included {
                acl.name.clone()
            } else {
                format!("!{}", acl.name)
            };
            if !acls.contains(&acl) {
                acls.push(acl);
            }
            literals.push(literal);
        }
        rendered_terms.push(literals.join(" "));
    }
    Ok(Some(Acls {
        acls,
        condition: Some(rendered_terms.join(" or ")),
    }))
}
