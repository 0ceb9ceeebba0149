//! Ownership of scheduler resources across control planes: a second `vamp serve` started
//! with an empty store against the same scheduler namespace (the machine's real Docker engine,
//! and the in-process **doubles** of the Kubernetes and Marathon APIs) leaves the first one's
//! services as they are, does not replace them when it stores a deployment of the same name,
//! and lists them (and a service of the namespace without an owner) instead of removing
//! them. Required with CI=true or VAMP_TEST_INTEGRATION=1 (the test command provides the
//! engine).
#![cfg(all(feature = "docker", feature = "marathon", feature = "kubernetes"))]

#[path = "../../vamp-backends/tests/docker_image/mod.rs"]
mod docker_image;
#[path = "../../vamp-backends/tests/http_double/mod.rs"]
#[allow(dead_code)]
mod http_double;
#[path = "../../vamp-backends/tests/kube_double/mod.rs"]
#[allow(dead_code)]
mod kube_double;
#[path = "../../vamp-backends/tests/marathon_double/mod.rs"]
#[allow(dead_code)]
mod marathon_double;
mod support;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value;
use support::{eventually, get_json, send_yaml};
use vamp_backends::scheduler::SchedulerBackendConfig;
use vamp_core::model::Deployable;
use vamp_core::scheduler::{
    ContainerScheduler, DeployOptions, DynContainerScheduler, ServiceId, ServiceSpec,
};

fn config(
    dir: &std::path::Path,
    scheduler: &str,
    in_memory: bool,
) -> vamp_examples::serve::ServeConfig {
    let mut config = vamp_examples::serve::ServeConfig::new(dir);
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.scheduler = Some(scheduler.to_owned());
    config.in_memory = in_memory;
    config.kv = Some("memory://".into());
    config.no_agent = true;
    config.period_ms = 100;
    config
}

/// The reconcile loop's completed passes on the server at `base`.
async fn passes(client: &Client, base: &str) -> u64 {
    get_json(client, &format!("{base}/info")).await["loops"]["reconcile"]["passes"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the server at `base` has reconciled `n` more times.
async fn reconciled(client: &Client, base: &str, n: u64) {
    let from = passes(client, base).await;
    eventually(
        &format!("{n} reconcile passes on {base}"),
        Duration::from_secs(60),
        async || (passes(client, base).await >= from + n).then_some(()),
    )
    .await;
}

/// The instance names of `id` as the scheduler itself reports them.
async fn instances(raw: &DynContainerScheduler, id: &ServiceId) -> Option<Vec<String>> {
    let s = raw.service(id).await.unwrap()?;
    let mut names: Vec<String> = s.instances.into_iter().map(|i| i.name).collect();
    names.sort();
    Some(names)
}

async fn second_control_plane_leaves_the_first_ones_services(
    scheduler: String,
    deployable: Deployable,
) {
    let raw: Arc<DynContainerScheduler> = SchedulerBackendConfig::from_url(&scheduler)
        .unwrap()
        .build()
        .await
        .unwrap();
    let client = Client::new();
    let breed = format!(
        "name: web:1.0\ndeployable:\n  type: docker\n  definition: {}\nports: {{port: 8080/http}}\n",
        deployable.definition
    );
    let indented: String = breed.lines().map(|l| format!("        {l}\n")).collect();
    let blueprint = format!(
        "kind: deployment\nname: shop\nclusters:\n  web:\n    services:\n    - breed:\n{indented}      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n"
    );
    let shop = ServiceId::new("shop", "web", "web:1.0");

    // The first control plane, on its own SQLite store, deploys `shop`.
    let dir_a = tempfile::tempdir().unwrap();
    let a = vamp_examples::serve::start(config(dir_a.path(), &scheduler, false))
        .await
        .unwrap_or_else(|e| panic!("the first vamp serve starts on {scheduler}: {e}"));
    let base_a = format!("http://{}/api/v1", a.addr);
    send_yaml(
        &client,
        reqwest::Method::PUT,
        base_a.clone(),
        blueprint.clone(),
    )
    .await;
    let before = eventually(
        "shop runs one instance",
        Duration::from_secs(120),
        async || instances(&raw, &shop).await.filter(|i| i.len() == 1),
    )
    .await;
    let identity_a = get_json(&client, &format!("{base_a}/info")).await["identity"]
        .as_str()
        .expect("the first server's identity")
        .to_owned();

    // A service of the namespace with Vamp's labels and no owner (as one deployed before
    // owners were recorded).
    let legacy = ServiceId::new("legacy", "web", "web:0.9");
    raw.deploy(
        ServiceSpec::new(legacy.clone(), deployable.clone()),
        DeployOptions::default(),
    )
    .await
    .unwrap();

    // The second control plane starts on an empty store (a new identity), and reconciles.
    let dir_b = tempfile::tempdir().unwrap();
    let b = vamp_examples::serve::start(config(dir_b.path(), &scheduler, true))
        .await
        .unwrap_or_else(|e| panic!("the second vamp serve starts on {scheduler}: {e}"));
    let base_b = format!("http://{}/api/v1", b.addr);
    let identity_b = get_json(&client, &format!("{base_b}/info")).await["identity"]
        .as_str()
        .expect("the second server's identity")
        .to_owned();
    assert_ne!(identity_a, identity_b, "an empty store, a new identity");
    reconciled(&client, &base_b, 5).await;
    reconciled(&client, &base_a, 3).await;
    assert_eq!(
        instances(&raw, &shop).await.as_ref(),
        Some(&before),
        "the first server's service is untouched by the second"
    );
    assert!(
        raw.service(&legacy).await.unwrap().is_some(),
        "neither server removes the ownerless service"
    );

    // Each lists what is not its own: the second both, the first only the ownerless one.
    let unowned = |base: String| {
        let client = client.clone();
        async move {
            let list = get_json(&client, &format!("{base}/scheduler/unowned")).await;
            let mut out: Vec<(String, Value)> = list
                .as_array()
                .unwrap_or_else(|| panic!("a list: {list}"))
                .iter()
                .map(|s| {
                    (
                        s["deployment"].as_str().unwrap().to_owned(),
                        s["owner"].clone(),
                    )
                })
                .collect();
            out.sort_by(|x, y| x.0.cmp(&y.0));
            out
        }
    };
    assert_eq!(
        unowned(base_b.clone()).await,
        vec![
            ("legacy".to_owned(), Value::Null),
            ("shop".to_owned(), Value::String(identity_a.clone())),
        ]
    );
    assert_eq!(
        unowned(base_a.clone()).await,
        vec![("legacy".to_owned(), Value::Null)]
    );

    // The second stores a deployment of the same name: its reconciler is refused the first
    // one's service, says why, and replaces nothing.
    send_yaml(
        &client,
        reqwest::Method::PUT,
        base_b.clone(),
        blueprint.clone(),
    )
    .await;
    eventually(
        "the second server's reconcile loop reports the service it does not own",
        Duration::from_secs(60),
        async || {
            let info = get_json(&client, &format!("{base_b}/info")).await;
            let errors = info["loops"]["reconcile"]["artifact_errors"].to_string();
            errors.contains(&identity_a).then_some(())
        },
    )
    .await;
    reconciled(&client, &base_b, 3).await;
    assert_eq!(
        instances(&raw, &shop).await.as_ref(),
        Some(&before),
        "a deployment of the same name on another control plane replaces nothing"
    );

    // The operator removes the ownerless service through the second server.
    let removed = send_yaml(
        &client,
        reqwest::Method::POST,
        format!("{base_b}/scheduler/unowned/remove"),
        "{deployment: legacy, cluster: web, service: 'web:0.9'}".into(),
    )
    .await;
    assert_eq!(removed["removed"], true, "{removed}");
    eventually(
        "the ownerless service is gone",
        Duration::from_secs(60),
        async || raw.service(&legacy).await.unwrap().is_none().then_some(()),
    )
    .await;
    // A service of its own is not "unowned": the first server refuses to remove it that way.
    let r = client
        .post(format!("{base_a}/scheduler/unowned/remove"))
        .header("Content-Type", "application/x-yaml")
        .body("{deployment: shop, cluster: web, service: 'web:1.0'}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    b.stop().await;

    // The first still owns and manages its service: removing its deployment removes it.
    send_yaml(
        &client,
        reqwest::Method::DELETE,
        format!("{base_a}/deployments/shop"),
        blueprint.replace("kind: deployment\n", ""),
    )
    .await;
    eventually(
        "the first server removes its own service",
        Duration::from_secs(120),
        async || raw.service(&shop).await.unwrap().is_none().then_some(()),
    )
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_real_docker_engine() {
    if !support::docker_engine_or_skip() {
        return;
    }
    docker_image::ensure_image().expect("the test image");
    let ns = docker_image::Namespace::new("own");
    let mut url = format!("docker://?namespace={}", ns.0);
    if std::env::var("VAMP_TEST_DOCKER_NETWORK").is_ok_and(|n| n == "host") {
        url.push_str("&network=host");
    }
    second_control_plane_leaves_the_first_ones_services(
        url,
        Deployable {
            deployable_type: Some("docker".into()),
            definition: docker_image::IMAGE.into(),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_kubernetes_double() {
    let double = kube_double::KubeDouble::start().await;
    second_control_plane_leaves_the_first_ones_services(
        format!("kubernetes://{}?tls=false&namespace=vamp", double.addr),
        Deployable {
            deployable_type: Some("docker".into()),
            definition: "magneticio/sava:1.0".into(),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_marathon_double() {
    let double = marathon_double::MarathonDouble::start().await;
    second_control_plane_leaves_the_first_ones_services(
        format!("marathon://{}?group=vamp", double.addr),
        Deployable {
            deployable_type: Some("docker".into()),
            definition: "magneticio/sava:1.0".into(),
        },
    )
    .await;
}
