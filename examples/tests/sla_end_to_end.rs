//! An SLA on real parts: `vamp serve` on its embedded defaults (local processes, the
//! in-process gateway agent with a real HAProxy, metrics from HAProxy's logs). A service
//! slower than its SLA's upper threshold is scaled from one instance to two, and traffic
//! reaches both. Required with CI=true or VAMP_TEST_INTEGRATION=1; skipped, saying so,
//! without HAProxy otherwise.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;
use support::{free_port, haproxy_or_skip};
use vamp_examples::serve::{ServeConfig, start};

/// Answers its instance's name after `$SLOW_MS` milliseconds.
const SERVICE: &str = r#"import http.server, os, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(int(os.environ["SLOW_MS"]) / 1000)
        data = os.environ["VAMP_INSTANCE"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_is_scaled_by_its_sla_and_traffic_reaches_both_instances() {
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
    config.pulse_ms = 1000;
    let server = start(config).await.expect("vamp serve starts");
    let client = Client::new();
    let base = format!("http://{}/api/v1", server.addr);
    let port = free_port();
    let blueprint = format!(
        "name: slow
gateways:
  {port}: web/port
clusters:
  web:
    services:
    - breed:
        name: web:1.0
        deployable:
          type: command
          definition: exec python3 {}
        ports: {{port: 8080/http}}
        environment_variables: {{SLOW_MS: '1200'}}
      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}
    # Lower bound 0: no de-escalation (and its cooldown) from the fast 503s HAProxy answers
    # itself while the first instance starts, which the response time counts.
    sla:
      type: response_time_sliding_window
      threshold: {{upper: 1000, lower: 0}}
      window: {{interval: 10, cooldown: 300}}
      escalations:
      - {{type: scale_instances, minimum: 1, maximum: 2, scale_by: 1}}
",
        script.display()
    );
    let r = client
        .post(format!("{base}/deployments"))
        .header("Accept", "application/json")
        .header("Content-Type", "application/x-yaml")
        .body(blueprint)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );

    // Concurrent traffic: every request takes 1.2 s.
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<std::sync::Mutex<BTreeSet<String>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, stop, answered) = (client.clone(), Arc::clone(&stop), Arc::clone(&answered));
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client
                    .get(format!("http://127.0.0.1:{port}/"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => {
                        if let Ok(body) = r.text().await {
                            answered.lock().unwrap().insert(body);
                        }
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d: Value = serde_json::from_str(
            &client
                .get(format!("{base}/deployments/slow"))
                .header("Accept", "application/json")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap_or(Value::Null);
        let service = &d["clusters"]["web"]["services"][0];
        let two = service["scale"]["instances"] == 2
            && service["instances"]
                .as_array()
                .is_some_and(|i| i.len() == 2);
        if two && answered.lock().unwrap().len() == 2 {
            break;
        }
        if Instant::now() >= deadline {
            let metrics = client
                .get(format!("{base}/events?tag=sla&per_page=30"))
                .header("Accept", "application/json")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            panic!(
                "never scaled to two instances both answering: {service} / {:?}\nSLA events: {metrics}",
                answered.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The SLA said so: an escalation event for the cluster.
    let events: Value = serde_json::from_str(
        &client
            .get(format!(
                "{base}/events?tag=sla:escalate&tag=deployment:slow&tag=cluster:web"
            ))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    server.stop().await;
}
