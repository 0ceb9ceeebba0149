//! Environment variables, constants, ports and dependencies resolved at deploy time (Vamp's
//! `DeploymentValueResolver` and `SingleDeploymentSynchronizationActor.resolveEnvironmentVariables`).
//!
//! Values use the interpolation grammar of [`crate::parser::parse_value`]; resolution is a
//! single pass (a resolved value containing `$x` is not resolved again):
//!
//! * `$alias.host` → the dependency alias mapped to its cluster, then the deployment's host
//!   trait `cluster.hosts.host` (the gateway host);
//! * `$alias.ports.p` → the deployment's `cluster.ports.p`: the port of the cluster's internal
//!   gateway for breed port `p`;
//! * `$alias.environment_variables.x` → the deployment's `cluster.environment_variables.x`, else
//!   the value a service of that cluster gives `x`;
//! * `$alias.constants.x` → the deployment's trait if any, else the constant `x` of a breed of
//!   that cluster (**fixed**: Vamp's deployment traits held no constants, so this resolved to
//!   "" at deploy time);
//! * `$name` → the service's own variable or its breed's constant;
//! * `$config://path` → the `config` lookup, `$env://NAME` (also `environment`, `env_var`,
//!   `environment_variable`) → the `env` lookup the caller passes ([`Lookups`]; by default
//!   nothing: the control plane's own environment is not handed to services unless asked);
//! * anything unresolved → "".
//!
//! ```
//! use vamp_core::model::{Deployment, EnvironmentVariable, Host};
//! use vamp_core::ops::resolve::deployment_environment;
//!
//! let mut d = Deployment { name: "d".into(), metadata: Default::default(), clusters: vec![], gateways: vec![], ports: vec![],
//!     environment_variables: vec![EnvironmentVariable::new("web.environment_variables.URL", Some("http://$db.host/x".into()))],
//!     hosts: vec![Host { name: "db.hosts.host".into(), value: Some("10.0.0.1".into()) }], dialects: Default::default() };
//! let env = deployment_environment(&d, &["web"]);
//! assert_eq!(env[0].interpolated.as_deref(), Some("http://10.0.0.1/x"));
//! ```

use crate::error::OperationError;
use crate::model::{Deployment, DeploymentService, EnvironmentVariable};
use crate::parser::{ValuePart, parse_value};

/// A lookup of a value by name or path.
pub type ValueLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Where `$config://…` and `$env://…` values come from.
#[derive(Default)]
pub struct Lookups<'a> {
    /// `$config://path` (`conf`, `configuration`).
    pub config: Option<ValueLookup<'a>>,
    /// `$env://NAME` (`environment`, `env_var`, `environment_variable`).
    pub env: Option<ValueLookup<'a>>,
}

impl std::fmt::Debug for Lookups<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups")
            .field("config", &self.config.is_some())
            .field("env", &self.env.is_some())
            .finish()
    }
}

/// The deployment's own trait `cluster.group.name` (its ports, environment variables — in
/// which Vamp also kept constants — and hosts).
fn deployment_trait(d: &Deployment, cluster: &str, group: &str, name: &str) -> Option<String> {
    let full = format!("{cluster}.{group}.{name}");
    match group {
        "ports" => d
            .ports
            .iter()
            .find(|p| p.name == full)
            .map(|p| p.number.to_string()),
        "hosts" => d
            .hosts
            .iter()
            .find(|h| h.name == full)
            .and_then(|h| h.value.clone()),
        _ => d
            .environment_variables
            .iter()
            .find(|e| e.name == full)
            .and_then(|e| e.value.clone()),
    }
}

fn host(d: &Deployment, cluster: &str) -> Option<String> {
    deployment_trait(d, cluster, "hosts", "host")
}

/// Interpolates the deployment-level variables of `clusters` that have a value and no
/// interpolation yet, against the deployment's traits (Vamp's `resolveEnvironmentVariables(deployment,
/// clusters)`, reader-fixtures A.6). The other variables are returned unchanged.
pub fn deployment_environment(d: &Deployment, clusters: &[&str]) -> Vec<EnvironmentVariable> {
    d.environment_variables
        .iter()
        .map(|e| interpolated(d, e, clusters))
        .collect()
}

/// One deployment-level variable, interpolated when it belongs to `clusters` and is not yet.
fn interpolated(d: &Deployment, e: &EnvironmentVariable, clusters: &[&str]) -> EnvironmentVariable {
    let mut e = e.clone();
    let mut parts = e.name.splitn(3, '.');
    let (Some(cluster), Some(group)) = (parts.next(), parts.next()) else {
        return e;
    };
    if group != "environment_variables" || !clusters.contains(&cluster) || e.interpolated.is_some()
    {
        return e;
    }
    if let Some(value) = &e.value {
        e.interpolated = Some(interpolate(value, &mut |part| match part {
            ValuePart::Host(c) => host(d, c),
            ValuePart::Trait {
                cluster,
                group,
                name,
            } => deployment_trait(d, cluster, group, name),
            _ => None,
        }));
    }
    e
}

/// Resolves `value` with `lookup` for its references (single pass; unresolved → "").
pub fn interpolate(value: &str, lookup: &mut dyn FnMut(&ValuePart) -> Option<String>) -> String {
    let Ok(parts) = parse_value(value) else {
        return value.to_owned();
    };
    parts
        .iter()
        .map(|p| match p {
            ValuePart::Literal(s) => s.clone(),
            other => lookup(other).unwrap_or_default(),
        })
        .collect()
}

/// The variables a service is deployed with (Vamp's deploy-time resolution): the breed's
/// variables with a value, then the deployment-level ones of its cluster that the breed
/// declares, then the service's own (later ones win by name), each with `interpolated` set.
///
/// # Errors
/// [`OperationError::UnresolvedDependencyError`] when a reference names a dependency alias the
/// service does not resolve and no cluster of that name exists.
pub fn service_environment(
    d: &Deployment,
    cluster: &str,
    service: &DeploymentService,
    lookups: &Lookups<'_>,
) -> Result<Vec<EnvironmentVariable>, OperationError> {
    let prefix = format!("{cluster}.environment_variables.");
    let deployment_level: Vec<EnvironmentVariable> = d
        .environment_variables
        .iter()
        .filter(|e| e.name.starts_with(&prefix))
        .map(|e| interpolated(d, e, &[cluster]))
        .collect();
    let mut local: Vec<EnvironmentVariable> = Vec::new();
    let mut set = |e: EnvironmentVariable| match local.iter_mut().find(|x| x.name == e.name) {
        Some(x) => *x = e,
        None => local.push(e),
    };
    for e in &service.breed.environment_variables {
        if e.value.is_some() {
            set(e.clone());
        }
    }
    for e in &deployment_level {
        if let Some(name) = e.name.strip_prefix(&prefix)
            && let Some(declared) = service
                .breed
                .environment_variables
                .iter()
                .find(|b| b.name == name)
        {
            set(EnvironmentVariable {
                name: name.to_owned(),
                alias: declared.alias.clone(),
                value: e.interpolated.clone().or_else(|| e.value.clone()),
                interpolated: None,
            });
        }
    }
    for e in &service.environment_variables {
        let mut e = e.clone();
        e.interpolated = None;
        set(e);
    }
    // Aliases map to clusters: the service's resolved dependencies, else a cluster of that name.
    let cluster_of = |alias: &str| -> Result<String, OperationError> {
        if let Some(c) = service.dependencies.get(alias) {
            return Ok(c.clone());
        }
        if d.clusters.iter().any(|c| c.name == alias) {
            return Ok(alias.to_owned());
        }
        Err(OperationError::UnresolvedDependencyError {
            breed: service.breed.name.clone(),
            dependency: alias.to_owned(),
        })
    };
    // Parse every value once; an unknown alias is an error, not "".
    let mut parsed: Vec<Option<Vec<ValuePart>>> = Vec::with_capacity(local.len());
    for e in &local {
        let parts = e
            .value
            .as_deref()
            .map(|v| parse_value(v).unwrap_or_else(|_| vec![ValuePart::Literal(v.to_owned())]));
        for p in parts.iter().flatten() {
            if let ValuePart::Host(alias) | ValuePart::Trait { cluster: alias, .. } = p {
                cluster_of(alias)?;
            }
        }
        parsed.push(parts);
    }
    let raw = &local;
    // The first value `f` finds among the services of cluster `c`.
    let in_cluster = |c: &str, f: &dyn Fn(&DeploymentService) -> Option<String>| {
        d.clusters
            .iter()
            .find(|x| x.name == c)?
            .services
            .iter()
            .find_map(f)
    };
    let resolve = |part: &ValuePart| -> Option<String> {
        match part {
            ValuePart::Host(alias) => host(d, &cluster_of(alias).ok()?),
            ValuePart::Trait {
                cluster: alias,
                group,
                name,
            } => {
                let c = cluster_of(alias).ok()?;
                deployment_trait(d, &c, group, name).or_else(|| match group.as_str() {
                    "constants" => in_cluster(&c, &|s| {
                        s.breed
                            .constants
                            .iter()
                            .find(|k| &k.name == name)
                            .and_then(|k| k.value.clone())
                    }),
                    "environment_variables" => in_cluster(&c, &|s| {
                        s.environment_variables
                            .iter()
                            .chain(s.breed.environment_variables.iter())
                            .find(|e| &e.name == name)
                            .and_then(|e| e.value.clone())
                    }),
                    _ => None,
                })
            }
            ValuePart::Local(name) => raw
                .iter()
                .find(|e| &e.name == name)
                .and_then(|e| e.value.clone())
                .or_else(|| {
                    service
                        .breed
                        .constants
                        .iter()
                        .find(|k| &k.name == name)
                        .and_then(|k| k.value.clone())
                }),
            ValuePart::Global { schema, path } => match schema.as_str() {
                "config" | "conf" | "configuration" => lookups.config.and_then(|f| f(path)),
                "env" | "environment" | "env_var" | "environment_variable" => {
                    lookups.env.and_then(|f| f(path))
                }
                _ => None,
            },
            ValuePart::Literal(s) => Some(s.clone()),
        }
    };
    let values: Vec<String> = parsed
        .iter()
        .map(|parts| {
            parts
                .iter()
                .flatten()
                .map(|p| match p {
                    ValuePart::Literal(s) => s.clone(),
                    other => resolve(other).unwrap_or_default(),
                })
                .collect()
        })
        .collect();
    Ok(local
        .iter()
        .zip(values)
        .map(|(e, value)| EnvironmentVariable {
            interpolated: Some(value),
            ..e.clone()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Host;

    fn var(name: &str, value: &str) -> EnvironmentVariable {
        EnvironmentVariable::new(name, Some(value.into()))
    }

    fn fixture(extra: Vec<EnvironmentVariable>) -> Deployment {
        let mut env = extra;
        env.push(var("frontend.constants.const1", "9050"));
        env.push(var("backend1.constants.const2", "$backend1.host"));
        Deployment {
            name: "d".into(),
            metadata: Default::default(),
            clusters: vec![
                crate::model::DeploymentCluster {
                    name: "backend1".into(),
                    metadata: Default::default(),
                    services: vec![],
                    gateways: vec![],
                    health_checks: None,
                    network: None,
                    sla: None,
                    dialects: Default::default(),
                },
                crate::model::DeploymentCluster {
                    name: "backend2".into(),
                    metadata: Default::default(),
                    services: vec![],
                    gateways: vec![],
                    health_checks: None,
                    network: None,
                    sla: None,
                    dialects: Default::default(),
                },
            ],
            gateways: vec![],
            ports: vec![],
            environment_variables: env,
            hosts: vec![Host {
                name: "backend1.hosts.host".into(),
                value: Some("vamp.io".into()),
            }],
            dialects: Default::default(),
        }
    }

    /// reader-fixtures.md A.6 (DeploymentValueResolverSpec).
    #[test]
    fn deployment_value_resolver_spec() {
        let d = fixture(vec![var("backend1.environment_variables.timeout", "4000")]);
        assert_eq!(deployment_environment(&d, &[]), d.environment_variables);
        assert_eq!(
            deployment_environment(&d, &["backend"]),
            d.environment_variables
        );
        let d = fixture(vec![
            var(
                "backend.environment_variables.port",
                "$frontend.constants.const1",
            ),
            var(
                "backend.environment_variables.timeout",
                "${backend1.constants.const2}",
            ),
            var("backend1.environment_variables.timeout", "4000"),
        ]);
        let env = deployment_environment(&d, &["backend"]);
        assert_eq!(env[0].interpolated.as_deref(), Some("9050"));
        assert_eq!(env[1].interpolated.as_deref(), Some("$backend1.host"));
        assert_eq!(env[2].interpolated, None, "another cluster's variable");
        let d = fixture(vec![
            var(
                "backend.environment_variables.url",
                "http://$backend1.host:$frontend.constants.const1/api/$$/$backend1.environment_variables.timeout",
            ),
            var("backend1.environment_variables.timeout", "4000"),
        ]);
        let env = deployment_environment(&d, &["backend"]);
        assert_eq!(
            env[0].interpolated.as_deref(),
            Some("http://vamp.io:9050/api/$/4000")
        );
    }
}
