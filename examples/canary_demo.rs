//! `canary_demo`: canary releases that decide for themselves, as a Vamp workflow through
//! Vamp's REST API on embedded defaults (`vamp serve` in this process: SQLite in a temporary
//! directory, the in-memory key-value store, local processes, and the gateway agent with a
//! real HAProxy; metrics from HAProxy's logs).
//!
//! ```text
//! cargo run --example canary_demo [-- --step-seconds N]
//! ```
//!
//! It deploys `sava` 1.0 from a blueprint (`POST /api/v1/deployments`) and waits on the event
//! stream for `synchronization:deployed`, merges 1.1 (which fails 10% of its requests) and 1.2
//! (healthy) into the cluster (`PUT /api/v1/deployments/sava`), and sends steady traffic
//! through the deployment's gateway. Then a canary policy (`POST /api/v1/canary-policies`)
//! releases 1.1: its error rate is judged against 1.0's every N seconds (default 3) and it is
//! rolled back on its own; a second policy releases 1.2, which is promoted step by step to
//! 100%. Every decision is printed as the event stream delivers it, with its figures, and the
//! split measured from HAProxy's logs after each release. HAProxy 2.6+ is needed: as root on
//! Debian it installs the `haproxy` package when missing; otherwise it says what to install (or
//! set `VAMP_HAPROXY_BIN`).

#[path = "common/sava_service.rs"]
mod sava_service;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use vamp_core::lookup::route_lookup_name;
use vamp_core::metrics::MetricsStore;
use vamp_examples::serve::{ServeConfig, start};

/// 1.1 fails this share of its requests; 1.0 and 1.2 none.
const CANARY_FAIL_PERCENT: u32 = 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Re-executed as one of the two services.
    if args.first().map(String::as_str) == Some("serve") {
        let (Some(version), Some(port), Some(fail)) = (args.get(1), args.get(2), args.get(3))
        else {
            return ExitCode::from(2);
        };
        let listener = TcpListener::bind(("127.0.0.1", port.parse().unwrap_or(0))).expect("bind");
        sava_service::serve(listener, version.clone(), fail.parse().unwrap_or(0));
        return ExitCode::SUCCESS;
    }
    let step_seconds = match args.as_slice() {
        [] => 3,
        [flag, n] if flag == "--step-seconds" => match n.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("canary_demo: --step-seconds takes a positive number");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: canary_demo [--step-seconds N]");
            return ExitCode::from(2);
        }
    };
    let Some(haproxy) = ensure_haproxy() else {
        return ExitCode::from(1);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(demo(haproxy, Duration::from_secs(step_seconds))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canary_demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// The HAProxy binary: found, installed (root on Debian), or `None` after saying what to do.
fn ensure_haproxy() -> Option<String> {
    let bin = std::env::var("VAMP_HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
    let works = |bin: &str| {
        Command::new(bin)
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&bin) {
        return Some(bin);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = Command::new("apt-get").arg("--version").output().is_ok();
    if root && apt && bin == "haproxy" {
        println!("HAProxy is missing: installing Debian's haproxy package (apt-get) ...");
        let updated = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .is_ok_and(|s| s.success());
        let installed = updated
            && Command::new("apt-get")
                .args(["install", "-y", "-qq", "haproxy"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if installed && works("haproxy") {
            return Some(bin);
        }
    }
    eprintln!(
        "canary_demo needs HAProxy 2.6 or newer, and '{bin}' does not run.\n\
         Install it (Debian/Ubuntu: sudo apt-get install haproxy) or set VAMP_HAPROXY_BIN to its path."
    );
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One request: the status and the body's first word (the version).
fn request(port: u16) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: sava\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    Some((status, body.split_whitespace().next()?.to_owned()))
}

/// What the client saw: per version, (answers, errors); plus failed connections.
#[derive(Default)]
struct Seen {
    versions: HashMap<String, (u64, u64)>,
    failed: u64,
}

/// A small client of the API.
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        yaml: Option<String>,
    ) -> Result<serde_json::Value, String> {
        let mut r = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(body) = yaml {
            r = r.header("Content-Type", "application/x-yaml").body(body);
        }
        let response = r.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status} {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }
}

/// The blueprint of one `sava` version: this program re-executed as the service.
fn blueprint(
    version: &str,
    fail_percent: u32,
    gateway_port: Option<u16>,
) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = exe.display().to_string().replace('\'', r"'\''");
    let gateways = gateway_port.map_or(String::new(), |p| {
        format!("gateways:\n  {p}: sava/webport\n")
    });
    Ok(format!(
        "name: sava\n{gateways}clusters:\n  sava:\n    services:\n    - breed:\n        name: sava:{version}\n        deployable:\n          type: command\n          definition: exec '{exe}' serve {version} \"$PORT\" {fail_percent}\n        ports: {{webport: 8080/http}}\n      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n"
    ))
}

/// Polls `f` (bounded) until it gives a value.
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn demo(haproxy: String, step: Duration) -> Result<(), String> {
    let work = std::env::temp_dir().join(format!("vamp-canary-demo-{}", std::process::id()));
    let result = run(&work, haproxy, step).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run(work: &std::path::Path, haproxy: String, step: Duration) -> Result<(), String> {
    println!(
        "Vamp canary demo: canary releases that decide for themselves, through Vamp's REST API and HAProxy\n"
    );
    let mut config = ServeConfig::new(work);
    config.stop_on_exit = true;
    config.listen = Some("127.0.0.1:0".parse().expect("address"));
    config.haproxy = haproxy;
    config.period_ms = 250;
    let server = start(config).await?;
    let api = Api {
        client: reqwest::Client::new(),
        base: format!("http://{}/api/v1", server.addr),
    };
    println!(
        "  vamp       serving http://{}/api/v1 (SQLite in {})",
        server.addr,
        work.display()
    );

    // Deploy 1.0 and wait for Vamp's event that it is deployed.
    let port = free_port();
    let mut events = api
        .client
        .get(format!(
            "{}/events/stream?tag=deployments:sava&tag=synchronization:deployed",
            api.base
        ))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes_stream();
    api.call(
        reqwest::Method::POST,
        "/deployments",
        Some(blueprint("1.0", 0, Some(port))?),
    )
    .await?;
    println!(
        "  deploy     POST /api/v1/deployments: sava 1.0, gateway sava/webport on 127.0.0.1:{port}"
    );
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut seen = String::new();
        while !seen.contains("synchronization:deployed") {
            match events.next().await {
                Some(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return Err("the event stream ended".to_owned()),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| "sava 1.0 was not deployed within 60 s".to_owned())??;
    println!("  event      deployments:sava synchronization:deployed");

    // Merge 1.1 and 1.2 into the cluster: they get no traffic until a release gives them some.
    for (version, fail) in [("1.1", CANARY_FAIL_PERCENT), ("1.2", 0)] {
        api.call(
            reqwest::Method::PUT,
            "/deployments/sava",
            Some(blueprint(version, fail, None)?),
        )
        .await?;
    }
    println!(
        "  merge      PUT /api/v1/deployments/sava: sava 1.1 (fails {CANARY_FAIL_PERCENT}% of its requests) and sava 1.2"
    );
    until("every version to run", async || {
        let d = api
            .call(reqwest::Method::GET, "/deployments/sava", None)
            .await
            .ok()?;
        let services = d["clusters"]["sava"]["services"].as_array()?.clone();
        (services.len() == 3
            && services
                .iter()
                .all(|s| s["status"]["phase"]["name"] == "Done"))
        .then_some(())
    })
    .await?;
    until("traffic through the gateway", async || {
        request(port).filter(|(s, _)| *s == 200)
    })
    .await?;

    // Steady traffic from a client thread.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let answer = request(port);
                let mut s = seen.lock().expect("lock");
                match answer {
                    Some((status, version)) => {
                        let entry = s.versions.entry(version).or_default();
                        entry.0 += 1;
                        if status >= 500 {
                            entry.1 += 1;
                        }
                    }
                    None => s.failed += 1,
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    println!("  traffic    steady requests through 127.0.0.1:{port}\n");

    let mut failures = 0;
    for (version, expected) in [("1.1", "rolled_back"), ("1.2", "promoted")] {
        let name = format!("sava-{}", version.replace('.', "-"));
        let mut decisions = api
            .client
            .get(format!(
                "{}/events/stream?tag=canary-policies:{name}&type=canary",
                api.base
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .bytes_stream();
        let policy = format!(
            "name: {name}\ngateway: sava/sava/webport\nstable: sava/sava/sava:1.0/webport\ncanary: sava/sava/sava:{version}/webport\nsteps: [10%, 50%, 100%]\ninterval: {}s\nfailures: 2\nminimum_requests: 50\ngates:\n  relative:\n    error_rate: 1%\n",
            step.as_secs()
        );
        api.call(reqwest::Method::POST, "/canary-policies", Some(policy))
            .await?;
        println!(
            "release sava {version}: POST /api/v1/canary-policies {name}: 10% → 50% → 100% every {}s, its error rate within 1% of 1.0's, rolled back after 2 failed checks",
            step.as_secs()
        );
        *seen.lock().expect("lock") = Seen::default();
        // Print every decision as the stream delivers it, until the release is over.
        let outcome = tokio::time::timeout(Duration::from_secs(60 + 10 * step.as_secs()), async {
            let mut buffer = String::new();
            loop {
                match decisions.next().await {
                    Some(Ok(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
                    _ => return Err("the event stream ended".to_owned()),
                }
                while let Some(end) = buffer.find("\n\n") {
                    let message: String = buffer.drain(..end + 2).collect();
                    let Some(data) = message
                        .lines()
                        .find_map(|l| l.strip_prefix("data:"))
                        .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
                    else {
                        continue;
                    };
                    let value = &data["value"];
                    let verdict = value["verdict"].as_str().unwrap_or("?").to_owned();
                    println!(
                        "    {verdict:<12} {}",
                        value["reason"].as_str().unwrap_or("")
                    );
                    if matches!(verdict.as_str(), "rolled_back" | "promoted" | "aborted") {
                        return Ok(verdict);
                    }
                }
            }
        })
        .await
        .map_err(|_| format!("the release of sava {version} did not finish"))??;
        // The split after the release (once the agent applied it), from HAProxy's logs.
        tokio::time::sleep(Duration::from_secs(1)).await;
        *seen.lock().expect("lock") = Seen::default();
        let window = Duration::from_secs(2);
        tokio::time::sleep(window).await;
        let mut line = Vec::new();
        for v in ["1.0", version] {
            let breed = format!("sava:{v}");
            let frontend = route_lookup_name(
                "sava/sava/webport",
                &["sava", "sava", breed.as_str(), "webport"],
            );
            let m = server
                .metrics
                .request_metrics(&frontend, window)
                .await
                .map_err(|e| e.to_string())?;
            line.push(format!("sava {v} {} requests", m.requests));
        }
        let s = seen.lock().expect("lock");
        println!(
            "    measured over the last {}s (HAProxy logs): {}; {} failed at the client\n",
            window.as_secs(),
            line.join(", "),
            s.failed
        );
        failures += s.failed;
        if outcome != expected {
            return Err(format!("sava {version} was {outcome}, expected {expected}"));
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = client.join();
    let agent = server.agent.clone().ok_or("no gateway agent")?;
    let last = agent.borrow().clone();
    println!(
        "done: 1.1 rolled back, 1.2 promoted; {} reloads, {} runtime weight changes, {} rejected, {failures} failed requests",
        last.counts.reload, last.counts.dynamic, last.counts.rejected
    );
    // Undeploy everything before stopping (the demo leaves nothing running).
    let everything = format!(
        "name: sava\nclusters:\n  sava:\n    services:\n{}",
        ["1.0", "1.1", "1.2"]
            .iter()
            .map(|v| format!("    - breed: sava:{v}\n"))
            .collect::<String>()
    );
    api.call(
        reqwest::Method::DELETE,
        "/deployments/sava",
        Some(everything),
    )
    .await?;
    until("the deployment to be gone", async || {
        api.call(reqwest::Method::GET, "/deployments/sava", None)
            .await
            .err()
            .map(drop)
    })
    .await?;
    server.stop().await;
    if failures > 0 {
        return Err(format!("{failures} requests failed"));
    }
    Ok(())
}
