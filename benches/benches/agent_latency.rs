//! Key-value write → traffic latency of the gateway agent on a real HAProxy: the time from
//! writing a configuration to the key until a client (a new connection per request, without
//! pause) first gets its answer from the new destination. 50 weight changes (applied through
//! the runtime API) and 50 structural changes (a route's server address, applied by a reload),
//! with the default 100 ms debounce and with none; on the in-memory key-value store and, when
//! `VAMP_ETCD_ENDPOINTS` names one (`http://127.0.0.1:2379`), on a real etcd. Each change is
//! written after a quiet period longer than the debounce (as a canary moving its weights every
//! few seconds): the agent applies such a value at once and coalesces only bursts.
//!
//! The reference for structural changes is HAProxy's own: the same 50 address changes applied
//! to an HAProxy in master-worker mode by writing the file and sending `reload` to its master
//! socket (no check, no agent), timed the same way.
//!
//! `cargo bench -p vamp-benches --bench agent_latency [--features etcd]` (needs `haproxy`;
//! prints a table)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vamp_core::kv::{DynKeyValueStore, KeyPath, KeyValueStoreExt};
use vamp_core::memory::InMemoryKv;
use vamp_core::model::*;
use vamp_haproxy::agent::{AgentOptions, GatewayAgent};
use vamp_haproxy::{RenderOptions, render};

const CHANGES: usize = 50;

/// A backend answering with its name.
fn backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("{name}\n");
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    port
}

fn gateway_config(port: u16, dir: &str, targets: [u16; 2], weights: (u8, u8)) -> String {
    let mut g = Gateway::new(Port::new("", Some(port.to_string())).unwrap());
    g.name = "bench/latency".into();
    g.routes = targets
        .iter()
        .zip([weights.0, weights.1])
        .enumerate()
        .map(|(i, (target, weight))| {
            let mut d = DefaultRoute::new(format!("bench/svc{i}:1.0/web"));
            d.weight = Some(vamp_core::units::Percentage(weight));
            d.targets = vec![RouteTarget::Internal {
                name: format!("t{i}"),
                host: Some("127.0.0.1".into()),
                port: i64::from(*target),
            }];
            Route::Default(d)
        })
        .collect();
    let opts = RenderOptions::default()
        .with_socket_dir(dir)
        .with_bind_address("127.0.0.1");
    render(&[g], &opts).unwrap().render()
}

/// The client: requests without pause; remembers the last answer and when it changed.
struct Client {
    last: Arc<Mutex<(String, Instant)>>,
    stop: Arc<AtomicBool>,
}

impl Client {
    fn start(port: u16) -> Self {
        let last = Arc::new(Mutex::new((String::new(), Instant::now())));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&last), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
                let mut raw = Vec::new();
                let _ = c.read_to_end(&mut raw);
                let text = String::from_utf8_lossy(&raw);
                let Some((_, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let name = body.trim().to_owned();
                let mut last = l.lock().unwrap();
                if last.0 != name {
                    *last = (name, Instant::now());
                }
            }
        });
        Self { last, stop }
    }

    /// Waits until the answer is `name`; returns when it first was.
    fn until(&self, name: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            {
                let last = self.last.lock().unwrap();
                if last.0 == name {
                    return last.1;
                }
            }
            assert!(Instant::now() < deadline, "never answered by {name}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn summary(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[(((p / 100.0) * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    println!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} |",
        ms.len(),
        at(50.0),
        at(99.0),
        ms[ms.len() - 1]
    );
}

async fn series(haproxy: &str, debounce: Duration, kv: Arc<DynKeyValueStore>, store: &str) {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let dir = std::env::temp_dir().join(format!(
        "vamp-bench-latency-{}-{}",
        std::process::id(),
        debounce.as_millis()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sockets = dir.display().to_string();
    let key = KeyPath::parse("/vamp/bench/gateways/haproxy/1.7/configuration").unwrap();
    let options = AgentOptions::new(key.clone(), dir.join("agent"))
        .with_haproxy_bin(haproxy)
        .with_socket_dir(&dir)
        .with_debounce(debounce);
    let agent = GatewayAgent::new(Arc::clone(&kv), options);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    kv.put(
        &key,
        gateway_config(port, &sockets, [a, b], (100, 0)).into(),
    )
    .await
    .unwrap();
    let client = Client::start(port);
    let mut now = tokio::task::block_in_place(|| client.until("a"));
    let _ = now;

    let mut weights = Vec::new();
    for i in 0..CHANGES {
        let (w, expect) = if i % 2 == 0 {
            ((0, 100), "b")
        } else {
            ((100, 0), "a")
        };
        let config = gateway_config(port, &sockets, [a, b], w);
        tokio::time::sleep(debounce + Duration::from_millis(20)).await;
        let written = Instant::now();
        kv.put(&key, config.into()).await.unwrap();
        now = tokio::task::block_in_place(|| client.until(expect));
        weights.push(now.duration_since(written).as_secs_f64() * 1000.0);
    }
    // Back to a, then move route 0 between servers a and c (address change: a reload).
    kv.put(
        &key,
        gateway_config(port, &sockets, [a, b], (100, 0)).into(),
    )
    .await
    .unwrap();
    tokio::task::block_in_place(|| client.until("a"));
    let mut structural = Vec::new();
    for i in 0..CHANGES {
        let (target, expect) = if i % 2 == 0 { (c, "c") } else { (a, "a") };
        let config = gateway_config(port, &sockets, [target, b], (100, 0));
        tokio::time::sleep(debounce + Duration::from_millis(20)).await;
        let written = Instant::now();
        kv.put(&key, config.into()).await.unwrap();
        now = tokio::task::block_in_place(|| client.until(expect));
        structural.push(now.duration_since(written).as_secs_f64() * 1000.0);
    }
    drop(client);
    let _ = stop.send(());
    let _ = task.await;
    let _ = std::fs::remove_dir_all(&dir);
    let d = debounce.as_millis();
    summary(
        &format!("weight change (runtime API), debounce {d} ms, {store}"),
        weights,
    );
    summary(
        &format!("structural change (reload), debounce {d} ms, {store}"),
        structural,
    );
}

/// HAProxy's own reload time, the reference for structural changes: an HAProxy in
/// master-worker mode, the file rewritten and `reload` sent to the master socket.
fn haproxy_reload_series(haproxy: &str) {
    let (a, b, c) = (backend("a"), backend("b"), backend("c"));
    let dir = std::env::temp_dir().join(format!("vamp-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sockets = dir.display().to_string();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.join("haproxy.cfg");
    let master = dir.join("master.sock");
    let write = |targets: [u16; 2]| {
        std::fs::write(
            &file,
            format!(
                "{}
{}",
                vamp_haproxy::BASE_CONFIG,
                gateway_config(port, &sockets, targets, (100, 0))
            ),
        )
        .unwrap();
    };
    write([a, b]);
    let mut child = std::process::Command::new(haproxy)
        .arg("-W")
        .arg("-S")
        .arg(&master)
        .arg("-f")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy");
    let client = Client::start(port);
    client.until("a");
    let reload = || {
        let mut s = std::os::unix::net::UnixStream::connect(&master).unwrap();
        s.write_all(b"reload\n").unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
    };
    let mut times = Vec::new();
    for i in 0..CHANGES {
        let (target, expect) = if i % 2 == 0 { (c, "c") } else { (a, "a") };
        std::thread::sleep(Duration::from_millis(120));
        let written = Instant::now();
        write([target, b]);
        reload();
        let now = client.until(expect);
        times.push(now.duration_since(written).as_secs_f64() * 1000.0);
    }
    drop(client);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    summary(
        "reference: HAProxy's own reload (file + master CLI `reload`)",
        times,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: only measure for
    // `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let haproxy = std::env::var("VAMP_HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
    if std::process::Command::new(&haproxy)
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("agent_latency needs HAProxy ('{haproxy}')");
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| change | n | median ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- |");
    let memory = || Arc::new(InMemoryKv::new()) as Arc<DynKeyValueStore>;
    rt.block_on(series(
        &haproxy,
        Duration::from_millis(100),
        memory(),
        "in memory",
    ));
    rt.block_on(series(&haproxy, Duration::ZERO, memory(), "in memory"));
    #[cfg(feature = "etcd")]
    if let Ok(endpoints) = std::env::var("VAMP_ETCD_ENDPOINTS") {
        let hosts = endpoints
            .split(',')
            .map(|e| e.trim().trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(",");
        for debounce in [Duration::from_millis(100), Duration::ZERO] {
            let url = format!(
                "etcd://{hosts}/vamp-bench-{}-{}",
                std::process::id(),
                debounce.as_millis()
            );
            let kv = rt
                .block_on(async {
                    vamp_backends::kv::KvBackendConfig::from_url(&url)?
                        .build()
                        .await
                })
                .expect("etcd");
            rt.block_on(series(&haproxy, debounce, kv, "etcd"));
        }
    } else {
        eprintln!("set VAMP_ETCD_ENDPOINTS to measure on a real etcd too");
    }
    #[cfg(not(feature = "etcd"))]
    eprintln!("build with --features etcd and set VAMP_ETCD_ENDPOINTS to measure on etcd too");
    haproxy_reload_series(&haproxy);
}
