//! What the programs' tests share.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Whether integration tests must run (CI=true or VAMP_TEST_INTEGRATION=1): a missing
/// server is then a failure, not a skip.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether HAProxy runs here; panics when it is required and does not.
pub fn haproxy_or_skip() -> bool {
    if vamp_examples::serve::haproxy_works("haproxy") {
        return true;
    }
    assert!(
        !required(),
        "HAProxy is required (scripts/test.sh installs it)"
    );
    eprintln!("SKIPPED: no HAProxy on this machine");
    false
}

/// Whether a Docker engine answers here; panics when one is required and none does.
pub fn docker_engine_or_skip() -> bool {
    let engine = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        assert!(
            !required(),
            "a Docker engine is required (scripts/test.sh uses the machine's or starts one)"
        );
        eprintln!("SKIPPED: no Docker engine");
    }
    engine
}

/// A YAML request to the API (answers asked for as JSON): its status and body.
pub async fn request_yaml(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: String,
) -> (reqwest::StatusCode, String) {
    let r = client
        .request(method, url)
        .header("Accept", "application/json")
        .header("Content-Type", "application/x-yaml")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

/// A YAML request to the API that must succeed (any 2xx): its JSON answer (`Null` when it
/// is not JSON).
pub async fn send_yaml(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: String,
) -> serde_json::Value {
    let what = format!("{method} {url}");
    let (status, text) = request_yaml(client, method, url, body).await;
    assert!(status.is_success(), "{what}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// A server's configuration for API tests: a loopback port of its own, artifacts, keys and
/// services in memory, no gateway agent, 50 ms between loop passes, and nothing left running
/// when it stops.
pub fn memory_config(dir: &std::path::Path) -> vamp_examples::serve::ServeConfig {
    let mut config = vamp_examples::serve::ServeConfig::new(dir);
    config.stop_on_exit = true;
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.in_memory = true;
    config.kv = Some("memory://".into());
    config.scheduler = Some("memory://".into());
    config.no_agent = true;
    config.period_ms = 50;
    config
}

/// The processes whose command line (arguments joined by spaces) `wanted` accepts, by pid.
pub fn pids_where(wanted: impl Fn(&str) -> bool) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            wanted(&String::from_utf8_lossy(&cmdline).replace('\0', " ")).then_some(pid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// The first `host:port` of etcd endpoints as the test command gives them
/// (`VAMP_ETCD_ENDPOINTS`: `http://h1:2379,http://h2:2379`).
pub fn etcd_host(endpoints: &str) -> String {
    endpoints
        .split(',')
        .next()
        .unwrap_or_default()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it gives a value, for at most `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One GET through a gateway on `port`: the body (trimmed), if it answered 200.
pub async fn through(client: &reqwest::Client, port: u16) -> Option<String> {
    let r = client
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    (r.status() == reqwest::StatusCode::OK).then_some(())?;
    Some(r.text().await.ok()?.trim().to_owned())
}

/// A GET of an API `url` as JSON (`Null` when it does not answer JSON).
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let Ok(r) = client
        .get(url)
        .header("Accept", "application/json")
        .send()
        .await
    else {
        return serde_json::Value::Null;
    };
    r.text()
        .await
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Runs `vamp serve` on `scheduler` (a URL), deploys two versions of a breed behind a
/// gateway (`breed(version)` gives each breed's YAML, indented for a service), waits for both
/// to run, sets 80/20 weights and measures the split over 500 requests through the
/// in-process agent's HAProxy (`classify` names the version an answer came from); then
/// undeploys and waits until `gone()` says nothing is left.
pub async fn weighted_split_on(
    scheduler: String,
    breed: impl Fn(&str) -> String,
    classify: impl Fn(&str) -> Option<String>,
    gone: impl AsyncFn() -> bool,
) {
    use reqwest::{Client, StatusCode};
    let dir = tempfile::tempdir().unwrap();
    let mut config = vamp_examples::serve::ServeConfig::new(dir.path().join("data"));
    config.stop_on_exit = true;
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.period_ms = 200;
    config.scheduler = Some(scheduler.clone());
    let server = vamp_examples::serve::start(config)
        .await
        .unwrap_or_else(|e| panic!("vamp serve starts on {scheduler}: {e}"));
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
    let port = free_port();
    let (v1, v2) = (breed("1.0"), breed("1.1"));
    put(
        "",
        format!(
            "kind: deployment\nname: shop\ngateways:\n  {port}: web/port\nclusters:\n  web:\n    services:\n    - breed:\n{v1}      scale: {{cpu: 0.1, memory: 64MB, instances: 2}}\n    - breed:\n{v2}      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n"
        ),
    )
    .await;
    eventually(
        "both versions deployed, three instances",
        Duration::from_secs(120),
        async || {
            let d = get_json(&client, &format!("{base}/deployments/shop")).await;
            let services = d["clusters"]["web"]["services"].as_array()?.clone();
            let instances: usize = services
                .iter()
                .map(|s| s["instances"].as_array().map_or(0, Vec::len))
                .sum();
            (services.len() == 2
                && instances == 3
                && services
                    .iter()
                    .all(|s| s["status"]["phase"]["name"] == "Done"))
            .then_some(())
        },
    )
    .await;
    put(
        "/gateways/shop/web/port",
        "name: shop/web/port\nroutes:\n  shop/web/web:1.0/port: {weight: 80%}\n  shop/web/web:1.1/port: {weight: 20%}\n".into(),
    )
    .await;
    // The 80/20 weights reach the gateway configuration in the key-value store, and the
    // agent's HAProxy applies that version: only then is the split measured.
    let key = vamp_core::kv::keys::haproxy_configuration("default", "1.7").unwrap();
    let version = eventually(
        "the 80/20 weights in the gateway configuration",
        Duration::from_secs(60),
        async || {
            use vamp_core::kv::KeyValueStore;
            let v = server.kv.get(&key).await.ok()??;
            let text = String::from_utf8_lossy(&v.value).into_owned();
            (text.contains("send-proxy weight 80 check")
                && text.contains("send-proxy weight 20 check"))
            .then_some(v.version)
        },
    )
    .await;
    let mut agent = server.agent.clone().expect("the in-process agent");
    tokio::time::timeout(
        Duration::from_secs(60),
        agent.wait_for(|s| s.applied_version.is_some_and(|a| a >= version.0)),
    )
    .await
    .expect("the agent applies the weights")
    .expect("the agent runs");
    eventually("1.1 gets traffic", Duration::from_secs(60), async || {
        let body = through(&client, port).await?;
        (classify(&body).as_deref() == Some("1.1")).then_some(())
    })
    .await;
    let mut split: std::collections::BTreeMap<String, u32> = Default::default();
    for _ in 0..500 {
        let body = through(&client, port).await.expect("every request answers");
        let version =
            classify(&body).unwrap_or_else(|| panic!("an answer of neither version: {body}"));
        *split.entry(version).or_default() += 1;
    }
    let v11 = split.get("1.1").copied().unwrap_or(0);
    assert_eq!(split.values().sum::<u32>(), 500, "{split:?}");
    // 20% of 500 is 100; HAProxy's weighted round robin keeps it close.
    assert!((70..=130).contains(&v11), "1.1: {v11} of 500 ({split:?})");
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
    eventually(
        "nothing left on the scheduler",
        Duration::from_secs(120),
        async || gone().await.then_some(()),
    )
    .await;
    server.stop().await;
}
