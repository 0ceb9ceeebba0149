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

/// At most this many bytes in one condition's text.
pub const MAX_CONDITION_LENGTH: usize = 4096;

/// At most this many terms in a rendered condition (each becomes at most one line).
pub const MAX_CONDITION_TERMS: usize = 4096;

/// The work (implicant comparisons and cover steps) the exact minimisation may spend on one
/// condition; past it the condition's own disjunctive form is used (equivalent, maybe longer).
/// The worst 12-test condition then renders in milliseconds instead of seconds.
pub const MINIMISE_BUDGET: usize = 400_000;

fn too_large(definition: &str, reason: String) -> RenderError {
    RenderError::ConditionTooLarge {
        condition: definition.chars().take(200).collect(),
        reason,
    }
}

/// Parses, expands aliases and minimises a condition. Returns the distinct tests (in
/// first-occurrence order) and the minimised form.
///
/// Small conditions get an exact minimum (Quine–McCluskey with a greedy cover); when that
/// would cost more than [`MINIMISE_BUDGET`], the condition's own disjunctive normal form
/// (distributed, duplicates and absorbed terms removed) is used instead: logically the same,
/// computed in time polynomial in its size.
///
/// # Errors
/// [`RenderError::ConditionTooComplex`] beyond [`MAX_CONDITION_TESTS`] distinct tests,
/// [`RenderError::ConditionTooLarge`] beyond [`MAX_CONDITION_LENGTH`] bytes or
/// [`MAX_CONDITION_TERMS`] terms.
pub fn minimise(definition: &str) -> Result<(Vec<ConditionOperand>, Dnf), RenderError> {
    if definition.len() > MAX_CONDITION_LENGTH {
        return Err(too_large(
            definition,
            format!("longer than {MAX_CONDITION_LENGTH} bytes"),
        ));
    }
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
    let terms = match quine_mccluskey(n, &minterms, MINIMISE_BUDGET) {
        Some(terms) => terms,
        None => distributed(&expr, &index)
            .ok_or_else(|| {
                too_large(
                    definition,
                    format!("more than {MAX_CONDITION_TERMS} terms in disjunctive form"),
                )
            })?
            .into_iter()
            .map(|(pos, neg)| {
                (0..n)
                    .filter(|i| (pos | neg) & (1 << i) != 0)
                    .map(|i| (i, pos & (1 << i) != 0))
                    .collect()
            })
            .collect(),
    };
    if terms.len() > MAX_CONDITION_TERMS {
        return Err(too_large(
            definition,
            format!("more than {MAX_CONDITION_TERMS} terms in disjunctive form"),
        ));
    }
    Ok((tests, Dnf::Terms(terms)))
}

/// A conjunction as (tests that must hold, tests that must not), as bit masks.
type Cube = (u32, u32);

/// The expression's disjunctive normal form by distribution, without contradictory,
/// duplicate or absorbed terms; `None` past [`MAX_CONDITION_TERMS`] terms.
fn distributed(
    expr: &ConditionExpr,
    index: &BTreeMap<&ConditionOperand, usize>,
) -> Option<Vec<Cube>> {
    fn simplify(mut cubes: Vec<Cube>) -> Option<Vec<Cube>> {
        cubes.retain(|(p, n)| p & n == 0);
        cubes.sort_by_key(|(p, n)| ((p | n).count_ones(), *p, *n));
        cubes.dedup();
        let mut kept: Vec<Cube> = Vec::new();
        for c in cubes {
            // Absorbed when a kept (smaller) cube's literals are a subset of this one's.
            if !kept.iter().any(|k| k.0 & c.0 == k.0 && k.1 & c.1 == k.1) {
                kept.push(c);
            }
        }
        (kept.len() <= MAX_CONDITION_TERMS).then_some(kept)
    }
    fn go(
        e: &ConditionExpr,
        negated: bool,
        index: &BTreeMap<&ConditionOperand, usize>,
    ) -> Option<Vec<Cube>> {
        match (e, negated) {
            (BoolExpr::True, false) | (BoolExpr::False, true) => Some(vec![(0, 0)]),
            (BoolExpr::True, true) | (BoolExpr::False, false) => Some(Vec::new()),
            (BoolExpr::Value(op), _) => {
                let bit = 1u32 << index[op];
                Some(vec![if negated { (0, bit) } else { (bit, 0) }])
            }
            (BoolExpr::Not(x), _) => go(x, !negated, index),
            (BoolExpr::Or(a, b), false) | (BoolExpr::And(a, b), true) => {
                let mut cubes = go(a, negated, index)?;
                cubes.extend(go(b, negated, index)?);
                simplify(cubes)
            }
            (BoolExpr::And(a, b), false) | (BoolExpr::Or(a, b), true) => {
                let left = go(a, negated, index)?;
                let right = go(b, negated, index)?;
                if left.len().saturating_mul(right.len()) > MAX_CONDITION_TERMS * 16 {
                    return None;
                }
                let cubes = left
                    .iter()
                    .flat_map(|l| right.iter().map(move |r| (l.0 | r.0, l.1 | r.1)))
                    .collect();
                simplify(cubes)
            }
        }
    }
    go(expr, false, index)
}

/// Prime implicants as (value, don't-care mask), then a cover: essential primes, then greedily
/// the prime covering most uncovered minterms. Terms are ordered by their smallest minterm,
/// then by mask (which reproduces Vamp's order where Vamp was right). `None` when the work
/// would exceed `budget`.
fn quine_mccluskey(n: usize, minterms: &[u32], budget: usize) -> Option<Vec<Term>> {
    let mut work = 0usize;
    let mut spend = |units: usize| {
        work = work.saturating_add(units);
        work <= budget
    };
    // Implicants combine with the one differing in a single bit with the same mask: look each
    // partner up instead of comparing all pairs.
    let mut current: BTreeSet<(u32, u32)> = minterms.iter().map(|&m| (m, 0)).collect();
    let mut primes: BTreeSet<(u32, u32)> = BTreeSet::new();
    while !current.is_empty() {
        if !spend(current.len() * n.max(1)) {
            return None;
        }
        let mut next = BTreeSet::new();
        let mut combined = BTreeSet::new();
        for &(v, m) in &current {
            for bit in (0..n).map(|i| 1u32 << i) {
                if m & bit == 0 && v & bit == 0 && current.contains(&(v | bit, m)) {
                    next.insert((v, m | bit));
                    combined.insert((v, m));
                    combined.insert((v | bit, m));
                }
            }
        }
        primes.extend(current.difference(&combined).copied());
        current = next;
    }
    let primes: Vec<(u32, u32)> = primes.into_iter().collect();
    // Which minterms (by position) each prime covers, as bit sets.
    let position: BTreeMap<u32, usize> =
        minterms.iter().enumerate().map(|(i, &x)| (x, i)).collect();
    let words = minterms.len().div_ceil(64);
    let mut cover: Vec<Vec<u64>> = Vec::with_capacity(primes.len());
    let mut coverers: Vec<Vec<usize>> = vec![Vec::new(); minterms.len()];
    for (p, &(v, m)) in primes.iter().enumerate() {
        if !spend(words + (1usize << m.count_ones())) {
            return None;
        }
        let mut bits = vec![0u64; words];
        // Every value of the cube: v with any subset of m's bits set.
        let mut sub = m;
        loop {
            if let Some(&i) = position.get(&(v | sub)) {
                bits[i / 64] |= 1 << (i % 64);
                coverers[i].push(p);
            }
            if sub == 0 {
                break;
            }
            sub = (sub - 1) & m;
        }
        cover.push(bits);
    }
    let mut chosen: Vec<usize> = Vec::new();
    // Essential primes: the only prime covering some minterm.
    for c in &coverers {
        if c.len() == 1 && !chosen.contains(&c[0]) {
            chosen.push(c[0]);
        }
    }
    let mut uncovered = vec![0u64; words];
    for i in 0..minterms.len() {
        uncovered[i / 64] |= 1 << (i % 64);
    }
    for &p in &chosen {
        for (u, c) in uncovered.iter_mut().zip(&cover[p]) {
            *u &= !c;
        }
    }
    let count = |p: usize, uncovered: &[u64]| -> u32 {
        cover[p]
            .iter()
            .zip(uncovered)
            .map(|(c, u)| (c & u).count_ones())
            .sum()
    };
    while let Some(first) = uncovered
        .iter()
        .enumerate()
        .find(|(_, w)| **w != 0)
        .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    {
        if !spend(primes.len() * words) {
            return None;
        }
        let best = (0..primes.len())
            .filter(|p| !chosen.contains(p))
            .max_by_key(|&p| {
                (
                    count(p, &uncovered),
                    cover[p][first / 64] & (1 << (first % 64)) != 0,
                    std::cmp::Reverse(primes[p].1.count_ones()),
                )
            })
            .expect("every minterm is covered by some prime");
        chosen.push(best);
        for (u, c) in uncovered.iter_mut().zip(&cover[best]) {
            *u &= !c;
        }
    }
    let min_minterm = |p: usize| {
        let (v, m) = primes[p];
        minterms
            .iter()
            .copied()
            .filter(|&x| x & !m == v)
            .min()
            .unwrap_or(v)
    };
    let mut chosen: Vec<(u32, u32, usize)> = chosen
        .into_iter()
        .map(|p| (min_minterm(p), primes[p].1, p))
        .collect();
    chosen.sort_by_key(|&(min, mask, _)| (min, mask));
    Some(
        chosen
            .into_iter()
            .map(|(_, _, p)| {
                let (v, m) = primes[p];
                (0..n)
                    .filter(|i| m & (1 << i) == 0)
                    .map(|i| (i, v & (1 << i) != 0))
                    .collect()
            })
            .collect(),
    )
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
    // `acl <name> <criterion>` on one line of at most 64 words.
    if ws.len() + 2 > crate::lex::MAX_WORDS {
        return Err(unsafe_raw(
            "too many words: HAProxy reads at most 64 on a line",
        ));
    }
    let first = ws.first().copied().unwrap_or_default();
    let (fetch, args) = match first.find('(') {
        Some(i) => (&first[..i], &first[i..]),
        None => (first, ""),
    };
    if crate::fetches::is_sensitive_fetch(fetch) {
        return Err(unsafe_raw(
            "the env fetch reads HAProxy's environment (credentials) and is not allowed",
        ));
    }
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
