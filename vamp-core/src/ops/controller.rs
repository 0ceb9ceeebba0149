//! The reconcile loop: reads desired deployments from a
//! [`PersistenceStore`](crate::persistence::PersistenceStore) and what runs from a
//! [`ContainerScheduler`](crate::scheduler::ContainerScheduler), plans with [`super::reconcile::plan`], applies the scheduler
//! actions with bounded concurrency, writes statuses and instances back (optimistically, at
//! the version it read), publishes Vamp's events and hands every gateway (the deployments'
//! and the standalone ones stored as artifacts) to a [`GatewaySink`]
//! (the HAProxy side: `vamp_haproxy::driver::GatewayDriver`). Runtime-agnostic: no tokio.
//!
//! # A deterministic harness
//!
//! [`Controller::tick`] is one pass and [`ManualClock`] is time you set, so a test (yours or
//! ours) drives the control plane step by step on the in-memory backends, with no sleeps:
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use std::sync::Arc;
//! use vamp_core::dsl::{read_str, AnyArtifact};
//! use vamp_core::memory::{InMemoryPersistence, InMemoryScheduler};
//! use vamp_core::model::{ArtifactKind, Deployment};
//! use vamp_core::ops::controller::{Controller, ControllerOptions, ManualClock};
//! use vamp_core::ops::deploy::{merge, Artifacts, MergeOptions};
//! use vamp_core::persistence::PersistenceExt;
//!
//! let store = Arc::new(InMemoryPersistence::new());
//! let scheduler = Arc::new(InMemoryScheduler::new());
//! let clock = ManualClock::new(1_800_000_000_000);
//! let controller = Controller::new(Arc::clone(&store) as _, Arc::clone(&scheduler) as _, ControllerOptions::default())
//!     .with_clock(Arc::new(clock.clone()));
//!
//! // Deploy: merge a blueprint and store the deployment.
//! let doc = "name: sava\nclusters:\n  sava:\n    breed: {name: 'sava:1.0', deployable: sava, ports: {web: 8080}}\n";
//! let AnyArtifact::Blueprint(bp) = read_str(doc, Some(ArtifactKind::Blueprint)).unwrap().remove(0) else { unreachable!() };
//! let merged = merge(None, "sava", &bp, &Artifacts::new(), &MergeOptions::new(clock.now())).unwrap();
//! store.create(&merged.deployment).await.unwrap();
//!
//! controller.tick().await.unwrap(); // deploys: the service is Updating
//! clock.advance(std::time::Duration::from_secs(1));
//! controller.tick().await.unwrap(); // every instance runs: Done
//! let d = store.get::<Deployment>("sava").await.unwrap().unwrap().value;
//! assert!(vamp_core::ops::status::is_deployed(&d.clusters[0].services[0].status));
//! assert_eq!(d.clusters[0].services[0].instances.len(), 1);
//! # }).unwrap();
//! ```
//!
//! # Restarts and two control planes
//!
//! Everything the loop knows is in the store (statuses, instances) or in the scheduler
//! (services labelled with their deployment, cluster and service), so a control plane
//! restarted at any point resumes: a deploy of a service that already runs with the same spec
//! changes nothing, and services that no deployment wants any more are undeployed. Two
//! control planes on one store may both act on a service (the scheduler's actions are
//! idempotent); their writes are at the version each read, so the second write of a pass
//! fails with a conflict and is simply planned again on the next pass from the newer state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;

use crate::error::Result;
use crate::kv::Versioned;
use crate::metrics::DynEventStore;
use crate::model::{Deployment, Gateway};
use crate::ops::reconcile::{Action, Plan, ReconcileOptions, plan};
use crate::ops::resolve::Lookups;
use crate::persistence::{DynPersistenceStore, PersistenceExt};
use crate::scheduler::{DeployOptions, DynContainerScheduler, ServiceId};

/// Where "now" comes from.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        crate::time::now_millis()
    }
}

/// A clock that moves only when told (for tests). Cloning shares the time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock at `millis` since the Unix epoch.
    pub fn new(millis: i64) -> Self {
        Self(Arc::new(AtomicI64::new(millis)))
    }

    /// The time.
    pub fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        self.now()
    }
}

/// What a pass hands to the gateway side: the deployments as the pass leaves them (their
/// gateways, and their instances as the routes' targets) and the standalone gateways.
///
/// The deployments are shared with the loop, and a deployment no pass changed stays the same
/// `Arc` from one pass to the next: a sink that remembers what it was given can skip it by
/// pointer ([`Arc::ptr_eq`]), so a pass costs what changed, not what there is.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct GatewayPass {
    /// The deployments, in the store's order.
    pub deployments: Vec<Arc<Deployment>>,
    /// The gateways stored as artifacts of their own, but those named like a deployment's
    /// gateway (the deployment's wins).
    pub standalone: Vec<Arc<Gateway>>,
}

impl GatewayPass {
    /// A pass of these deployments and standalone gateways.
    pub fn new(deployments: Vec<Arc<Deployment>>, standalone: Vec<Arc<Gateway>>) -> Self {
        Self {
            deployments,
            standalone,
        }
    }

    /// Every gateway of the pass, copied: each deployment's (internal gateways first, see
    /// [`crate::ops::reconcile::gateways`]), then the standalone ones.
    pub fn gateways(&self) -> Vec<Gateway> {
        self.iter().cloned().collect()
    }

    /// Every gateway of the pass, borrowed, in the order of [`GatewayPass::gateways`].
    pub fn iter(&self) -> impl Iterator<Item = &Gateway> {
        self.deployments
            .iter()
            .flat_map(|d| crate::ops::reconcile::gateways_of(d))
            .chain(self.standalone.iter().map(|g| &**g))
    }
}

/// The gateway side: receives every pass's [`GatewayPass`].
/// `vamp_haproxy::driver::GatewayDriver` implements it.
#[async_trait]
pub trait GatewaySink: fmt::Debug + Send + Sync + 'static {
    /// Makes the pass's gateways (each deployment's, then the standalone ones) the gateways.
    async fn push(&self, pass: GatewayPass) -> Result<()>;
}

/// Several gateway sides (the gateway driver, and a platform's gateway Services): each gets
/// every pass, in order; when some fail, every one has still been given the pass, and the
/// first error is returned.
#[derive(Debug, Default)]
pub struct GatewaySinks(pub Vec<Arc<dyn GatewaySink>>);

#[async_trait]
impl GatewaySink for GatewaySinks {
    async fn push(&self, pass: GatewayPass) -> Result<()> {
        let mut first = None;
        for sink in &self.0 {
            if let Err(e) = sink.push(pass.clone()).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// How the loop runs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControllerOptions {
    /// The planner's options.
    pub reconcile: ReconcileOptions,
    /// Scheduler actions applied at once (default 8).
    pub concurrency: usize,
    /// Time between passes in [`Controller::run`] (default 2 s; Vamp: 6 s).
    pub period: Duration,
    /// The first delay after a failed scheduler action on a service, doubling to `max_backoff`.
    pub backoff: Duration,
    /// The longest delay (default 60 s).
    pub max_backoff: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            reconcile: ReconcileOptions::default(),
            concurrency: 8,
            period: Duration::from_secs(2),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct TickReport {
    /// The plan.
    pub plan: Plan,
    /// Scheduler actions that failed, with the error.
    pub failed: Vec<(ServiceId, String)>,
    /// Deployments written back.
    pub stored: usize,
    /// Writes that lost to another writer (planned again next pass).
    pub conflicts: usize,
    /// The store could not be read: the pass planned from the last state read.
    pub persistence_error: Option<String>,
    /// Other errors of the pass (writes, events, gateways).
    pub errors: Vec<String>,
    /// Services on their way (neither deployed nor undeployed nor failed) after the pass: a
    /// loop that passes again soon records them as soon as they arrive.
    pub in_progress: usize,
}

#[derive(Default)]
struct State {
    last: Vec<Versioned<Arc<Deployment>>>,
    /// Without a catalog: each deployment as last read, so one read again at the same version
    /// stays the same shared deployment.
    read: std::collections::HashMap<String, Versioned<Arc<Deployment>>>,
    backoff: BTreeMap<ServiceId, (u32, i64)>,
}

/// The reconcile loop over a store, a scheduler, an event store and a gateway side.
pub struct Controller {
    persistence: Arc<DynPersistenceStore>,
    scheduler: Arc<DynContainerScheduler>,
    events: Option<Arc<DynEventStore>>,
    gateways: Option<Arc<dyn GatewaySink>>,
    clock: Arc<dyn Clock>,
    options: ControllerOptions,
    state: Mutex<State>,
    /// Deployments and gateways as last decoded: a pass decodes only what was written since.
    decoded_deployments: crate::persistence::DecodeCache<Deployment>,
    decoded_gateways: crate::persistence::DecodeCache<Gateway>,
    /// Where a pass reads deployments and gateways from instead, when set.
    catalog: Option<Arc<crate::ops::catalog::Catalog>>,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("persistence", &self.persistence.to_string())
            .field("scheduler", &self.scheduler.to_string())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A loop over `persistence` and `scheduler`, on the system clock.
    pub fn new(
        persistence: Arc<DynPersistenceStore>,
        scheduler: Arc<DynContainerScheduler>,
        options: ControllerOptions,
    ) -> Self {
        Self {
            persistence,
            scheduler,
            events: None,
            gateways: None,
            clock: Arc::new(SystemClock),
            options,
            state: Mutex::new(State::default()),
            decoded_deployments: crate::persistence::DecodeCache::new(),
            decoded_gateways: crate::persistence::DecodeCache::new(),
            catalog: None,
        }
    }

    /// Reads deployments and standalone gateways from `catalog` (kept current by its feed;
    /// give it the writes of this loop's persistence too, by layering that over it) instead
    /// of listing and decoding the store every pass: a pass then costs what the plan costs.
    #[must_use]
    pub fn with_catalog(mut self, catalog: Arc<crate::ops::catalog::Catalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// The desired deployments, normalised.
    async fn desired(&self) -> Result<Vec<Versioned<Arc<Deployment>>>> {
        if let Some(catalog) = &self.catalog {
            catalog.ensure_loaded().await?;
            return Ok(catalog.deployments());
        }
        let listed = self
            .decoded_deployments
            .list_all(&*self.persistence)
            .await?;
        let mut state = self.state.lock();
        let mut read = std::collections::HashMap::with_capacity(listed.len());
        let desired = listed
            .into_iter()
            .map(|mut v| {
                let value = match state.read.remove(&v.value.name) {
                    Some(last) if last.version == v.version => last.value,
                    _ => {
                        crate::ops::deploy::normalize(&mut v.value);
                        Arc::new(v.value)
                    }
                };
                let out = Versioned {
                    value,
                    version: v.version,
                };
                read.insert(out.value.name.clone(), out.clone());
                out
            })
            .collect();
        state.read = read;
        Ok(desired)
    }

    /// The standalone gateways.
    async fn stored_gateways(&self) -> Result<Vec<Arc<Gateway>>> {
        if let Some(catalog) = &self.catalog {
            catalog.ensure_loaded().await?;
            return Ok(catalog.gateways().into_iter().map(|v| v.value).collect());
        }
        Ok(self
            .decoded_gateways
            .list_all(&*self.persistence)
            .await?
            .into_iter()
            .map(|v| Arc::new(v.value))
            .collect())
    }

    /// Publishes Vamp's synchronisation events to `events`.
    #[must_use]
    pub fn with_events(mut self, events: Arc<DynEventStore>) -> Self {
        self.events = Some(events);
        self
    }

    /// Hands the gateways to `sink` after each pass.
    #[must_use]
    pub fn with_gateways(mut self, sink: Arc<dyn GatewaySink>) -> Self {
        self.gateways = Some(sink);
        self
    }

    /// Uses `clock` for now.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn delay(&self, failures: u32) -> i64 {
        let d = self
            .options
            .backoff
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(self.options.max_backoff);
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    /// One pass: read, plan, apply, record.
    ///
    /// # Errors
    /// The scheduler could not list its services (nothing can be decided without them).
    /// Everything else is in the [`TickReport`]: an unreadable store makes the pass plan from
    /// the last state read, failed actions back off, lost writes are planned again.
    pub async fn tick(&self) -> Result<TickReport> {
        let now = self.clock.now_millis();
        let mut report = TickReport::default();
        let desired = match self.desired().await {
            Ok(d) => {
                self.state.lock().last = d.clone();
                d
            }
            Err(e) => {
                report.persistence_error = Some(e.to_string());
                self.state.lock().last.clone()
            }
        };
        let observed = self.scheduler.services().await?;
        // Services whose last action failed wait out their delay; the failure count stays
        // until an action succeeds, so the delay keeps doubling.
        let backoff: BTreeSet<ServiceId> = self
            .state
            .lock()
            .backoff
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(id, _)| id.clone())
            .collect();
        let deployments: Vec<Arc<Deployment>> =
            desired.iter().map(|v| Arc::clone(&v.value)).collect();
        let planned = plan(
            &deployments,
            &observed,
            &backoff,
            now,
            &self.options.reconcile,
            &Lookups::default(),
        );

        // Scheduler actions, a bounded number at a time.
        let results: Vec<(ServiceId, Result<()>)> =
            futures_util::stream::iter(planned.actions.clone())
                .map(|action| async move {
                    let id = action.id().clone();
                    let result = match action {
                        Action::Deploy { spec, force } => {
                            let opts = DeployOptions {
                                force,
                                ..DeployOptions::default()
                            };
                            self.scheduler.deploy(spec, opts).await
                        }
                        Action::Scale { id, instances } => {
                            self.scheduler.scale(&id, instances).await
                        }
                        Action::Undeploy { id } => self.scheduler.undeploy(&id).await.map(|_| ()),
                    };
                    (id, result)
                })
                .buffer_unordered(self.options.concurrency.max(1))
                .collect()
                .await;
        {
            let mut s = self.state.lock();
            for (id, result) in results {
                match result {
                    Ok(()) => {
                        s.backoff.remove(&id);
                    }
                    Err(e) => {
                        let failures = s.backoff.get(&id).map_or(1, |(f, _)| f + 1);
                        let until = now.saturating_add(self.delay(failures));
                        s.backoff.insert(id.clone(), (failures, until));
                        report.failed.push((id, e.to_string()));
                    }
                }
            }
        }

        // The deployments as this pass leaves them: for the gateway side, and for the next
        // pass if the store cannot be read then.
        let outcome = planned.apply_to_shared(&deployments);
        report.in_progress = outcome
            .iter()
            .flat_map(|d| d.clusters.iter().flat_map(|c| &c.services))
            .filter(|s| {
                !crate::ops::status::is_deployed(&s.status)
                    && !crate::ops::status::is_undeployed(&s.status)
                    && !crate::ops::status::is_failed(&s.status)
            })
            .count();
        let versions: std::collections::HashMap<&str, crate::kv::Version> = desired
            .iter()
            .map(|v| (v.value.name.as_str(), v.version))
            .collect();
        let version_of = |name: &str| versions.get(name).copied();
        self.state.lock().last = outcome
            .iter()
            .map(|d| Versioned {
                value: Arc::clone(d),
                version: version_of(&d.name).unwrap_or(crate::kv::Version(0)),
            })
            .collect();

        // Statuses and instances back to the store, at the version read.
        for d in &planned.store {
            let result = match version_of(&d.name) {
                Some(v) if v.0 > 0 => self.persistence.update(d, v).await.map(|_| ()),
                Some(_) => Err(crate::Error::Conflict {
                    backend: self.persistence.to_string(),
                    key: d.name.clone(),
                    expected: 0,
                    found: None,
                }),
                None => self.persistence.create(d).await.map(|_| ()),
            };
            match result {
                Ok(()) => report.stored += 1,
                Err(e) if e.is_conflict() => report.conflicts += 1,
                Err(e) => report.errors.push(format!("store {}: {e}", d.name)),
            }
        }
        for name in &planned.delete {
            match self
                .persistence
                .remove::<Deployment>(name, version_of(name))
                .await
            {
                Ok(_) => report.stored += 1,
                Err(e) if e.is_conflict() => report.conflicts += 1,
                Err(e) => report.errors.push(format!("delete {name}: {e}")),
            }
        }
        if let Some(events) = &self.events {
            for event in &planned.events {
                if let Err(e) = events.publish(event.clone()).await {
                    report.errors.push(format!("event: {e}"));
                }
            }
        }
        if let Some(sink) = &self.gateways {
            // The deployments' gateways, then the standalone ones stored on their own. Without
            // the stored ones nothing is pushed: a partial set would take gateways down.
            match self.stored_gateways().await {
                Ok(mut standalone) => {
                    if !standalone.is_empty() {
                        // A deployment's gateways are named `<deployment>/…`: only a standalone
                        // gateway whose first segment names a deployment can share a name.
                        let by_name: std::collections::HashMap<&str, &Deployment> =
                            outcome.iter().map(|d| (d.name.as_str(), &**d)).collect();
                        standalone.retain(|g| {
                            let first = g.name.split('/').next().unwrap_or_default();
                            !by_name.get(first).is_some_and(|d| {
                                crate::ops::reconcile::gateways_of(d).any(|x| x.name == g.name)
                            })
                        });
                    }
                    if let Err(e) = sink.push(GatewayPass::new(outcome, standalone)).await {
                        report.errors.push(format!("gateways: {e}"));
                    }
                }
                Err(e) => report.errors.push(format!(
                    "gateways: the stored gateways could not be read, nothing pushed: {e}"
                )),
            }
        }
        report.plan = planned;
        Ok(report)
    }

    /// Runs passes every [`ControllerOptions::period`] until `shutdown` completes. Errors of a
    /// pass are retried on the next.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        crate::rt::every(self.options.period, shutdown, || async {
            let _ = self.tick().await;
        })
        .await;
    }
}
