//! Workflows on the deterministic harness: in-memory store, events and scheduler (which
//! records one-shot runs), a manual clock, one pass at a time.

use std::sync::Arc;
use std::time::Duration;

use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::memory::{InMemoryMetrics, InMemoryPersistence, InMemoryScheduler};
use vamp_core::metrics::EventStore;
use vamp_core::model::*;
use vamp_core::node::Node;
use vamp_core::ops::controller::ManualClock;
use vamp_core::ops::workflow::{WorkflowController, WorkflowOptions, recorded_error, service_id};
use vamp_core::persistence::PersistenceExt;
use vamp_core::scheduler::ContainerScheduler;

const T0: i64 = 1_800_000_000_000;

struct Harness {
    store: Arc<InMemoryPersistence>,
    scheduler: Arc<InMemoryScheduler>,
    events: Arc<InMemoryMetrics>,
    clock: ManualClock,
    workflows: WorkflowController,
}

fn workflow(schedule: &str) -> Workflow {
    let yaml = format!(
        "name: tick\nbreed:\n  name: tick\n  deployable: command://echo tick\n  environment_variables: {{GREETING: hello}}\nschedule:\n{schedule}"
    );
    match read_str(&yaml, Some(ArtifactKind::Workflow))
        .unwrap()
        .remove(0)
    {
        AnyArtifact::Workflow(w) => w,
        other => panic!("{other:?}"),
    }
}

async fn harness(schedule: &str) -> Harness {
    let store = Arc::new(InMemoryPersistence::new());
    let scheduler = Arc::new(InMemoryScheduler::new());
    let clock = ManualClock::new(T0);
    let c = clock.clone();
    let events = Arc::new(InMemoryMetrics::with_clock(move || c.now()));
    store.create(&workflow(schedule)).await.unwrap();
    let mut options = WorkflowOptions::default();
    options
        .environment
        .insert("VAMP_KEY_VALUE_STORE_URL".into(), "etcd://etcd:2379".into());
    let workflows = WorkflowController::new(
        Arc::clone(&store) as _,
        Arc::clone(&scheduler) as _,
        Arc::clone(&events) as _,
        options,
    )
    .with_clock(Arc::new(clock.clone()));
    Harness {
        store,
        scheduler,
        events,
        clock,
        workflows,
    }
}

impl Harness {
    async fn pass(&self) -> usize {
        let out = self.workflows.tick().await.unwrap();
        out.iter()
            .map(|o| {
                assert_eq!(o.error, None, "{o:?}");
                o.runs
            })
            .sum()
    }

    async fn status(&self) -> Option<WorkflowStatus> {
        self.store
            .get::<Workflow>("tick")
            .await
            .unwrap()
            .map(|w| w.value.status)
    }

    async fn set_status(&self, status: WorkflowStatus) {
        let v = self.store.get::<Workflow>("tick").await.unwrap().unwrap();
        let mut w = v.value;
        w.status = status;
        self.store.update(&w, v.version).await.unwrap();
    }

    /// Passes every second for `seconds`: the runs started.
    async fn run_for(&self, seconds: u64) -> usize {
        let mut runs = 0;
        for _ in 0..seconds {
            self.clock.advance(Duration::from_secs(1));
            runs += self.pass().await;
        }
        runs
    }
}

#[tokio::test]
async fn a_time_workflow_runs_the_expected_number_of_times_in_a_window() {
    let h = harness("  time: {period: PT10S, repeat: 3}\n").await;
    assert_eq!(h.pass().await, 1, "the first run at the start");
    assert_eq!(h.status().await, Some(WorkflowStatus::Running));
    assert_eq!(h.run_for(9).await, 0);
    assert_eq!(h.run_for(1).await, 1, "10 s later");
    assert_eq!(h.run_for(60).await, 1, "the third and last");
    let runs = h.scheduler.started_runs();
    assert_eq!(runs.len(), 3);
    let env = &runs[0].environment;
    assert_eq!(env["VAMP_WORKFLOW_EXECUTION_PERIOD"], "10");
    assert_eq!(env["VAMP_WORKFLOW_NAME"], "tick");
    assert_eq!(env["GREETING"], "hello");
    assert!(env.contains_key("VAMP_URL"));
    assert_eq!(env["VAMP_KEY_VALUE_STORE_URL"], "etcd://etcd:2379");

    let forever = harness("  time: {period: PT10S}\n").await;
    forever.pass().await;
    assert_eq!(forever.run_for(60).await, 6, "at 10, 20, … 60 s");
    // A late pass runs once, not once per missed period.
    forever.clock.advance(Duration::from_secs(35));
    assert_eq!(forever.pass().await, 1);
    assert_eq!(forever.run_for(4).await, 0, "the next at 100 s");
    assert_eq!(forever.run_for(1).await, 1);
}

#[tokio::test]
async fn a_time_workflow_waits_for_its_start() {
    let start = vamp_core::time::format_epoch_millis(T0 + 30_000);
    let h = harness(&format!(
        "  time: {{period: PT10S, repeat: 2, start: '{start}'}}\n"
    ))
    .await;
    assert_eq!(h.pass().await, 0);
    assert_eq!(h.run_for(29).await, 0);
    assert_eq!(h.run_for(1).await, 1, "at the start");
    assert_eq!(h.run_for(30).await, 1);
}

#[tokio::test]
async fn an_event_workflow_runs_once_per_matching_event() {
    let h = harness("  event: {tags: [deploy, 'team:web']}\n").await;
    assert_eq!(h.pass().await, 0);
    let publish = async |tags: &[&str], value: i64| {
        let mut e = Event::new(
            tags.iter().map(|t| (*t).to_owned()).collect(),
            Node::Int(value),
            "event",
        );
        e.timestamp = vamp_core::time::format_epoch_millis(h.clock.now());
        h.events.publish(e).await.unwrap();
    };
    h.clock.advance(Duration::from_secs(1));
    publish(&["deploy", "team:web"], 1).await;
    publish(&["deploy"], 2).await; // not every tag
    publish(&["deploy", "team:web", "extra"], 3).await;
    assert_eq!(h.pass().await, 2);
    assert_eq!(h.run_for(5).await, 0, "each event once");
    let runs = h.scheduler.started_runs();
    assert!(
        runs[0].environment["VAMP_WORKFLOW_EVENT"].contains("\"value\":1"),
        "{:?}",
        runs[0].environment
    );
    assert!(runs[1].environment["VAMP_WORKFLOW_EVENT"].contains("\"value\":3"));
}

#[tokio::test]
async fn a_daemon_is_deployed_suspended_restarted_and_stopped() {
    let h = harness("  daemon\n").await;
    h.pass().await;
    let id = service_id(&workflow("  daemon\n"));
    let deployed = h.scheduler.service(&id).await.unwrap().expect("deployed");
    assert_eq!(
        deployed.spec.environment["VAMP_WORKFLOW_EXECUTION_PERIOD"],
        "0"
    );
    assert_eq!(h.status().await, Some(WorkflowStatus::Running));
    h.set_status(WorkflowStatus::Suspending).await;
    h.pass().await;
    assert_eq!(h.status().await, Some(WorkflowStatus::Suspended));
    assert!(h.scheduler.service(&id).await.unwrap().is_none());
    h.set_status(WorkflowStatus::Restarting(None)).await;
    h.pass().await;
    assert_eq!(
        h.status().await,
        Some(WorkflowStatus::Restarting(Some(RestartingPhase::Starting)))
    );
    h.pass().await;
    assert_eq!(h.status().await, Some(WorkflowStatus::Running));
    assert!(h.scheduler.service(&id).await.unwrap().is_some());
    h.set_status(WorkflowStatus::Stopping).await;
    h.pass().await;
    assert_eq!(h.status().await, None, "a stopped workflow is deleted");
    assert!(h.scheduler.service(&id).await.unwrap().is_none());
}

/// Vamp's usual form: the breed by reference to a stored one. It runs; a missing breed is an
/// error on the workflow's outcome and one event (not one per pass), and the stored workflow
/// keeps its reference.
#[tokio::test]
async fn a_breed_by_reference_is_read_from_the_store_and_a_missing_one_is_reported() {
    let h = harness("  time: {period: PT10S}\n").await;
    let yaml = "name: by-ref\nbreed: stored-breed\nschedule:\n  time: {period: PT10S}\n";
    let AnyArtifact::Workflow(w) = read_str(yaml, Some(ArtifactKind::Workflow))
        .unwrap()
        .remove(0)
    else {
        panic!("a workflow");
    };
    h.store.create(&w).await.unwrap();
    let errors = async || {
        let out = h.workflows.tick().await.unwrap();
        out.into_iter()
            .find(|o| o.workflow == "by-ref")
            .unwrap()
            .error
    };
    let e = errors().await.expect("the breed is missing");
    assert!(e.contains("'stored-breed' is not stored"), "{e}");
    h.clock.advance(Duration::from_secs(1));
    assert!(errors().await.is_some());
    let query = EventQuery {
        tags: vec!["workflows:by-ref".into(), "error".into()],
        event_type: None,
        timestamp: None,
        aggregator: None,
    };
    let reported = h.events.query(&query, Default::default()).await.unwrap();
    assert_eq!(
        reported.len(),
        1,
        "one event for the same error: {reported:?}"
    );
    // The error is stored on the workflow (what its status route shows, on every replica).
    let recorded = async || {
        let w = h
            .store
            .get::<Workflow>("by-ref")
            .await
            .unwrap()
            .unwrap()
            .value;
        recorded_error(&w).map(str::to_owned)
    };
    let shown = recorded()
        .await
        .expect("the error recorded on the workflow");
    assert!(shown.contains("'stored-breed' is not stored"), "{shown}");
    // The breed is stored: the workflow runs, and is stored with its reference still.
    let breed = "name: stored-breed\ndeployable: command://echo stored\n";
    let AnyArtifact::Breed(b) = read_str(breed, Some(ArtifactKind::Breed))
        .unwrap()
        .remove(0)
    else {
        panic!("a breed");
    };
    h.store.create(&b).await.unwrap();
    h.clock.advance(Duration::from_secs(1));
    assert_eq!(errors().await, None);
    let runs = h.scheduler.started_runs();
    assert!(
        runs.iter()
            .any(|r| r.deployable.definition == "command://echo stored"),
        "{runs:?}"
    );
    let stored = h
        .store
        .get::<Workflow>("by-ref")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(stored.breed, Ref::Reference("stored-breed".into()));
    assert_eq!(stored.status, WorkflowStatus::Running);
    assert_eq!(recorded().await, None, "the error is cleared once it runs");
}

/// `repeat: 1` runs once across a restart of the control plane: the run count is stored on
/// the workflow (its metadata) before the run starts, and a new loop reads it.
#[tokio::test]
async fn a_run_count_survives_a_restart_of_the_loop() {
    let h = harness("  time: {period: PT10S, repeat: 1}\n").await;
    assert_eq!(h.run_for(30).await, 1);
    let stored = h
        .store
        .get::<Workflow>("tick")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        stored.metadata.get(vamp_core::ops::workflow::RUNS_KEY),
        Some(&Node::Int(1))
    );
    assert!(
        stored
            .metadata
            .contains_key(vamp_core::ops::workflow::LAST_RUN_KEY)
    );
    // A new loop (a restarted control plane) on the same store.
    let restarted = WorkflowController::new(
        Arc::clone(&h.store) as _,
        Arc::clone(&h.scheduler) as _,
        Arc::clone(&h.events) as _,
        WorkflowOptions::default(),
    )
    .with_clock(Arc::new(h.clock.clone()));
    let before = h.scheduler.started_runs().len();
    for _ in 0..60 {
        h.clock.advance(Duration::from_secs(1));
        let out = restarted.tick().await.unwrap();
        assert!(out.iter().all(|o| o.error.is_none()), "{out:?}");
    }
    assert_eq!(
        h.scheduler.started_runs().len(),
        before,
        "no second run after the restart"
    );
}
