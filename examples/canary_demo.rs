//! `canary_demo`: a canary release of the `sava` demo service through a real HAProxy, on
//! embedded defaults (in-memory key-value store and metrics).
//!
//! ```text
//! cargo run --example canary_demo [-- --step-seconds N]
//! ```
//!
//! It starts two versions of `sava` (1.0, and 1.1 which fails 2% of its requests) as separate
//! processes, the gateway agent with its HAProxy, and steady traffic; then it walks the
//! gateway's weights 100/0 → 90/10 → 50/50 → 0/100 by writing the rendered configuration to the
//! key-value store, and prints per step how the agent applied it and the split and error rate
//! measured from HAProxy's logs. HAProxy 2.6+ is needed: as root on Debian it installs the
//! `haproxy` package when missing; otherwise it says what to install (or set
//! `VAMP_HAPROXY_BIN`).

#[path = "common/sava_service.rs"]
mod sava_service;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::kv::{DynKeyValueStore, KeyValueStore, keys};
use vamp_core::memory::{InMemoryKv, InMemoryMetrics};
use vamp_core::metrics::{DynMetricsStore, MetricsStore};
use vamp_core::model::{ArtifactKind, Route, RouteTarget};
use vamp_haproxy::agent::{AgentOptions, AgentStatus, GatewayAgent};
use vamp_haproxy::driver::{GatewayDriver, Marshaller};
use vamp_haproxy::{RenderOptions, render};

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

/// A child process killed on drop.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_service(version: &str, fail_percent: u32) -> Result<(Service, u16), String> {
    let port = free_port();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args([
            "serve",
            version,
            &port.to_string(),
            &fail_percent.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start sava {version}: {e}"))?;
    let service = Service(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("sava {version} did not listen on {port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((service, port))
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

struct Gateway {
    gateway: vamp_core::model::Gateway,
    routes: Vec<(String, String)>, // (version, route frontend lookup)
}

fn gateway(
    port: u16,
    socket_dir: &str,
    targets: [(u16, &str); 2],
    weights: (u8, u8),
) -> Result<Gateway, String> {
    let yaml = format!(
        "name: sava\nport: {port}\nroutes:\n  sava:1.0: {{weight: {}%}}\n  sava:1.1: {{weight: {}%}}\n",
        weights.0, weights.1
    );
    let mut g = match read_str(&yaml, Some(ArtifactKind::Gateway))
        .map_err(|e| e.to_string())?
        .remove(0)
    {
        AnyArtifact::Gateway(g) => g,
        _ => return Err("not a gateway".into()),
    };
    for (route, (target_port, version)) in g.routes.iter_mut().zip(targets) {
        if let Route::Default(d) = route {
            d.targets = vec![RouteTarget::Internal {
                name: format!("sava-{version}"),
                host: None,
                port: i64::from(target_port),
            }];
        }
    }
    let config =
        render(std::slice::from_ref(&g), &render_options(socket_dir)).map_err(|e| e.to_string())?;
    let mut routes = Vec::new();
    for (target_port, version) in targets {
        let address = format!("127.0.0.1:{target_port}");
        let backend = config
            .backends
            .iter()
            .find(|b| b.servers.iter().any(|s| s.address == address))
            .ok_or("no backend for a route")?;
        let frontend = config
            .frontends
            .iter()
            .find(|f| f.bind.is_none() && f.default_backend == backend.lookup)
            .ok_or("no frontend for a route")?;
        routes.push((version.to_owned(), frontend.lookup.clone()));
    }
    Ok(Gateway { gateway: g, routes })
}

fn render_options(socket_dir: &str) -> RenderOptions {
    RenderOptions::default()
        .with_socket_dir(socket_dir)
        .with_bind_address("127.0.0.1")
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

async fn wait_for(
    status: &mut tokio::sync::watch::Receiver<AgentStatus>,
    version: u64,
) -> Result<AgentStatus, String> {
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        status
            .wait_for(|s| s.applied_version == Some(version) || s.counts.rejected > 0)
            .await
            .map(|s| s.clone())
    })
    .await;
    match result {
        Ok(Ok(s)) if s.applied_version == Some(version) => Ok(s),
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

async fn demo(haproxy: String, step: Duration) -> Result<(), String> {
    let work = std::env::temp_dir().join(format!("vamp-canary-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let socket_dir = work.display().to_string();

    println!(
        "Vamp canary demo: sava 1.0 → sava 1.1 through HAProxy, embedded key-value store and metrics\n"
    );
    let (_v1, port_v1) = start_service("1.0", 0)?;
    let (_v2, port_v2) = start_service("1.1", CANARY_FAIL_PERCENT)?;
    println!(
        "  services   sava 1.0 on 127.0.0.1:{port_v1}, sava 1.1 on 127.0.0.1:{port_v2} (fails {CANARY_FAIL_PERCENT}% of its requests)"
    );

    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let metrics = Arc::new(InMemoryMetrics::new());
    let key = keys::haproxy_configuration("default", "1.7").map_err(|e| e.to_string())?;
    let options = AgentOptions::new(key.clone(), work.join("agent"))
        .with_haproxy_bin(&haproxy)
        .with_socket_dir(&work)
        .with_syslog("127.0.0.1:0".parse().expect("address"));
    let agent = GatewayAgent::new(Arc::clone(&kv), options)
        .with_metrics(Arc::clone(&metrics) as Arc<DynMetricsStore>);
    let mut status = agent.status();
    let (stop_agent, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let port = free_port();
    let driver = GatewayDriver::new(
        Arc::clone(&kv),
        "default",
        vec![Marshaller::new("1.7").with_options(render_options(&socket_dir))],
    );
    println!("  gateway    sava on 127.0.0.1:{port}, configuration key {key}\n");

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

    let mut failures = 0;
    let mut before = AgentStatus::default();
    for (weights, index) in STEPS.iter().zip(1..) {
        let g = gateway(
            port,
            &socket_dir,
            [(port_v1, "1.0"), (port_v2, "1.1")],
            *weights,
        )?;
        println!(
            "step {index}/{}: weights sava 1.0 {}% / sava 1.1 {}%",
            STEPS.len(),
            weights.0,
            weights.1
        );
        let written = Instant::now();
        // The control plane's side: the gateway driver renders and writes the configuration.
        driver
            .push(std::slice::from_ref(&g.gateway))
            .await
            .map_err(|e| e.to_string())?;
        let version = kv
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the driver wrote no configuration")?
            .version;
        let applied = wait_for(&mut status, version.0).await?;
        let how = if applied.counts.dynamic > before.counts.dynamic {
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
        for (version, frontend) in &g.routes {
            let m = metrics
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
    let last = status.borrow().clone();
    println!(
        "done: {} reloads, {} runtime weight changes, {} rejected, {failures} failed requests",
        last.counts.reload, last.counts.dynamic, last.counts.rejected
    );
    let _ = stop_agent.send(());
    match agent_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(e.to_string()),
    }
    let _ = std::fs::remove_dir_all(&work);
    if failures > 0 {
        return Err(format!("{failures} requests failed"));
    }
    Ok(())
}
