//! No string from an artifact can add a line, a directive or a comment to the configuration:
//! 10,000 gateways with hostile strings in every field either fail with an error or render
//! with exactly the expected directives, and HAProxy accepts every rendered configuration.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::*;
use vamp_core::model::*;
use vamp_core::units::Percentage;
use vamp_haproxy::{RenderOptions, render};

const NASTY: &[&str] = &[
    "x\nbackend evil",
    "x\r\nfrontend evil",
    "a # comment",
    "#",
    "' or '1",
    "\"quoted\"",
    "back\\slash",
    "$HOME",
    "${HOME}",
    "{ always_true }",
    "}",
    "acl evil always_true",
    "a b c",
    "tab\there",
    "nul\0byte",
    "ünïcødé",
    "日本",
    "😀",
    "",
    " ",
    "x;y",
    "a,b",
    "(paren)",
    "<raw>",
    "server evil 1.2.3.4:80",
];

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(NASTY).prop_map(str::to_owned),
        2 => "[a-z0-9.-]{1,12}",
        2 => "[a-z]{0,4}[\n\r#'\" \\\\\u{0}$;{}()<>|&!=]{1,3}[a-z]{0,4}",
        1 => any::<String>(),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    prop_oneof![
        hostile().prop_map(|v| format!("host = {v}")),
        hostile().prop_map(|v| format!("host = '{v}'")),
        hostile().prop_map(|v| format!("user-agent = \"{v}\"")),
        hostile().prop_map(|v| format!("has header {v}")),
        hostile().prop_map(|v| format!("misses cookie {v}")),
        (hostile(), hostile()).prop_map(|(n, v)| format!("header {n} contains '{v}'")),
        (hostile(), hostile()).prop_map(|(n, v)| format!("cookie {n} has \"{v}\"")),
        hostile().prop_map(|v| format!("<{v}>")),
        hostile(),
        Just("user-agent = Safari and has cookie beta".to_owned()),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    route: String,
    condition: Option<String>,
    vhost: Option<String>,
    rewrite: Option<(String, String)>,
    balance: Option<String>,
    host: String,
    external: Option<String>,
    tcp: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        hostile(),
        hostile(),
        prop::option::weighted(0.6, condition()),
        prop::option::weighted(0.3, hostile()),
        prop::option::weighted(0.3, (hostile(), hostile())),
        prop::option::weighted(
            0.3,
            prop_oneof![
                hostile(),
                Just("roundrobin".to_owned()),
                Just("hdr(x) use_domain_only".to_owned())
            ],
        ),
        prop_oneof![1 => hostile(), 3 => Just("127.0.0.1".to_owned())],
        prop::option::weighted(0.3, hostile()),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(name, route, condition, vhost, rewrite, balance, host, external, tcp)| Case {
                name,
                route,
                condition,
                vhost,
                rewrite,
                balance,
                host,
                external,
                tcp,
            },
        )
}

fn gateway(c: &Case, port: i64) -> Gateway {
    let mut primary = DefaultRoute::new(format!("{}/a", c.route));
    primary.path = GatewayPath {
        source: format!("{}/a", c.route),
        segments: vec![c.route.clone(), "a".into()],
    };
    primary.weight = Some(Percentage(60));
    primary.condition = c.condition.clone().map(|d| {
        Ref::Inline(DefaultCondition {
            name: String::new(),
            metadata: Default::default(),
            definition: d,
        })
    });
    primary.condition_strength = Some(Percentage(50));
    primary.rewrites = c
        .rewrite
        .iter()
        .map(|(p, cond)| {
            Ref::Inline(PathRewrite {
                name: String::new(),
                metadata: Default::default(),
                path: p.clone(),
                condition: cond.clone(),
            })
        })
        .collect();
    primary.balance = c.balance.clone();
    primary.targets = vec![RouteTarget::Internal {
        name: c.host.clone(),
        host: Some(c.host.clone()),
        port: 8080,
    }];
    let mut second = DefaultRoute::new("b");
    second.weight = Some(Percentage(40));
    second.targets = c
        .external
        .iter()
        .map(|e| RouteTarget::External {
            url: format!("{e}:80"),
        })
        .collect();
    let mut g = Gateway::new(
        Port::new(
            "",
            Some(if c.tcp {
                format!("{port}/tcp")
            } else {
                port.to_string()
            }),
        )
        .unwrap(),
    );
    g.name = format!("{}/{port}", c.name);
    g.virtual_hosts = c.vhost.iter().cloned().collect();
    g.routes = vec![Route::Default(primary), Route::Default(second)];
    g
}

const DIRECTIVES: &[&str] = &[
    "bind",
    "option",
    "log-format",
    "mode",
    "acl",
    "use_backend",
    "default_backend",
    "balance",
    "cookie",
    "http-request",
    "server",
];

/// The text outside single and double quotes (HAProxy's rules: no escapes in single quotes,
/// backslash escapes in double quotes).
fn unquoted(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'') | (None, '"') => quote = Some(c),
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every line is a comment, a section header or a known directive; the numbers of sections
/// and ACLs are what the gateway calls for.
fn check_structure(text: &str, g: &Gateway) -> Result<(), String> {
    let mut frontends = 0;
    let mut backends = 0;
    let mut acls = 0;
    for line in text.lines() {
        if line.contains('\0') || line.contains('\r') {
            return Err(format!("control character in {line:?}"));
        }
        if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("  ") {
            let keyword = rest.split(' ').next().unwrap_or_default();
            if !DIRECTIVES.contains(&keyword) {
                return Err(format!("unexpected directive {keyword:?} in {line:?}"));
            }
            if keyword == "acl" {
                acls += 1;
            }
            if keyword != "log-format" && unquoted(rest).contains('#') {
                return Err(format!("a comment inside {line:?}"));
            }
            continue;
        }
        match line.split(' ').next() {
            Some("frontend") => frontends += 1,
            Some("backend") => backends += 1,
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
    let conditional = g
        .routes
        .iter()
        .filter_map(Route::definition)
        .filter(|r| matches!(&r.condition, Some(Ref::Inline(c)) if !c.definition.trim().is_empty()))
        .count();
    let vhosts = usize::from(!g.virtual_hosts.is_empty());
    let expected_frontends = 2 + g.routes.len() + vhosts;
    let expected_backends = 1 + conditional + g.routes.len() + vhosts;
    if (frontends, backends) != (expected_frontends, expected_backends) {
        return Err(format!(
            "{frontends} frontends and {backends} backends, expected {expected_frontends} and {expected_backends}"
        ));
    }
    if acls > 12 + g.virtual_hosts.len() {
        return Err(format!("{acls} ACLs"));
    }
    Ok(())
}

#[test]
fn hostile_strings_cannot_inject() {
    let cases: u32 = std::env::var("VAMP_INJECTION_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // A fixed seed keeps CI reproducible; VAMP_INJECTION_RANDOM=1 explores new cases.
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = if std::env::var("VAMP_INJECTION_RANDOM").is_ok_and(|v| v == "1") {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(
            config,
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        )
    };
    let accepted = std::cell::RefCell::new(Vec::new());
    let refused = std::cell::Cell::new(0u32);
    let allow_policy = vamp_haproxy::allow::AllowPolicy::new("/usr/local/vamp");
    runner
        .run(&case(), |c| {
            let port = 20_000 + (accepted.borrow().len() % 20_000) as i64;
            let g = gateway(&c, port);
            match render(std::slice::from_ref(&g), &RenderOptions::default()) {
                Err(_) => refused.set(refused.get() + 1),
                Ok(config) => {
                    let text = config.render();
                    check_structure(&text, &g)
                        .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                    // Whatever the generator writes, the agent's allow-list accepts.
                    vamp_haproxy::allow::check(&text, &allow_policy)
                        .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
                    accepted.borrow_mut().push(g);
                }
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    eprintln!(
        "{} gateways rendered, {} refused",
        accepted.len(),
        refused.get()
    );
    assert!(
        accepted.len() > cases as usize / 10,
        "the generator must produce renderable gateways too"
    );
    assert!(
        refused.get() > cases / 10,
        "and hostile ones that are refused"
    );
    // HAProxy must accept every rendered gateway without raw HAProxy text; where a user wrote
    // raw criteria (a `<...>` ACL, a rewrite condition), its only complaints may be about them.
    if haproxy().is_some() {
        for (i, batch) in accepted.chunks(250).enumerate() {
            let mut batch: Vec<Gateway> = batch.to_vec();
            for (j, g) in batch.iter_mut().enumerate() {
                g.name = format!("batch{i}-{j}/{}", g.name);
                g.port = Port::new(
                    "",
                    Some(format!(
                        "{}{}",
                        20_000 + j,
                        if g.port.port_type == PortType::Tcp {
                            "/tcp"
                        } else {
                            ""
                        }
                    )),
                )
                .unwrap();
            }
            let text = render(
                &batch,
                &RenderOptions::default().with_socket_dir("/tmp/vamp-injection"),
            )
            .unwrap()
            .render();
            if let Some(Err(_)) = haproxy_check(&text) {
                for g in &batch {
                    let one = render(std::slice::from_ref(g), &RenderOptions::default())
                        .unwrap()
                        .render();
                    if let Some(Err(e)) = haproxy_check(&one) {
                        assert!(
                            has_raw_text(g),
                            "HAProxy rejected a gateway without raw HAProxy text:\n{e}\nroutes: {:?}\n{one}",
                            g.routes
                        );
                        for line in e.lines().filter(|l| l.contains("[ALERT]")) {
                            let about_raw = [
                                "while parsing ACL",
                                "while parsing switching rule",
                                "'http-request set-path'",
                                "Error(s) found",
                                "Fatal errors found",
                            ]
                            .iter()
                            .any(|k| line.contains(k));
                            assert!(
                                about_raw,
                                "HAProxy complained about more than the raw criteria:\n{line}\n{one}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Whether a gateway carries raw HAProxy text: a `<...>` criterion, a condition that does not
/// parse (used whole as a criterion), or a rewrite condition.
fn has_raw_text(g: &Gateway) -> bool {
    g.routes.iter().filter_map(Route::definition).any(|r| {
        let raw_condition = match &r.condition {
            Some(Ref::Inline(c)) => match vamp_core::condition::parse_condition(&c.definition) {
                Err(_) => true,
                Ok(e) => e
                    .operands()
                    .iter()
                    .any(|o| matches!(o, vamp_core::condition::ConditionOperand::Value(_))),
            },
            _ => false,
        };
        raw_condition || !r.rewrites.is_empty()
    })
}
