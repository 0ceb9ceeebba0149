//! The reconciler: one pass over 10,000 services in 1,000 deployments with 10,000 gateways,
//! in steady state (everything deployed and running) — the plan alone, and a whole pass
//! (plan, and apply and record on the in-memory store and scheduler).
//!
//! `cargo bench -p vamp-benches --bench reconcile`

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput};
use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::memory::{InMemoryPersistence, InMemoryScheduler};
use vamp_core::model::{ArtifactKind, Deployment};
use vamp_core::ops::controller::{Controller, ControllerOptions, ManualClock};
use vamp_core::ops::deploy::{Artifacts, MergeOptions, merge};
use vamp_core::ops::reconcile::{ReconcileOptions, plan};
use vamp_core::ops::resolve::Lookups;
use vamp_core::persistence::PersistenceExt;
use vamp_core::scheduler::ContainerScheduler;

const T0: i64 = 1_800_000_000_000;
const DEPLOYMENTS: usize = 1_000;
const CLUSTERS: usize = 10;

/// A deployment of ten clusters, each one service with one port (one internal gateway), the
/// first nine depending on the last through `$c9.host:$c9.ports.web`.
fn blueprint(d: usize) -> String {
    let mut y = format!("name: d{d}\nclusters:\n");
    for c in 0..CLUSTERS {
        y.push_str(&format!(
            "  c{c}:\n    breed:\n      name: 'd{d}c{c}:1.0'\n      deployable: 'img{c}'\n      ports: {{web: 8080/http}}\n"
        ));
        if c + 1 < CLUSTERS {
            y.push_str(&format!(
                "      environment_variables: {{UPSTREAM: 'http://$c{last}.host:$c{last}.ports.web'}}\n      dependencies: {{c{last}: 'd{d}c{last}:1.0'}}\n",
                last = CLUSTERS - 1
            ));
        }
    }
    y
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = Arc::new(InMemoryPersistence::new());
    let scheduler = Arc::new(InMemoryScheduler::new());
    let clock = ManualClock::new(T0);
    let mut used = Artifacts::new();
    let opts = MergeOptions::new(T0).with_port_range(20_000, 40_000);
    rt.block_on(async {
        for d in 0..DEPLOYMENTS {
            let AnyArtifact::Blueprint(bp) = read_str(&blueprint(d), Some(ArtifactKind::Blueprint))
                .expect("blueprint")
                .remove(0)
            else {
                unreachable!()
            };
            let m = merge(None, &format!("d{d}"), &bp, &used, &opts).expect("merge");
            used = used.with_gateways(m.deployment.clusters.iter().flat_map(|c| &c.gateways));
            store.create(&m.deployment).await.expect("store");
        }
    });
    let controller = Controller::new(
        Arc::clone(&store) as _,
        Arc::clone(&scheduler) as _,
        ControllerOptions::default(),
    )
    .with_clock(Arc::new(clock.clone()));
    // Deploy everything and reach the steady state.
    rt.block_on(async {
        for _ in 0..4 {
            clock.advance(std::time::Duration::from_secs(1));
            controller.tick().await.expect("tick");
        }
    });
    let deployments: Vec<Deployment> = rt.block_on(async {
        store
            .list_all::<Deployment>()
            .await
            .expect("list")
            .into_iter()
            .map(|v| v.value)
            .collect()
    });
    let observed = rt.block_on(scheduler.services()).expect("services");
    let services: usize = deployments
        .iter()
        .map(|d| d.clusters.iter().map(|c| c.services.len()).sum::<usize>())
        .sum();
    let gateways: usize = deployments
        .iter()
        .map(|d| d.clusters.iter().map(|c| c.gateways.len()).sum::<usize>())
        .sum();
    assert_eq!(
        (services, gateways, observed.len()),
        (10_000, 10_000, 10_000)
    );
    let settled = plan(
        &deployments,
        &observed,
        &BTreeSet::new(),
        clock.now(),
        &ReconcileOptions::default(),
        &Lookups::default(),
    );
    assert!(
        settled.actions.is_empty() && settled.store.is_empty(),
        "steady state: {} actions, {} writes",
        settled.actions.len(),
        settled.store.len()
    );

    let mut g = c.benchmark_group("reconcile");
    g.sample_size(10);
    g.throughput(Throughput::Elements(services as u64));
    g.bench_function("plan/10000_services", |b| {
        b.iter(|| {
            plan(
                black_box(&deployments),
                black_box(&observed),
                &BTreeSet::new(),
                clock.now(),
                &ReconcileOptions::default(),
                &Lookups::default(),
            )
        })
    });
    g.bench_function("clone_deployments/10000_services", |b| {
        b.iter(|| black_box(&deployments).clone())
    });
    g.bench_function("tick_in_memory/10000_services", |b| {
        b.iter(|| rt.block_on(controller.tick()).expect("tick"))
    });
    g.finish();
    c.final_summary();
}
