//! Readers for every artifact kind, with Vamp's DSL shortcuts.

use std::sync::OnceLock;

use indexmap::IndexMap;
use regex::Regex;

use super::source::*;
use crate::error::{Notification as N, ReadError, ReadResult};
use crate::model::*;
use crate::node::{Map, Node};
use crate::parser::parse_selector;
use crate::units::{MegaByte, Percentage, Quantity, parse_time};

// === traits ===

fn env_key(key: &str) -> (String, Option<String>) {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"^(.+?)(\[.+\])?$").expect("static regex"));
    match re.captures(key) {
        Some(c) => match c.get(2) {
            Some(a) => {
                let a = a.as_str();
                (c[1].to_owned(), Some(a[1..a.len() - 1].to_owned()))
            }
            None => (c[1].to_owned(), None),
        },
        None => (key.to_owned(), None),
    }
}

/// A trait value: any scalar as text, null as `None`; maps and lists are malformed.
fn trait_value(name: &str, v: Node, path: &str) -> ReadResult<Option<String>> {
    match v {
        Node::Null => Ok(None),
        Node::Map(_) | Node::Seq(_) => err(
            N::MalformedTraitError {
                name: name.to_owned(),
            },
            path,
        ),
        other => Ok(other.scalar_string()),
    }
}

fn trait_map(
    m: &mut Map,
    keys: &[&str],
    path: &str,
) -> ReadResult<Vec<(String, Option<String>, String)>> {
    let Some((key, node)) = take_any(m, keys) else {
        return Ok(Vec::new());
    };
    let p = join(path, key);
    let Node::Map(entries) = node else {
        return err(
            N::UnexpectedTypeError {
                path: p.clone(),
                expected: "Map".into(),
                actual: node.type_name().into(),
            },
            &p,
        );
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let vp = join(&p, &k);
        let value = trait_value(&k, v, &vp)?;
        out.push((k, value, vp));
    }
    Ok(out)
}

pub(crate) fn ports(m: &mut Map, path: &str) -> ReadResult<Vec<Port>> {
    trait_map(m, &["ports"], path)?
        .into_iter()
        .map(|(name, value, p)| {
            Port::new(name.clone(), value)
                .ok_or_else(|| ReadError::new(N::MalformedTraitError { name }, p))
        })
        .collect()
}

/// Environment variables; `keep_alias` keeps `NAME[ALIAS]` aliases (breeds only).
pub(crate) fn environment_variables(
    m: &mut Map,
    path: &str,
    keep_alias: bool,
) -> ReadResult<Vec<EnvironmentVariable>> {
    Ok(trait_map(m, &["environment_variables", "env"], path)?
        .into_iter()
        .map(|(key, value, _)| {
            if keep_alias {
                let (name, alias) = env_key(&key);
                EnvironmentVariable {
                    name,
                    alias,
                    value,
                    interpolated: None,
                }
            } else {
                let (name, _) = env_key(&key);
                EnvironmentVariable::new(name, value)
            }
        })
        .collect())
}

fn constants(m: &mut Map, path: &str) -> ReadResult<Vec<Constant>> {
    Ok(trait_map(m, &["constants"], path)?
        .into_iter()
        .map(|(name, value, _)| Constant {
            name,
            alias: None,
            value,
        })
        .collect())
}

/// `arguments`: a list of single-key maps, a map, or a single value.
pub(crate) fn arguments(m: &mut Map, path: &str) -> ReadResult<Vec<Argument>> {
    let p = join(path, "arguments");
    let items = match take(m, "arguments") {
        None => return Ok(Vec::new()),
        Some(Node::Seq(items)) => items,
        Some(Node::Map(entries)) => entries
            .into_iter()
            .map(|(k, v)| Node::Map(Map::from_iter([(k, v)])))
            .collect(),
        Some(other) => vec![other],
    };
    items
        .into_iter()
        .map(|item| match item {
            Node::Map(entry) if entry.len() == 1 => {
                let (key, value) = entry.into_iter().next().expect("one entry");
                match value {
                    Node::Bool(_)
                    | Node::Int(_)
                    | Node::Float(_)
                    | Node::Str(_)
                    | Node::Timestamp(_) => Ok(Argument {
                        key,
                        value: value.scalar_string().unwrap_or_default(),
                    }),
                    _ => err(N::InvalidArgumentError, &p),
                }
            }
            _ => err(N::InvalidArgumentError, &p),
        })
        .collect()
}

pub(crate) fn validate_arguments(args: &[Argument], path: &str) -> ReadResult<()> {
    for a in args {
        if a.privileged()
            && !a.value.eq_ignore_ascii_case("true")
            && !a.value.eq_ignore_ascii_case("false")
        {
            return err(
                N::InvalidArgumentValueError {
                    argument: a.clone(),
                },
                &join(path, "arguments"),
            );
        }
    }
    Ok(())
}

fn time_value(m: &mut Map, key: &str, path: &str) -> ReadResult<i64> {
    let p = join(path, key);
    match take(m, key) {
        None => Err(missing(&p)),
        // Deliberate difference: Vamp failed with an HTTP 500 on a bare integer.
        Some(Node::Int(i)) if i >= 0 => Ok(i),
        Some(n) => {
            let s = node_string(&n, &p)?;
            parse_time(&s).ok_or_else(|| {
                ReadError::new(
                    N::UnexpectedTypeError {
                        path: p.clone(),
                        expected: "Time (e.g. 10s, 1m, 2h)".into(),
                        actual: format!("'{s}'"),
                    },
                    &p,
                )
            })
        }
    }
}

fn health_check(mut m: Map, path: &str) -> ReadResult<(HealthCheck, Map)> {
    let hc = HealthCheck {
        path: string(&mut m, "path", path)?.unwrap_or_else(|| "/".to_owned()),
        port: req_string(&mut m, "port", path)?,
        initial_delay: time_value(&mut m, "initial_delay", path)?,
        timeout: time_value(&mut m, "timeout", path)?,
        interval: time_value(&mut m, "interval", path)?,
        failures: req_int(&mut m, "failures", path)?,
        protocol: string(&mut m, "protocol", path)?.unwrap_or_else(|| "HTTP".to_owned()),
    };
    Ok((hc, m))
}

/// `health_checks`: one map or a list of maps. Leftover keys are put back in place.
pub(crate) fn health_checks(m: &mut Map, path: &str) -> ReadResult<Option<Vec<HealthCheck>>> {
    let p = join(path, "health_checks");
    let Some(node) = take(m, "health_checks") else {
        return Ok(None);
    };
    let (items, single) = match node {
        Node::Seq(items) => (items, false),
        Node::Map(one) => (vec![Node::Map(one)], true),
        other => {
            return err(
                N::UnexpectedTypeError {
                    path: p.clone(),
                    expected: "Map".into(),
                    actual: other.type_name().into(),
                },
                &p,
            );
        }
    };
    let mut checks = Vec::new();
    let mut rest = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let ip = if single {
            p.clone()
        } else {
            join(&p, &i.to_string())
        };
        let Node::Map(item) = item else {
            return err(
                N::UnexpectedTypeError {
                    path: ip.clone(),
                    expected: "Map".into(),
                    actual: item.type_name().into(),
                },
                &ip,
            );
        };
        let (hc, left) = health_check(item, &ip)?;
        checks.push(hc);
        rest.push(Node::Map(left));
    }
    m.insert("health_checks".to_owned(), Node::Seq(rest));
    Ok(Some(checks))
}

pub(crate) fn validate_health_checks(
    checks: Option<&[HealthCheck]>,
    port_ok: impl Fn(&str) -> bool,
    path: &str,
) -> ReadResult<()> {
    for hc in checks.unwrap_or_default() {
        if !port_ok(&hc.port) {
            return err(
                N::UnresolvedPortReferenceError {
                    port_reference: hc.port.clone(),
                },
                &join(path, "health_checks"),
            );
        }
        if hc.failures < 0 {
            return err(
                N::NegativeFailuresNumberError {
                    number: hc.failures,
                },
                &join(path, "health_checks"),
            );
        }
    }
    Ok(())
}

// === references ===

/// `{reference: x}` / `{ref: x}` (`reference` wins) → the name, validated.
fn reference_of(m: &mut Map, path: &str) -> ReadResult<Option<String>> {
    let name = match string(m, "reference", path)? {
        Some(r) => {
            m.shift_remove("ref");
            Some(r)
        }
        None => string(m, "ref", path)?,
    };
    if let Some(n) = &name {
        validate_name(n, path)?;
    }
    Ok(name)
}

fn has_reference(m: &Map) -> bool {
    ["reference", "ref"]
        .iter()
        .any(|k| m.get(*k).is_some_and(|v| *v != Node::Null))
}

/// An anonymous-or-reference position: a named definition without a reference is an error.
fn either_reference_or_anonymous(m: &Map, word: &str, path: &str) -> ReadResult<()> {
    if !has_reference(m)
        && let Some(name) = m.get("name").and_then(Node::scalar_string)
    {
        return err(
            N::EitherReferenceOrAnonymous {
                name: word.to_owned(),
                reference: name,
            },
            path,
        );
    }
    Ok(())
}

// === breeds ===

/// A breed definition (top-level or inline). Validates it fully.
pub(crate) fn breed(m: &mut Map, path: &str) -> ReadResult<DefaultBreed> {
    let name = req_string(m, "name", path)?;
    let with = |e: ReadError| e.in_artifact(ArtifactKind::Breed, Some(&name));
    breed_body(m, path, name.clone()).map_err(with)
}

fn breed_body(m: &mut Map, path: &str, name: String) -> ReadResult<DefaultBreed> {
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "breeds", path)?;
    let metadata = metadata(m, path)?;
    let dp = join(path, "deployable");
    let deployable = match take(m, "deployable") {
        None => return Err(missing(&join(&dp, "definition"))),
        Some(Node::Map(mut d)) => {
            let deployable_type = string(&mut d, "type", &dp)?;
            let definition = req_string(&mut d, "definition", &dp)?;
            if !d.is_empty() {
                m.insert("deployable".into(), Node::Map(d));
            }
            Deployable {
                deployable_type,
                definition,
            }
        }
        Some(n) => Deployable {
            deployable_type: None,
            definition: node_string(&n, &dp)?,
        },
    };
    let ports = ports(m, path)?;
    let environment_variables = environment_variables(m, path, true)?;
    let constants = constants(m, path)?;
    let arguments = arguments(m, path)?;
    let mut dependencies = IndexMap::new();
    if let Some(deps) = descend(m, "dependencies", path)? {
        let dpath = join(path, "dependencies");
        let keys: Vec<String> = deps.keys().cloned().collect();
        for alias in keys {
            let ap = join(&dpath, &alias);
            let dep = match deps.get_mut(&alias) {
                Some(Node::Map(dm)) => {
                    let r = breed_ref_map(dm, &ap)?;
                    if dm.is_empty() {
                        deps.shift_remove(&alias);
                    }
                    r
                }
                _ => match deps.shift_remove(&alias) {
                    Some(Node::Null) | None => return Err(missing(&ap)),
                    Some(n) => Ref::Reference(node_string(&n, &ap)?),
                },
            };
            dependencies.insert(alias, dep);
        }
    }
    let health_checks = health_checks(m, path)?;
    let breed = DefaultBreed {
        name,
        metadata,
        deployable,
        ports,
        environment_variables,
        constants,
        arguments,
        dependencies,
        health_checks,
    };
    super::validate::breed(&breed, path)?;
    Ok(breed)
}

/// A breed position given as a map: `{breed: …}`, `{reference: x}` or an inline breed.
fn breed_ref_map(m: &mut Map, path: &str) -> ReadResult<Breed> {
    if m.contains_key("breed") {
        let bp = join(path, "breed");
        return match m.get_mut("breed") {
            Some(Node::Map(inner)) => {
                let r = breed_ref_map(inner, &bp)?;
                if inner.is_empty() {
                    m.shift_remove("breed");
                }
                Ok(r)
            }
            _ => match take(m, "breed") {
                None => Err(missing(&bp)),
                Some(n) => Ok(Ref::Reference(node_string(&n, &bp)?)),
            },
        };
    }
    if has_reference(m) {
        return Ok(Ref::Reference(reference_of(m, path)?.unwrap_or_default()));
    }
    Ok(Ref::Inline(breed(m, path)?))
}

/// A breed position: a string reference or a map.
fn breed_position(m: &mut Map, key: &str, path: &str) -> ReadResult<Breed> {
    let p = join(path, key);
    match m.get_mut(key) {
        Some(Node::Map(inner)) => {
            let r = if inner.contains_key("breed") || has_reference(inner) {
                breed_ref_map(inner, &p)?
            } else {
                Ref::Inline(breed(inner, &p)?)
            };
            if inner.is_empty() {
                m.shift_remove(key);
            }
            Ok(r)
        }
        _ => match take(m, key) {
            None => Err(missing(&p)),
            Some(n) => Ok(Ref::Reference(node_string(&n, &p)?)),
        },
    }
}

// === scales ===

fn scale_body(m: &mut Map, path: &str, name: String) -> ReadResult<DefaultScale> {
    let metadata = metadata(m, path)?;
    let cp = join(path, "cpu");
    let cpu = match take(m, "cpu") {
        None => return Err(missing(&cp)),
        Some(Node::Int(i)) => Quantity(i as f64),
        Some(Node::Float(f)) => Quantity(f),
        Some(n) => {
            let s = node_string(&n, &cp)?;
            Quantity::parse(&s).ok_or_else(|| {
                ReadError::new(
                    N::UnexpectedTypeError {
                        path: cp.clone(),
                        expected: "Quantity".into(),
                        actual: format!("'{s}'"),
                    },
                    &cp,
                )
            })?
        }
    };
    let mp = join(path, "memory");
    let memory = match take(m, "memory") {
        None => return Err(missing(&mp)),
        Some(Node::Str(s)) => MegaByte::parse(&s).ok_or_else(|| {
            ReadError::new(
                N::UnexpectedTypeError {
                    path: mp.clone(),
                    expected: "MegaByte".into(),
                    actual: format!("'{s}'"),
                },
                &mp,
            )
        })?,
        Some(n) => {
            return err(
                N::UnexpectedTypeError {
                    path: mp.clone(),
                    expected: "MegaByte".into(),
                    actual: n.type_name().into(),
                },
                &mp,
            );
        }
    };
    let instances = int(m, "instances", path)?.unwrap_or(1);
    Ok(DefaultScale {
        name,
        metadata,
        cpu,
        memory,
        instances,
    })
}

/// A top-level scale (named).
pub(crate) fn scale(m: &mut Map, path: &str) -> ReadResult<DefaultScale> {
    let name = req_string(m, "name", path)?;
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "scales", path)?;
    scale_body(m, path, name)
}

fn scale_position(m: &mut Map, key: &str, path: &str) -> ReadResult<Option<Scale>> {
    let p = join(path, key);
    match m.get_mut(key) {
        Some(Node::Map(inner)) => {
            either_reference_or_anonymous(inner, "scale", &p)?;
            let r = if has_reference(inner) {
                Ref::Reference(reference_of(inner, &p)?.unwrap_or_default())
            } else {
                Ref::Inline(scale_body(inner, &p, String::new())?)
            };
            if inner.is_empty() {
                m.shift_remove(key);
            }
            Ok(Some(r))
        }
        _ => match take(m, key) {
            None => Ok(None),
            Some(n) => Ok(Some(Ref::Reference(node_string(&n, &p)?))),
        },
    }
}

// === gateways and routes ===

/// A gateway port from a key or value: `8080`, `8080/tcp`, `web` (named, no value).
fn port_from_value(value: &str) -> Option<Port> {
    let p = Port::new(value, Some(value.to_owned()))?;
    let name = if p.number != 0 {
        p.number.to_string()
    } else {
        value.to_owned()
    };
    Some(Port { name, ..p })
}

fn gateway_port(n: &Node, path: &str) -> ReadResult<Port> {
    let s = node_string(n, path)?;
    port_from_value(&s).ok_or_else(|| {
        ReadError::new(
            N::UnexpectedTypeError {
                path: path.to_owned(),
                expected: "Port (N, N/http or N/tcp)".into(),
                actual: format!("'{s}'"),
            },
            path,
        )
    })
}

fn percentage(m: &mut Map, key: &str, path: &str) -> ReadResult<Option<Percentage>> {
    let p = join(path, key);
    match take(m, key) {
        None => Ok(None),
        Some(Node::Str(s)) => Percentage::parse(&s).map(Some).ok_or_else(|| {
            ReadError::new(
                N::UnexpectedTypeError {
                    path: p.clone(),
                    expected: "Percentage (N%)".into(),
                    actual: format!("'{s}'"),
                },
                &p,
            )
        }),
        Some(n) => err(
            N::UnexpectedTypeError {
                path: p.clone(),
                expected: "Percentage".into(),
                actual: n.type_name().into(),
            },
            &p,
        ),
    }
}

fn condition_position(m: &mut Map, path: &str) -> ReadResult<Option<Condition>> {
    let p = join(path, "condition");
    match m.get_mut("condition") {
        Some(Node::Map(inner)) => {
            either_reference_or_anonymous(inner, "weakcondition", &p)?;
            let r = if has_reference(inner) {
                Some(Ref::Reference(reference_of(inner, &p)?.unwrap_or_default()))
            } else {
                let metadata = metadata(inner, &p)?;
                let definition = string(inner, "condition", &p)?.unwrap_or_default();
                (!definition.is_empty()).then(|| {
                    Ref::Inline(DefaultCondition {
                        name: String::new(),
                        metadata,
                        definition,
                    })
                })
            };
            if inner.is_empty() {
                m.shift_remove("condition");
            }
            Ok(r)
        }
        _ => match take(m, "condition") {
            None => Ok(None),
            Some(n) => {
                let definition = node_string(&n, &p)?;
                Ok((!definition.is_empty()).then(|| {
                    Ref::Inline(DefaultCondition {
                        name: String::new(),
                        metadata: Map::new(),
                        definition,
                    })
                }))
            }
        },
    }
}

fn path_rewrite(m: &mut Map, path: &str, name: String) -> ReadResult<PathRewrite> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"(?is)^(.+) if (.+)$").expect("static regex"));
    let metadata = metadata(m, path)?;
    let definition = req_string(m, "path", path)?;
    let Some(c) = re.captures(&definition) else {
        return err(
            N::UnsupportedPathRewriteError { definition },
            &join(path, "path"),
        );
    };
    Ok(PathRewrite {
        name,
        metadata,
        path: c[1].to_owned(),
        condition: c[2].to_owned(),
    })
}

/// A top-level rewrite (named).
pub(crate) fn rewrite(m: &mut Map, path: &str) -> ReadResult<PathRewrite> {
    let name = req_string(m, "name", path)?;
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "rewrites", path)?;
    path_rewrite(m, path, name)
}

fn rewrites(m: &mut Map, path: &str) -> ReadResult<Vec<Rewrite>> {
    let p = join(path, "rewrites");
    let items = match take(m, "rewrites") {
        None => return Ok(Vec::new()),
        Some(Node::Seq(items)) => items,
        Some(other) => vec![other],
    };
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let ip = join(&p, &i.to_string());
        match item {
            Node::Map(mut im) => {
                either_reference_or_anonymous(&im, "rewrite", &ip)?;
                if has_reference(&im) {
                    out.push(Ref::Reference(
                        reference_of(&mut im, &ip)?.unwrap_or_default(),
                    ));
                } else {
                    out.push(Ref::Inline(path_rewrite(&mut im, &ip, String::new())?));
                }
                rest.push(Node::Map(im));
            }
            other => {
                let name = node_string(&other, &ip)?;
                validate_name(&name, &ip)?;
                out.push(Ref::Reference(name));
            }
        }
    }
    m.insert("rewrites".into(), Node::Seq(rest));
    Ok(out)
}

fn selector(m: &mut Map, path: &str) -> ReadResult<Option<RouteSelector>> {
    match string(m, "selector", path)? {
        None => Ok(None),
        Some(definition) => match parse_selector(&definition) {
            Ok(_) => Ok(Some(RouteSelector { definition })),
            Err(_) => err(
                N::InvalidSelectorError { definition },
                &join(path, "selector"),
            ),
        },
    }
}

fn route_body(
    m: &mut Map,
    path: &str,
    name: String,
    route_path: GatewayPath,
) -> ReadResult<DefaultRoute> {
    let metadata = metadata(m, path)?;
    m.shift_remove("lookup_name");
    m.shift_remove("targets");
    let selector = selector(m, path)?;
    let weight = percentage(m, "weight", path)?;
    let condition = condition_position(m, path)?;
    let condition_strength = percentage(m, "condition_strength", path)?;
    let rewrites = rewrites(m, path)?;
    let balance = string(m, "balance", path)?.filter(|b| b != "default");
    Ok(DefaultRoute {
        name,
        metadata,
        path: route_path,
        selector,
        weight,
        condition,
        condition_strength,
        rewrites,
        balance,
        targets: Vec::new(),
    })
}

/// A top-level route (named, with no path).
pub(crate) fn route(m: &mut Map, path: &str) -> ReadResult<Route> {
    let name = req_string(m, "name", path)?;
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "routes", path)?;
    Ok(Route::Default(route_body(
        m,
        path,
        name,
        GatewayPath::new(""),
    )?))
}

/// A top-level condition.
pub(crate) fn condition(m: &mut Map, path: &str) -> ReadResult<DefaultCondition> {
    let name = req_string(m, "name", path)?;
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "conditions", path)?;
    let metadata = metadata(m, path)?;
    let definition = req_string(m, "condition", path)?;
    Ok(DefaultCondition {
        name,
        metadata,
        definition,
    })
}

/// How route keys of a gateway are read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteKeys {
    /// Split on `/` (standalone and blueprint gateways).
    Paths,
    /// One segment: a service breed name (cluster gateways).
    Services,
}

/// `routes`: string, list or map → routes in order. Leftovers are put back as a map.
fn routes(m: &mut Map, path: &str, keys: RouteKeys) -> ReadResult<Vec<Route>> {
    let p = join(path, "routes");
    let entries: Vec<(String, Node)> = match take(m, "routes") {
        None => return Ok(Vec::new()),
        Some(Node::Map(rm)) => rm.into_iter().collect(),
        Some(Node::Seq(items)) => {
            // The list form becomes a map, as in Vamp: a path given twice is one route (the
            // last definition wins, at the first position).
            let mut out = Map::new();
            for item in items {
                match item {
                    Node::Map(im) => out.extend(im),
                    other => {
                        out.insert(node_string(&other, &p)?, Node::Map(Map::new()));
                    }
                }
            }
            out.into_iter().collect()
        }
        Some(other) => vec![(node_string(&other, &p)?, Node::Map(Map::new()))],
    };
    let mut out = Vec::new();
    let mut rest = Map::new();
    for (key, value) in entries {
        let rp = join(&p, &key);
        let route_path = match keys {
            RouteKeys::Paths => GatewayPath::new(key.clone()),
            RouteKeys::Services => GatewayPath {
                source: key.clone(),
                segments: vec![key.clone()],
            },
        };
        match value {
            Node::Null => out.push(Route::Default(route_body(
                &mut Map::new(),
                &rp,
                String::new(),
                route_path,
            )?)),
            Node::Map(mut rm) => {
                either_reference_or_anonymous(&rm, "route", &rp)?;
                if has_reference(&rm) {
                    let name = reference_of(&mut rm, &rp)?.unwrap_or_default();
                    out.push(Route::Reference {
                        name,
                        path: route_path,
                    });
                } else {
                    out.push(Route::Default(route_body(
                        &mut rm,
                        &rp,
                        String::new(),
                        route_path,
                    )?));
                }
                rest.insert(key, Node::Map(rm));
            }
            other => {
                let name = node_string(&other, &rp)?;
                validate_name(&name, &rp)?;
                out.push(Route::Reference {
                    name,
                    path: route_path,
                });
            }
        }
    }
    m.insert("routes".into(), Node::Map(rest));
    Ok(out)
}

fn sticky(m: &mut Map, path: &str) -> ReadResult<Option<Sticky>> {
    match string(m, "sticky", path)? {
        None => Ok(None),
        Some(s) => match s.to_ascii_lowercase().as_str() {
            "route" => Ok(Some(Sticky::Route)),
            "instance" => Ok(Some(Sticky::Instance)),
            "none" => Ok(None),
            _ => err(
                N::IllegalGatewayStickyValue { sticky: s },
                &join(path, "sticky"),
            ),
        },
    }
}

fn virtual_hosts(m: &mut Map, path: &str) -> ReadResult<Vec<String>> {
    let p = join(path, "virtual_hosts");
    match take(m, "virtual_hosts") {
        None => Ok(Vec::new()),
        Some(Node::Str(s)) => Ok(vec![s]),
        Some(Node::Seq(items)) => items
            .into_iter()
            .map(|i| match i {
                Node::Str(s) => Ok(s),
                _ => err(N::IllegalGatewayVirtualHosts, &p),
            })
            .collect(),
        Some(_) => err(N::IllegalGatewayVirtualHosts, &p),
    }
}

/// The body shared by every gateway reader (everything but name and port).
fn gateway_body(
    m: &mut Map,
    path: &str,
    name: String,
    port: Port,
    keys: RouteKeys,
) -> ReadResult<Gateway> {
    let metadata = metadata(m, path)?;
    for ignored in ["internal", "proxy", "lookup_name"] {
        m.shift_remove(ignored);
    }
    let service = match descend(m, "service", path)? {
        None => None,
        Some(sm) => {
            let sp = join(path, "service");
            let host = req_string(sm, "host", &sp)?;
            let pn = take(sm, "port").ok_or_else(|| missing(&join(&sp, "port")))?;
            let port = gateway_port(&pn, &join(&sp, "port"))?;
            Some(GatewayService { host, port })
        }
    };
    let sticky = sticky(m, path)?;
    let virtual_hosts = virtual_hosts(m, path)?;
    let selector = selector(m, path)?;
    let routes = routes(m, path, keys)?;
    let deployed = boolean(m, "deployed", path)?.unwrap_or(false);
    let g = Gateway {
        name,
        metadata,
        port,
        service,
        sticky,
        virtual_hosts,
        selector,
        routes,
        deployed,
    };
    super::validate::gateway(&g, path)?;
    Ok(g)
}

/// A standalone gateway.
pub(crate) fn gateway(m: &mut Map, path: &str) -> ReadResult<Gateway> {
    let name = req_string(m, "name", path)?;
    let with = |e: ReadError| e.in_artifact(ArtifactKind::Gateway, Some(&name));
    (|| {
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| Regex::new(r"^[^\s\[\]]+$").expect("static regex"));
        let segments = GatewayPath::new(name.clone()).segments.len();
        if !re.is_match(&name) || !(1..=4).contains(&segments) {
            return err(
                N::UnsupportedGatewayNameError { name: name.clone() },
                &join(path, "name"),
            );
        }
        kind_check(m, "gateways", path)?;
        let port = match take(m, "port") {
            None => Port {
                name: String::new(),
                alias: None,
                value: None,
                number: 0,
                port_type: PortType::Http,
            },
            Some(n) => gateway_port(&n, &join(path, "port"))?,
        };
        gateway_body(m, path, name.clone(), port, RouteKeys::Paths)
    })()
    .map_err(with)
}

/// Blueprint-level gateways: key = port (`8080`, `8080/tcp`) or a name with an explicit `port`.
fn blueprint_gateways(m: &mut Map, path: &str) -> ReadResult<Vec<Gateway>> {
    let Some(gm) = descend(m, "gateways", path)? else {
        return Ok(Vec::new());
    };
    let gp = join(path, "gateways");
    let keys: Vec<String> = gm.keys().cloned().collect();
    let mut out = Vec::new();
    for key in keys {
        let kp = join(&gp, &key);
        let mut body = match gm.shift_remove(&key) {
            Some(Node::Map(b)) => b,
            Some(Node::Null) | None => Map::new(),
            Some(other) => Map::from_iter([("routes".to_owned(), other)]),
        };
        if let Some(name) = body.get("name").and_then(Node::scalar_string) {
            return err(N::NotAnonymousError { name }, &kp);
        }
        let port = match take(&mut body, "port") {
            Some(pn) => {
                let explicit = gateway_port(&pn, &join(&kp, "port"))?;
                Port {
                    name: key.clone(),
                    ..explicit
                }
            }
            None => port_from_value(&key).ok_or_else(|| {
                ReadError::new(
                    N::UnexpectedTypeError {
                        path: kp.clone(),
                        expected: "Port".into(),
                        actual: format!("'{key}'"),
                    },
                    &kp,
                )
            })?,
        };
        out.push(gateway_body(
            &mut body,
            &kp,
            String::new(),
            port,
            RouteKeys::Paths,
        )?);
        gm.insert(key, Node::Map(body));
    }
    Ok(out)
}

/// Cluster gateways: key = breed port name; a map with `sticky`/`routes` directly is one
/// anonymous gateway (port name "").
fn cluster_gateways(m: &mut Map, path: &str) -> ReadResult<Vec<Gateway>> {
    let gp = join(path, "gateways");
    let Some(node) = take(m, "gateways") else {
        return Ok(Vec::new());
    };
    let Node::Map(gm) = node else {
        return err(
            N::UnexpectedTypeError {
                path: gp.clone(),
                expected: "Map".into(),
                actual: node.type_name().into(),
            },
            &gp,
        );
    };
    let entries: Vec<(String, Node)> = if gm.contains_key("sticky") || gm.contains_key("routes") {
        vec![(String::new(), Node::Map(gm))]
    } else {
        gm.into_iter().collect()
    };
    let mut out = Vec::new();
    let mut rest = Map::new();
    for (key, value) in entries {
        let kp = if key.is_empty() {
            gp.clone()
        } else {
            join(&gp, &key)
        };
        let mut body = match value {
            Node::Map(b) => b,
            Node::Null => Map::new(),
            other => Map::from_iter([("routes".to_owned(), other)]),
        };
        if let Some(name) = body.get("name").and_then(Node::scalar_string) {
            return err(N::NotAnonymousError { name }, &kp);
        }
        if let Some(pv) = take(&mut body, "port") {
            let message = pv.scalar_string().unwrap_or_else(|| pv.to_string());
            let element = Node::Map(Map::from_iter([(key.clone(), Node::Str("port".into()))]));
            return err(
                N::UnexpectedElement { element, message },
                &join(&kp, "port"),
            );
        }
        let port = Port {
            name: key.clone(),
            alias: None,
            value: None,
            number: 0,
            port_type: PortType::Http,
        };
        out.push(gateway_body(
            &mut body,
            &kp,
            String::new(),
            port,
            RouteKeys::Services,
        )?);
        if key.is_empty() {
            rest.extend(body);
        } else {
            rest.insert(key, Node::Map(body));
        }
    }
    m.insert("gateways".into(), Node::Map(rest));
    Ok(out)
}

// === SLAs and escalations ===

fn escalation(node: Node, path: &str) -> ReadResult<(Escalation, Node)> {
    let mut m = match node {
        Node::Map(m) => m,
        other => {
            let name = node_string(&other, path)?;
            validate_name(&name, path)?;
            return Ok((Escalation::Reference(name), Node::Null));
        }
    };
    // Shortcuts {to_all: [...]}, {to_one: [...]}, {to_one: {escalations: [...]}}.
    if m.len() == 1
        && let Some(group) = ["to_all", "to_one"]
            .into_iter()
            .find(|k| m.contains_key(*k))
    {
        let inner = m.shift_remove(group).unwrap_or_default();
        let gp = join(path, group);
        let list = match inner {
            Node::Map(mut im) => {
                let l = take(&mut im, "escalations")
                    .ok_or_else(|| missing(&join(&gp, "escalations")))?;
                if !im.is_empty() {
                    m.insert(group.to_owned(), Node::Map(im));
                }
                l
            }
            other => other,
        };
        let escalations = escalation_list(list, &gp)?;
        let e = if group == "to_all" {
            Escalation::ToAll {
                name: String::new(),
                metadata: Map::new(),
                escalations,
            }
        } else {
            Escalation::ToOne {
                name: String::new(),
                metadata: Map::new(),
                escalations,
            }
        };
        return Ok((e, Node::Map(m)));
    }
    either_reference_or_anonymous(&m, "escalation", path)?;
    if has_reference(&m) {
        let name = reference_of(&mut m, path)?.unwrap_or_default();
        return Ok((Escalation::Reference(name), Node::Map(m)));
    }
    let e = escalation_body(&mut m, path, String::new())?;
    Ok((e, Node::Map(m)))
}

fn escalation_body(m: &mut Map, path: &str, name: String) -> ReadResult<Escalation> {
    let metadata = metadata(m, path)?;
    let t = req_string(m, "type", path)?;
    Ok(match t.as_str() {
        "to_all" | "to_one" => {
            let list = take(m, "escalations").ok_or_else(|| missing(&join(path, "escalations")))?;
            let escalations = escalation_list(list, &join(path, "escalations"))?;
            if t == "to_all" {
                Escalation::ToAll {
                    name,
                    metadata,
                    escalations,
                }
            } else {
                Escalation::ToOne {
                    name,
                    metadata,
                    escalations,
                }
            }
        }
        "scale_instances" => Escalation::ScaleInstances {
            name,
            metadata,
            minimum: req_int(m, "minimum", path)?,
            maximum: req_int(m, "maximum", path)?,
            scale_by: req_int(m, "scale_by", path)?,
            target: string(m, "target", path)?,
        },
        "scale_cpu" | "scale_memory" => {
            let (minimum, maximum, scale_by) = (
                req_double(m, "minimum", path)?,
                req_double(m, "maximum", path)?,
                req_double(m, "scale_by", path)?,
            );
            let target = string(m, "target", path)?;
            if t == "scale_cpu" {
                Escalation::ScaleCpu {
                    name,
                    metadata,
                    minimum,
                    maximum,
                    scale_by,
                    target,
                }
            } else {
                Escalation::ScaleMemory {
                    name,
                    metadata,
                    minimum,
                    maximum,
                    scale_by,
                    target,
                }
            }
        }
        _ => Escalation::Generic {
            name,
            metadata,
            escalation_type: t,
            parameters: std::mem::take(m),
        },
    })
}

/// A list of escalations inside a group (not wrapped).
fn escalation_list(node: Node, path: &str) -> ReadResult<Vec<Escalation>> {
    let items = match node {
        Node::Seq(items) => items,
        other => vec![other],
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let ip = join(path, &i.to_string());
        let (e, left) = escalation(item, &ip)?;
        check_consumed_at(left, &ip)?;
        out.push(e);
    }
    Ok(out)
}

/// `escalations` of an SLA: one value → a list of one; several → one `to_all` group.
fn sla_escalations(m: &mut Map, path: &str) -> ReadResult<Vec<Escalation>> {
    let p = join(path, "escalations");
    match take(m, "escalations") {
        None => Ok(Vec::new()),
        Some(Node::Seq(items)) if items.len() > 1 => Ok(vec![Escalation::ToAll {
            name: String::new(),
            metadata: Map::new(),
            escalations: escalation_list(Node::Seq(items), &p)?,
        }]),
        Some(other) => escalation_list(other, &p),
    }
}

/// Leftovers of a nested element that was detached from the tree.
fn check_consumed_at(left: Node, path: &str) -> ReadResult<()> {
    if let Node::Map(m) = left {
        check_consumed(m).map_err(|mut e| {
            e.path = join(path, &e.path);
            e
        })?;
    }
    Ok(())
}

fn sla_body(m: &mut Map, path: &str, name: String) -> ReadResult<Sla> {
    let metadata = metadata(m, path)?;
    let t = req_string(m, "type", path)?;
    let escalations = sla_escalations(m, path)?;
    Ok(match t.as_str() {
        "response_time_sliding_window" => {
            let tp = join(path, "threshold");
            let wp = join(path, "window");
            let th = descend(m, "threshold", path)?.ok_or_else(|| missing(&join(&tp, "upper")))?;
            let (upper, lower) = (req_int(th, "upper", &tp)?, req_int(th, "lower", &tp)?);
            let w = descend(m, "window", path)?.ok_or_else(|| missing(&join(&wp, "interval")))?;
            let (interval, cooldown) = (req_int(w, "interval", &wp)?, req_int(w, "cooldown", &wp)?);
            Sla::ResponseTimeSlidingWindow {
                name,
                metadata,
                upper,
                lower,
                interval,
                cooldown,
                escalations,
            }
        }
        "escalation_only" => Sla::EscalationOnly {
            name,
            metadata,
            escalations,
        },
        _ => Sla::Generic {
            name,
            metadata,
            sla_type: t,
            escalations,
            parameters: std::mem::take(m),
        },
    })
}

/// A top-level SLA (named).
pub(crate) fn sla(m: &mut Map, path: &str) -> ReadResult<Sla> {
    let name = req_string(m, "name", path)?;
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "slas", path)?;
    sla_body(m, path, name)
}

/// A top-level escalation (named).
pub(crate) fn escalation_artifact(m: &mut Map, path: &str) -> ReadResult<Escalation> {
    let name = req_string(m, "name", path)?;
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "escalations", path)?;
    escalation_body(m, path, name)
}

fn sla_position(m: &mut Map, path: &str) -> ReadResult<Option<Sla>> {
    let p = join(path, "sla");
    match m.get_mut("sla") {
        Some(Node::Map(inner)) => {
            let only_name = inner.keys().all(|k| k == "name" || k == "escalations");
            let r = if has_reference(inner) || only_name {
                let name = match reference_of(inner, &p)? {
                    Some(n) => n,
                    None => req_string(inner, "name", &p)?,
                };
                let escalations = sla_escalations(inner, &p)?;
                Sla::Reference { name, escalations }
            } else {
                either_reference_or_anonymous(inner, "sla", &p)?;
                sla_body(inner, &p, String::new())?
            };
            if inner.is_empty() {
                m.shift_remove("sla");
            }
            Ok(Some(r))
        }
        _ => match take(m, "sla") {
            None => Ok(None),
            Some(n) => {
                let name = node_string(&n, &p)?;
                validate_name(&name, &p)?;
                Ok(Some(Sla::Reference {
                    name,
                    escalations: Vec::new(),
                }))
            }
        },
    }
}

// === blueprints ===

/// `BlueprintReader.expand`: normalises cluster and service shortcuts in place.
fn expand_clusters(m: &mut Map) {
    let Some(Node::Map(clusters)) = m.get_mut("clusters") else {
        return;
    };
    for (_, cluster) in clusters.iter_mut() {
        let expanded = match std::mem::take(cluster) {
            Node::Map(mut c) => {
                if !c.contains_key("services") {
                    // Every key except sla/gateways becomes the single service.
                    let mut service = Map::new();
                    let mut rest = Map::new();
                    for (k, v) in c {
                        if k == "sla" || k == "gateways" {
                            rest.insert(k, v);
                        } else {
                            service.insert(k, v);
                        }
                    }
                    rest.insert("services".into(), Node::Seq(vec![Node::Map(service)]));
                    c = rest;
                }
                Node::Map(c)
            }
            Node::Seq(items) => {
                Node::Map(Map::from_iter([("services".to_owned(), Node::Seq(items))]))
            }
            Node::Null => Node::Null,
            other => Node::Map(Map::from_iter([(
                "services".to_owned(),
                Node::Seq(vec![other]),
            )])),
        };
        *cluster = expanded;
        if let Node::Map(c) = cluster
            && let Some(services) = c.get_mut("services")
        {
            let list = match std::mem::take(services) {
                Node::Seq(items) => items,
                Node::Null => Vec::new(),
                other => vec![other],
            };
            let list = list
                .into_iter()
                .map(|s| match s {
                    Node::Map(mut sm) => {
                        if !sm.contains_key("breed") {
                            if sm.contains_key("name") {
                                return Node::Map(Map::from_iter([(
                                    "breed".to_owned(),
                                    Node::Map(sm),
                                )]));
                            }
                            if let Some((k, r)) = take_any(&mut sm, &["reference", "ref"]) {
                                sm.insert(
                                    "breed".into(),
                                    Node::Map(Map::from_iter([(k.to_owned(), r)])),
                                );
                            }
                        }
                        Node::Map(sm)
                    }
                    Node::Null => Node::Null,
                    other => Node::Map(Map::from_iter([(
                        "breed".to_owned(),
                        Node::Map(Map::from_iter([("reference".to_owned(), other)])),
                    )])),
                })
                .collect();
            *services = Node::Seq(list);
        }
    }
}

fn service(m: &mut Map, path: &str) -> ReadResult<Service> {
    let breed = breed_position(m, "breed", path)?;
    let environment_variables = environment_variables(m, path, false)?;
    let scale = scale_position(m, "scale", path)?;
    let arguments = arguments(m, path)?;
    let health_checks = health_checks(m, path)?;
    let network = string(m, "network", path)?;
    let dialects = dialects(m, path)?;
    let health = match descend(m, "health", path)? {
        None => None,
        Some(h) => {
            let hp = join(path, "health");
            Some(Health {
                staged: req_int(h, "staged", &hp)?,
                running: req_int(h, "running", &hp)?,
                healthy: req_int(h, "healthy", &hp)?,
                unhealthy: req_int(h, "unhealthy", &hp)?,
            })
        }
    };
    Ok(Service {
        breed,
        environment_variables,
        scale,
        arguments,
        health_checks,
        network,
        dialects,
        health,
    })
}

fn cluster(name: String, m: &mut Map, path: &str) -> ReadResult<Cluster> {
    let metadata = metadata(m, path)?;
    let mut services = Vec::new();
    if let Some(Node::Seq(items)) = m.get_mut("services") {
        let sp = join(path, "services");
        for (i, item) in items.iter_mut().enumerate() {
            let ip = join(&sp, &i.to_string());
            match item {
                Node::Map(sm) => services.push(service(sm, &ip)?),
                Node::Null => {}
                other => {
                    return err(
                        N::UnexpectedTypeError {
                            path: ip.clone(),
                            expected: "Map".into(),
                            actual: other.type_name().into(),
                        },
                        &ip,
                    );
                }
            }
        }
    }
    let gateways = cluster_gateways(m, path)?;
    let health_checks = health_checks(m, path)?;
    let network = string(m, "network", path)?;
    let sla = sla_position(m, path)?;
    let dialects = dialects(m, path)?;
    Ok(Cluster {
        name,
        metadata,
        services,
        gateways,
        health_checks,
        network,
        sla,
        dialects,
    })
}

/// A blueprint.
/// A blueprint variable's name in its three-part form: the two-part form of Vamp's
/// documentation (`sava.SAVA_RUNNER_ID`: the cluster and the name) is the three-part one
/// (`sava.environment_variables.SAVA_RUNNER_ID`), which Vamp 1.x alone accepted.
fn blueprint_variable(name: &str) -> String {
    match name.split_once('.') {
        Some((cluster, var)) if !cluster.is_empty() && !var.is_empty() && !var.contains('.') => {
            format!("{cluster}.environment_variables.{var}")
        }
        _ => name.to_owned(),
    }
}

pub(crate) fn blueprint(m: &mut Map, path: &str) -> ReadResult<DefaultBlueprint> {
    let name = req_string(m, "name", path)?;
    let with = |e: ReadError| e.in_artifact(ArtifactKind::Blueprint, Some(&name));
    (|| {
        validate_name(&name, &join(path, "name"))?;
        kind_check(m, "blueprints", path)?;
        let metadata = metadata(m, path)?;
        expand_clusters(m);
        let mut clusters = Vec::new();
        if let Some(cm) = descend(m, "clusters", path)? {
            let cp = join(path, "clusters");
            for (cname, c) in cm.iter_mut() {
                let ccp = join(&cp, cname);
                validate_name(cname, &ccp)?;
                match c {
                    Node::Map(c) => clusters.push(cluster(cname.clone(), c, &ccp)?),
                    Node::Null => clusters.push(Cluster::new(cname.clone(), Vec::new())),
                    other => {
                        return err(
                            N::UnexpectedTypeError {
                                path: ccp.clone(),
                                expected: "Map".into(),
                                actual: other.type_name().into(),
                            },
                            &ccp,
                        );
                    }
                }
            }
        }
        let gateways = blueprint_gateways(m, path)?;
        let environment_variables = environment_variables(m, path, false)?;
        let dialects = dialects(m, path)?;
        let mut bp = DefaultBlueprint {
            name: name.clone(),
            metadata,
            clusters,
            gateways,
            environment_variables,
            dialects,
        };
        super::validate::blueprint(&mut bp, path)?;
        // Validated as written (its errors name what the user wrote), stored as one form.
        for e in &mut bp.environment_variables {
            e.name = blueprint_variable(&e.name);
        }
        Ok(bp)
    })()
    .map_err(with)
}

// === workflows ===

fn parse_period(s: &str) -> Option<RepeatPeriod> {
    let t = s.trim();
    if t.is_empty() {
        return Some(RepeatPeriod::default());
    }
    let upper = t.to_ascii_uppercase();
    let (neg, body) = match upper.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, upper.as_str()),
    };
    if neg {
        return None;
    }
    let body = body.strip_prefix('P')?;
    let (date, time) = match body.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    fn fields(s: &str, units: &[char]) -> Option<Vec<i64>> {
        let mut out = vec![0i64; units.len()];
        let mut num = String::new();
        let mut last = None;
        for ch in s.chars() {
            if ch.is_ascii_digit() {
                num.push(ch);
            } else {
                let idx = units.iter().position(|u| *u == ch)?;
                if num.is_empty() || last.is_some_and(|l| idx <= l) {
                    return None;
                }
                out[idx] = num.parse().ok()?;
                num.clear();
                last = Some(idx);
            }
        }
        (num.is_empty() && last.is_some()).then_some(out)
    }
    let period = if date.is_empty() {
        None
    } else {
        let f = fields(date, &['Y', 'M', 'W', 'D'])?;
        Some((f[0], f[1], f[2].checked_mul(7)?.checked_add(f[3])?))
    };
    let duration = match time {
        None => None,
        Some(tm) => {
            let f = fields(tm, &['H', 'M', 'S'])?;
            Some(
                f[0].checked_mul(3600)?
                    .checked_add(f[1].checked_mul(60)?)?
                    .checked_add(f[2])?,
            )
        }
    };
    if period.is_none() && duration.is_none() {
        return None;
    }
    Some(RepeatPeriod { period, duration })
}

fn tags(node: Node, path: &str) -> ReadResult<Vec<String>> {
    let items = match node {
        Node::Seq(items) => items,
        other => vec![other],
    };
    let mut out: Vec<String> = Vec::new();
    for i in items {
        let t = node_string(&i, path)?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn schedule(m: &mut Map, path: &str) -> ReadResult<Schedule> {
    let sp = join(path, "schedule");
    let node = take(m, "schedule").ok_or_else(|| missing(&sp))?;
    let mut sm = match node {
        Node::Map(sm) => sm,
        other => {
            return match other.scalar_string() {
                Some(s) if s.trim().eq_ignore_ascii_case("daemon") => Ok(Schedule::Daemon),
                _ => err(N::UndefinedWorkflowScheduleError, &sp),
            };
        }
    };
    let result = if let Some(e) = take(&mut sm, "event") {
        let ep = join(&sp, "event");
        match e {
            Node::Map(mut em) => {
                let t = take(&mut em, "tags").ok_or_else(|| missing(&join(&ep, "tags")))?;
                let s = Schedule::Event {
                    tags: tags(t, &join(&ep, "tags"))?,
                };
                if !em.is_empty() {
                    sm.insert("event".into(), Node::Map(em));
                }
                s
            }
            other => Schedule::Event {
                tags: tags(other, &ep)?,
            },
        }
    } else if let Some(t) = take(&mut sm, "time") {
        let tp = join(&sp, "time");
        let (period_text, repeat, start) = match t {
            Node::Map(mut tm) => {
                let period = string(&mut tm, "period", &tp)?.unwrap_or_default();
                let repeat = match int(&mut tm, "repeat", &tp)? {
                    Some(n) => Repeat::Count(n),
                    None => Repeat::Forever,
                };
                let start = match take(&mut tm, "start") {
                    None => None,
                    Some(n) => {
                        let s = node_string(&n, &join(&tp, "start"))?;
                        if s.trim().eq_ignore_ascii_case("now") {
                            None
                        } else if crate::time::valid_offset_date_time(&s) {
                            Some(s)
                        } else {
                            return err(
                                N::UnexpectedTypeError {
                                    path: join(&tp, "start"),
                                    expected: "ISO-8601 offset date-time".into(),
                                    actual: format!("'{s}'"),
                                },
                                &join(&tp, "start"),
                            );
                        }
                    }
                };
                if !tm.is_empty() {
                    sm.insert("time".into(), Node::Map(tm));
                }
                (period, repeat, start)
            }
            other => (node_string(&other, &tp)?, Repeat::Forever, None),
        };
        let period = parse_period(&period_text).ok_or_else(|| {
            ReadError::new(
                N::IllegalWorkflowSchedulePeriod {
                    period: period_text.clone(),
                },
                join(&tp, "period"),
            )
        })?;
        Schedule::Time {
            period,
            repeat,
            start,
        }
    } else {
        return err(N::UndefinedWorkflowScheduleError, &sp);
    };
    if !sm.is_empty() {
        m.insert("schedule".into(), Node::Map(sm));
    }
    Ok(result)
}

fn workflow_status(m: &mut Map, path: &str) -> ReadResult<WorkflowStatus> {
    let Some(s) = string(m, "status", path)? else {
        return Ok(WorkflowStatus::Starting);
    };
    let t = s.trim().trim_matches('"').to_ascii_lowercase();
    Ok(match t.as_str() {
        "starting" => WorkflowStatus::Starting,
        "running" => WorkflowStatus::Running,
        "stopping" => WorkflowStatus::Stopping,
        "suspended" => WorkflowStatus::Suspended,
        "suspending" => WorkflowStatus::Suspending,
        "restarting" => WorkflowStatus::Restarting(None),
        "restarting/stopping" => WorkflowStatus::Restarting(Some(RestartingPhase::Stopping)),
        "restarting/starting" => WorkflowStatus::Restarting(Some(RestartingPhase::Starting)),
        _ => {
            return err(
                N::IllegalWorkflowStatus { status: s },
                &join(path, "status"),
            );
        }
    })
}

fn instances(m: &mut Map, path: &str) -> ReadResult<Vec<Instance>> {
    let ip = join(path, "instances");
    let items = match take(m, "instances") {
        None => return Ok(Vec::new()),
        Some(Node::Seq(items)) => items,
        Some(other) => vec![other],
    };
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let p = join(&ip, &i.to_string());
        let Node::Map(mut im) = item else {
            return err(
                N::UnexpectedTypeError {
                    path: p.clone(),
                    expected: "Map".into(),
                    actual: item.type_name().into(),
                },
                &p,
            );
        };
        let name = req_string(&mut im, "name", &p)?;
        let host = req_string(&mut im, "host", &p)?;
        let mut ports = IndexMap::new();
        if let Some(pm) = descend(&mut im, "ports", &p)? {
            let pp = join(&p, "ports");
            let keys: Vec<String> = pm.keys().cloned().collect();
            for k in keys {
                ports.insert(k.clone(), req_int(pm, &k, &pp)?);
            }
        }
        let deployed = boolean(&mut im, "deployed", &p)?.unwrap_or(false);
        out.push(Instance {
            name,
            host,
            ports,
            deployed,
        });
        rest.push(Node::Map(im));
    }
    m.insert("instances".into(), Node::Seq(rest));
    Ok(out)
}

/// A workflow.
pub(crate) fn workflow(m: &mut Map, path: &str) -> ReadResult<Workflow> {
    let name = req_string(m, "name", path)?;
    let with = |e: ReadError| e.in_artifact(ArtifactKind::Workflow, Some(&name));
    (|| {
        validate_name(&name, &join(path, "name"))?;
        kind_check(m, "workflows", path)?;
        let metadata = metadata(m, path)?;
        let breed = breed_position(m, "breed", path)?;
        let status = workflow_status(m, path)?;
        let schedule = schedule(m, path)?;
        let scale = scale_position(m, "scale", path)?;
        let environment_variables = environment_variables(m, path, false)?;
        let arguments = arguments(m, path)?;
        let network = string(m, "network", path)?;
        let health_checks = health_checks(m, path)?;
        let dialects = dialects(m, path)?;
        let instances = instances(m, path)?;
        m.shift_remove("health");
        let wf = Workflow {
            name: name.clone(),
            metadata,
            breed,
            status,
            schedule,
            scale,
            environment_variables,
            arguments,
            network,
            health_checks,
            dialects,
            instances,
        };
        super::validate::workflow(&wf, path)?;
        Ok(wf)
    })()
    .map_err(with)
}

// === templates, imports, events ===

/// A template.
pub(crate) fn template(m: &mut Map, path: &str) -> ReadResult<Template> {
    let name = req_string(m, "name", path)?;
    validate_name(&name, &join(path, "name"))?;
    kind_check(m, "templates", path)?;
    let metadata = metadata(m, path)?;
    let definition = match take_any(m, &["definition", "def"]) {
        Some((_, Node::Map(d))) => d,
        _ => Map::new(),
    };
    Ok(Template {
        name,
        metadata,
        definition,
    })
}

/// `import:` entries of a document; the rest is the base.
pub(crate) fn import(mut m: Map, path: &str) -> ReadResult<Import> {
    let ip = join(path, "import");
    let items = match m.shift_remove("import") {
        None | Some(Node::Null) => Vec::new(),
        Some(Node::Seq(items)) => items,
        Some(other) => vec![other],
    };
    let mut references = Vec::new();
    for item in items {
        let Node::Str(s) = item else {
            return err(N::ImportDefinitionError, &ip);
        };
        if s.trim().is_empty() {
            return err(N::EmptyImportError, &ip);
        }
        let parts: Vec<&str> = s.split('/').collect();
        let reference = match parts.as_slice() {
            [name] => ImportReference {
                name: (*name).to_owned(),
                kind: ArtifactKind::Template,
            },
            [kind, name] => match ArtifactKind::parse(kind) {
                Some(kind) if !name.is_empty() => ImportReference {
                    name: (*name).to_owned(),
                    kind,
                },
                _ => return err(N::ImportDefinitionError, &ip),
            },
            _ => return err(N::ImportDefinitionError, &ip),
        };
        references.push(reference);
    }
    Ok(Import {
        base: m,
        references,
    })
}

fn event_type_ok(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An event.
pub(crate) fn event(m: &mut Map, path: &str) -> ReadResult<Event> {
    let tp = join(path, "tags");
    let tags = tags(take(m, "tags").ok_or_else(|| missing(&tp))?, &tp)?;
    if tags.is_empty() {
        return err(N::NoTagEventError, &tp);
    }
    let value = m.shift_remove("value").unwrap_or(Node::Null);
    let timestamp = match string(m, "timestamp", path)? {
        None => crate::time::now_iso(),
        Some(ts) if crate::time::valid_offset_date_time(&ts) => ts,
        Some(ts) => {
            return err(
                N::EventTimestampError { timestamp: ts },
                &join(path, "timestamp"),
            );
        }
    };
    let event_type = string(m, "type", path)?.unwrap_or_else(|| "event".to_owned());
    if !event_type_ok(&event_type) {
        return err(N::EventTypeError { event_type }, &join(path, "type"));
    }
    let version = string(m, "version", path)?;
    let id = string(m, "id", path)?;
    let digest = string(m, "digest", path)?;
    m.shift_remove("kind");
    Ok(Event {
        id,
        version,
        tags,
        value,
        timestamp,
        event_type,
        digest,
    })
}

/// An event query.
pub(crate) fn event_query(m: &mut Map, path: &str) -> ReadResult<EventQuery> {
    let tp = join(path, "tags");
    let tags = match take(m, "tags") {
        None => return Err(missing(&tp)),
        Some(t) => tags(t, &tp)?,
    };
    let event_type = string(m, "type", path)?;
    let timestamp = match descend(m, "timestamp", path)? {
        None => None,
        Some(tm) => {
            let p = join(path, "timestamp");
            let r = TimeRange {
                lt: string(tm, "lt", &p)?,
                lte: string(tm, "lte", &p)?,
                gt: string(tm, "gt", &p)?,
                gte: string(tm, "gte", &p)?,
            };
            if (r.lt.is_some() && r.lte.is_some()) || (r.gt.is_some() && r.gte.is_some()) {
                return err(N::EventQueryTimeError, &p);
            }
            Some(r)
        }
    };
    let aggregator = match descend(m, "aggregator", path)? {
        None => None,
        Some(am) => {
            let p = join(path, "aggregator");
            let t = req_string(am, "type", &p)?;
            let aggregator_type = match t.to_ascii_lowercase().as_str() {
                "min" => AggregatorType::Min,
                "max" => AggregatorType::Max,
                "average" => AggregatorType::Average,
                "sum" => AggregatorType::Sum,
                "count" => AggregatorType::Count,
                _ => {
                    return err(
                        N::UnsupportedAggregatorError { aggregator: t },
                        &join(&p, "type"),
                    );
                }
            };
            let field = string(am, "field", &p)?.unwrap_or_else(|| "value".to_owned());
            Some(Aggregator {
                aggregator_type,
                field,
            })
        }
    };
    m.shift_remove("kind");
    Ok(EventQuery {
        tags,
        event_type,
        timestamp,
        aggregator,
    })
}

// === deployments ===

fn service_status(m: &mut Map, path: &str) -> ReadResult<ServiceStatus> {
    let sp = join(path, "status");
    let st = descend(m, "status", path)?.ok_or_else(|| missing(&join(&sp, "intention")))?;
    let intention_text = req_string(st, "intention", &sp)?;
    let intention = match intention_text.as_str() {
        "Deployment" | "Deploy" => Intention::Deployment,
        "Undeployment" | "Undeploy" => Intention::Undeployment,
        _ => {
            return err(
                N::UndefinedStateIntentionError {
                    name: intention_text,
                },
                &join(&sp, "intention"),
            );
        }
    };
    let since = string(st, "since", &sp)?.unwrap_or_default();
    let pp = join(&sp, "phase");
    let phase = match descend(st, "phase", &sp)? {
        None => Phase::Initiated {
            since: since.clone(),
        },
        Some(ph) => {
            let name = req_string(ph, "name", &pp)?;
            let psince = string(ph, "since", &pp)?.unwrap_or_default();
            match name.as_str() {
                "Initiated" => Phase::Initiated { since: psince },
                "Updating" => Phase::Updating { since: psince },
                "Done" => Phase::Done { since: psince },
                "Failed" => Phase::Failed {
                    since: psince,
                    notification: string(ph, "notification", &pp)?.unwrap_or_default(),
                },
                _ => return err(N::UndefinedStateStepError { name }, &join(&pp, "name")),
            }
        }
    };
    Ok(ServiceStatus {
        intention,
        since,
        phase,
    })
}

/// Environment variables in the API form (map) or the persistence form (list of
/// `{name, alias, value, interpolated}`).
fn deployment_env(m: &mut Map, path: &str) -> ReadResult<Vec<EnvironmentVariable>> {
    let p = join(path, "environment_variables");
    match m.get("environment_variables") {
        Some(Node::Seq(_)) => {
            let Some(Node::Seq(items)) = m.shift_remove("environment_variables") else {
                unreachable!()
            };
            let mut out = Vec::new();
            let mut rest = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let ip = join(&p, &i.to_string());
                let Node::Map(mut em) = item else {
                    return err(
                        N::UnexpectedTypeError {
                            path: ip.clone(),
                            expected: "Map".into(),
                            actual: item.type_name().into(),
                        },
                        &ip,
                    );
                };
                out.push(EnvironmentVariable {
                    name: req_string(&mut em, "name", &ip)?,
                    alias: string(&mut em, "alias", &ip)?,
                    value: string(&mut em, "value", &ip)?,
                    interpolated: string(&mut em, "interpolated", &ip)?,
                });
                rest.push(Node::Map(em));
            }
            m.insert("environment_variables".into(), Node::Seq(rest));
            Ok(out)
        }
        _ => environment_variables(m, path, true),
    }
}

fn deployment_service(m: &mut Map, path: &str) -> ReadResult<DeploymentService> {
    let status = service_status(m, path)?;
    let bp = join(path, "breed");
    let breed = match m.get_mut("breed") {
        Some(Node::Map(bm)) => {
            let b = breed(bm, &bp)?;
            if bm.is_empty() {
                m.shift_remove("breed");
            }
            b
        }
        _ => return Err(missing(&join(&bp, "name"))),
    };
    let environment_variables = deployment_env(m, path)?;
    let scale = match scale_position(m, "scale", path)? {
        None => None,
        Some(Ref::Inline(s)) => Some(s),
        Some(Ref::Reference(r)) => {
            let p = join(path, "scale");
            return err(
                N::UnexpectedTypeError {
                    path: p.clone(),
                    expected: "an expanded scale".into(),
                    actual: format!("reference '{r}'"),
                },
                &p,
            );
        }
    };
    let instances = instances(m, path)?;
    let arguments = arguments(m, path)?;
    let health_checks = health_checks(m, path)?;
    let network = string(m, "network", path)?;
    let mut dependencies = IndexMap::new();
    if let Some(dm) = descend(m, "dependencies", path)? {
        let dp = join(path, "dependencies");
        let keys: Vec<String> = dm.keys().cloned().collect();
        for k in keys {
            let v = req_string(dm, &k, &dp)?;
            dependencies.insert(k, v);
        }
    }
    let dialects = dialects(m, path)?;
    let health = match descend(m, "health", path)? {
        None => None,
        Some(h) => {
            let hp = join(path, "health");
            Some(Health {
                staged: req_int(h, "staged", &hp)?,
                running: req_int(h, "running", &hp)?,
                healthy: req_int(h, "healthy", &hp)?,
                unhealthy: req_int(h, "unhealthy", &hp)?,
            })
        }
    };
    Ok(DeploymentService {
        status,
        breed,
        environment_variables,
        scale,
        instances,
        arguments,
        health_checks,
        network,
        dependencies,
        dialects,
        health,
    })
}

/// A deployment in Vamp's export/persistence form (the output of `GET /deployments/x`).
pub(crate) fn deployment(m: &mut Map, path: &str) -> ReadResult<Deployment> {
    let name = req_string(m, "name", path)?;
    let with = |e: ReadError| e.in_artifact(ArtifactKind::Deployment, Some(&name));
    (|| {
        validate_name(&name, &join(path, "name"))?;
        kind_check(m, "deployments", path)?;
        let meta = metadata(m, path)?;
        let mut clusters = Vec::new();
        if let Some(cm) = descend(m, "clusters", path)? {
            let cp = join(path, "clusters");
            for (cname, c) in cm.iter_mut() {
                let ccp = join(&cp, cname);
                validate_name(cname, &ccp)?;
                let Node::Map(c) = c else {
                    return err(
                        N::UnexpectedTypeError {
                            path: ccp.clone(),
                            expected: "Map".into(),
                            actual: c.type_name().into(),
                        },
                        &ccp,
                    );
                };
                let cmeta = metadata(c, &ccp)?;
                let mut services = Vec::new();
                if let Some(Node::Seq(items)) = c.get_mut("services") {
                    let sp = join(&ccp, "services");
                    for (i, item) in items.iter_mut().enumerate() {
                        let ip = join(&sp, &i.to_string());
                        let Node::Map(sm) = item else {
                            return err(
                                N::UnexpectedTypeError {
                                    path: ip.clone(),
                                    expected: "Map".into(),
                                    actual: item.type_name().into(),
                                },
                                &ip,
                            );
                        };
                        services.push(deployment_service(sm, &ip)?);
                    }
                }
                clusters.push(DeploymentCluster {
                    name: cname.clone(),
                    metadata: cmeta,
                    services,
                    gateways: cluster_gateways(c, &ccp)?,
                    health_checks: health_checks(c, &ccp)?,
                    network: string(c, "network", &ccp)?,
                    sla: sla_position(c, &ccp)?,
                    dialects: dialects(c, &ccp)?,
                });
            }
        }
        let gateways = blueprint_gateways(m, path)?;
        let with_group = |name: String, group: &str| match name.split_once('.') {
            Some((c, rest)) if !rest.starts_with(&format!("{group}.")) => {
                format!("{c}.{group}.{rest}")
            }
            _ => name,
        };
        let ports = trait_map(m, &["ports"], path)?
            .into_iter()
            .map(|(n, v, _)| {
                Port::new(with_group(n.clone(), "ports"), v).ok_or_else(|| {
                    ReadError::new(N::MalformedTraitError { name: n }, join(path, "ports"))
                })
            })
            .collect::<ReadResult<Vec<_>>>()?;
        let environment_variables = deployment_env(m, path)?;
        let hosts = trait_map(m, &["hosts"], path)?
            .into_iter()
            .map(|(n, value, _)| Host {
                name: if n.ends_with(".hosts.host") {
                    n
                } else {
                    format!("{n}.hosts.host")
                },
                value,
            })
            .collect();
        let dialects = dialects(m, path)?;
        Ok(Deployment {
            name: name.clone(),
            metadata: meta,
            clusters,
            gateways,
            ports,
            environment_variables,
            hosts,
            dialects,
        })
    })()
    .map_err(with)
}
