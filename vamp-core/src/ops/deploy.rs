//! Deployment planning (Vamp's `DeploymentActor`, `model.md` §5.2–§5.5, §5.8): pure functions
//! from the current deployment, a blueprint and a snapshot of the stored artifacts to the new
//! deployment.
//!
//! * [`merge`]: create or merge a blueprint into a deployment. References are expanded from
//!   [`Artifacts`]; every cluster gets one internal gateway per breed port
//!   (`deployment/cluster/port`, a route per service), with a port from
//!   [`MergeOptions::port_range`]; blueprint gateways become deployment gateways
//!   (`deployment/<port>`); the deployment's traits (`cluster.ports.p`, `cluster.hosts.host`,
//!   `cluster.environment_variables.X`) are set for deploy-time resolution
//!   ([`super::resolve`]).
//! * [`slice()`]: mark services for undeployment and take their routes out of the gateways;
//!   [`remove_undeployed`] drops them once undeployed (and the deployment with the last one).
//! * [`scale`]: a new scale for one service.
//! * [`export_blueprint`]: the deployment as a blueprint that merges back into it.
//!
//! Differences from Vamp (also in COMPATIBILITY.md): a merged service is reset to
//! `Deployment/Initiated` exactly when what it runs changed (breed, scale, variables,
//! arguments, health checks), so merging the same blueprint twice changes nothing; the
//! blueprint's deployment-level variables win over the stored ones (Vamp kept the stored
//! value); instances are kept through a redeploy, so routes keep their targets; internal
//! gateways of ports no service has any more are removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::OperationError;
use crate::model::*;
use crate::node::Map;
use crate::ops::status::{self, PhaseKind};
use crate::units::{MegaByte, Percentage, Quantity};

/// The stored artifacts a merge may reference, and the gateway ports in use elsewhere.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Artifacts {
    /// Breeds by name.
    pub breeds: BTreeMap<String, DefaultBreed>,
    /// Scales by name.
    pub scales: BTreeMap<String, DefaultScale>,
    /// Blueprints by name.
    pub blueprints: BTreeMap<String, DefaultBlueprint>,
    /// Workflow names (a deployment must not share one).
    pub workflows: BTreeSet<String>,
    /// Ports of gateways outside the deployment being planned (standalone gateways and other
    /// deployments'), with the gateway using each.
    pub gateway_ports: BTreeMap<u16, String>,
}

impl Artifacts {
    /// No artifacts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stored breed.
    #[must_use]
    pub fn with_breed(mut self, breed: DefaultBreed) -> Self {
        self.breeds.insert(breed.name.clone(), breed);
        self
    }

    /// Adds a stored scale.
    #[must_use]
    pub fn with_scale(mut self, scale: DefaultScale) -> Self {
        self.scales.insert(scale.name.clone(), scale);
        self
    }

    /// Records the gateways of other deployments and standalone gateways (their ports are
    /// taken).
    #[must_use]
    pub fn with_gateways<'a>(mut self, gateways: impl IntoIterator<Item = &'a Gateway>) -> Self {
        for g in gateways {
            if let Ok(port) = u16::try_from(g.port.number)
                && port > 0
            {
                self.gateway_ports.insert(port, g.name.clone());
            }
        }
        self
    }
}

/// How a merge runs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MergeOptions {
    /// Now (milliseconds since the Unix epoch): the time of new statuses.
    pub now: i64,
    /// The host services reach gateways on (`cluster.hosts.host`; Vamp's
    /// `vamp.gateway-driver.host`; default `127.0.0.1`).
    pub gateway_host: String,
    /// Ports for gateways without one (default 24000–29999: below Linux's ephemeral range
    /// 32768–60999, where Vamp's 40000–45000 lay, so neither outgoing connections nor
    /// locally started services can take a gateway's port).
    pub port_range: (u16, u16),
    /// The scale of services without one (Vamp: 1 CPU, 1 GB, 1 instance).
    pub default_scale: DefaultScale,
    /// Whether a merged service takes the blueprint's breed (default `true`, Vamp's
    /// `refetch-breed-on-update`).
    pub refetch_breed: bool,
    /// Whether gateways get Vamp's generated virtual hosts ([`default_virtual_host`]) before
    /// their own (default `false`: Vamp's default was `true`, which makes every HAProxy serve
    /// a `virtual_hosts` frontend on port 80).
    pub virtual_hosts: bool,
}

impl MergeOptions {
    /// The defaults, at `now`.
    pub fn new(now: i64) -> Self {
        Self {
            now,
            gateway_host: "127.0.0.1".into(),
            port_range: (24000, 29999),
            default_scale: DefaultScale {
                name: String::new(),
                metadata: Map::new(),
                cpu: Quantity(1.0),
                memory: MegaByte(1024.0),
                instances: 1,
            },
            refetch_breed: true,
            virtual_hosts: false,
        }
    }

    /// Gives gateways Vamp's generated virtual hosts.
    #[must_use]
    pub fn with_virtual_hosts(mut self, enabled: bool) -> Self {
        self.virtual_hosts = enabled;
        self
    }

    /// Sets the gateway port range.
    #[must_use]
    pub fn with_port_range(mut self, first: u16, last: u16) -> Self {
        self.port_range = (first, last);
        self
    }

    /// Sets the gateway host.
    #[must_use]
    pub fn with_gateway_host(mut self, host: impl Into<String>) -> Self {
        self.gateway_host = host.into();
        self
    }

    /// Sets the default scale.
    #[must_use]
    pub fn with_default_scale(mut self, scale: DefaultScale) -> Self {
        self.default_scale = scale;
        self
    }
}

/// What a merge produces.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Merged {
    /// The deployment to store.
    pub deployment: Deployment,
    /// Inline breeds of the blueprint that are not stored yet (Vamp stored them on deploy).
    pub new_breeds: Vec<DefaultBreed>,
    /// Internal gateways that no longer exist (their ports are free).
    pub removed_gateways: Vec<String>,
}

fn not_found(kind: &str, name: &str) -> OperationError {
    OperationError::ArtifactNotFound {
        kind: kind.into(),
        name: name.into(),
    }
}

/// The empty deployment `name`.
pub fn empty(name: &str) -> Deployment {
    Deployment {
        name: name.into(),
        metadata: Map::new(),
        clusters: Vec::new(),
        gateways: Vec::new(),
        ports: Vec::new(),
        environment_variables: Vec::new(),
        hosts: Vec::new(),
        dialects: Map::new(),
    }
}

/// Restores what the DSL's deployment form leaves implicit, after a deployment was read from
/// the store: internal gateway names (`deployment/cluster/port`) and ports (from the
/// deployment's `cluster.ports.port` traits), deployment gateway names (`deployment/port`),
/// route path segments, and the full trait names (`cluster.ports.port`,
/// `cluster.hosts.host`). Idempotent.
pub fn normalize(d: &mut Deployment) {
    let full = |name: &str, group: &str| -> String {
        let mut parts = name.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(c), Some(n), None) => format!("{c}.{group}.{n}"),
            (Some(c), None, None) => {
                format!("{c}.{group}.{}", if group == "hosts" { "host" } else { "" })
            }
            _ => name.to_owned(),
        }
    };
    for p in &mut d.ports {
        p.name = full(&p.name, "ports");
    }
    for h in &mut d.hosts {
        h.name = full(&h.name, "hosts");
    }
    let name = d.name.clone();
    let ports = d.ports.clone();
    for c in &mut d.clusters {
        for g in &mut c.gateways {
            g.name = format!("{name}/{}/{}", c.name, g.port.name);
            if let Some(p) = ports
                .iter()
                .find(|p| p.name == format!("{}.ports.{}", c.name, g.port.name))
            {
                g.port.number = p.number;
                g.port.port_type = p.port_type;
                g.port.value = Some(format!("{}/{}", p.number, p.port_type));
            }
            for r in &mut g.routes {
                reparse(r);
            }
        }
    }
    for g in &mut d.gateways {
        if g.name.is_empty() {
            g.name = format!("{name}/{}", g.port.name);
        }
        for r in &mut g.routes {
            reparse(r);
        }
    }
}

/// A route path read as one segment (a cluster gateway's service key) split again.
fn reparse(r: &mut Route) {
    match r {
        Route::Default(r) => r.path = GatewayPath::new(r.path.source.clone()),
        Route::Reference { path, .. } => *path = GatewayPath::new(path.source.clone()),
    }
}

/// `cluster.environment_variables.NAME` for a blueprint variable written `cluster.NAME` or in
/// full; `None` when it names no cluster.
fn env_name(name: &str) -> Option<(String, String)> {
    let mut parts = name.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(c), Some("environment_variables"), Some(n)) => Some((c.into(), n.into())),
        (Some(c), Some(n), None) => Some((c.into(), n.into())),
        _ => None,
    }
}

/// A blueprint service, expanded into a deployment service.
fn expand_service(
    cluster: &Cluster,
    service: &Service,
    artifacts: &Artifacts,
    new_breeds: &mut Vec<DefaultBreed>,
    now: i64,
) -> Result<DeploymentService, OperationError> {
    let breed = match &service.breed {
        Ref::Inline(b) => {
            if artifacts.breeds.get(&b.name) != Some(b) && !new_breeds.contains(b) {
                new_breeds.push(b.clone());
            }
            b.clone()
        }
        Ref::Reference(name) => artifacts
            .breeds
            .get(name)
            .cloned()
            .ok_or_else(|| not_found("breeds", name))?,
    };
    let scale = match &service.scale {
        None => None,
        Some(Ref::Inline(s)) => Some(s.clone()),
        Some(Ref::Reference(name)) => Some(
            artifacts
                .scales
                .get(name)
                .cloned()
                .ok_or_else(|| not_found("scales", name))?,
        ),
    };
    let mut arguments = breed.arguments.clone();
    for a in &service.arguments {
        match arguments.iter_mut().find(|x| x.key == a.key) {
            Some(x) => *x = a.clone(),
            None => arguments.push(a.clone()),
        }
    }
    Ok(DeploymentService {
        status: status::status(Intention::Deployment, PhaseKind::Initiated, now),
        health_checks: service
            .health_checks
            .clone()
            .or_else(|| cluster.health_checks.clone()),
        network: service.network.clone().or_else(|| cluster.network.clone()),
        environment_variables: service.environment_variables.clone(),
        scale,
        instances: Vec::new(),
        arguments,
        dependencies: Default::default(),
        dialects: service.dialects.clone(),
        health: None,
        breed,
    })
}

/// What a service runs, for deciding whether a merge changed it.
fn runs(s: &DeploymentService) -> impl PartialEq + '_ {
    (
        &s.breed,
        &s.scale,
        s.environment_variables
            .iter()
            .map(|e| (&e.name, &e.alias, &e.value))
            .collect::<Vec<_>>(),
        &s.arguments,
        &s.health_checks,
        &s.network,
    )
}

fn active(s: &DeploymentService) -> bool {
    s.status.intention == Intention::Deployment
}

/// Fills missing route weights as Vamp's `GatewayActor.process`: when every route is a
/// definition and the given weights total at most 100%, routes without a weight share the
/// rest (integer split, the last takes the remainder) and move before the weighted ones.
/// Returns the total.
pub fn fill_weights(routes: &mut Vec<Route>) -> u32 {
    let total = |routes: &[Route]| -> u32 {
        routes
            .iter()
            .filter_map(|r| r.definition()?.weight)
            .map(|w| u32::from(w.0))
            .sum()
    };
    if routes.iter().all(|r| r.definition().is_some()) {
        let given = total(routes);
        let missing = routes
            .iter()
            .filter(|r| r.definition().is_some_and(|d| d.weight.is_none()))
            .count() as u32;
        if given <= 100 && missing > 0 {
            let available = 100 - given;
            let each = available / missing;
            let (mut without, with): (Vec<Route>, Vec<Route>) = routes
                .drain(..)
                .partition(|r| r.definition().is_some_and(|d| d.weight.is_none()));
            let n = without.len() as u32;
            for (i, r) in without.iter_mut().enumerate() {
                if let Route::Default(d) = r {
                    let w = if i as u32 + 1 == n {
                        available - each * (n - 1)
                    } else {
                        each
                    };
                    d.weight = Some(Percentage(w as u8));
                }
            }
            without.extend(with);
            *routes = without;
        }
    }
    total(routes)
}

/// The lowest free port of `range` not in `used`.
fn allocate(used: &BTreeSet<u16>, range: (u16, u16)) -> Result<u16, OperationError> {
    (range.0..=range.1)
        .find(|p| *p > 0 && !used.contains(p))
        .ok_or(OperationError::NoAvailablePortError {
            begin: range.0,
            end: range.1,
        })
}

/// Creates or merges `blueprint` into the deployment `name` (`existing` when it exists).
///
/// # Errors
/// Vamp's notifications for this path: [`OperationError::ArtifactNotFound`] (a reference that
/// cannot be expanded), `UnresolvedEnvironmentVariableError`, `UnresolvedVariableValueError`,
/// `UnresolvedDependencyError`, `RecursiveDependenciesError`, `NonUniqueBreedReferenceError`,
/// `UnsupportedRouteWeight`, `UnavailableGatewayPortError`, `NoAvailablePortError`,
/// `DeploymentWorkflowNameCollision`.
pub fn merge(
    existing: Option<&Deployment>,
    name: &str,
    blueprint: &DefaultBlueprint,
    artifacts: &Artifacts,
    opts: &MergeOptions,
) -> Result<Merged, OperationError> {
    if artifacts.workflows.contains(name) {
        return Err(OperationError::DeploymentWorkflowNameCollision { name: name.into() });
    }
    let mut d = existing.cloned().unwrap_or_else(|| empty(name));
    d.name = name.into();
    normalize(&mut d);
    let mut new_breeds = Vec::new();

    // The blueprint's clusters, expanded.
    let mut attachment: Vec<(&Cluster, Vec<DeploymentService>)> = Vec::new();
    for c in &blueprint.clusters {
        let services = c
            .services
            .iter()
            .map(|s| expand_service(c, s, artifacts, &mut new_breeds, opts.now))
            .collect::<Result<Vec<_>, _>>()?;
        attachment.push((c, services));
    }

    // Blueprint variables name a cluster whose breeds declare them.
    let mut blueprint_env: Vec<EnvironmentVariable> = Vec::new();
    for e in &blueprint.environment_variables {
        let unresolved = || OperationError::UnresolvedEnvironmentVariableError {
            name: e.name.clone(),
            value: e.value.clone().unwrap_or_default(),
        };
        let (cluster, var) = env_name(&e.name).ok_or_else(unresolved)?;
        let declared = attachment
            .iter()
            .filter(|(c, _)| c.name == cluster)
            .flat_map(|(_, s)| s.iter())
            .chain(
                d.clusters
                    .iter()
                    .filter(|c| c.name == cluster)
                    .flat_map(|c| c.services.iter()),
            )
            .any(|s| s.breed.environment_variables.iter().any(|b| b.name == var));
        if !declared {
            return Err(unresolved());
        }
        blueprint_env.push(EnvironmentVariable {
            name: format!("{cluster}.environment_variables.{var}"),
            alias: e.alias.clone(),
            value: e.value.clone(),
            interpolated: None,
        });
    }
    // The blueprint's variables win over stored ones (fixed: Vamp kept the stored value).
    for e in blueprint_env {
        match d
            .environment_variables
            .iter_mut()
            .find(|x| x.name == e.name)
        {
            Some(x) => *x = e,
            None => d.environment_variables.push(e),
        }
    }

    // Breed variables without a value need one from the service or the blueprint.
    for (c, services) in &attachment {
        for s in services {
            for b in &s.breed.environment_variables {
                let given = b.value.is_some()
                    || s.environment_variables.iter().any(|e| e.name == b.name)
                    || d.environment_variables
                        .iter()
                        .any(|e| e.name == format!("{}.environment_variables.{}", c.name, b.name));
                if !given {
                    return Err(OperationError::UnresolvedVariableValueError {
                        breed: s.breed.name.clone(),
                        name: b.name.clone(),
                    });
                }
            }
        }
    }

    // Merge the clusters.
    for (bc, services) in attachment {
        let index = match d.clusters.iter().position(|c| c.name == bc.name) {
            Some(i) => i,
            None => {
                d.clusters.push(DeploymentCluster {
                    name: bc.name.clone(),
                    metadata: bc.metadata.clone(),
                    services: Vec::new(),
                    gateways: Vec::new(),
                    health_checks: bc.health_checks.clone(),
                    network: bc.network.clone(),
                    sla: bc.sla.clone(),
                    dialects: bc.dialects.clone(),
                });
                d.clusters.len() - 1
            }
        };
        let cluster = &mut d.clusters[index];
        for (k, v) in &bc.dialects {
            cluster.dialects.insert(k.clone(), v.clone());
        }
        if bc.sla.is_some() {
            cluster.sla = bc.sla.clone();
        }
        for mut new in services {
            if new.scale.is_none() {
                new.scale = cluster
                    .services
                    .iter()
                    .find(|s| s.breed.name == new.breed.name)
                    .and_then(|s| s.scale.clone())
                    .or_else(|| Some(opts.default_scale.clone()));
            }
            match cluster
                .services
                .iter_mut()
                .find(|s| s.breed.name == new.breed.name)
            {
                Some(old) => {
                    let mut merged = old.clone();
                    if opts.refetch_breed {
                        merged.breed = new.breed;
                    }
                    merged.scale = new.scale;
                    merged.environment_variables = new.environment_variables;
                    merged.arguments = new.arguments;
                    merged.health_checks = new.health_checks;
                    merged.network = new.network;
                    merged.dialects = new.dialects;
                    let changed = runs(&merged) != runs(old)
                        || !active(old)
                        || status::is_failed(&old.status);
                    if changed {
                        merged.status = new.status;
                        for e in &mut merged.environment_variables {
                            e.interpolated = None;
                        }
                    }
                    *old = merged;
                }
                None => cluster.services.push(new),
            }
        }
    }

    resolve_dependencies(&mut d)?;
    let removed_gateways = cluster_gateways(&mut d, existing, blueprint, artifacts, opts)?;
    deployment_gateways(&mut d, blueprint, artifacts)?;
    if opts.virtual_hosts {
        for g in d
            .gateways
            .iter_mut()
            .chain(d.clusters.iter_mut().flat_map(|c| c.gateways.iter_mut()))
        {
            with_default_virtual_host(g);
        }
    }

    // The deployment's traits: hosts and ports per cluster.
    d.hosts = d
        .clusters
        .iter()
        .map(|c| Host {
            name: format!("{}.hosts.host", c.name),
            value: Some(opts.gateway_host.clone()),
        })
        .collect();
    d.ports = d
        .clusters
        .iter()
        .flat_map(|c| {
            c.gateways.iter().map(move |g| Port {
                name: format!("{}.ports.{}", c.name, g.port.name),
                alias: None,
                value: Some(g.port.to_value()),
                number: g.port.number,
                port_type: g.port.port_type,
            })
        })
        .collect();
    for (k, v) in &blueprint.metadata {
        d.metadata.insert(k.clone(), v.clone());
    }
    for (k, v) in &blueprint.dialects {
        d.dialects.insert(k.clone(), v.clone());
    }

    // One active service per breed.
    let mut seen = BTreeSet::new();
    for s in d
        .clusters
        .iter()
        .flat_map(|c| &c.services)
        .filter(|s| active(s))
    {
        if !seen.insert(s.breed.name.clone()) {
            return Err(OperationError::NonUniqueBreedReferenceError {
                breed: s.breed.name.clone(),
            });
        }
    }
    Ok(Merged {
        deployment: d,
        new_breeds,
        removed_gateways,
    })
}

/// Maps every service's dependency aliases to the cluster holding the dependency's breed
/// (exact name, or `prefix*`), and refuses circles.
fn resolve_dependencies(d: &mut Deployment) -> Result<(), OperationError> {
    let breeds: Vec<(String, String)> = d
        .clusters
        .iter()
        .flat_map(|c| {
            c.services
                .iter()
                .filter(|s| active(s))
                .map(|s| (s.breed.name.clone(), c.name.clone()))
        })
        .collect();
    let find = |dependency: &str| -> Option<(String, String)> {
        breeds
            .iter()
            .find(|(b, _)| match dependency.strip_suffix('*') {
                Some(prefix) => b.starts_with(prefix),
                None => b == dependency,
            })
            .cloned()
    };
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &mut d.clusters {
        for s in c.services.iter_mut().filter(|s| active(s)) {
            s.dependencies.clear();
            for (alias, dep) in &s.breed.dependencies {
                let dep_name = match dep {
                    Ref::Reference(n) => n.clone(),
                    Ref::Inline(b) => b.name.clone(),
                };
                let (breed, cluster) =
                    find(&dep_name).ok_or_else(|| OperationError::UnresolvedDependencyError {
                        breed: s.breed.name.clone(),
                        dependency: dep_name.clone(),
                    })?;
                s.dependencies.insert(alias.clone(), cluster);
                edges.entry(s.breed.name.clone()).or_default().push(breed);
            }
        }
    }
    // Depth-first search for a circle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, Vec<String>>,
        on_path: &mut BTreeSet<String>,
        done: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        if done.contains(node) {
            return Ok(());
        }
        if !on_path.insert(node.to_owned()) {
            return Err(node.to_owned());
        }
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, on_path, done)?;
        }
        on_path.remove(node);
        done.insert(node.to_owned());
        Ok(())
    }
    let (mut on_path, mut done) = (BTreeSet::new(), BTreeSet::new());
    for node in edges.keys() {
        visit(node, &edges, &mut on_path, &mut done)
            .map_err(|breed| OperationError::RecursiveDependenciesError { breed })?;
    }
    Ok(())
}

/// The route path of a service's port in a cluster gateway.
fn service_route(d: &str, c: &str, breed: &str, port: &str) -> String {
    format!("{d}/{c}/{breed}/{port}")
}

/// Builds each cluster's internal gateways (one per breed port of its active services) from
/// the blueprint's definitions and the existing gateways; assigns ports. Returns the names of
/// internal gateways that no longer exist.
fn cluster_gateways(
    d: &mut Deployment,
    existing: Option<&Deployment>,
    blueprint: &DefaultBlueprint,
    artifacts: &Artifacts,
    opts: &MergeOptions,
) -> Result<Vec<String>, OperationError> {
    let mut used: BTreeSet<u16> = artifacts.gateway_ports.keys().copied().collect();
    for g in d
        .gateways
        .iter()
        .chain(d.clusters.iter().flat_map(|c| c.gateways.iter()))
    {
        if let Ok(p) = u16::try_from(g.port.number) {
            used.insert(p);
        }
    }
    let mut removed = Vec::new();
    let name = d.name.clone();
    for cluster in &mut d.clusters {
        let definitions: Vec<&Gateway> = blueprint
            .clusters
            .iter()
            .filter(|c| c.name == cluster.name)
            .flat_map(|c| c.gateways.iter())
            .collect();
        // Distinct breed ports of the active services, in order.
        let mut ports: Vec<Port> = Vec::new();
        for s in cluster.services.iter().filter(|s| active(s)) {
            for p in &s.breed.ports {
                if !ports.iter().any(|x| x.name == p.name) {
                    ports.push(p.clone());
                }
            }
        }
        let single = ports.len() == 1;
        let mut gateways = Vec::new();
        for p in &ports {
            let gateway_name = format!("{name}/{}/{}", cluster.name, p.name);
            let old = cluster
                .gateways
                .iter()
                .find(|g| g.name == gateway_name)
                .cloned();
            let definition = definitions
                .iter()
                .find(|g| g.port.name == p.name || (single && g.port.name.is_empty()));
            let mut routes = Vec::new();
            for s in cluster
                .services
                .iter()
                .filter(|s| active(s) && s.breed.ports.iter().any(|x| x.name == p.name))
            {
                let path = service_route(&name, &cluster.name, &s.breed.name, &p.name);
                let from_blueprint = definition.and_then(|g| {
                    g.routes.iter().find_map(|r| match r {
                        Route::Default(r) if r.path.segments == [s.breed.name.clone()] => {
                            Some(r.clone())
                        }
                        _ => None,
                    })
                });
                let kept = old.as_ref().and_then(|g| {
                    g.routes.iter().find_map(|r| match r {
                        Route::Default(r) if r.path.source == path => Some(r.clone()),
                        _ => None,
                    })
                });
                let mut route = match (from_blueprint, kept) {
                    (Some(mut b), kept) => {
                        b.targets = kept.map(|k| k.targets).unwrap_or_default();
                        b
                    }
                    (None, Some(k)) => k,
                    (None, None) => DefaultRoute::new(path.clone()),
                };
                route.path = GatewayPath::new(path);
                routes.push(Route::Default(route));
            }
            // The existing gateway's route order first (a merge keeps what it does not change).
            if let Some(old) = &old {
                let position = |r: &Route| {
                    old.routes
                        .iter()
                        .position(|o| o.path().source == r.path().source)
                        .unwrap_or(usize::MAX)
                };
                routes.sort_by_key(position);
            }
            let total = fill_weights(&mut routes);
            if total != 0 && total != 100 {
                return Err(OperationError::UnsupportedRouteWeight {
                    deployment: name.clone(),
                    cluster: cluster.name.clone(),
                    weight: total,
                });
            }
            let number = match old.as_ref().map(|g| g.port.number).filter(|n| *n > 0) {
                Some(n) => n,
                None => {
                    let n = allocate(&used, opts.port_range)?;
                    used.insert(n);
                    i64::from(n)
                }
            };
            let port = Port {
                name: p.name.clone(),
                alias: None,
                value: Some(format!("{number}/{}", p.port_type)),
                number,
                port_type: p.port_type,
            };
            let mut g = old.clone().unwrap_or_else(|| Gateway::new(port.clone()));
            g.name = gateway_name;
            g.port = port;
            g.routes = routes;
            if let Some(def) = definition {
                g.sticky = def.sticky;
                g.virtual_hosts = def.virtual_hosts.clone();
            }
            gateways.push(g);
        }
        for g in &cluster.gateways {
            if !gateways.iter().any(|x| x.name == g.name) {
                removed.push(g.name.clone());
            }
        }
        cluster.gateways = gateways;
    }
    // Keep existing clusters' gateway identity even when the blueprint did not name them.
    let _ = existing;
    Ok(removed)
}

/// Blueprint gateways become deployment gateways `deployment/<port>` with routes prefixed by
/// the deployment's name; other existing deployment gateways stay.
fn deployment_gateways(
    d: &mut Deployment,
    blueprint: &DefaultBlueprint,
    artifacts: &Artifacts,
) -> Result<(), OperationError> {
    for bg in &blueprint.gateways {
        let mut g = bg.clone();
        g.name = format!("{}/{}", d.name, bg.port.name);
        if let Ok(port) = u16::try_from(g.port.number)
            && let Some(owner) = artifacts.gateway_ports.get(&port)
            && *owner != g.name
        {
            return Err(OperationError::UnavailableGatewayPortError {
                port: g.port.value.clone().unwrap_or_else(|| port.to_string()),
                gateway: owner.clone(),
            });
        }
        for r in &mut g.routes {
            if let Route::Default(r) = r
                && r.path.external().is_none()
            {
                r.path = GatewayPath::new(format!("{}/{}", d.name, r.path.source));
            }
        }
        fill_weights(&mut g.routes);
        match d
            .gateways
            .iter_mut()
            .find(|x| x.name == g.name || x.port.number == g.port.number)
        {
            Some(old) => {
                g.service = old.service.clone();
                *old = g;
            }
            None => d.gateways.push(g),
        }
    }
    Ok(())
}

/// Vamp's generated virtual host of a gateway (`GatewayActor.defaultVirtualHosts`, defaults of
/// `vamp.operation.gateway.virtual-hosts`): `gateway.vamp` for one name segment,
/// `port.deployment.vamp` for two, `port.cluster.deployment.vamp` for three, each segment with
/// every character but letters and digits replaced by `-` (`sava:1.0` → `sava-1-0`). `None`
/// for other names or a segment that does not start with a letter or digit.
///
/// ```
/// use vamp_core::ops::deploy::default_virtual_host;
/// assert_eq!(default_virtual_host("sava/sava/webport").as_deref(), Some("webport.sava.sava.vamp"));
/// assert_eq!(default_virtual_host("sava:1.0/9050").as_deref(), Some("9050.sava-1-0.vamp"));
/// ```
pub fn default_virtual_host(name: &str) -> Option<String> {
    let segments = GatewayPath::new(name).segments;
    let clean: Option<Vec<String>> = segments
        .iter()
        .map(|s| {
            s.starts_with(|c: char| c.is_ascii_alphanumeric()).then(|| {
                s.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect()
            })
        })
        .collect();
    let clean = clean?;
    let parts: Vec<&str> = match clean.as_slice() {
        [g] => vec![g],
        [d, p] => vec![p, d],
        [d, c, p] => vec![p, c, d],
        _ => return None,
    };
    Some(format!("{}.vamp", parts.join(".")))
}

/// Prepends the generated virtual host to a gateway's own (de-duplicated).
fn with_default_virtual_host(g: &mut Gateway) {
    if let Some(host) = default_virtual_host(&g.name) {
        g.virtual_hosts.retain(|h| *h != host);
        g.virtual_hosts.insert(0, host);
    }
}

/// Marks the services of `blueprint`'s clusters (by breed name) for undeployment and takes
/// their routes out of the cluster gateways (a gateway left without routes is removed).
///
/// # Errors
/// [`OperationError::InvalidRouteWeight`] when the remaining routes of a port would not total
/// 100%.
pub fn slice(
    d: &Deployment,
    blueprint: &DefaultBlueprint,
    now: i64,
) -> Result<Deployment, OperationError> {
    let mut d = d.clone();
    let name = d.name.clone();
    for bc in &blueprint.clusters {
        let Some(cluster) = d.clusters.iter_mut().find(|c| c.name == bc.name) else {
            continue;
        };
        let breeds: BTreeSet<&str> = bc.services.iter().map(|s| s.breed.name()).collect();
        let removed_paths: BTreeSet<String> = cluster
            .services
            .iter()
            .filter(|s| breeds.contains(s.breed.name.as_str()))
            .flat_map(|s| {
                s.breed
                    .ports
                    .iter()
                    .map(|p| service_route(&name, &cluster.name, &s.breed.name, &p.name))
            })
            .collect();
        for g in &mut cluster.gateways {
            g.routes
                .retain(|r| !removed_paths.contains(r.path().source.as_str()));
            let total: u32 = g
                .routes
                .iter()
                .filter_map(|r| r.definition()?.weight)
                .map(|w| u32::from(w.0))
                .sum();
            if !g.routes.is_empty() && total != 100 {
                return Err(OperationError::InvalidRouteWeight {
                    deployment: name.clone(),
                    cluster: cluster.name.clone(),
                    port: g.port.name.clone(),
                    weight: total,
                });
            }
        }
        cluster.gateways.retain(|g| !g.routes.is_empty());
        for s in &mut cluster.services {
            if breeds.contains(s.breed.name.as_str()) && active(s) {
                s.status = status::status(Intention::Undeployment, PhaseKind::Initiated, now);
            }
        }
    }
    Ok(d)
}

/// Drops undeployed services, clusters without services and their traits; `None` when no
/// cluster is left (the deployment is deleted).
pub fn remove_undeployed(d: &Deployment) -> Option<Deployment> {
    let mut d = d.clone();
    for c in &mut d.clusters {
        c.services.retain(|s| !status::is_undeployed(&s.status));
    }
    d.clusters.retain(|c| !c.services.is_empty());
    if d.clusters.is_empty() {
        return None;
    }
    let clusters: BTreeSet<String> = d.clusters.iter().map(|c| c.name.clone()).collect();
    let of_cluster = |name: &str| name.split('.').next().is_some_and(|c| clusters.contains(c));
    d.ports.retain(|p| of_cluster(&p.name));
    d.hosts.retain(|h| of_cluster(&h.name));
    Some(d)
}

/// Sets the scale of the service of breed `breed` in `cluster` and resets it to
/// `Deployment/Initiated`, so the scheduler gets the new scale.
///
/// # Errors
/// [`OperationError::ArtifactNotFound`] when the cluster or service does not exist.
pub fn scale(
    d: &Deployment,
    cluster: &str,
    breed: &str,
    scale: DefaultScale,
    now: i64,
) -> Result<Deployment, OperationError> {
    let mut d = d.clone();
    let service = d
        .clusters
        .iter_mut()
        .find(|c| c.name == cluster)
        .ok_or_else(|| not_found("clusters", cluster))?
        .services
        .iter_mut()
        .find(|s| s.breed.name == breed)
        .ok_or_else(|| not_found("services", breed))?;
    if service.scale.as_ref() != Some(&scale) || !active(service) {
        service.scale = Some(scale);
        service.status = status::status(Intention::Deployment, PhaseKind::Initiated, now);
    }
    Ok(d)
}

/// Sets (or with `None` removes) the SLA of `cluster` (`…/clusters/{c}/sla`).
///
/// # Errors
/// [`OperationError::ArtifactNotFound`] when the cluster does not exist.
pub fn set_sla(
    d: &Deployment,
    cluster: &str,
    sla: Option<Sla>,
) -> Result<Deployment, OperationError> {
    let mut d = d.clone();
    d.clusters
        .iter_mut()
        .find(|c| c.name == cluster)
        .ok_or_else(|| not_found("clusters", cluster))?
        .sla = sla;
    Ok(d)
}

/// The deployment as a blueprint (Vamp's `DeploymentConversion`): clusters with their
/// services (breed, scale, arguments, variables that differ from the breed's and the
/// deployment's), cluster gateways as route weights per port; deployment gateways are left
/// out; deployment variables are kept when a breed of the cluster declares them.
pub fn export_blueprint(d: &Deployment) -> DefaultBlueprint {
    let clusters = d
        .clusters
        .iter()
        .map(|c| {
            let services = c
                .services
                .iter()
                .filter(|s| active(s))
                .map(|s| {
                    let deployment_value = |name: &str| {
                        d.environment_variables
                            .iter()
                            .find(|e| e.name == format!("{}.environment_variables.{name}", c.name))
                            .and_then(|e| e.value.clone())
                    };
                    let environment_variables = s
                        .environment_variables
                        .iter()
                        .filter(|e| {
                            let breed_value = s
                                .breed
                                .environment_variables
                                .iter()
                                .find(|b| b.name == e.name)
                                .and_then(|b| b.value.clone());
                            e.value != breed_value && e.value != deployment_value(&e.name)
                        })
                        .map(|e| EnvironmentVariable {
                            interpolated: None,
                            ..e.clone()
                        })
                        .collect();
                    Service {
                        breed: Ref::Inline(s.breed.clone()),
                        environment_variables,
                        scale: s.scale.clone().map(Ref::Inline),
                        arguments: s
                            .arguments
                            .iter()
                            .filter(|a| !s.breed.arguments.contains(a))
                            .cloned()
                            .collect(),
                        health_checks: s.health_checks.clone(),
                        network: s.network.clone(),
                        dialects: s.dialects.clone(),
                        health: None,
                    }
                })
                .collect();
            let gateways = c
                .gateways
                .iter()
                .map(|g| {
                    let mut out = Gateway::new(Port {
                        name: g.port.name.clone(),
                        alias: None,
                        value: None,
                        number: 0,
                        port_type: g.port.port_type,
                    });
                    out.sticky = g.sticky;
                    out.virtual_hosts = g.virtual_hosts.clone();
                    out.routes = g
                        .routes
                        .iter()
                        .filter_map(|r| {
                            let mut r = r.definition()?.clone();
                            let breed = r.path.segments.get(2)?.clone();
                            r.path = GatewayPath::new(breed);
                            r.targets.clear();
                            Some(Route::Default(r))
                        })
                        .collect();
                    out
                })
                .collect();
            Cluster {
                name: c.name.clone(),
                metadata: c.metadata.clone(),
                services,
                gateways,
                health_checks: c.health_checks.clone(),
                network: c.network.clone(),
                sla: c.sla.clone(),
                dialects: c.dialects.clone(),
            }
        })
        .collect();
    let environment_variables = d
        .environment_variables
        .iter()
        .filter(|e| {
            env_name(&e.name).is_some_and(|(c, var)| {
                d.clusters.iter().filter(|x| x.name == c).any(|x| {
                    x.services
                        .iter()
                        .any(|s| s.breed.environment_variables.iter().any(|b| b.name == var))
                })
            })
        })
        .map(|e| EnvironmentVariable {
            interpolated: None,
            ..e.clone()
        })
        .collect();
    DefaultBlueprint {
        name: d.name.clone(),
        metadata: d.metadata.clone(),
        clusters,
        gateways: Vec::new(),
        environment_variables,
        dialects: d.dialects.clone(),
    }
}
