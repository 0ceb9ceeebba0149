//! The gateway driver against the in-memory key-value and event stores.

mod support;

use std::sync::Arc;

use futures_util::FutureExt;
use support::*;
use vamp_core::kv::{KeyValueStore, KeyValueStoreExt, keys};
use vamp_core::memory::{InMemoryKv, InMemoryMetrics};
use vamp_core::metrics::{DynEventStore, EventStore};
use vamp_core::model::{EventQuery, Gateway};
use vamp_core::persistence::ListOptions;
use vamp_haproxy::driver::{GatewayDriver, Marshaller, PushError};
use vamp_haproxy::{RenderOptions, render};

fn sava(port: u16, weights: (u8, u8)) -> Gateway {
    let g = gateway(&format!(
        "name: sava{port}\nport: {port}\nroutes:\n  sava:1.0: {{weight: {}%}}\n  sava:1.1: {{weight: {}%}}\n",
        weights.0, weights.1
    ));
    with_targets(
        with_targets(g, 0, vec![target("a", None, 31001)]),
        1,
        vec![target("b", None, 31002)],
    )
}

async fn tagged(events: &InMemoryMetrics, tags: &[&str]) -> usize {
    events
        .query(
            &EventQuery {
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                event_type: None,
                timestamp: None,
                aggregator: None,
            },
            ListOptions::all(),
        )
        .await
        .unwrap()
        .len()
}

#[test]
fn pushes_write_what_changed_and_say_what_was_deployed() {
    async {
        let kv = Arc::new(InMemoryKv::new());
        let events = Arc::new(InMemoryMetrics::new());
        let options = RenderOptions::default().with_socket_dir("/run/vamp");
        let driver = GatewayDriver::new(
            Arc::clone(&kv) as Arc<vamp_core::kv::DynKeyValueStore>,
            "default",
            vec![
                Marshaller::new("1.7").with_options(options.clone()),
                Marshaller::new("2.6").with_options(options.clone().with_bind_address("127.0.0.1")),
            ],
        )
        .with_events(Arc::clone(&events) as Arc<DynEventStore>);
        let config_key = keys::haproxy_configuration("default", "1.7").unwrap();

        // First push: everything is new.
        let gateways = vec![sava(9050, (90, 10)), sava(9060, (100, 0))];
        let report = driver.push(&gateways).await.unwrap();
        assert!(report.gateways_written);
        assert_eq!(report.configurations_written, ["1.7", "2.6"]);
        assert_eq!(report.deployed, ["sava9050", "sava9060"]);
        assert!(report.undeployed.is_empty());
        let written = kv.get_string(&config_key).await.unwrap().unwrap();
        assert_eq!(written, render(&gateways, &options).unwrap().render());
        assert_haproxy_accepts(&written);
        let pulled = driver.pull().await.unwrap().unwrap();
        assert_eq!(pulled.as_array().unwrap().len(), 2);
        assert_eq!(pulled[0]["name"], "sava9050");
        assert_eq!(tagged(&events, &["gateways:sava9050", "deployed"]).await, 1);
        assert_eq!(
            tagged(&events, &["marshaller:configuration", "name:1.7"]).await,
            1
        );

        // The same again: nothing written (versions unchanged), no events.
        let version = kv.get(&config_key).await.unwrap().unwrap().version;
        let report = driver.push(&gateways).await.unwrap();
        assert!(!report.gateways_written && report.configurations_written.is_empty());
        assert!(report.deployed.is_empty() && report.undeployed.is_empty());
        assert_eq!(kv.get(&config_key).await.unwrap().unwrap().version, version);
        assert_eq!(tagged(&events, &["marshaller:configuration"]).await, 2);

        // One gateway gone, the other re-weighted.
        let report = driver.push(&[sava(9050, (50, 50))]).await.unwrap();
        assert_eq!(report.undeployed, ["sava9060"]);
        assert_eq!(report.configurations_written, ["1.7", "2.6"]);
        assert_eq!(
            tagged(&events, &["gateways:sava9060", "undeployed"]).await,
            1
        );

        // A configuration lost from the store is written again (Vamp's cache would not have).
        kv.delete(&config_key).await.unwrap();
        let report = driver.push(&[sava(9050, (50, 50))]).await.unwrap();
        assert_eq!(report.configurations_written, ["1.7"]);
        assert!(kv.get(&config_key).await.unwrap().is_some());

        // A template override is reported as ignored.
        kv.put(
            &keys::haproxy_template("default", "2.6").unwrap(),
            "{{ custom }}".into(),
        )
        .await
        .unwrap();
        let report = driver.push(&[sava(9050, (50, 50))]).await.unwrap();
        assert_eq!(report.ignored_templates, ["2.6"]);
    }
    .now_or_never()
    .unwrap();
}

#[test]
fn a_gateway_that_cannot_be_rendered_writes_nothing() {
    async {
        let kv = Arc::new(InMemoryKv::new());
        let driver = GatewayDriver::new(
            Arc::clone(&kv) as Arc<vamp_core::kv::DynKeyValueStore>,
            "default",
            vec![Marshaller::new("1.7")],
        );
        driver.push(&[sava(9050, (100, 0))]).await.unwrap();
        let before = kv.list_all(&keys::base("default").unwrap()).await.unwrap();
        let versions: Vec<_> = {
            let mut v = Vec::new();
            for k in &before {
                v.push(kv.get(k).await.unwrap().unwrap().version);
            }
            v
        };
        // A gateway without a port yet.
        let mut bad = sava(9070, (100, 0));
        bad.port.number = 0;
        match driver.push(&[sava(9050, (0, 100)), bad]).await {
            Err(PushError::Render(e)) => assert!(e.to_string().contains("no port"), "{e}"),
            other => panic!("{other:?}"),
        }
        for (k, v) in before.iter().zip(versions) {
            assert_eq!(
                kv.get(k).await.unwrap().unwrap().version,
                v,
                "{k} untouched"
            );
        }
    }
    .now_or_never()
    .unwrap();
}

fn unassigned(name: &str) -> Gateway {
    let mut g = gateway(&format!(
        "name: {name}\nport: 0\nroutes:\n  r: {{weight: 100%}}\n"
    ));
    g.name = name.into();
    g
}

#[test]
fn ports_are_assigned_from_the_range_skipping_used_ones_and_wrapping() {
    use vamp_haproxy::driver::{NoAvailablePort, PortAllocator};
    let mut ports = PortAllocator::parse("40000-40003").unwrap();
    let mut gateways = vec![sava(40001, (100, 0)), unassigned("a"), unassigned("b")];
    assert_eq!(ports.assign(&mut gateways).unwrap(), ["a", "b"]);
    assert_eq!(gateways[1].port.number, 40000);
    assert_eq!(gateways[2].port.number, 40002, "40001 is taken");
    assert_eq!(gateways[2].port.value.as_deref(), Some("40002/http"));
    // Already assigned: nothing to do.
    assert!(ports.assign(&mut gateways).unwrap().is_empty());
    // The counter goes on from the last port, then wraps to a freed one.
    gateways.remove(1); // 40000 is free again
    gateways.push(unassigned("c"));
    gateways.push(unassigned("d"));
    assert_eq!(ports.assign(&mut gateways).unwrap(), ["c", "d"]);
    let numbers: Vec<i64> = gateways.iter().map(|g| g.port.number).collect();
    assert_eq!(numbers, [40001, 40002, 40003, 40000]);
    // Full: an error naming the gateway; the ones before keep their ports.
    gateways.push(unassigned("e"));
    assert_eq!(
        ports.assign(&mut gateways),
        Err(NoAvailablePort {
            gateway: "e".into(),
            start: 40000,
            end: 40003
        })
    );
    for bad in ["", "40000", "x-y", "45000-40000", "0-10", "1-70000"] {
        assert!(PortAllocator::parse(bad).is_err(), "{bad}");
    }
}

/// The driver renders incrementally (only gateways changed since its last push): after every
/// push of a long pseudo-random sequence (gateways added, changed, reordered, removed, and a
/// push refused for a gateway that cannot be rendered), the store holds exactly what a full
/// render of the pushed gateways gives, for each of two marshallers.
#[test]
fn incremental_pushes_write_what_a_full_render_writes() {
    async {
        let kv = Arc::new(InMemoryKv::new());
        let marshallers = vec![
            Marshaller::new("1.7").with_options(RenderOptions::default().with_socket_dir("/run/a")),
            Marshaller::new("2.0").with_options(
                RenderOptions::default()
                    .with_socket_dir("/run/b")
                    .with_bind_address("127.0.0.1"),
            ),
        ];
        let driver = GatewayDriver::new(
            Arc::clone(&kv) as Arc<vamp_core::kv::DynKeyValueStore>,
            "default",
            marshallers.clone(),
        );
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut pushed_bad = false;
        for step in 0..80 {
            let mut set: Vec<Gateway> = Vec::new();
            for i in 0..6u16 {
                if next(4) != 0 {
                    let w = next(101) as u8;
                    set.push(sava(9100 + i, (w, 100 - w)));
                }
            }
            // Any order: the output does not depend on it.
            if set.len() > 1 {
                let k = next(set.len() as u64) as usize;
                set.rotate_left(k);
            }
            if step % 17 == 5 {
                let mut bad = sava(9200, (50, 50));
                bad.port.number = 0;
                let mut with_bad = set.clone();
                with_bad.push(bad);
                assert!(driver.push(&with_bad).await.is_err(), "step {step}");
                pushed_bad = true;
            }
            driver.push(&set).await.unwrap();
            for m in &marshallers {
                let key = keys::haproxy_configuration("default", &m.name).unwrap();
                let written = kv.get_string(&key).await.unwrap().unwrap_or_default();
                let full = render(&set, &m.options).unwrap().render();
                assert_eq!(written, full, "step {step}, marshaller {}", m.name);
            }
            let expected = vamp_haproxy::driver::plan_push(&set, &marshallers, None, &[None, None])
                .unwrap()
                .gateways
                .unwrap();
            let written = kv
                .get_string(&keys::gateways("default").unwrap())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(written, expected, "step {step}: /gateways");
        }
        assert!(pushed_bad);
    }
    .now_or_never()
    .unwrap();
}

/// As the reconcile loop's gateway side, the driver routes to running instances only: an
/// instance the scheduler started that does not run yet gets no request.
#[test]
fn routes_go_to_running_instances_only() {
    async {
        use vamp_core::model::{Deployment, Instance};
        use vamp_core::ops::controller::{GatewayPass, GatewaySink};
        let kv = Arc::new(InMemoryKv::new());
        let driver = GatewayDriver::new(
            Arc::clone(&kv) as Arc<vamp_core::kv::DynKeyValueStore>,
            "default",
            vec![Marshaller::new("1.7").with_options(RenderOptions::default())],
        );
        let blueprint = match vamp_core::dsl::read_str(
            "name: shop\nclusters:\n  web:\n    breed: {name: 'web:1', deployable: web, ports: {port: 8080/http}}\n    scale: {cpu: 0.1, memory: 32MB, instances: 2}\n",
            Some(vamp_core::model::ArtifactKind::Blueprint),
        )
        .unwrap()
        .remove(0)
        {
            vamp_core::dsl::AnyArtifact::Blueprint(b) => b,
            other => panic!("{other:?}"),
        };
        let mut d: Deployment = vamp_core::ops::deploy::merge(
            None,
            "shop",
            &blueprint,
            &vamp_core::ops::deploy::Artifacts::new(),
            &vamp_core::ops::deploy::MergeOptions::new(0),
        )
        .unwrap()
        .deployment;
        let instance = |name: &str, port: i64, deployed: bool| Instance {
            name: name.into(),
            host: "127.0.0.1".into(),
            ports: [("port".to_owned(), port)].into_iter().collect(),
            deployed,
        };
        d.clusters[0].services[0].instances =
            vec![instance("up", 31001, true), instance("starting", 31002, false)];
        GatewaySink::push(&driver, GatewayPass::new(vec![Arc::new(d.clone())], vec![]))
            .await
            .unwrap();
        let config_key = keys::haproxy_configuration("default", "1.7").unwrap();
        let targets = kv.get_string(&config_key).await.unwrap().unwrap();
        assert!(targets.contains("127.0.0.1:31001"), "{targets}");
        assert!(!targets.contains("31002"), "{targets}");
        // Once it runs, it is routed to as well.
        d.clusters[0].services[0].instances[1].deployed = true;
        GatewaySink::push(&driver, GatewayPass::new(vec![Arc::new(d)], vec![]))
            .await
            .unwrap();
        let targets = kv.get_string(&config_key).await.unwrap().unwrap();
        assert!(
            targets.contains("127.0.0.1:31001") && targets.contains("127.0.0.1:31002"),
            "{targets}"
        );
    }
    .now_or_never()
    .unwrap();
}

/// The versions of `/gateways` and of marshaller 1.7's configuration.
async fn versions(
    kv: &InMemoryKv,
) -> (
    Option<vamp_core::kv::Version>,
    Option<vamp_core::kv::Version>,
) {
    let g = kv.get(&keys::gateways("default").unwrap()).await.unwrap();
    let c = kv
        .get(&keys::haproxy_configuration("default", "1.7").unwrap())
        .await
        .unwrap();
    (g.map(|v| v.version), c.map(|v| v.version))
}

/// A key-value store whose writes fail while `failing` is set.
#[derive(Debug, Default)]
struct FailingWrites {
    inner: InMemoryKv,
    failing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Display for FailingWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failing-writes")
    }
}

#[async_trait::async_trait]
impl KeyValueStore for FailingWrites {
    async fn get(
        &self,
        key: &vamp_core::kv::KeyPath,
    ) -> vamp_core::Result<Option<vamp_core::kv::Versioned<bytes::Bytes>>> {
        self.inner.get(key).await
    }
    async fn put_opts(
        &self,
        key: &vamp_core::kv::KeyPath,
        value: bytes::Bytes,
        opts: vamp_core::kv::PutOptions,
    ) -> vamp_core::Result<vamp_core::kv::Version> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(vamp_core::Error::Unavailable {
                backend: "failing-writes".into(),
                source: "connection refused".into(),
            });
        }
        self.inner.put_opts(key, value, opts).await
    }
    async fn delete(&self, key: &vamp_core::kv::KeyPath) -> vamp_core::Result<()> {
        self.inner.delete(key).await
    }
    fn list(
        &self,
        prefix: &vamp_core::kv::KeyPath,
    ) -> futures_util::stream::BoxStream<'static, vamp_core::Result<vamp_core::kv::KeyPath>> {
        self.inner.list(prefix)
    }
    fn watch(
        &self,
        prefix: &vamp_core::kv::KeyPath,
        opts: vamp_core::kv::WatchOptions,
    ) -> futures_util::stream::BoxStream<'static, vamp_core::Result<vamp_core::kv::WatchEvent>>
    {
        self.inner.watch(prefix, opts)
    }
    fn capabilities(&self) -> vamp_core::kv::KvCapabilities {
        self.inner.capabilities()
    }
}

/// As the reconcile loop's gateway side, the driver resolves, compares and renders only what
/// a pass changed (a deployment given as the same `Arc` as in the last pass is skipped, and a
/// pass that changed nothing writes nothing). After every pass of a long pseudo-random
/// sequence (deployments added, removed, their instances started, stopped and moved,
/// standalone gateways routing to their services and gateways added, changed and removed, the
/// store's values overwritten by someone else, writes failing), the store holds exactly what
/// a full push of the pass's gateways, resolved from scratch, writes.
#[test]
fn passes_write_what_a_full_push_of_the_resolved_gateways_writes() {
    use vamp_core::model::{Deployment, Instance};
    use vamp_core::ops::controller::{GatewayPass, GatewaySink};
    async {
        let kv = Arc::new(FailingWrites::default());
        let marshallers = vec![Marshaller::new("1.7").with_options(RenderOptions::default())];
        let driver = GatewayDriver::new(
            Arc::clone(&kv) as Arc<vamp_core::kv::DynKeyValueStore>,
            "default",
            marshallers.clone(),
        );
        let deployment = |i: u64| -> Deployment {
            let doc = format!(
                "name: shop{i}\ngateways: {{{}: web/port}}\nclusters:\n  web:\n    breed: {{name: 'web:1', deployable: web, ports: {{port: 8080/http}}}}\n    scale: {{cpu: 0.1, memory: 32MB, instances: 2}}\n",
                20_000 + i
            );
            let vamp_core::dsl::AnyArtifact::Blueprint(b) =
                vamp_core::dsl::read_str(&doc, Some(vamp_core::model::ArtifactKind::Blueprint))
                    .unwrap()
                    .remove(0)
            else {
                panic!("not a blueprint")
            };
            let mut d = vamp_core::ops::deploy::merge(
                None,
                &format!("shop{i}"),
                &b,
                &vamp_core::ops::deploy::Artifacts::new(),
                &vamp_core::ops::deploy::MergeOptions::new(0),
            )
            .unwrap()
            .deployment;
            for g in &mut d.clusters[0].gateways {
                g.port.number = i64::try_from(21_000 + i).unwrap();
            }
            d
        };
        let standalone = |k: u64, target: &str, weight: u64| -> Gateway {
            gateway(&format!(
                "name: front{k}\nport: {}\nroutes:\n  {target}: {{weight: {weight}%}}\n  '[10.0.0.9:80]': {{weight: {}%}}\n",
                22_000 + k,
                100 - weight
            ))
        };
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut deployments: Vec<Arc<Deployment>> = (0..4).map(|i| Arc::new(deployment(i))).collect();
        let mut fronts: Vec<Arc<Gateway>> = Vec::new();
        let mut made = 4;
        let (mut quiet, mut failed) = (0, 0);
        // The last pass failed: the next one writes what it could not.
        let mut behind = false;
        for step in 0..300 {
            // Some passes' writes fail (those with something to write count as failed).
            let fail = next(6) == 0;
            let mut nothing = false;
            match next(8) {
                0 => {
                    deployments.push(Arc::new(deployment(made)));
                    made += 1;
                }
                1 if deployments.len() > 1 => {
                    let k = next(deployments.len() as u64) as usize;
                    deployments.remove(k);
                }
                2 | 3 if !deployments.is_empty() => {
                    let k = next(deployments.len() as u64) as usize;
                    let mut d = (*deployments[k]).clone();
                    let n = next(3) as usize;
                    d.clusters[0].services[0].instances = (0..n)
                        .map(|j| Instance {
                            name: format!("i{j}"),
                            host: format!("10.0.1.{}", next(4)),
                            ports: [("port".to_owned(), 31_000 + next(3) as i64)].into_iter().collect(),
                            deployed: next(3) != 0,
                        })
                        .collect();
                    deployments[k] = Arc::new(d);
                }
                4 if !deployments.is_empty() => {
                    let d = &deployments[next(deployments.len() as u64) as usize].name;
                    let target = if next(2) == 0 {
                        format!("{d}/web/web:1/port")
                    } else {
                        format!("{d}/web/port")
                    };
                    let g = Arc::new(standalone(next(3), &target, next(101)));
                    fronts.retain(|f| f.name != g.name);
                    fronts.push(g);
                }
                5 if !fronts.is_empty() => {
                    let k = next(fronts.len() as u64) as usize;
                    fronts.remove(k);
                }
                6 => {
                    let key = if next(2) == 0 {
                        keys::gateways("default").unwrap()
                    } else {
                        keys::haproxy_configuration("default", "1.7").unwrap()
                    };
                    kv.inner.put(&key, "edited".into()).await.unwrap();
                }
                _ => nothing = true,
            }
            let pass = GatewayPass::new(deployments.clone(), fronts.clone());
            let before = versions(&kv.inner).await;
            kv.failing.store(fail, std::sync::atomic::Ordering::SeqCst);
            let result = GatewaySink::push(&driver, pass.clone()).await;
            kv.failing.store(false, std::sync::atomic::Ordering::SeqCst);
            if fail {
                // Nothing to write (the last pass wrote it) is not a failure.
                if result.is_err() {
                    failed += 1;
                    behind = true;
                }
                continue;
            }
            result.unwrap();
            let was_behind = std::mem::take(&mut behind);
            if nothing && step > 0 && !was_behind {
                assert_eq!(versions(&kv.inner).await, before, "step {step}: a quiet pass wrote");
                quiet += 1;
            }
            // What a full push of the same gateways, resolved from scratch, writes.
            let running: Vec<Deployment> = pass
                .deployments
                .iter()
                .map(|d| {
                    let mut d = (**d).clone();
                    for s in d.clusters.iter_mut().flat_map(|c| &mut c.services) {
                        s.instances.retain(|i| i.deployed);
                    }
                    d
                })
                .collect();
            let mut all = pass.gateways();
            vamp_haproxy::targets::resolve_targets(&mut all, &running);
            let expected = vamp_haproxy::driver::plan_push(&all, &marshallers, None, &[None])
                .unwrap();
            let written = kv
                .inner
                .get_string(&keys::gateways("default").unwrap())
                .await
                .unwrap();
            assert_eq!(written, expected.gateways, "step {step}: /gateways");
            let config = kv
                .inner
                .get_string(&keys::haproxy_configuration("default", "1.7").unwrap())
                .await
                .unwrap()
                .unwrap_or_default();
            assert_eq!(config, render(&all, &RenderOptions::default()).unwrap().render(), "step {step}");
        }
        // The sequence went through every case.
        assert!(quiet > 10 && failed > 5 && made > 8, "quiet {quiet}, failed {failed}, made {made}");
    }
    .now_or_never()
    .unwrap();
}
