//! The reconcile loop on the deterministic harness: in-memory store and scheduler, a manual
//! clock, one pass at a time, no sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use parking_lot::Mutex;
use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::error::{Error, Result};
use vamp_core::memory::{InMemoryMetrics, InMemoryPersistence, InMemoryScheduler};
use vamp_core::metrics::EventStore;
use vamp_core::model::*;
use vamp_core::ops::controller::{
    Controller, ControllerOptions, GatewayPass, GatewaySink, ManualClock,
};
use vamp_core::ops::deploy::{Artifacts, MergeOptions, merge, slice};
use vamp_core::ops::reconcile::Action;
use vamp_core::ops::status::{self, PhaseKind};
use vamp_core::persistence::*;
use vamp_core::scheduler::*;

const T0: i64 = 1_800_000_000_000;

fn blueprint(yaml: &str) -> DefaultBlueprint {
    match read_str(yaml, Some(ArtifactKind::Blueprint))
        .unwrap()
        .remove(0)
    {
        AnyArtifact::Blueprint(b) => b,
        other => panic!("{other:?}"),
    }
}

const SHOP: &str = "name: shop
clusters:
  frontend:
    breed:
      name: frontend:1.0
      deployable: front
      ports: {web: 8080/http}
      environment_variables:
        BACKEND: http://$backend.host:$backend.ports.api
      dependencies: {backend: 'backend:1.0'}
    scale: {cpu: 0.1, memory: 32MB, instances: 2}
  backend:
    breed: {name: 'backend:1.0', deployable: back, ports: {api: 9090/http}}
";

/// A scheduler that fails every call while `failing` is set.
#[derive(Debug)]
struct Flaky {
    inner: InMemoryScheduler,
    failing: AtomicBool,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flaky")
    }
}

impl Flaky {
    fn check(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            Err(Error::Unavailable {
                backend: "Flaky".into(),
                source: "injected".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ContainerScheduler for Flaky {
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<()> {
        self.check()?;
        self.inner.deploy(spec, opts).await
    }
    async fn undeploy(&self, id: &ServiceId) -> Result<bool> {
        self.check()?;
        self.inner.undeploy(id).await
    }
    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<()> {
        self.check()?;
        self.inner.scale(id, instances).await
    }
    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>> {
        self.inner.service(id).await
    }
    async fn services(&self) -> Result<Vec<DeployedService>> {
        self.inner.services().await
    }
    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent>> {
        self.inner.watch()
    }
    fn capabilities(&self) -> SchedulerCapabilities {
        self.inner.capabilities()
    }
}

/// A store that is unreachable while `down` is set.
#[derive(Debug)]
struct Unreliable {
    inner: InMemoryPersistence,
    down: AtomicBool,
}

impl std::fmt::Display for Unreliable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unreliable")
    }
}

impl Unreliable {
    fn check(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::Unavailable {
                backend: "Unreliable".into(),
                source: "injected".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl PersistenceStore for Unreliable {
    async fn read(&self, kind: ArtifactKind, name: &str) -> Result<Option<ArtifactRecord>> {
        self.check()?;
        self.inner.read(kind, name).await
    }
    async fn write(
        &self,
        writes: Vec<ArtifactWrite>,
    ) -> Result<Vec<Option<vamp_core::kv::Version>>> {
        self.check()?;
        self.inner.write(writes).await
    }
    async fn list(&self, kind: ArtifactKind, opts: ListOptions) -> Result<Vec<ArtifactRecord>> {
        self.check()?;
        self.inner.list(kind, opts).await
    }
    async fn history(&self, kind: ArtifactKind, name: &str) -> Result<Vec<ArtifactRecord>> {
        self.check()?;
        self.inner.history(kind, name).await
    }
    fn changes(&self, opts: ChangeOptions) -> BoxStream<'static, Result<ArtifactRecord>> {
        self.inner.changes(opts)
    }
    fn capabilities(&self) -> PersistenceCapabilities {
        self.inner.capabilities()
    }
    async fn head(&self) -> Result<Option<vamp_core::kv::Version>> {
        self.inner.head().await
    }
}

/// Records what the gateway side receives (and the last pass as given).
#[derive(Debug, Default)]
struct Recorder(
    Mutex<Vec<(Vec<Gateway>, Vec<Deployment>)>>,
    Mutex<Option<GatewayPass>>,
);

#[async_trait]
impl GatewaySink for Recorder {
    async fn push(&self, pass: GatewayPass) -> Result<()> {
        let deployments = pass.deployments.iter().map(|d| (**d).clone()).collect();
        self.0.lock().push((pass.gateways(), deployments));
        *self.1.lock() = Some(pass);
        Ok(())
    }
}

struct Harness {
    store: Arc<Unreliable>,
    scheduler: Arc<Flaky>,
    events: Arc<InMemoryMetrics>,
    gateways: Arc<Recorder>,
    clock: ManualClock,
    controller: Controller,
}

impl Harness {
    fn new() -> Self {
        let store = Arc::new(Unreliable {
            inner: InMemoryPersistence::new(),
            down: AtomicBool::new(false),
        });
        let scheduler = Arc::new(Flaky {
            inner: InMemoryScheduler::new(),
            failing: AtomicBool::new(false),
        });
        let events = Arc::new(InMemoryMetrics::with_clock(|| T0));
        let gateways = Arc::new(Recorder::default());
        let clock = ManualClock::new(T0);
        let controller = Self::controller(&store, &scheduler, &events, &gateways, &clock);
        Self {
            store,
            scheduler,
            events,
            gateways,
            clock,
            controller,
        }
    }

    fn controller(
        store: &Arc<Unreliable>,
        scheduler: &Arc<Flaky>,
        events: &Arc<InMemoryMetrics>,
        gateways: &Arc<Recorder>,
        clock: &ManualClock,
    ) -> Controller {
        let mut options = ControllerOptions::default();
        options.reconcile.redeploy_after_ms = 10_000;
        Controller::new(
            Arc::clone(store) as Arc<dyn PersistenceStore>,
            Arc::clone(scheduler) as Arc<dyn ContainerScheduler>,
            options,
        )
        .with_events(Arc::clone(events) as Arc<dyn EventStore>)
        .with_gateways(Arc::clone(gateways) as Arc<dyn GatewaySink>)
        .with_clock(Arc::new(clock.clone()))
    }

    async fn deploy(&self, yaml: &str, name: &str) {
        let existing = self.store.get::<Deployment>(name).await.unwrap();
        let m = merge(
            existing.as_ref().map(|v| &v.value),
            name,
            &blueprint(yaml),
            &Artifacts::new(),
            &MergeOptions::new(self.clock.now()),
        )
        .unwrap();
        match existing {
            Some(v) => self.store.update(&m.deployment, v.version).await.unwrap(),
            None => self.store.create(&m.deployment).await.unwrap(),
        };
    }

    async fn deployment(&self, name: &str) -> Option<Deployment> {
        self.store
            .get::<Deployment>(name)
            .await
            .unwrap()
            .map(|v| v.value)
    }

    async fn service(&self, d: &str, c: &str) -> DeploymentService {
        let d = self.deployment(d).await.unwrap();
        d.clusters.iter().find(|x| x.name == c).unwrap().services[0].clone()
    }

    async fn tick(&self) -> vamp_core::ops::controller::TickReport {
        self.clock.advance(Duration::from_millis(500));
        self.controller.tick().await.unwrap()
    }

    async fn events(&self, tag: &str) -> Vec<Event> {
        self.events
            .query(
                &EventQuery {
                    tags: vec![tag.into()],
                    event_type: None,
                    timestamp: None,
                    aggregator: None,
                },
                ListOptions::all(),
            )
            .await
            .unwrap()
    }
}

fn phase(s: &DeploymentService) -> Option<PhaseKind> {
    status::kind(&s.status.phase)
}

#[tokio::test]
async fn a_blueprint_is_deployed_in_dependency_order_and_routed() {
    let h = Harness::new();
    h.deploy(SHOP, "shop").await;
    // Pass 1: the backend deploys; the frontend waits for its dependency.
    let r = h.tick().await;
    let deployed: Vec<String> = r
        .plan
        .actions
        .iter()
        .map(|a| a.id().service.clone())
        .collect();
    assert_eq!(deployed, ["backend:1.0"]);
    assert_eq!(
        phase(&h.service("shop", "frontend").await),
        Some(PhaseKind::Initiated)
    );
    // Pass 2: the backend runs (Done); the frontend deploys with the backend's gateway.
    let r = h.tick().await;
    assert!(status::is_deployed(
        &h.service("shop", "backend").await.status
    ));
    let Some(Action::Deploy { spec, .. }) = r.plan.actions.first() else {
        panic!("{:?}", r.plan.actions)
    };
    let d = h.deployment("shop").await.unwrap();
    let api = d
        .ports
        .iter()
        .find(|p| p.name == "backend.ports.api")
        .unwrap();
    assert_eq!(
        spec.environment.get("BACKEND").map(String::as_str),
        Some(format!("http://127.0.0.1:{}", api.number).as_str())
    );
    assert_eq!(spec.instances, 2);
    // Pass 3: everything runs.
    h.tick().await;
    let frontend = h.service("shop", "frontend").await;
    assert!(status::is_deployed(&frontend.status));
    assert_eq!(frontend.instances.len(), 2);
    assert!(frontend.instances.iter().all(|i| i.deployed));
    assert_eq!(h.events("synchronization:deployed").await.len(), 2);
    assert_eq!(
        h.events("deployments:shop").await.len(),
        2,
        "events carry Vamp's tags"
    );
    // The gateway side got both internal gateways and the instances behind them.
    let (gateways, deployments) = h.gateways.0.lock().last().cloned().unwrap();
    let names: Vec<&str> = gateways.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["shop/frontend/web", "shop/backend/api"]);
    assert_eq!(deployments[0].clusters[0].services[0].instances.len(), 2);
    // A pass with nothing to do does nothing.
    let r = h.tick().await;
    assert!(
        r.plan.actions.is_empty() && r.plan.store.is_empty(),
        "{:?}",
        r.plan
    );
}

#[tokio::test]
async fn a_killed_instance_is_redeployed_when_the_scheduler_does_not_heal_it() {
    let h = Harness::new();
    h.deploy(SHOP, "shop").await;
    for _ in 0..3 {
        h.tick().await;
    }
    let id = ServiceId::new("shop", "frontend", "frontend:1.0");
    h.scheduler.inner.stop_instance(&id, 1).unwrap();
    let r = h.tick().await;
    assert!(
        r.plan.actions.is_empty(),
        "the scheduler gets time to heal it"
    );
    let s = h.service("shop", "frontend").await;
    assert_eq!(phase(&s), Some(PhaseKind::Updating));
    assert!(!s.instances[1].deployed, "the stopped instance is recorded");
    h.clock.advance(Duration::from_secs(10));
    let r = h.tick().await;
    assert!(
        matches!(
            r.plan.actions.as_slice(),
            [Action::Deploy { force: true, .. }]
        ),
        "{:?}",
        r.plan.actions
    );
    h.tick().await;
    let s = h.service("shop", "frontend").await;
    assert!(status::is_deployed(&s.status));
    assert!(s.instances.iter().all(|i| i.deployed));
}

#[tokio::test]
async fn scheduler_errors_back_off_and_fail_the_service_after_the_timeout() {
    let h = Harness::new();
    h.deploy(
        "name: one\nclusters:\n  c:\n    breed: {name: b, deployable: d, ports: {p: 80}}\n",
        "one",
    )
    .await;
    h.scheduler.failing.store(true, Ordering::SeqCst);
    let r = h.tick().await;
    assert_eq!(r.failed.len(), 1);
    // In backoff: the next passes within the delay do not call the scheduler.
    let r = h.tick().await;
    assert!(r.plan.actions.is_empty() && r.failed.is_empty());
    h.clock.advance(Duration::from_secs(1));
    let r = h.tick().await;
    assert_eq!(r.failed.len(), 1, "retried after the delay");
    h.clock.advance(Duration::from_secs(1));
    let r = h.tick().await;
    assert!(r.plan.actions.is_empty(), "the delay doubled");
    // Past the timeout: Failed, and left alone.
    h.clock.advance(Duration::from_secs(600));
    h.tick().await;
    let s = h.service("one", "c").await;
    assert!(status::is_failed(&s.status), "{:?}", s.status);
    assert_eq!(h.events("synchronization:failed").await.len(), 1);
    h.scheduler.failing.store(false, Ordering::SeqCst);
    h.clock.advance(Duration::from_secs(120));
    let r = h.tick().await;
    assert!(
        r.plan.actions.is_empty(),
        "a failed service waits for a merge"
    );
    // A merge that changes it resets it.
    h.deploy(
        "name: one\nclusters:\n  c:\n    breed: {name: b, deployable: d2, ports: {p: 80}}\n",
        "one",
    )
    .await;
    h.tick().await;
    h.tick().await;
    assert!(status::is_deployed(&h.service("one", "c").await.status));
}

#[tokio::test]
async fn with_the_store_away_the_loop_keeps_the_last_state_and_catches_up() {
    let h = Harness::new();
    h.deploy(SHOP, "shop").await;
    for _ in 0..3 {
        h.tick().await;
    }
    h.store.down.store(true, Ordering::SeqCst);
    let id = ServiceId::new("shop", "backend", "backend:1.0");
    h.scheduler.inner.stop_instance(&id, 0).unwrap();
    let r = h.tick().await;
    assert!(r.persistence_error.is_some());
    assert!(
        !r.plan
            .actions
            .iter()
            .any(|a| matches!(a, Action::Undeploy { .. })),
        "nothing is undeployed for want of the store: {:?}",
        r.plan.actions
    );
    h.clock.advance(Duration::from_secs(10));
    let r = h.tick().await;
    assert!(
        matches!(
            r.plan.actions.as_slice(),
            [Action::Deploy { force: true, .. }]
        ),
        "healing goes on from the last state: {:?}",
        r.plan.actions
    );
    h.store.down.store(false, Ordering::SeqCst);
    h.tick().await;
    h.tick().await;
    let s = h.service("shop", "backend").await;
    assert!(status::is_deployed(&s.status), "{:?}", s.status);
    assert!(s.instances.iter().all(|i| i.deployed));
}

#[tokio::test]
async fn slicing_everything_undeploys_and_deletes_the_deployment() {
    let h = Harness::new();
    h.deploy(SHOP, "shop").await;
    for _ in 0..3 {
        h.tick().await;
    }
    let d = h.store.get::<Deployment>("shop").await.unwrap().unwrap();
    let all = blueprint(
        "name: shop\nclusters:\n  frontend:\n    breed: frontend:1.0\n  backend:\n    breed: backend:1.0\n",
    );
    let sliced = slice(&d.value, &all, h.clock.now()).unwrap();
    h.store.update(&sliced, d.version).await.unwrap();
    let r = h.tick().await;
    assert!(
        r.plan.actions.is_empty(),
        "the gateways go first; the instances keep serving while the agents apply them"
    );
    let (gateways, _) = h.gateways.0.lock().last().cloned().unwrap();
    assert!(gateways.is_empty(), "{gateways:?}");
    h.clock.advance(Duration::from_secs(2));
    let r = h.tick().await;
    assert_eq!(
        r.plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Undeploy { .. }))
            .count(),
        2
    );
    h.tick().await;
    assert_eq!(h.deployment("shop").await, None);
    assert!(h.scheduler.services().await.unwrap().is_empty());
    assert_eq!(h.events("synchronization:undeployed").await.len(), 2);
}

#[tokio::test]
async fn a_restarted_control_plane_resumes_and_undeploys_orphans() {
    let h = Harness::new();
    h.deploy(SHOP, "shop").await;
    h.tick().await; // the backend is deployed, the control plane "dies"
    // An orphan left by an earlier run: labelled, but no deployment wants it.
    let orphan = ServiceSpec::new(
        ServiceId::new("gone", "c", "b"),
        Deployable {
            deployable_type: None,
            definition: "x".into(),
        },
    );
    h.scheduler
        .inner
        .deploy(orphan, DeployOptions::default())
        .await
        .unwrap();
    let restarted = Harness::controller(&h.store, &h.scheduler, &h.events, &h.gateways, &h.clock);
    for _ in 0..3 {
        h.clock.advance(Duration::from_millis(500));
        restarted.tick().await.unwrap();
    }
    let services = h.scheduler.services().await.unwrap();
    let ids: Vec<String> = services.iter().map(|s| s.spec.id.to_string()).collect();
    assert_eq!(ids.len(), 2, "no orphan and no duplicate: {ids:?}");
    assert!(ids.iter().all(|i| i.starts_with("shop/")));
    assert!(status::is_deployed(
        &h.service("shop", "frontend").await.status
    ));
}

#[tokio::test]
async fn two_control_planes_on_one_store_converge() {
    let h = Harness::new();
    h.deploy(SHOP, "shop").await;
    let other = Harness::controller(&h.store, &h.scheduler, &h.events, &h.gateways, &h.clock);
    let mut conflicts = 0;
    for _ in 0..4 {
        h.clock.advance(Duration::from_millis(500));
        let a = h.controller.tick().await.unwrap();
        let b = other.tick().await.unwrap();
        conflicts += a.conflicts + b.conflicts;
    }
    for c in ["frontend", "backend"] {
        assert!(status::is_deployed(&h.service("shop", c).await.status));
    }
    assert_eq!(h.scheduler.services().await.unwrap().len(), 2);
    let _ = conflicts; // both may have written; a lost write is planned again
}

/// Standalone gateways stored as artifacts go to the gateway side after the deployments'
/// gateways, but one named like a deployment's gateway (the deployment's wins); a pass that
/// changed a deployment gives it anew, one that did not gives the same shared deployment, so
/// the gateway side can skip it.
#[tokio::test]
async fn standalone_gateways_follow_and_unchanged_deployments_stay_shared() {
    let h = Harness::new();
    h.deploy(SHOP, "shop").await;
    for doc in [
        "name: edge\nport: 9100\nroutes: {shop/frontend/web: {weight: 100%}}",
        "name: shop/frontend/web\nport: 9101\nroutes: {'[10.0.0.1:80]': {weight: 100%}}",
    ] {
        let AnyArtifact::Gateway(g) = read_str(doc, Some(ArtifactKind::Gateway))
            .unwrap()
            .remove(0)
        else {
            panic!("not a gateway")
        };
        h.store.create(&g).await.unwrap();
    }
    for _ in 0..4 {
        h.tick().await;
    }
    let pass = h.gateways.1.lock().clone().unwrap();
    let names: Vec<&str> = pass.standalone.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["edge"]);
    let (gateways, _) = h.gateways.0.lock().last().cloned().unwrap();
    let internal: Vec<&Gateway> = gateways
        .iter()
        .filter(|g| g.name == "shop/frontend/web")
        .collect();
    assert_eq!(internal.len(), 1, "{gateways:?}");
    assert_ne!(
        internal[0].port.number, 9101,
        "the deployment's gateway wins"
    );
    assert_eq!(gateways.last().map(|g| g.name.as_str()), Some("edge"));
    // Nothing changes: the next pass gives the same deployment.
    h.tick().await;
    let again = h.gateways.1.lock().clone().unwrap();
    assert!(Arc::ptr_eq(&pass.deployments[0], &again.deployments[0]));
    // A merge changes it: given anew.
    h.deploy(&SHOP.replace("instances: 2", "instances: 3"), "shop")
        .await;
    h.tick().await;
    let changed = h.gateways.1.lock().clone().unwrap();
    assert!(!Arc::ptr_eq(&again.deployments[0], &changed.deployments[0]));
}
