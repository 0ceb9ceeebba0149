//! The gateway agent (feature `agent`): keeps one HAProxy in step with the configuration the
//! control plane writes into the key-value store, like Vamp's gateway agent (VGA), but
//! watching instead of polling, and without ever applying a configuration HAProxy rejects.
//!
//! For each value of the watched key the agent
//!
//! 1. composes the candidate: its own `global` lines (stats socket, log target), the base
//!    configuration ([`AgentOptions::base_config`]) and the value;
//! 2. does nothing if the candidate is what HAProxy runs (`noop`);
//! 3. applies server-weight-only changes through the runtime API (`set weight`) and writes
//!    the file, without a reload (`dynamic`, see [`crate::update`]): the structure is the one
//!    already validated, and the weights are checked to be in HAProxy's range;
//! 4. validates anything else with `haproxy -c` — a rejected candidate is logged, counted,
//!    published as an event and otherwise ignored: the running configuration keeps serving
//!    (`rejected`);
//! 5. and reloads through the master CLI, confirming the reload by seeing a new worker in
//!    `show proc` (`reload`).
//!
//! Values arriving within [`AgentOptions::debounce`] of the first are coalesced, updates run
//! one at a time, and the latest value always wins. HAProxy runs in master-worker mode with
//! `expose-fd listeners`, so reloads keep the listening sockets (hitless); the agent starts it
//! and restarts it with the last good configuration if it dies. The watch re-opens (reading the
//! current value) whenever the store's stream fails, so a KV outage only delays updates.
//!
//! Outcomes are counted as `vamp_gateway_agent_updates_total{outcome}` and each step is timed
//! as `vamp_gateway_agent_step_seconds{step}` (`render`, `validate`, `dynamic`, `reload`)
//! through the `metrics` facade, inside `tracing` spans.

mod health;
mod logs;
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

pub use self::logs::json_of;
use self::process::HaProxy;
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
    /// How long to wait for more values after one arrives (default 100 ms).
    pub debounce: Duration,
    /// The time limit of HAProxy starts, reloads and CLI commands (default 10 s).
    pub timeout: Duration,
    /// Where to receive HAProxy's logs (UDP syslog), e.g. `127.0.0.1:0`; `None`: no logs.
    pub syslog: Option<SocketAddr>,
    /// Where to serve `/health` and `/status`; `None`: no endpoint.
    pub health: Option<SocketAddr>,
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
        }
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
        let mut name = self.config_file().into_os_string();
        name.push(".candidate");
        PathBuf::from(name)
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
    /// HAProxy runs a configuration.
    pub ready: bool,
    /// Update outcomes.
    pub counts: UpdateCounts,
    /// The UDP address HAProxy's logs go to, once bound.
    pub syslog: Option<SocketAddr>,
    /// The health endpoint's address, once bound.
    pub health: Option<SocketAddr>,
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
            },
            "updates": {
                "noop": self.counts.noop,
                "dynamic": self.counts.dynamic,
                "reload": self.counts.reload,
                "rejected": self.counts.rejected,
            },
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
    /// The configuration HAProxy runs (what the file holds).
    running: Option<String>,
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
    fn agent_global(&self, syslog: Option<SocketAddr>) -> String {
        let mut g = format!(
            "global\n  stats socket {} mode 600 level admin expose-fd listeners\n",
            self.options.stats_socket().display()
        );
        if let Some(addr) = syslog {
            g.push_str(&format!("  log {addr} len 8192 local0\n"));
        }
        g
    }

    /// Runs until `shutdown` completes, then stops HAProxy.
    ///
    /// # Errors
    /// [`AgentError::Io`] when the work directory or a socket cannot be set up. Everything
    /// after that (KV outages, rejected values, HAProxy dying) is reported through the status,
    /// the log and the metrics, and retried.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        // The stats socket's path goes into HAProxy's configuration, the others onto its
        // command line: no characters HAProxy's parser would split on or read as a comment.
        for (what, path) in [
            ("work directory", self.options.work_dir.clone()),
            ("stats socket", self.options.stats_socket()),
            ("master socket", self.options.master_socket()),
            ("configuration file", self.options.config_file()),
        ] {
            if path.to_string_lossy().chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '#' | '"' | '\'' | '\\' | '$' | ',')
            }) {
                return Err(AgentError::Io {
                    path,
                    message: format!(
                        "the {what}'s path must not contain spaces, quotes, '#', '$', ',' or '\\'"
                    ),
                });
            }
        }
        for dir in [
            Some(self.options.work_dir.clone()),
            self.options.config_file().parent().map(Path::to_path_buf),
        ]
        .into_iter()
        .flatten()
        .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::Io {
                path: dir.clone(),
                message: e.to_string(),
            })?;
        }
        let mut background = tokio::task::JoinSet::new();
        let syslog = match self.options.syslog {
            None => None,
            Some(addr) => {
                let socket =
                    tokio::net::UdpSocket::bind(addr)
                        .await
                        .map_err(|e| AgentError::Io {
                            path: PathBuf::from(addr.to_string()),
                            message: e.to_string(),
                        })?;
                let local = socket.local_addr().ok();
                if let Some(metrics) = &self.metrics {
                    background.spawn(logs::receive(socket, Arc::clone(metrics)));
                }
                local
            }
        };
        if let Some(addr) = self.options.health {
            let listener =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| AgentError::Io {
                        path: PathBuf::from(addr.to_string()),
                        message: e.to_string(),
                    })?;
            let local = listener.local_addr().ok();
            self.update_status(|s| s.health = local);
            background.spawn(health::serve(listener, self.status.subscribe()));
        }
        self.update_status(|s| s.syslog = syslog);
        let global = self.agent_global(syslog);

        let mut shutdown = std::pin::pin!(shutdown);
        let mut stream = self.open_watch();
        let mut pending: Option<(Bytes, u64)> = None;
        let mut apply_at: Option<tokio::time::Instant> = None;
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
                        apply_at.get_or_insert_with(|| tokio::time::Instant::now() + self.options.debounce);
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
                        self.apply(&global, &value, version).await;
                    }
                }
                _ = liveness.tick() => self.check_haproxy().await,
            }
        }
        background.abort_all();
        if let Some(h) = self.haproxy.take() {
            h.stop().await;
        }
        self.update_status(AgentStatus::haproxy_stopped);
        Ok(())
    }

    fn open_watch(&self) -> BoxStream<'static, vamp_core::Result<WatchEvent>> {
        self.kv
            .watch(&self.options.key, WatchOptions::new().with_initial(true))
    }

    /// Restarts HAProxy with the last good configuration if it died.
    async fn check_haproxy(&mut self) {
        let Some(h) = &mut self.haproxy else { return };
        let Some(status) = h.exited() else { return };
        tracing::error!(%status, "HAProxy exited; restarting it with the last good configuration");
        metrics::counter!("vamp_gateway_agent_haproxy_exits_total").increment(1);
        self.haproxy = None;
        self.update_status(|s| {
            s.haproxy_stopped();
            s.last_error = Some(format!("HAProxy exited ({status})"));
        });
        if self.running.is_some() {
            self.start_haproxy().await;
        }
    }

    async fn start_haproxy(&mut self) -> bool {
        let o = &self.options;
        match HaProxy::start(
            &o.haproxy_bin,
            &o.config_file(),
            &o.master_socket(),
            &o.stats_socket(),
            o.timeout,
        )
        .await
        {
            Ok((h, proc_info)) => {
                let pid = h.pid();
                self.haproxy = Some(h);
                self.update_status(|s| {
                    s.ready = true;
                    s.haproxy_pid = pid;
                    s.workers = proc_info.workers;
                    s.starts += 1;
                });
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "HAProxy did not start");
                self.update_status(|s| s.last_error = Some(e.to_string()));
                false
            }
        }
    }

    async fn reject(&self, version: u64, message: String) {
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
    }

    fn accepted(&mut self, outcome: &'static str, candidate: String, version: u64) {
        metrics::counter!("vamp_gateway_agent_updates_total", "outcome" => outcome).increment(1);
        self.running = Some(candidate);
        self.update_status(|s| {
            match outcome {
                "noop" => s.counts.noop += 1,
                "dynamic" => s.counts.dynamic += 1,
                _ => s.counts.reload += 1,
            }
            s.applied_version = Some(version);
            s.last_error = None;
        });
    }

    /// Applies one value of the key.
    async fn apply(&mut self, global: &str, value: &Bytes, version: u64) {
        let span = tracing::info_span!("apply", version);
        self.apply_in_span(global, value, version)
            .instrument(span)
            .await;
    }

    async fn apply_in_span(&mut self, global: &str, value: &Bytes, version: u64) {
        let started = Instant::now();
        let Ok(value) = std::str::from_utf8(value) else {
            self.reject(version, "the value is not UTF-8 text".into())
                .await;
            return;
        };
        let candidate = format!("{global}\n{}\n{value}\n", self.options.base_config);
        metrics::histogram!("vamp_gateway_agent_step_seconds", "step" => "render")
            .record(secs(started));
        if self.running.as_deref() == Some(candidate.as_str()) && self.haproxy.is_some() {
            self.accepted("noop", candidate, version);
            return;
        }
        let candidate_file = self.options.candidate_file();
        if let Err(e) = std::fs::write(&candidate_file, &candidate) {
            self.reject(
                version,
                format!("cannot write {}: {e}", candidate_file.display()),
            )
            .await;
            return;
        }

        let plan = match (&self.running, &self.haproxy) {
            (Some(running), Some(_)) => plan_update(running, &candidate),
            _ => Update::Reload,
        };
        if let (Update::Weights(changes), Some(h)) = (&plan, &self.haproxy) {
            let dynamic_started = Instant::now();
            match h.set_weights(changes).await {
                Ok(()) => {
                    if let Err(e) = install(&candidate_file, &self.options.config_file()) {
                        tracing::error!(error = %e, "cannot write the configuration file");
                    }
                    metrics::histogram!("vamp_gateway_agent_step_seconds", "step" => "dynamic")
                        .record(secs(dynamic_started));
                    tracing::info!(changes = changes.len(), "weights applied without a reload");
                    self.accepted("dynamic", candidate, version);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "runtime weight change failed; reloading instead");
                }
            }
        }

        // Weight-only changes keep the validated structure; anything else is checked first.
        let validate_started = Instant::now();
        match process::validate(&self.options.haproxy_bin, &candidate_file).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                self.reject(
                    version,
                    format!("haproxy -c rejected the configuration: {message}"),
                )
                .await;
                return;
            }
            Err(e) => {
                self.reject(version, e.to_string()).await;
                return;
            }
        }
        metrics::histogram!("vamp_gateway_agent_step_seconds", "step" => "validate")
            .record(secs(validate_started));

        let reload_started = Instant::now();
        let previous = std::fs::read(self.options.config_file()).ok();
        if let Err(e) = install(&candidate_file, &self.options.config_file()) {
            self.reject(version, e).await;
            return;
        }
        let outcome = match &self.haproxy {
            None => {
                if self.start_haproxy().await {
                    Ok(())
                } else {
                    Err("HAProxy did not start with the configuration".to_owned())
                }
            }
            Some(h) => match h.reload().await {
                Ok(info) => {
                    self.update_status(|s| s.workers = info.workers.clone());
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match outcome {
            Ok(()) => {
                metrics::histogram!("vamp_gateway_agent_step_seconds", "step" => "reload")
                    .record(secs(reload_started));
                tracing::info!("configuration applied by a reload");
                self.accepted("reload", candidate, version);
            }
            Err(message) => {
                // Keep the file in step with what runs, for the next restart.
                if let Some(previous) = previous {
                    let _ = std::fs::write(self.options.config_file(), previous);
                }
                self.reject(version, message).await;
            }
        }
    }
}

/// Moves the candidate over the configuration file (atomic: both are in one directory).
fn install(candidate: &Path, config: &Path) -> Result<(), String> {
    std::fs::rename(candidate, config)
        .map_err(|e| format!("cannot install {}: {e}", config.display()))
}
