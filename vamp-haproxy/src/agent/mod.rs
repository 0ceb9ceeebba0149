//! The gateway agent (feature `agent`): keeps one HAProxy in step with the configuration the
//! control plane writes into the key-value store, like Vamp's gateway agent (VGA), but
//! watching instead of polling, and without ever applying a configuration HAProxy rejects.
//!
//! The agent runs as root beside HAProxy, and the key is writable by whoever can write the
//! store, so for each value of the watched key the agent
//!
//! 1. checks it against the allow-list of what the generator writes ([`crate::allow`]): no
//!    `program`, `global`, `lua-load`, `external-check`, `stats socket`, files, environment,
//!    or sockets outside [`AgentOptions::socket_dir`]; a refused value is rejected before any
//!    HAProxy process sees it (`haproxy -c` itself would run a `lua-load` script);
//! 2. composes the candidate: its own `global` lines (stats socket, log target and a secret
//!    log tag), the base configuration ([`AgentOptions::base_config`]) and the value;
//! 3. does nothing if the candidate is what HAProxy is known to run (`noop`);
//! 4. applies server-weight-only changes through the runtime API (`set weight`, read back with
//!    `get weight`) after installing the file, without a reload (`dynamic`, see
//!    [`crate::update`]; lines are compared as HAProxy reads them);
//! 5. validates anything else with `haproxy -c` (bounded by [`AgentOptions::timeout`]) — a
//!    rejected candidate is logged, counted, published as an event and otherwise ignored: the
//!    running configuration keeps serving (`rejected`);
//! 6. and reloads through the master CLI, confirming the reload by seeing a new worker in
//!    `show proc` (`reload`).
//!
//! Failures that may pass (a check or reload that times out, a CLI that does not answer) are
//! retried with backoff; after one, the agent no longer assumes what HAProxy runs, so the next
//! value is applied in full even if it is the same. HAProxy is restarted with the last good
//! configuration when it dies, with backoff while it keeps dying. A master left running by an
//! agent that was killed is adopted (found on the master socket and confirmed by its command
//! line), not duplicated.
//!
//! Files live in a private work directory (mode 0700, owned by the agent; one that is a link,
//! someone else's or open to others is refused), are written without following links, and the
//! installed file is read back and compared with the validated bytes before HAProxy loads it.
//! HAProxy's logs are accepted only from loopback and only with the secret tag the agent put
//! in HAProxy's configuration.
//!
//! A value arriving after a quiet period is applied at once; values arriving within
//! [`AgentOptions::debounce`] of the last update started are coalesced and applied together
//! at the end of that window. Updates run one at a time, and the latest value always wins. HAProxy runs in master-worker mode with
//! `expose-fd listeners`, so reloads keep the listening sockets (hitless). The watch re-opens
//! (reading the current value) whenever the store's stream fails, so a KV outage only delays
//! updates.
//!
//! Outcomes are counted as `vamp_gateway_agent_updates_total{outcome}` and each step is timed
//! as `vamp_gateway_agent_step_seconds{step}` (`render`, `validate`, `dynamic`, `reload`)
//! through the `metrics` facade, inside `tracing` spans.

mod files;
mod health;
mod logs;
mod ports;
pub mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::watch;
use tracing::Instrument;
use vamp_core::kv::{DynKeyValueStore, KeyPath, WatchEvent, WatchOptions};
use vamp_core::metrics::{DynEventStore, DynMetricsStore};
use vamp_core::model::Event;

pub use self::logs::{LogCounts, MAX_PENDING_RECORDS, json_of};
use self::process::{Found, HaProxy};
pub use crate::error::AgentError;
use crate::update::{Update, plan_update};

/// How the agent runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AgentOptions {
    /// The key holding the generated configuration (Vamp:
    /// `/vamp/<namespace>/gateways/haproxy/1.7/configuration`).
    pub key: KeyPath,
    /// The HAProxy binary (default `haproxy`).
    pub haproxy_bin: PathBuf,
    /// Where the agent keeps `haproxy.cfg`, the candidate file and the sockets (unless the
    /// paths below say otherwise).
    pub work_dir: PathBuf,
    /// The configuration file HAProxy runs (default `<work_dir>/haproxy.cfg`); the candidate is
    /// written next to it.
    pub config_path: Option<PathBuf>,
    /// The master CLI socket (default `<work_dir>/master.sock`).
    pub master_socket_path: Option<PathBuf>,
    /// The runtime API (stats) socket (default `<work_dir>/stats.sock`).
    pub stats_socket_path: Option<PathBuf>,
    /// Written between the agent's `global` lines and the value: `global` and `defaults`
    /// settings (default [`crate::BASE_CONFIG`]).
    pub base_config: String,
    /// The coalescing window (default 100 ms): a value arriving within it of the last update
    /// waits for the window's end, together with any others; a value after a quiet period is
    /// applied at once.
    pub debounce: Duration,
    /// The time limit of HAProxy starts, reloads and CLI commands (default 10 s).
    pub timeout: Duration,
    /// Where to receive HAProxy's logs (UDP syslog), e.g. `127.0.0.1:0`; `None`: no logs.
    pub syslog: Option<SocketAddr>,
    /// Where to serve `/health` and `/status`; `None`: no endpoint.
    pub health: Option<SocketAddr>,
    /// The directory of the unix sockets that chain frontends: the generator's
    /// [`crate::RenderOptions`] `socket_dir` (default `/usr/local/vamp`, Vamp's). Values may
    /// bind and reach sockets only directly in it; it must not hold the agent's own sockets.
    pub socket_dir: PathBuf,
    /// The largest value accepted (default 64 MiB).
    pub max_config_bytes: usize,
    /// The first delay before restarting a dead HAProxy or retrying a failed update; it doubles
    /// up to [`AgentOptions::max_backoff`] while failures repeat (default 250 ms).
    pub backoff: Duration,
    /// The longest delay between restarts or retries (default 30 s).
    pub max_backoff: Duration,
    /// On shutdown, how long HAProxy may finish the connections in flight after its
    /// listeners close (a soft stop) before it is stopped (default zero: at once).
    pub drain: Duration,
    /// On shutdown, HAProxy is left serving for a later agent to adopt (default false).
    pub keep_haproxy: bool,
    /// The address this agent's HAProxy binds the gateways on, whatever the control plane
    /// rendered (`bind 0.0.0.0:9050` becomes `bind <address>:9050`): one of several agents on
    /// a host, each on an address of its own. Default `None`: as rendered.
    pub bind_address: Option<std::net::IpAddr>,
    /// The socket directory the control plane renders, when this agent's
    /// ([`AgentOptions::socket_dir`]) is another: `unix@<rendered>/` becomes
    /// `unix@<socket_dir>/` (several agents on a host cannot share one). Default `None`.
    pub rendered_socket_dir: Option<PathBuf>,
}

impl AgentOptions {
    /// The options for `key`, keeping files in `work_dir`.
    pub fn new(key: KeyPath, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            key,
            haproxy_bin: PathBuf::from("haproxy"),
            work_dir: work_dir.into(),
            config_path: None,
            master_socket_path: None,
            stats_socket_path: None,
            base_config: crate::BASE_CONFIG.to_owned(),
            debounce: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
            syslog: None,
            health: None,
            socket_dir: PathBuf::from("/usr/local/vamp"),
            max_config_bytes: 64 << 20,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            drain: Duration::ZERO,
            keep_haproxy: false,
            bind_address: None,
            rendered_socket_dir: None,
        }
    }

    /// Binds the gateways on `address` (see [`AgentOptions::bind_address`]).
    #[must_use]
    pub fn with_bind_address(mut self, address: std::net::IpAddr) -> Self {
        self.bind_address = Some(address);
        self
    }

    /// Moves the sockets of the control plane's socket directory `dir` to this agent's (see
    /// [`AgentOptions::rendered_socket_dir`]).
    #[must_use]
    pub fn with_rendered_socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rendered_socket_dir = Some(dir.into());
        self
    }

    /// A received value made this agent's: the gateways bound on [`AgentOptions::bind_address`]
    /// (and a server on a loopback address at a port the value binds, a hop from one gateway
    /// to another of the same HAProxy, sent there too), and the sockets of
    /// [`AgentOptions::rendered_socket_dir`] moved to [`AgentOptions::socket_dir`]. Only
    /// `bind <ip>:<port>`, such servers and `unix@<dir>/` are touched; the result is checked as
    /// any value is.
    pub fn localize<'a>(&self, value: &'a str) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        let mut out = Cow::Borrowed(value);
        if let Some(from) = &self.rendered_socket_dir
            && *from != self.socket_dir
        {
            let from = format!("unix@{}/", from.display());
            if out.contains(&from) {
                let to = format!("unix@{}/", self.socket_dir.display());
                out = Cow::Owned(out.replace(&from, &to));
            }
        }
        if let Some(address) = self.bind_address {
            let host = match address {
                std::net::IpAddr::V4(a) => a.to_string(),
                std::net::IpAddr::V6(a) => format!("[{a}]"),
            };
            // The ports this configuration binds: a server on loopback at one of them is a
            // hop to a gateway of this same HAProxy, which now listens on `address`.
            let own_ports: std::collections::BTreeSet<u16> = ports::binds(&out)
                .into_iter()
                .filter_map(|(_, _, _, parsed)| parsed.map(|a| a.port()))
                .collect();
            let mut changed = false;
            let lines: Vec<Cow<'_, str>> = out
                .lines()
                .map(|line| {
                    let trimmed = line.trim_start();
                    let indent = &line[..line.len() - trimmed.len()];
                    if let Some(rest) = trimmed.strip_prefix("server ") {
                        let mut words = rest.splitn(3, ' ');
                        let (Some(name), Some(addr)) = (words.next(), words.next()) else {
                            return Cow::Borrowed(line);
                        };
                        let tail = words.next();
                        let hop = addr.rsplit_once(':').is_some_and(|(ip, port)| {
                            port.parse().is_ok_and(|p: u16| own_ports.contains(&p))
                                && ip
                                    .trim_matches(|c| c == '[' || c == ']')
                                    .parse::<std::net::IpAddr>()
                                    .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
                        });
                        if !hop {
                            return Cow::Borrowed(line);
                        }
                        changed = true;
                        let port = addr.rsplit_once(':').map_or("", |(_, p)| p);
                        return Cow::Owned(match tail {
                            Some(t) => format!("{indent}server {name} {host}:{port} {t}"),
                            None => format!("{indent}server {name} {host}:{port}"),
                        });
                    }
                    let Some(rest) = trimmed.strip_prefix("bind ") else {
                        return Cow::Borrowed(line);
                    };
                    let (addr, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    match addr.rsplit_once(':') {
                        Some((_, port))
                            if !addr.contains('@')
                                && !port.is_empty()
                                && port.bytes().all(|b| b.is_ascii_digit()) =>
                        {
                            changed = true;
                            let sep = if tail.is_empty() { "" } else { " " };
                            Cow::Owned(format!("{indent}bind {host}:{port}{sep}{tail}"))
                        }
                        _ => Cow::Borrowed(line),
                    }
                })
                .collect();
            if changed {
                let mut text = lines.join("\n");
                if out.ends_with('\n') {
                    text.push('\n');
                }
                out = Cow::Owned(text);
            }
        }
        out
    }

    /// On shutdown, leaves HAProxy serving its configuration (a later agent on the same work
    /// directory adopts it), instead of draining and stopping it.
    #[must_use]
    pub fn with_keep_haproxy(mut self, keep: bool) -> Self {
        self.keep_haproxy = keep;
        self
    }

    /// On shutdown, drains HAProxy for at most `grace` (see [`AgentOptions::drain`]).
    #[must_use]
    pub fn with_drain(mut self, grace: Duration) -> Self {
        self.drain = grace;
        self
    }

    /// Sets the directory of the frontends' unix sockets (the generator's `socket_dir`).
    #[must_use]
    pub fn with_socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.socket_dir = dir.into();
        self
    }

    /// Sets the time limit of HAProxy starts, checks, reloads and CLI commands.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the first and the longest restart and retry delay.
    #[must_use]
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// Sets the HAProxy binary.
    #[must_use]
    pub fn with_haproxy_bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.haproxy_bin = bin.into();
        self
    }

    /// Sets the base configuration.
    #[must_use]
    pub fn with_base_config(mut self, base: impl Into<String>) -> Self {
        self.base_config = base.into();
        self
    }

    /// Receives HAProxy's logs on this UDP address.
    #[must_use]
    pub fn with_syslog(mut self, address: SocketAddr) -> Self {
        self.syslog = Some(address);
        self
    }

    /// Serves `/health` and `/status` on this address.
    #[must_use]
    pub fn with_health(mut self, address: SocketAddr) -> Self {
        self.health = Some(address);
        self
    }

    /// Sets the configuration file HAProxy runs.
    #[must_use]
    pub fn with_config_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_path = Some(path.into());
        self
    }

    /// Sets the master CLI and runtime API socket paths.
    #[must_use]
    pub fn with_sockets(mut self, master: impl Into<PathBuf>, stats: impl Into<PathBuf>) -> Self {
        self.master_socket_path = Some(master.into());
        self.stats_socket_path = Some(stats.into());
        self
    }

    /// Sets the debounce.
    #[must_use]
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// The running configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.config_path
            .clone()
            .unwrap_or_else(|| self.work_dir.join("haproxy.cfg"))
    }
    fn candidate_file(&self) -> PathBuf {
        files::candidate_of(&self.config_file())
    }
    fn pid_file(&self) -> PathBuf {
        self.work_dir.join("haproxy.pid")
    }
    /// The master CLI socket.
    pub fn master_socket(&self) -> PathBuf {
        self.master_socket_path
            .clone()
            .unwrap_or_else(|| self.work_dir.join("master.sock"))
    }
    /// The runtime API (stats) socket.
    pub fn stats_socket(&self) -> PathBuf {
        self.stats_socket_path
            .clone()
            .unwrap_or_else(|| self.work_dir.join("stats.sock"))
    }
}

/// Update outcomes since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateCounts {
    /// Values that matched the running configuration.
    pub noop: u64,
    /// Values applied through the runtime API, without a reload.
    pub dynamic: u64,
    /// Values applied by a reload (or the first start).
    pub reload: u64,
    /// Values HAProxy rejected (validation or reload failure).
    pub rejected: u64,
}

/// What the agent is doing, for health checks and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentStatus {
    /// The KV version of the value HAProxy runs.
    pub applied_version: Option<u64>,
    /// The last error (a rejected value, a failed reload, a KV failure), if any since the
    /// last success.
    pub last_error: Option<String>,
    /// HAProxy's master PID, while it runs.
    pub haproxy_pid: Option<u32>,
    /// HAProxy's current worker PIDs.
    pub workers: Vec<u32>,
    /// Times HAProxy was (re)started by the agent.
    pub starts: u64,
    /// The master was adopted from an earlier run of the agent (not started by this one).
    pub adopted: bool,
    /// Updates that failed in a way that may pass and are being retried.
    pub retries: u64,
    /// Gateways left out of the applied configuration because another process holds their
    /// port (`gateway (address)`); tried again with backoff.
    pub unavailable: Vec<String>,
    /// HAProxy runs a configuration.
    pub ready: bool,
    /// Update outcomes.
    pub counts: UpdateCounts,
    /// The UDP address HAProxy's logs go to, once bound.
    pub syslog: Option<SocketAddr>,
    /// The health endpoint's address, once bound.
    pub health: Option<SocketAddr>,
    /// What became of HAProxy's request records.
    pub logs: LogCounts,
}

impl AgentStatus {
    /// HAProxy no longer runs.
    fn haproxy_stopped(&mut self) {
        self.ready = false;
        self.haproxy_pid = None;
        self.workers.clear();
    }

    /// The status as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ready": self.ready,
            "applied_version": self.applied_version,
            "last_error": self.last_error,
            "haproxy": {
                "pid": self.haproxy_pid,
                "workers": self.workers,
                "starts": self.starts,
                "adopted": self.adopted,
            },
            "retries": self.retries,
            "unavailable": self.unavailable,
            "updates": {
                "noop": self.counts.noop,
                "dynamic": self.counts.dynamic,
                "reload": self.counts.reload,
                "rejected": self.counts.rejected,
            },
            "logs": self.logs.to_json(),
        })
    }
}

/// The gateway agent. Build it with [`GatewayAgent::new`], then drive it with
/// [`GatewayAgent::run`]; [`GatewayAgent::status`] watches it.
pub struct GatewayAgent {
    kv: Arc<DynKeyValueStore>,
    options: AgentOptions,
    metrics: Option<Arc<DynMetricsStore>>,
    events: Option<Arc<DynEventStore>>,
    status: watch::Sender<AgentStatus>,
    haproxy: Option<HaProxy>,
    /// The configuration HAProxy is known to run; `None` when unknown (never applied, or an
    /// update failed half-way), which makes the next value a full validated reload.
    running: Option<String>,
    /// A configuration file that passed validation and ran: what a restart uses.
    restartable: bool,
    /// When HAProxy may be (re)started next, and how many starts failed or crashed in a row.
    next_start: Option<tokio::time::Instant>,
    start_failures: u32,
    started_at: Option<tokio::time::Instant>,
    /// Frontends the last value's configuration left out (their ports are taken).
    left_out: Vec<ports::Unbindable>,
}

impl std::fmt::Debug for GatewayAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAgent")
            .field("kv", &self.kv.to_string())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// How one value went.
enum Outcome {
    /// Applied (or nothing to do).
    Done,
    /// Refused or rejected: waiting for the next value.
    Rejected,
    /// Failed in a way that may pass: retry the same value.
    Retry,
    /// Applied without some gateways whose ports are taken: apply the same value again later.
    Partial,
}

fn io_error(path: impl Into<PathBuf>, message: impl Into<String>) -> AgentError {
    AgentError::Io {
        path: path.into(),
        message: message.into(),
    }
}

impl GatewayAgent {
    /// An agent reading `options.key` from `kv`.
    pub fn new(kv: Arc<DynKeyValueStore>, options: AgentOptions) -> Self {
        Self {
            kv,
            options,
            metrics: None,
            events: None,
            status: watch::channel(AgentStatus::default()).0,
            haproxy: None,
            running: None,
            restartable: false,
            next_start: None,
            start_failures: 0,
            started_at: None,
            left_out: Vec::new(),
        }
    }

    /// Writes request records parsed from HAProxy's logs into `metrics` (needs
    /// [`AgentOptions::syslog`]).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<DynMetricsStore>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Publishes rejected configurations and failed reloads as events.
    #[must_use]
    pub fn with_events(mut self, events: Arc<DynEventStore>) -> Self {
        self.events = Some(events);
        self
    }

    /// A receiver of the agent's status.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.subscribe()
    }

    fn update_status(&self, f: impl FnOnce(&mut AgentStatus)) {
        self.status.send_modify(f);
    }

    /// The agent's own `global` lines.
    fn agent_global(&self, syslog: Option<SocketAddr>, log_tag: &str) -> String {
        let mut g = format!(
            "global\n  stats socket {} mode 600 level admin expose-fd listeners\n",
            self.options.stats_socket().display()
        );
        if let Some(addr) = syslog {
            g.push_str(&format!(
                "  log {addr} len 8192 local0\n  log-tag {log_tag}\n"
            ));
        }
        g
    }

    /// The delay before the next restart or retry after `failures` failures in a row.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.options
            .backoff
            .saturating_mul(factor)
            .min(self.options.max_backoff)
    }

    /// Checks the paths and directories before anything is written.
    fn prepare_files(&self) -> Result<(), AgentError> {
        let o = &self.options;
        // The stats socket's path goes into HAProxy's configuration, the others onto its
        // command line: no characters HAProxy's parser would split on or read as a comment.
        for (what, path) in [
            ("work directory", o.work_dir.clone()),
            ("stats socket", o.stats_socket()),
            ("master socket", o.master_socket()),
            ("configuration file", o.config_file()),
            ("socket directory", o.socket_dir.clone()),
        ] {
            if path.to_string_lossy().chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '#' | '"' | '\'' | '\\' | '$' | ',')
            }) {
                return Err(io_error(
                    path,
                    format!(
                        "the {what}'s path must not contain spaces, quotes, '#', '$', ',' or '\\'"
                    ),
                ));
            }
            if what != "work directory" && what != "socket directory" && !path.is_absolute() {
                return Err(io_error(path, format!("the {what} needs an absolute path")));
            }
        }
        if !o.socket_dir.is_absolute() {
            return Err(io_error(
                o.socket_dir.clone(),
                "the socket directory needs an absolute path",
            ));
        }
        files::ensure_dir(&o.work_dir, true)?;
        for path in [o.config_file(), o.stats_socket(), o.master_socket()] {
            if let Some(dir) = path.parent().filter(|d| *d != o.work_dir.as_path()) {
                files::ensure_dir(dir, false)?;
            }
            // A value's `server unix@…` must never reach the agent's admin sockets.
            if path.parent() == Some(o.socket_dir.as_path()) && path != o.config_file() {
                return Err(io_error(
                    path,
                    "the agent's sockets must not be in the socket directory the configuration uses",
                ));
            }
        }
        files::ensure_dir(&o.socket_dir, false)?;
        Ok(())
    }

    /// Adopts a master left by an earlier run, or stops one this agent cannot manage.
    async fn adopt_existing(&mut self) {
        let o = &self.options;
        let found = HaProxy::find(
            &o.config_file(),
            &o.master_socket(),
            &o.stats_socket(),
            o.timeout,
        )
        .await;
        match found {
            Found::Adopted(h, info) => {
                tracing::info!(
                    pid = ?h.pid(),
                    "adopted the HAProxy master left by an earlier run; the next value reloads it"
                );
                let pid = h.pid();
                self.haproxy = Some(h);
                self.restartable = true;
                self.started_at = Some(tokio::time::Instant::now());
                self.update_status(|s| {
                    s.ready = true;
                    s.adopted = true;
                    s.haproxy_pid = pid;
                    s.workers = info.workers;
                });
            }
            Found::Foreign(pid) => {
                tracing::warn!(
                    pid,
                    "an HAProxy master of another configuration answers on the master socket; stopping it"
                );
                process::terminate(pid, Duration::from_secs(5)).await;
            }
            Found::Nothing => {
                // A master whose socket is gone but whose pid file remains.
                let pid = files::read(&o.pid_file())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
                if let Some(pid) = pid
                    && process::alive(pid)
                    && process::runs_config(pid, &o.config_file())
                {
                    tracing::warn!(
                        pid,
                        "an HAProxy master of this agent runs without its master socket; stopping it"
                    );
                    process::terminate(pid, Duration::from_secs(5)).await;
                }
            }
        }
    }

    /// Runs until `shutdown` completes, then stops HAProxy.
    ///
    /// # Errors
    /// [`AgentError::Io`] when the work directory, the socket directory or a socket cannot be
    /// set up safely. Everything after that (KV outages, rejected values, HAProxy dying) is
    /// reported through the status, the log and the metrics, and retried.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        self.prepare_files()?;
        let log_tag = format!("vga-{}", files::random_token()?);
        let mut background = tokio::task::JoinSet::new();
        let syslog = match self.options.syslog {
            None => None,
            Some(addr) => {
                if !addr.ip().is_loopback() {
                    return Err(io_error(
                        addr.to_string(),
                        "HAProxy's logs must be received on a loopback address",
                    ));
                }
                let socket = tokio::net::UdpSocket::bind(addr)
                    .await
                    .map_err(|e| io_error(addr.to_string(), e.to_string()))?;
                logs::enlarge_receive_buffer(&socket);
                let local = socket.local_addr().ok();
                background.spawn(logs::receive(
                    socket,
                    self.metrics.clone(),
                    log_tag.clone(),
                    self.status.clone(),
                ));
                local
            }
        };
        if let Some(addr) = self.options.health {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| io_error(addr.to_string(), e.to_string()))?;
            let local = listener.local_addr().ok();
            self.update_status(|s| s.health = local);
            background.spawn(health::serve(listener, self.status.subscribe()));
        }
        self.update_status(|s| s.syslog = syslog);
        let global = self.agent_global(syslog, &log_tag);
        self.adopt_existing().await;

        let mut shutdown = std::pin::pin!(shutdown);
        let mut stream = self.open_watch();
        let mut pending: Option<(Bytes, u64)> = None;
        let mut apply_at: Option<tokio::time::Instant> = None;
        // When the last update started: a value within `debounce` of it waits for the window's
        // end (a burst is coalesced); any later one is applied at once.
        let mut last_update: Option<tokio::time::Instant> = None;
        let mut retries: u32 = 0;
        let mut liveness = tokio::time::interval(Duration::from_millis(250));
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let debounce = async {
                match apply_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                event = stream.next() => match event {
                    Some(Ok(WatchEvent::Put { key, value, version })) if key == self.options.key => {
                        pending = Some((value, version.0));
                        retries = 0;
                        apply_at.get_or_insert_with(|| {
                            let now = tokio::time::Instant::now();
                            match last_update {
                                Some(at) if now < at + self.options.debounce => at + self.options.debounce,
                                _ => now,
                            }
                        });
                    }
                    Some(Ok(WatchEvent::Delete { key, .. })) if key == self.options.key => {
                        tracing::warn!(key = %key, "the configuration key was deleted; HAProxy keeps its configuration");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the key-value store watch failed");
                        self.update_status(|s| s.last_error = Some(format!("key-value store: {e}")));
                        if !e.is_temporary() {
                            // A gap or an unknown failure: read the current value again.
                            stream = self.open_watch();
                        }
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        stream = self.open_watch();
                    }
                },
                () = debounce => {
                    apply_at = None;
                    if let Some((value, version)) = pending.take() {
                        last_update = Some(tokio::time::Instant::now());
                        // Shutdown interrupts an update (its processes are killed with it).
                        let outcome = tokio::select! {
                            () = &mut shutdown => break,
                            outcome = self.apply(&global, &value, version) => outcome,
                        };
                        match outcome {
                            Outcome::Retry | Outcome::Partial => {
                                retries += 1;
                                let delay = self.backoff(retries);
                                if let Outcome::Retry = outcome {
                                    tracing::warn!(version, ?delay, "retrying the update");
                                    self.update_status(|s| s.retries += 1);
                                }
                                // A newer value that arrived meanwhile wins.
                                pending.get_or_insert((value, version));
                                apply_at = Some(tokio::time::Instant::now() + delay);
                            }
                            Outcome::Done | Outcome::Rejected => retries = 0,
                        }
                    }
                }
                _ = liveness.tick() => {
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = self.check_haproxy() => {}
                    }
                }
            }
        }
        background.abort_all();
        if let Some(h) = self.haproxy.take() {
            if self.options.keep_haproxy {
                tracing::info!(
                    pid = h.pid(),
                    "HAProxy left serving for the next agent to adopt"
                );
                h.let_go();
                return Ok(());
            }
            h.drain_and_stop(self.options.drain).await;
        }
        self.update_status(AgentStatus::haproxy_stopped);
        Ok(())
    }

    fn open_watch(&self) -> BoxStream<'static, vamp_core::Result<WatchEvent>> {
        self.kv
            .watch(&self.options.key, WatchOptions::new().with_initial(true))
    }

    /// Restarts HAProxy with the last good configuration if it died, with backoff while it
    /// keeps dying or failing to start.
    async fn check_haproxy(&mut self) {
        if let Some(h) = &mut self.haproxy
            && let Some(status) = h.exited()
        {
            tracing::error!(%status, "HAProxy exited; restarting it with the last good configuration");
            metrics::counter!("vamp_gateway_agent_haproxy_exits_total").increment(1);
            self.haproxy = None;
            // A crash soon after a start counts as a failed start.
            let stable = self
                .started_at
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(10));
            self.start_failures = if stable { 1 } else { self.start_failures + 1 };
            self.next_start = Some(tokio::time::Instant::now() + self.backoff(self.start_failures));
            self.update_status(|s| {
                s.haproxy_stopped();
                s.last_error = Some(format!("HAProxy exited ({status})"));
            });
        }
        if self.haproxy.is_none()
            && self.restartable
            && self
                .next_start
                .is_none_or(|at| tokio::time::Instant::now() >= at)
        {
            self.start_haproxy().await;
        }
    }

    async fn start_haproxy(&mut self) -> bool {
        let o = &self.options;
        let started = HaProxy::start(
            &o.haproxy_bin,
            &o.config_file(),
            &o.master_socket(),
            &o.stats_socket(),
            &o.pid_file(),
            o.timeout,
        )
        .await;
        match started {
            Ok((h, proc_info)) => {
                let pid = h.pid();
                self.haproxy = Some(h);
                self.started_at = Some(tokio::time::Instant::now());
                self.next_start = None;
                // What runs is what the file holds.
                self.running = files::read(&self.options.config_file())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                self.update_status(|s| {
                    s.ready = true;
                    s.adopted = false;
                    s.haproxy_pid = pid;
                    s.workers = proc_info.workers;
                    s.starts += 1;
                });
                true
            }
            Err(e) => {
                self.start_failures += 1;
                let delay = self.backoff(self.start_failures);
                self.next_start = Some(tokio::time::Instant::now() + delay);
                tracing::error!(error = %e, ?delay, "HAProxy did not start");
                self.update_status(|s| s.last_error = Some(e.to_string()));
                false
            }
        }
    }

    async fn reject(&self, version: u64, message: String) -> Outcome {
        tracing::warn!(version, %message, "configuration rejected; the running one keeps serving");
        metrics::counter!("vamp_gateway_agent_updates_total", "outcome" => "rejected").increment(1);
        // The event first, then the status: whoever sees the count can find the event.
        if let Some(events) = &self.events {
            let event = Event::new(
                vec![
                    "gateway-agent".into(),
                    "gateway-agent:rejected".into(),
                    format!("kv-version:{version}"),
                ],
                vamp_core::node::Node::Str(message.clone()),
                "gateway-agent",
            );
            if let Err(e) = events.publish(event).await {
                tracing::warn!(error = %e, "could not publish the rejection");
            }
        }
        self.update_status(|s| {
            s.counts.rejected += 1;
            s.last_error = Some(message);
        });
        Outcome::Rejected
    }

    /// A failure that may pass: what HAProxy runs is no longer assumed.
    fn transient(&mut self, version: u64, message: String) -> Outcome {
        tracing::warn!(version, %message, "update failed; it will be retried");
        metrics::counter!("vamp_gateway_agent_updates_total", "outcome" => "retry").increment(1);
        self.running = None;
        self.update_status(|s| s.last_error = Some(message));
        Outcome::Retry
    }

    fn accepted(&mut self, outcome: &'static str, candidate: String, version: u64) -> Outcome {
        metrics::counter!("vamp_gateway_agent_updates_total", "outcome" => outcome).increment(1);
        self.running = Some(candidate);
        self.restartable = true;
        self.update_status(|s| {
            match outcome {
                "noop" => s.counts.noop += 1,
                "dynamic" => s.counts.dynamic += 1,
                _ => s.counts.reload += 1,
            }
            s.applied_version = Some(version);
            s.last_error = None;
        });
        Outcome::Done
    }

    /// Applies one value of the key.
    async fn apply(&mut self, global: &str, value: &Bytes, version: u64) -> Outcome {
        let span = tracing::info_span!("apply", version);
        let outcome = self
            .apply_in_span(global, value, version)
            .instrument(span)
            .await;
        match outcome {
            Outcome::Done if !self.left_out.is_empty() => Outcome::Partial,
            other => other,
        }
    }

    /// Leaves out the frontends whose ports another process holds, and reports them.
    async fn without_taken_ports(&mut self, candidate: String, version: u64) -> String {
        let (master, workers) = {
            let status = self.status.borrow();
            (status.haproxy_pid, status.workers.clone())
        };
        let pids: Vec<u32> = master.into_iter().chain(workers).collect();
        let taken = ports::unbindable(
            &candidate,
            &ports::Ours {
                pids: &pids,
                running: self.running.as_deref(),
            },
        );
        let newly: Vec<&ports::Unbindable> = taken
            .iter()
            .filter(|t| !self.left_out.contains(t))
            .collect();
        for t in &newly {
            tracing::warn!(gateway = %t.gateway, address = %t.address, "the gateway's port is held by another process; the other gateways are applied without it");
            metrics::counter!("vamp_gateway_agent_unavailable_ports_total").increment(1);
            if let Some(events) = &self.events {
                let event = Event::new(
                    vec![
                        "gateway-agent".into(),
                        "gateway-agent:port-unavailable".into(),
                        format!("gateways:{}", t.gateway),
                        format!("kv-version:{version}"),
                    ],
                    vamp_core::node::Node::Str(format!(
                        "gateway '{}': {} is held by another process",
                        t.gateway, t.address
                    )),
                    "gateway-agent",
                );
                if let Err(e) = events.publish(event).await {
                    tracing::warn!(error = %e, "could not publish the unavailable port");
                }
            }
        }
        let report: Vec<String> = taken
            .iter()
            .map(|t| format!("{} ({})", t.gateway, t.address))
            .collect();
        self.update_status(|s| s.unavailable = report);
        let lookups: Vec<String> = taken.iter().map(|t| t.lookup.clone()).collect();
        self.left_out = taken;
        if lookups.is_empty() {
            candidate
        } else {
            ports::without_frontends(&candidate, &lookups)
        }
    }

    async fn apply_in_span(&mut self, global: &str, value: &Bytes, version: u64) -> Outcome {
        let started = Instant::now();
        if value.len() > self.options.max_config_bytes {
            return self
                .reject(
                    version,
                    format!(
                        "the value has {} bytes; at most {} are accepted",
                        value.len(),
                        self.options.max_config_bytes
                    ),
                )
                .await;
        }
        let Ok(value) = std::str::from_utf8(value) else {
            return self
                .reject(version, "the value is not UTF-8 text".into())
                .await;
        };
        let value = &*self.options.localize(value);
        let policy = crate::allow::AllowPolicy::new(self.options.socket_dir.to_string_lossy());
        if let Err(refusal) = crate::allow::check(value, &policy) {
            return self
                .reject(
                    version,
                    format!("the value is not a configuration the generator writes: {refusal}"),
                )
                .await;
        }
        let candidate = format!("{global}\n{}\n{value}\n", self.options.base_config);
        let candidate = self.without_taken_ports(candidate, version).await;
        metrics::histogram!("vamp_gateway_agent_step_seconds", "step" => "render")
            .record(secs(started));
        if self.running.as_deref() == Some(candidate.as_str()) && self.haproxy.is_some() {
            return self.accepted("noop", candidate, version);
        }
        let candidate_file = self.options.candidate_file();
        let config_file = self.options.config_file();
        if let Err(e) = files::write_new(&candidate_file, candidate.as_bytes()) {
            return self.transient(version, e.to_string());
        }
        let previous = files::read(&config_file).ok();

        let plan = match (&self.running, &self.haproxy) {
            (Some(running), Some(_)) => plan_update(running, &candidate),
            _ => Update::Reload,
        };
        if let (Update::Weights(changes), Some(h)) = (&plan, &self.haproxy) {
            let dynamic_started = Instant::now();
            // The file first: a restart must come up with what is live.
            if let Err(e) = files::install(&candidate_file, &config_file, candidate.as_bytes()) {
                restore(&config_file, previous.as_deref());
                return self.transient(version, e.to_string());
            }
            match h.set_weights(changes).await {
                Ok(()) => {
                    metrics::histogram!("vamp_gateway_agent_step_seconds", "step" => "dynamic")
                        .record(secs(dynamic_started));
                    tracing::info!(changes = changes.len(), "weights applied without a reload");
                    return self.accepted("dynamic", candidate, version);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "runtime weight change failed; reloading instead");
                    // Put back what ran, so that a failed reload leaves no mix of weights.
                    let revert = self
                        .running
                        .as_deref()
                        .map(|r| crate::update::reverting(r, changes))
                        .unwrap_or_default();
                    if let Err(e) = h.set_weights(&revert).await {
                        tracing::warn!(error = %e, "could not put the previous weights back");
                    }
                    // The file is installed; validate and reload it like any other change.
                    if let Err(e) = files::write_new(&candidate_file, candidate.as_bytes()) {
                        restore(&config_file, previous.as_deref());
                        return self.transient(version, e.to_string());
                    }
                }
            }
        }

        // Weight-only changes keep the validated structure; anything else is checked first.
        let validate_started = Instant::now();
        match process::validate(
            &self.options.haproxy_bin,
            &candidate_file,
            self.options.timeout,
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                let _ = std::fs::remove_file(&candidate_file);
                restore(&config_file, previous.as_deref());
                return self
                    .reject(
                        version,
                        format!("haproxy -c rejected the configuration: {message}"),
                    )
                    .await;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&candidate_file);
                restore(&config_file, previous.as_deref());
                return self.transient(version, e.to_string());
            }
        }
        metrics::histogram!("vamp_gateway_agent_step_seconds", "step" => "validate")
            .record(secs(validate_started));

        let reload_started = Instant::now();
        if let Err(e) = files::install(&candidate_file, &config_file, candidate.as_bytes()) {
            restore(&config_file, previous.as_deref());
            return self.transient(version, e.to_string());
        }
        let outcome = match &self.haproxy {
            None => {
                if self.start_haproxy().await {
                    Ok(())
                } else {
                    Err((
                        false,
                        "HAProxy did not start with the configuration".to_owned(),
                    ))
                }
            }
            Some(h) => match h.reload().await {
                Ok(info) => {
                    self.update_status(|s| s.workers = info.workers.clone());
                    Ok(())
                }
                // HAProxy said no (a port taken, …): the old worker serves the old file.
                Err(AgentError::Reload { message }) if message.contains(process::RELOAD_FAILED) => {
                    Err((false, message))
                }
                // No answer in time: what runs is unknown.
                Err(e) => Err((true, e.to_string())),
            },
        };
        match outcome {
            Ok(()) => {
                metrics::histogram!("vamp_gateway_agent_step_seconds", "step" => "reload")
                    .record(secs(reload_started));
                tracing::info!("configuration applied by a reload");
                self.accepted("reload", candidate, version)
            }
            Err((transient, message)) => {
                // Keep the file in step with what runs, for the next restart.
                restore(&config_file, previous.as_deref());
                if self.running.is_none() && previous.is_none() {
                    self.restartable = false;
                }
                if transient {
                    self.transient(version, message)
                } else {
                    self.reject(version, message).await
                }
            }
        }
    }
}

/// Puts the previous configuration file back (or removes a file that never ran).
fn restore(config: &Path, previous: Option<&[u8]>) {
    let result = match previous {
        Some(bytes) => {
            let temporary = files::candidate_of(config);
            files::write_new(&temporary, bytes)
                .and_then(|()| files::install(&temporary, config, bytes))
                .map_err(|e| e.to_string())
        }
        None => std::fs::remove_file(config).map_err(|e| e.to_string()),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, file = %config.display(), "cannot restore the configuration file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> AgentOptions {
        AgentOptions::new(KeyPath::parse("/k").unwrap(), "/run/agent")
            .with_socket_dir("/run/agent-sockets")
    }

    #[test]
    fn a_value_is_localized_only_where_asked() {
        let value = "frontend g\n  bind 0.0.0.0:9050\n  bind [::]:9051 v4v6\n  bind unix@/usr/local/vamp/r.sock accept-proxy\nbackend r\n  server s unix@/usr/local/vamp/r.sock send-proxy\n  server hop 127.0.0.1:9051 weight 1\n  server out 127.0.0.1:8080 weight 1\n  server far 10.0.0.1:9051\n";
        // Nothing asked: borrowed, unchanged.
        assert!(matches!(
            options().localize(value),
            std::borrow::Cow::Borrowed(_)
        ));
        let o = options()
            .with_bind_address("127.0.0.2".parse().unwrap())
            .with_rendered_socket_dir("/usr/local/vamp");
        assert_eq!(
            o.localize(value),
            "frontend g\n  bind 127.0.0.2:9050\n  bind 127.0.0.2:9051 v4v6\n  bind unix@/run/agent-sockets/r.sock accept-proxy\nbackend r\n  server s unix@/run/agent-sockets/r.sock send-proxy\n  server hop 127.0.0.2:9051 weight 1\n  server out 127.0.0.1:8080 weight 1\n  server far 10.0.0.1:9051\n"
        );
        let v6 = options().with_bind_address("::1".parse().unwrap());
        assert_eq!(v6.localize("bind *:80"), "bind [::1]:80");
        // Other directories and address families are left for the checks to judge.
        let other = "  bind unix@/elsewhere/x.sock\n  bind abns@x\n  bind fd@3\n";
        assert_eq!(o.localize(other), other);
    }
}
