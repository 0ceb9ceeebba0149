//! Canary releases on the deterministic harness: in-memory store and metrics, a manual clock,
//! one pass at a time, request records fed straight into the metrics store.

use std::sync::Arc;
use std::time::Duration;

use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::lookup::route_lookup_name;
use vamp_core::memory::{InMemoryMetrics, InMemoryPersistence};
use vamp_core::metrics::{EventStore, MetricsStore, RequestRecord};
use vamp_core::model::*;
use vamp_core::ops::canary::{CanaryController, Verdict};
use vamp_core::ops::controller::ManualClock;
use vamp_core::ops::deploy::{Artifacts, MergeOptions, merge};
use vamp_core::persistence::{ListOptions, PersistenceExt};

const T0: i64 = 1_800_000_000_000;
const GATEWAY: &str = "sava/sava/webport";
const STABLE: &str = "sava/sava/sava:1.0/webport";
const CANARY: &str = "sava/sava/sava:1.1/webport";

struct Harness {
    store: Arc<InMemoryPersistence>,
    metrics: Arc<InMemoryMetrics>,
    clock: ManualClock,
    controller: CanaryController,
}

fn blueprint(version: &str) -> DefaultBlueprint {
    let yaml = format!(
        "name: sava\nclusters:\n  sava:\n    breed: {{name: 'sava:{version}', deployable: sava, ports: {{webport: 8080/http}}}}\n"
    );
    match read_str(&yaml, Some(ArtifactKind::Blueprint))
        .unwrap()
        .remove(0)
    {
        AnyArtifact::Blueprint(b) => b,
        other => panic!("{other:?}"),
    }
}

fn policy(extra: &str) -> CanaryPolicy {
    let yaml = format!(
        "name: sava\ngateway: {GATEWAY}\nstable: {STABLE}\ncanary: {CANARY}\nsteps: [10%, 50%, 100%]\ninterval: 30s\nminimum_requests: 100\n{extra}"
    );
    match read_str(&yaml, Some(ArtifactKind::CanaryPolicy))
        .unwrap()
        .remove(0)
    {
        AnyArtifact::CanaryPolicy(c) => c,
        other => panic!("{other:?}"),
    }
}

fn controller(
    h_store: &Arc<InMemoryPersistence>,
    metrics: &Arc<InMemoryMetrics>,
    clock: &ManualClock,
) -> CanaryController {
    CanaryController::new(Arc::clone(h_store) as _, Arc::clone(metrics) as _)
        .with_events(Arc::clone(metrics) as _)
        .with_clock(Arc::new(clock.clone()))
}

async fn harness(policy: CanaryPolicy) -> Harness {
    let store = Arc::new(InMemoryPersistence::new());
    let clock = ManualClock::new(T0);
    let c = clock.clone();
    let metrics = Arc::new(InMemoryMetrics::with_clock(move || c.now()));
    let v1 = merge(
        None,
        "sava",
        &blueprint("1.0"),
        &Artifacts::new(),
        &MergeOptions::new(T0),
    )
    .unwrap();
    let v2 = merge(
        Some(&v1.deployment),
        "sava",
        &blueprint("1.1"),
        &Artifacts::new(),
        &MergeOptions::new(T0),
    )
    .unwrap();
    store.create(&v2.deployment).await.unwrap();
    store.create(&policy).await.unwrap();
    let controller = controller(&store, &metrics, &clock);
    Harness {
        store,
        metrics,
        clock,
        controller,
    }
}

impl Harness {
    /// `n` requests on `route` in the last seconds, `errors` of them 5xx, each taking `ms`.
    async fn traffic(&self, route: &str, n: u64, errors: u64, ms: u64) {
        let frontend = route_lookup_name(GATEWAY, &GatewayPath::new(route).segments);
        let now = self.clock.now();
        let records = (0..n)
            .map(|i| RequestRecord {
                timestamp_ms: now - 1 - (i % 1000) as i64,
                frontend: frontend.clone(),
                backend: "b".into(),
                server: None,
                status: Some(if i < errors { 503 } else { 200 }),
                total_time_ms: ms,
                bytes_read: 0,
            })
            .collect();
        self.metrics.record(records).await.unwrap();
    }

    /// One interval of traffic on both routes, then a pass; the verdict.
    async fn interval(&self, stable: (u64, u64, u64), canary: (u64, u64, u64)) -> Verdict {
        self.clock.advance(Duration::from_secs(30));
        self.traffic(STABLE, stable.0, stable.1, stable.2).await;
        self.traffic(CANARY, canary.0, canary.1, canary.2).await;
        self.pass().await
    }

    async fn pass(&self) -> Verdict {
        let out = self.controller.tick().await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].error, None, "{out:?}");
        out[0].verdict
    }

    /// The weights of (stable, canary) in the deployment's gateway.
    async fn weights(&self) -> (u8, u8) {
        let mut d = self
            .store
            .get::<Deployment>("sava")
            .await
            .unwrap()
            .unwrap()
            .value;
        vamp_core::ops::deploy::normalize(&mut d);
        let g = d.clusters[0]
            .gateways
            .iter()
            .find(|g| g.name == GATEWAY)
            .unwrap();
        let w = |p: &str| {
            g.routes
                .iter()
                .find_map(|r| match r {
                    Route::Default(d)
                        if d.path.normalized() == GatewayPath::new(p).normalized() =>
                    {
                        d.weight.map(|w| w.0)
                    }
                    _ => None,
                })
                .unwrap()
        };
        (w(STABLE), w(CANARY))
    }

    async fn status(&self) -> CanaryStatus {
        self.store
            .get::<CanaryPolicy>("sava")
            .await
            .unwrap()
            .unwrap()
            .value
            .status
    }

    async fn events(&self, verdict: &str) -> Vec<Event> {
        let q = EventQuery {
            tags: vec!["canary-policies:sava".into(), format!("canary:{verdict}")],
            event_type: Some("canary".into()),
            timestamp: None,
            aggregator: None,
        };
        self.metrics.query(&q, ListOptions::all()).await.unwrap()
    }
}

const HEALTHY: (u64, u64, u64) = (400, 0, 20);

#[tokio::test]
async fn a_healthy_canary_is_promoted_through_every_step() {
    let h = harness(policy(
        "gates:\n  error_rate: 5%\n  relative:\n    error_rate: 1%\n    response_time: {percentile: 95, margin: 20%}\n",
    ))
    .await;
    assert_eq!(h.weights().await, (100, 0));
    assert_eq!(h.pass().await, Verdict::Started);
    assert_eq!(h.weights().await, (90, 10));
    // Not due before the interval.
    assert_eq!(h.pass().await, Verdict::Idle);
    assert_eq!(h.interval(HEALTHY, (400, 1, 21)).await, Verdict::Advanced);
    assert_eq!(h.weights().await, (50, 50));
    // The next step is 100%: passing at 50% promotes.
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Promoted);

    assert_eq!(h.status().await.phase, CanaryPhase::Promoted);
    assert_eq!(h.weights().await, (0, 100));
    // Over: nothing more happens.
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Idle);
    // Every decision is an event with its figures.
    let promoted = h.events("promoted").await;
    assert_eq!(promoted.len(), 1);
    let value = promoted[0].value.to_json();
    assert_eq!(value["canary"]["requests"], 400, "{value}");
    assert_eq!(value["gates"].as_array().unwrap().len(), 3, "{value}");
    assert_eq!(h.events("advanced").await.len(), 1);
}

#[tokio::test]
async fn a_canary_with_a_higher_error_rate_is_rolled_back_within_the_configured_checks() {
    let h = harness(policy(
        "failures: 2\ngates:\n  relative:\n    error_rate: 1%\n",
    ))
    .await;
    assert_eq!(h.pass().await, Verdict::Started);
    // 10% errors against none: the first check fails, the second rolls back.
    assert_eq!(h.interval(HEALTHY, (400, 40, 20)).await, Verdict::Held);
    assert_eq!(h.status().await.failed_checks, 1);
    assert_eq!(h.weights().await, (90, 10), "held: the weights stay");
    assert_eq!(
        h.interval(HEALTHY, (400, 40, 20)).await,
        Verdict::RolledBack
    );
    assert_eq!(
        h.weights().await,
        (100, 0),
        "the stable route has all traffic again"
    );
    let s = h.status().await;
    assert_eq!(s.phase, CanaryPhase::RolledBack);
    assert!(s.reason.unwrap().contains("error rate 10.00%"));
    assert_eq!(h.events("rolled_back").await.len(), 1);
}

#[tokio::test]
async fn a_failed_check_followed_by_a_passing_one_starts_the_count_again() {
    let h = harness(policy(
        "failures: 2\ngates:\n  relative:\n    error_rate: 1%\n",
    ))
    .await;
    h.pass().await;
    assert_eq!(h.interval(HEALTHY, (400, 40, 20)).await, Verdict::Held);
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Advanced);
    assert_eq!(h.status().await.failed_checks, 0);
    assert_eq!(h.interval(HEALTHY, (400, 40, 20)).await, Verdict::Held);
}

#[tokio::test]
async fn a_canary_with_higher_latency_percentiles_is_rolled_back() {
    let h = harness(policy(
        "failures: 1\ngates:\n  relative:\n    response_time: {percentile: 95, margin: 20%}\n",
    ))
    .await;
    h.pass().await;
    // Same errors, three times slower.
    assert_eq!(
        h.interval((400, 0, 100), (400, 0, 300)).await,
        Verdict::RolledBack
    );
    assert_eq!(h.weights().await, (100, 0));
    assert!(h.status().await.reason.unwrap().contains("p95"));
}

#[tokio::test]
async fn an_absolute_latency_gate_fails_a_slow_canary_and_passes_one_at_the_limit() {
    let slow = harness(policy(
        "failures: 1\ngates:\n  response_time: {percentile: 95, maximum: 200ms}\n",
    ))
    .await;
    slow.pass().await;
    assert_eq!(
        slow.interval(HEALTHY, (400, 0, 201)).await,
        Verdict::RolledBack
    );
    let at_limit = harness(policy(
        "failures: 1\ngates:\n  response_time: {percentile: 95, maximum: 200ms}\n",
    ))
    .await;
    at_limit.pass().await;
    assert_eq!(
        at_limit.interval(HEALTHY, (400, 0, 200)).await,
        Verdict::Advanced,
        "exactly at the maximum passes"
    );
}

#[tokio::test]
async fn an_error_rate_exactly_at_the_threshold_passes_and_clearly_above_fails() {
    let h = harness(policy("failures: 1\ngates:\n  error_rate: 5%\n")).await;
    h.pass().await;
    assert_eq!(
        h.interval(HEALTHY, (400, 20, 20)).await,
        Verdict::Advanced,
        "5.0% of 400 at a 5% limit"
    );
    assert_eq!(
        h.interval(HEALTHY, (400, 60, 20)).await,
        Verdict::RolledBack,
        "15% of 400"
    );
}

#[tokio::test]
async fn a_canary_with_too_few_requests_waits_instead_of_deciding() {
    let h = harness(policy(
        "failures: 1\ngates:\n  relative:\n    error_rate: 1%\n",
    ))
    .await;
    h.pass().await;
    // 50 requests with 20% errors: below the minimum of 100, no verdict either way.
    assert_eq!(
        h.interval((50, 0, 20), (50, 10, 20)).await,
        Verdict::Waiting
    );
    let s = h.status().await;
    assert_eq!(
        (s.step, s.failed_checks, s.phase),
        (Some(0), 0, CanaryPhase::Progressing)
    );
    assert!(s.reason.unwrap().contains("too few requests"));
    assert_eq!(h.weights().await, (90, 10));
    // The traffic accumulates across the wait: the next check sees both intervals (10 errors
    // in 1050 requests, within the 1% margin).
    assert_eq!(
        h.interval((1000, 0, 20), (1000, 0, 20)).await,
        Verdict::Advanced
    );
    let advanced = h.events("advanced").await;
    assert_eq!(advanced[0].value.to_json()["canary"]["requests"], 1050);
}

#[tokio::test]
async fn a_restarted_control_plane_resumes_at_the_same_step() {
    let h = harness(policy("gates:\n  relative:\n    error_rate: 1%\n")).await;
    h.pass().await;
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Advanced);
    assert_eq!(h.weights().await, (50, 50));
    // A new loop on the same store (the control plane restarted).
    let restarted = controller(&h.store, &h.metrics, &h.clock);
    h.clock.advance(Duration::from_secs(30));
    h.traffic(STABLE, 400, 0, 20).await;
    h.traffic(CANARY, 400, 0, 20).await;
    let out = restarted.tick().await.unwrap();
    assert_eq!(
        out[0].verdict,
        Verdict::Promoted,
        "from 50%, not from the first step"
    );
    assert_eq!(
        h.weights().await,
        (0, 100),
        "from 50% to the last step, not from the first"
    );
}

#[tokio::test]
async fn pause_resume_and_abort_through_the_status() {
    let h = harness(policy("gates:\n  relative:\n    error_rate: 1%\n")).await;
    h.pass().await;
    let set_phase = async |phase: CanaryPhase| {
        let v = h.store.get::<CanaryPolicy>("sava").await.unwrap().unwrap();
        let mut p = v.value;
        p.status.phase = phase;
        h.store.update(&p, v.version).await.unwrap();
    };
    set_phase(CanaryPhase::Paused).await;
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Idle);
    assert_eq!(h.weights().await, (90, 10));
    set_phase(CanaryPhase::Progressing).await;
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Advanced);
    set_phase(CanaryPhase::Aborted).await;
    assert_eq!(h.pass().await, Verdict::Aborted);
    assert_eq!(h.weights().await, (100, 0));
    assert_eq!(h.pass().await, Verdict::Idle, "aborted once");
}

#[tokio::test]
async fn sticky_sessions_and_slicing_the_stable_version_at_promotion() {
    let h = harness(CanaryPolicy {
        steps: vec![100],
        ..policy("sticky: true\nslice_stable: true\ngates:\n  error_rate: 5%\n")
    })
    .await;
    assert_eq!(h.pass().await, Verdict::Started);
    let sticky = |d: &Deployment| d.clusters[0].gateways[0].sticky;
    let d = h
        .store
        .get::<Deployment>("sava")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(sticky(&d), Some(Sticky::Route));
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Promoted);
    let d = h
        .store
        .get::<Deployment>("sava")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(sticky(&d), None, "stickiness ends with the release");
    let v10 = d.clusters[0]
        .services
        .iter()
        .find(|s| s.breed.name == "sava:1.0")
        .unwrap();
    assert_eq!(
        v10.status.intention,
        Intention::Undeployment,
        "1.0 is sliced out"
    );
}

#[tokio::test]
async fn a_last_step_below_100_is_a_maximum_and_promotion_gives_the_canary_everything() {
    let h = harness(CanaryPolicy {
        steps: vec![25, 50],
        ..policy("gates:\n  relative:\n    error_rate: 1%\n")
    })
    .await;
    assert_eq!(h.pass().await, Verdict::Started);
    assert_eq!(h.weights().await, (75, 25));
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Advanced);
    assert_eq!(h.weights().await, (50, 50));
    assert_eq!(h.interval(HEALTHY, HEALTHY).await, Verdict::Promoted);
    assert_eq!(h.weights().await, (0, 100));
}

#[tokio::test]
async fn at_100_percent_relative_gates_are_not_judged_the_absolute_ones_are() {
    // A switch: all traffic to the canary at once, judged on its own error rate only.
    let h = harness(CanaryPolicy {
        steps: vec![100],
        ..policy("failures: 1\ngates:\n  error_rate: 5%\n  relative:\n    error_rate: 1%\n")
    })
    .await;
    assert_eq!(h.pass().await, Verdict::Started);
    assert_eq!(h.weights().await, (0, 100));
    // No stable traffic at all: not a reason to wait.
    assert_eq!(
        h.interval((0, 0, 20), (400, 0, 20)).await,
        Verdict::Promoted
    );
    let failing = harness(CanaryPolicy {
        steps: vec![100],
        ..policy("failures: 1\ngates:\n  error_rate: 5%\n  relative:\n    error_rate: 1%\n")
    })
    .await;
    failing.pass().await;
    assert_eq!(
        failing.interval((0, 0, 20), (400, 60, 20)).await,
        Verdict::RolledBack
    );
    assert_eq!(failing.weights().await, (100, 0));
}
