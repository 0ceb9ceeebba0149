//! The Kubernetes scheduler against an in-process **double** of the API server
//! (`kube_double`, real HTTP, watches with resource versions), and against a real cluster
//! when `VAMP_TEST_KUBERNETES=1` or `KUBECONFIG` is set
//! (`cargo test -p vamp-backends --features scheduler-kubernetes --test kubernetes -- --ignored`).
#![cfg(feature = "scheduler-kubernetes")]

#[allow(dead_code)]
mod fault_proxy;
#[allow(dead_code)]
mod http_double;
mod kube_double;

use kube_double::KubeDouble;
use serde_json::json;
use vamp_backends::scheduler::kubernetes::{
    KubernetesOptions, KubernetesScheduler, deployment_name,
};
use vamp_core::conformance::scheduler as suite;
use vamp_core::model::{Argument, Deployable, HealthCheck, PortType};
use vamp_core::scheduler::*;

fn image() -> Deployable {
    Deployable {
        deployable_type: Some("docker".into()),
        definition: "magneticio/sava:1.0.0".into(),
    }
}

fn client(double: &KubeDouble, token: Option<&str>) -> kube::Client {
    vamp_backends::scheduler::kubernetes::install_tls_provider();
    let mut config = kube::Config::new(double.address().parse().unwrap());
    if let Some(t) = token {
        config.auth_info.token = Some(t.to_owned().into());
    }
    kube::Client::try_from(config).unwrap()
}

async fn scheduler(double: &KubeDouble) -> KubernetesScheduler {
    let mut opts = KubernetesOptions::default();
    opts.namespace = "vamp".into();
    KubernetesScheduler::connect(client(double, None), opts)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_passes_the_scheduler_conformance_suite_on_the_double() {
    let double = KubeDouble::start().await;
    let s = scheduler(&double).await;
    suite::run_all(&s, "conformance", &image()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_scheduler_finds_the_deployments_of_the_first() {
    let double = KubeDouble::start().await;
    let (first, second) = (scheduler(&double).await, scheduler(&double).await);
    suite::a_second_scheduler_finds_the_services(&first, &second, "adopt", &image()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_behind_the_scheduler_s_back_shows_in_the_watch_and_is_replaced() {
    let double = KubeDouble::start().await;
    let s = scheduler(&double).await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client(&double, None), "vamp");
    suite::replaces_an_instance_lost_behind_its_back(&s, "lost", &image(), async |victim| {
        pods.delete(&victim.name, &Default::default())
            .await
            .expect("kubectl delete pod");
    })
    .await;
}

fn full_spec() -> ServiceSpec {
    let mut s = ServiceSpec::new(ServiceId::new("sava", "sava", "sava:1.0.0"), image())
        .with_instances(3)
        .with_port("webport", 8080, PortType::Http)
        .with_env("SAVA_DEBUG", "true");
    s.cpu = 0.5;
    s.memory_mb = 256.0;
    s.labels.insert("team".into(), "canary".into());
    s.arguments.push(Argument {
        key: "privileged".into(),
        value: "true".into(),
    });
    s.health_checks.push(HealthCheck {
        path: "/health".into(),
        port: "webport".into(),
        initial_delay: 30,
        timeout: 5,
        interval: 10,
        failures: 3,
        protocol: "HTTP".into(),
    });
    s
}

/// The exact Deployment sent, in the shape of the Kubernetes API reference's `apps/v1`
/// Deployment (selector, template labels, container ports, env, resources, probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_sent_is_vamp_s_mapping_in_kubernetes_objects() {
    let double = KubeDouble::start().await;
    let s = scheduler(&double).await;
    let spec = full_spec();
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let posts: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].path, "/apis/apps/v1/namespaces/vamp/deployments");
    let mut sent = posts[0].body.clone();
    let annotation = sent["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("io.vamp/spec")
        .expect("the spec annotation");
    assert!(
        annotation
            .as_str()
            .unwrap()
            .contains("\"SAVA_DEBUG\":\"true\"")
    );
    let name = deployment_name(&spec.id);
    let breed = &vamp_core::lookup::hex_sha1("sava:1.0.0", "0000")[..20];
    let tuple = &vamp_core::lookup::hex_sha1("sava\u{0}sava\u{0}sava:1.0.0", "")[..10];
    assert_eq!(name, format!("sava-sava-{breed}-{tuple}"));
    let labels = json!({
        "team": "canary",
        "io.vamp.deployment": "sava",
        "io.vamp.cluster": "sava",
        "io.vamp.service": "sava_1.0.0",
        "io.vamp": "deployment-service",
        "io.vamp.deployment-service": name,
    });
    assert_eq!(
        sent,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "vamp", "labels": labels, "annotations": {}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"io.vamp": "deployment-service", "io.vamp.deployment-service": name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{
                        "name": name,
                        "image": "magneticio/sava:1.0.0",
                        "env": [
                            {"name": "PORT", "value": "8080"},
                            {"name": "PORT0", "value": "8080"},
                            {"name": "PORT_WEBPORT", "value": "8080"},
                            {"name": "SAVA_DEBUG", "value": "true"}
                        ],
                        "ports": [{"name": "p8080", "containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "0.5", "memory": "256M"}},
                        "securityContext": {"privileged": true},
                        "readinessProbe": {
                            "httpGet": {"path": "/health", "port": 8080, "scheme": "HTTP"},
                            "initialDelaySeconds": 30,
                            "periodSeconds": 10,
                            "timeoutSeconds": 5,
                            "failureThreshold": 3
                        }
                    }]}
                }
            }
        })
    );
    let back = s.service(&spec.id).await.unwrap().unwrap();
    assert_eq!(back.spec, spec.clone().normalized().unwrap());
    assert_eq!(back.instances.len(), 3);
    for i in &back.instances {
        assert!(i.running && i.healthy == Some(true), "{i:?}");
        assert!(i.host.starts_with("127."), "a pod IP: {}", i.host);
        assert_eq!(i.ports["webport"], 8080);
    }
    // An unchanged spec sends nothing; a scale goes through the scale subresource.
    let writes = || {
        double
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect::<Vec<_>>()
    };
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    assert_eq!(writes().len(), 1);
    s.scale(&spec.id, 1).await.unwrap();
    let patch = writes().pop().unwrap();
    assert_eq!(patch.method, "PATCH");
    assert!(patch.path.starts_with(&format!(
        "/apis/apps/v1/namespaces/vamp/deployments/{name}/scale"
    )));
    assert_eq!(patch.body, json!({"spec": {"replicas": 1}}));
    assert_eq!(double.pods("vamp").len(), 1);
    // A changed spec replaces the Deployment with the version read.
    s.deploy(
        spec.clone()
            .with_env("SAVA_DEBUG", "false")
            .with_instances(1),
        DeployOptions::default(),
    )
    .await
    .unwrap();
    let put = writes().pop().unwrap();
    assert_eq!(put.method, "PUT");
    assert!(put.body["metadata"]["resourceVersion"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_pods_are_reported_and_bad_specs_refused() {
    let double = KubeDouble::start().await;
    let s = scheduler(&double).await;
    let mut bad = full_spec().with_instances(1);
    bad.id = ServiceId::new("sick", "web", "web");
    bad.health_checks[0].path = "/fail".into();
    s.deploy(bad.clone(), DeployOptions::default())
        .await
        .unwrap();
    let d = s.service(&bad.id).await.unwrap().unwrap();
    assert_eq!(d.instances[0].healthy, Some(false));
    let mut command = full_spec();
    command.deployable.deployable_type = Some("command".into());
    assert!(matches!(
        s.deploy(command, DeployOptions::default()).await,
        Err(vamp_core::Error::Invalid { .. })
    ));
    let mut argument = full_spec();
    argument.arguments.push(Argument {
        key: "volume".into(),
        value: "/:/host".into(),
    });
    let e = s
        .deploy(argument, DeployOptions::default())
        .await
        .expect_err("an argument Kubernetes has no place for");
    assert!(e.to_string().contains("only privileged"), "{e}");
    // The API server's own refusal reaches the caller with its field.
    let mut dialect = full_spec();
    dialect.id = ServiceId::new("dialect", "web", "web");
    dialect.dialects.insert(
        "kubernetes".into(),
        vamp_core::node::Node::from_json(&json!({"container": {"name": "Not_A_Label"}})),
    );
    let e = s
        .deploy(dialect.clone(), DeployOptions::default())
        .await
        .expect_err("an invalid container name");
    assert!(matches!(e, vamp_core::Error::Invalid { .. }), "{e:?}");
    assert!(e.to_string().contains("containers[0].name"), "{e}");
    assert!(s.service(&dialect.id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_is_sent_and_never_shown() {
    let double = KubeDouble::start_with(Some("s3cr3t-token")).await;
    let mut opts = KubernetesOptions::default();
    opts.namespace = "vamp".into();
    let e = KubernetesScheduler::connect(client(&double, Some("wrong-token")), opts.clone())
        .await
        .expect_err("a wrong token");
    let text = format!("{e} {e:?}");
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains("wrong-token"), "{text}");
    let s = KubernetesScheduler::connect(client(&double, Some("s3cr3t-token")), opts)
        .await
        .unwrap();
    assert!(s.services().await.unwrap().is_empty());
    let url = format!(
        "kubernetes://{}?tls=false&namespace=vamp&token=s3cr3t-token",
        double.addr
    );
    let selected = vamp_backends::scheduler::SchedulerBackendConfig::from_url(&url)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert!(selected.services().await.unwrap().is_empty());
    assert!(!format!("{selected:?} {selected}").contains("s3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_behind_a_410_gone_still_reach_the_watch() {
    // Watches end every 300 ms and the next four resuming ones are told their version expired
    // (410), so
    // kube's watchers must list again; changes made by another client meanwhile still show.
    let double = KubeDouble::start().await;
    double.limit_watches(std::time::Duration::from_millis(300));
    let s = scheduler(&double).await;
    let other = scheduler(&double).await;
    let spec = ServiceSpec::new(ServiceId::new("churn", "web", "web"), image()).with_port(
        "web",
        8080,
        PortType::Http,
    );
    other
        .deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let mut w = s.watch();
    // Both watchers (Deployments, pods) resume, meet 410 and list again, twice over.
    double.expire_next_watches(4);
    let start = std::time::Instant::now();
    while double.expired() < 4 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the watchers never resumed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for n in [3u32, 1, 4, 2] {
        other.scale(&spec.id, n).await.unwrap();
    }
    // The scheduler under test made none of these changes: only its watchers can tell.
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match futures_util::StreamExt::next(&mut w).await {
                // Deployed when the first sight of the service is already its newest state.
                Some(Ok(
                    SchedulerEvent::InstancesChanged(d)
                    | SchedulerEvent::Updated(d)
                    | SchedulerEvent::Deployed(d),
                )) if d.spec.id == spec.id && d.spec.instances == 2 && d.instances.len() == 2 => {
                    return d;
                }
                Some(Ok(_)) => {}
                other => panic!("the watch ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the newest state reaches the watch");
    assert_eq!(seen.instances.len(), 2);
    assert!(double.expired() > 0, "the watchers met 410 Expired");
}

/// A real cluster: `VAMP_TEST_KUBERNETES=1` (or `KUBECONFIG`), credentials from the
/// kubeconfig or the pod's service account, namespace `VAMP_TEST_KUBERNETES_NAMESPACE`
/// (default `default`), and an image serving HTTP on port 8080 (`VAMP_TEST_KUBERNETES_IMAGE`,
/// default `nginxinc/nginx-unprivileged`). The instances are checked from where the test
/// runs, so run it where pod IPs are reachable (in the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set VAMP_TEST_KUBERNETES=1 or KUBECONFIG"]
async fn a_real_cluster_passes_the_conformance_suite() {
    let client = kube::Client::try_default()
        .await
        .expect("cluster credentials");
    let mut opts = KubernetesOptions::default();
    if let Ok(ns) = std::env::var("VAMP_TEST_KUBERNETES_NAMESPACE") {
        opts.namespace = ns;
    }
    let s = KubernetesScheduler::connect(client, opts).await.unwrap();
    let image = Deployable {
        deployable_type: Some("docker".into()),
        definition: std::env::var("VAMP_TEST_KUBERNETES_IMAGE")
            .unwrap_or_else(|_| "nginxinc/nginx-unprivileged".into()),
    };
    suite::run_all(&s, &format!("vamp-test-{}", std::process::id()), &image).await;
}

/// A credential in the environment reaches the container, but the spec annotation holds its
/// digest; deploying the same spec again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_not_copied_into_the_spec_annotation() {
    let double = KubeDouble::start().await;
    let s = scheduler(&double).await;
    let spec = full_spec()
        .with_env("DB_PASSWORD", "hunter2-secret")
        .with_env("STORE", "redis://user:pw-secret@redis:6379");
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let posts: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    let sent = &posts[0].body;
    let annotation = sent["metadata"]["annotations"]["io.vamp/spec"]
        .as_str()
        .unwrap();
    assert!(
        !annotation.contains("hunter2-secret") && !annotation.contains("pw-secret"),
        "{annotation}"
    );
    assert!(
        annotation.contains("\"DB_PASSWORD\":\"sha1:"),
        "{annotation}"
    );
    let env = sent["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains("hunter2-secret") && env.contains("pw-secret"),
        "{env}"
    );
    let before = double.requests().len();
    s.deploy(spec, DeployOptions::default()).await.unwrap();
    let writes = double.requests()[before..]
        .iter()
        .filter(|r| r.method != "GET")
        .count();
    assert_eq!(writes, 0, "the same spec is not sent again");
}

/// Tuples whose parts join to the same text get two Deployments; an object at a service's
/// name that this scheduler did not make for it is neither replaced, scaled nor deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_tuples_get_two_objects_and_foreign_ones_are_left_alone() {
    let double = KubeDouble::start().await;
    let s = scheduler(&double).await;
    let one = ServiceSpec::new(ServiceId::new("a-b", "c", "d"), image());
    let two = ServiceSpec::new(ServiceId::new("a", "b-c", "d"), image());
    assert_ne!(deployment_name(&one.id), deployment_name(&two.id));
    s.deploy(one.clone(), DeployOptions::default())
        .await
        .unwrap();
    s.deploy(two.clone(), DeployOptions::default())
        .await
        .unwrap();
    let ids: Vec<ServiceId> = s
        .services()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.spec.id)
        .collect();
    assert!(ids.contains(&one.id) && ids.contains(&two.id), "{ids:?}");
    assert!(s.undeploy(&one.id).await.unwrap());
    assert!(
        s.service(&two.id).await.unwrap().is_some(),
        "the other one stays"
    );
    // A Deployment made by someone else at the name a service would get.
    let foreign = ServiceId::new("shop", "web", "web");
    let name = deployment_name(&foreign);
    let other = kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
        client(&double, None),
        "vamp",
    );
    let object: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": "theirs"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "theirs"}},
                 "template": {"metadata": {"labels": {"app": "theirs"}},
                              "spec": {"containers": [{"name": "c", "image": "theirs:1"}]}}}
    }))
    .unwrap();
    other
        .create(&kube::api::PostParams::default(), &object)
        .await
        .unwrap();
    let e = s
        .deploy(
            ServiceSpec::new(foreign.clone(), image()),
            DeployOptions::default(),
        )
        .await
        .expect_err("not replaced");
    assert!(
        e.to_string().contains("left alone") || format!("{e:?}").contains("left alone"),
        "{e:?}"
    );
    assert!(s.scale(&foreign, 5).await.is_err());
    assert!(!s.undeploy(&foreign).await.unwrap(), "not deleted");
    let theirs = other.get(&name).await.unwrap();
    let spec = theirs.spec.expect("a spec");
    assert_eq!(spec.replicas, Some(2));
    let image = spec.template.spec.expect("a pod spec").containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("theirs:1"));
}

/// A service's Deployment under an earlier version's name (its parts joined without the
/// tuple's digest) is replaced by the one under its own name, and goes with an undeploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_under_an_earlier_name_are_moved_and_removed() {
    let double = KubeDouble::start().await;
    let s = scheduler(&double).await;
    let spec = ServiceSpec::new(ServiceId::new("shop", "web", "web"), image());
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let mut legacy = double
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("the create")
        .body;
    assert!(s.undeploy(&spec.id).await.unwrap());
    legacy["metadata"]["name"] = json!("shop-web-web");
    let api = kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
        client(&double, None),
        "vamp",
    );
    let create = |body: serde_json::Value| {
        let api = api.clone();
        async move {
            let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(body).unwrap();
            api.create(&kube::api::PostParams::default(), &d)
                .await
                .unwrap();
        }
    };
    let names = || {
        let api = api.clone();
        async move {
            let mut n: Vec<String> = api
                .list(&kube::api::ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|d| d.metadata.name)
                .collect();
            n.sort();
            n
        }
    };
    create(legacy.clone()).await;
    s.deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    assert_eq!(names().await, [deployment_name(&spec.id)]);
    create(legacy).await;
    assert!(s.undeploy(&spec.id).await.unwrap());
    assert!(names().await.is_empty());
}

/// The lease conformance suite on `coordination.k8s.io/v1` Leases in the double, directly
/// and through the tests' fault proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_leases_pass_the_lease_conformance_suite_including_faults() {
    let double = KubeDouble::start().await;
    let direct = scheduler(&double).await;
    vamp_core::conformance::lease::run_all(&direct, "kube").await;
    let target = double.address().trim_start_matches("http://").to_owned();
    let proxy = fault_proxy::FaultProxy::start(target, Box::new(|| Box::pin(async {}))).await;
    vamp_backends::scheduler::kubernetes::install_tls_provider();
    let mut config = kube::Config::new(format!("http://127.0.0.1:{}", proxy.port).parse().unwrap());
    config.read_timeout = Some(std::time::Duration::from_secs(5));
    config.connect_timeout = Some(std::time::Duration::from_secs(2));
    let mut opts = KubernetesOptions::default();
    opts.namespace = "vamp".into();
    let faulty = KubernetesScheduler::connect(kube::Client::try_from(config).unwrap(), opts)
        .await
        .unwrap();
    vamp_core::conformance::lease::leases_survive_faults(&faulty, &direct, "kube", &proxy).await;
}

/// The same on a real cluster's Leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set VAMP_TEST_KUBERNETES=1 or KUBECONFIG"]
async fn a_real_cluster_s_leases_pass_the_lease_conformance_suite() {
    let client = kube::Client::try_default()
        .await
        .expect("cluster credentials");
    let mut opts = KubernetesOptions::default();
    if let Ok(ns) = std::env::var("VAMP_TEST_KUBERNETES_NAMESPACE") {
        opts.namespace = ns;
    }
    let s = KubernetesScheduler::connect(client, opts).await.unwrap();
    vamp_core::conformance::lease::run_all(&s, &format!("vamp-test-{}", std::process::id())).await;
}

/// Waits (bounded, 10 s) until `f` gives a value.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A workflow's one-shot run is a Job with the service's pod template, never restarted and
/// labelled as a run; it completes and Kubernetes removes it after the run's time to live; a
/// run still going is listed and can be stopped (its Job deleted). A run is no service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_runs_are_jobs_that_complete_and_are_cleaned_up() {
    let double = KubeDouble::start().await;
    let s = KubernetesScheduler::connect(
        client(&double, None),
        KubernetesOptions::new("vamp").with_run_ttl(std::time::Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let id = ServiceId::new("vamp-workflows", "nightly", "job");
    let mut spec = ServiceSpec::new(id.clone(), image());
    spec.environment.insert("WORKFLOW".into(), "nightly".into());
    s.run_once(spec.clone()).await.unwrap();
    let jobs = double.jobs("vamp");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (name, job) = jobs.iter().next().unwrap();
    assert!(
        name.starts_with(&deployment_name(&id)[..20]) && name.len() <= 63,
        "{name}"
    );
    assert_eq!(job["metadata"]["labels"]["io.vamp"], "workflow-run");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 1);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["containers"][0]["image"], "magneticio/sava:1.0.0");
    assert!(
        pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "WORKFLOW", "value": "nightly"})),
        "{pod}"
    );
    assert!(
        s.services().await.unwrap().is_empty(),
        "a run is no service"
    );
    eventually("the run completes", async || {
        s.runs(&id).await.unwrap().is_empty().then_some(())
    })
    .await;
    assert_eq!(
        double.jobs("vamp")[name]["status"]["succeeded"],
        1,
        "completed, not deleted yet"
    );
    eventually(
        "the finished Job is removed after its time to live",
        async || double.jobs("vamp").is_empty().then_some(()),
    )
    .await;

    // A run still going: listed, stopped by name, and only a run of its own service.
    let mut long = spec;
    long.deployable.definition = "example/long-running:1".into();
    s.run_once(long).await.unwrap();
    let runs = s.runs(&id).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let other = ServiceId::new("vamp-workflows", "other", "job");
    assert!(!s.stop_run(&other, &runs[0].name).await.unwrap());
    assert!(s.stop_run(&id, &runs[0].name).await.unwrap());
    assert!(double.jobs("vamp").is_empty());
    assert!(s.runs(&id).await.unwrap().is_empty());
}

/// The same on a real cluster: a run completes as a Job and Kubernetes removes it after its
/// time to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set VAMP_TEST_KUBERNETES=1 or KUBECONFIG"]
async fn a_real_cluster_runs_one_shot_runs_as_jobs() {
    let client = kube::Client::try_default()
        .await
        .expect("cluster credentials");
    let ns = std::env::var("VAMP_TEST_KUBERNETES_NAMESPACE").unwrap_or_else(|_| "default".into());
    let s = KubernetesScheduler::connect(
        client.clone(),
        KubernetesOptions::new(ns.clone()).with_run_ttl(std::time::Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let id = ServiceId::new("vamp-test", format!("run{}", std::process::id()), "job");
    let mut spec = ServiceSpec::new(
        id.clone(),
        Deployable {
            deployable_type: Some("docker".into()),
            definition: std::env::var("VAMP_TEST_KUBERNETES_RUN_IMAGE")
                .unwrap_or_else(|_| "busybox:1.36".into()),
        },
    );
    spec.dialects.insert(
        "kubernetes".into(),
        vamp_core::node::Node::from_json(
            &json!({"container": {"command": ["sh", "-c", "exit 0"]}}),
        ),
    );
    s.run_once(spec).await.unwrap();
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(client, &ns);
    let selector = format!(
        "io.vamp=workflow-run,io.vamp.deployment-service={}",
        deployment_name(&id)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut completed = false;
    loop {
        let listed = jobs
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items;
        completed |= listed
            .iter()
            .any(|j| j.status.as_ref().and_then(|s| s.succeeded) == Some(1));
        if completed && listed.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not complete and go in 300 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Gateway Services (Vamp's `create-services`), as the reconcile loop's gateway side: each
/// gateway with a port gets a Service of the configured type selecting the gateway agents'
/// pods; a changed port replaces it, a gateway gone removes it, and a pass with the same
/// gateways does not call the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_get_services_of_the_configured_type() {
    use std::collections::BTreeMap;
    use vamp_backends::scheduler::kubernetes::{
        GatewayServiceType, GatewayServices, gateway_service_name,
    };
    let double = KubeDouble::start().await;
    let wanted = |pairs: &[(&str, u16)]| -> BTreeMap<String, u16> {
        pairs.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect()
    };
    let services = GatewayServices::new(
        client(&double, None),
        "vamp",
        GatewayServiceType::parse("loadbalancer").unwrap(),
    )
    .with_owner("cp-1");
    // Another control plane's gateway Service in the same namespace.
    let other = GatewayServices::new(client(&double, None), "vamp", GatewayServiceType::NodePort)
        .with_owner("cp-2");
    other.sync(wanted(&[("theirs", 9999)])).await.unwrap();
    let plan = services
        .sync(wanted(&[("sava", 9050), ("shop/frontend/web", 40001)]))
        .await
        .unwrap();
    assert_eq!(plan.create.len(), 2);
    let listed = double.services("vamp");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let sava = &listed["sava"];
    assert_eq!(sava["metadata"]["labels"]["io.vamp.owner"], "cp-1");
    assert_eq!(sava["spec"]["type"], "LoadBalancer");
    assert_eq!(
        sava["spec"]["selector"],
        json!({"io.vamp": "vamp-gateway-agent"})
    );
    assert_eq!(sava["spec"]["ports"][0]["port"], 9050);
    assert_eq!(sava["metadata"]["labels"]["io.vamp"], "gateway");
    let hashed = gateway_service_name("shop/frontend/web");
    assert!(hashed.starts_with("hex") && hashed.len() == 23, "{hashed}");
    assert_eq!(
        listed[&hashed]["metadata"]["annotations"]["io.vamp/gateway"],
        "shop/frontend/web"
    );
    // The same gateways: nothing asked of the API server.
    let before = double.requests().len();
    let plan = services
        .sync(wanted(&[("sava", 9050), ("shop/frontend/web", 40001)]))
        .await
        .unwrap();
    assert_eq!(plan, Default::default());
    assert_eq!(double.requests().len(), before);
    // A port changes and a gateway goes.
    let plan = services.sync(wanted(&[("sava", 9060)])).await.unwrap();
    assert_eq!((plan.replace.len(), plan.delete.len()), (1, 1), "{plan:?}");
    let listed = double.services("vamp");
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["sava", "theirs"]);
    assert_eq!(listed["sava"]["spec"]["ports"][0]["port"], 9060);
    assert_eq!(
        listed["sava"]["spec"]["clusterIP"], sava["spec"]["clusterIP"],
        "replaced in place"
    );
    assert_eq!(
        listed["theirs"]["spec"]["type"], "NodePort",
        "another control plane's, untouched"
    );
    assert!(
        listed["theirs"]["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .is_some_and(|p| p >= 30000)
    );
    assert!(GatewayServiceType::parse("ExternalName").is_err());
}

/// Every object of the manifests is what its `k8s-openapi` type reads: read and written back,
/// it is unchanged (a misspelt or misplaced field would be dropped, and fail here).
#[test]
fn the_manifests_are_typed_kubernetes_objects() {
    use k8s_openapi::api::{apps, core, rbac};
    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &serde_json::Value) {
        let typed: T = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", v["metadata"]["name"]));
        assert_eq!(
            &serde_json::to_value(&typed).unwrap(),
            v,
            "{} {} reads back the same",
            v["kind"],
            v["metadata"]["name"]
        );
    }
    let objects = KubeDouble::vamp_manifests();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "DaemonSet"
        ]
    );
    for o in &objects {
        match o["kind"].as_str().unwrap() {
            "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(o),
            "Role" => round_trip::<rbac::v1::Role>(o),
            "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(o),
            "ConfigMap" => round_trip::<core::v1::ConfigMap>(o),
            "Deployment" => round_trip::<apps::v1::Deployment>(o),
            "Service" => round_trip::<core::v1::Service>(o),
            "DaemonSet" => round_trip::<apps::v1::DaemonSet>(o),
            other => panic!("unexpected kind {other}"),
        }
    }
    // The agents' pods carry the label gateway Services select, and no API token.
    let agents = objects.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    assert_eq!(
        agents["spec"]["template"]["metadata"]["labels"]["io.vamp"],
        "vamp-gateway-agent"
    );
    assert_eq!(
        agents["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
}

/// The Role grants exactly what `vamp serve` calls on Kubernetes (least privilege): every
/// (API group, resource, verb) that the scheduler, its one-shot runs, the gateway Services
/// and the election send to the API server, and nothing else; every call made as vamp's
/// service account, which the double's RBAC authorizes by that Role. The gateway agents call
/// no Kubernetes API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_grants_exactly_what_vamp_calls() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::api::PostParams;
    use std::collections::{BTreeMap, BTreeSet};
    use vamp_backends::scheduler::kubernetes::{GatewayServiceType, GatewayServices};
    let double = KubeDouble::start().await;
    // The manifests' Role and its binding to vamp's service account, whose token every call
    // below bears: the double's RBAC refuses what the Role does not grant.
    let admin = client(&double, None);
    for o in KubeDouble::vamp_manifests() {
        match o["kind"].as_str() {
            Some("Role") => {
                kube::Api::<Role>::namespaced(admin.clone(), "vamp")
                    .create(&PostParams::default(), &serde_json::from_value(o).unwrap())
                    .await
                    .unwrap();
            }
            Some("RoleBinding") => {
                kube::Api::<RoleBinding>::namespaced(admin.clone(), "vamp")
                    .create(&PostParams::default(), &serde_json::from_value(o).unwrap())
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    let token = double.service_account_token("vamp", "vamp");
    let before = double.requests().len();
    // Everything vamp serve does on Kubernetes: services (deploy, scale, update, undeploy,
    // watch, adoption), runs (start, list, stop), gateway Services, the election.
    let s = KubernetesScheduler::connect(
        client(&double, Some(&token)),
        KubernetesOptions::new("vamp").with_run_ttl(std::time::Duration::from_secs(1)),
    )
    .await
    .unwrap();
    suite::run_all(&s, "rbac", &image()).await;
    let id = ServiceId::new("vamp-workflows", "nightly", "job");
    let mut long = ServiceSpec::new(id.clone(), image());
    long.deployable.definition = "example/long-running:1".into();
    s.run_once(long).await.unwrap();
    let run = s.runs(&id).await.unwrap().remove(0);
    assert!(s.stop_run(&id, &run.name).await.unwrap());
    let services = GatewayServices::new(
        client(&double, Some(&token)),
        "vamp",
        GatewayServiceType::NodePort,
    );
    for ports in [&[("a", 9050), ("b", 9051)][..], &[("a", 9060)][..]] {
        services
            .sync(
                ports
                    .iter()
                    .map(|(n, p)| ((*n).to_owned(), *p))
                    .collect::<BTreeMap<_, _>>(),
            )
            .await
            .unwrap();
    }
    vamp_core::conformance::lease::run_all(&s, "rbac").await;

    assert_eq!(double.forbidden(), Vec::<String>::new());
    // What the Role does not grant is refused.
    let secrets = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(
        client(&double, Some(&token)),
        "vamp",
    )
    .list(&Default::default())
    .await;
    assert!(
        matches!(&secrets, Err(kube::Error::Api(s)) if s.code == 403),
        "{secrets:?}"
    );
    assert_eq!(double.forbidden().len(), 1);
    let called: BTreeSet<(String, String, String)> = double.requests()[before..]
        .iter()
        .filter(|r| !r.path.contains("/secrets"))
        .map(|r| {
            r.rbac_attributes().unwrap_or_else(|| {
                panic!(
                    "a call outside the namespace or of another method: {} {}",
                    r.method, r.path
                )
            })
        })
        .collect();
    let role = KubeDouble::vamp_manifests()
        .into_iter()
        .find(|o| o["kind"] == "Role")
        .unwrap();
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in rule["apiGroups"].as_array().unwrap() {
            for res in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    granted.insert((
                        g.as_str().unwrap().to_owned(),
                        res.as_str().unwrap().to_owned(),
                        v.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    let missing: Vec<_> = called.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&called).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "called but not granted: {missing:?}; granted but never called: {unused:?}"
    );
}

/// Without `?namespace=` in the URL, `kubernetes://` works in the namespace its credentials
/// name: the pod's own in a cluster, the kubeconfig context's outside one. Run in a child
/// process of this test, so that its `KUBECONFIG` is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_namespace_the_credentials_namespace_is_used() {
    const CHILD: &str = "VAMP_TEST_KUBECONFIG_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let s = vamp_backends::scheduler::SchedulerBackendConfig::from_url("kubernetes://")
            .unwrap()
            .build()
            .await
            .unwrap();
        s.deploy(
            ServiceSpec::new(ServiceId::new("ns", "web", "web"), image()),
            DeployOptions::default(),
        )
        .await
        .unwrap();
        return;
    }
    let double = KubeDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: '{}'}}\ncontexts:\n- name: double\n  context: {{cluster: double, namespace: team-a, user: nobody}}\ncurrent-context: double\nusers:\n- name: nobody\n  user: {{}}\n",
            double.address()
        ),
    )
    .unwrap();
    let status = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_a_namespace_the_credentials_namespace_is_used",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        // Its own test summary would be counted as the run's; failures show on stderr.
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the child test failed: {status}");
    let created: Vec<String> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        created,
        ["/apis/apps/v1/namespaces/team-a/deployments"],
        "{created:?}"
    );
}
