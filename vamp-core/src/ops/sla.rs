//! SLAs and escalations with Vamp's semantics (`runtime.md` §5.5): pure planners ([`check`]:
//! is a cluster's response time out of its SLA's window; [`escalate`]: what a cluster's
//! escalations make of a deployment on an escalate or de-escalate signal) and the
//! runtime-agnostic loop ([`SlaController`]) that reads the `metrics` events, publishes
//! Vamp's SLA events and applies escalations through [`crate::ops::deploy::scale`], so the
//! reconcile loop gives the scheduler the new scale.
//!
//! * `response_time_sliding_window {upper, lower, interval, cooldown}`: for a cluster whose
//!   services are all deployed, unless an SLA event of the cluster lies within the last
//!   `interval + cooldown` seconds, the average `metrics:responseTime` of each cluster gateway
//!   over the last `interval` seconds is taken and the largest compared: above `upper` →
//!   escalate, below `lower` → de-escalate (strictly: exactly at a threshold is neither).
//!   Gateways without `metrics:responseTime` events in the interval are left out; with none
//!   at all there is no signal (Vamp took the missing average as 0 ms and de-escalated, and
//!   the SLA event then held every check off for the cooldown, right after a deployment).
//! * `escalation_only`: no check; `sla:escalate` / `sla:deescalate` events posted with
//!   `deployment:<d>` and `cluster:<c>` tags drive the escalations.
//! * Escalations act as a `to_one` group: on escalate the first that changes something, in
//!   order; on de-escalate the first, in reverse order. `scale_instances`, `scale_cpu`,
//!   `scale_memory` change the first service of their target cluster (`target`, or their
//!   own) by ±`scale_by`, only within `[minimum, maximum]`. `to_all` applies every member
//!   to the result of the previous one; `to_one` the first that changes something.
//!
//! **Fixed Vamp quirk:** Vamp's `to_all` kept its result only when its last member applied
//! (a change by an earlier member was lost when a later one did not apply); here every
//! change a member makes is kept.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::Result;
use crate::kv::Versioned;
use crate::metrics::{Aggregation, DynEventStore};
use crate::model::*;
use crate::node::Node;
use crate::ops::controller::{Clock, SystemClock};
use crate::persistence::{DynPersistenceStore, ListOptions, PersistenceExt};
use crate::units::{MegaByte, Quantity};

/// What an SLA check or a posted event asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// More resources.
    Escalate,
    /// Fewer resources.
    DeEscalate,
}

impl Signal {
    /// The tag (`sla:escalate`, `sla:deescalate`).
    pub fn tag(self) -> &'static str {
        match self {
            Self::Escalate => "sla:escalate",
            Self::DeEscalate => "sla:deescalate",
        }
    }

    /// The signal of an event's tags, if any.
    pub fn of(event: &Event) -> Option<Self> {
        if event.tags.iter().any(|t| t == "sla:escalate") {
            Some(Self::Escalate)
        } else if event.tags.iter().any(|t| t == "sla:deescalate") {
            Some(Self::DeEscalate)
        } else {
            None
        }
    }
}

/// The SLA event Vamp published for `signal` on `deployment`/`cluster`, at `now_ms`.
pub fn sla_event(deployment: &str, cluster: &str, signal: Signal, now_ms: i64) -> Event {
    Event::system(
        vec![
            "sla".into(),
            signal.tag().into(),
            format!("deployment:{deployment}"),
            format!("cluster:{cluster}"),
        ],
        Node::Null,
        "event",
        now_ms,
    )
}

/// The check of a `response_time_sliding_window` SLA: `response_time_ms` is the largest
/// average over the cluster's gateways (`None`: nothing measured, no signal).
pub fn check(sla: &Sla, response_time_ms: Option<f64>) -> Option<Signal> {
    let Sla::ResponseTimeSlidingWindow { upper, lower, .. } = sla else {
        return None;
    };
    let t = response_time_ms?;
    if t > *upper as f64 {
        Some(Signal::Escalate)
    } else if t < *lower as f64 {
        Some(Signal::DeEscalate)
    } else {
        None
    }
}

fn sign(signal: Signal) -> f64 {
    match signal {
        Signal::Escalate => 1.0,
        Signal::DeEscalate => -1.0,
    }
}

/// One scale escalation on the first service of `target`: the new deployment when it
/// changes something.
fn scale_one(
    d: &Deployment,
    target: &str,
    now: i64,
    change: impl Fn(&DefaultScale) -> Option<DefaultScale>,
) -> Option<Deployment> {
    let cluster = d.clusters.iter().find(|c| c.name == target)?;
    let service = cluster.services.first()?;
    // A service without a scale runs with the merge's default.
    let current = service
        .scale
        .clone()
        .unwrap_or_else(|| crate::ops::deploy::MergeOptions::new(now).default_scale);
    let new = change(&current)?;
    if new == current {
        return None;
    }
    crate::ops::deploy::scale(d, target, &service.breed.name, new, now).ok()
}

/// Applies one escalation; `None` when it changes nothing.
fn apply(
    d: &Deployment,
    own: &str,
    e: &Escalation,
    signal: Signal,
    now: i64,
) -> Option<Deployment> {
    let within = |v: f64, min: f64, max: f64| v >= min && v <= max;
    match e {
        Escalation::ScaleInstances {
            minimum,
            maximum,
            scale_by,
            target,
            ..
        } => scale_one(d, target.as_deref().unwrap_or(own), now, |s| {
            let new = s.instances + sign(signal) as i64 * scale_by;
            within(new as f64, *minimum as f64, *maximum as f64).then(|| DefaultScale {
                instances: new,
                ..s.clone()
            })
        }),
        Escalation::ScaleCpu {
            minimum,
            maximum,
            scale_by,
            target,
            ..
        } => scale_one(d, target.as_deref().unwrap_or(own), now, |s| {
            let new = s.cpu.0 + sign(signal) * scale_by;
            within(new, *minimum, *maximum).then(|| DefaultScale {
                cpu: Quantity(new),
                ..s.clone()
            })
        }),
        Escalation::ScaleMemory {
            minimum,
            maximum,
            scale_by,
            target,
            ..
        } => scale_one(d, target.as_deref().unwrap_or(own), now, |s| {
            let new = s.memory.0 + sign(signal) * scale_by;
            within(new, *minimum, *maximum).then(|| DefaultScale {
                memory: MegaByte(new),
                ..s.clone()
            })
        }),
        Escalation::ToAll { escalations, .. } => {
            // Every member on the result of the previous one; every change is kept (Vamp
            // lost them unless the last member applied).
            let mut current: Option<Deployment> = None;
            for member in escalations {
                let base = current.as_ref().unwrap_or(d);
                if let Some(next) = apply(base, own, member, signal, now) {
                    current = Some(next);
                }
            }
            current
        }
        Escalation::ToOne { escalations, .. } => to_one(d, own, escalations, signal, now),
        Escalation::Reference(_) | Escalation::Generic { .. } => None,
    }
}

fn to_one(
    d: &Deployment,
    own: &str,
    escalations: &[Escalation],
    signal: Signal,
    now: i64,
) -> Option<Deployment> {
    let mut order: Vec<&Escalation> = escalations.iter().collect();
    if signal == Signal::DeEscalate {
        order.reverse();
    }
    order
        .into_iter()
        .find_map(|e| apply(d, own, e, signal, now))
}

/// What `escalations` of cluster `cluster` make of `d` on `signal` (Vamp's top-level
/// `to_one`): the new deployment, or `None` when nothing applies.
pub fn escalate(
    d: &Deployment,
    cluster: &str,
    escalations: &[Escalation],
    signal: Signal,
    now: i64,
) -> Option<Deployment> {
    to_one(d, cluster, escalations, signal, now)
}

/// The SLA loop: checks sliding-window SLAs and applies escalations for the SLA events since
/// the previous pass. Runtime-agnostic.
pub struct SlaController {
    persistence: Arc<DynPersistenceStore>,
    /// Where a pass reads deployments from instead of the store, when set.
    catalog: Option<Arc<crate::ops::catalog::Catalog>>,
    events: Arc<DynEventStore>,
    clock: Arc<dyn Clock>,
    /// Where the previous pass read SLA events up to (ms).
    since: Mutex<Option<i64>>,
}

impl fmt::Debug for SlaController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlaController")
            .field("persistence", &self.persistence.to_string())
            .field("events", &self.events.to_string())
            .finish_non_exhaustive()
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct SlaReport {
    /// SLA events published: (deployment, cluster, signal).
    pub signals: Vec<(String, String, Signal)>,
    /// Escalations applied: (deployment, cluster, signal).
    pub escalations: Vec<(String, String, Signal)>,
    /// Errors (retried next pass).
    pub errors: Vec<String>,
}

fn query(tags: Vec<String>, from_ms: i64, to_ms: i64, inclusive_from: bool) -> EventQuery {
    let from = crate::time::format_epoch_millis(from_ms);
    EventQuery {
        tags,
        event_type: None,
        timestamp: Some(TimeRange {
            lt: None,
            lte: Some(crate::time::format_epoch_millis(to_ms)),
            gt: (!inclusive_from).then(|| from.clone()),
            gte: inclusive_from.then_some(from),
        }),
        aggregator: None,
    }
}

impl SlaController {
    /// A loop over the deployments in `persistence` and the events in `events`.
    pub fn new(persistence: Arc<DynPersistenceStore>, events: Arc<DynEventStore>) -> Self {
        Self {
            persistence,
            catalog: None,
            events,
            clock: Arc::new(SystemClock),
            since: Mutex::new(None),
        }
    }

    /// Reads deployments from `catalog` instead of listing and decoding the store every pass.
    #[must_use]
    pub fn with_catalog(mut self, catalog: Arc<crate::ops::catalog::Catalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Every deployment, normalised.
    async fn deployments(&self) -> Result<Vec<Versioned<Arc<Deployment>>>> {
        crate::ops::catalog::deployments(self.catalog.as_deref(), &*self.persistence).await
    }

    /// Uses `clock` for now.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The largest average response time over the cluster's gateways in the last
    /// `interval_s`.
    async fn response_time(
        &self,
        c: &DeploymentCluster,
        interval_s: i64,
        now: i64,
    ) -> Result<Option<f64>> {
        let mut max: Option<f64> = None;
        for g in &c.gateways {
            let q = query(
                vec![
                    format!("gateways:{}", g.name),
                    "metrics:responseTime".into(),
                ],
                now - interval_s * 1000,
                now,
                true,
            );
            let avg = self
                .events
                .aggregate(&q, Aggregation::Average, "value")
                .await?;
            if let Some(v) = avg.value {
                max = Some(max.map_or(v, |m: f64| m.max(v)));
            }
        }
        Ok(max)
    }

    /// One pass.
    ///
    /// # Errors
    /// The deployments could not be read.
    pub async fn tick(&self) -> Result<SlaReport> {
        let now = self.clock.now_millis();
        let mut report = SlaReport::default();
        let deployments = self.deployments().await?;
        // Checks.
        for d in &deployments {
            for c in &d.value.clusters {
                let Some(
                    sla @ Sla::ResponseTimeSlidingWindow {
                        interval, cooldown, ..
                    },
                ) = &c.sla
                else {
                    continue;
                };
                let deployed = !c.services.is_empty()
                    && c.services
                        .iter()
                        .all(|s| crate::ops::status::is_deployed(&s.status));
                if !deployed {
                    continue;
                }
                let recent = query(
                    vec![
                        "sla".into(),
                        format!("deployment:{}", d.value.name),
                        format!("cluster:{}", c.name),
                    ],
                    now - (interval + cooldown) * 1000,
                    now,
                    true,
                );
                match self.events.query(&recent, ListOptions::page(0, 1)).await {
                    Ok(found) if !found.is_empty() => continue,
                    Ok(_) => {}
                    Err(e) => {
                        report
                            .errors
                            .push(format!("{}/{}: {e}", d.value.name, c.name));
                        continue;
                    }
                }
                let t = match self.response_time(c, *interval, now).await {
                    Ok(t) => t,
                    Err(e) => {
                        report
                            .errors
                            .push(format!("{}/{}: {e}", d.value.name, c.name));
                        continue;
                    }
                };
                if let Some(signal) = check(sla, t) {
                    match self
                        .events
                        .publish(sla_event(&d.value.name, &c.name, signal, now))
                        .await
                    {
                        Ok(_) => {
                            report
                                .signals
                                .push((d.value.name.clone(), c.name.clone(), signal))
                        }
                        Err(e) => report
                            .errors
                            .push(format!("{}/{}: {e}", d.value.name, c.name)),
                    }
                }
            }
        }
        // Escalations for the SLA events since the previous pass, those just published
        // included (the first pass starts now).
        let from = self.since.lock().unwrap_or(now - 1);
        let mut failed = false;
        let mut escalations: BTreeMap<(String, String), Vec<Signal>> = BTreeMap::new();
        for d in &deployments {
            for c in &d.value.clusters {
                if c.sla.as_ref().is_none_or(|s| s.escalations().is_empty()) {
                    continue;
                }
                let q = query(
                    vec![
                        "sla".into(),
                        format!("deployment:{}", d.value.name),
                        format!("cluster:{}", c.name),
                    ],
                    from,
                    now,
                    false,
                );
                match self.events.query(&q, ListOptions::all()).await {
                    Ok(mut events) => {
                        events.reverse(); // oldest first
                        let signals = events.iter().filter_map(Signal::of).collect();
                        escalations.insert((d.value.name.clone(), c.name.clone()), signals);
                    }
                    Err(e) => {
                        failed = true;
                        report
                            .errors
                            .push(format!("{}/{}: {e}", d.value.name, c.name));
                    }
                }
            }
        }
        for ((deployment, cluster), signals) in escalations {
            for signal in signals {
                let Some(stored) = self.persistence.get::<Deployment>(&deployment).await? else {
                    break;
                };
                let mut current = stored.value.clone();
                crate::ops::deploy::normalize(&mut current);
                let Some(list) = current
                    .clusters
                    .iter()
                    .find(|c| c.name == cluster)
                    .and_then(|c| c.sla.as_ref())
                    .map(|s| s.escalations().to_vec())
                else {
                    break;
                };
                if let Some(next) = escalate(&current, &cluster, &list, signal, now) {
                    match self.persistence.update(&next, stored.version).await {
                        Ok(_) => {
                            report
                                .escalations
                                .push((deployment.clone(), cluster.clone(), signal))
                        }
                        Err(e) => {
                            failed = true;
                            report.errors.push(format!("{deployment}/{cluster}: {e}"));
                        }
                    }
                }
            }
        }
        if !failed {
            *self.since.lock() = Some(now);
        }
        Ok(report)
    }

    /// Runs passes every `period` until `shutdown` completes.
    pub async fn run(&self, period: Duration, shutdown: impl std::future::Future<Output = ()>) {
        crate::rt::every(period, shutdown, || async {
            let _ = self.tick().await;
        })
        .await;
    }
}
