//! `chaos_soak`: Vamp's control plane under random faults, with its invariants counted.
//!
//! ```text
//! cargo run --release --example chaos_soak --features postgres,etcd,docker,elasticsearch -- [--duration SECS]
//!     [--seed N] [--fault-every SECS] [--faults KIND,...] [--report FILE] [--unprotected WHAT]
//! ```
//!
//! On loopback, in a directory of its own: a private PostgreSQL (persistence), a three-member
//! etcd cluster (key-value store and leader election), three `vamp serve` replicas and two
//! gateway agents with their own HAProxy, each on an address of its own (`127.0.0.2`,
//! `127.0.0.3`). A deployment runs its services as containers of the machine's Docker engine
//! (the scheduler replicas share: its state is the engine's, each container labelled with the
//! control plane that owns it): the cluster `web`, two versions behind a gateway whose weights
//! move, and the cluster `shop`, behind a gateway of its own, into which canary versions are
//! merged one after another, failing (a fifth of their requests answer `503`) and healthy in
//! turn, each with a canary policy (steps of 20, 50 and 100%, a check every 3 s, a relative
//! error-rate gate) that the leading replica's loop decides from the request records both
//! agents ship to a shared metrics store (Elasticsearch's API: osmem-server, from PyPI, found
//! at `VAMP_OSMEM_SERVER` or where scripts/test.sh installs it). A rolled-back version is
//! removed from the deployment once neither agent serves it; a promoted one's policy slices
//! the stable version out. Traffic goes through both agents to both gateways all along (a new
//! connection per request), and a writer stores a breed through a random replica every half
//! second. Every `--fault-every` seconds a fault, drawn with the printed `--seed` (the
//! same seed draws the same kinds and targets; "the leader" is whichever leads then):
//!
//! | kind | what | recovery (as a supervisor would) |
//! | --- | --- | --- |
//! | `kill-replica` | SIGKILL of a replica, the leader half of the time | restarted after 1 s |
//! | `kill-agent` | SIGKILL of a gateway agent (its HAProxy keeps serving: no request may fail) | restarted after 1 s, adopting it |
//! | `kill-haproxy` | SIGKILL of an agent's HAProxy | the agent starts another |
//! | `kill-etcd` | SIGKILL of an etcd member | restarted after 2 s |
//! | `restart-postgres` | PostgreSQL stopped (`immediate`) and started | at once |
//! | `pause-leader` | SIGSTOP of the leader for its lease and 2 s more, then SIGCONT | — |
//! | `partition-replica` | a replica (the leader half of the time) cut off from etcd: each replica reaches the members through proxies of its own (`vamp-backends/tests/fault_proxy`), which refuse and cut its connections | healed after its lease and 2 s more |
//!
//! Invariants, checked throughout and reported at the end (the exit code is 1 when one broke):
//! at most one replica says it leads at any poll; every acknowledged weight change (the
//! cluster's gateway all to `web:1`, then all to `web:2`, and so on, through a random replica)
//! reaches both agents within 30 s (plus any time the etcd cluster had no quorum then) and
//! none goes back; never more than 30 s without an
//! acknowledged write; every acknowledged write is readable at the end; no request fails but through an agent whose HAProxy a fault took down (from the
//! fault until it serves again, plus a second), those counted apart by fault kind (a failing
//! canary's own `503`s are counted apart too); every failing canary is rolled back and every
//! healthy one promoted, each within 10 minutes of running; nothing the soak started (process or
//! container) is left running at the end. `--unprotected KIND`
//! turns a protection off, so that the soak is seen to catch what it protects against:
//! `adopt` (a killed agent's HAProxy is killed with it, so its restart is not hitless);
//! `supervision` (nothing killed is started again: no replica, agent or etcd member, and a
//! killed HAProxy's agent is killed with it; PostgreSQL stopped is not started; a fault window
//! lasts at most 15 s); `lease` (a lease of ten minutes: no other replica takes over from a
//! paused or partitioned leader, whose pause or partition then lasts 40 s). `--faults` limits
//! the kinds drawn.

#[path = "../vamp-backends/tests/docker_image/mod.rs"]
mod docker_image;
#[path = "../vamp-backends/tests/fault_proxy/mod.rs"]
#[allow(dead_code)]
mod fault_proxy;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vamp_core::conformance::kv::Faults;

const LEASE_TTL_MS: u64 = 3000;
/// The lease without the protection of its expiry (`--unprotected lease`).
const UNPROTECTED_LEASE_TTL_MS: u64 = 600_000;
/// The fault kinds.
const KINDS: [&str; 7] = [
    "kill-replica",
    "kill-agent",
    "kill-haproxy",
    "kill-etcd",
    "restart-postgres",
    "pause-leader",
    "partition-replica",
];
/// The longest the API may go without acknowledging a write.
const LONGEST_WRITE_GAP: Duration = Duration::from_secs(30);
const AGENT_IPS: [&str; 2] = ["127.0.0.2", "127.0.0.3"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // Re-executed as one of its parts.
        Some("serve") => return vamp_examples::serve::main(&args[1..]),
        Some("agent") => return vamp_examples::agent::main(args[1..].to_vec()),
        _ => {}
    }
    let options = match Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "chaos_soak: {e}\nusage: chaos_soak [--duration SECS] [--seed N] [--fault-every SECS] [--faults KIND,...] [--report FILE] [--unprotected adopt|supervision|lease]"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(soak(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos_soak: {e}");
            ExitCode::from(1)
        }
    }
}

struct Options {
    duration: Duration,
    seed: u64,
    fault_every: Duration,
    report: Option<PathBuf>,
    unprotected: Option<String>,
    faults: Vec<&'static str>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self {
            duration: Duration::from_secs(180),
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs()),
            fault_every: Duration::from_secs(5),
            report: None,
            unprotected: None,
            faults: KINDS.to_vec(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let secs = || {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| format!("{flag} takes a positive number of seconds"))
            };
            match flag.as_str() {
                "--duration" => o.duration = secs()?,
                "--fault-every" => o.fault_every = secs()?,
                "--seed" => o.seed = value.parse().map_err(|_| "--seed takes a number")?,
                "--report" => o.report = Some(value.into()),
                "--unprotected" if matches!(value.as_str(), "adopt" | "supervision" | "lease") => {
                    o.unprotected = Some(value.clone());
                }
                "--faults" => {
                    o.faults = value
                        .split(',')
                        .map(|k| {
                            KINDS
                                .iter()
                                .find(|known| **known == k)
                                .copied()
                                .ok_or_else(|| format!("unknown fault kind {k} (of {KINDS:?})"))
                        })
                        .collect::<Result<_, _>>()?;
                }
                other => return Err(format!("unknown flag {other} {value}")),
            }
        }
        Ok(o)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// A process the soak started, restarted by the same command.
struct Part {
    name: String,
    command: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Part {
    fn new(name: &str, command: Vec<String>, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            command,
            log,
            child: None,
        }
    }

    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.command[0]);
        // Its settings are its flags alone: none of Vamp's variables of the soak's own
        // environment (a test command's, say) reach it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("VAMP_") {
                command.env_remove(k);
            }
        }
        let child = command
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Killed, and after `pause` started again by the same command when `supervised` (as a
    /// supervisor would).
    async fn kill_and_restart(&mut self, pause: Duration, supervised: bool) -> Result<(), String> {
        self.kill();
        tokio::time::sleep(pause).await;
        if supervised {
            self.start()?;
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private PostgreSQL cluster (as the `postgres` user when run as root).
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start(work: &Path) -> Result<Self, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "PostgreSQL is not installed (Debian: apt-get install postgresql)")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .ok_or("no initdb under /usr/lib/postgresql")?;
        let as_postgres = std::fs::metadata("/proc/self")
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
        let dir = work.join("pg");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if as_postgres {
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status();
        }
        let pg = Self {
            bin,
            data: dir.join("data"),
            port: free_port(),
            as_postgres,
        };
        let ok = pg
            .command("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-A", "trust", "-U", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("initdb failed".into());
        }
        pg.ctl(&["start", "-w"])?;
        Ok(pg)
    }

    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let dir = self.data.parent().expect("the pg directory");
        let ok = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -h 127.0.0.1",
                self.port,
                dir.display()
            ))
            .arg("-l")
            .arg(dir.join("log"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(())
        } else {
            Err(format!("pg_ctl {args:?} failed"))
        }
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?table=soak",
            self.port
        )
    }

    fn restart(&self) {
        self.stop();
        let _ = self.ctl(&["start", "-w"]);
    }

    fn stop(&self) {
        let _ = self.ctl(&["stop", "-m", "immediate"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "-m", "fast"]);
    }
}

/// What the soak saw.
#[derive(Default)]
struct Report {
    faults: Vec<(f64, String)>,
    requests: u64,
    failed_in_windows: BTreeMap<&'static str, u64>,
    failed_outside: Vec<String>,
    leader_changes: u64,
    two_leaders: Vec<String>,
    writes_acknowledged: u64,
    writes_lost: Vec<String>,
    orphans: Vec<String>,
    /// The longest time without an acknowledged write, and the gaps past the bound.
    longest_write_gap_s: f64,
    write_gaps: Vec<String>,
    /// Weight changes acknowledged, and how long each took to reach both agents.
    changes_reached: Vec<f64>,
    changes_not_reached: Vec<String>,
    changes_reverted: Vec<String>,
    /// How long the etcd cluster had no quorum, in all.
    etcd_without_quorum_s: f64,
    /// Answers of a failing canary's own errors (what its policy judges).
    canary_errors: u64,
    /// Canaries decided, by kind and verdict ("failing rolled_back"), and how long each took
    /// from its merge.
    canaries_decided: BTreeMap<String, u64>,
    canaries_took_s: Vec<f64>,
    canaries_wrong: Vec<String>,
}

/// The weight change in force: the version every agent must come to serve, since when it was
/// acknowledged, and when each agent came to serve it alone (`STREAK` answers of it in a row:
/// a change of two weights passes through a state that serves both).
#[derive(Default)]
struct Expected {
    version: String,
    acknowledged: Option<Instant>,
    streak: [u32; 2],
    reached: [Option<Instant>; 2],
}

/// Answers of the expected version in a row that count as an agent serving it alone.
const STREAK: u32 = 10;

/// How long an acknowledged weight change may take to reach both agents (through faults).
const REACH_WITHIN: Duration = Duration::from_secs(30);

/// The longest an agent's HAProxy may be down for a fault: failures later than this after the
/// fault count as failures outside fault windows.
const LONGEST_WINDOW: Duration = Duration::from_secs(15);

/// When each agent was down for a fault: (from, until), until `None` while still down.
type Windows = Arc<Mutex<Vec<Vec<(Instant, Option<Instant>, &'static str)>>>>;

/// The versions each agent served through the shop's gateway, and when last.
type Seen = Arc<Mutex<Vec<BTreeMap<String, Instant>>>>;

/// The share of its requests a failing canary fails, in percent.
const FAIL_PERCENT: u32 = 20;

/// How long a merged canary may take to run, and then to be decided, and a rolled-back one
/// to leave the agents (through faults: with one every 5 s, the leader changes every few
/// seconds and PostgreSQL restarts every half minute, and a decision of two checks has taken
/// four minutes).
const CANARY_WITHIN: Duration = Duration::from_secs(600);

/// When the etcd cluster had no quorum (no member healthy): (from, until), until `None` while
/// it lasts. Nothing can reach the agents then; the bound of a weight change is that much
/// longer.
type Outages = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

/// How long the outages overlapped `[from, to]`.
fn overlap(outages: &Outages, from: Instant, to: Instant) -> Duration {
    outages
        .lock()
        .unwrap()
        .iter()
        .map(|(a, b)| {
            let (a, b) = ((*a).max(from), b.unwrap_or(to).min(to));
            b.saturating_duration_since(a)
        })
        .sum()
}

/// How long an agent must not have served a rolled-back version before it is removed.
const QUIET: Duration = Duration::from_secs(3);

/// A service of `cluster`'s version `v` in a blueprint: the test image answering `v`, failing
/// `fail_percent` of its requests.
fn service(cluster: &str, v: u32, fail_percent: Option<u32>) -> String {
    let fail = fail_percent.map_or(String::new(), |p| format!(", FAIL_PERCENT: '{p}'"));
    format!(
        "    - breed:\n        name: {cluster}:{v}\n        deployable:\n          type: docker\n          definition: {}\n        ports: {{webport: 8080/http}}\n        environment_variables: {{VERSION: '{v}'{fail}}}\n      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n",
        docker_image::IMAGE
    )
}

/// The API through a replica drawn at random for each request, until the soak ends.
struct Writer {
    http: reqwest::Client,
    urls: Vec<String>,
    rng: rand::rngs::StdRng,
    done: Arc<AtomicBool>,
}

impl Writer {
    fn url(&mut self, path: &str) -> String {
        let i = self.rng.random_range(0..self.urls.len());
        format!("{}/api/v1{path}", self.urls[i])
    }

    /// Sends `yaml` until a replica acknowledges it; `false` when the soak ended first. A `409`
    /// to a POST is an earlier attempt that created it with its answer lost (the names are
    /// unique), a `404` to a DELETE one that removed it.
    async fn send(&mut self, method: reqwest::Method, path: &str, yaml: &str) -> bool {
        let done = match method {
            reqwest::Method::POST => Some(reqwest::StatusCode::CONFLICT),
            reqwest::Method::DELETE => Some(reqwest::StatusCode::NOT_FOUND),
            _ => None,
        };
        while !self.done.load(Ordering::Relaxed) {
            let url = self.url(path);
            let r = self
                .http
                .request(method.clone(), url)
                .header("Content-Type", "application/x-yaml")
                .body(yaml.to_owned())
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success() || Some(r.status()) == done) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    async fn json(&mut self, path: &str) -> Option<serde_json::Value> {
        let url = self.url(path);
        json_at(&self.http, &url, Duration::from_secs(2)).await
    }

    /// What `f` makes of what `path` answers, polled for at most `limit`; `None` when it never
    /// yielded or the soak ended.
    async fn until<T>(
        &mut self,
        limit: Duration,
        path: &str,
        f: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + limit;
        while !self.done.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Some(v) = self.json(path).await.as_ref().and_then(&f) {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }
}

/// Whether `f` came to hold within `limit` (polled), before the soak ended.
async fn until_within(limit: Duration, f: impl Fn() -> bool, done: &AtomicBool) -> bool {
    let deadline = Instant::now() + limit;
    while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// osmem-server's binary: `VAMP_OSMEM_SERVER`, else where scripts/test.sh installs it.
fn osmem_server() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("VAMP_OSMEM_SERVER") {
        return Ok(bin.into());
    }
    let lib = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/vamp-rs/osmem-venv/lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| {
            python
                .path()
                .join("site-packages/osmem_server/bin/osmem-server")
        })
        .find(|bin| bin.is_file())
        .ok_or_else(|| {
            "osmem-server (PyPI; Elasticsearch's API, the canaries' metrics store) is needed: \
             set VAMP_OSMEM_SERVER to its binary (scripts/test.sh installs it in \
             ~/.cache/vamp-rs/osmem-venv)"
                .to_owned()
        })
}

struct Soak {
    started: Instant,
    replicas: Vec<Part>,
    replica_urls: Vec<String>,
    agents: Vec<Part>,
    agent_health: Vec<String>,
    etcd: Vec<Part>,
    windows: Windows,
    report: Arc<Mutex<Report>>,
    http: reqwest::Client,
}

impl Soak {
    fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn fault(&self, what: String) {
        println!("  {:>7.1}s  {what}", self.at());
        self.report.lock().unwrap().faults.push((self.at(), what));
    }

    async fn info(&self, i: usize) -> Option<serde_json::Value> {
        info(
            &self.http,
            &self.replica_urls[i],
            Duration::from_millis(800),
        )
        .await
    }

    /// The replica that says it leads; replicas that do not answer (killed, paused) are
    /// passed over.
    async fn leader(&self) -> Option<usize> {
        for i in 0..self.replicas.len() {
            if self.info(i).await.is_some_and(|v| v["leader"] == true) {
                return Some(i);
            }
        }
        None
    }

    /// A replica to break: the leader half of the time, else any (drawn from `rng`); and
    /// whether it leads, for the report.
    async fn pick_replica(&self, rng: &mut rand::rngs::StdRng) -> (usize, &'static str) {
        let leader = self.leader().await;
        let i = if rng.random_bool(0.5) {
            leader.unwrap_or(0)
        } else {
            rng.random_range(0..self.replicas.len())
        };
        (
            i,
            if leader == Some(i) {
                " (the leader)"
            } else {
                ""
            },
        )
    }

    async fn agent_serving(&self, i: usize) -> bool {
        let r = self
            .http
            .get(format!("http://{}/health", self.agent_health[i]))
            .timeout(Duration::from_millis(800))
            .send()
            .await;
        r.is_ok_and(|r| r.status().is_success())
    }

    /// The agent `i` is down from now until it serves again (and a second more).
    fn open_window(&self, i: usize, kind: &'static str) {
        self.windows.lock().unwrap()[i].push((Instant::now(), None, kind));
    }

    async fn close_window(&self, i: usize, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.agent_serving(i).await && get(&self.http, AGENT_IPS[i], port).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let end = Instant::now() + Duration::from_secs(1);
        if let Some(w) = self.windows.lock().unwrap()[i].last_mut() {
            w.1 = Some(end);
        }
    }
}

/// A replica's `/api/v1/info?on=loops` (at `base`), if it answers within `limit`.
async fn info(http: &reqwest::Client, base: &str, limit: Duration) -> Option<serde_json::Value> {
    json_at(http, &format!("{base}/api/v1/info?on=loops"), limit).await
}

/// The JSON `url` answers, if it answers within `limit`.
async fn json_at(http: &reqwest::Client, url: &str, limit: Duration) -> Option<serde_json::Value> {
    http.get(url)
        .header("Accept", "application/json")
        .timeout(limit)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// One request through the agent at `ip`: its body, or why it failed.
async fn get(http: &reqwest::Client, ip: &str, port: u16) -> Result<String, String> {
    let r = http
        .get(format!("http://{ip}:{port}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| format!("{e}"))?;
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("{status}: {}", text.trim()))
    }
}

async fn until(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !f().await {
        if Instant::now() > deadline {
            return Err(format!("never: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Runs the soak in a directory of its own; whatever happens, nothing it started is left
/// running (its processes all name that directory), and its logs stay when it failed.
async fn soak(o: Options) -> Result<bool, String> {
    let work = std::env::temp_dir().join(format!("vamp-chaos-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let work = work.canonicalize().map_err(|e| e.to_string())?;
    // Stopped by a signal: the run is dropped, and with it everything it started.
    let stopped = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { term.as_mut()?.recv().await } => {}
        }
    };
    let result = tokio::select! {
        r = run(&o, &work) => r,
        () = stopped => Err("stopped by a signal".into()),
    };
    let marker = work.display().to_string();
    for (pid, _) in processes_where(|cmd| cmd.contains(&marker)) {
        signal(pid, "KILL");
    }
    if matches!(result, Ok(true)) {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!("logs kept in {}", work.display());
    }
    result
}

#[allow(clippy::too_many_lines)]
async fn run(o: &Options, work: &Path) -> Result<bool, String> {
    let work = work.to_path_buf();
    let lease_ttl_ms = if o.unprotected.as_deref() == Some("lease") {
        UNPROTECTED_LEASE_TTL_MS
    } else {
        LEASE_TTL_MS
    };
    println!(
        "chaos soak: seed {}, {} s, a fault every {} s{}; in {}",
        o.seed,
        o.duration.as_secs(),
        o.fault_every.as_secs(),
        o.unprotected
            .as_ref()
            .map_or(String::new(), |u| format!(", protection '{u}' OFF")),
        work.display()
    );
    let exe = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .display()
        .to_string();
    let pg = Postgres::start(&work)?;

    // The metrics store the agents write HAProxy's request records to and the leader's canary
    // releases read: Elasticsearch's API (osmem-server), started through a link in the work
    // directory so that its command line names it.
    let link = work.join("osmem-server");
    std::os::unix::fs::symlink(osmem_server()?, &link).map_err(|e| e.to_string())?;
    let es_port = free_port();
    let mut osmem = Part::new(
        "osmem-server",
        vec![
            link.display().to_string(),
            "-addr".into(),
            format!("127.0.0.1:{es_port}"),
            "-no-stdin-watch".into(),
        ],
        work.join("osmem.log"),
    );
    osmem.start()?;
    let metrics_store = format!("elasticsearch://127.0.0.1:{es_port}");

    // etcd: three members.
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let mut p = Part::new(
            &format!("etcd e{i}"),
            vec![
                "etcd".into(),
                "--name".into(),
                format!("e{i}"),
                "--data-dir".into(),
                work.join(format!("etcd{i}")).display().to_string(),
                "--listen-client-urls".into(),
                format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls".into(),
                format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://127.0.0.1:{peer}"),
                "--initial-cluster".into(),
                cluster.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
            ],
            work.join(format!("etcd{i}.log")),
        );
        p.start()?;
        etcd.push(p);
    }
    let endpoints = ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let kv = format!("etcd://{endpoints}/soak");
    // Each replica reaches etcd through proxies of its own, which a partition cuts.
    let mut partitions: Vec<Vec<fault_proxy::FaultProxy>> = Vec::new();
    for _ in 0..3 {
        let mut proxies = Vec::new();
        for (client, _) in &ports {
            proxies.push(
                fault_proxy::FaultProxy::start(
                    format!("127.0.0.1:{client}"),
                    Box::new(|| Box::pin(async {})),
                )
                .await,
            );
        }
        partitions.push(proxies);
    }
    // A new connection per request: a client's idle keep-alive connection closed by a
    // reload's old worker as the client reuses it is HTTP/1.1's race, not a fault of Vamp's.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    until("the etcd cluster", Duration::from_secs(30), async || {
        http.get(format!("http://127.0.0.1:{}/health", ports[0].0))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await?;

    // Three replicas.
    let rendered_sockets = work.join("rendered-sockets").display().to_string();
    docker_image::ensure_image()?;
    let namespace = docker_image::Namespace(format!("soak{}", std::process::id()));
    let mut replicas = Vec::new();
    let mut replica_urls = Vec::new();
    for (i, proxies) in partitions.iter().enumerate() {
        let port = free_port();
        let command = vec![
            exe.clone(),
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            work.join(format!("r{i}")).display().to_string(),
            "--persistence".into(),
            pg.url(),
            "--kv".into(),
            format!(
                "etcd://{}/soak",
                proxies
                    .iter()
                    .map(|p| format!("127.0.0.1:{}", p.port))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "--scheduler".into(),
            format!("docker://?namespace={}", namespace.0),
            "--no-agent".into(),
            "--haproxy-socket-dir".into(),
            rendered_sockets.clone(),
            "--replica-id".into(),
            format!("r{i}"),
            "--lease-ttl-ms".into(),
            lease_ttl_ms.to_string(),
            "--period-ms".into(),
            "200".into(),
            "--gateway-port-range".into(),
            "41000-41999".into(),
            "--metrics-store".into(),
            metrics_store.clone(),
        ];
        let mut p = Part::new(
            &format!("replica r{i}"),
            command,
            work.join(format!("r{i}.log")),
        );
        p.start()?;
        replicas.push(p);
        replica_urls.push(format!("http://127.0.0.1:{port}"));
    }

    // Two gateway agents, each on an address and with sockets of its own.
    let key =
        vamp_core::kv::keys::haproxy_configuration("default", "1.7").map_err(|e| e.to_string())?;
    let mut agents = Vec::new();
    let mut agent_health = Vec::new();
    for (i, ip) in AGENT_IPS.iter().enumerate() {
        let health = format!("127.0.0.1:{}", free_port());
        let p = Part::new(
            &format!("agent a{i}"),
            vec![
                exe.clone(),
                "agent".into(),
                "--kv".into(),
                kv.clone(),
                "--key".into(),
                key.to_string(),
                "--work-dir".into(),
                work.join(format!("a{i}")).display().to_string(),
                "--socket-dir".into(),
                work.join(format!("a{i}-sockets")).display().to_string(),
                "--rendered-socket-dir".into(),
                rendered_sockets.clone(),
                "--bind-address".into(),
                (*ip).to_owned(),
                "--health".into(),
                health.clone(),
                "--metrics-store".into(),
                metrics_store.clone(),
            ],
            work.join(format!("a{i}.log")),
        );
        agents.push(p);
        agent_health.push(health);
    }
    for a in &mut agents {
        a.start()?;
    }
    let mut soak = Soak {
        started: Instant::now(),

        replicas,
        replica_urls,
        agents,
        agent_health,
        etcd,
        windows: Arc::new(Mutex::new(vec![Vec::new(), Vec::new()])),
        report: Arc::default(),
        http: http.clone(),
    };
    until("one leader", Duration::from_secs(60), async || {
        soak.leader().await.is_some()
    })
    .await?;
    until("the metrics store", Duration::from_secs(30), async || {
        http.get(format!("http://127.0.0.1:{es_port}/"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await?;

    // The deployment and its gateways, through both agents: the cluster `web`, whose weights
    // move, and `shop`, whose canary releases decide for themselves.
    let gateway = free_port();
    let shop_gateway = free_port();
    let blueprint = format!(
        "name: soak\ngateways:\n  {gateway}: web/webport\n  {shop_gateway}: shop/webport\nclusters:\n  web:\n    services:\n{}{}  shop:\n    services:\n{}",
        service("web", 1, None),
        service("web", 2, None),
        service("shop", 1, None)
    );
    let r = http
        .put(format!("{}/api/v1/deployments/soak", soak.replica_urls[0]))
        .header("Content-Type", "application/x-yaml")
        .body(blueprint.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!(
            "the deployment: {}",
            r.text().await.unwrap_or_default()
        ));
    }
    until(
        "traffic through both agents",
        Duration::from_secs(120),
        async || {
            let mut all = true;
            for ip in AGENT_IPS {
                for port in [gateway, shop_gateway] {
                    all = all && get(&http, ip, port).await.is_ok();
                }
            }
            all
        },
    )
    .await?;
    println!(
        "  {:>7.1}s  serving through both agents on port {gateway}",
        soak.at()
    );

    // Traffic, writes and the leader watch, until told to stop.
    let done = Arc::new(AtomicBool::new(false));
    let expected = Arc::new(Mutex::new(Expected::default()));
    let mut tasks = Vec::new();
    // The versions each agent served through the shop's gateway, and when last.
    let seen: Seen = Arc::new(Mutex::new(vec![BTreeMap::new(), BTreeMap::new()]));
    for (i, ip) in AGENT_IPS.iter().enumerate() {
        for port in [gateway, shop_gateway] {
            let (http, done, report, windows, expected, seen) = (
                http.clone(),
                Arc::clone(&done),
                Arc::clone(&soak.report),
                Arc::clone(&soak.windows),
                Arc::clone(&expected),
                Arc::clone(&seen),
            );
            let (started, shop) = (soak.started, port == shop_gateway);
            tasks.push(tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let mut result = get(&http, ip, port).await;
                    let now = Instant::now();
                    {
                        let mut r = report.lock().unwrap();
                        r.requests += 1;
                        if shop {
                            // A failing canary's own errors are what its policy judges, not a
                            // failure of the control plane.
                            let failing = result
                                .as_ref()
                                .err()
                                .and_then(|why| why.strip_suffix(" failing")?.rsplit(": ").next());
                            let version = match (&result, failing) {
                                (_, Some(v)) => Some(v.to_owned()),
                                (Ok(body), None) => Some(body.trim().to_owned()),
                                (Err(_), None) => None,
                            };
                            if let Some(v) = version {
                                if failing.is_some() {
                                    r.canary_errors += 1;
                                    result = Ok(String::new());
                                }
                                seen.lock().unwrap()[i].insert(v, now);
                            }
                        } else if let Ok(body) = &result {
                            // The version served: the weights in force, or an earlier one come
                            // back.
                            let mut e = expected.lock().unwrap();
                            if e.acknowledged.is_some() {
                                if body.trim() == e.version {
                                    e.streak[i] += 1;
                                    if e.streak[i] >= STREAK {
                                        e.reached[i].get_or_insert(now);
                                    }
                                } else if let Some(t) = e.reached[i]
                                    && sent > t
                                {
                                    r.changes_reverted.push(format!(
                                    "{:.1}s through agent a{i}: version {} after {} had reached it",
                                    (sent - started).as_secs_f64(),
                                    body.trim(),
                                    e.version
                                ));
                                } else {
                                    e.streak[i] = 0;
                                }
                            }
                        }
                        if let Err(why) = result {
                            let inside = windows.lock().unwrap()[i]
                                .iter()
                                .rev()
                                .find(|(from, to, _)| {
                                    sent >= *from - Duration::from_millis(100)
                                        && to.is_none_or(|t| now <= t)
                                        && now <= *from + LONGEST_WINDOW
                                })
                                .map(|w| w.2);
                            if let Some(kind) = inside {
                                *r.failed_in_windows.entry(kind).or_default() += 1;
                            } else {
                                r.failed_outside.push(format!(
                                    "{:.1}s through agent a{i}, port {port}: {why}",
                                    (sent - started).as_secs_f64()
                                ));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
    }
    // When the etcd cluster has no quorum: no member answers its health check healthy.
    let outages: Outages = Arc::default();
    {
        let (http, done, outages) = (http.clone(), Arc::clone(&done), Arc::clone(&outages));
        let members: Vec<String> = ports
            .iter()
            .map(|(client, _)| format!("http://127.0.0.1:{client}/health"))
            .collect();
        tasks.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let mut quorum = false;
                for m in &members {
                    let healthy = json_at(&http, m, Duration::from_millis(500))
                        .await
                        .is_some_and(|v| v["health"] == "true");
                    quorum |= healthy;
                    if quorum {
                        break;
                    }
                }
                {
                    let mut o = outages.lock().unwrap();
                    let open = o.last().is_some_and(|(_, until)| until.is_none());
                    match (quorum, open) {
                        (false, false) => o.push((Instant::now(), None)),
                        (true, true) => {
                            if let Some(last) = o.last_mut() {
                                last.1 = Some(Instant::now());
                            }
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }));
    }
    // Weight changes through a random replica, each awaited at both agents: all traffic to
    // web:1, then to web:2, and so on.
    {
        let (http, done, report, expected, urls, outages) = (
            http.clone(),
            Arc::clone(&done),
            Arc::clone(&soak.report),
            Arc::clone(&expected),
            soak.replica_urls.clone(),
            Arc::clone(&outages),
        );
        let (seed, started) = (o.seed, soak.started);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5745_4947);
            let mut n = 0u32;
            while !done.load(Ordering::Relaxed) {
                let (to, from) = if n.is_multiple_of(2) { (1, 2) } else { (2, 1) };
                let url = &urls[rng.random_range(0..urls.len())];
                // Nothing is judged while the change is in flight: the agents may serve it
                // before its acknowledgement arrives.
                *expected.lock().unwrap() = Expected::default();
                let r = http
                    .put(format!("{url}/api/v1/gateways/soak/web/webport"))
                    .header("Content-Type", "application/x-yaml")
                    .body(format!(
                        "name: soak/web/webport\nroutes:\n  soak/web/web:{to}/webport: {{weight: 100%}}\n  soak/web/web:{from}/webport: {{weight: 0%}}\n"
                    ))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if !r.is_ok_and(|r| r.status().is_success()) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let acknowledged = Instant::now();
                *expected.lock().unwrap() = Expected {
                    version: to.to_string(),
                    acknowledged: Some(acknowledged),
                    ..Expected::default()
                };
                n += 1;
                // Both agents serve it within the bound, or the invariant broke.
                loop {
                    let reached = expected.lock().unwrap().reached;
                    if let [Some(a), Some(b)] = reached {
                        let took = a.max(b) - acknowledged;
                        report.lock().unwrap().changes_reached.push(took.as_secs_f64());
                        break;
                    }
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    let now = Instant::now();
                    let without_quorum = overlap(&outages, acknowledged, now);
                    if now - acknowledged > REACH_WITHIN + without_quorum {
                        report.lock().unwrap().changes_not_reached.push(format!(
                            "{:.1}s: all traffic to web:{to}, acknowledged, reached {:?} of the agents after {} s (and {:.1} s of etcd without quorum)",
                            (acknowledged - started).as_secs_f64(),
                            reached.iter().filter(|r| r.is_some()).count(),
                            REACH_WITHIN.as_secs(),
                            without_quorum.as_secs_f64()
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }
    // Canary releases of the shop, merged into the deployment one after another, failing and
    // healthy in turn, each decided by its policy in the leading replica's loop.
    {
        let (http, done, report, urls, seen) = (
            http.clone(),
            Arc::clone(&done),
            Arc::clone(&soak.report),
            soak.replica_urls.clone(),
            Arc::clone(&seen),
        );
        let (seed, started) = (o.seed, soak.started);
        tasks.push(tokio::spawn(async move {
            let mut api = Writer {
                http,
                urls,
                rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0x4341_4e41),
                done,
            };
            let mut stable = 1u32;
            let mut version = 1u32;
            while !api.done.load(Ordering::Relaxed) {
                version += 1;
                let failing = version.is_multiple_of(2);
                let kind = if failing { "failing" } else { "healthy" };
                let merged = Instant::now();
                let at = (merged - started).as_secs_f64();
                let shop = format!(
                    "name: soak\nclusters:\n  shop:\n    services:\n{}",
                    service("shop", version, failing.then_some(FAIL_PERCENT))
                );
                // Merged into the deployment; the policy once it runs.
                if !api.send(reqwest::Method::PUT, "/deployments/soak", &shop).await {
                    break;
                }
                let running = api
                    .until(CANARY_WITHIN, "/deployments/soak", |d| {
                        let services = d["clusters"]["shop"]["services"].as_array()?;
                        services
                            .iter()
                            .any(|s| {
                                s["breed"]["name"] == format!("shop:{version}")
                                    && s["status"]["phase"]["name"] == "Done"
                            })
                            .then_some(())
                    })
                    .await;
                let policy = format!(
                    "name: shop-{version}\ngateway: soak/shop/webport\nstable: soak/shop/shop:{stable}/webport\ncanary: soak/shop/shop:{version}/webport\nsteps: [20%, 50%, 100%]\ninterval: 3s\nfailures: 2\nminimum_requests: 30\ngates:\n  relative:\n    error_rate: 1%\nslice_stable: true\n"
                );
                let decided = match running {
                    None => None,
                    Some(()) => {
                        if !api.send(reqwest::Method::POST, "/canary-policies", &policy).await {
                            break;
                        }
                        let path = format!("/canary-policies/shop-{version}/status");
                        api.until(CANARY_WITHIN, &path, |s| {
                            let phase = s["phase"].as_str()?;
                            matches!(phase, "promoted" | "rolled_back")
                                .then(|| (phase.to_owned(), s["reason"].to_string()))
                        })
                        .await
                    }
                };
                if api.done.load(Ordering::Relaxed) {
                    // In progress at the end: neither right nor wrong.
                    break;
                }
                let took = merged.elapsed().as_secs_f64();
                let Some((phase, reason)) = decided else {
                    report.lock().unwrap().canaries_wrong.push(format!(
                        "{at:.1}s: shop:{version} ({kind}) merged, {} within {} s",
                        if running.is_some() { "not decided" } else { "not running" },
                        CANARY_WITHIN.as_secs()
                    ));
                    // Nothing more can be said of the next ones.
                    break;
                };
                println!(
                    "  {:>7.1}s  canary shop:{version} ({kind}) {phase} after {took:.1} s",
                    started.elapsed().as_secs_f64()
                );
                {
                    let mut r = report.lock().unwrap();
                    *r.canaries_decided
                        .entry(format!("{kind} {phase}"))
                        .or_default() += 1;
                    r.canaries_took_s.push(took);
                    if (phase == "promoted") == failing {
                        r.canaries_wrong.push(format!(
                            "{at:.1}s: shop:{version} ({kind}) {phase}: {reason}"
                        ));
                    }
                }
                if phase == "promoted" {
                    // Its policy sliced the stable version out.
                    stable = version;
                    continue;
                }
                // Rolled back: removed once neither agent serves it.
                let gone = until_within(CANARY_WITHIN, || {
                    let now = Instant::now();
                    seen.lock().unwrap().iter().all(|served| {
                        served.get(&version.to_string()).is_none_or(|t| now - *t > QUIET)
                            && served.values().any(|t| now - *t < Duration::from_secs(1))
                    })
                }, &api.done)
                .await;
                if !gone {
                    if !api.done.load(Ordering::Relaxed) {
                        report.lock().unwrap().canaries_wrong.push(format!(
                            "{at:.1}s: shop:{version} rolled back, still served after {} s",
                            CANARY_WITHIN.as_secs()
                        ));
                    }
                    break;
                }
                if !api.send(reqwest::Method::DELETE, "/deployments/soak", &shop).await {
                    break;
                }
            }
        }));
    }
    let written = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let (http, done, written, urls, report) = (
            http.clone(),
            Arc::clone(&done),
            Arc::clone(&written),
            soak.replica_urls.clone(),
            Arc::clone(&soak.report),
        );
        let (seed, started) = (o.seed, soak.started);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5752_4954);
            let n = AtomicU64::new(0);
            // The API stays writable: no longer than LONGEST_WRITE_GAP without an
            // acknowledged write.
            let mut last = Instant::now();
            let gap = |at: Instant, last: Instant, report: &Mutex<Report>| {
                let g = at - last;
                let mut r = report.lock().unwrap();
                r.longest_write_gap_s = r.longest_write_gap_s.max(g.as_secs_f64());
                if g > LONGEST_WRITE_GAP {
                    r.write_gaps.push(format!(
                        "{:.1}s: no write acknowledged for {:.1} s",
                        (at - started).as_secs_f64(),
                        g.as_secs_f64()
                    ));
                }
            };
            while !done.load(Ordering::Relaxed) {
                let name = format!("soak-{}", n.fetch_add(1, Ordering::Relaxed));
                let url = &urls[rng.random_range(0..urls.len())];
                let r = http
                    .post(format!("{url}/api/v1/breeds"))
                    .header("Content-Type", "application/x-yaml")
                    .body(format!("name: {name}\ndeployable: command://true\n"))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    written.lock().unwrap().push(name);
                    let now = Instant::now();
                    gap(now, last, &report);
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            gap(Instant::now(), last, &report);
        }));
    }
    {
        let (http, done, report, urls) = (
            http.clone(),
            Arc::clone(&done),
            Arc::clone(&soak.report),
            soak.replica_urls.clone(),
        );
        let started = soak.started;
        tasks.push(tokio::spawn(async move {
            let mut terms = std::collections::BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                let mut leading = Vec::new();
                for (i, url) in urls.iter().enumerate() {
                    let info = info(&http, url, Duration::from_millis(500)).await;
                    if let Some(v) = info.filter(|v| v["leader"] == true) {
                        leading.push(format!("r{i}"));
                        if let Some(t) = v["leader_token"].as_u64() {
                            terms.insert(t);
                        }
                    }
                }
                {
                    let mut r = report.lock().unwrap();
                    if leading.len() > 1 {
                        r.two_leaders.push(format!(
                            "{:.1}s: {} say they lead",
                            started.elapsed().as_secs_f64(),
                            leading.join(", ")
                        ));
                    }
                    r.leader_changes = (terms.len() as u64).saturating_sub(1);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // The faults.
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    let end = Instant::now() + o.duration;
    let kinds = &o.faults;
    // A pause or a partition lasts the lease and 2 s more: past the lease, another replica
    // leads. Without that protection (a lease too long to expire), 40 s.
    let outage = Duration::from_millis(lease_ttl_ms + 2000).min(Duration::from_secs(40));
    // Without supervision, nothing the soak kills comes back.
    let supervised = o.unprotected.as_deref() != Some("supervision");
    while Instant::now() + o.fault_every < end {
        tokio::time::sleep(o.fault_every).await;
        let kind = kinds[rng.random_range(0..kinds.len())];
        match kind {
            "kill-replica" => {
                let (i, was) = soak.pick_replica(&mut rng).await;
                soak.fault(format!("kill-replica r{i}{was}"));
                soak.replicas[i]
                    .kill_and_restart(Duration::from_secs(1), supervised)
                    .await?;
            }
            "kill-agent" => {
                let i = rng.random_range(0..2);
                soak.fault(format!("kill-agent a{i}"));
                // No window: its HAProxy keeps serving, and the restarted agent adopts it.
                if o.unprotected.as_deref() == Some("adopt")
                    && let Some(pid) = haproxy_pid(&work, i)
                {
                    signal(pid, "KILL");
                }
                soak.agents[i]
                    .kill_and_restart(Duration::from_secs(1), supervised)
                    .await?;
            }
            "kill-haproxy" => {
                let i = rng.random_range(0..2);
                let Some(pid) = haproxy_pid(&work, i) else {
                    continue;
                };
                soak.fault(format!("kill-haproxy of a{i} (pid {pid})"));
                soak.open_window(i, "kill-haproxy");
                if !supervised {
                    // Nothing starts another HAProxy.
                    soak.agents[i].kill();
                }
                signal(pid, "KILL");
                soak.close_window(i, gateway).await;
            }
            "kill-etcd" => {
                let i = rng.random_range(0..3);
                soak.fault(format!("kill-etcd e{i}"));
                soak.etcd[i]
                    .kill_and_restart(Duration::from_secs(2), supervised)
                    .await?;
            }
            "partition-replica" => {
                let (i, was) = soak.pick_replica(&mut rng).await;
                soak.fault(format!(
                    "partition-replica r{i}{was} from etcd for {} ms",
                    outage.as_millis()
                ));
                for p in &partitions[i] {
                    p.hold();
                }
                tokio::time::sleep(outage).await;
                for p in &partitions[i] {
                    p.release();
                }
            }
            "restart-postgres" => {
                soak.fault("restart-postgres".into());
                if supervised {
                    pg.restart();
                } else {
                    pg.stop();
                }
            }
            _ => {
                let Some(i) = soak.leader().await else {
                    continue;
                };
                let Some(pid) = soak.replicas[i].pid() else {
                    continue;
                };
                soak.fault(format!("pause-leader r{i} for {} ms", outage.as_millis()));
                signal(pid, "STOP");
                tokio::time::sleep(outage).await;
                signal(pid, "CONT");
            }
        }
    }
    tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    // The end: every acknowledged write readable, then everything stopped and nothing left.
    // (Without supervision there may be none: what it could not do then shows as broken
    // invariants, not as an error.)
    let leader = until(
        "one leader at the end",
        Duration::from_secs(60),
        async || soak.leader().await.is_some(),
    )
    .await
    .is_ok();
    let api = soak.leader().await.unwrap_or(0);
    let names = written.lock().unwrap().clone();
    let mut lost = Vec::new();
    for name in &names {
        let found = http
            .get(format!("{}/api/v1/breeds/{name}", soak.replica_urls[api]))
            .header("Accept", "application/json")
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !found {
            lost.push(name.clone());
        }
    }
    {
        let mut r = soak.report.lock().unwrap();
        r.writes_acknowledged = names.len() as u64;
        r.writes_lost = lost;
    }
    // The deployment as it is now (its shop's versions came and went) is what goes.
    let now = json_at(
        &http,
        &format!("{}/api/v1/deployments/soak", soak.replica_urls[api]),
        Duration::from_secs(10),
    )
    .await
    .map_or(blueprint, |d| d.to_string());
    let undeployed = http
        .delete(format!(
            "{}/api/v1/deployments/soak",
            soak.replica_urls[api]
        ))
        .header("Content-Type", "application/json")
        .body(now)
        .send()
        .await;
    match undeployed {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => println!("  the undeployment: {}", r.text().await.unwrap_or_default()),
        Err(e) => println!("  the undeployment: {e}"),
    }
    if !leader {
        println!("  no leader at the end");
    }
    let marker = work.display().to_string();
    // Containers that cannot be listed count as left.
    let none_left = || namespace.containers().is_ok_and(|c| c.is_empty());
    println!("  {:>7.1}s  undeploying", soak.at());
    if until(
        "the instances stopped",
        Duration::from_secs(60),
        async || none_left(),
    )
    .await
    .is_err()
    {
        let leader = soak.leader().await.unwrap_or(0);
        let d = json_at(
            &http,
            &format!("{}/api/v1/deployments/soak", soak.replica_urls[leader]),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_default();
        println!("  the instances did not stop; the deployment, as r{leader} says: {d}");
    }
    for a in &mut soak.agents {
        a.stop();
    }
    for r in &mut soak.replicas {
        r.stop();
    }
    for e in &mut soak.etcd {
        e.stop();
    }
    osmem.stop();
    drop(pg);
    let _ = until("everything stopped", Duration::from_secs(20), async || {
        processes_where(|cmd| cmd.contains(&marker)).is_empty()
    })
    .await;
    let orphans = processes_where(|cmd| cmd.contains(&marker));
    for (pid, _) in &orphans {
        signal(*pid, "KILL");
    }
    let mut report = std::mem::take(&mut *soak.report.lock().unwrap());
    let ended = Instant::now();
    report.etcd_without_quorum_s = overlap(&outages, soak.started, ended).as_secs_f64();
    report.orphans = orphans
        .into_iter()
        .map(|(pid, cmd)| format!("process {pid} {cmd}"))
        .chain(match namespace.containers() {
            Ok(left) => left.into_iter().map(|c| format!("container {c}")).collect(),
            Err(e) => vec![format!("containers of {} not listed: {e}", namespace.0)],
        })
        .collect();
    drop(namespace);
    let held = print_report(&report, o.seed);
    if let Some(path) = &o.report {
        let json = serde_json::json!({
            "seed": o.seed,
            "duration_s": o.duration.as_secs(),
            "faults": report.faults.iter().map(|(t, f)| serde_json::json!({"at_s": t, "fault": f})).collect::<Vec<_>>(),
            "requests": report.requests,
            "failed_in_fault_windows": report.failed_in_windows,
            "failed_outside": report.failed_outside,
            "leader_changes": report.leader_changes,
            "etcd_without_quorum_s": report.etcd_without_quorum_s,
            "two_leaders": report.two_leaders,
            "writes_acknowledged": report.writes_acknowledged,
            "writes_lost": report.writes_lost,
            "longest_write_gap_s": report.longest_write_gap_s,
            "write_gaps": report.write_gaps,
            "weight_changes_reached_s": report.changes_reached,
            "weight_changes_not_reached": report.changes_not_reached,
            "weight_changes_reverted": report.changes_reverted,
            "canaries_decided": report.canaries_decided,
            "canaries_decided_after_s": report.canaries_took_s,
            "canaries_wrong": report.canaries_wrong,
            "canary_errors_answered": report.canary_errors,
            "orphans": report.orphans,
            "invariants_held": held,
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(held)
}

/// The PID of agent `i`'s HAProxy master (its pid file).
fn haproxy_pid(work: &Path, i: usize) -> Option<u32> {
    std::fs::read_to_string(work.join(format!("a{i}")).join("haproxy.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The processes whose command line `wanted` accepts: (pid, command line).
fn processes_where(wanted: impl Fn(&str) -> bool) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if !cmd.is_empty() && wanted(&cmd) {
            out.push((pid, cmd.trim().to_owned()));
        }
    }
    out
}

/// Prints the report; whether every invariant held.
fn print_report(r: &Report, seed: u64) -> bool {
    let mut by_kind: BTreeMap<&str, u32> = BTreeMap::new();
    for (_, f) in &r.faults {
        *by_kind
            .entry(f.split_whitespace().next().unwrap_or(""))
            .or_default() += 1;
    }
    println!("\nchaos soak report (seed {seed}: the same seed replays the same fault schedule)");
    println!("  faults: {} {by_kind:?}", r.faults.len());
    println!(
        "  requests: {} sent, {} failed through an agent a fault took down {:?}, {} failed otherwise",
        r.requests,
        r.failed_in_windows.values().sum::<u64>(),
        r.failed_in_windows,
        r.failed_outside.len()
    );
    println!(
        "  leader changes: {}; etcd without quorum {:.1} s in all",
        r.leader_changes, r.etcd_without_quorum_s
    );
    println!(
        "  writes: {} acknowledged, {} not found at the end",
        r.writes_acknowledged,
        r.writes_lost.len()
    );
    let reached = &r.changes_reached;
    let slowest = reached.iter().copied().fold(0.0_f64, f64::max);
    println!(
        "  weight changes: {} reached both agents (slowest {slowest:.1} s), {} not within {} s, {} went back",
        reached.len(),
        r.changes_not_reached.len(),
        REACH_WITHIN.as_secs(),
        r.changes_reverted.len()
    );
    println!(
        "  writes: at most {:.1} s without one acknowledged",
        r.longest_write_gap_s
    );
    let slowest = r.canaries_took_s.iter().copied().fold(0.0_f64, f64::max);
    println!(
        "  canaries: {} decided {:?} (slowest {slowest:.1} s from its merge), {} answers of a failing canary's own errors",
        r.canaries_took_s.len(),
        r.canaries_decided,
        r.canary_errors
    );
    let invariants: [(&str, &[String]); 8] = [
        ("at most one leader at any poll", &r.two_leaders),
        (
            "never more than 30 s without an acknowledged write",
            &r.write_gaps,
        ),
        (
            "every acknowledged weight change reached both agents",
            &r.changes_not_reached,
        ),
        ("no agent went back to earlier weights", &r.changes_reverted),
        (
            "no request failed outside a fault window",
            &r.failed_outside,
        ),
        ("every acknowledged write readable", &r.writes_lost),
        (
            "every failing canary rolled back, every healthy one promoted",
            &r.canaries_wrong,
        ),
        ("nothing left running", &r.orphans),
    ];
    let mut held = true;
    for (name, evidence) in invariants {
        match evidence.first() {
            None => println!("  held    {name}"),
            Some(first) => {
                held = false;
                println!("  BROKEN  {name}: {} times; first: {first}", evidence.len());
            }
        }
    }
    held
}
