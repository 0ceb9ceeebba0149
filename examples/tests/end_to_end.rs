//! A one-machine Vamp driven through its REST API alone, on the embedded defaults: SQLite in a
//! data directory, the in-memory key-value store, local processes, and the in-process gateway
//! agent with a real HAProxy. Required with CI=true or VAMP_TEST_INTEGRATION=1 (HAProxy is
//! installed by scripts/test.sh); skipped, saying so, on a machine without HAProxy otherwise.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::Value;
use support::{free_port, haproxy_or_skip, through};
use vamp_examples::serve::{ServeConfig, start};

/// An HTTP service answering its version (`$VERSION`), on `$PORT`.
const SERVICE: &str = r#"import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = os.environ["VERSION"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// A breed of `version` running the service script with a marker the test can find.
fn breed(version: &str, script: &std::path::Path, marker: &str) -> String {
    format!(
        "        name: web:{version}\n        deployable:\n          type: command\n          definition: exec python3 {} {marker}\n        ports: {{port: 8080/http}}\n        environment_variables: {{VERSION: '{version}'}}\n",
        script.display()
    )
}

/// The processes whose command line carries `marker`.
fn processes_with(marker: &str) -> usize {
    support::pids_where(|cmdline| cmdline.contains(marker)).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_release_through_the_api_alone_on_embedded_defaults() {
    if !haproxy_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("service.py");
    std::fs::write(&script, SERVICE).unwrap();
    let marker = format!("vamp-e2e-{}", std::process::id());
    let mut config = ServeConfig::new(dir.path().join("data"));
    config.stop_on_exit = true;
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.period_ms = 200;
    let server = start(config).await.expect("vamp serve starts");
    let base = format!("http://{}/api/v1", server.addr);
    let client = Client::new();
    let send = |method: reqwest::Method, path: &str, body: String| {
        client
            .request(method, format!("{base}{path}"))
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-yaml")
            .body(body)
            .send()
    };
    let get =
        async |path: &str| -> Value { support::get_json(&client, &format!("{base}{path}")).await };

    // Listen for the deployment's synchronisation before deploying.
    let mut stream = client
        .get(format!(
            "{base}/events/stream?tag=deployments:shop&tag=synchronization:deployed"
        ))
        .send()
        .await
        .unwrap()
        .bytes_stream();

    // Bulk PUT: the deployment of a blueprint whose breed is a local command, with a
    // deployment gateway on a port of its own.
    let port = free_port();
    let v1 = breed("1.0", &script, &marker);
    let bulk = format!(
        "kind: deployment\nname: shop\ngateways:\n  {port}: web/port\nclusters:\n  web:\n    services:\n    - breed:\n{v1}      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n"
    );
    let r = send(reqwest::Method::PUT, "", bulk.clone()).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut seen = String::new();
        while !seen.contains("synchronization:deployed") {
            let chunk = stream.next().await.expect("the stream stays open").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the deployment is synchronised");
    let body = support::eventually(
        "traffic through the gateway",
        Duration::from_secs(60),
        async || through(&client, port).await,
    )
    .await;
    assert_eq!(body, "1.0");

    // Merge 1.1 into the cluster: it starts with no traffic.
    let v2 = breed("1.1", &script, &marker);
    let merge = format!(
        "name: shop\nclusters:\n  web:\n    services:\n    - breed:\n{v2}      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n"
    );
    let r = send(reqwest::Method::PUT, "/deployments/shop", merge)
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    support::eventually("both versions run", Duration::from_secs(60), async || {
        let d = get("/deployments/shop").await;
        let services = d["clusters"]["web"]["services"].as_array()?.clone();
        (services.len() == 2
            && services.iter().all(|s| {
                s["status"]["phase"]["name"] == "Done"
                    && s["instances"].as_array().is_some_and(|i| !i.is_empty())
            }))
        .then_some(())
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(through(&client, port).await);
    }
    assert!(
        answers.iter().all(|a| a.as_deref() == Some("1.0")),
        "no traffic to 1.1 yet, and no failed request: {answers:?}"
    );

    // Half the traffic to 1.1, through the cluster gateway's weights.
    let weights = "name: shop/web/port\nroutes:\n  shop/web/web:1.0/port: {weight: 50%}\n  shop/web/web:1.1/port: {weight: 50%}\n";
    let r = send(
        reqwest::Method::PUT,
        "/gateways/shop/web/port",
        weights.into(),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    // Once 1.1 answers, the new weights are live; then a fresh sample measures the split.
    support::eventually("1.1 gets traffic", Duration::from_secs(60), async || {
        (through(&client, port).await.as_deref() == Some("1.1")).then_some(())
    })
    .await;
    let mut split: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..200 {
        let body = through(&client, port).await.expect("every request answers");
        *split.entry(body).or_default() += 1;
    }
    for version in ["1.0", "1.1"] {
        let n = split.get(version).copied().unwrap_or(0);
        assert!((50..=150).contains(&n), "{version}: {n} of 200 ({split:?})");
    }

    // Scale 1.0 to three instances through its scale route.
    let r = send(
        reqwest::Method::PUT,
        "/deployments/shop/clusters/web/services/web:1.0/scale",
        "cpu: 0.1\nmemory: 64MB\ninstances: 3\n".into(),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    support::eventually(
        "three instances of 1.0, four processes",
        Duration::from_secs(60),
        async || {
            let d = get("/deployments/shop").await;
            let v10 = d["clusters"]["web"]["services"]
                .as_array()?
                .iter()
                .find(|s| s["breed"]["name"] == "web:1.0")?
                .clone();
            (v10["instances"].as_array()?.len() == 3 && processes_with(&marker) == 4).then_some(())
        },
    )
    .await;

    // DELETE /api/v1 with a body naming both services: every process stops, the gateway goes.
    let both = format!(
        "kind: deployment\nname: shop\nclusters:\n  web:\n    services:\n    - breed:\n{v1}    - breed:\n{v2}"
    );
    let r = client
        .delete(base.clone())
        .header("Accept", "application/json")
        .body(both)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    support::eventually(
        "every process stopped and the deployment gone",
        Duration::from_secs(60),
        async || {
            let gone = client
                .get(format!("{base}/deployments/shop"))
                .header("Accept", "application/json")
                .send()
                .await
                .ok()?
                .status()
                == StatusCode::NOT_FOUND;
            (gone && processes_with(&marker) == 0).then_some(())
        },
    )
    .await;
    support::eventually("the gateway is gone", Duration::from_secs(60), async || {
        let gateways = get("/gateways").await;
        let none = gateways
            .as_array()?
            .iter()
            .all(|g| !g["name"].as_str().unwrap_or("").starts_with("shop"));
        (none && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()).then_some(())
    })
    .await;
    server.stop().await;
}
