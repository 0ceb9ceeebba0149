//! `vamp serve` on the machine's real Docker engine: two versions of an HTTP service run as
//! containers behind the in-process gateway agent's real HAProxy, and the traffic splits as
//! the gateway's weights say. Required with CI=true or VAMP_TEST_INTEGRATION=1 (the test
//! command provides HAProxy and an engine).
#![cfg(feature = "docker")]

#[path = "../../vamp-backends/tests/docker_image/mod.rs"]
mod docker_image;

use support::haproxy_or_skip;
mod support;

fn breed(version: &str) -> String {
    format!(
        "        name: web:{version}\n        deployable:\n          type: docker\n          definition: {}\n        ports: {{port: 8080/http}}\n        environment_variables: {{VERSION: '{version}'}}\n",
        docker_image::IMAGE
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_versions_in_containers_split_the_traffic_by_weight() {
    if !haproxy_or_skip() {
        return;
    }
    let ns = docker_image::Namespace::new("e2e");
    if !support::docker_engine_or_skip() {
        return;
    }
    docker_image::ensure_image().expect("the test image");
    let mut url = format!("docker://?namespace={}", ns.0);
    if let Ok(network) = std::env::var("VAMP_TEST_DOCKER_NETWORK")
        && network == "host"
    {
        // An engine without bridge networking: the breed's port is the instance's own.
        url.push_str("&network=host");
    }
    support::weighted_split_on(
        url,
        breed,
        |body| Some(body.to_owned()),
        async || ns.containers().expect("the containers").is_empty(),
    )
    .await;
}
