//! The Docker scheduler against the machine's real Docker engine (`DOCKER_HOST` or the
//! default socket). Images cannot be pulled here: the tests build a small one from Debian's
//! `busybox-static` (`docker import` of a root file system holding only busybox) that serves
//! HTTP on `$PORT`. Every test works in a namespace of its own and removes, by label, only the
//! containers and volumes of that namespace.
#![cfg(feature = "scheduler-docker")]

mod docker_image;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
};
use docker_image::{IMAGE, Namespace, ensure_image, integration_required};
use vamp_backends::scheduler::docker::{DockerOptions, DockerScheduler};
use vamp_core::conformance::scheduler as suite;
use vamp_core::model::{Deployable, HealthCheck, PortType};
use vamp_core::scheduler::*;

fn image() -> Deployable {
    Deployable {
        deployable_type: Some("docker".into()),
        definition: IMAGE.into(),
    }
}

/// A scheduler on the machine's engine in namespace `ns`, or `None` (skipping) when no
/// engine runs and integration tests are not required.
async fn scheduler(
    ns: &Namespace,
    tweak: impl FnOnce(&mut DockerOptions),
) -> Option<DockerScheduler> {
    let mut opts = DockerOptions::default();
    opts.namespace = ns.0.clone();
    opts.resync = Duration::from_secs(1);
    opts.stop_timeout = Duration::from_secs(2);
    // An engine without bridge networking (no iptables): every test on the host network.
    if let Ok(network) = std::env::var("VAMP_TEST_DOCKER_NETWORK")
        && !network.is_empty()
    {
        opts.network = network;
    }
    tweak(&mut opts);
    match DockerScheduler::connect(opts).await {
        Ok(s) => {
            if let Err(e) = ensure_image() {
                panic!("cannot build the test image: {e}");
            }
            Some(s)
        }
        Err(e) if !integration_required() => {
            eprintln!(
                "skipped: no Docker engine ({e}); set VAMP_TEST_INTEGRATION=1 to fail instead"
            );
            None
        }
        Err(e) => panic!("no Docker engine, and integration tests are required: {e}"),
    }
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn get(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())?;
    Some((status, body))
}

async fn get_async(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let (host, path) = (host.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || get(&host, port, &path))
        .await
        .unwrap()
}

async fn labelled_containers(s: &DockerScheduler, ns: &Namespace) -> usize {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("io.vamp.namespace={}", ns.0)],
    )]);
    s.docker()
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_passes_the_scheduler_conformance_suite() {
    let ns = Namespace::new("conformance");
    let Some(s) = scheduler(&ns, |_| {}).await else {
        return;
    };
    suite::run_all(&s, "conformance", &image()).await;
    assert_eq!(labelled_containers(&s, &ns).await, 0, "nothing left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_scheduler_on_the_engine_adopts_the_services() {
    let ns = Namespace::new("adopt");
    let Some(first) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let second = scheduler(&ns, |_| {}).await.unwrap();
    suite::a_second_scheduler_finds_the_services(&first, &second, "adopt", &image()).await;
    // Another namespace on the same engine sees none of it.
    let other_ns = Namespace::new("adopt-other");
    let other = scheduler(&other_ns, |_| {}).await.unwrap();
    let s = ServiceSpec::new(ServiceId::new("adopt", "x", "y"), image()).with_port(
        "web",
        8080,
        PortType::Http,
    );
    first.deploy(s, DeployOptions::default()).await.unwrap();
    assert!(
        other.services().await.unwrap().is_empty(),
        "namespaces are separate"
    );
    assert_eq!(first.services().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_behind_the_scheduler_s_back_is_replaced() {
    let ns = Namespace::new("lost");
    let Some(s) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let docker = s.docker().clone();
    suite::replaces_an_instance_lost_behind_its_back(&s, "lost", &image(), async |victim| {
        docker
            .remove_container(
                &victim.name,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await
            .expect("docker rm -f");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_container_is_started_again() {
    let ns = Namespace::new("stopped");
    let Some(s) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let docker = s.docker().clone();
    suite::replaces_an_instance_lost_behind_its_back(&s, "stopped", &image(), async |victim| {
        docker
            .kill_container(&victim.name, None)
            .await
            .expect("docker kill");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_networking_gives_each_instance_a_port_of_its_own() {
    let ns = Namespace::new("host");
    let Some(s) = scheduler(&ns, |o| o.network = "host".into()).await else {
        return;
    };
    let id = ServiceId::new("host", "web", "web:1.0.0");
    let spec = ServiceSpec::new(id.clone(), image())
        .with_instances(2)
        .with_port("web", 8080, PortType::Http)
        .with_env("VERSION", "on-the-host");
    s.deploy(spec, DeployOptions::default()).await.unwrap();
    let service = eventually("2 running instances", async || {
        let d = s.service(&id).await.unwrap()?;
        (d.instances.len() == 2 && d.instances.iter().all(|i| i.running)).then_some(d)
    })
    .await;
    let ports: Vec<u16> = service.instances.iter().map(|i| i.ports["web"]).collect();
    assert_ne!(ports[0], ports[1], "each instance listens on its own port");
    for port in ports {
        assert!(
            vamp_backends::scheduler::docker::DockerOptions::default()
                .host_port_range
                .contains(&port),
            "{port} from the host port range"
        );
        let answer = eventually("an answer", async || {
            get_async("127.0.0.1", port, "/").await
        })
        .await;
        assert_eq!(answer, (200, "on-the-host".to_owned()));
    }
    // A second scheduler reads the ports back from the containers' labels.
    let again = scheduler(&ns, |o| o.network = "host".into()).await.unwrap();
    assert_eq!(
        again.service(&id).await.unwrap().unwrap().instances,
        service.instances
    );
    assert!(s.undeploy(&id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_tell_healthy_from_unhealthy_instances() {
    let ns = Namespace::new("health");
    let Some(s) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let check = |path: &str| HealthCheck {
        path: path.into(),
        port: "web".into(),
        initial_delay: 0,
        timeout: 2,
        interval: 1,
        failures: 1,
        protocol: "HTTP".into(),
    };
    let mut good = ServiceSpec::new(ServiceId::new("health", "web", "good"), image()).with_port(
        "web",
        8080,
        PortType::Http,
    );
    good.health_checks.push(check("/health"));
    let mut bad = ServiceSpec::new(ServiceId::new("health", "web", "bad"), image()).with_port(
        "web",
        8080,
        PortType::Http,
    );
    bad.health_checks.push(check("/no-such-page"));
    for spec in [good.clone(), bad.clone()] {
        s.deploy(spec, DeployOptions::default()).await.unwrap();
    }
    for (id, want) in [(&good.id, true), (&bad.id, false)] {
        eventually(&format!("{id} healthy = {want}"), async || {
            let d = s.service(id).await.unwrap()?;
            let i = d.instances.first()?;
            (i.running && i.healthy == Some(want)).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_is_refused_with_its_name() {
    let ns = Namespace::new("nopull");
    let Some(s) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let id = ServiceId::new("nopull", "web", "web");
    let spec = ServiceSpec::new(
        id.clone(),
        Deployable {
            deployable_type: None,
            definition: "vamp-test/no-such-image:404".into(),
        },
    );
    let e = s
        .deploy(spec, DeployOptions::default())
        .await
        .expect_err("no such image");
    let text = e.to_string();
    assert!(
        text.contains("vamp-test/no-such-image:404") && text.contains("could not be pulled"),
        "{text}"
    );
    assert_eq!(labelled_containers(&s, &ns).await, 0);
    assert!(s.service(&id).await.unwrap().is_none(), "nothing stored");
    assert!(!s.undeploy(&id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_docker_cannot_run_are_refused_before_anything_is_stored() {
    let ns = Namespace::new("refused");
    let Some(s) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let id = ServiceId::new("refused", "web", "web");
    let base = ServiceSpec::new(id.clone(), image()).with_port("web", 8080, PortType::Http);
    let mut cases = Vec::new();
    let mut command = base.clone();
    command.deployable.deployable_type = Some("command".into());
    cases.push((command, "type one of"));
    let mut argument = base.clone();
    argument.arguments.push(vamp_core::model::Argument {
        key: "volume".into(),
        value: "/:/host".into(),
    });
    cases.push((argument, "takes the arguments"));
    let mut dialect = base.clone();
    dialect.dialects.insert(
        "docker".into(),
        vamp_core::node::Node::from_json(&serde_json::json!({"Cmdd": ["x"]})),
    );
    cases.push((dialect, "no field Cmdd"));
    let mut env = base.clone();
    env.environment.insert("A=B".into(), "x".into());
    cases.push((env, "not a variable name"));
    for (spec, why) in cases {
        let e = s
            .deploy(spec, DeployOptions::default())
            .await
            .expect_err(why);
        assert!(
            matches!(e, vamp_core::Error::Invalid { .. }) && e.to_string().contains(why),
            "{e}"
        );
    }
    assert!(s.service(&id).await.unwrap().is_none(), "nothing stored");
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("io.vamp.namespace={}", ns.0)],
    )]);
    let volumes = s
        .docker()
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .unwrap();
    assert!(volumes.volumes.unwrap_or_default().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_dialect_and_the_environment_reach_the_container() {
    let ns = Namespace::new("dialect");
    let Some(s) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let id = ServiceId::new("dialect", "web", "web");
    let mut spec = ServiceSpec::new(id.clone(), image())
        .with_port("web", 9000, PortType::Http)
        .with_env("GREETING", "hello from the environment");
    // The dialect replaces the image's command: serve the environment variable instead.
    spec.dialects.insert(
        "docker".into(),
        vamp_core::node::Node::from_json(&serde_json::json!({
            "Cmd": ["/bin/sh", "-c", "mkdir -p /www && echo \"$GREETING on $PORT_WEB\" > /www/index.html && exec httpd -f -p \"$PORT\" -h /www"],
            "Labels": {"team": "canary"}
        })),
    );
    s.deploy(spec, DeployOptions::default()).await.unwrap();
    let d = eventually("a running instance", async || {
        let d = s.service(&id).await.unwrap()?;
        d.instances.first().is_some_and(|i| i.running).then_some(d)
    })
    .await;
    let i = &d.instances[0];
    let answer = eventually("an answer", async || {
        get_async(&i.host, i.ports["web"], "/").await
    })
    .await;
    // PORT_WEB is the port the container listens on: the breed's, or on the host network
    // the instance's own.
    let listens = if std::env::var("VAMP_TEST_DOCKER_NETWORK").is_ok_and(|n| n == "host") {
        i.ports["web"]
    } else {
        9000
    };
    assert_eq!(
        answer,
        (200, format!("hello from the environment on {listens}"))
    );
    let inspect = s.docker().inspect_container(&i.name, None).await.unwrap();
    let labels = inspect.config.unwrap().labels.unwrap();
    assert_eq!(labels["team"], "canary");
    assert_eq!(
        labels["io.vamp.deployment"], "dialect",
        "Vamp's labels stay"
    );
    assert_eq!(labels["io.vamp"], "deployment-service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_runs_a_container_that_is_removed_when_it_exits() {
    let ns = Namespace::new("once");
    let Some(s) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let mut spec = ServiceSpec::new(ServiceId::new("once", "workflow", "job"), image());
    spec.dialects.insert(
        "docker".into(),
        vamp_core::node::Node::from_json(&serde_json::json!({"Cmd": ["/bin/sleep", "1"]})),
    );
    s.run_once(spec).await.unwrap();
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("io.vamp.namespace={}", ns.0),
            "io.vamp=workflow-run".to_owned(),
        ],
    )]);
    let runs = || {
        let docker = s.docker().clone();
        let filters = filters.clone();
        async move {
            docker
                .list_containers(Some(
                    ListContainersOptionsBuilder::new()
                        .all(true)
                        .filters(&filters)
                        .build(),
                ))
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(runs().await, 1, "the run is there while it sleeps");
    eventually("the run removed itself", async || {
        (runs().await == 0).then_some(())
    })
    .await;
    assert!(
        s.services().await.unwrap().is_empty(),
        "a run is no service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_selects_the_engine_and_the_namespace() {
    let ns = Namespace::new("url");
    let Some(direct) = scheduler(&ns, |_| {}).await else {
        return;
    };
    let id = ServiceId::new("url", "web", "web");
    direct
        .deploy(
            ServiceSpec::new(id.clone(), image()).with_port("web", 8080, PortType::Http),
            DeployOptions::default(),
        )
        .await
        .unwrap();
    let url = format!("docker://?namespace={}", ns.0);
    let config = vamp_backends::scheduler::SchedulerBackendConfig::from_url(&url).unwrap();
    let selected = config.build().await.unwrap();
    assert!(selected.to_string().contains(&ns.0), "{selected}");
    let listed = selected.services().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].spec.id, id);
    let with_token =
        vamp_backends::scheduler::SchedulerBackendConfig::from_url("docker://?token=s3cr3t-value")
            .unwrap()
            .build()
            .await
            .map(drop)
            .expect_err("a token");
    assert!(
        !with_token.to_string().contains("s3cr3t-value"),
        "{with_token}"
    );
    assert!(with_token.to_string().contains("no token"), "{with_token}");
}
