//! `canary_demo`: a canary release of the `sava` demo service as a Vamp workflow, through
//! Vamp's REST API on embedded defaults (`vamp serve` in this process: SQLite in a temporary
//! directory, the in-memory key-value store, local processes, and the gateway agent with a
//! real HAProxy; metrics from HAProxy's logs).
//!
//! ```text
//! cargo run --example canary_demo [-- --step-seconds N]
//! ```
//!
//! It deploys `sava` 1.0 from a blueprint (`POST /api/v1/deployments`) and waits on the event
//! stream for `synchronization:deployed`, merges 1.1 (which fails 2% of its requests) into the
//! cluster (`PUT /api/v1/deployments/sava`), sends steady traffic through the deployment's
//! gateway, and walks the cluster gateway's weights 100/0 → 90/10 → 50/50 → 0/100
//! (`PUT /api/v1/gateways/sava/sava/webport`); per step it prints how the agent applied the
//! change and the split and error rate measured from HAProxy's logs. At the end it slices 1.0
//! out (`DELETE /api/v1/deployments/sava` with its blueprint). HAProxy 2.6+ is needed: as root
//! on Debian it installs the `haproxy` package when missing; otherwise it says what to install
//! (or set `VAMP_HAPROXY_BIN`).

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
use vamp_core::kv::{KeyValueStore, keys};
use vamp_core::lookup::route_lookup_name;
use vamp_core::metrics::MetricsStore;
use vamp_examples::serve::{ServeConfig, start};
use vamp_haproxy::agent::AgentStatus;

const STEPS: [(u8, u8); 4] = [(100, 0), (90, 10), (50, 50), (0, 100)];
const CANARY_FAIL_PERCENT: u32 = 2;

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
        [] => 4,
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

fn progress(done: Duration, total: Duration) {
    use std::io::IsTerminal;
    // Redraw only on a terminal; elsewhere (logs, CI) print the finished bar once.
    if !std::io::stdout().is_terminal() && done < total {
        return;
    }
    let width = 30;
    let filled =
        ((done.as_secs_f64() / total.as_secs_f64()) * width as f64).min(width as f64) as usize;
    print!(
        "\r    [{}{}] {:>4.1}s / {}s",
        "#".repeat(filled),
        "-".repeat(width - filled),
        done.as_secs_f64().min(total.as_secs_f64()),
        total.as_secs()
    );
    let _ = std::io::stdout().flush();
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

async fn wait_for(
    status: &mut tokio::sync::watch::Receiver<AgentStatus>,
    version: u64,
) -> Result<AgentStatus, String> {
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        status
            .wait_for(|s| s.applied_version.is_some_and(|v| v >= version) || s.counts.rejected > 0)
            .await
            .map(|s| s.clone())
    })
    .await;
    match result {
        Ok(Ok(s)) if s.applied_version.is_some_and(|v| v >= version) => Ok(s),
        Ok(Ok(s)) => Err(format!(
            "the agent rejected the configuration: {:?}",
            s.last_error
        )),
        _ => Err(format!(
            "the agent did not apply version {version}: {:?}",
            *status.borrow()
        )),
    }
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
        "Vamp canary demo: sava 1.0 → sava 1.1 through Vamp's REST API and HAProxy, embedded defaults\n"
    );
    let mut config = ServeConfig::new(work);
    config.listen = "127.0.0.1:0".parse().expect("address");
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
    let mut status = server.agent.clone().ok_or("no gateway agent")?;

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

    // Merge 1.1 into the cluster: it gets no traffic until the weights say so.
    api.call(
        reqwest::Method::PUT,
        "/deployments/sava",
        Some(blueprint("1.1", CANARY_FAIL_PERCENT, None)?),
    )
    .await?;
    println!(
        "  merge      PUT /api/v1/deployments/sava: sava 1.1 (fails {CANARY_FAIL_PERCENT}% of its requests)"
    );
    until("sava 1.1 to run", async || {
        let d = api
            .call(reqwest::Method::GET, "/deployments/sava", None)
            .await
            .ok()?;
        let services = d["clusters"]["sava"]["services"].as_array()?.clone();
        (services.len() == 2
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
    println!("  gateway    sava/sava/webport routes sava:1.0 and sava:1.1\n");

    // Steady traffic from a client thread.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let traffic = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (seen, traffic, done) = (Arc::clone(&seen), Arc::clone(&traffic), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if !traffic.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
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
                std::thread::sleep(Duration::from_millis(4));
            }
        })
    };

    let key = keys::haproxy_configuration("default", "1.7").map_err(|e| e.to_string())?;
    let routes: Vec<(String, String)> = ["1.0", "1.1"]
        .iter()
        .map(|v| {
            let breed = format!("sava:{v}");
            let lookup = route_lookup_name(
                "sava/sava/webport",
                &["sava", "sava", breed.as_str(), "webport"],
            );
            ((*v).to_owned(), lookup)
        })
        .collect();
    let mut failures = 0;
    let mut before = status.borrow().clone();
    for (weights, index) in STEPS.iter().zip(1..) {
        println!(
            "step {index}/{}: PUT /api/v1/gateways/sava/sava/webport: sava 1.0 {}% / sava 1.1 {}%",
            STEPS.len(),
            weights.0,
            weights.1
        );
        let current = server
            .kv
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .map(|v| v.version.0);
        let now = api
            .call(reqwest::Method::GET, "/gateways/sava/sava/webport", None)
            .await?;
        let unchanged = [("1.0", weights.0), ("1.1", weights.1)]
            .iter()
            .all(|(v, w)| {
                now["routes"][format!("sava/sava/sava:{v}/webport")]["weight"] == format!("{w}%")
            });
        let written = Instant::now();
        let gateway = format!(
            "name: sava/sava/webport\nroutes:\n  sava/sava/sava:1.0/webport: {{weight: {}%}}\n  sava/sava/sava:1.1/webport: {{weight: {}%}}\n",
            weights.0, weights.1
        );
        api.call(
            reqwest::Method::PUT,
            "/gateways/sava/sava/webport",
            Some(gateway),
        )
        .await?;
        // The reconcile loop pushes the gateway; the agent applies what the driver wrote.
        let kv = &server.kv;
        let version = if unchanged {
            current.ok_or("no configuration written yet")?
        } else {
            until("the new configuration", async || {
                let v = kv.get(&key).await.ok()??.version.0;
                (Some(v) != current).then_some(v)
            })
            .await?
        };
        let applied = wait_for(&mut status, version).await?;
        let how = if unchanged {
            "already in place"
        } else if applied.counts.dynamic > before.counts.dynamic {
            "runtime API, no reload"
        } else if applied.starts > before.starts {
            "HAProxy started"
        } else {
            "reload"
        };
        println!(
            "    applied in {:.0} ms ({how})",
            written.elapsed().as_secs_f64() * 1000.0
        );
        before = applied;

        *seen.lock().expect("lock") = Seen::default();
        let started = Instant::now();
        traffic.store(true, Ordering::Relaxed);
        while started.elapsed() < step {
            progress(started.elapsed(), step);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        traffic.store(false, Ordering::Relaxed);
        progress(step, step);
        println!();
        // Let the last log lines arrive, then read the step's window.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let window = started.elapsed();
        let mut measured = Vec::new();
        for (version, frontend) in &routes {
            let m = server
                .metrics
                .request_metrics(frontend, window)
                .await
                .map_err(|e| e.to_string())?;
            measured.push((version.clone(), m));
        }
        let total: u64 = measured.iter().map(|(_, m)| m.requests).sum();
        let s = seen.lock().expect("lock");
        for (version, m) in &measured {
            let share = if total == 0 {
                0.0
            } else {
                m.requests as f64 * 100.0 / total as f64
            };
            let (client_answers, _) = s
                .versions
                .get(version.as_str())
                .copied()
                .unwrap_or_default();
            println!(
                "    sava {version}: {share:5.1}% of {total} requests (HAProxy logs), {client_answers} answers seen by the client, error rate {:.1}%, p95 {} ms",
                m.error_rate * 100.0,
                m.response_time_p95_ms
                    .map_or("-".to_owned(), |p| format!("{p:.0}"))
            );
        }
        if s.failed > 0 {
            println!("    {} requests failed at the client", s.failed);
            failures += s.failed;
        }
        println!();
    }
    done.store(true, Ordering::Relaxed);
    let _ = client.join();

    // Promote: slice 1.0 out of the deployment.
    api.call(
        reqwest::Method::DELETE,
        "/deployments/sava",
        Some(blueprint("1.0", 0, None)?),
    )
    .await?;
    until("sava 1.0 to be gone", async || {
        let d = api
            .call(reqwest::Method::GET, "/deployments/sava", None)
            .await
            .ok()?;
        (d["clusters"]["sava"]["services"].as_array()?.len() == 1).then_some(())
    })
    .await?;
    println!("promoted: DELETE /api/v1/deployments/sava with sava 1.0's blueprint sliced it out");
    let last = status.borrow().clone();
    println!(
        "done: {} reloads, {} runtime weight changes, {} rejected, {failures} failed requests",
        last.counts.reload, last.counts.dynamic, last.counts.rejected
    );
    // Undeploy everything before stopping (the demo leaves nothing running).
    api.call(
        reqwest::Method::DELETE,
        "/deployments/sava",
        Some(blueprint("1.1", CANARY_FAIL_PERCENT, None)?),
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
