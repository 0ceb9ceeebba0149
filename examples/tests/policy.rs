//! The operator policy through `vamp serve`'s API: on the machine's real Docker engine and on
//! the Marathon and Kubernetes **doubles**, a privileged breed, one that binds a host path and
//! one on the host's network are refused with the breed, field and rule named, and nothing is
//! created; with a policy that lifts those rules the same breeds are deployed.
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

use std::time::Duration;

use reqwest::{Client, StatusCode};
use vamp_backends::scheduler::marathon;
use vamp_core::scheduler::ServiceId;

/// What each platform's breeds ask for: (name, the service's extra lines, field, rule).
type Case = (&'static str, &'static str, &'static str, &'static str);

const PRIVILEGED: Case = (
    "privileged",
    "      arguments:\n      - privileged: true\n",
    "arguments.privileged",
    "privileged",
);

fn blueprint(image: &str, (name, extra, _, _): Case) -> String {
    format!(
        "name: {name}\nclusters:\n  c:\n    services:\n    - breed:\n        name: {name}-breed\n        deployable:\n          type: docker\n          definition: {image}\n        ports: {{port: 8080/http}}\n      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n{extra}"
    )
}

/// Refused under the default policy with nothing created; deployed once the rules are
/// lifted; gone when the deployments are.
async fn refused_then_allowed(
    scheduler: String,
    image: &str,
    cases: [Case; 3],
    objects: impl Fn() -> usize,
) {
    let client = Client::new();
    let post = async |base: &str, body: String| {
        let r = client
            .post(format!("{base}/deployments"))
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-yaml")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = vamp_examples::serve::ServeConfig::new(dir.path().join("data"));
    config.stop_on_exit = true;
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.in_memory = true;
    config.no_agent = true;
    config.period_ms = 100;
    config.scheduler = Some(scheduler.clone());
    let strict = vamp_examples::serve::start(config.clone()).await.unwrap();
    let base = format!("http://{}/api/v1", strict.addr);
    for case in cases {
        let (status, text) = post(&base, blueprint(image, case)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}: {text}", case.0);
        let (name, _, field, rule) = case;
        for part in [
            format!("Breed '{name}-breed'"),
            format!("'{field}'"),
            format!("rule '{rule}'"),
        ] {
            assert!(
                text.contains(&part),
                "{name} on {scheduler}: {part} in {text}"
            );
        }
    }
    let stored = support::get_json(&client, &format!("{base}/deployments")).await;
    assert_eq!(stored, serde_json::json!([]), "nothing stored");
    assert_eq!(objects(), 0, "nothing created on {scheduler}");
    strict.stop().await;

    config.policy_allow = vec![
        "privileged".into(),
        "host-paths".into(),
        "host-namespaces".into(),
    ];
    let lax = vamp_examples::serve::start(config).await.unwrap();
    let base = format!("http://{}/api/v1", lax.addr);
    for case in cases {
        let (status, text) = post(&base, blueprint(image, case)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{}: {text}", case.0);
    }
    support::eventually(
        "the allowed breeds are deployed",
        Duration::from_secs(120),
        async || (objects() == 3).then_some(()),
    )
    .await;
    for case in cases {
        let r = client
            .delete(format!("{base}/deployments/{}", case.0))
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-yaml")
            .body(blueprint(image, case))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    support::eventually(
        "the deployments are removed",
        Duration::from_secs(120),
        async || (objects() == 0).then_some(()),
    )
    .await;
    lax.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_refuses_on_the_real_docker_engine() {
    let engine = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        assert!(!support::required(), "a Docker engine is required");
        eprintln!("SKIPPED: no Docker engine");
        return;
    }
    docker_image::ensure_image().expect("the test image");
    let ns = docker_image::Namespace::new("policy");
    let mut url = format!("docker://?namespace={}", ns.0);
    if std::env::var("VAMP_TEST_DOCKER_NETWORK").is_ok_and(|n| n == "host") {
        url.push_str("&network=host");
    }
    let containers = || ns.containers().expect("the containers").len();
    refused_then_allowed(
        url,
        docker_image::IMAGE,
        [
            PRIVILEGED,
            (
                "bind",
                "      dialects:\n        docker: {HostConfig: {Binds: ['/tmp:/host:ro']}}\n",
                "dialects.docker.HostConfig.Binds",
                "host-paths",
            ),
            (
                "hostnet",
                "      network: HOST\n",
                "network",
                "host-namespaces",
            ),
        ],
        containers,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_refuses_on_the_marathon_double() {
    let double = marathon_double::MarathonDouble::start().await;
    let apps: Vec<String> = ["privileged", "bind", "hostnet"]
        .iter()
        .map(|n| marathon::app_id("vamp", &ServiceId::new(*n, "c", format!("{n}-breed"))))
        .collect();
    refused_then_allowed(
        format!("marathon://{}?group=vamp", double.addr),
        "magneticio/sava:1.0.0",
        [
            PRIVILEGED,
            (
                "bind",
                "      dialects:\n        marathon: {container: {volumes: [{containerPath: /host, hostPath: /tmp, mode: RO}]}}\n",
                "dialects.marathon.container.volumes[0].hostPath",
                "host-paths",
            ),
            ("hostnet", "      network: HOST\n", "network", "host-namespaces"),
        ],
        || apps.iter().filter(|a| double.app(a).is_some()).count(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_refuses_on_the_kubernetes_double() {
    let double = kube_double::KubeDouble::start().await;
    refused_then_allowed(
        format!("kubernetes://{}?tls=false&namespace=policy", double.addr),
        "magneticio/sava:1.0.0",
        [
            PRIVILEGED,
            (
                "bind",
                "      dialects:\n        kubernetes: {volumes: [{name: host, hostPath: {path: /tmp}}]}\n",
                "dialects.kubernetes.volumes[0].hostPath",
                "host-paths",
            ),
            (
                "hostnet",
                "      dialects:\n        kubernetes: {hostNetwork: true}\n",
                "dialects.kubernetes.hostNetwork",
                "host-namespaces",
            ),
        ],
        || double.pods("policy").len(),
    )
    .await;
}
