//! `vamp serve` on the machine's real Docker engine: two versions of an HTTP service run as
//! containers behind the in-process gateway agent's real HAProxy, and the traffic splits as
//! the gateway's weights say. Required with CI=true or VAMP_TEST_INTEGRATION=1 (the test
//! command provides HAProxy and an engine).
#![cfg(feature = "docker")]

#[path = "../../vamp-backends/tests/docker_image/mod.rs"]
mod docker_image;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value;
use support::{free_port, haproxy_or_skip, through};
use vamp_examples::serve::{ServeConfig, start};

fn breed(version: &str) -> String {
    format!(
        "        name: web:{version}\n        deployable:\n          type: docker\n          definition: {}\n        ports: {{port: 8080/http}}\n        environment_variables: {{VERSION: '{version}'}}\n",
        docker_image::IMAGE
    )
}

/// The containers of namespace `ns`.
fn containers(ns: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.vamp.namespace={ns}"),
        ])
        .output()
        .expect("the docker command");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_versions_in_containers_split_the_traffic_by_weight() {
    if !haproxy_or_skip() {
        return;
    }
    let ns = docker_image::Namespace::new("e2e");
    let engine = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        assert!(
            !support::required(),
            "a Docker engine is required (scripts/test.sh uses the machine's or starts one)"
        );
        eprintln!("SKIPPED: no Docker engine");
        return;
    }
    docker_image::ensure_image().expect("the test image");
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::new(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.period_ms = 200;
    let mut url = format!("docker://?namespace={}", ns.0);
    if let Ok(network) = std::env::var("VAMP_TEST_DOCKER_NETWORK")
        && network == "host"
    {
        // An engine without bridge networking: the breed's port is the instance's own.
        url.push_str("&network=host");
    }
    config.scheduler = Some(url);
    let server = start(config).await.expect("vamp serve starts on docker://");
    let base = format!("http://{}/api/v1", server.addr);
    let client = Client::new();
    let put = async |path: &str, body: String| {
        let r = client
            .put(format!("{base}{path}"))
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-yaml")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
    };
    let get =
        async |path: &str| -> Value { support::get_json(&client, &format!("{base}{path}")).await };

    let port = free_port();
    let (v1, v2) = (breed("1.0"), breed("1.1"));
    put(
        "",
        format!(
            "kind: deployment\nname: shop\ngateways:\n  {port}: web/port\nclusters:\n  web:\n    services:\n    - breed:\n{v1}      scale: {{cpu: 0.1, memory: 64MB, instances: 2}}\n    - breed:\n{v2}      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n"
        ),
    )
    .await;
    support::eventually(
        "three containers, both versions deployed",
        Duration::from_secs(120),
        async || {
            let d = get("/deployments/shop").await;
            let services = d["clusters"]["web"]["services"].as_array()?.clone();
            let instances: usize = services
                .iter()
                .map(|s| s["instances"].as_array().map_or(0, Vec::len))
                .sum();
            (services.len() == 2
                && instances == 3
                && services
                    .iter()
                    .all(|s| s["status"]["phase"]["name"] == "Done")
                && containers(&ns.0) == 3)
                .then_some(())
        },
    )
    .await;

    // 80% to 1.0, 20% to 1.1 through the cluster gateway's weights.
    put(
        "/gateways/shop/web/port",
        "name: shop/web/port\nroutes:\n  shop/web/web:1.0/port: {weight: 80%}\n  shop/web/web:1.1/port: {weight: 20%}\n".into(),
    )
    .await;
    support::eventually("1.1 gets traffic", Duration::from_secs(60), async || {
        (through(&client, port).await.as_deref() == Some("1.1")).then_some(())
    })
    .await;
    let mut split: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..500 {
        let body = through(&client, port).await.expect("every request answers");
        *split.entry(body).or_default() += 1;
    }
    let v10 = split.get("1.0").copied().unwrap_or(0);
    let v11 = split.get("1.1").copied().unwrap_or(0);
    assert_eq!(v10 + v11, 500, "only the two versions answer: {split:?}");
    // 20% of 500 is 100; HAProxy's weighted round robin keeps it close.
    assert!((70..=130).contains(&v11), "1.1: {v11} of 500 ({split:?})");

    // Undeploying removes the containers.
    let r = client
        .delete(format!("{base}/deployments/shop"))
        .header("Accept", "application/json")
        .body(format!(
            "name: shop\nclusters:\n  web:\n    services:\n    - breed:\n{v1}    - breed:\n{v2}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    support::eventually("no container left", Duration::from_secs(120), async || {
        (containers(&ns.0) == 0).then_some(())
    })
    .await;
    server.stop().await;
}
