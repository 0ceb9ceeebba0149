//! The reconciler's planner (Vamp's synchronisation, `model.md` §5.7): desired deployments and
//! what the scheduler reports in, the actions that bring them together out. Pure: no I/O, time
//! is an argument; [`super::controller`] gathers the state, applies the plan and records it.
//!
//! Per service, by its intention:
//!
//! * **deploy**: waits until every dependency's cluster has a deployed service; then resolves
//!   its variables ([`super::resolve`]) and deploys it (phase `Updating`). When the scheduler
//!   runs it with another deployable, ports, variables, arguments, health checks or resources,
//!   it is redeployed; with another instance count, scaled. When every instance runs (and,
//!   with health checks, is healthy) the service is `Done` (event
//!   `synchronization:deployed`). A running service that stops being ready goes back to
//!   `Updating`; if it is still not ready after [`ReconcileOptions::redeploy_after_ms`] (the
//!   scheduler did not heal it), it is redeployed with `force`.
//! * **undeploy**: the pass that first sees it pushes the gateways without its routes; after
//!   [`ReconcileOptions::drain_ms`] it is undeployed (so no request is sent to a stopped
//!   instance); once gone, the service is `Done` and removed (event `synchronization:undeployed`), and a deployment without services is
//!   deleted.
//! * a phase other than `Done` older than [`ReconcileOptions::timeout_ms`] becomes `Failed`
//!   (`DeploymentServiceError`); failed services are left alone until a merge or scale resets
//!   them.
//!
//! Services the scheduler reports with Vamp's labels that no deployment wants (left by a
//! control plane that stopped half-way) are undeployed. Instances are copied into the
//! deployment, so gateway routes follow them. Applying a plan twice is harmless: every action
//! is idempotent on the scheduler's side.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    Deployment, DeploymentService, Event, Gateway, Health, Instance, Intention, Phase,
    ServiceStatus,
};
use crate::node::Node;
use crate::ops::deploy::remove_undeployed;
use crate::ops::resolve::{Lookups, service_environment};
use crate::ops::status::{self, PhaseKind};
use crate::scheduler::{DeployedService, PortSpec, ServiceId, ServiceSpec};

/// How the planner decides.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconcileOptions {
    /// A phase other than Done older than this fails (default 600 s, Vamp's).
    pub timeout_ms: i64,
    /// A service not ready for this long in `Updating` is redeployed with `force` (default
    /// 30 s): time for the scheduler to heal it by itself first.
    pub redeploy_after_ms: i64,
    /// How long a service marked for undeployment keeps running after the pass that pushed
    /// the gateways without its routes (default 2 s): time for the gateway agents to stop
    /// sending it requests before its instances stop.
    pub drain_ms: i64,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            timeout_ms: status::DEFAULT_TIMEOUT_MS,
            redeploy_after_ms: 30_000,
            drain_ms: 2_000,
        }
    }
}

/// One thing to do on the scheduler.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Deploy (or redeploy) a service.
    Deploy {
        /// What to run.
        spec: ServiceSpec,
        /// Replace running instances even when the spec is the same.
        force: bool,
    },
    /// Change a service's instance count.
    Scale {
        /// The service.
        id: ServiceId,
        /// The new count.
        instances: u32,
    },
    /// Remove a service.
    Undeploy {
        /// The service.
        id: ServiceId,
    },
}

impl Action {
    /// The service the action is about.
    pub fn id(&self) -> &ServiceId {
        match self {
            Self::Deploy { spec, .. } => &spec.id,
            Self::Scale { id, .. } | Self::Undeploy { id } => id,
        }
    }
}

/// What one pass decided.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Plan {
    /// Scheduler actions.
    pub actions: Vec<Action>,
    /// Deployments whose stored form changed (statuses, instances), to write back.
    pub store: Vec<Deployment>,
    /// Deployments left without services, to delete.
    pub delete: Vec<String>,
    /// Events to publish (Vamp's `synchronization` events).
    pub events: Vec<Event>,
}

impl Plan {
    /// The deployments as they will be stored: `desired` (the planner's input) with `store`
    /// applied and `delete` removed, in order.
    pub fn apply_to(&self, desired: Vec<Deployment>) -> Vec<Deployment> {
        let stored: std::collections::HashMap<&str, &Deployment> =
            self.store.iter().map(|d| (d.name.as_str(), d)).collect();
        let deleted: BTreeSet<&str> = self.delete.iter().map(String::as_str).collect();
        desired
            .into_iter()
            .filter(|d| !deleted.contains(d.name.as_str()))
            .map(|d| stored.get(d.name.as_str()).map_or(d, |s| (*s).clone()))
            .collect()
    }

    /// [`Plan::apply_to`] over shared deployments: those the plan did not change stay shared.
    pub fn apply_to_shared(
        &self,
        desired: &[std::sync::Arc<Deployment>],
    ) -> Vec<std::sync::Arc<Deployment>> {
        let stored: std::collections::HashMap<&str, &Deployment> =
            self.store.iter().map(|d| (d.name.as_str(), d)).collect();
        let deleted: BTreeSet<&str> = self.delete.iter().map(String::as_str).collect();
        desired
            .iter()
            .filter(|d| !deleted.contains(d.name.as_str()))
            .map(|d| {
                stored.get(d.name.as_str()).map_or_else(
                    || std::sync::Arc::clone(d),
                    |s| std::sync::Arc::new((*s).clone()),
                )
            })
            .collect()
    }
}

/// Every gateway of `deployments`: internal (cluster) gateways, then deployment gateways.
pub fn gateways<D: std::borrow::Borrow<Deployment>>(deployments: &[D]) -> Vec<Gateway> {
    deployments
        .iter()
        .flat_map(|d| gateways_of(d.borrow()))
        .cloned()
        .collect()
}

/// The gateways of one deployment, borrowed: its internal (cluster) gateways, then its
/// deployment gateways.
pub fn gateways_of(d: &Deployment) -> impl Iterator<Item = &Gateway> {
    d.clusters
        .iter()
        .flat_map(|c| &c.gateways)
        .chain(&d.gateways)
}

fn event(d: &str, c: &str, s: &str, what: &str) -> Event {
    Event::new(
        vec![
            format!("deployments:{d}"),
            format!("clusters:{c}"),
            format!("services:{s}"),
            format!("synchronization:{what}"),
        ],
        Node::Str(format!("{d}/{c}/{s}")),
        "synchronization",
    )
}

/// The spec a deployment service runs with its resolved variables.
pub fn service_spec(
    id: ServiceId,
    service: &DeploymentService,
    environment: &[crate::model::EnvironmentVariable],
) -> ServiceSpec {
    let mut spec = ServiceSpec::new(id, service.breed.deployable.clone());
    if let Some(scale) = &service.scale {
        spec.instances = u32::try_from(scale.instances.max(0)).unwrap_or(u32::MAX);
        spec.cpu = scale.cpu.0;
        spec.memory_mb = scale.memory.0;
    }
    spec.ports = service
        .breed
        .ports
        .iter()
        .map(|p| PortSpec {
            name: p.name.clone(),
            container_port: u16::try_from(p.number).unwrap_or(0),
            port_type: p.port_type,
        })
        .collect();
    for e in environment {
        spec.environment.insert(
            e.alias.clone().unwrap_or_else(|| e.name.clone()),
            e.interpolated.clone().unwrap_or_default(),
        );
    }
    spec.arguments = service.arguments.clone();
    spec.health_checks = service
        .health_checks
        .clone()
        .or_else(|| service.breed.health_checks.clone())
        .unwrap_or_default();
    spec.network = service.network.clone();
    spec.dialects = service.dialects.clone();
    spec
}

/// Whether a running service differs from its spec in anything but the instance count.
fn differs(running: &ServiceSpec, wanted: &ServiceSpec) -> bool {
    running.deployable != wanted.deployable
        || running.ports != wanted.ports
        // A scheduler that records its specs in the platform records credentials as digests.
        || crate::scheduler::recorded_environment(&running.environment)
            != crate::scheduler::recorded_environment(&wanted.environment)
        || running.arguments != wanted.arguments
        || running.health_checks != wanted.health_checks
        || running.cpu != wanted.cpu
        || running.memory_mb != wanted.memory_mb
        || running.network != wanted.network
}

fn instances(observed: &DeployedService) -> Vec<Instance> {
    observed
        .instances
        .iter()
        .map(|i| Instance {
            name: i.name.clone(),
            host: i.host.clone(),
            ports: i
                .ports
                .iter()
                .map(|(k, v)| (k.clone(), i64::from(*v)))
                .collect(),
            deployed: i.running,
        })
        .collect()
}

fn health(observed: &DeployedService) -> Health {
    let count = |f: &dyn Fn(&crate::scheduler::InstanceState) -> bool| {
        observed.instances.iter().filter(|i| f(i)).count() as i64
    };
    Health {
        staged: count(&|i| !i.running),
        running: count(&|i| i.running),
        healthy: count(&|i| i.running && i.healthy != Some(false)),
        unhealthy: count(&|i| i.healthy == Some(false)),
    }
}

/// Ready: as many running instances as wanted, each healthy where health is checked.
fn ready(observed: &DeployedService, wanted: u32) -> bool {
    observed.instances.len() == wanted as usize
        && observed
            .instances
            .iter()
            .all(|i| i.running && i.healthy != Some(false))
}

/// Every dependency's cluster has a deployed service.
fn dependencies_deployed(d: &Deployment, s: &DeploymentService) -> bool {
    s.dependencies.values().all(|cluster| {
        d.clusters
            .iter()
            .find(|c| &c.name == cluster)
            .is_some_and(|c| c.services.iter().any(|x| status::is_deployed(&x.status)))
    })
}

/// Plans one pass. `backoff` holds services whose last action failed and that must not be
/// acted on yet (the controller's error policy).
pub fn plan<D: std::borrow::Borrow<Deployment>>(
    deployments: &[D],
    observed: &[DeployedService],
    backoff: &BTreeSet<ServiceId>,
    now: i64,
    opts: &ReconcileOptions,
    lookups: &Lookups<'_>,
) -> Plan {
    let observed: BTreeMap<&ServiceId, &DeployedService> =
        observed.iter().map(|s| (&s.spec.id, s)).collect();
    let mut plan = Plan::default();
    let mut wanted: BTreeSet<ServiceId> = BTreeSet::new();
    for original in deployments {
        let original: &Deployment = original.borrow();
        // Copied only when something changes: most passes change nothing.
        let mut d = std::borrow::Cow::Borrowed(original);
        for ci in dependency_order(original) {
            for si in 0..d.clusters[ci].services.len() {
                let service = &d.clusters[ci].services[si];
                let id = ServiceId::new(&d.name, &d.clusters[ci].name, &service.breed.name);
                let new = plan_service(
                    &d,
                    &d.clusters[ci].name,
                    service,
                    &id,
                    observed.get(&id).copied(),
                    backoff,
                    now,
                    opts,
                    lookups,
                    &mut plan,
                );
                wanted.insert(id);
                let current = &d.clusters[ci].services[si];
                if new.status == current.status
                    && new.instances.is_none()
                    && new.health == current.health
                {
                    continue;
                }
                let service = &mut d.to_mut().clusters[ci].services[si];
                service.status = new.status;
                service.health = new.health;
                if let Some(instances) = new.instances {
                    service.instances = instances;
                }
            }
        }
        let std::borrow::Cow::Owned(d) = d else {
            continue;
        };
        let undeployed = d
            .clusters
            .iter()
            .flat_map(|c| &c.services)
            .any(|s| status::is_undeployed(&s.status));
        if !undeployed {
            plan.store.push(d);
            continue;
        }
        match remove_undeployed(&d) {
            None => plan.delete.push(d.name.clone()),
            Some(d) => plan.store.push(d),
        }
    }
    for (id, _) in observed {
        // A workflow's daemon is the workflow loop's to run and stop.
        if id.deployment == crate::ops::workflow::SCOPE {
            continue;
        }
        if !wanted.contains(id) && !backoff.contains(id) {
            plan.actions.push(Action::Undeploy { id: id.clone() });
        }
    }
    plan
}

/// Cluster indexes with every cluster after the clusters its services depend on (as far as
/// the dependencies allow; a circle keeps the written order), so a dependency that becomes
/// deployed in a pass lets its dependants deploy in the same pass.
fn dependency_order(d: &Deployment) -> Vec<usize> {
    let needs = |i: usize| -> BTreeSet<&str> {
        d.clusters[i]
            .services
            .iter()
            .flat_map(|s| s.dependencies.values().map(String::as_str))
            .filter(|c| *c != d.clusters[i].name)
            .collect()
    };
    let mut order: Vec<usize> = Vec::new();
    let mut left: Vec<usize> = (0..d.clusters.len()).collect();
    while !left.is_empty() {
        let placed: BTreeSet<&str> = order.iter().map(|i| d.clusters[*i].name.as_str()).collect();
        let ready = left
            .iter()
            .position(|i| needs(*i).iter().all(|c| placed.contains(c)))
            .unwrap_or(0);
        order.push(left.remove(ready));
    }
    order
}

/// What a pass decided for one service.
struct Outcome {
    status: ServiceStatus,
    /// New instances, when they changed.
    instances: Option<Vec<Instance>>,
    health: Option<Health>,
}

/// Whether the scheduler's instances are the stored ones.
fn same_instances(observed: &DeployedService, stored: &[Instance]) -> bool {
    observed.instances.len() == stored.len()
        && observed.instances.iter().zip(stored).all(|(o, s)| {
            o.name == s.name
                && o.host == s.host
                && o.running == s.deployed
                && o.ports.len() == s.ports.len()
                && o.ports
                    .iter()
                    .zip(&s.ports)
                    .all(|((ok, ov), (sk, sv))| ok == sk && i64::from(*ov) == *sv)
        })
}

#[allow(clippy::too_many_arguments)]
fn plan_service(
    d: &Deployment,
    cluster: &str,
    service: &DeploymentService,
    id: &ServiceId,
    observed: Option<&DeployedService>,
    backoff: &BTreeSet<ServiceId>,
    now: i64,
    opts: &ReconcileOptions,
    lookups: &Lookups<'_>,
    plan: &mut Plan,
) -> Outcome {
    let mut s = Outcome {
        status: service.status.clone(),
        instances: None,
        health: service.health,
    };
    if status::is_failed(&s.status) {
        return s;
    }
    if status::timed_out(&s.status, now, opts.timeout_ms) {
        let error = crate::error::OperationError::DeploymentServiceError {
            deployment: d.name.clone(),
            service: service.breed.name.clone(),
        };
        s.status = status::failed(&s.status, error.to_string(), now);
        plan.events
            .push(event(&d.name, cluster, &service.breed.name, "failed"));
        return s;
    }
    if let Some(o) = observed {
        if !same_instances(o, &service.instances) {
            s.instances = Some(instances(o));
        }
        let h = health(o);
        if s.health != Some(h) {
            s.health = Some(h);
        }
    }
    let phase = status::kind(&s.status.phase);
    match s.status.intention {
        Intention::Undeployment => match observed {
            // First the gateways without its routes (pushed by this pass), then, after the
            // drain time, the instances.
            Some(_) if phase == Some(PhaseKind::Initiated) => {
                s.status = status::moved(&s.status, PhaseKind::Updating, now);
            }
            Some(_) => {
                let since = status::phase_since(&s.status.phase).unwrap_or(now);
                if now.saturating_sub(since) >= opts.drain_ms && !backoff.contains(id) {
                    plan.actions.push(Action::Undeploy { id: id.clone() });
                }
                s.status = status::updating(&s.status, now);
            }
            None => {
                if !service.instances.is_empty() {
                    s.instances = Some(Vec::new());
                }
                if phase != Some(PhaseKind::Done) {
                    s.status = status::moved(&s.status, PhaseKind::Done, now);
                    plan.events
                        .push(event(&d.name, cluster, &service.breed.name, "undeployed"));
                }
            }
        },
        Intention::Deployment => {
            if !dependencies_deployed(d, service) {
                return s;
            }
            let environment = match service_environment(d, cluster, service, lookups) {
                Ok(e) => e,
                Err(e) => {
                    s.status = status::failed(&s.status, e.to_string(), now);
                    plan.events
                        .push(event(&d.name, cluster, &service.breed.name, "failed"));
                    return s;
                }
            };
            let spec = service_spec(id.clone(), service, &environment);
            let act = !backoff.contains(id);
            match observed {
                None => {
                    if act {
                        plan.actions.push(Action::Deploy { spec, force: false });
                    }
                    s.status = status::updating(&s.status, now);
                }
                Some(o) if differs(&o.spec, &spec) => {
                    if act {
                        plan.actions.push(Action::Deploy { spec, force: false });
                    }
                    if phase != Some(PhaseKind::Updating) {
                        plan.events
                            .push(event(&d.name, cluster, &service.breed.name, "redeploy"));
                    }
                    s.status = status::updating(&s.status, now);
                }
                Some(o) if o.spec.instances != spec.instances => {
                    if act {
                        plan.actions.push(Action::Scale {
                            id: id.clone(),
                            instances: spec.instances,
                        });
                    }
                    s.status = status::updating(&s.status, now);
                }
                Some(o) if ready(o, spec.instances) => {
                    if phase != Some(PhaseKind::Done) {
                        s.status = status::moved(&s.status, PhaseKind::Done, now);
                        plan.events
                            .push(event(&d.name, cluster, &service.breed.name, "deployed"));
                    }
                }
                Some(_) => match &s.status.phase {
                    Phase::Updating { .. } => {
                        let since = status::phase_since(&s.status.phase).unwrap_or(now);
                        if now.saturating_sub(since) >= opts.redeploy_after_ms {
                            if act {
                                plan.actions.push(Action::Deploy { spec, force: true });
                            }
                            // Wait again; the timeout still counts from the intention.
                            s.status.phase = Phase::Updating {
                                since: crate::time::format_epoch_millis(now),
                            };
                        }
                    }
                    _ => s.status = status::updating(&s.status, now),
                },
            }
        }
    }
    s
}
