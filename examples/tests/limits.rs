//! The server's quotas and limits over real HTTP: workflow runs killed at their timeout and
//! never overlapping (real processes on the local scheduler), event streams dropped at once
//! when closed and refused beyond their limit, service and instance quotas, tag, name and
//! template limits.

mod support;

use std::time::Duration;

use reqwest::{Client, StatusCode};
use vamp_examples::serve::{ServeConfig, Server, start};

fn config(dir: &std::path::Path) -> ServeConfig {
    let mut config = support::memory_config(dir);
    config.period_ms = 100;
    config
}

async fn send(
    client: &Client,
    s: &Server,
    method: reqwest::Method,
    path: &str,
    yaml: &str,
) -> (StatusCode, String) {
    let r = client
        .request(method, format!("http://{}/api/v1{path}", s.addr))
        .header("Accept", "application/json")
        .header("Content-Type", "application/x-yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The `sleep` processes whose command line holds `marker` (not a shell around one).
fn sleeps(marker: &str) -> Vec<u32> {
    support::pids_where(|cmdline| cmdline.starts_with("sleep ") && cmdline.contains(marker))
}

/// How many of them there are.
fn processes(marker: &str) -> usize {
    sleeps(marker).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_time_workflow_keeps_one_run_killed_at_its_timeout_and_none_after_deletion()
{
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.scheduler = Some(format!(
        "local://{}",
        dir.path().join("instances").display()
    ));
    c.workflow_timeout_s = 2;
    let s = start(c).await.unwrap();
    let client = Client::new();
    // A unique duration marks this test's processes.
    let marker = format!("{}", 900_000 + std::process::id() % 90_000);
    let wf = format!(
        "name: forever\nbreed:\n  name: forever\n  deployable: {{type: command, definition: 'sleep {marker}'}}\nschedule:\n  time: {{period: PT1S}}\n"
    );
    let (status, text) = send(&client, &s, reqwest::Method::POST, "/workflows", &wf).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    support::eventually("a run starts", Duration::from_secs(30), async || {
        (processes(&marker) == 1).then_some(())
    })
    .await;
    // Every second a run falls due; the previous one is alive until its timeout kills it.
    // Watched until two runs have been killed: never more than one alive.
    let killed = async || {
        let events = support::get_json(
            &client,
            &format!(
                "http://{}/api/v1/events?tag=workflows:forever&tag=timeout",
                s.addr
            ),
        )
        .await;
        events.as_array().map_or(0, Vec::len)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    while killed().await < 2 {
        most = most.max(processes(&marker));
        assert!(
            std::time::Instant::now() < deadline,
            "no run was killed at its timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(most, 1, "at most one run alive at a time");
    let events = support::get_json(
        &client,
        &format!(
            "http://{}/api/v1/events?tag=workflows:forever&tag=timeout",
            s.addr
        ),
    )
    .await;
    assert!(
        events[0]["value"]
            .as_str()
            .unwrap()
            .contains("execution timeout of 2 s"),
        "{events}"
    );
    // Deleted: its run goes too.
    let r = client
        .delete(format!("http://{}/api/v1/workflows/forever", s.addr))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    support::eventually("no run is left", Duration::from_secs(30), async || {
        (processes(&marker) == 0).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_event_streams_are_dropped_at_once_and_open_ones_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_event_streams = 50;
    let s = start(c).await.unwrap();
    let client = Client::new();
    let url = |i: usize| format!("http://{}/api/v1/events/stream?tag=never-{i}", s.addr);
    // 10,000 streams whose tags never match, opened and closed.
    for round in 0..200 {
        let mut open = Vec::new();
        for i in 0..50 {
            let r = client.get(url(round * 50 + i)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            open.push(r);
        }
        assert_eq!(s.events.subscribers(), 50);
        // Over the limit: refused.
        let over = client.get(url(0)).send().await.unwrap();
        assert_eq!(
            over.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "round {round}"
        );
        drop(open);
        support::eventually(
            "the closed streams are gone",
            Duration::from_secs(10),
            async || (s.events.subscribers() == 0).then_some(()),
        )
        .await;
    }
    // Tags per stream and their length.
    let many: String = (0..40).map(|i| format!("tag=t{i}&")).collect();
    let r = client
        .get(format!("http://{}/api/v1/events/stream?{many}", s.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = client
        .get(format!(
            "http://{}/api/v1/events/stream?tag={}",
            s.addr,
            "x".repeat(300)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.events.subscribers(), 0);
    s.stop().await;
}

fn blueprint(name: &str, services: usize, instances: usize) -> String {
    let mut b = format!("name: {name}\nclusters:\n  c:\n    services:\n");
    for i in 0..services {
        b.push_str(&format!(
            "    - breed:\n        name: {name}-{i}\n        deployable: magneticio/sava:1.0.0\n        ports: {{web: 8080/http}}\n      scale: {{cpu: 0.1, memory: 64MB, instances: {instances}}}\n"
        ));
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_instance_name_and_template_quotas_refuse_before_storing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_services = 3;
    c.max_instances = 10;
    let s = start(c).await.unwrap();
    let client = Client::new();
    let post =
        async |yaml: String| send(&client, &s, reqwest::Method::POST, "/deployments", &yaml).await;
    assert_eq!(post(blueprint("a", 2, 3)).await.0, StatusCode::ACCEPTED);
    // A third and fourth service: over the service quota.
    let (status, text) = post(blueprint("b", 2, 1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("4 services") && text.contains("--max-services"),
        "{text}"
    );
    // One more service of 5 instances: over the instance quota (6 + 5 > 10).
    let (status, text) = post(blueprint("c", 1, 5)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("11 instances") && text.contains("--max-instances"),
        "{text}"
    );
    let stored = support::get_json(&client, &format!("http://{}/api/v1/deployments", s.addr)).await;
    let names: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["a"],
        "nothing of the refused deployments was stored"
    );
    let breeds = support::get_json(&client, &format!("http://{}/api/v1/breeds", s.addr)).await;
    assert_eq!(
        breeds.as_array().unwrap().len(),
        2,
        "no breed of them either: {breeds}"
    );
    // Scaling a service up past the quota is refused too; within it, it passes.
    let (status, _) = send(
        &client,
        &s,
        reqwest::Method::PUT,
        "/deployments/a/clusters/c/services/a-0/scale",
        "{cpu: 0.1, memory: 64MB, instances: 8}",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(
        &client,
        &s,
        reqwest::Method::PUT,
        "/deployments/a/clusters/c/services/a-0/scale",
        "{cpu: 0.1, memory: 64MB, instances: 7}",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Names.
    let long = "n".repeat(300);
    let (status, text) = send(
        &client,
        &s,
        reqwest::Method::POST,
        "/breeds",
        &format!("name: {long}\ndeployable: magneticio/sava:1.0.0\n"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("longer than 256"), "{text}");
    // Templates: size and count.
    let put = async |name: String, bytes: usize| {
        client
            .put(format!(
                "http://{}/api/v1/vga/haproxy/{name}/template",
                s.addr
            ))
            .header("Content-Type", "application/octet-stream")
            .body("#".repeat(bytes))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(put("big".into(), 300 << 10).await, StatusCode::BAD_REQUEST);
    for i in 0..64 {
        assert_eq!(put(format!("t{i}"), 10).await, StatusCode::ACCEPTED);
    }
    assert_eq!(put("t64".into(), 10).await, StatusCode::BAD_REQUEST);
    assert_eq!(
        put("t0".into(), 20).await,
        StatusCode::ACCEPTED,
        "an update is not a new one"
    );
    s.stop().await;
}

/// A loop whose pass panics is restarted, and `/api/v1/info` shows the restart and the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loop_is_restarted_and_info_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.panic_once_in = Some("reconcile".into());
    let s = start(c).await.unwrap();
    let client = Client::new();
    let info = support::eventually(
        "the reconcile loop runs again",
        Duration::from_secs(30),
        async || {
            let info = support::get_json(&client, &format!("http://{}/api/v1/info", s.addr)).await;
            (info["loops"]["reconcile"]["passes"].as_u64()? > 0).then_some(info)
        },
    )
    .await;
    let reconcile = &info["loops"]["reconcile"];
    assert_eq!(reconcile["restarts"], 1, "{info}");
    assert!(
        reconcile["last_error"]
            .as_str()
            .unwrap()
            .contains("panicked: panic hook"),
        "{info}"
    );
    assert_eq!(reconcile["status"], "ok", "{info}");
    assert_eq!(info["degraded"], false, "{info}");
    for other in ["canary", "sla", "pulse", "workflows"] {
        assert_eq!(info["loops"][other]["restarts"], 0, "{other}: {info}");
    }
    // The restarted loop does its work: a deployment is deployed.
    let (status, text) = send(
        &client,
        &s,
        reqwest::Method::POST,
        "/deployments",
        &blueprint("after", 1, 1),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    support::eventually(
        "deployed after the restart",
        Duration::from_secs(30),
        async || {
            let d = support::get_json(
                &client,
                &format!("http://{}/api/v1/deployments/after", s.addr),
            )
            .await;
            (d["clusters"]["c"]["services"][0]["status"]["phase"]["name"] == "Done").then_some(())
        },
    )
    .await;
    s.stop().await;
}

/// A daemon workflow's service is the workflow loop's: reconcile passes leave its process
/// alone (it was undeployed by one loop and deployed again by the other), and the
/// deployment name of workflow services is reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_workflow_keeps_one_process_through_reconcile_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.scheduler = Some(format!(
        "local://{}",
        dir.path().join("instances").display()
    ));
    let s = start(c).await.unwrap();
    let client = Client::new();
    let marker = format!("{}", 800_000 + std::process::id() % 90_000);
    let wf = format!(
        "name: daemon\nbreed:\n  name: daemon\n  deployable: {{type: command, definition: 'sleep {marker}'}}\nschedule: daemon\n"
    );
    let (status, text) = send(&client, &s, reqwest::Method::POST, "/workflows", &wf).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let pids = || sleeps(&marker);
    let first = support::eventually("the daemon runs", Duration::from_secs(30), async || {
        let p = pids();
        (p.len() == 1).then_some(p)
    })
    .await;
    let passes = async || {
        support::get_json(&client, &format!("http://{}/api/v1/info", s.addr)).await["loops"]["reconcile"]["passes"]
            .as_u64()
            .unwrap_or(0)
    };
    let start_passes = passes().await;
    // Thirty reconcile passes (100 ms apart), the process watched throughout.
    support::eventually(
        "thirty reconcile passes",
        Duration::from_secs(60),
        async || {
            assert_eq!(pids(), first, "the daemon's process is the same one");
            (passes().await >= start_passes + 30).then_some(())
        },
    )
    .await;
    assert_eq!(pids(), first);
    let (status, text) = send(
        &client,
        &s,
        reqwest::Method::POST,
        "/deployments",
        &blueprint("workflows", 1, 1),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("reserved"), "{text}");
    s.stop().await;
}
