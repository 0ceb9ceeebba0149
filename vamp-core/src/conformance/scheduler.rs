//! Conformance suite for [`ContainerScheduler`] implementations.
//!
//! Each function deploys services of deployment `scope` (give each run a fresh one) and
//! panics when the scheduler breaks the contract. Schedulers converge asynchronously, so the
//! functions wait (up to [`CONVERGE_TIMEOUT`]) for the expected state. `deployable` is what
//! the services run: a container image, or a command for process schedulers; it must keep
//! running. For schedulers whose instances are real
//! ([`SchedulerCapabilities::reachable_instances`]) it must answer HTTP on its first port
//! (`$PORT` where the scheduler sets it): the suite sends each instance a `GET /` and checks
//! that the endpoints of removed instances stop answering. Those checks use blocking sockets
//! with short timeouts (the suite has no runtime of its own). Not covered by semver.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::model::{Deployable, PortType};
use crate::rt::{sleep, timeout};
use crate::scheduler::*;

/// How long a scheduler may take to converge.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

fn spec(scope: &str, cluster: &str, service: &str, deployable: &Deployable) -> ServiceSpec {
    let mut s = ServiceSpec::new(ServiceId::new(scope, cluster, service), deployable.clone())
        .with_port("web", 8080, PortType::Http)
        .with_port("admin", 8081, PortType::Tcp);
    s.cpu = 0.1;
    s.memory_mb = 32.0;
    s
}

/// Waits until the service satisfies `ok`; returns it.
async fn eventually(
    scheduler: &DynContainerScheduler,
    id: &ServiceId,
    what: &str,
    ok: impl Fn(Option<&DeployedService>) -> bool,
) -> Option<DeployedService> {
    let start = Instant::now();
    loop {
        let current = scheduler
            .service(id)
            .await
            .unwrap_or_else(|e| panic!("service({id}): {e}"));
        if ok(current.as_ref()) {
            return current;
        }
        assert!(
            start.elapsed() < CONVERGE_TIMEOUT,
            "{id} did not reach '{what}' within {CONVERGE_TIMEOUT:?}; last seen: {current:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Whether an HTTP server answers a `GET /` on `host:port` (any status).
pub fn http_answers(host: &str, port: u16) -> bool {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let Some(addr) = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return false;
    };
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: conformance\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// The first-port endpoints of `s`'s instances.
fn endpoints(s: &DeployedService) -> Vec<(String, u16)> {
    let Some(first) = s.spec.ports.first() else {
        return Vec::new();
    };
    s.instances
        .iter()
        .filter_map(|i| Some((i.host.clone(), *i.ports.get(&first.name)?)))
        .collect()
}

/// Waits until every endpoint answers (`up`) or none does (`!up`).
async fn endpoints_become(what: &str, endpoints: &[(String, u16)], up: bool) {
    let start = Instant::now();
    loop {
        let wrong: Vec<&(String, u16)> = endpoints
            .iter()
            .filter(|(h, p)| http_answers(h, *p) != up)
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < CONVERGE_TIMEOUT,
            "{what}: {} within {CONVERGE_TIMEOUT:?}: {wrong:?}",
            if up {
                "no HTTP answer"
            } else {
                "still answering"
            }
        );
        sleep(Duration::from_millis(200)).await;
    }
}

fn has_instances(n: usize) -> impl Fn(Option<&DeployedService>) -> bool {
    move |s| s.is_some_and(|s| s.instances.len() == n && s.instances.iter().all(|i| i.running))
}

fn check_instances(s: &DeployedService, ports: bool) {
    let names: HashSet<&str> = s.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names.len(),
        s.instances.len(),
        "instance names are unique: {:?}",
        s.instances
    );
    if ports {
        let mut endpoints = HashSet::new();
        for i in &s.instances {
            for p in &s.spec.ports {
                let port = *i
                    .ports
                    .get(&p.name)
                    .unwrap_or_else(|| panic!("instance {} has no port '{}'", i.name, p.name));
                assert!(port > 0);
                assert!(
                    endpoints.insert((i.host.clone(), port)),
                    "every instance port is a distinct endpoint"
                );
            }
        }
    }
}

/// Deploy, find it (with Vamp's labels), undeploy.
pub async fn deploy_list_undeploy(
    scheduler: &DynContainerScheduler,
    scope: &str,
    deployable: &Deployable,
) {
    let mut s = spec(scope, "lifecycle", "svc:1.0.0", deployable)
        .with_instances(2)
        .with_env("GREETING", "hello world");
    s.labels.insert("team".into(), "canary".into());
    let id = s.id.clone();
    scheduler
        .deploy(s, DeployOptions::default())
        .await
        .expect("deploy");
    let deployed = eventually(scheduler, &id, "2 running instances", has_instances(2))
        .await
        .expect("deployed");
    check_instances(&deployed, scheduler.capabilities().instance_ports);
    let reachable = scheduler.capabilities().reachable_instances;
    let served = endpoints(&deployed);
    if reachable {
        assert_eq!(served.len(), 2, "both instances have a first port");
        endpoints_become("every instance answers after the deploy", &served, true).await;
    }
    for (k, v) in id.labels() {
        assert_eq!(deployed.spec.labels.get(&k), Some(&v), "Vamp's label {k}");
    }
    assert_eq!(
        deployed.spec.labels.get("team").map(String::as_str),
        Some("canary"),
        "user labels are kept"
    );
    assert_eq!(
        deployed
            .spec
            .environment
            .get("GREETING")
            .map(String::as_str),
        Some("hello world")
    );
    let listed = scheduler.services().await.expect("services");
    assert!(
        listed.iter().any(|x| x.spec.id == id),
        "services() lists it"
    );
    let ids: Vec<&ServiceId> = listed.iter().map(|x| &x.spec.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "services() is sorted by id");
    assert!(
        scheduler.undeploy(&id).await.expect("undeploy"),
        "undeploy reports that it existed"
    );
    eventually(scheduler, &id, "gone", |s| s.is_none()).await;
    if reachable {
        endpoints_become("the instances are gone after the undeploy", &served, false).await;
    }
    assert!(
        !scheduler.undeploy(&id).await.expect("undeploy again"),
        "a second undeploy reports nothing"
    );
}

/// Scaling up and down, to zero and back.
pub async fn scale_up_and_down(
    scheduler: &DynContainerScheduler,
    scope: &str,
    deployable: &Deployable,
) {
    let s = spec(scope, "scale", "svc:1.0.0", deployable).with_instances(1);
    let id = s.id.clone();
    scheduler
        .deploy(s, DeployOptions::default())
        .await
        .expect("deploy");
    let first = eventually(scheduler, &id, "1 instance", has_instances(1))
        .await
        .expect("deployed");
    let mut served = endpoints(&first);
    for n in [3u32, 0, 2] {
        scheduler
            .scale(&id, n)
            .await
            .unwrap_or_else(|e| panic!("scale to {n}: {e}"));
        let s = eventually(
            scheduler,
            &id,
            &format!("{n} instances"),
            has_instances(n as usize),
        )
        .await
        .expect("still deployed");
        assert_eq!(s.spec.instances, n, "the spec follows the scale");
        check_instances(&s, scheduler.capabilities().instance_ports);
        if scheduler.capabilities().reachable_instances {
            let now = endpoints(&s);
            endpoints_become(&format!("{n} instances answer"), &now, true).await;
            let removed: Vec<(String, u16)> = served
                .iter()
                .filter(|e| !now.contains(e))
                .cloned()
                .collect();
            endpoints_become(
                &format!("the instances removed by the scale to {n} are gone"),
                &removed,
                false,
            )
            .await;
            served = now;
        }
    }
    let missing = ServiceId::new(scope, "scale", "missing");
    let e = scheduler
        .scale(&missing, 2)
        .await
        .expect_err("scaling a missing service");
    assert!(
        matches!(e, crate::error::Error::NotFound { .. }),
        "expected NotFound, got {e}"
    );
    scheduler.undeploy(&id).await.expect("cleanup");
}

/// Deploying a changed spec updates the service.
pub async fn update_changes_the_spec(
    scheduler: &DynContainerScheduler,
    scope: &str,
    deployable: &Deployable,
) {
    let s = spec(scope, "update", "svc:1.0.0", deployable)
        .with_instances(1)
        .with_env("VERSION", "1");
    let id = s.id.clone();
    scheduler
        .deploy(s.clone(), DeployOptions::default())
        .await
        .expect("deploy");
    eventually(scheduler, &id, "1 instance", has_instances(1)).await;
    let updated = s.with_env("VERSION", "2").with_instances(2);
    scheduler
        .deploy(updated, DeployOptions::default())
        .await
        .expect("update");
    let got = eventually(scheduler, &id, "the new spec", |s| {
        s.is_some_and(|s| {
            s.spec.environment.get("VERSION").map(String::as_str) == Some("2")
                && has_instances(2)(Some(s))
        })
    })
    .await;
    check_instances(
        &got.expect("deployed"),
        scheduler.capabilities().instance_ports,
    );
    scheduler.undeploy(&id).await.expect("cleanup");
}

/// Invalid specs are refused.
pub async fn invalid_specs(
    scheduler: &DynContainerScheduler,
    scope: &str,
    deployable: &Deployable,
) {
    let empty = ServiceSpec::new(ServiceId::new(scope, "", "svc"), deployable.clone());
    assert!(
        matches!(
            scheduler.deploy(empty, DeployOptions::default()).await,
            Err(crate::error::Error::Invalid { .. })
        ),
        "an empty cluster name"
    );
    let dup = spec(scope, "invalid", "svc", deployable).with_port("web", 9090, PortType::Http);
    assert!(
        matches!(
            scheduler.deploy(dup, DeployOptions::default()).await,
            Err(crate::error::Error::Invalid { .. })
        ),
        "duplicate port names"
    );
    let mut unchecked = spec(scope, "invalid", "svc", deployable);
    unchecked.health_checks.push(crate::model::HealthCheck {
        path: "/".into(),
        port: "nowhere".into(),
        initial_delay: 0,
        timeout: 1,
        interval: 1,
        failures: 1,
        protocol: "HTTP".into(),
    });
    match scheduler.deploy(unchecked, DeployOptions::default()).await {
        Err(crate::error::Error::Invalid { what, value, .. }) => {
            assert_eq!(what, "health check");
            assert!(value.contains("nowhere"), "{value}");
        }
        other => panic!("a health check naming no port: {other:?}"),
    }
    assert!(
        scheduler
            .service(&ServiceId::new(scope, "invalid", "svc"))
            .await
            .expect("service")
            .is_none(),
        "nothing was deployed"
    );
}

/// The watch sees deploy, scale and undeploy, in order.
pub async fn watch_sees_the_lifecycle(
    scheduler: &DynContainerScheduler,
    scope: &str,
    deployable: &Deployable,
) {
    let mut w = scheduler.watch();
    let s = spec(scope, "watch", "svc:1.0.0", deployable).with_instances(1);
    let id = s.id.clone();
    scheduler
        .deploy(s, DeployOptions::default())
        .await
        .expect("deploy");
    eventually(scheduler, &id, "1 instance", has_instances(1)).await;
    scheduler.scale(&id, 2).await.expect("scale");
    eventually(scheduler, &id, "2 instances", has_instances(2)).await;
    scheduler.undeploy(&id).await.expect("undeploy");
    let (mut deployed, mut scaled, mut undeployed) = (false, false, false);
    while !undeployed {
        let event = match timeout(CONVERGE_TIMEOUT, w.next()).await {
            Some(Some(Ok(e))) => e,
            other => panic!("watch ended or failed before the undeploy: {other:?}"),
        };
        match event {
            SchedulerEvent::Deployed(s) if s.spec.id == id => deployed = true,
            SchedulerEvent::InstancesChanged(s) | SchedulerEvent::Updated(s)
                if s.spec.id == id && s.spec.instances == 2 =>
            {
                assert!(deployed, "the scale came before the deploy");
                scaled = true;
            }
            SchedulerEvent::Undeployed(u) if u == id => {
                assert!(
                    deployed && scaled,
                    "the undeploy came before the deploy or the scale"
                );
                undeployed = true;
            }
            _ => {}
        }
    }
}

/// A second scheduler on the same backend finds what the first deployed, with its
/// instances, and can change it; the first sees the change. For schedulers with
/// [`SchedulerCapabilities::adopts_services`].
pub async fn a_second_scheduler_finds_the_services(
    first: &DynContainerScheduler,
    second: &DynContainerScheduler,
    scope: &str,
    deployable: &Deployable,
) {
    let s = spec(scope, "adopt", "svc:1.0.0", deployable)
        .with_instances(2)
        .with_env("VERSION", "1");
    let id = s.id.clone();
    first
        .deploy(s.clone(), DeployOptions::default())
        .await
        .expect("deploy");
    let deployed = eventually(first, &id, "2 instances", has_instances(2))
        .await
        .expect("deployed");
    let found = eventually(
        second,
        &id,
        "2 instances seen by the second",
        has_instances(2),
    )
    .await
    .expect("found");
    assert_eq!(found.spec.environment, deployed.spec.environment);
    let mut names: Vec<&str> = found.instances.iter().map(|i| i.name.as_str()).collect();
    let mut before: Vec<&str> = deployed.instances.iter().map(|i| i.name.as_str()).collect();
    names.sort_unstable();
    before.sort_unstable();
    assert_eq!(names, before, "the same instances, not new ones");
    assert!(
        second
            .services()
            .await
            .expect("services")
            .iter()
            .any(|x| x.spec.id == id),
        "the second lists it"
    );
    // Deploying the same spec again from the second changes nothing.
    second
        .deploy(s, DeployOptions::default())
        .await
        .expect("redeploy");
    let same = eventually(second, &id, "2 instances", has_instances(2))
        .await
        .expect("deployed");
    let mut again: Vec<&str> = same.instances.iter().map(|i| i.name.as_str()).collect();
    again.sort_unstable();
    assert_eq!(again, before, "an unchanged spec keeps the instances");
    second.scale(&id, 1).await.expect("scale by the second");
    eventually(first, &id, "the first sees the scale", has_instances(1)).await;
    assert!(second.undeploy(&id).await.expect("undeploy by the second"));
    eventually(first, &id, "the first sees the undeploy", |s| s.is_none()).await;
}

/// An instance lost behind the scheduler's back (`lose` kills or removes it the way an
/// operator or a crash would) shows in the watch and is replaced: the service gets back to
/// its instances, all answering. For schedulers with
/// [`SchedulerCapabilities::reachable_instances`] and `watch`.
pub async fn replaces_an_instance_lost_behind_its_back<F>(
    scheduler: &DynContainerScheduler,
    scope: &str,
    deployable: &Deployable,
    lose: F,
) where
    F: AsyncFnOnce(&InstanceState),
{
    let s = spec(scope, "lost", "svc:1.0.0", deployable).with_instances(2);
    let id = s.id.clone();
    scheduler
        .deploy(s, DeployOptions::default())
        .await
        .expect("deploy");
    let deployed = eventually(scheduler, &id, "2 instances", has_instances(2))
        .await
        .expect("deployed");
    endpoints_become("every instance answers", &endpoints(&deployed), true).await;
    let mut w = scheduler.watch();
    let victim = deployed.instances[0].clone();
    lose(&victim).await;
    // The watch reports the loss: the instance stopped, or is gone.
    loop {
        let event = match timeout(CONVERGE_TIMEOUT, w.next()).await {
            Some(Some(Ok(e))) => e,
            other => panic!(
                "no watch event for the lost instance {}: {other:?}",
                victim.name
            ),
        };
        if let SchedulerEvent::InstancesChanged(s) | SchedulerEvent::Updated(s) = event
            && s.spec.id == id
            && s.instances
                .iter()
                .all(|i| i.name != victim.name || !i.running || i.ports != victim.ports)
        {
            break;
        }
    }
    let healed = eventually(
        scheduler,
        &id,
        "2 running instances again",
        has_instances(2),
    )
    .await
    .expect("deployed");
    endpoints_become("the replaced instances answer", &endpoints(&healed), true).await;
    scheduler.undeploy(&id).await.expect("cleanup");
}

/// Runs every function the scheduler's capabilities allow.
pub async fn run_all(scheduler: &DynContainerScheduler, scope: &str, deployable: &Deployable) {
    let caps = scheduler.capabilities();
    deploy_list_undeploy(scheduler, scope, deployable).await;
    update_changes_the_spec(scheduler, scope, deployable).await;
    invalid_specs(scheduler, scope, deployable).await;
    if caps.scale {
        scale_up_and_down(scheduler, scope, deployable).await;
    }
    if caps.watch && caps.scale {
        watch_sees_the_lifecycle(scheduler, scope, deployable).await;
    }
}
