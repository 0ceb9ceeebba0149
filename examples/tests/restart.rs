//! `vamp serve` restarted on the same data with SIGTERM and with SIGKILL, a separate process
//! (this test binary run again as the server: `child_server`), on the embedded defaults with a
//! real HAProxy: continuous requests through a deployment's gateway fail none, and the
//! service's process is the same before and after each restart. Required with CI=true or
//! VAMP_TEST_INTEGRATION=1 (HAProxy); skipped, saying so, without HAProxy otherwise.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use support::{free_port, haproxy_or_skip};

/// An HTTP service answering `ok`, on `$PORT`.
const SERVICE: &str = r#"import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// The server, when this binary is run as the child (`VAMP_TEST_RESTART_DATA` set): serves
/// until SIGTERM, then stops as `vamp serve` does.
#[test]
#[ignore = "the restart test runs it as its child process"]
fn child_server() {
    let (Ok(data), Ok(listen)) = (
        std::env::var("VAMP_TEST_RESTART_DATA"),
        std::env::var("VAMP_TEST_RESTART_LISTEN"),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = vamp_examples::serve::ServeConfig::new(data);
        config.listen = Some(listen.parse().unwrap());
        config.period_ms = 200;
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let server = vamp_examples::serve::start(config)
            .await
            .expect("vamp serve starts");
        term.recv().await;
        server.stop().await;
    });
}

/// Whatever the servers left running (they are told to keep their services and HAProxy),
/// stopped when the test ends, passed or not.
struct Leftovers(Vec<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for marker in &self.0 {
            for pid in pids_with(marker) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(data: &std::path::Path, listen: &str) -> Child {
    Child(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_server", "--nocapture"])
            .env("VAMP_TEST_RESTART_DATA", data)
            .env("VAMP_TEST_RESTART_LISTEN", listen)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The processes whose command line carries `marker`, by pid.
fn pids_with(marker: &str) -> Vec<u32> {
    support::pids_where(|cmdline| cmdline.contains(marker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_traffic_survive_restarts_by_sigterm_and_sigkill() {
    if !haproxy_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let script = dir.path().join("service.py");
    std::fs::write(&script, SERVICE).unwrap();
    let marker = format!("vamp-restart-{}", std::process::id());
    let _leftovers = Leftovers(vec![
        marker.clone(),
        data.join("agent").display().to_string(),
    ]);
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}/api/v1");
    let client = Client::new();
    let mut server = spawn_server(&data, &listen);
    support::eventually("the server answers", Duration::from_secs(60), async || {
        let r = client
            .get(format!("http://{listen}/healthz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let port = free_port();
    let blueprint = format!(
        "name: shop\ngateways:\n  {port}: web/port\nclusters:\n  web:\n    services:\n    - breed:\n        name: web\n        deployable:\n          type: command\n          definition: exec python3 {} {marker}\n        ports: {{port: 8080/http}}\n      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n",
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
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    support::eventually(
        "traffic through the gateway",
        Duration::from_secs(60),
        async || support::through(&client, port).await,
    )
    .await;
    eprintln!(
        "DEBUG info {}",
        support::get_json(&client, &format!("{base}/info")).await["container_driver"]
    );
    let before = pids_with(&marker);
    assert_eq!(before.len(), 1, "one service process: {before:?}");

    // Requests without a pause through both restarts, each on a new connection.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = tokio::spawn({
        let (stop, sent, failed) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
        async move {
            let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                if support::through(&client, port).await.as_deref() != Some("ok") {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    for signal in ["TERM", "KILL"] {
        let at = sent.load(Ordering::SeqCst);
        support::eventually(
            "requests before the restart",
            Duration::from_secs(30),
            async || (sent.load(Ordering::SeqCst) > at + 50).then_some(()),
        )
        .await;
        let pid = server.0.id().to_string();
        let killed = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let _ = server.0.wait();
        let down = sent.load(Ordering::SeqCst);
        support::eventually(
            "requests while the server is down",
            Duration::from_secs(30),
            async || (sent.load(Ordering::SeqCst) > down + 50).then_some(()),
        )
        .await;
        server = spawn_server(&data, &listen);
        support::eventually("the server is back", Duration::from_secs(60), async || {
            let info = support::get_json(&client, &format!("{base}/info")).await;
            // Back, and one reconcile pass done on what it adopted.
            (info["loops"]["reconcile"]["passes"].as_u64()? > 2).then_some(())
        })
        .await;
        eprintln!(
            "DEBUG back: {:?} {}",
            pids_with(&marker),
            support::get_json(&client, &format!("{base}/deployments/shop")).await
        );
        for e in std::fs::read_dir(data.join("instances")).unwrap().flatten() {
            eprintln!(
                "DEBUG dir {:?} {:?}",
                e.path(),
                std::fs::read_dir(e.path())
                    .map(|d| d.flatten().map(|f| f.file_name()).collect::<Vec<_>>())
            );
        }
        let back = sent.load(Ordering::SeqCst);
        support::eventually(
            "requests after the restart",
            Duration::from_secs(30),
            async || (sent.load(Ordering::SeqCst) > back + 100).then_some(()),
        )
        .await;
        assert_eq!(
            pids_with(&marker),
            before,
            "the same service process after SIG{signal}"
        );
        assert_eq!(
            failed.load(Ordering::SeqCst),
            0,
            "no failed request through SIG{signal}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert!(sent.load(Ordering::SeqCst) > 300);
    // Clean up: the deployment goes, then the server, leaving nothing behind.
    let r = client
        .delete(format!("{base}/deployments/shop"))
        .header("Accept", "application/json")
        .header("Content-Type", "application/x-yaml")
        .body("name: shop\nclusters:\n  web:\n    services:\n    - breed: web\n")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    support::eventually(
        "the service process stops",
        Duration::from_secs(60),
        async || pids_with(&marker).is_empty().then_some(()),
    )
    .await;
    drop(server);
    // The HAProxy the servers left serving is stopped with the test (it was told to keep).
    let haproxy_pids = pids_with(&data.join("agent").display().to_string());
    for pid in haproxy_pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}
