//! SLAs and escalations on the deterministic harness: in-memory store, events and
//! scheduler, a manual clock, one pass at a time.

use std::sync::Arc;
use std::time::Duration;

use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::memory::{InMemoryMetrics, InMemoryPersistence, InMemoryScheduler};
use vamp_core::metrics::EventStore;
use vamp_core::model::*;
use vamp_core::node::Node;
use vamp_core::ops::controller::{Controller, ControllerOptions, ManualClock};
use vamp_core::ops::deploy::{Artifacts, MergeOptions, merge};
use vamp_core::ops::sla::{Signal, SlaController, check, escalate};
use vamp_core::persistence::PersistenceExt;

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

/// Two clusters; `sava` with `scale` and an SLA with `escalations` (YAML, indented for the
/// SLA map).
fn deployment(sla: &str) -> Deployment {
    let yaml = format!(
        "name: shop
clusters:
  sava:
    breed: {{name: 'sava:1.0', deployable: sava, ports: {{webport: 8080/http}}}}
    scale: {{cpu: 0.5, memory: 256MB, instances: 2}}
    sla:
{sla}
  db:
    breed: {{name: 'db:1.0', deployable: db, ports: {{port: 5432/tcp}}}}
    scale: {{cpu: 1, memory: 1024MB, instances: 1}}
"
    );
    merge(
        None,
        "shop",
        &blueprint(&yaml),
        &Artifacts::new(),
        &MergeOptions::new(T0),
    )
    .unwrap()
    .deployment
}

fn scale_of(d: &Deployment, cluster: &str) -> DefaultScale {
    d.clusters
        .iter()
        .find(|c| c.name == cluster)
        .unwrap()
        .services[0]
        .scale
        .clone()
        .unwrap()
}

fn escalations(d: &Deployment) -> Vec<Escalation> {
    d.clusters[0].sla.as_ref().unwrap().escalations().to_vec()
}

const WINDOW: &str = "      type: response_time_sliding_window
      threshold: {upper: 1000, lower: 100}
      window: {interval: 60, cooldown: 60}
";

#[test]
fn the_check_escalates_above_upper_and_de_escalates_below_lower_but_not_at_the_thresholds() {
    let d = deployment(&format!("{WINDOW}      escalations: []\n"));
    let sla = d.clusters[0].sla.clone().unwrap();
    assert_eq!(check(&sla, Some(1000.1)), Some(Signal::Escalate));
    assert_eq!(check(&sla, Some(1000.0)), None, "exactly at upper");
    assert_eq!(check(&sla, Some(500.0)), None);
    assert_eq!(check(&sla, Some(100.0)), None, "exactly at lower");
    assert_eq!(check(&sla, Some(99.9)), Some(Signal::DeEscalate));
    assert_eq!(
        check(&sla, None),
        None,
        "nothing measured: no signal (Vamp de-escalated)"
    );
}

#[test]
fn scale_instances_stays_within_minimum_and_maximum() {
    let d = deployment(&format!(
        "{WINDOW}      escalations:\n      - {{type: scale_instances, minimum: 1, maximum: 3, scale_by: 1}}\n"
    ));
    let e = escalations(&d);
    let up = escalate(&d, "sava", &e, Signal::Escalate, T0).expect("2 → 3");
    assert_eq!(scale_of(&up, "sava").instances, 3);
    assert_eq!(
        up.clusters[0].services[0].status.phase,
        Phase::Initiated {
            since: vamp_core::time::format_epoch_millis(T0)
        },
        "reset so the scheduler gets the new scale"
    );
    assert_eq!(
        escalate(&up, "sava", &e, Signal::Escalate, T0),
        None,
        "at the maximum"
    );
    let down = escalate(&d, "sava", &e, Signal::DeEscalate, T0).expect("2 → 1");
    assert_eq!(scale_of(&down, "sava").instances, 1);
    assert_eq!(
        escalate(&down, "sava", &e, Signal::DeEscalate, T0),
        None,
        "at the minimum"
    );
}

#[test]
fn scale_cpu_and_memory_and_a_target_in_another_cluster() {
    let d = deployment(&format!(
        "{WINDOW}      escalations:\n      - {{type: scale_cpu, minimum: 0.5, maximum: 1.5, scale_by: 0.5}}\n"
    ));
    let up = escalate(&d, "sava", &escalations(&d), Signal::Escalate, T0).unwrap();
    assert_eq!(scale_of(&up, "sava").cpu.0, 1.0);
    assert!(
        escalate(&d, "sava", &escalations(&d), Signal::DeEscalate, T0).is_none(),
        "0.5 − 0.5 is below the minimum"
    );
    let d = deployment(&format!(
        "{WINDOW}      escalations:\n      - {{type: scale_memory, minimum: 512, maximum: 4096, scale_by: 512, target: db}}\n"
    ));
    let up = escalate(&d, "sava", &escalations(&d), Signal::Escalate, T0).unwrap();
    assert_eq!(
        scale_of(&up, "db").memory.0,
        1536.0,
        "the target cluster's service"
    );
    assert_eq!(scale_of(&up, "sava").memory.0, 256.0, "not its own");
}

#[test]
fn to_all_keeps_every_change_and_to_one_takes_the_first_in_order_or_in_reverse() {
    // to_all: instances can grow, cpu is at its maximum. Vamp lost the instance change
    // because the last member did not apply; here it is kept.
    let d = deployment(&format!(
        "{WINDOW}      escalations:\n      - type: to_all\n        escalations:\n        - {{type: scale_instances, minimum: 1, maximum: 5, scale_by: 1}}\n        - {{type: scale_cpu, minimum: 0.1, maximum: 0.5, scale_by: 0.1}}\n"
    ));
    let up = escalate(&d, "sava", &escalations(&d), Signal::Escalate, T0).expect("a change");
    assert_eq!(scale_of(&up, "sava").instances, 3);
    assert_eq!(scale_of(&up, "sava").cpu.0, 0.5);
    // to_one: escalate takes the first that applies, de-escalate the first in reverse order.
    // (Several escalations at the top are read as one to_all, as Vamp's reader did.)
    let d = deployment(&format!(
        "{WINDOW}      escalations:\n      - type: to_one\n        escalations:\n        - {{type: scale_instances, minimum: 1, maximum: 5, scale_by: 1}}\n        - {{type: scale_cpu, minimum: 0.1, maximum: 2, scale_by: 0.25}}\n"
    ));
    let up = escalate(&d, "sava", &escalations(&d), Signal::Escalate, T0).unwrap();
    assert_eq!(
        (scale_of(&up, "sava").instances, scale_of(&up, "sava").cpu.0),
        (3, 0.5)
    );
    let down = escalate(&d, "sava", &escalations(&d), Signal::DeEscalate, T0).unwrap();
    assert_eq!(
        (
            scale_of(&down, "sava").instances,
            scale_of(&down, "sava").cpu.0
        ),
        (2, 0.25)
    );
    // At its maximum, the first member gives way to the second.
    let d = deployment(&format!(
        "{WINDOW}      escalations:\n      - type: to_one\n        escalations:\n        - {{type: scale_instances, minimum: 1, maximum: 2, scale_by: 1}}\n        - {{type: scale_cpu, minimum: 0.1, maximum: 2, scale_by: 0.25}}\n"
    ));
    let up = escalate(&d, "sava", &escalations(&d), Signal::Escalate, T0).unwrap();
    assert_eq!(
        (scale_of(&up, "sava").instances, scale_of(&up, "sava").cpu.0),
        (2, 0.75)
    );
}

struct Loop {
    store: Arc<InMemoryPersistence>,
    events: Arc<InMemoryMetrics>,
    clock: ManualClock,
    sla: SlaController,
}

async fn running(sla_yaml: &str) -> Loop {
    let store = Arc::new(InMemoryPersistence::new());
    let clock = ManualClock::new(T0);
    let c = clock.clone();
    let events = Arc::new(InMemoryMetrics::with_clock(move || c.now()));
    store.create(&deployment(sla_yaml)).await.unwrap();
    // Deployed by the reconcile loop on the in-memory scheduler.
    let controller = Controller::new(
        Arc::clone(&store) as _,
        Arc::new(InMemoryScheduler::new()) as _,
        ControllerOptions::default(),
    )
    .with_clock(Arc::new(clock.clone()));
    controller.tick().await.unwrap();
    clock.advance(Duration::from_secs(1));
    controller.tick().await.unwrap();
    let sla = SlaController::new(Arc::clone(&store) as _, Arc::clone(&events) as _)
        .with_clock(Arc::new(clock.clone()));
    Loop {
        store,
        events,
        clock,
        sla,
    }
}

impl Loop {
    async fn response_time(&self, ms: f64) {
        let mut e = Event::new(
            vec![
                "gateways:shop/sava/webport".into(),
                "metrics:responseTime".into(),
            ],
            Node::Float(ms),
            "metrics",
        );
        e.timestamp = vamp_core::time::format_epoch_millis(self.clock.now());
        self.events.publish(e).await.unwrap();
    }

    async fn instances(&self) -> i64 {
        scale_of(
            &self
                .store
                .get::<Deployment>("shop")
                .await
                .unwrap()
                .unwrap()
                .value,
            "sava",
        )
        .instances
    }
}

#[tokio::test]
async fn a_slow_cluster_is_scaled_up_once_per_cooldown_and_down_when_fast() {
    let l = running(&format!(
        "{WINDOW}      escalations:\n      - {{type: scale_instances, minimum: 1, maximum: 4, scale_by: 1}}\n"
    ))
    .await;
    l.response_time(1500.0).await;
    let r = l.sla.tick().await.unwrap();
    assert_eq!(
        r.signals,
        vec![("shop".into(), "sava".into(), Signal::Escalate)],
        "{r:?}"
    );
    assert_eq!(r.escalations.len(), 1, "{r:?}");
    assert_eq!(l.instances().await, 3);
    // Within interval + cooldown (120 s) of the SLA event: no new signal.
    l.clock.advance(Duration::from_secs(60));
    l.response_time(1500.0).await;
    let r = l.sla.tick().await.unwrap();
    assert!(r.signals.is_empty() && r.escalations.is_empty(), "{r:?}");
    // Past it (only when the services are deployed again: reset them by the reconcile loop).
    l.clock.advance(Duration::from_secs(61));
    let controller = Controller::new(
        Arc::clone(&l.store) as _,
        Arc::new(InMemoryScheduler::new()) as _,
        ControllerOptions::default(),
    )
    .with_clock(Arc::new(l.clock.clone()));
    controller.tick().await.unwrap();
    l.clock.advance(Duration::from_secs(1));
    controller.tick().await.unwrap();
    l.response_time(50.0).await;
    let r = l.sla.tick().await.unwrap();
    assert_eq!(
        r.signals,
        vec![("shop".into(), "sava".into(), Signal::DeEscalate)],
        "{r:?}"
    );
    assert_eq!(l.instances().await, 2);
}

#[tokio::test]
async fn escalation_only_slas_follow_posted_events() {
    let l = running(
        "      type: escalation_only\n      escalations:\n      - {type: scale_instances, minimum: 1, maximum: 4, scale_by: 1}\n",
    )
    .await;
    // No check of its own.
    l.response_time(5000.0).await;
    let r = l.sla.tick().await.unwrap();
    assert!(r.signals.is_empty() && r.escalations.is_empty(), "{r:?}");
    // A posted escalate event scales up; one for another cluster does nothing here.
    l.clock.advance(Duration::from_secs(1));
    for (cluster, signal) in [("sava", Signal::Escalate), ("db", Signal::Escalate)] {
        let e = vamp_core::ops::sla::sla_event("shop", cluster, signal, l.clock.now());
        l.events.publish(e).await.unwrap();
    }
    let r = l.sla.tick().await.unwrap();
    assert_eq!(
        r.escalations,
        vec![("shop".into(), "sava".into(), Signal::Escalate)],
        "{r:?}"
    );
    assert_eq!(l.instances().await, 3);
    // Each event is applied once.
    l.clock.advance(Duration::from_secs(1));
    assert!(l.sla.tick().await.unwrap().escalations.is_empty());
    assert_eq!(l.instances().await, 3);
}
