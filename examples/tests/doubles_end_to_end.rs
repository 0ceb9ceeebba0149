//! `vamp serve` unchanged on Marathon and on Kubernetes: the control plane deploys two
//! versions through each scheduler, here an in-process **double** of the platform's API (the
//! doubles of `vamp-backends/tests`, whose simulated tasks and pods answer HTTP on loopback),
//! and the in-process agent's real HAProxy splits traffic between the instances as the
//! gateway's weights say. Required with CI=true or VAMP_TEST_INTEGRATION=1 (HAProxy).
#![cfg(all(feature = "marathon", feature = "kubernetes"))]

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

use support::haproxy_or_skip;
use vamp_backends::scheduler::{kubernetes, marathon};
use vamp_core::scheduler::ServiceId;

fn breed(version: &str) -> String {
    format!(
        "        name: web:{version}\n        deployable:\n          type: docker\n          definition: magneticio/sava:{version}\n        ports: {{port: 8080/http}}\n"
    )
}

fn id(version: &str) -> ServiceId {
    ServiceId::new("shop", "web", format!("web:{version}"))
}

/// One after the other: two `vamp serve` at once would both give their cluster gateway the
/// first port of the gateway range, and the second one's agent would (rightly) leave that
/// gateway out, its port being another HAProxy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vamp_serve_splits_traffic_on_marathon_then_on_kubernetes() {
    if !haproxy_or_skip() {
        return;
    }
    on_marathon().await;
    on_kubernetes().await;
}

async fn on_marathon() {
    let double = marathon_double::MarathonDouble::start().await;
    // A task answers "<app id> <task id>".
    let apps: Vec<(String, String)> = ["1.0", "1.1"]
        .iter()
        .map(|v| ((*v).to_owned(), marathon::app_id("vamp", &id(v))))
        .collect();
    support::weighted_split_on(
        format!("marathon://{}?group=vamp", double.addr),
        breed,
        |body| {
            apps.iter()
                .find(|(_, app)| body.starts_with(&format!("{app} ")))
                .map(|(v, _)| v.clone())
        },
        async || apps.iter().all(|(_, app)| double.app(app).is_none()),
    )
    .await;
}

async fn on_kubernetes() {
    let double = kube_double::KubeDouble::start().await;
    // A pod answers its name, "<deployment>-<template hash>-<n>".
    let deployments: Vec<(String, String)> = ["1.0", "1.1"]
        .iter()
        .map(|v| ((*v).to_owned(), kubernetes::deployment_name(&id(v))))
        .collect();
    support::weighted_split_on(
        format!("kubernetes://{}?tls=false&namespace=vamp", double.addr),
        breed,
        |body| {
            deployments
                .iter()
                .find(|(_, d)| body.starts_with(&format!("{d}-")))
                .map(|(v, _)| v.clone())
        },
        // Undeployed: no pod and no gateway Service left.
        async || double.pods("vamp").is_empty() && double.services("vamp").is_empty(),
    )
    .await;
    // While it ran, each gateway had a Service of its own (Vamp's create-services) selecting
    // the gateway agents, labelled with this control plane.
    let created: Vec<serde_json::Value> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v1/namespaces/vamp/services")
        .map(|r| r.body)
        .collect();
    let gateways: std::collections::BTreeSet<&str> = created
        .iter()
        .filter_map(|b| b["metadata"]["annotations"]["io.vamp/gateway"].as_str())
        .collect();
    assert!(
        gateways.contains("shop/web/port")
            && gateways.iter().any(|g| g.starts_with("shop/"))
            && gateways.len() == 2,
        "{gateways:?}"
    );
    assert!(created.iter().all(|b| b["spec"]["type"] == "NodePort"
        && b["spec"]["selector"]["io.vamp"] == "vamp-gateway-agent"
        && b["metadata"]["labels"]["io.vamp.owner"].is_string()));
}
