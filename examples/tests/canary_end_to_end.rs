//! Canary releases that decide for themselves, on real parts: `vamp serve` on its embedded
//! defaults (local processes, the in-process gateway agent with a real HAProxy, metrics from
//! HAProxy's logs), driven through the REST API. Required with CI=true or
//! VAMP_TEST_INTEGRATION=1; skipped, saying so, without HAProxy otherwise.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value;
use support::{eventually, free_port, haproxy_or_skip};
use vamp_examples::serve::{ServeConfig, start};

/// Answers `$VERSION`; every `$FAIL_EVERY`th request (0: none) is a 503.
const SERVICE: &str = r#"import http.server, os, threading
every = int(os.environ.get("FAIL_EVERY", "0"))
lock = threading.Lock()
count = [0]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with lock:
            count[0] += 1
            n = count[0]
        failing = every > 0 and n % every == 0
        data = os.environ["VERSION"].encode()
        self.send_response(503 if failing else 200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn service(version: &str, fail_every: u32, script: &std::path::Path) -> String {
    format!(
        "    - breed:\n        name: web:{version}\n        deployable:\n          type: command\n          definition: exec python3 {}\n        ports: {{port: 8080/http}}\n        environment_variables: {{VERSION: '{version}', FAIL_EVERY: '{fail_every}'}}\n      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n",
        script.display()
    )
}

struct Api {
    client: Client,
    base: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        yaml: String,
    ) -> (StatusCode, String) {
        let r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-yaml")
            .body(yaml)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null)
    }
}

/// Which versions answer `n` requests through the gateway.
async fn sample(client: &Client, port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/")).send().await
            && let Ok(body) = r.text().await
        {
            *seen.entry(body).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_a_healthy_one_promoted() {
    if !haproxy_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("service.py");
    std::fs::write(&script, SERVICE).unwrap();
    let mut config = ServeConfig::new(dir.path().join("data"));
    config.stop_on_exit = true;
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.period_ms = 250;
    let server = start(config).await.expect("vamp serve starts");
    let api = Api {
        client: Client::new(),
        base: format!("http://{}/api/v1", server.addr),
    };
    let port = free_port();
    // 1.0 stable; 2.0 fails every tenth request; 3.0 is healthy.
    let deploy = |v: &str, fail: u32, gateway: bool| {
        let gateways = if gateway {
            format!("gateways:\n  {port}: web/port\n")
        } else {
            String::new()
        };
        format!(
            "name: shop\n{gateways}clusters:\n  web:\n    services:\n{}",
            service(v, fail, &script)
        )
    };
    let (status, text) = api
        .send(
            reqwest::Method::POST,
            "/deployments",
            deploy("1.0", 0, true),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    for (v, fail) in [("2.0", 10), ("3.0", 0)] {
        let (status, text) = api
            .send(
                reqwest::Method::PUT,
                "/deployments/shop",
                deploy(v, fail, false),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    }
    eventually(
        "three versions run and 1.0 answers",
        Duration::from_secs(60),
        async || {
            let d = api.get("/deployments/shop").await;
            let services = d["clusters"]["web"]["services"].as_array()?.clone();
            let done = services.len() == 3
                && services
                    .iter()
                    .all(|s| s["status"]["phase"]["name"] == "Done");
            let answers = sample(&api.client, port, 1).await;
            (done && answers.get("1.0") == Some(&1)).then_some(())
        },
    )
    .await;

    // Steady traffic through the gateway for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (client, stop) = (api.client.clone(), Arc::clone(&stop));
        async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = client.get(format!("http://127.0.0.1:{port}/")).send().await;
            }
        }
    });

    let policy = |name: &str, canary: &str| {
        format!(
            "name: {name}\ngateway: shop/web/port\nstable: shop/web/web:1.0/port\ncanary: shop/web/web:{canary}/port\nsteps: [20%, 50%, 100%]\ninterval: 2s\nfailures: 2\nminimum_requests: 50\ngates:\n  relative:\n    error_rate: 1%\n"
        )
    };
    // 2.0 fails 10% of its requests: rolled back, 1.0 takes all traffic again.
    let (status, text) = api
        .send(
            reqwest::Method::POST,
            "/canary-policies",
            policy("shop-2", "2.0"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let rolled_back = eventually("2.0 is rolled back", Duration::from_secs(90), async || {
        let s = api.get("/canary-policies/shop-2/status").await;
        (s["phase"] == "rolled_back").then_some(s)
    })
    .await;
    assert!(
        rolled_back["reason"]
            .as_str()
            .unwrap()
            .contains("error rate"),
        "{rolled_back}"
    );
    let g = api.get("/gateways/shop/web/port").await;
    assert_eq!(
        g["routes"]["shop/web/web:1.0/port"]["weight"], "100%",
        "{g}"
    );
    assert_eq!(g["routes"]["shop/web/web:2.0/port"]["weight"], "0%", "{g}");
    let after = eventually("only 1.0 answers", Duration::from_secs(30), async || {
        let s = sample(&api.client, port, 100).await;
        (s.get("1.0") == Some(&100)).then_some(s)
    })
    .await;
    assert_eq!(after.len(), 1);

    // 3.0 is healthy: promoted step by step to 100%.
    let (status, text) = api
        .send(
            reqwest::Method::POST,
            "/canary-policies",
            policy("shop-3", "3.0"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    eventually("3.0 is promoted", Duration::from_secs(120), async || {
        let s = api.get("/canary-policies/shop-3/status").await;
        assert_ne!(
            s["phase"], "rolled_back",
            "a healthy canary was rolled back: {s}"
        );
        (s["phase"] == "promoted").then_some(())
    })
    .await;
    let g = api.get("/gateways/shop/web/port").await;
    assert_eq!(
        g["routes"]["shop/web/web:3.0/port"]["weight"], "100%",
        "{g}"
    );
    let after = eventually("only 3.0 answers", Duration::from_secs(30), async || {
        let s = sample(&api.client, port, 100).await;
        (s.get("3.0") == Some(&100)).then_some(s)
    })
    .await;
    assert_eq!(after.len(), 1);
    // Every decision was an event.
    let events = api
        .get("/events?tag=canary-policies:shop-3&type=canary")
        .await;
    assert!(events.as_array().unwrap().len() >= 3, "{events}");
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    server.stop().await;
}
