//! Deploy to traffic (issue 30, target 4): on the embedded defaults (`vamp serve` with SQLite
//! in a data directory, local processes, the in-process gateway agent and a real HAProxy), the
//! time from the `POST` of a blueprint to the first `200` through its gateway, against the
//! service's own start-up time (the same service started by hand and asked directly), in the
//! same run.
//!
//! `cargo bench -p vamp-benches --bench deploy_to_traffic` (needs `haproxy` and `python3`;
//! `VAMP_BENCH_DEPLOYS`, default 20; prints a table; no timing is asserted)

/// The `vamp` program's allocator, so that the server is what `vamp serve` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// The body of a `GET /` on a new connection to `port`, if it answered `200`.
async fn get(port: u16) -> Option<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// Waits (bounded) until `port` answers `want`; the time it took.
async fn until_answers(port: u16, want: &str, started: Instant) -> Duration {
    loop {
        if get(port).await.as_deref() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "port {port} never answered {want} (last: {:?})",
            get(port).await
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("VAMP_BENCH_DEPLOYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("service.py");
        std::fs::write(&script, SERVICE).unwrap();

        // The service's own start-up: started by hand, asked directly.
        let mut own = Vec::new();
        for i in 0..n {
            let port = free_port();
            let started = Instant::now();
            let mut child = std::process::Command::new("python3")
                .arg(&script)
                .env("PORT", port.to_string())
                .env("VERSION", format!("v{i}"))
                .spawn()
                .unwrap();
            own.push(until_answers(port, &format!("v{i}"), started).await);
            let _ = child.kill();
            let _ = child.wait();
        }

        let mut config = vamp_examples::serve::ServeConfig::new(dir.path().join("data"));
        config.listen = Some("127.0.0.1:0".parse().unwrap());
        config.stop_on_exit = true;
        let server = vamp_examples::serve::start(config).await.unwrap();
        let api = server.addr;

        let mut through = Vec::new();
        for i in 0..n {
            let port = free_port();
            let body = format!(
                "name: d{i}\ngateways:\n  {port}: web/port\nclusters:\n  web:\n    services:\n    - breed:\n        name: web:{i}\n        deployable:\n          type: command\n          definition: exec python3 {}\n        ports: {{port: 8080/http}}\n        environment_variables: {{VERSION: 'v{i}'}}\n      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n",
                script.display()
            );
            let request = format!(
                "POST /api/v1/deployments HTTP/1.0\r\nHost: {api}\r\nContent-Type: application/x-yaml\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let started = Instant::now();
            let mut conn = TcpStream::connect(api).await.unwrap();
            conn.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).await.unwrap();
            assert!(
                answer.starts_with(b"HTTP/1.0 202") || answer.starts_with(b"HTTP/1.1 202"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
            through.push(until_answers(port, &format!("v{i}"), started).await);
        }
        server.stop().await;

        let own_median = quantile(&mut own, 0.5);
        let (median, p99) = (quantile(&mut through, 0.5), quantile(&mut through, 0.99));
        println!("\n| figure ({n} deployments) | median | p99 |\n| --- | --- | --- |");
        println!(
            "| the service's own start-up (started by hand, asked directly) | {} | {} |",
            ms(own_median),
            ms(quantile(&mut own, 0.99))
        );
        println!(
            "| POST of the blueprint to the first 200 through its gateway | {} | {} |",
            ms(median),
            ms(p99)
        );
        println!(
            "| … beyond the service's own median start-up | {} | {} |",
            ms(median.saturating_sub(own_median)),
            ms(p99.saturating_sub(own_median))
        );
    });
}
