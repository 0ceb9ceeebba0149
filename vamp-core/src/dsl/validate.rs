//! Validation of read artifacts, in Vamp's order (model.md §2.4, §2.10, §2.11).

use std::collections::HashSet;

use super::read::validate_arguments;
use super::read::validate_health_checks;
use super::source::{err, join, validate_name, validate_strict_name};
use crate::error::{Notification as N, ReadResult};
use crate::model::*;
use crate::parser::{ValuePart, parse_selector, value_references};

// === breeds ===

/// Validates a breed (model.md §2.4 order).
pub(crate) fn breed(b: &DefaultBreed, path: &str) -> ReadResult<()> {
    let boxed = || Box::new(b.clone());
    for p in &b.ports {
        validate_strict_name(&p.name, &join(&join(path, "ports"), &p.name))?;
    }
    for c in &b.constants {
        validate_strict_name(&c.name, &join(&join(path, "constants"), &c.name))?;
    }
    for e in &b.environment_variables {
        validate_name(
            &e.name,
            &join(&join(path, "environment_variables"), &e.name),
        )?;
    }
    for p in &b.ports {
        if p.value.is_none() {
            return err(
                N::MissingPortValueError {
                    breed: boxed(),
                    port: p.clone(),
                },
                &join(&join(path, "ports"), &p.name),
            );
        }
    }
    for c in &b.constants {
        if c.value.is_none() {
            return err(
                N::MissingConstantValueError {
                    breed: boxed(),
                    constant: c.name.clone(),
                },
                &join(&join(path, "constants"), &c.name),
            );
        }
    }
    validate_arguments(&b.arguments, path)?;
    validate_health_checks(
        b.health_checks.as_deref(),
        |port| b.ports.iter().any(|p| p.name == port),
        path,
    )?;
    // Trait values: references must name declared dependencies (and existing traits of inline ones).
    let values = b
        .ports
        .iter()
        .map(|p| (p.value.as_deref(), join(&join(path, "ports"), &p.name)))
        .chain(b.environment_variables.iter().map(|e| {
            (
                e.value.as_deref(),
                join(&join(path, "environment_variables"), &e.name),
            )
        }))
        .chain(
            b.constants
                .iter()
                .map(|c| (c.value.as_deref(), join(&join(path, "constants"), &c.name))),
        );
    for (value, vp) in values {
        let Some(value) = value else { continue };
        let refs = value_references(value)
            .map_err(|reason| crate::error::ReadError::new(N::ParserError { reason }, &vp))?;
        for r in refs {
            let unresolved = |reference: String| {
                err(
                    N::UnresolvedDependencyInTraitValueError {
                        breed: boxed(),
                        reference,
                    },
                    &vp,
                )
            };
            match &r {
                ValuePart::Trait {
                    cluster,
                    group,
                    name,
                } => match b.dependencies.get(cluster) {
                    None => return unresolved(r.to_string()),
                    Some(Ref::Inline(dep)) if !breed_has_trait(dep, group, name) => {
                        return unresolved(r.to_string());
                    }
                    Some(_) => {}
                },
                ValuePart::Host(cluster) if !b.dependencies.contains_key(cluster) => {
                    return unresolved(r.to_string());
                }
                _ => {}
            }
        }
    }
    recursion(b, &mut Vec::new(), path)
}

/// Whether an inline breed has a trait `name` in `group`.
pub(crate) fn breed_has_trait(b: &DefaultBreed, group: &str, name: &str) -> bool {
    match group {
        "ports" => b.ports.iter().any(|p| p.name == name),
        "environment_variables" => b.environment_variables.iter().any(|e| e.name == name),
        "constants" => b.constants.iter().any(|c| c.name == name),
        _ => false,
    }
}

/// DFS over inline dependencies; a dependency whose name was already visited is a cycle.
fn recursion(b: &DefaultBreed, visited: &mut Vec<String>, path: &str) -> ReadResult<()> {
    visited.push(b.name.clone());
    for dep in b.dependencies.values() {
        let name = match dep {
            Ref::Reference(n) => n,
            Ref::Inline(d) => &d.name,
        };
        if visited.contains(name) {
            return err(
                N::RecursiveDependenciesError {
                    breed: Box::new(b.clone()),
                },
                &join(path, "dependencies"),
            );
        }
        if let Ref::Inline(d) = dep {
            recursion(d, visited, path)?;
        }
    }
    visited.pop();
    Ok(())
}

// === gateways ===

/// Validates a gateway (model.md §2.11).
pub(crate) fn gateway(g: &Gateway, path: &str) -> ReadResult<()> {
    if !(0..=65535).contains(&g.port.number) {
        return err(
            N::InvalidGatewayPortError {
                port: g.port.number,
            },
            &join(path, "port"),
        );
    }
    for route in &g.routes {
        let rp = join(&join(path, "routes"), &route.path().source);
        let segments = route.path().segments.len();
        if !(1..=4).contains(&segments) {
            return err(
                N::UnsupportedRoutePathError {
                    path: route.path().source.clone(),
                },
                &rp,
            );
        }
        if let Some(r) = route.definition()
            && let Some(sel) = &r.selector
        {
            if parse_selector(&sel.definition).is_err() {
                return err(
                    N::InvalidSelectorError {
                        definition: sel.definition.clone(),
                    },
                    &rp,
                );
            }
            if r.path.external().is_some() {
                return err(N::RouteSelectorExternalTargetError, &rp);
            }
            if segments != 1 {
                return err(N::RouteSelectorOnlyRouteError, &rp);
            }
        }
    }
    if g.sticky.is_some() && g.port.port_type == PortType::Tcp {
        let value = g.port.value.clone().unwrap_or_default();
        let port = Port {
            name: value,
            ..g.port.clone()
        };
        return err(N::StickyPortTypeError { port }, &join(path, "sticky"));
    }
    gateway_weights(g, path)
}

fn gateway_weights(g: &Gateway, path: &str) -> ReadResult<()> {
    if g.routes.iter().all(|r| r.definition().is_some()) {
        let sum: u32 = g
            .routes
            .iter()
            .filter_map(|r| r.definition()?.weight)
            .map(|w| u32::from(w.0))
            .sum();
        if sum != 0 && sum != 100 {
            return err(
                N::GatewayRouteWeightError {
                    gateway: Box::new(g.clone()),
                },
                &join(path, "routes"),
            );
        }
    }
    for r in g.routes.iter().filter_map(Route::definition) {
        if r.condition_strength.is_some_and(|s| s.0 > 100) {
            return err(
                N::GatewayRouteConditionStrengthError {
                    gateway: Box::new(g.clone()),
                },
                &join(path, "routes"),
            );
        }
    }
    Ok(())
}

// === blueprints ===

fn inline_breeds(c: &Cluster) -> Option<Vec<&DefaultBreed>> {
    c.services.iter().map(|s| s.breed.inline()).collect()
}

/// Validates a blueprint (model.md §2.10 order); renames anonymous cluster gateways to the only
/// port of their breeds, as Vamp did.
pub(crate) fn blueprint(bp: &mut DefaultBlueprint, path: &str) -> ReadResult<()> {
    let cpath = |c: &str| join(&join(path, "clusters"), c);
    // 1. cluster names
    for c in &bp.clusters {
        validate_name(&c.name, &cpath(&c.name))?;
    }
    // Anonymous cluster gateways take the only port of the cluster's inline breeds.
    for c in &mut bp.clusters {
        if let Some(breeds) = inline_breeds(c) {
            let mut ports: Vec<&str> = breeds
                .iter()
                .flat_map(|b| b.ports.iter().map(|p| p.name.as_str()))
                .collect();
            ports.dedup();
            let distinct: HashSet<&str> = ports.iter().copied().collect();
            if distinct.len() == 1 {
                let only = ports[0].to_owned();
                for g in c.gateways.iter_mut().filter(|g| g.port.name.is_empty()) {
                    g.port.name = only.clone();
                }
            }
        }
        // Two gateways of one cluster for the same port (e.g. an anonymous one renamed onto a
        // named one): Vamp kept both, which made two internal gateways of one name.
        let mut seen = HashSet::new();
        for g in &c.gateways {
            if !seen.insert(g.port.name.as_str()) {
                return err(
                    N::DuplicateGatewayPortError {
                        port: g.port.name.clone(),
                    },
                    &join(&cpath(&c.name), "gateways"),
                );
            }
        }
    }
    let cluster = |name: &str| bp.clusters.iter().find(|c| c.name == name);
    // 2a. blueprint gateway routes → cluster/port
    for g in &bp.gateways {
        let value = g.port.value.clone().unwrap_or_default();
        let gp = join(&join(path, "gateways"), &g.port.name);
        for r in &g.routes {
            let segs = &r.path().segments;
            if segs.len() != 2 {
                return err(
                    N::UnresolvedGatewayPortError {
                        name: r.path().source.clone(),
                        value,
                    },
                    &gp,
                );
            }
            let unresolved = || {
                err(
                    N::UnresolvedGatewayPortError {
                        name: format!("{}.{}", segs[0], segs[1]),
                        value: value.clone(),
                    },
                    &gp,
                )
            };
            match cluster(&segs[0]) {
                None => return unresolved(),
                Some(c) => {
                    if let Some(breeds) = inline_breeds(c)
                        && !breeds
                            .iter()
                            .any(|b| b.ports.iter().any(|p| p.name == segs[1]))
                    {
                        return unresolved();
                    }
                }
            }
        }
    }
    // 2b. blueprint environment variables: cluster.environment_variables.NAME, or the
    // two-part cluster.NAME of Vamp's documentation (Vamp 1.x refused it at HEAD).
    for e in &bp.environment_variables {
        let value = e.value.clone().unwrap_or_default();
        let unresolved = || {
            err(
                N::UnresolvedEnvironmentVariableError {
                    name: e.name.clone(),
                    value: value.clone(),
                },
                &join(&join(path, "environment_variables"), &e.name),
            )
        };
        let parts: Vec<&str> = e.name.splitn(3, '.').collect();
        let (c, name) = match parts.as_slice() {
            [c, "environment_variables", name] | [c, name] => (c, name),
            _ => return unresolved(),
        };
        if c.is_empty() || name.is_empty() {
            return unresolved();
        }
        match cluster(c) {
            None => return unresolved(),
            Some(c) => {
                if let Some(breeds) = inline_breeds(c)
                    && !breeds
                        .iter()
                        .any(|b| b.environment_variables.iter().any(|v| v.name == *name))
                {
                    return unresolved();
                }
            }
        }
    }
    // 2c. $cluster.group.name references in inline breed and blueprint env values
    let mut env_values: Vec<(&str, &str)> = Vec::new();
    for c in &bp.clusters {
        for b in inline_breeds(c).unwrap_or_default() {
            env_values.extend(
                b.environment_variables
                    .iter()
                    .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?))),
            );
        }
        for s in &c.services {
            if let Ref::Inline(b) = &s.breed
                && inline_breeds(c).is_none()
            {
                env_values.extend(
                    b.environment_variables
                        .iter()
                        .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?))),
                );
            }
        }
    }
    env_values.extend(
        bp.environment_variables
            .iter()
            .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?))),
    );
    for (name, value) in env_values {
        let Ok(refs) = value_references(value) else {
            continue;
        };
        for r in refs {
            if let ValuePart::Trait {
                cluster: cn,
                group,
                name: tn,
            } = &r
                && let Some(c) = cluster(cn)
                && let Some(breeds) = inline_breeds(c)
                && !breeds.iter().any(|b| breed_has_trait(b, group, tn))
            {
                return err(
                    N::UnresolvedEnvironmentVariableError {
                        name: name.to_owned(),
                        value: value.to_owned(),
                    },
                    &join(path, "environment_variables"),
                );
            }
        }
    }
    // 3-5. cluster gateways: routes name services; weights ≤ 100; strengths 0..100
    for c in &bp.clusters {
        for g in &c.gateways {
            for r in &g.routes {
                let service = &r.path().source;
                if !c.services.iter().any(|s| s.breed.name() == service) {
                    return err(
                        N::UnresolvedServiceRouteError {
                            cluster: c.name.clone(),
                            service: service.clone(),
                        },
                        &join(&cpath(&c.name), "gateways"),
                    );
                }
            }
        }
        for g in &c.gateways {
            let sum: u32 = g
                .routes
                .iter()
                .filter_map(|r| r.definition()?.weight)
                .map(|w| u32::from(w.0))
                .sum();
            if sum > 100 {
                return err(
                    N::RouteWeightError {
                        cluster: c.name.clone(),
                    },
                    &join(&cpath(&c.name), "gateways"),
                );
            }
            if g.routes
                .iter()
                .filter_map(Route::definition)
                .any(|r| r.condition_strength.is_some_and(|s| s.0 > 100))
            {
                return err(
                    N::RouteConditionStrengthError {
                        cluster: c.name.clone(),
                    },
                    &join(&cpath(&c.name), "gateways"),
                );
            }
        }
    }
    // 6. blueprint gateways: weights and strengths
    for g in &bp.gateways {
        gateway_weights(g, &join(&join(path, "gateways"), &g.port.name))?;
    }
    // 7. port types, duplicates, cluster gateway ports
    for c in &bp.clusters {
        for g in &c.gateways {
            let breed_port = c
                .services
                .iter()
                .filter_map(|s| s.breed.inline())
                .flat_map(|b| b.ports.iter())
                .find(|p| p.name == g.port.name && p.port_type == PortType::Tcp);
            if let Some(port) = breed_port {
                let gp = join(&join(&cpath(&c.name), "gateways"), &g.port.name);
                if g.sticky.is_some() {
                    return err(N::StickyPortTypeError { port: port.clone() }, &gp);
                }
                if let Some(cond) = g
                    .routes
                    .iter()
                    .filter_map(|r| r.definition()?.condition.as_ref()?.inline())
                    .next()
                {
                    return err(
                        N::ConditionPortTypeError {
                            port: port.clone(),
                            condition: cond.clone(),
                        },
                        &gp,
                    );
                }
            }
        }
    }
    for g in &bp.gateways {
        if g.port.port_type == PortType::Tcp {
            for r in g.routes.iter().filter_map(Route::definition) {
                if let Some(Ref::Inline(cond)) = &r.condition {
                    let port = Port {
                        name: r.path.source.clone(),
                        ..g.port.clone()
                    };
                    return err(
                        N::ConditionPortTypeError {
                            port,
                            condition: cond.clone(),
                        },
                        &join(&join(path, "gateways"), &g.port.name),
                    );
                }
            }
        }
    }
    let mut seen = HashSet::new();
    for g in &bp.gateways {
        if !seen.insert(g.port.number) {
            return err(
                N::DuplicateGatewayPortError {
                    port: g.port.number.to_string(),
                },
                &join(path, "gateways"),
            );
        }
    }
    let all_inline: Option<Vec<&DefaultBreed>> = bp
        .clusters
        .iter()
        .flat_map(|c| c.services.iter())
        .map(|s| s.breed.inline())
        .collect();
    if let Some(breeds) = &all_inline {
        for c in &bp.clusters {
            for g in &c.gateways {
                if !g.port.name.is_empty()
                    && !breeds
                        .iter()
                        .any(|b| b.ports.iter().any(|p| p.name == g.port.name))
                {
                    return err(
                        N::UnresolvedGatewayPortError {
                            name: g.port.name.clone(),
                            value: String::new(),
                        },
                        &join(&join(&cpath(&c.name), "gateways"), &g.port.name),
                    );
                }
            }
        }
    }
    // 8. anonymous cluster gateway with a multi-port inline breed
    for c in &bp.clusters {
        if c.gateways.iter().any(|g| g.port.name.is_empty())
            && let Some(b) = c
                .services
                .iter()
                .filter_map(|s| s.breed.inline())
                .find(|b| b.ports.len() > 1)
        {
            return err(
                N::IllegalAnonymousRoutingPortMappingError {
                    breed: Box::new(b.clone()),
                },
                &join(&cpath(&c.name), "gateways"),
            );
        }
    }
    // 9. at least one service
    if bp.clusters.iter().all(|c| c.services.is_empty()) {
        return err(N::NoServiceError, &join(path, "clusters"));
    }
    // 10. service arguments
    for c in &bp.clusters {
        for s in &c.services {
            validate_arguments(&s.arguments, &cpath(&c.name))?;
        }
    }
    // 11. unique breeds
    let mut names = HashSet::new();
    for c in &bp.clusters {
        for s in &c.services {
            if !names.insert(s.breed.name()) {
                return err(
                    N::NonUniqueBlueprintBreedReferenceError {
                        name: s.breed.name().to_owned(),
                    },
                    &join(&cpath(&c.name), "services"),
                );
            }
        }
    }
    // 12. service environment variables
    for c in &bp.clusters {
        for s in &c.services {
            if let Ref::Inline(b) = &s.breed {
                service_environment(
                    b,
                    &s.environment_variables,
                    &join(&cpath(&c.name), "services"),
                )?;
            }
        }
    }
    // 13. inline breed dependencies must be breeds of the blueprint
    for c in &bp.clusters {
        for s in &c.services {
            if let Ref::Inline(b) = &s.breed {
                for (alias, dep) in &b.dependencies {
                    let dep_name = match dep {
                        Ref::Reference(n) => n.as_str(),
                        Ref::Inline(d) => d.name.as_str(),
                    };
                    if !names.contains(dep_name) {
                        return err(
                            N::UnresolvedBreedDependencyError {
                                breed: Box::new(b.clone()),
                                dependency: (alias.clone(), dep_name.to_owned()),
                            },
                            &join(&cpath(&c.name), "services"),
                        );
                    }
                }
            }
        }
    }
    // 15. health checks
    for c in &bp.clusters {
        let port_ok = |port: &str| {
            c.services.iter().any(|s| match &s.breed {
                Ref::Reference(_) => true,
                Ref::Inline(b) => b.ports.iter().any(|p| p.name == port),
            })
        };
        validate_health_checks(c.health_checks.as_deref(), port_ok, &cpath(&c.name))?;
        for s in &c.services {
            let port_ok = |port: &str| match &s.breed {
                Ref::Reference(_) => true,
                Ref::Inline(b) => b.ports.iter().any(|p| p.name == port),
            };
            validate_health_checks(
                s.health_checks.as_deref(),
                port_ok,
                &join(&cpath(&c.name), "services"),
            )?;
        }
    }
    // 16. scale escalation targets
    for c in &bp.clusters {
        if let Some(sla) = &c.sla {
            for target in escalation_targets(sla.escalations()) {
                if cluster(target).is_none() {
                    return err(
                        N::UnresolvedScaleEscalationTargetCluster {
                            cluster: c.name.clone(),
                            target: target.to_owned(),
                        },
                        &join(&cpath(&c.name), "sla"),
                    );
                }
            }
        }
    }
    Ok(())
}

fn escalation_targets(escalations: &[Escalation]) -> Vec<&str> {
    let mut out = Vec::new();
    for e in escalations {
        match e {
            Escalation::ToAll { escalations, .. } | Escalation::ToOne { escalations, .. } => {
                out.extend(escalation_targets(escalations))
            }
            Escalation::ScaleInstances {
                target: Some(t), ..
            }
            | Escalation::ScaleCpu {
                target: Some(t), ..
            }
            | Escalation::ScaleMemory {
                target: Some(t), ..
            } => out.push(t.as_str()),
            _ => {}
        }
    }
    out
}

/// Service or workflow environment variables against an inline breed.
fn service_environment(
    b: &DefaultBreed,
    env: &[EnvironmentVariable],
    path: &str,
) -> ReadResult<()> {
    for e in env {
        if e.value.is_none() {
            return err(
                N::MissingEnvironmentVariableError {
                    breed: Box::new(b.clone()),
                    name: e.name.clone(),
                },
                &join(path, "environment_variables"),
            );
        }
        if !b.environment_variables.iter().any(|v| v.name == e.name) {
            return err(
                N::UnresolvedDependencyInTraitValueError {
                    breed: Box::new(b.clone()),
                    reference: e.name.clone(),
                },
                &join(path, "environment_variables"),
            );
        }
    }
    Ok(())
}

/// Validates a workflow's environment variables against an inline breed.
pub(crate) fn workflow(wf: &Workflow, path: &str) -> ReadResult<()> {
    validate_arguments(&wf.arguments, path)?;
    if let Ref::Inline(b) = &wf.breed {
        service_environment(b, &wf.environment_variables, path)?;
    }
    Ok(())
}
