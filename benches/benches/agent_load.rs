//! The gateway agent under load: HAProxy serving requests as fast as a client on loopback
//! sends them (keep-alive connections, one request at a time each, paced to at most
//! `VAMP_BENCH_RATE` requests per second, default 20,000), its logs received by the agent
//! over UDP syslog and written as request records into the in-memory metrics store.
//!
//! Counted at every end, from the same run: the requests the client saw answered, the
//! requests HAProxy counted (its frontends' `req_tot`), the log lines the agent parsed
//! (`/status` `logs.received`; two per request: the gateway's frontend and its route's),
//! stored, dropped and still pending, the datagrams the kernel dropped for a full socket
//! buffer (`/proc/net/snmp` `Udp: RcvbufErrors`), and the most records that waited in the
//! agent at once, with the process's peak resident memory.
//!
//! `cargo bench -p vamp-benches --bench agent_load` (needs `haproxy`; prints a table)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vamp_core::kv::{DynKeyValueStore, KeyPath, KeyValueStoreExt};
use vamp_core::memory::{InMemoryKv, InMemoryMetrics};
use vamp_core::metrics::DynMetricsStore;
use vamp_core::model::*;
use vamp_haproxy::agent::{AgentOptions, AgentStatus, GatewayAgent};
use vamp_haproxy::{RenderOptions, render};

const DURATION: Duration = Duration::from_secs(10);
const CONNECTIONS: usize = 64;

/// A keep-alive backend answering every request with a two-byte body.
async fn backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = 0;
                loop {
                    match conn.read(&mut buf[seen..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen += n,
                    }
                    // Answer every complete request in the buffer.
                    while let Some(end) = buf[..seen].windows(4).position(|w| w == b"\r\n\r\n") {
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..seen, 0);
                        seen -= end + 4;
                    }
                }
            });
        }
    });
    port
}

fn gateway_config(port: u16, dir: &str, backend: u16) -> String {
    let mut g = Gateway::new(Port::new("", Some(port.to_string())).unwrap());
    g.name = "bench/load".into();
    let mut route = DefaultRoute::new("bench/svc:1.0/web");
    route.weight = Some(vamp_core::units::Percentage(100));
    route.targets = vec![RouteTarget::Internal {
        name: "t".into(),
        host: Some("127.0.0.1".into()),
        port: i64::from(backend),
    }];
    g.routes = vec![Route::Default(route)];
    let opts = RenderOptions::default()
        .with_socket_dir(dir)
        .with_bind_address("127.0.0.1");
    render(&[g], &opts).unwrap().render()
}

/// One keep-alive connection sending a request, reading its answer, and so on, at most
/// `rate` per second, until `end`; counts the answers with status 200.
async fn client(port: u16, rate: f64, end: Instant, answered: Arc<AtomicU64>) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: load\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        tick.tick().await;
        conn.write_all(request).await.unwrap();
        let mut seen = 0;
        // The answer: headers with Content-Length: 2, and the body.
        loop {
            let n = conn.read(&mut buf[seen..]).await.unwrap();
            assert!(n > 0, "HAProxy closed the connection");
            seen += n;
            if let Some(end) = buf[..seen].windows(4).position(|w| w == b"\r\n\r\n")
                && seen >= end + 4 + 2
            {
                break;
            }
        }
        assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..seen]);
        answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer.
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The process's peak resident memory in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// HAProxy's request count over its HTTP frontends (`show stat`, `req_tot`).
async fn haproxy_requests(stats: &std::path::Path) -> u64 {
    let mut s = tokio::net::UnixStream::connect(stats).await.unwrap();
    s.write_all(b"show stat\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (svname, req_tot) = (col("svname"), col("req_tot"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(svname) == Some(&"FRONTEND"))
        .filter_map(|f| f.get(req_tot).and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

async fn until(
    status: &mut tokio::sync::watch::Receiver<AgentStatus>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let waited = tokio::time::timeout(timeout, status.wait_for(|s| done(s)))
        .await
        .ok()
        .and_then(|r| r.ok().map(|s| s.clone()));
    waited.unwrap_or_else(|| {
        let s = status.borrow().clone();
        eprintln!("{what}: not within {timeout:?}; last status: {:?}", s.logs);
        s
    })
}

async fn run(haproxy: &str, rate: f64) {
    let backend = backend().await;
    let dir = std::env::temp_dir().join(format!("vamp-bench-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = KeyPath::parse("/vamp/bench/gateways/haproxy/1.7/configuration").unwrap();
    let options = AgentOptions::new(key.clone(), dir.join("agent"))
        .with_haproxy_bin(haproxy)
        .with_socket_dir(&dir)
        .with_syslog("127.0.0.1:0".parse().unwrap());
    let stats = options.stats_socket();
    let config_file = options.config_file();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let metrics: Arc<DynMetricsStore> = Arc::new(InMemoryMetrics::new());
    let agent = GatewayAgent::new(Arc::clone(&kv), options).with_metrics(metrics);
    let mut status = agent.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    kv.put(
        &key,
        gateway_config(port, &dir.display().to_string(), backend).into(),
    )
    .await
    .unwrap();
    until(
        &mut status,
        "HAProxy serving",
        Duration::from_secs(30),
        |s| s.applied_version.is_some(),
    )
    .await;
    // Warm up until a request goes through, then start counting from here.
    let warm = Arc::new(AtomicU64::new(0));
    client(
        port,
        1000.0,
        Instant::now() + Duration::from_millis(200),
        Arc::clone(&warm),
    )
    .await;
    let warm = warm.load(Ordering::Relaxed);
    until(
        &mut status,
        "warm-up logged",
        Duration::from_secs(30),
        |s| s.logs.received >= 2 * warm && s.logs.stored >= 2 * warm,
    )
    .await;
    let before = status.borrow().logs;
    let haproxy_before = haproxy_requests(&stats).await;
    let kernel_before = udp_rcvbuf_errors();

    let answered = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + DURATION;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(client(
                port,
                rate / CONNECTIONS as f64,
                end,
                Arc::clone(&answered),
            ))
        })
        .collect();
    // The most records waiting in the agent at once, sampled at every status change.
    let mut most_pending = 0;
    let mut watch = status.clone();
    let sampler = tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            most_pending = most_pending.max(watch.borrow().logs.pending);
            if Instant::now() > end + Duration::from_secs(30) {
                break;
            }
        }
        most_pending
    });
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = start.elapsed();
    let answered = answered.load(Ordering::Relaxed);
    let haproxy_count = haproxy_requests(&stats).await - haproxy_before;
    let expected = 2 * answered;
    let after = until(
        &mut status,
        "every log line received and stored",
        Duration::from_secs(30),
        |s| {
            s.logs.received - before.received >= expected && s.logs.pending == 0
                || s.logs.dropped > before.dropped
        },
    )
    .await
    .logs;
    let kernel_dropped = udp_rcvbuf_errors() - kernel_before;
    sampler.abort();
    let most_pending = most_pending.max(after.pending);
    let received = after.received - before.received;
    let stored = after.stored - before.stored;
    println!("| figure | value |\n| --- | --- |");
    println!(
        "| requests answered (client) | {answered} in {:.1} s = {:.0}/s |",
        elapsed.as_secs_f64(),
        answered as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| requests counted by HAProxy (frontends' req_tot, gateway + route) | {haproxy_count} (expected {expected}) |"
    );
    println!(
        "| log lines parsed by the agent (two per request) | {received} (expected {expected}) |"
    );
    println!(
        "| records stored / dropped / refused / pending | {stored} / {} / {} / {} |",
        after.dropped - before.dropped,
        after.refused - before.refused,
        after.pending
    );
    println!(
        "| datagrams the kernel dropped (UDP RcvbufErrors, whole machine) | {kernel_dropped} |"
    );
    println!(
        "| most records waiting in the agent at once | {most_pending} (bound: {}) |",
        vamp_haproxy::agent::MAX_PENDING_RECORDS
    );
    println!(
        "| peak resident memory of the process (agent, client, backend; not HAProxy) | {:.0} MiB |",
        peak_rss_mib()
    );

    // The agent's own ceiling, without the client, backend and HAProxy competing for the
    // cores: log lines as this HAProxy sends them (its secret tag, Vamp's log format) from one
    // thread at a paced rate, counted by the sender and by the agent.
    let config = std::fs::read_to_string(&config_file).unwrap();
    let tag = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("log-tag "))
        .expect("the agent's log tag")
        .to_owned();
    let syslog = status.borrow().syslog.expect("the agent's syslog address");
    for lines_per_second in [2.0 * rate, 4.0 * rate] {
        let before = status.borrow().logs;
        let kernel_before = udp_rcvbuf_errors();
        let tag = tag.clone();
        let (sent, elapsed) =
            tokio::task::spawn_blocking(move || blast(syslog, &tag, lines_per_second, DURATION))
                .await
                .unwrap();
        let after = until(
            &mut status,
            "every synthetic line received and stored",
            Duration::from_secs(30),
            |s| s.logs.received - before.received >= sent && s.logs.pending == 0,
        )
        .await
        .logs;
        println!(
            "| log lines sent straight to the agent (no HAProxy) | {sent} in {:.1} s = {:.0}/s (as from {:.0} requests/s) |",
            elapsed.as_secs_f64(),
            sent as f64 / elapsed.as_secs_f64(),
            sent as f64 / elapsed.as_secs_f64() / 2.0
        );
        println!(
            "| … parsed / stored / dropped by the agent, dropped by the kernel | {} / {} / {} / {} |",
            after.received - before.received,
            after.stored - before.stored,
            after.dropped - before.dropped,
            udp_rcvbuf_errors() - kernel_before
        );
    }
    println!(
        "| peak resident memory of the process, at the end | {:.0} MiB |",
        peak_rss_mib()
    );
    let _ = stop.send(());
    let _ = task.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `rate` log lines a second to `to` for `duration`, in 1 ms slices; returns how many
/// were sent and in what time.
fn blast(to: std::net::SocketAddr, tag: &str, rate: f64, duration: Duration) -> (u64, Duration) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(to).unwrap();
    let line = format!(
        r#"<134>Nov 29 21:00:00 {tag}[7]: {{"ci":"127.0.0.1","cp":5000,"t":"29/Nov/2026:21:00:00.123","ft":"bench-synthetic","b":"o_bench","s":"r1","Tq":0,"Tw":0,"Tc":1,"Tr":2,"Tt":3,"ST":200,"B":42,"CC":"-","CS":"-","tsc":"----","ac":1,"fc":1,"bc":0,"sc":0,"rc":0,"sq":0,"bq":0,"hr":"","hs":"","r":"GET / HTTP/1.1"}}"#
    );
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            socket.send(line.as_bytes()).unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    (sent, start.elapsed())
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: only measure for
    // `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let haproxy = std::env::var("VAMP_HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
    let rate = std::env::var("VAMP_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20_000.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&haproxy, rate));
}
