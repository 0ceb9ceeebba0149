//! The ACL resolver: Vamp's assertions (haproxy-cases.md §2–§4) and a property test that the
//! minimised form is logically equivalent to the condition.

use proptest::prelude::*;
use vamp_core::condition::{ConditionOperand, parse_condition};
use vamp_core::parser::BoolExpr;
use vamp_haproxy::acl::{Dnf, minimise, resolve};
use vamp_haproxy::config::{Acl, Acls};

fn acls(pairs: &[(&str, &str)], condition: &str) -> Option<Acls> {
    Some(Acls {
        acls: pairs
            .iter()
            .map(|(name, definition)| Acl {
                name: (*name).into(),
                definition: (*definition).into(),
            })
            .collect(),
        condition: Some(condition.into()),
    })
}

const FIREFOX: (&str, &str) = ("7b796e5d25d870c6", "req.fhdr(User-Agent) -m sub 'Firefox'");
const CHROME: (&str, &str) = ("de0de9d22824714a", "req.fhdr(User-Agent) -m sub 'Chrome'");
const SAFARI: (&str, &str) = ("d5f16211db6f5105", "req.fhdr(User-Agent) -m sub 'Safari'");
const VERSION: (&str, &str) = ("2d9aa9e2c5ea6536", "req.fhdr(User-Agent) -m sub 'Version'");
const ANDROID: (&str, &str) = ("29c278b48a0ff033", "hdr_sub(user-agent) Android");
const RAW_CHROME: (&str, &str) = ("81b5022a1c5966ab", "hdr_sub(user-agent) Chrome");
const COOKIE_VAMP: (&str, &str) = ("c506a28623f9f83d", "req.cook(vamp) -m found");

// haproxy-cases.md §3: HaProxyAclResolverSpec, exact equality.
#[test]
fn resolver_spec() {
    let cases: Vec<(&str, Option<Acls>)> = vec![
        (
            "User-Agent is Firefox",
            acls(&[FIREFOX], "7b796e5d25d870c6"),
        ),
        (
            "User-Agent is Safari",
            acls(&[SAFARI, VERSION], "d5f16211db6f5105 2d9aa9e2c5ea6536"),
        ),
        (
            "host == localhost",
            acls(
                &[("63d10221023637c8", "req.hdr(host) localhost")],
                "63d10221023637c8",
            ),
        ),
        (
            "contains cookie vamp",
            acls(&[COOKIE_VAMP], "c506a28623f9f83d"),
        ),
        (
            "has header page",
            acls(
                &[("71165113ade1e335", "req.hdr_cnt(page) gt 0")],
                "71165113ade1e335",
            ),
        ),
        (
            "header page contains 1",
            acls(
                &[("2640a60ce3da6491", "req.fhdr(page) -m sub '1'")],
                "2640a60ce3da6491",
            ),
        ),
        (
            "misses cookie vamp",
            acls(
                &[("85d714c5ede2f624", "req.cook_cnt(vamp) eq 0")],
                "85d714c5ede2f624",
            ),
        ),
        (
            "misses header page",
            acls(
                &[("75f52ab77f4adcfc", "req.hdr_cnt(page) eq 0")],
                "75f52ab77f4adcfc",
            ),
        ),
        (
            "hdr_sub(user-agent) Android",
            acls(&[ANDROID], "29c278b48a0ff033"),
        ),
        (
            "< hdr_sub(user-agent) Android >",
            acls(&[ANDROID], "29c278b48a0ff033"),
        ),
        (
            "<hdr_sub(user-agent) Android> or <hdr_sub(user-agent) Chrome>",
            acls(
                &[ANDROID, RAW_CHROME],
                "29c278b48a0ff033 or 81b5022a1c5966ab",
            ),
        ),
        (
            "not <hdr_sub(user-agent) Android> and User-Agent != Chrome",
            acls(&[ANDROID, CHROME], "!29c278b48a0ff033 !de0de9d22824714a"),
        ),
        (
            "not <hdr_sub(user-agent) Android> or User-Agent != Chrome",
            acls(&[CHROME, ANDROID], "!de0de9d22824714a or !29c278b48a0ff033"),
        ),
        (
            "(User-Agent = Chrome OR User-Agent = Firefox) AND has cookie vamp",
            acls(
                &[CHROME, COOKIE_VAMP, FIREFOX],
                "de0de9d22824714a c506a28623f9f83d or 7b796e5d25d870c6 c506a28623f9f83d",
            ),
        ),
        (
            "User-Agent == \"Mozilla/5.0 Macintosh\"",
            acls(
                &[(
                    "3581fea35ba6e992",
                    "req.fhdr(User-Agent) -m sub 'Mozilla/5.0 Macintosh'",
                )],
                "3581fea35ba6e992",
            ),
        ),
        (
            "User-Agent = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_5) AppleWebKit/602.2.14 (KHTML, like Gecko) Version/10.0.1 Safari/602.2.14'",
            acls(
                &[(
                    "1fc41db2449a9c62",
                    "req.fhdr(User-Agent) -m sub 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_5) AppleWebKit/602.2.14 (KHTML, like Gecko) Version/10.0.1 Safari/602.2.14'",
                )],
                "1fc41db2449a9c62",
            ),
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(resolve(input).unwrap(), expected, "{input}");
    }
}

/// Vamp's §3 case 6 (`cookie vamp has 123` → `req.cook_sub(vamp) 123`) is invalid HAProxy; we
/// emit `req.cook(vamp) -m sub 123`.
#[test]
fn cookie_contains_is_valid_haproxy() {
    let expected = Acl::new("req.cook(vamp) -m sub 123");
    assert_eq!(
        resolve("cookie vamp has 123").unwrap(),
        Some(Acls {
            acls: vec![expected.clone()],
            condition: Some(expected.name)
        })
    );
}

// haproxy-cases.md §2: "convert conditions", first ACL definition (and, stricter, the whole).
#[test]
fn convert_conditions_spec() {
    let cases = [
        (
            "user-agent = Firefox",
            "req.fhdr(User-Agent) -m sub 'Firefox'",
            "7b796e5d25d870c6",
        ),
        (
            "user-agent = Safari",
            "req.fhdr(User-Agent) -m sub 'Safari'",
            "d5f16211db6f5105 2d9aa9e2c5ea6536",
        ),
        (
            "hdr_sub(user-agent) Android",
            "hdr_sub(user-agent) Android",
            "29c278b48a0ff033",
        ),
        (
            "user-agent=Android",
            "req.fhdr(User-Agent) -m sub 'Android'",
            "d9b6fa518fdca646",
        ),
        (
            "user-agent!=Android",
            "req.fhdr(User-Agent) -m sub 'Android'",
            "!d9b6fa518fdca646",
        ),
        (
            "User-Agent=Android",
            "req.fhdr(User-Agent) -m sub 'Android'",
            "d9b6fa518fdca646",
        ),
        (
            "user-agent = Android",
            "req.fhdr(User-Agent) -m sub 'Android'",
            "d9b6fa518fdca646",
        ),
        (
            "user-agent  =  Android",
            "req.fhdr(User-Agent) -m sub 'Android'",
            "d9b6fa518fdca646",
        ),
        (
            "user.agent = Ios",
            "req.fhdr(User-Agent) -m sub 'Ios'",
            "30c65599f7b056c0",
        ),
        (
            "host = www.google.com",
            "req.hdr(host) www.google.com",
            "e9bd2f046551fbfe",
        ),
        (
            "host != www.google.com",
            "req.hdr(host) www.google.com",
            "!e9bd2f046551fbfe",
        ),
        (
            "has cookie JSESSIONID",
            "req.cook(JSESSIONID) -m found",
            "65b7565a1e42369b",
        ),
        (
            "misses cookie JSESSIONID",
            "req.cook_cnt(JSESSIONID) eq 0",
            "d882b3a5d880c6e1",
        ),
        (
            "has header X-SPECIAL",
            "req.hdr_cnt(X-SPECIAL) gt 0",
            "5a6eff01b5057589",
        ),
        (
            "misses header X-SPECIAL",
            "req.hdr_cnt(X-SPECIAL) eq 0",
            "4208884073027623",
        ),
    ];
    for (input, first, condition) in cases {
        let a = resolve(input).unwrap().unwrap();
        assert_eq!(a.acls[0].definition, first, "{input}");
        assert_eq!(a.condition.as_deref(), Some(condition), "{input}");
    }
    // Vamp's `req.cook_sub(MYCUSTOMER) Value=good` is invalid; ours:
    let a = resolve("cookie MYCUSTOMER contains Value=good")
        .unwrap()
        .unwrap();
    assert_eq!(
        a.acls[0].definition,
        "req.cook(MYCUSTOMER) -m sub Value=good"
    );
}

// haproxy-cases.md §4: where Vamp was right, the same; where its flattener was wrong, a
// minimal equivalent form.
#[test]
fn pinned_behaviours() {
    // Vamp's examples use `<a>`, `<b>`, `<c>`; raw criteria must be real HAProxy here.
    let (a, b, c) = (
        Acl::new("path_beg /a").name,
        Acl::new("path_beg /b").name,
        Acl::new("path_beg /c").name,
    );
    let raw = |s: &str| {
        s.replace("<a>", "<path_beg /a>")
            .replace("<b>", "<path_beg /b>")
            .replace("<c>", "<path_beg /c>")
    };
    let cond = |s: &str| resolve(&raw(s)).unwrap().and_then(|x| x.condition);
    assert_eq!(
        cond("<a> or <b> or <c>").unwrap(),
        format!("{a} or {b} or {c}"),
        "minimal, not Vamp's nine terms"
    );
    assert_eq!(
        cond("<a> && <b> || <c>").unwrap(),
        format!("{a} {b} or {c}")
    );
    assert_eq!(
        cond("(<a> and <b>) or (not <a> and not <b>)").unwrap(),
        format!("!{a} !{b} or {a} {b}"),
        "Vamp dropped the first term"
    );
    assert_eq!(cond("not (<a> or <b>)").unwrap(), format!("!{a} !{b}"));
    assert_eq!(cond("<a> & !<b>").unwrap(), format!("{a} !{b}"));
    for always in ["<a> or not <a>", "has cookie x or misses cookie x"] {
        assert_eq!(
            resolve(&raw(always)).unwrap(),
            Some(Acls {
                acls: vec![],
                condition: None
            }),
            "{always}"
        );
    }
    assert_eq!(resolve(&raw("<a> and not <a>")).unwrap(), None);
    // Vamp passed any text through as an ACL; it must start with an HAProxy fetch here.
    assert!(resolve("foo bar").is_err());
    assert_eq!(
        resolve("path_beg /api").unwrap().unwrap().acls,
        vec![Acl::new("path_beg /api")]
    );
    assert_eq!(
        resolve("user-agent = IE").unwrap().unwrap().acls[0].definition,
        "req.fhdr(User-Agent) -m sub 'MSIE'"
    );
    assert_eq!(
        resolve("User-Agent is Edge").unwrap().unwrap().acls[0].definition,
        "req.fhdr(User-Agent) -m sub 'Edge'"
    );
    assert_eq!(
        resolve("user-agent = iPhone").unwrap().unwrap().acls[0].definition,
        "req.fhdr(User-Agent) -m sub 'iPhone'"
    );
    assert_eq!(
        cond("user-agent = firefox or user-agent = chrome").unwrap(),
        "7b796e5d25d870c6 or de0de9d22824714a"
    );
    // Vamp wrote `req.hdr(host) a b` (two patterns); ours is one quoted pattern.
    assert_eq!(
        resolve("host = 'a b'").unwrap().unwrap().acls[0].definition,
        "req.hdr(host) 'a b'"
    );
    assert_eq!(cond("host misses x.com").unwrap(), "!f483f5cf1fe745ed");
    assert_eq!(
        resolve("header X-Y contains \"a\"\"b\"")
            .unwrap()
            .unwrap()
            .acls[0]
            .definition,
        "req.fhdr(X-Y) -m sub 'a\"b'"
    );
    assert_eq!(
        cond("User-Agent = Safari and has cookie beta").unwrap(),
        "d5f16211db6f5105 2d9aa9e2c5ea6536 e3b8ac7e88324f02"
    );
}

#[test]
fn values_that_would_break_a_line_are_quoted_or_refused() {
    assert_eq!(
        resolve("host = \"it's\"").unwrap().unwrap().acls[0].definition,
        "req.hdr(host) \"it's\""
    );
    assert_eq!(
        resolve("header x contains 'a\\b'").unwrap().unwrap().acls[0].definition,
        "req.fhdr(x) -m sub \"a\\\\b\""
    );
    assert!(resolve("<hdr(x) a # comment>").is_err(), "'#' in a raw ACL");
    assert!(
        resolve("has cookie a;b").is_err(),
        "a cookie name that is not a token"
    );
    assert!(resolve("raw with \"unbalanced").is_err());
    assert!(
        resolve("<hdr(x) -f /etc/passwd>").is_err(),
        "no pattern files from conditions"
    );
    assert_eq!(
        resolve("host = -x").unwrap().unwrap().acls[0].definition,
        "req.hdr(host) -- -x",
        "a pattern is not a flag"
    );
    // Found by the hostile-string test: HAProxy reads a first word naming a converter as one.
    assert_eq!(
        resolve("host = \"mod's\"").unwrap().unwrap().acls[0].definition,
        "req.hdr(host) -- \"mod's\""
    );
    assert_eq!(
        resolve("host = lower").unwrap().unwrap().acls[0].definition,
        "req.hdr(host) -- lower"
    );
    assert_eq!(
        resolve("host = localhost").unwrap().unwrap().acls[0].definition,
        "req.hdr(host) localhost",
        "ordinary hosts keep Vamp's text"
    );
    let too_many: Vec<String> = (0..13).map(|i| format!("has header h{i}")).collect();
    assert!(
        resolve(&too_many.join(" or ")).is_err(),
        "more than 12 distinct tests"
    );
}

// === logical equivalence ===

fn operand() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..4u8).prop_map(|i| format!("<path_beg /test{i}>")),
        (0..3u8).prop_map(|i| format!("has header h{i}")),
        (0..3u8).prop_map(|i| format!("misses cookie c{i}")),
        (0..3u8).prop_map(|i| format!("host = host{i}.example")),
        prop::sample::select(vec![
            "user-agent = Safari".to_owned(),
            "user-agent = Chrome".to_owned(),
            "user-agent != Firefox".to_owned()
        ]),
    ]
}

fn expression() -> impl Strategy<Value = String> {
    operand().prop_recursive(5, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} and {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
            inner.prop_map(|a| format!("not ({a})")),
        ]
    })
}

/// The truth of a test on a random request: Safari and Chrome expand to several raw tests, so
/// requests are modelled as truth values of the expanded tests.
fn truth(op: &ConditionOperand, seed: u64) -> bool {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(op, &mut h);
    std::hash::Hash::hash(&seed, &mut h);
    std::hash::Hasher::finish(&h).is_multiple_of(2)
}

fn expand_like_the_resolver(text: &str) -> BoolExpr<ConditionOperand> {
    // Re-parse with aliases spelled out, as the resolver expands them.
    let spelled = text
        .replace(
            "user-agent = Safari",
            "(<req.fhdr(User-Agent) -m sub 'Safari'> and <req.fhdr(User-Agent) -m sub 'Version'>)",
        )
        .replace(
            "user-agent = Chrome",
            "<req.fhdr(User-Agent) -m sub 'Chrome'>",
        )
        .replace(
            "user-agent != Firefox",
            "not <req.fhdr(User-Agent) -m sub 'Firefox'>",
        );
    parse_condition(&spelled).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn minimised_conditions_are_equivalent(text in expression(), seeds in prop::collection::vec(any::<u64>(), 32)) {
        let original = expand_like_the_resolver(&text);
        let (tests, dnf) = minimise(&text).unwrap();
        for seed in seeds {
            let expected = original.eval(&mut |op| truth(op, seed));
            let got = match &dnf {
                Dnf::True => true,
                Dnf::False => false,
                Dnf::Terms(terms) => terms.iter().any(|t| t.iter().all(|&(i, positive)| truth(&tests[i], seed) == positive)),
            };
            prop_assert_eq!(got, expected, "{} on request {}", text, seed);
        }
        // Every term is needed: minimal covers have no redundant term.
        if let Dnf::Terms(terms) = &dnf {
            prop_assert!(terms.len() <= 1 << tests.len());
            let acls = resolve(&text).unwrap().unwrap();
            prop_assert_eq!(acls.condition.unwrap().split(" or ").count(), terms.len());
        }
    }
}

// reader-fixtures.md A.3 BooleanFlatterSpec `flatten`, with raw criteria for a, b, c: the
// minimal forms (Vamp's equalities are commutative).
#[test]
fn boolean_flatter_spec() {
    let word = regex::Regex::new(r"\b([abc])\b").unwrap();
    let raw = |s: &str| word.replace_all(s, "<path_beg /$1>").into_owned();
    let (a, b, c) = (
        Acl::new("path_beg /a").name,
        Acl::new("path_beg /b").name,
        Acl::new("path_beg /c").name,
    );
    let flat = |s: &str| match minimise(&raw(s)).unwrap().1 {
        Dnf::True => "true".to_owned(),
        Dnf::False => "false".to_owned(),
        Dnf::Terms(_) => resolve(&raw(s)).unwrap().unwrap().condition.unwrap(),
    };
    let cases = [
        ("a or a", a.clone()),
        ("a or !a", "true".into()),
        ("a and a", a.clone()),
        ("a and !a", "false".into()),
        ("a or b", format!("{a} or {b}")),
        ("a or !b", format!("!{b} or {a}")),
        ("(a or b) and c", format!("{a} {c} or {b} {c}")),
        ("(a or !b) and c", format!("!{b} {c} or {a} {c}")),
    ];
    for (input, expected) in cases {
        assert_eq!(flat(input), expected, "{input}");
    }
}

// === large conditions: HAProxy's 64-word line limit, and bounded minimisation ===

mod support;

/// Twelve distinct tests (the documented maximum), none of them an alias.
fn twelve(i: usize) -> String {
    match i % 4 {
        0 => format!("has header h{i}"),
        1 => format!("misses cookie c{i}"),
        2 => format!("host = host{i}.example"),
        _ => format!("<path_beg /p{i}>"),
    }
}

fn large_expression() -> impl Strategy<Value = String> {
    (0..12usize)
        .prop_map(twelve)
        .prop_recursive(6, 64, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} and {b})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} or {b})")),
                inner.prop_map(|a| format!("not ({a})")),
            ]
        })
}

/// A gateway with one conditional route, rendered, for `haproxy -c`.
fn render_condition(condition: &str, port: u16) -> Result<String, vamp_haproxy::RenderError> {
    let g = support::gateway(&format!(
        "name: big{port}\nport: {port}\nroutes:\n  a:\n    weight: 100%\n    condition: '{}'\n",
        condition.replace('\'', "''")
    ));
    let g = support::with_targets(g, 0, vec![support::target("t", None, 8080)]);
    vamp_haproxy::render(&[g], &vamp_haproxy::RenderOptions::default()).map(|c| c.render())
}

fn equivalent(
    text: &str,
    tests: &[ConditionOperand],
    dnf: &Dnf,
    seeds: &[u64],
) -> Result<(), String> {
    let original = parse_condition(text).unwrap();
    for &seed in seeds {
        let expected = original.eval(&mut |op| truth(op, seed));
        let got = match dnf {
            Dnf::True => true,
            Dnf::False => false,
            Dnf::Terms(terms) => terms.iter().any(|t| {
                t.iter()
                    .all(|&(i, positive)| truth(&tests[i], seed) == positive)
            }),
        };
        if got != expected {
            return Err(format!("{text} on request {seed}: {got} != {expected}"));
        }
    }
    Ok(())
}

/// A conjunction of four two-term disjunctions has sixteen terms: as one `use_backend` line it
/// has over 64 words, which HAProxy refuses. It renders as one rule per term instead.
#[test]
fn long_conditions_render_within_haproxy_s_line_limit() {
    let condition = (0..4)
        .map(|i| format!("({} or {})", twelve(2 * i), twelve(2 * i + 1)))
        .collect::<Vec<_>>()
        .join(" and ");
    let text = render_condition(&condition, 30001).unwrap();
    let rules: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("use_backend"))
        .collect();
    assert_eq!(rules.len(), 16, "{text}");
    for line in text.lines() {
        assert!(vamp_haproxy::lex::words(line).is_ok(), "{line}");
    }
    support::assert_haproxy_accepts(&text);
}

/// The worst conditions of twelve tests (every implicant of a near-tautology) stay within the
/// minimiser's budget: the condition's own form is used, equivalent, with few terms.
#[test]
fn the_minimiser_is_bounded_on_the_worst_twelve_test_conditions() {
    let all: Vec<String> = (0..12).map(twelve).collect();
    let nand = format!("not ({})", all.join(" and "));
    let (tests, dnf) = minimise(&nand).unwrap();
    assert_eq!(tests.len(), 12);
    let Dnf::Terms(terms) = &dnf else {
        panic!("{dnf:?}")
    };
    assert_eq!(terms.len(), 12, "one negated test per term");
    let seeds: Vec<u64> = (0..512).collect();
    equivalent(&nand, &tests, &dnf, &seeds).unwrap();
    // Sums of products with shared tests.
    let pairs = (0..6)
        .map(|i| format!("({} and {})", all[2 * i], all[(2 * i + 3) % 12]))
        .collect::<Vec<_>>()
        .join(" or ");
    let (tests, dnf) = minimise(&pairs).unwrap();
    equivalent(&pairs, &tests, &dnf, &seeds).unwrap();
    // Too long a condition is refused, not minimised.
    let long = vec![all[0].as_str(); 1000].join(" and ");
    assert!(matches!(
        minimise(&long),
        Err(vamp_haproxy::RenderError::ConditionTooLarge { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn large_conditions_stay_equivalent(text in large_expression(), seeds in prop::collection::vec(any::<u64>(), 64)) {
        let (tests, dnf) = minimise(&text).unwrap();
        prop_assert!(equivalent(&text, &tests, &dnf, &seeds).is_ok(), "{:?}", equivalent(&text, &tests, &dnf, &seeds));
    }
}

proptest! {
    // Each case runs `haproxy -c`.
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_large_conditions_are_accepted_by_haproxy(text in large_expression()) {
        let config = render_condition(&text, 30002).unwrap();
        support::assert_haproxy_accepts(&config);
    }
}
