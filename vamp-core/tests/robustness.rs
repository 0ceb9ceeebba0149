//! Robustness: generated documents and expressions never make the reader or the parsers
//! panic, hang or overflow the stack, and every document the reader accepts round-trips
//! through the writer.
//!
//! Case counts follow `PROPTEST_CASES` (default 256 per property). The long run recorded in
//! the README uses `PROPTEST_CASES=200000`.

use proptest::prelude::*;
use vamp_core::condition::parse_condition;
use vamp_core::dsl::{load_documents, node_to_yaml, read_node, read_str, to_yaml};
use vamp_core::model::ArtifactKind;
use vamp_core::node::{Map, Node};
use vamp_core::parser::{parse_selector, parse_value};

const KEYS: &[&str] = &[
    "name",
    "kind",
    "metadata",
    "deployable",
    "definition",
    "type",
    "ports",
    "environment_variables",
    "env",
    "constants",
    "arguments",
    "privileged",
    "dependencies",
    "health_checks",
    "clusters",
    "services",
    "breed",
    "scale",
    "gateways",
    "routes",
    "weight",
    "condition",
    "condition_strength",
    "rewrites",
    "path",
    "sticky",
    "virtual_hosts",
    "selector",
    "balance",
    "sla",
    "escalations",
    "minimum",
    "maximum",
    "scale_by",
    "target",
    "schedule",
    "status",
    "event",
    "time",
    "period",
    "repeat",
    "start",
    "tags",
    "value",
    "timestamp",
    "aggregator",
    "field",
    "reference",
    "ref",
    "cpu",
    "memory",
    "instances",
    "port",
    "service",
    "host",
    "dialects",
    "network",
    "threshold",
    "window",
    "upper",
    "lower",
    "interval",
    "cooldown",
    "failures",
    "initial_delay",
    "timeout",
    "protocol",
    "to_all",
    "to_one",
    "lt",
    "lte",
    "gt",
    "gte",
    "deployed",
    "sava",
    "web",
    "8080",
    "8080/tcp",
    "db",
    "[external/1/2]",
    "sava:1.0.0",
    "a/b",
    "x[Y]",
];

const STRINGS: &[&str] = &[
    "8080/http",
    "8080/tcp",
    "8080",
    "abc/http",
    "50%",
    "100%",
    "0%",
    "60 %",
    "101%",
    "512MB",
    ".5GB",
    "128Mi",
    "0.5",
    "500m",
    "10s",
    "1m",
    "route",
    "instance",
    "none",
    "daemon",
    "starting",
    "restarting",
    "$db.host",
    "$db.ports.port",
    "${a b}",
    "a$$b",
    "user-agent = Chrome",
    "has cookie x",
    "<hdr(x) y>",
    "a if b",
    "[external/1/2]",
    "sava:1.0.0",
    "sava/port",
    "a/b/c/d/e",
    "",
    " ",
    "x y",
    "P1DT1H",
    "PT",
    "now",
    "2015-06-05T15:12:38.000Z",
    "response_time_sliding_window",
    "scale_instances",
    "scale_cpu",
    "to_all",
    "escalation_only",
    "label(a)(b)",
    "image([)",
    "average",
    "breeds",
    "blueprints",
    "gateways",
    "true",
    "é",
    "\n",
    "#",
    "'",
    "\"",
    "\\",
    "\0",
];

fn scalar() -> impl Strategy<Value = Node> {
    prop_oneof![
        3 => prop::sample::select(STRINGS).prop_map(|s| Node::Str(s.to_owned())),
        1 => any::<String>().prop_map(Node::Str),
        1 => any::<i64>().prop_map(Node::Int),
        1 => (-100i64..70000).prop_map(Node::Int),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Node::Float),
        1 => any::<bool>().prop_map(Node::Bool),
        1 => Just(Node::Null),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => prop::sample::select(KEYS).prop_map(str::to_owned), 1 => "[a-z0-9_./:-]{0,8}"]
}

fn tree() -> impl Strategy<Value = Node> {
    scalar().prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Node::Seq),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Node::Map(kv.into_iter().collect::<Map>())),
        ]
    })
}

fn document() -> impl Strategy<Value = Node> {
    prop::collection::vec((key(), tree()), 0..8)
        .prop_map(|kv| Node::Map(kv.into_iter().collect::<Map>()))
}

fn check_round_trip(doc: Node, kind: ArtifactKind) -> Result<(), TestCaseError> {
    if let Ok(artifact) = read_node(doc, Some(kind)) {
        let yaml = to_yaml(&artifact);
        let again =
            read_str(&yaml, None).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(again, vec![artifact], "{}", yaml);
    }
    Ok(())
}

proptest! {
    #[test]
    fn generated_documents_never_panic_and_accepted_ones_round_trip(
        doc in document(),
        kind in prop::sample::select(ArtifactKind::ALL.to_vec()),
    ) {
        check_round_trip(doc, kind)?;
    }

    #[test]
    fn generated_documents_survive_yaml_text(doc in document(), kind in prop::sample::select(ArtifactKind::ALL.to_vec())) {
        let yaml = node_to_yaml(&doc);
        let loaded = load_documents(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        for d in loaded {
            check_round_trip(d, kind)?;
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(docs) = load_documents(&text) {
            for d in docs {
                for kind in ArtifactKind::ALL {
                    let _ = read_node(d.clone(), Some(kind));
                }
            }
        }
    }

    #[test]
    fn yamlish_text_never_panics(text in "[a-z: \\n\\-\\[\\]{},'\"&*!|>#%@0-9.]{0,200}") {
        if let Ok(docs) = load_documents(&text) {
            for d in docs {
                let _ = read_node(d, Some(ArtifactKind::Blueprint));
            }
        }
    }

    #[test]
    fn expression_parsers_never_panic(text in "[a-zA-Z !=<>()&|'\"\\-.:;$/{}\\[\\]0-9]{0,120}") {
        let _ = parse_condition(&text);
        let _ = parse_selector(&text);
        let _ = parse_value(&text);
    }

    #[test]
    fn arbitrary_expressions_never_panic(text in any::<String>()) {
        let _ = parse_condition(&text);
        let _ = parse_selector(&text);
        let _ = parse_value(&text);
    }
}

#[test]
fn deep_documents_are_errors_not_crashes() {
    for depth in [1_000usize, 100_000] {
        for (open, close) in [("[", "]"), ("{a: ", "}"), ("- ", "")] {
            let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let _ = load_documents(&text);
        }
        let block: String = (0..depth.min(5_000))
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        let _ = load_documents(&block);
    }
}

#[test]
fn deep_expressions_are_errors_not_crashes() {
    let deep = format!("{}host = a{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(parse_condition(&deep).is_err());
    assert!(parse_condition(&format!("{}host = a", "not ".repeat(100_000))).is_err());
    assert!(parse_condition(&format!("{}host = a", "! ".repeat(100_000))).is_err());
    let long = vec!["host = a"; 20_000].join(" and ");
    assert!(parse_condition(&long).unwrap_err().contains("terms"));
    let fine = vec!["host = a"; 200].join(" and ");
    assert!(parse_condition(&fine).is_ok());
}

/// Every valid fixture document with its reader.
fn valid_fixtures() -> Vec<(Node, ArtifactKind)> {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reader");
    let mut out = Vec::new();
    for (dir, kind) in [
        ("breed", ArtifactKind::Breed),
        ("blueprint", ArtifactKind::Blueprint),
        ("gateway", ArtifactKind::Gateway),
        ("sla", ArtifactKind::Sla),
        ("workflow", ArtifactKind::Workflow),
        ("event", ArtifactKind::Event),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(format!("{base}/{dir}"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let kind = if f.to_string_lossy().contains("query") {
                ArtifactKind::EventQuery
            } else {
                kind
            };
            let Ok(mut docs) = load_documents(&std::fs::read_to_string(&f).unwrap()) else {
                continue;
            };
            let doc = docs.remove(0);
            if read_node(doc.clone(), Some(kind)).is_ok() {
                out.push((doc, kind));
            }
        }
    }
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    Remove(Vec<usize>),
    Replace(Vec<usize>, Node),
    Insert(Vec<usize>, String, Node),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let path = prop::collection::vec(any::<usize>(), 0..6);
    prop_oneof![
        path.clone().prop_map(Mutation::Remove),
        (path.clone(), prop_oneof![3 => scalar(), 1 => tree()])
            .prop_map(|(p, n)| Mutation::Replace(p, n)),
        (path, key(), prop_oneof![3 => scalar(), 1 => tree()])
            .prop_map(|(p, k, n)| Mutation::Insert(p, k, n)),
    ]
}

/// Applies a mutation at the node that `path` leads to (indices taken modulo the children).
fn apply(node: &mut Node, path: &[usize], m: &Mutation) {
    let child_count = match node {
        Node::Map(map) => map.len(),
        Node::Seq(items) => items.len(),
        _ => 0,
    };
    if let (Some((&i, rest)), true) = (path.split_first(), child_count > 0) {
        let i = i % child_count;
        let last = rest.is_empty();
        match (node, m, last) {
            (Node::Map(map), Mutation::Remove(_), true) => {
                map.shift_remove_index(i);
            }
            (Node::Seq(items), Mutation::Remove(_), true) => {
                items.remove(i);
            }
            (Node::Map(map), Mutation::Replace(_, n), true) => {
                if let Some((_, v)) = map.get_index_mut(i) {
                    *v = n.clone();
                }
            }
            (Node::Seq(items), Mutation::Replace(_, n), true) => items[i] = n.clone(),
            (Node::Map(map), _, _) => {
                if let Some((_, v)) = map.get_index_mut(i) {
                    apply(v, rest, m);
                }
            }
            (Node::Seq(items), _, _) => apply(&mut items[i], rest, m),
            _ => {}
        }
        return;
    }
    if let (Node::Map(map), Mutation::Insert(_, k, n)) = (node, m) {
        map.insert(k.clone(), n.clone());
    }
}

proptest! {
    #[test]
    fn mutated_fixtures_never_panic_and_accepted_ones_round_trip(
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        static FIXTURES: std::sync::OnceLock<Vec<(Node, ArtifactKind)>> = std::sync::OnceLock::new();
        let fixtures = FIXTURES.get_or_init(valid_fixtures);
        let (doc, kind) = pick.get(fixtures);
        let mut doc = doc.clone();
        for m in &mutations {
            let path = match m {
                Mutation::Remove(p) | Mutation::Replace(p, _) | Mutation::Insert(p, _, _) => p.clone(),
            };
            apply(&mut doc, &path, m);
        }
        check_round_trip(doc.clone(), *kind)?;
        let yaml = node_to_yaml(&doc);
        let reloaded = load_documents(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(reloaded, vec![doc]);
    }
}

#[test]
fn mutated_fixtures_are_often_still_valid() {
    // Guards the property above against becoming vacuous: a good share of mutated documents
    // must still be accepted (and therefore round-trip checked).
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let fixtures = valid_fixtures();
    assert!(fixtures.len() > 100, "{}", fixtures.len());
    let mut runner = TestRunner::deterministic();
    let mut accepted = 0;
    for i in 0..2000 {
        let (doc, kind) = &fixtures[i % fixtures.len()];
        let mut doc = doc.clone();
        let m = mutation().new_tree(&mut runner).unwrap().current();
        let path = match &m {
            Mutation::Remove(p) | Mutation::Replace(p, _) | Mutation::Insert(p, _, _) => p.clone(),
        };
        apply(&mut doc, &path, &m);
        if read_node(doc, Some(*kind)).is_ok() {
            accepted += 1;
        }
    }
    assert!(
        accepted > 300,
        "only {accepted} of 2000 mutated fixtures accepted"
    );
}

// === hostile numbers and sizes (each once made the reader panic or take gigabytes) ===

#[test]
fn compose_ports_too_large_for_a_port_are_errors() {
    // (The host port before `:` is not used: only the container port is read.)
    for ports in [
        "['80:99999999999999999999']",
        "['70000']",
        "['0']",
        "['65536/tcp']",
    ] {
        let compose = format!("services:\n  web:\n    image: nginx\n    ports: {ports}\n");
        let result =
            std::panic::catch_unwind(|| vamp_core::dsl::read_docker_compose(&compose, "x"));
        assert!(
            matches!(result, Ok(Err(_))),
            "{ports}: must be an error, not a panic or a port"
        );
    }
    // A `<service>:<port>` value with a port out of range stays a plain value.
    let compose = "services:\n  web:\n    image: nginx\n    environment:\n      DB: db:99999999999999999999\n  db:\n    image: mysql\n";
    let result = std::panic::catch_unwind(|| vamp_core::dsl::read_docker_compose(compose, "x"));
    assert!(matches!(result, Ok(Ok(_))), "{result:?}");
}

#[test]
fn durations_whose_weeks_overflow_are_errors() {
    for period in [
        "P9223372036854775807W",
        "P1317624576693539402W",
        "P1W9223372036854775807D",
    ] {
        let doc = format!("name: w\nbreed: b\nschedule:\n  time:\n    period: {period}\n");
        let result = std::panic::catch_unwind(|| read_str(&doc, Some(ArtifactKind::Workflow)));
        assert!(matches!(result, Ok(Err(_))), "{period}: {result:?}");
    }
}

#[test]
fn alias_expansion_is_bounded_by_size() {
    // One 1 MiB scalar, used 200 times: 200 MiB once expanded.
    let big = "x".repeat(1 << 20);
    let mut doc = format!("a: &big {big}\nlist:\n");
    for _ in 0..200 {
        doc.push_str("  - *big\n");
    }
    let err = load_documents(&doc).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    // A few uses stay fine.
    let mut ok = format!("a: &big {}\nlist:\n", "x".repeat(1 << 10));
    for _ in 0..10 {
        ok.push_str("  - *big\n");
    }
    assert!(load_documents(&ok).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    /// Any digit string as a compose port or a duration field: an answer, never a panic.
    #[test]
    fn any_number_in_a_compose_port_or_a_duration_is_answered(
        digits in "[0-9]{1,40}",
        unit in prop::sample::select(vec!["Y", "M", "W", "D"]),
    ) {
        let compose = format!("services:\n  web:\n    image: nginx\n    ports: ['{digits}']\n");
        prop_assert!(std::panic::catch_unwind(|| vamp_core::dsl::read_docker_compose(&compose, "x")).is_ok());
        let doc = format!("name: w\nbreed: b\nschedule:\n  time:\n    period: P{digits}{unit}\n");
        prop_assert!(std::panic::catch_unwind(|| read_str(&doc, Some(ArtifactKind::Workflow))).is_ok());
    }
}
