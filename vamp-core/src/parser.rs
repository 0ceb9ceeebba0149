//! Parsers for the small languages inside DSL values: value interpolation (`$db.host`,
//! `${db.ports.port}`), boolean expressions, and route selectors (`label(app)(sava) and
//! port(8080)`).
//!
//! All parsers are iterative or depth-limited: no input can overflow the stack.

use std::fmt;

/// Maximum nesting of parentheses and negations in boolean expressions.
pub const MAX_EXPRESSION_DEPTH: usize = 64;

/// Maximum number of operands and operators in one boolean expression.
pub const MAX_EXPRESSION_TERMS: usize = 1024;

// === value interpolation ===

/// A part of an interpolated value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValuePart {
    /// Literal text (`$$` already unescaped to `$`).
    Literal(String),
    /// `$name`: a trait of the same breed or a variable in scope.
    Local(String),
    /// `$cluster.host`.
    Host(String),
    /// `$cluster.group.name` (`group` is `ports`, `environment_variables`, `constants`, ...).
    Trait {
        /// The dependency alias or cluster.
        cluster: String,
        /// The trait group.
        group: String,
        /// The trait's name.
        name: String,
    },
    /// `$schema://path` (for example `$config://vamp.namespace`).
    Global {
        /// The schema.
        schema: String,
        /// The dotted path.
        path: String,
    },
}

impl fmt::Display for ValuePart {
    /// Writes the reference as Vamp named it (`db.ports.port`, `db.host`, `port`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(s) => f.write_str(s),
            Self::Local(n) => f.write_str(n),
            Self::Host(c) => write!(f, "{c}.host"),
            Self::Trait {
                cluster,
                group,
                name,
            } => write!(f, "{cluster}.{group}.{name}"),
            Self::Global { schema, path } => write!(f, "{schema}://{path}"),
        }
    }
}

fn is_variable_char(c: char) -> bool {
    !matches!(
        c,
        ' ' | '\n'
            | '\r'
            | '\t'
            | '\x0c'
            | '/'
            | '['
            | ']'
            | '.'
            | '{'
            | '}'
            | ':'
            | ';'
            | ','
            | '$'
    )
}

fn variable_part(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !is_variable_char(c)).unwrap_or(s.len());
    (end > 0).then(|| (&s[..end], &s[end..]))
}

/// Parses a variable (`Global | Trait | Host | Local`, first match wins) at the start of `s`.
fn variable(s: &str) -> Option<(ValuePart, &str)> {
    let (first, rest) = variable_part(s)?;
    // GlobalVariable := VP "://" VP ("." VP)*
    if let Some(after) = rest.strip_prefix("://")
        && let Some((p, mut tail)) = variable_part(after)
    {
        let mut path = p.to_owned();
        while let Some(next) = tail.strip_prefix('.') {
            match variable_part(next) {
                Some((p, t)) => {
                    path.push('.');
                    path.push_str(p);
                    tail = t;
                }
                None => break,
            }
        }
        return Some((
            ValuePart::Global {
                schema: first.to_owned(),
                path,
            },
            tail,
        ));
    }
    // TraitVariable := VP "." VP "." VP
    if let Some(after) = rest.strip_prefix('.')
        && let Some((group, t)) = variable_part(after)
        && let Some(after2) = t.strip_prefix('.')
        && let Some((name, t2)) = variable_part(after2)
    {
        return Some((
            ValuePart::Trait {
                cluster: first.to_owned(),
                group: group.to_owned(),
                name: name.to_owned(),
            },
            t2,
        ));
    }
    // HostVariable := VP ".host"
    if let Some(tail) = rest.strip_prefix(".host") {
        return Some((ValuePart::Host(first.to_owned()), tail));
    }
    Some((ValuePart::Local(first.to_owned()), rest))
}

/// Parses an interpolated value into its parts; adjacent literals are joined.
///
/// Unlike Vamp, a value whose tail cannot be parsed is an error (Vamp silently dropped the
/// tail: `abc${a b}` became `abc`).
///
/// # Errors
/// The reason, as text, when the value cannot be parsed (`${a b}`, a lone `$`).
///
/// ```
/// use vamp_core::parser::{parse_value, ValuePart};
/// let parts = parse_value("http://${api.host}:$port/a$$b").unwrap();
/// assert_eq!(parts, vec![
///     ValuePart::Literal("http://".into()),
///     ValuePart::Host("api".into()),
///     ValuePart::Literal(":".into()),
///     ValuePart::Local("port".into()),
///     ValuePart::Literal("/a$b".into()),
/// ]);
/// ```
pub fn parse_value(input: &str) -> Result<Vec<ValuePart>, String> {
    let mut parts: Vec<ValuePart> = Vec::new();
    let push_literal = |parts: &mut Vec<ValuePart>, s: &str| {
        if let Some(ValuePart::Literal(prev)) = parts.last_mut() {
            prev.push_str(s);
        } else {
            parts.push(ValuePart::Literal(s.to_owned()));
        }
    };
    let mut rest = input;
    while !rest.is_empty() {
        if let Some(i) = rest.find('$') {
            if i > 0 {
                push_literal(&mut parts, &rest[..i]);
                rest = &rest[i..];
                continue;
            }
        } else {
            push_literal(&mut parts, rest);
            break;
        }
        // rest starts with '$'
        if let Some(after) = rest.strip_prefix("$$") {
            push_literal(&mut parts, "$");
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix("${") {
            let after = after.trim_start_matches([' ', '\t', '\n', '\r', '\x0c']);
            if let Some((part, tail)) = variable(after) {
                let tail = tail.trim_start_matches([' ', '\t', '\n', '\r', '\x0c']);
                if let Some(tail) = tail.strip_prefix('}') {
                    parts.push(part);
                    rest = tail;
                    continue;
                }
            }
            return Err(format!(
                "invalid variable reference in '{input}' at '{rest}'"
            ));
        }
        match variable(&rest[1..]) {
            Some((part, tail)) => {
                parts.push(part);
                rest = tail;
            }
            None => {
                return Err(format!(
                    "invalid variable reference in '{input}' at '{rest}'"
                ));
            }
        }
    }
    Ok(parts)
}

/// The references (non-literal parts) in a value.
///
/// # Errors
/// As [`parse_value`].
pub fn value_references(input: &str) -> Result<Vec<ValuePart>, String> {
    Ok(parse_value(input)?
        .into_iter()
        .filter(|p| !matches!(p, ValuePart::Literal(_)))
        .collect())
}

// === boolean expressions ===

/// A boolean expression over operands of type `T`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoolExpr<T> {
    /// Constant true.
    True,
    /// Constant false.
    False,
    /// An operand.
    Value(T),
    /// Negation.
    Not(Box<BoolExpr<T>>),
    /// Conjunction.
    And(Box<BoolExpr<T>>, Box<BoolExpr<T>>),
    /// Disjunction.
    Or(Box<BoolExpr<T>>, Box<BoolExpr<T>>),
}

impl<T> BoolExpr<T> {
    /// Evaluates the expression with `f` for operands.
    pub fn eval(&self, f: &mut impl FnMut(&T) -> bool) -> bool {
        match self {
            Self::True => true,
            Self::False => false,
            Self::Value(v) => f(v),
            Self::Not(e) => !e.eval(f),
            Self::And(a, b) => a.eval(f) && b.eval(f),
            Self::Or(a, b) => a.eval(f) || b.eval(f),
        }
    }

    /// Every operand, left to right.
    pub fn operands(&self) -> Vec<&T> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                Self::True | Self::False => {}
                Self::Value(v) => out.push(v),
                Self::Not(x) => stack.push(x),
                Self::And(a, b) | Self::Or(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
            }
        }
        out
    }
}

/// A cursor over expression text, shared by the boolean-expression parsers.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    /// The unread text.
    pub fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    /// Whether everything was read.
    pub fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// Skips whitespace; returns whether any was skipped.
    pub fn ws(&mut self) -> bool {
        let rest = self.rest();
        let trimmed = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0c']);
        self.pos += rest.len() - trimmed.len();
        rest.len() != trimmed.len()
    }

    /// Consumes `token` (ASCII case-insensitively if `ci`) if it is next.
    pub fn eat(&mut self, token: &str, ci: bool) -> bool {
        let rest = self.rest();
        let ok = rest.len() >= token.len()
            && rest.is_char_boundary(token.len())
            && if ci {
                rest[..token.len()].eq_ignore_ascii_case(token)
            } else {
                &rest[..token.len()] == token
            };
        if ok {
            self.pos += token.len();
        }
        ok
    }

    /// Consumes a keyword (case-insensitively if `ci`) only if it is followed by whitespace.
    pub fn eat_word(&mut self, word: &str, ci: bool) -> bool {
        let save = *self;
        if self.eat(word, ci) && self.ws() {
            return true;
        }
        *self = save;
        false
    }

    /// Consumes characters while `f` holds; returns them.
    pub fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c: char| !f(c)).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }
}

/// Options of the boolean grammar.
#[derive(Debug, Clone, Copy)]
pub struct BoolSyntax {
    /// Accept `true|t|1` / `false|f|0` constants.
    pub constants: bool,
    /// `not` must be lower-case (the condition grammar); otherwise case-insensitive.
    pub lower_case_not: bool,
}

/// Parses a whole boolean expression with `operand` for operands.
///
/// Grammar (PEG): `Expr := Term (("or"|"||"|"|") Term)*`, `Term := Factor (("and"|"&&"|"&")
/// Factor)*`, `Factor := ("!"|"not") Factor | "(" Expr ")" | constant | operand`. And binds
/// tighter than or; both associate to the left; word operators need surrounding whitespace.
///
/// # Errors
/// A message when the text is not an expression or nests deeper than
/// [`MAX_EXPRESSION_DEPTH`].
pub fn parse_bool<'a, T>(
    text: &'a str,
    syntax: BoolSyntax,
    operand: &mut dyn FnMut(&mut Cursor<'a>) -> Option<T>,
) -> Result<BoolExpr<T>, String> {
    let mut c = Cursor::new(text);
    let mut budget = MAX_EXPRESSION_TERMS;
    let e = expr(&mut c, syntax, operand, 0, &mut budget)?;
    c.ws();
    if !c.at_end() {
        return Err(format!("unexpected '{}' in '{text}'", c.rest()));
    }
    Ok(e)
}

fn spend(budget: &mut usize) -> Result<(), String> {
    *budget = budget
        .checked_sub(1)
        .ok_or_else(|| format!("expression has more than {MAX_EXPRESSION_TERMS} terms"))?;
    Ok(())
}

fn expr<'a, T>(
    c: &mut Cursor<'a>,
    s: BoolSyntax,
    op: &mut dyn FnMut(&mut Cursor<'a>) -> Option<T>,
    depth: usize,
    budget: &mut usize,
) -> Result<BoolExpr<T>, String> {
    let mut left = term(c, s, op, depth, budget)?;
    loop {
        let save = *c;
        c.ws();
        let matched = c.eat("||", false) || c.eat("|", false) || {
            let before = *c;
            if c.eat("or", true) && (c.ws() || c.rest().starts_with('(')) {
                true
            } else {
                *c = before;
                false
            }
        };
        if !matched {
            *c = save;
            return Ok(left);
        }
        spend(budget)?;
        let right = term(c, s, op, depth, budget)?;
        left = BoolExpr::Or(Box::new(left), Box::new(right));
    }
}

fn term<'a, T>(
    c: &mut Cursor<'a>,
    s: BoolSyntax,
    op: &mut dyn FnMut(&mut Cursor<'a>) -> Option<T>,
    depth: usize,
    budget: &mut usize,
) -> Result<BoolExpr<T>, String> {
    let mut left = factor(c, s, op, depth, budget)?;
    loop {
        let save = *c;
        c.ws();
        let matched = c.eat("&&", false) || c.eat("&", false) || {
            let before = *c;
            if c.eat("and", true) && (c.ws() || c.rest().starts_with('(')) {
                true
            } else {
                *c = before;
                false
            }
        };
        if !matched {
            *c = save;
            return Ok(left);
        }
        spend(budget)?;
        let right = factor(c, s, op, depth, budget)?;
        left = BoolExpr::And(Box::new(left), Box::new(right));
    }
}

fn factor<'a, T>(
    c: &mut Cursor<'a>,
    s: BoolSyntax,
    op: &mut dyn FnMut(&mut Cursor<'a>) -> Option<T>,
    depth: usize,
    budget: &mut usize,
) -> Result<BoolExpr<T>, String> {
    if depth > MAX_EXPRESSION_DEPTH {
        return Err(format!(
            "expression nests deeper than {MAX_EXPRESSION_DEPTH} levels"
        ));
    }
    c.ws();
    if c.eat("!", false) {
        let inner = factor(c, s, op, depth + 1, budget)?;
        return Ok(BoolExpr::Not(Box::new(inner)));
    }
    {
        let save = *c;
        if c.eat("not", !s.lower_case_not) && (c.ws() || c.rest().starts_with('(')) {
            let inner = factor(c, s, op, depth + 1, budget)?;
            return Ok(BoolExpr::Not(Box::new(inner)));
        }
        *c = save;
    }
    // An operand first: operands such as `<...>` or `image((.*))` may start with '('.
    let save = *c;
    if let Some(v) = op(c) {
        c.ws();
        spend(budget)?;
        return Ok(BoolExpr::Value(v));
    }
    *c = save;
    if c.eat("(", false) {
        let inner = expr(c, s, op, depth + 1, budget)?;
        c.ws();
        if !c.eat(")", false) {
            return Err(format!("missing ')' before '{}'", c.rest()));
        }
        c.ws();
        return Ok(inner);
    }
    if s.constants {
        let save = *c;
        let word = c.take_while(|ch| ch.is_ascii_alphanumeric());
        let lower = word.to_ascii_lowercase();
        match lower.as_str() {
            "true" | "t" | "1" => return Ok(BoolExpr::True),
            "false" | "f" | "0" => return Ok(BoolExpr::False),
            _ => *c = save,
        }
    }
    Err(format!("expected an operand at '{}'", c.rest()))
}

// === route selectors ===

/// One test of a route selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorOperand {
    /// `name(regex)` / `id(regex)`.
    Name(String),
    /// `kind(regex)` / `type(regex)`.
    Kind(String),
    /// `namespace(regex)` / `group(regex)`.
    Namespace(String),
    /// `image(regex)`.
    Image(String),
    /// `ip(regex)` / `host(regex)`.
    Ip(String),
    /// `port(n)`.
    Port(String),
    /// `index(n)` / `port_index(n)`.
    PortIndex(String),
    /// `label(name regex)(value regex)`.
    Label(String, String),
}

/// Reads a balanced `( ... )` group, returning its inside.
fn paren_group<'a>(c: &mut Cursor<'a>) -> Option<&'a str> {
    c.ws();
    let rest = c.rest();
    if !rest.starts_with('(') {
        return None;
    }
    let mut depth = 0usize;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    c.eat(&rest[..=i], false);
                    return Some(&rest[1..i]);
                }
            }
            _ => {}
        }
    }
    None
}

fn selector_operand(c: &mut Cursor<'_>) -> Option<SelectorOperand> {
    let save = *c;
    let word = c.take_while(|ch| ch.is_ascii_alphabetic() || ch == '_');
    let lower = word.to_ascii_lowercase();
    let result = match lower.as_str() {
        "name" | "id" => paren_group(c).map(|v| SelectorOperand::Name(v.to_owned())),
        "kind" | "type" => paren_group(c).map(|v| SelectorOperand::Kind(v.to_owned())),
        "namespace" | "group" => paren_group(c).map(|v| SelectorOperand::Namespace(v.to_owned())),
        "image" => paren_group(c).map(|v| SelectorOperand::Image(v.to_owned())),
        "ip" | "host" => paren_group(c).map(|v| SelectorOperand::Ip(v.to_owned())),
        "port" => paren_group(c)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .map(|v| SelectorOperand::Port(v.to_owned())),
        "index" | "port_index" => paren_group(c)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .map(|v| SelectorOperand::PortIndex(v.to_owned())),
        "label" => paren_group(c).and_then(|k| {
            paren_group(c).map(|v| SelectorOperand::Label(k.to_owned(), v.to_owned()))
        }),
        _ => None,
    };
    if result.is_none() {
        *c = save;
    }
    result
}

/// Parses a route selector and checks every regular expression in it.
///
/// # Errors
/// A message when the selector does not parse or a regular expression is invalid.
///
/// ```
/// use vamp_core::parser::parse_selector;
/// assert!(parse_selector("label(winter)(cold) and id(cold)").is_ok());
/// assert!(parse_selector("cold(winter)").is_err());
/// assert!(parse_selector("image([)").is_err());
/// ```
pub fn parse_selector(text: &str) -> Result<BoolExpr<SelectorOperand>, String> {
    let syntax = BoolSyntax {
        constants: true,
        lower_case_not: false,
    };
    let expr = parse_bool(text, syntax, &mut selector_operand)?;
    for op in expr.operands() {
        let regexes: Vec<&str> = match op {
            SelectorOperand::Name(r)
            | SelectorOperand::Kind(r)
            | SelectorOperand::Namespace(r)
            | SelectorOperand::Image(r)
            | SelectorOperand::Ip(r) => vec![r],
            SelectorOperand::Label(k, v) => vec![k, v],
            SelectorOperand::Port(_) | SelectorOperand::PortIndex(_) => vec![],
        };
        for r in regexes {
            regex::Regex::new(r).map_err(|e| format!("invalid regular expression '{r}': {e}"))?;
        }
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ValuePart::*;

    fn l(s: &str) -> ValuePart {
        Literal(s.into())
    }
    fn loc(s: &str) -> ValuePart {
        Local(s.into())
    }
    fn t(c: &str, g: &str, n: &str) -> ValuePart {
        Trait {
            cluster: c.into(),
            group: g.into(),
            name: n.into(),
        }
    }

    // reader-fixtures.md A.5 ValueResolverSpec.
    #[test]
    fn value_resolver_spec() {
        let cases: Vec<(&str, Vec<ValuePart>)> = vec![
            ("abc", vec![l("abc")]),
            ("$port", vec![loc("port")]),
            ("a$port", vec![l("a"), loc("port")]),
            ("$port/", vec![loc("port"), l("/")]),
            ("http://${host}/", vec![l("http://"), loc("host"), l("/")]),
            ("${port}", vec![loc("port")]),
            ("a${db.host}", vec![l("a"), Host("db".into())]),
            ("${port}/", vec![loc("port"), l("/")]),
            (
                "{${es.constants.port}}",
                vec![l("{"), t("es", "constants", "port"), l("}")],
            ),
            (
                "/$a$b$c/",
                vec![l("/"), loc("a"), loc("b"), loc("c"), l("/")],
            ),
            ("a$$b", vec![l("a$b")]),
            ("a$$$$b", vec![l("a$$b")]),
            ("$$$d", vec![l("$"), loc("d")]),
            ("a$$b$d", vec![l("a$b"), loc("d")]),
            (
                "http://${api.host}:$port/api/${api.constants.version}/${resource}/$id",
                vec![
                    l("http://"),
                    Host("api".into()),
                    l(":"),
                    loc("port"),
                    l("/api/"),
                    t("api", "constants", "version"),
                    l("/"),
                    loc("resource"),
                    l("/"),
                    loc("id"),
                ],
            ),
            ("a$db.host:", vec![l("a"), Host("db".into()), l(":")]),
            (
                "a$api.constants.version/",
                vec![l("a"), t("api", "constants", "version"), l("/")],
            ),
            (
                "a${http://a.b}/$config://c.d",
                vec![
                    l("a"),
                    Global {
                        schema: "http".into(),
                        path: "a.b".into(),
                    },
                    l("/"),
                    Global {
                        schema: "config".into(),
                        path: "c.d".into(),
                    },
                ],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_value(input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn unparsable_values() {
        for v in ["${a b}", "$", "abc${a b}", "x$ y", "${db.hosts}"] {
            assert!(parse_value(v).is_err(), "{v}");
        }
    }

    // reader-fixtures.md A.4 RouteSelectorParserSpec.
    #[test]
    fn route_selector_spec() {
        use SelectorOperand as S;
        let v = |o: SelectorOperand| BoolExpr::Value(o);
        let cases = vec![
            ("name(.*)", v(S::Name(".*".into()))),
            ("id(.*)", v(S::Name(".*".into()))),
            ("kind(app)", v(S::Kind("app".into()))),
            ("type(pod)", v(S::Kind("pod".into()))),
            ("namespace(default)", v(S::Namespace("default".into()))),
            ("group(vamp)", v(S::Namespace("vamp".into()))),
            ("image (^.*$)", v(S::Image("^.*$".into()))),
            ("ip(127.0.0.1)", v(S::Ip("127.0.0.1".into()))),
            ("host(localhost)", v(S::Ip("localhost".into()))),
            ("port(8080)", v(S::Port("8080".into()))),
            (
                "label(water)(ice)",
                v(S::Label("water".into(), "ice".into())),
            ),
            (
                "label (water) (ice) ",
                v(S::Label("water".into(), "ice".into())),
            ),
            ("index(0)", v(S::PortIndex("0".into()))),
            ("port_index(0)", v(S::PortIndex("0".into()))),
            ("image(^water:(.*)$)", v(S::Image("^water:(.*)$".into()))),
            ("image((.*)$)", v(S::Image("(.*)$".into()))),
            ("image(^(.*))", v(S::Image("^(.*)".into()))),
            ("image((.*))", v(S::Image("(.*)".into()))),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_selector(input).unwrap(), expected, "{input}");
        }
        let e = parse_selector("(id(water) and not label(water)(ice)) or image(solid)").unwrap();
        assert_eq!(
            e,
            BoolExpr::Or(
                Box::new(BoolExpr::And(
                    Box::new(v(S::Name("water".into()))),
                    Box::new(BoolExpr::Not(Box::new(v(S::Label(
                        "water".into(),
                        "ice".into()
                    )))))
                )),
                Box::new(v(S::Image("solid".into())))
            )
        );
        assert!(matches!(
            parse_selector("id(water) or not image(ice)").unwrap(),
            BoolExpr::Or(..)
        ));
        assert!(parse_selector("winter(cold)").is_err());
        assert!(parse_selector("image([)").is_err());
        assert_eq!(parse_selector("true").unwrap(), BoolExpr::True);
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let deep = format!("{}id(a){}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(parse_selector(&deep).is_err());
        let nots = format!("{}id(a)", "!".repeat(10_000));
        assert!(parse_selector(&nots).is_err());
    }
}

#[cfg(test)]
mod boolean_parser_spec {
    //! reader-fixtures.md A.2 BooleanParserSpec: the plain boolean grammar with word operands.
    use super::*;

    fn word(c: &mut Cursor<'_>) -> Option<String> {
        let save = *c;
        let w = c.take_while(|ch| ch.is_ascii_alphabetic());
        let lower = w.to_ascii_lowercase();
        if w.is_empty() || ["and", "or", "not", "true", "false", "t", "f"].contains(&lower.as_str())
        {
            *c = save;
            return None;
        }
        Some(w.to_owned())
    }

    fn parse(s: &str) -> BoolExpr<String> {
        parse_bool(
            s,
            BoolSyntax {
                constants: true,
                lower_case_not: false,
            },
            &mut word,
        )
        .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn v(s: &str) -> BoolExpr<String> {
        BoolExpr::Value(s.into())
    }
    fn and(a: BoolExpr<String>, b: BoolExpr<String>) -> BoolExpr<String> {
        BoolExpr::And(Box::new(a), Box::new(b))
    }
    fn or(a: BoolExpr<String>, b: BoolExpr<String>) -> BoolExpr<String> {
        BoolExpr::Or(Box::new(a), Box::new(b))
    }
    fn not(a: BoolExpr<String>) -> BoolExpr<String> {
        BoolExpr::Not(Box::new(a))
    }

    #[test]
    fn spec() {
        for s in ["a", " a", "a ", " a ", "((a))"] {
            assert_eq!(parse(s), v("a"), "{s}");
        }
        for s in ["TRUE", "t ", " 1 ", "((1))"] {
            assert_eq!(parse(s), BoolExpr::True, "{s}");
        }
        for s in ["False", " F", " 0 ", "(false)"] {
            assert_eq!(parse(s), BoolExpr::False, "{s}");
        }
        for s in ["not a", "! a", " not a "] {
            assert_eq!(parse(s), not(v("a")), "{s}");
        }
        for s in ["a and b", "a && b", "a & b", " a & b "] {
            assert_eq!(parse(s), and(v("a"), v("b")), "{s}");
        }
        assert_eq!(parse("a AND b And c"), and(and(v("a"), v("b")), v("c")));
        assert_eq!(parse("true and true"), and(BoolExpr::True, BoolExpr::True));
        assert_eq!(parse("1 and 0"), and(BoolExpr::True, BoolExpr::False));
        assert_eq!(parse("F && F"), and(BoolExpr::False, BoolExpr::False));
        assert_eq!(parse("a and true"), and(v("a"), BoolExpr::True));
        assert_eq!(parse("a & false"), and(v("a"), BoolExpr::False));
        for s in ["a or b", "a || b", "a | b", " a or  b "] {
            assert_eq!(parse(s), or(v("a"), v("b")), "{s}");
        }
        assert_eq!(parse("a Or b | c"), or(or(v("a"), v("b")), v("c")));
        assert_eq!(parse("(a and b) and c"), and(and(v("a"), v("b")), v("c")));
        assert_eq!(parse("a and (b and c)"), and(v("a"), and(v("b"), v("c"))));
        assert_eq!(parse("a and b or c"), or(and(v("a"), v("b")), v("c")));
        assert_eq!(parse("a or b and c"), or(v("a"), and(v("b"), v("c"))));
        assert_eq!(
            parse("!(a and b) and c"),
            and(not(and(v("a"), v("b"))), v("c"))
        );
    }
}
