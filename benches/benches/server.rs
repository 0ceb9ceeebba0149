//! `vamp serve` at scale (issue 30, targets 3 and 5): the server as a child process (in-memory
//! or SQLite persistence, the in-memory scheduler, no agent), driven over HTTP by 64 keep-alive
//! clients on loopback.
//!
//! For each store, in one run:
//!
//! 1. **Creates** `VAMP_BENCH_DEPLOYMENTS` (default 10,000) small deployments through
//!    `POST /api/v1/deployments` (one cluster, one service of a shared inline breed with one
//!    port, so one internal gateway each), timing every thousand: whether one more deployment
//!    costs more when there are more.
//! 2. **Resident memory** of the server process (`VmRSS`, `VmHWM` of `/proc/<pid>/status`)
//!    before and after.
//! 3. **A reconcile pass** over all of them: the pass time the server itself measures
//!    (`/api/v1/info` `loops.reconcile.last_pass_ms`), after the passes that deploy them.
//! 4. **Reads** under 64 clients for `VAMP_BENCH_SECONDS` (default 10) each: pages of 30 of
//!    `GET /api/v1/deployments`, then single deployments; requests per second, p50 and p99.
//! 5. **Writes** at that count under 64 clients: new deployments and merges of a second breed
//!    into stored ones, alternating, with 100 event streams open; writes per second, p50, p99,
//!    and the archive events each stream received against the writes acknowledged.
//! 6. **A cold start** (SQLite): the server stopped and started again on the same file, timed
//!    from spawning the process to its API listing every deployment and its first reconcile pass
//!    finished.
//!
//! `cargo bench -p vamp-benches --bench server` (prints a table; no timing is asserted)

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The `vamp` program's allocator, so that the child server is what `vamp serve` runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENTS: usize = 64;
const SUBSCRIBERS: usize = 100;
const PER_PAGE: usize = 30;
const CHILD: &str = "VAMP_BENCH_SERVER_CHILD";

/// A deployment's blueprint: one service of the shared breed `sava:<version>`.
fn blueprint(name: &str, version: &str) -> String {
    format!(
        "name: {name}\nclusters:\n  sava:\n    services:\n      breed:\n        name: sava:{version}\n        deployable: magneticio/sava:{version}\n        ports:\n          web: 8080/http\n      scale:\n        cpu: 0.1\n        memory: 64MB\n        instances: 1\n"
    )
}

fn name(i: usize) -> String {
    format!("d{i:06}")
}

// ------------------------------------------------------------------------------------------
// The server, as a child process of this benchmark

/// Runs the server (in the child): `spec` is `memory|<dir>` or `sqlite|<dir>`. Prints its
/// address, then serves until standard input closes.
fn child(spec: &str) {
    let (store, dir) = spec.split_once('|').expect("store|dir");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut config = vamp_examples::serve::ServeConfig::new(dir);
        config.listen = Some("127.0.0.1:0".parse().unwrap());
        match store {
            "memory" => config.in_memory = true,
            _ => config.persistence = Some(format!("sqlite://{dir}/vamp.db")),
        }
        config.scheduler = Some("memory://".into());
        config.no_agent = true;
        config.stop_on_exit = true;
        config.max_services = 1_000_000;
        config.max_instances = 1_000_000;
        config.gateway_port_range = Some("10000-32000".into());
        if let Some(ms) = std::env::var("VAMP_BENCH_PULSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config.pulse_ms = ms;
        }
        let server = vamp_examples::serve::start(config).await.unwrap();
        println!("listening {}", server.addr);
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await
        .unwrap();
        server.stop().await;
    });
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(spec: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the server did not start: {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    /// Resident and peak resident memory in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Stops the server gracefully (standard input closed) and waits for it.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------------
// A keep-alive HTTP/1.1 client (light, so that the server, not the client, is measured)

struct Http {
    stream: BufReader<TcpStream>,
    host: String,
}

struct Answer {
    status: u16,
    total: Option<usize>,
    body: Vec<u8>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<Answer> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nContent-Type: application/x-yaml\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
        let (mut length, mut chunked, mut total) = (0usize, false, None);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "x-total-count" => total = v.trim().parse().ok(),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            self.stream.read_exact(&mut body).await?;
        }
        Ok(Answer {
            status,
            total,
            body,
        })
    }
}

/// Latencies and failures of one phase.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    failures: usize,
    first_failure: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    fn quantile(&mut self, q: f64) -> Duration {
        self.latencies.sort_unstable();
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }

    fn record(&mut self, started: Instant, answer: std::io::Result<Answer>, ok: &[u16]) {
        match answer {
            Ok(a) if ok.contains(&a.status) => self.latencies.push(started.elapsed()),
            Ok(a) => {
                self.failures += 1;
                self.first_failure.get_or_insert_with(|| {
                    format!("{}: {}", a.status, String::from_utf8_lossy(&a.body))
                });
            }
            Err(e) => {
                self.failures += 1;
                self.first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `CLIENTS` clients, each calling `work(client, connection)` until it returns false.
async fn clients<F, Fut>(addr: SocketAddr, work: F) -> Tally
where
    F: Fn(usize, Http) -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(work(c, Http::connect(addr).await)));
    }
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    all
}

// ------------------------------------------------------------------------------------------
// The phases

/// Creates deployments `0..n`, returning the time each thousand was done by.
async fn create(addr: SocketAddr, n: usize) -> (Tally, Vec<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let marks = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let started = Instant::now();
    let tally = clients(addr, |_, mut http| {
        let (next, done, marks) = (Arc::clone(&next), Arc::clone(&done), Arc::clone(&marks));
        async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return tally;
                }
                let t = Instant::now();
                let answer = http
                    .send("POST", "/api/v1/deployments", &blueprint(&name(i), "1.0.0"))
                    .await;
                tally.record(t, answer, &[202]);
                let d = done.fetch_add(1, Ordering::SeqCst) + 1;
                if d % 1000 == 0 {
                    marks.lock().push(started.elapsed());
                }
            }
        }
    })
    .await;
    let mut marks = marks.lock().clone();
    marks.sort();
    (tally, marks)
}

/// Runs `request(client, i)` under every client for `seconds`.
async fn load<F>(
    addr: SocketAddr,
    seconds: Duration,
    ok: &'static [u16],
    request: F,
) -> (Tally, f64)
where
    F: Fn(usize, u64) -> (&'static str, String, String) + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let end = started + seconds;
    let tally = clients(addr, |c, mut http| {
        let request = Arc::clone(&request);
        async move {
            let mut tally = Tally::default();
            let mut i = 0u64;
            while Instant::now() < end {
                let (method, path, body) = request(c, i);
                let t = Instant::now();
                let answer = http.send(method, &path, &body).await;
                let broken = answer.is_err();
                tally.record(t, answer, ok);
                if broken {
                    return tally;
                }
                i += 1;
            }
            tally
        }
    })
    .await;
    let rate = tally.latencies.len() as f64 / started.elapsed().as_secs_f64();
    (tally, rate)
}

/// An event stream of the deployments' archive events, counting the events it receives.
async fn subscribe(addr: SocketAddr, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut http = Http::connect(addr).await;
    let request = format!(
        "GET /api/v1/events/stream?tag=deployments&type=archive HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    http.stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        line.clear();
        match http.stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line.starts_with("event: archive") || line.starts_with("event:archive") => {
                count.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
        }
    }
}

/// The server's `/api/v1/info` loop figures for `reconcile`: passes and the last pass's time.
async fn reconcile_state(http: &mut Http) -> (u64, Option<f64>, Option<f64>) {
    let a = http.send("GET", "/api/v1/info?on=loops", "").await.unwrap();
    let info: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let l = &info["loops"]["reconcile"];
    (
        l["passes"].as_u64().unwrap_or(0),
        l["last_pass_ms"].as_f64(),
        l["longest_pass_ms"].as_f64(),
    )
}

/// Waits (bounded) for `k` more reconcile passes to finish; the last one's time.
async fn passes(http: &mut Http, k: u64) -> Option<f64> {
    let (start, _, _) = reconcile_state(http).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (now, last, _) = reconcile_state(http).await;
        if now >= start + k {
            return last;
        }
        assert!(Instant::now() < deadline, "no reconcile pass in 600 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn seconds() -> Duration {
    Duration::from_secs(
        std::env::var("VAMP_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    )
}

async fn run(store: &str, n: usize, rows: &mut Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{store}|{}", dir.path().display());
    let server = Server::start(&spec);
    let addr = server.addr;
    let mut row = |k: String, v: String| {
        println!("{store}: {k}: {v}");
        rows.push((format!("{store}: {k}"), v));
    };
    let (rss0, _) = server.memory();
    row("resident memory at start".into(), format!("{rss0:.1} MiB"));

    // 1. Creates.
    let started = Instant::now();
    let (mut created, marks) = create(addr, n).await;
    let took = started.elapsed();
    row(
        format!("create {n} deployments, 64 clients"),
        format!(
            "{:.1} s, {:.0}/s, p50 {}, p99 {}, {} failed{}",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            ms(created.quantile(0.5)),
            ms(created.quantile(0.99)),
            created.failures,
            created
                .first_failure
                .as_deref()
                .map(|f| format!(" (first: {})", f.chars().take(200).collect::<String>()))
                .unwrap_or_default()
        ),
    );
    let per_thousand: Vec<String> = marks
        .iter()
        .scan(Duration::ZERO, |before, m| {
            let rate = 1000.0 / (*m - *before).as_secs_f64();
            *before = *m;
            Some(format!("{rate:.0}"))
        })
        .collect();
    row(
        "creates per second, each thousand in turn".into(),
        per_thousand.join(", "),
    );

    // 3. Reconcile passes over all of them (the first ones deploy; then steady state).
    let mut http = Http::connect(addr).await;
    let _ = passes(&mut http, 2).await;
    let steady = passes(&mut http, 2).await;
    let (_, _, longest) = reconcile_state(&mut http).await;
    row(
        format!("reconcile pass over {n} deployments (steady / longest seen)"),
        format!(
            "{} / {}",
            steady.map_or("-".into(), |v| format!("{v:.1} ms")),
            longest.map_or("-".into(), |v| format!("{v:.1} ms"))
        ),
    );
    let (rss, hwm) = server.memory();
    row(
        format!("resident memory with {n} deployments (peak)"),
        format!("{rss:.1} MiB ({hwm:.1} MiB)"),
    );

    // 4. Reads.
    let pages = n.div_ceil(PER_PAGE) as u64;
    let (mut paged, rate) = load(addr, seconds(), &[200], move |c, i| {
        let page = (c as u64 * 7919 + i * 104_729) % pages + 1;
        (
            "GET",
            format!("/api/v1/deployments?page={page}&per_page={PER_PAGE}"),
            String::new(),
        )
    })
    .await;
    row(
        "GET /api/v1/deployments, pages of 30".into(),
        format!(
            "{rate:.0}/s, p50 {}, p99 {}, {} failed",
            ms(paged.quantile(0.5)),
            ms(paged.quantile(0.99)),
            paged.failures
        ),
    );
    let count = n as u64;
    let (mut single, rate) = load(addr, seconds(), &[200], move |c, i| {
        let d = (c as u64 * 7919 + i * 104_729) % count;
        (
            "GET",
            format!("/api/v1/deployments/{}", name(d as usize)),
            String::new(),
        )
    })
    .await;
    row(
        "GET /api/v1/deployments/{name}".into(),
        format!(
            "{rate:.0}/s, p50 {}, p99 {}, {} failed",
            ms(single.quantile(0.5)),
            ms(single.quantile(0.99)),
            single.failures
        ),
    );

    // 5. Writes at this count, with event streams open.
    let received: Vec<Arc<AtomicU64>> = (0..SUBSCRIBERS)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    for r in &received {
        streams.push(tokio::spawn(subscribe(
            addr,
            Arc::clone(r),
            Arc::clone(&stop),
        )));
    }
    // Every stream open before the first write.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = http.send("GET", "/api/v1/info?on=loops", "").await.unwrap();
        let info: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        if info["event_streams"].as_u64().unwrap_or(0) >= SUBSCRIBERS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "event streams did not open: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let merges = Arc::new(AtomicUsize::new(0));
    let fresh = Arc::new(AtomicUsize::new(n));
    let (mut writes, rate) = load(addr, seconds(), &[202], {
        let (merges, fresh) = (Arc::clone(&merges), Arc::clone(&fresh));
        move |_, i| {
            if i % 2 == 0 {
                let d = name(fresh.fetch_add(1, Ordering::SeqCst));
                ("POST", "/api/v1/deployments".into(), blueprint(&d, "1.0.0"))
            } else {
                // A merge of the second breed into a stored deployment (a canary's start).
                let d = name(merges.fetch_add(1, Ordering::SeqCst) % count as usize);
                (
                    "PUT",
                    format!("/api/v1/deployments/{d}"),
                    blueprint(&d, "1.1.0"),
                )
            }
        }
    })
    .await;
    let acknowledged = writes.latencies.len() as u64;
    row(
        "creates and merges at that count (alternating)".into(),
        format!(
            "{rate:.0}/s, p50 {}, p99 {}, {} failed{}",
            ms(writes.quantile(0.5)),
            ms(writes.quantile(0.99)),
            writes.failures,
            writes
                .first_failure
                .as_deref()
                .map(|f| format!(" (first: {})", f.chars().take(200).collect::<String>()))
                .unwrap_or_default()
        ),
    );
    // Every acknowledged write's archive event reaches every stream (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    while received
        .iter()
        .any(|r| r.load(Ordering::SeqCst) < acknowledged)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got: Vec<u64> = received.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    row(
        format!("archive events received by each of {SUBSCRIBERS} streams"),
        format!(
            "min {} / max {} of {acknowledged} writes acknowledged",
            got.iter().min().unwrap(),
            got.iter().max().unwrap()
        ),
    );
    stop.store(true, Ordering::SeqCst);
    for s in streams {
        s.abort();
    }
    let total = n + (fresh.load(Ordering::SeqCst) - n);
    let (rss, hwm) = server.memory();
    row(
        "resident memory at the end (peak)".into(),
        format!("{rss:.1} MiB ({hwm:.1} MiB)"),
    );
    server.stop();

    // 6. A cold start on the same SQLite file.
    if store == "sqlite" {
        let started = Instant::now();
        let server = Server::start(&spec);
        let listening = started.elapsed();
        let mut http = Http::connect(server.addr).await;
        loop {
            let a = http
                .send("GET", "/api/v1/deployments?per_page=1", "")
                .await
                .unwrap();
            if a.total.unwrap_or(0) >= total.saturating_sub(writes.failures) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(600));
        }
        let listed = started.elapsed();
        loop {
            let (p, _, _) = reconcile_state(&mut http).await;
            if p >= 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(600));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reconciled = started.elapsed();
        row(
            format!("cold start on the SQLite file ({total} deployments)"),
            format!(
                "listening {}, all listed {}, first reconcile pass done {}",
                ms(listening),
                ms(listed),
                ms(reconciled)
            ),
        );
        server.stop();
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = std::env::var("VAMP_BENCH_DEPLOYMENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let stores: Vec<String> = std::env::var("VAMP_BENCH_STORES")
        .unwrap_or_else(|_| "memory,sqlite".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    runtime.block_on(async {
        for store in &stores {
            run(store, n, &mut rows).await;
        }
    });
    let mut seen = BTreeMap::new();
    println!("\n| figure | value |\n| --- | --- |");
    for (k, v) in rows {
        if seen.insert(k.clone(), ()).is_none() {
            println!("| {k} | {v} |");
        }
    }
}
