//! Local processes as a [`ContainerScheduler`] (feature `scheduler-local`): the embedded
//! default for running deployments without a container platform.
//!
//! A service's deployable is a shell command (type `command`, `cmd`, `process` or `shell`):
//! each instance runs `sh -c <definition>` in its own process group, in its own directory
//! below the scheduler's work directory, with its output in `output.log` there. Every spec port
//! gets a loopback port per instance from the scheduler's own range ([`DEFAULT_PORT_RANGE`],
//! below the kernel's ephemeral ports, so no other process's outgoing connection is handed
//! one; each port goes to one instance at a time, and only while nothing else listens on it;
//! every local scheduler of the same user shares the reservation through `flock`ed files in
//! `$TMPDIR/vamp-local-ports-<uid>`, a directory of that user's alone (`0700`, its owner and
//! mode checked, never a link), so two control planes never hand out one port twice),
//! passed in the environment as `PORT_<NAME>` (name
//! upper-cased, other characters `_`), `PORT0`, `PORT1`, … in spec order, and `PORT` (the first);
//! also `HOST=127.0.0.1`, `VAMP_INSTANCE` (the instance's name) and `VAMP_INSTANCE_DIR`, then
//! the spec's environment. Of the control plane's own environment an instance gets only
//! [`DEFAULT_INHERITED_ENV`] (`PATH`, `HOME`, locale, …) or the list given to
//! [`LocalScheduler::with_inherited_env`]: never its credentials. Like Marathon, an instance
//! that exits is started again, after 1 s doubling to 30 s while it keeps failing; a port
//! another process took while it was down is replaced by a free one (the instance's reported
//! ports change with it). Health checks (`HTTP`/`HTTPS` as an HTTP `GET` of the path,
//! anything else as a TCP connect, on the named port) run every `interval` seconds after
//! `initial_delay`; an instance is unhealthy after `failures` failed checks in a row. Without
//! health checks, an instance with ports counts as running once its first port (`$PORT`)
//! accepts connections (at most [`LISTEN_WAIT`] after it started), so that no gateway routes a
//! request to it before: HAProxy answers a request sent to a port nothing listens on yet only
//! after its connect retry, a second later.
//! Undeploying or scaling down sends `SIGTERM` to the instance's process group, then `SIGKILL`
//! after 5 s. CPU and memory are not enforced; Docker `arguments` are ignored. A service may
//! have at most [`DEFAULT_MAX_INSTANCES`] instances ([`LocalScheduler::with_max_instances`]);
//! directories and ports are made ready outside the scheduler's lock, so a large deployment
//! does not hold up the others or the state queries.
//!
//! Each running instance's process group is recorded in `instance.pid` in its directory; a
//! group counts as the instance's only while a member of it works in that directory (so a
//! reused group id is never mistaken for it). A
//! scheduler created on a work directory stops the process groups an earlier scheduler left
//! running there (a control plane killed with `SIGKILL` cannot stop them) and removes their
//! directories: the control plane then deploys what its deployments want from a clean slate,
//! with no orphan and no duplicate.
//!
//! ```no_run
//! # async fn example() -> Result<(), vamp_core::Error> {
//! use vamp_backends::scheduler::local::LocalScheduler;
//! use vamp_core::model::{Deployable, PortType};
//! use vamp_core::scheduler::*;
//!
//! let scheduler = LocalScheduler::new("/tmp/vamp-local")?;
//! let deployable = Deployable {
//!     deployable_type: Some("command".into()),
//!     definition: "python3 -m http.server \"$PORT\" --bind 127.0.0.1".into(),
//! };
//! let spec = ServiceSpec::new(ServiceId::new("sava", "sava", "sava:1.0.0"), deployable)
//!     .with_instances(2)
//!     .with_port("webport", 8080, PortType::Http);
//! scheduler.deploy(spec, DeployOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_channel::mpsc;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use indexmap::IndexMap;
use tokio::process::Command;
use tokio::sync::watch;
use vamp_core::Error;
use vamp_core::scheduler::*;

use super::env_name;
use super::ports::PortAllocator;

/// The deployable types this scheduler runs.
pub const DEPLOYABLE_TYPES: [&str; 5] = [
    "command",
    "cmd",
    "process",
    "shell",
    "application/javascript",
];

/// Whether `program` is an executable on the `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let candidate = dir.join(program);
            std::fs::metadata(&candidate).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// A [`ContainerScheduler`] running each instance as a local process. Cloning shares the
/// scheduler; when the last clone is dropped, every process is stopped.
#[derive(Clone)]
pub struct LocalScheduler {
    inner: Arc<Inner>,
}

struct Inner {
    workdir: PathBuf,
    label: String,
    state: Mutex<State>,
    /// Variables of the control plane's environment passed on to instances.
    inherit: Vec<String>,
    ports: Mutex<PortAllocator>,
    max_instances: u32,
    /// Instances outlive this scheduler (and a later one adopts them).
    keep: bool,
}

impl Inner {
    fn ports(&self) -> std::sync::MutexGuard<'_, PortAllocator> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release_ports(&self, ports: &IndexMap<String, u16>) {
        let mut allocator = self.ports();
        for port in ports.values() {
            allocator.release(*port);
        }
    }
}

/// An instance made ready outside the state lock: its directory and ports.
struct Prepared {
    name: String,
    number: u64,
    dir: PathBuf,
    ports: IndexMap<String, u16>,
}

/// The variables of the control plane's environment an instance gets by default: what a
/// command needs to run (its search path, home, locale, time zone, temporary directory),
/// never the control plane's credentials.
pub const DEFAULT_INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYENV_ROOT",
    "PYENV_VERSION",
];

#[derive(Default)]
struct State {
    services: BTreeMap<ServiceId, Service>,
    /// One-shot runs still alive, by the id they run for.
    runs: BTreeMap<ServiceId, Vec<Run>>,
    next_instance: u64,
    subscribers: Vec<mpsc::UnboundedSender<Result<SchedulerEvent, Error>>>,
}

struct Service {
    spec: ServiceSpec,
    instances: Vec<Instance>,
}

struct Instance {
    state: InstanceState,
    stop: watch::Sender<bool>,
}

/// A one-shot run: killed (its whole process group) when `stop` turns true.
struct Run {
    info: RunInfo,
    stop: watch::Sender<bool>,
}

impl Service {
    fn snapshot(&self) -> DeployedService {
        DeployedService {
            spec: self.spec.clone(),
            instances: self.instances.iter().map(|i| i.state.clone()).collect(),
        }
    }
}

impl State {
    fn emit(&mut self, event: SchedulerEvent) {
        self.subscribers
            .retain(|tx| tx.unbounded_send(Ok(event.clone())).is_ok());
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(state) = self.state.lock() {
            // Kept instances outlive the scheduler; their supervisors let go of them.
            for service in state.services.values().filter(|_| !self.keep) {
                for i in &service.instances {
                    let _ = i.stop.send(true);
                }
            }
            for run in state.runs.values().flatten() {
                let _ = run.stop.send(true);
            }
        }
    }
}

pub use super::ports::DEFAULT_PORT_RANGE;

/// The most instances one service may have here (each is a process on this machine).
pub const DEFAULT_MAX_INSTANCES: u32 = 256;

/// The kernel's ephemeral port range, when it can be read.
fn ephemeral_range() -> Option<RangeInclusive<u16>> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some(parts.next()??..=parts.next()??)
}

/// Sends `signal` to a process group with the shell's own `kill` (no procps needed).
async fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s {signal} -- -{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// The start time of process `pid` (clock ticks since boot), if it runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `state` is field 3 of stat(5), `starttime` field 22.
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether process group `pgid` still has a member working in `dir` (every process of an
/// instance starts there; a reused group id of an unrelated process does not).
fn group_alive(pgid: u32, dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            let in_group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let fields: Vec<String> = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect();
                    let state = fields.first()?.clone();
                    let group = fields.get(2)?.parse::<u32>().ok()?;
                    Some(group == pgid && state != "Z" && state != "X")
                })
                .unwrap_or(false);
            in_group
                && std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(dir))
        })
}

/// Stops the process groups an earlier scheduler left in `workdir` and removes their
/// directories; returns how many groups were stopped.
fn clean_up(workdir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(workdir) else {
        return 0;
    };
    let mut stopped = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(record) = std::fs::read_to_string(dir.join(PID_FILE)) else {
            continue;
        };
        let Some(pgid) = record
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pgid > 1 && group_alive(pgid, &dir) {
            let kill = |signal: &str| {
                let _ = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("kill -s {signal} -- -{pgid}"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            };
            kill("TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while group_alive(pgid, &dir) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if group_alive(pgid, &dir) {
                kill("KILL");
                let deadline = Instant::now() + Duration::from_secs(5);
                while group_alive(pgid, &dir) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            stopped += 1;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    stopped
}

fn create_workdir(workdir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(workdir).map_err(|e| {
        crate::invalid(
            "local",
            format!(
                "cannot create the work directory {}: {e}",
                workdir.display()
            ),
        )
    })
}

/// The file recording a running instance's process group.
const PID_FILE: &str = "instance.pid";

/// A live instance found by [`LocalScheduler::adopting`]: its number, name, directory,
/// process group and ports.
type Found = (u64, String, PathBuf, u32, IndexMap<String, u16>);

/// The file recording an instance for a later scheduler to adopt: its service's spec, its
/// name, number and ports.
const RECORD_FILE: &str = "instance.json";

impl LocalScheduler {
    /// A scheduler keeping instance directories below `workdir` (created if missing). Process
    /// groups an earlier scheduler left running there are stopped first.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the directory cannot be created.
    pub fn new(workdir: impl Into<PathBuf>) -> Result<Self, Error> {
        let workdir = workdir.into();
        create_workdir(&workdir)?;
        clean_up(&workdir);
        Ok(Self::on(workdir, false))
    }

    /// A scheduler whose instances outlive it, keeping instance directories below `workdir`:
    /// the instances an earlier such scheduler left running there (same processes, same
    /// ports) are adopted, and supervised as if this one had started them; what is left of
    /// instances that died meanwhile is removed. A service is adopted with the instances still
    /// alive (a control plane scales it back up). Dropping this scheduler leaves every instance
    /// running; [`ContainerScheduler::undeploy`] still stops them.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the directory cannot be created.
    pub fn adopting(workdir: impl Into<PathBuf>) -> Result<Self, Error> {
        let workdir = workdir.into();
        create_workdir(&workdir)?;
        let scheduler = Self::on(workdir, true);
        scheduler.adopt();
        Ok(scheduler)
    }

    fn on(workdir: PathBuf, keep: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                label: if keep {
                    format!("LocalScheduler({}, keeps its instances)", workdir.display())
                } else {
                    format!("LocalScheduler({})", workdir.display())
                },
                workdir,
                state: Mutex::new(State::default()),
                inherit: DEFAULT_INHERITED_ENV
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                ports: Mutex::new(PortAllocator::new(DEFAULT_PORT_RANGE)),
                max_instances: DEFAULT_MAX_INSTANCES,
                keep,
            }),
        }
    }

    /// Adopts the live instances recorded below the work directory (see
    /// [`LocalScheduler::adopting`]); removes the directories of dead ones.
    fn adopt(&self) {
        let Ok(entries) = std::fs::read_dir(&self.inner.workdir) else {
            return;
        };
        let mut found: BTreeMap<ServiceId, (ServiceSpec, Vec<Found>)> = BTreeMap::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let record = std::fs::read_to_string(dir.join(RECORD_FILE))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            let pgid = std::fs::read_to_string(dir.join(PID_FILE))
                .ok()
                .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok());
            let adopted = match (record, pgid) {
                (Some(record), Some(pgid)) if pgid > 1 && group_alive(pgid, &dir) => {
                    let spec = record.get("spec").and_then(super::record::spec_from_json);
                    let number = record.get("number").and_then(serde_json::Value::as_u64);
                    let name = record.get("name").and_then(serde_json::Value::as_str);
                    let ports: Option<IndexMap<String, u16>> = record
                        .get("ports")
                        .and_then(|p| serde_json::from_value(p.clone()).ok());
                    match (spec, number, name, ports) {
                        (Some(spec), Some(number), Some(name), Some(ports)) => {
                            let e = found
                                .entry(spec.id.clone())
                                .or_insert_with(|| (spec, Vec::new()));
                            e.1.push((number, name.to_owned(), dir.clone(), pgid, ports));
                            true
                        }
                        _ => false,
                    }
                }
                _ => false,
            };
            if !adopted {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let mut state = self.state();
        for (id, (mut spec, mut instances)) in found {
            instances.sort_by_key(|i| i.0);
            spec.instances = u32::try_from(instances.len()).unwrap_or(u32::MAX);
            let mut adopted = Vec::new();
            for (number, name, dir, pgid, ports) in instances {
                state.next_instance = state.next_instance.max(number);
                {
                    let mut allocator = self.inner.ports();
                    for port in ports.values() {
                        allocator.adopt(*port);
                    }
                }
                let (stop, stopped) = watch::channel(false);
                let supervisor = Supervisor {
                    scheduler: Arc::downgrade(&self.inner),
                    inherit: self.inner.inherit.clone(),
                    id: id.clone(),
                    name: name.clone(),
                    dir,
                    spec: spec.clone(),
                    ports: ports.clone(),
                    keep: true,
                };
                tokio::spawn(supervisor.run_adopted(pgid, stopped));
                adopted.push(Instance {
                    state: InstanceState {
                        name,
                        host: "127.0.0.1".into(),
                        ports,
                        running: true,
                        healthy: (!spec.health_checks.is_empty()).then_some(true),
                    },
                    stop,
                });
            }
            let service = Service {
                spec,
                instances: adopted,
            };
            state.services.insert(id, service);
        }
    }

    /// Gives instances ports from `range` instead of [`DEFAULT_PORT_RANGE`] (call before
    /// deploying anything). A range overlapping the kernel's ephemeral range
    /// (`/proc/sys/net/ipv4/ip_local_port_range`) is refused: the kernel could give one of
    /// its ports to another process's outgoing connection while an instance restarts.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty range or one overlapping the ephemeral range.
    pub fn with_port_range(mut self, range: RangeInclusive<u16>) -> Result<Self, Error> {
        if range.is_empty() || *range.start() == 0 {
            return Err(crate::invalid(
                "local",
                format!("the port range {range:?} is empty or starts at 0"),
            ));
        }
        if let Some(ephemeral) = ephemeral_range()
            && range.start() <= ephemeral.end()
            && ephemeral.start() <= range.end()
        {
            return Err(crate::invalid(
                "local",
                format!(
                    "the port range {range:?} overlaps the kernel's ephemeral ports {ephemeral:?}"
                ),
            ));
        }
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.ports = Mutex::new(PortAllocator::new(range));
        }
        Ok(self)
    }

    /// Allows services at most `max` instances instead of [`DEFAULT_MAX_INSTANCES`] (call
    /// before deploying anything).
    #[must_use]
    pub fn with_max_instances(mut self, max: u32) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.max_instances = max;
        }
        self
    }

    /// Passes these variables of the control plane's environment on to instances instead of
    /// [`DEFAULT_INHERITED_ENV`] (call before deploying anything).
    ///
    /// # Panics
    /// Never; on a scheduler already shared, the list of the shared one is kept.
    #[must_use]
    pub fn with_inherited_env(
        mut self,
        names: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.inherit = names.into_iter().map(Into::into).collect();
        }
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_spec(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let kind = spec.deployable.deployable_type.as_deref().unwrap_or("");
        if !DEPLOYABLE_TYPES.contains(&kind) {
            return Err(Error::Invalid {
                what: "deployable",
                value: format!("{}: {kind:?}", spec.id),
                reason: format!(
                    "the local scheduler runs shell commands: type one of {}",
                    DEPLOYABLE_TYPES.join(", ")
                ),
            });
        }
        if kind == "application/javascript" && !on_path("node") {
            return Err(Error::Invalid {
                what: "deployable",
                value: spec.id.to_string(),
                reason: "an application/javascript breed runs with node, which is not installed here (Debian: apt-get install nodejs)".into(),
            });
        }
        if spec.deployable.definition.trim().is_empty() {
            return Err(Error::Invalid {
                what: "deployable",
                value: spec.id.to_string(),
                reason: "the command is empty".into(),
            });
        }
        if spec.instances > self.inner.max_instances {
            return Err(Error::Invalid {
                what: "instances",
                value: format!("{}: {}", spec.id, spec.instances),
                reason: format!(
                    "the local scheduler runs at most {} instances of a service (with_max_instances)",
                    self.inner.max_instances
                ),
            });
        }
        // Health checks naming no port were refused by ServiceSpec::normalized.
        Ok(())
    }

    /// Makes `count` instances of `spec` ready (directories and ports), numbered from
    /// `first`, without the state lock. On failure nothing is left allocated.
    /// [`LocalScheduler::prepare`] on a blocking thread (directories and port probes are
    /// system calls that must not hold up the async runtime).
    async fn prepare_off_runtime(
        &self,
        spec: &ServiceSpec,
        first: u64,
        count: u32,
    ) -> Result<Vec<Prepared>, Error> {
        let this = self.clone();
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || this.prepare(&spec, first, count))
            .await
            .map_err(|e| Error::Backend {
                backend: self.inner.label.clone(),
                source: Box::new(e),
            })?
    }

    fn prepare(&self, spec: &ServiceSpec, first: u64, count: u32) -> Result<Vec<Prepared>, Error> {
        let mut prepared: Vec<Prepared> = Vec::new();
        let undo = |prepared: &[Prepared]| {
            for p in prepared {
                self.inner.release_ports(&p.ports);
                let _ = std::fs::remove_dir_all(&p.dir);
            }
        };
        for n in 0..u64::from(count) {
            let name = spec.id.instance_name(first + n);
            let mut ports = IndexMap::new();
            for p in &spec.ports {
                let Some(port) = self.inner.ports().allocate() else {
                    self.inner.release_ports(&ports);
                    undo(&prepared);
                    return Err(Error::Unavailable {
                        backend: self.inner.label.clone(),
                        source: "no free port left in the scheduler's port range".into(),
                    });
                };
                ports.insert(p.name.clone(), port);
            }
            let dir = self.inner.workdir.join(&name);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                self.inner.release_ports(&ports);
                undo(&prepared);
                return Err(Error::Backend {
                    backend: self.inner.label.clone(),
                    source: Box::new(e),
                });
            }
            prepared.push(Prepared {
                name,
                number: first + n,
                dir,
                ports,
            });
        }
        Ok(prepared)
    }

    /// Reserves `count` instance numbers; returns the first.
    fn reserve_numbers(state: &mut State, count: u32) -> u64 {
        let first = state.next_instance + 1;
        state.next_instance += u64::from(count);
        first
    }

    /// Turns prepared instances into instances and starts their supervisors.
    fn start(&self, spec: &ServiceSpec, prepared: Vec<Prepared>) -> Vec<Instance> {
        prepared
            .into_iter()
            .map(|p| {
                let (stop, stopped) = watch::channel(false);
                let state_now = InstanceState {
                    name: p.name.clone(),
                    host: "127.0.0.1".into(),
                    ports: p.ports.clone(),
                    running: false,
                    healthy: (!spec.health_checks.is_empty()).then_some(false),
                };
                let supervisor = Supervisor {
                    scheduler: Arc::downgrade(&self.inner),
                    inherit: self.inner.inherit.clone(),
                    id: spec.id.clone(),
                    name: p.name,
                    dir: p.dir,
                    spec: spec.clone(),
                    ports: p.ports,
                    keep: self.inner.keep,
                };
                supervisor.record(p.number);
                tokio::spawn(supervisor.run(stopped));
                Instance {
                    state: state_now,
                    stop,
                }
            })
            .collect()
    }
}

/// Keeps one instance's process running, and checks its health.
struct Supervisor {
    scheduler: Weak<Inner>,
    inherit: Vec<String>,
    id: ServiceId,
    name: String,
    dir: PathBuf,
    spec: ServiceSpec,
    ports: IndexMap<String, u16>,
    /// The instance outlives the scheduler: when the scheduler is gone, let go of it.
    keep: bool,
}

/// The longest an instance with ports (and without health checks) waits to listen on its
/// first one before it counts as running anyway.
pub const LISTEN_WAIT: Duration = Duration::from_secs(30);

/// How a supervisor's wait ended.
enum Ended {
    /// The process exited.
    Exited,
    /// Told to stop (undeploy, scale down, replacement, or a scheduler that does not keep).
    Stop,
    /// The scheduler is gone and the instance is kept: leave it running.
    LetGo,
}

impl Supervisor {
    /// Whether the scheduler is gone and this instance is kept (it is left running).
    fn letting_go(&self) -> bool {
        self.keep && self.scheduler.strong_count() == 0
    }

    /// What a change of the stop signal means: its sender dropped (`gone`) with the scheduler
    /// of a kept instance lets it go; anything else stops it.
    fn why_stopped(&self, gone: bool) -> Ended {
        if gone && self.letting_go() {
            Ended::LetGo
        } else {
            Ended::Stop
        }
    }

    /// Writes the instance's record for a later scheduler (see [`RECORD_FILE`]).
    fn record(&self, number: u64) {
        let record = serde_json::json!({
            "spec": super::record::spec_json(&self.spec, true),
            "name": self.name,
            "number": number,
            "ports": self.ports,
        });
        let _ = std::fs::write(self.dir.join(RECORD_FILE), record.to_string());
    }

    /// Supervises an instance an earlier scheduler started (process group `pgid`): watched
    /// until it exits (then started again as usual), stopped when told.
    async fn run_adopted(self, pgid: u32, mut stopped: watch::Receiver<bool>) {
        let ended = self.watch_adopted(pgid, &mut stopped).await;
        self.after_adopted(pgid, ended, stopped).await;
    }

    async fn watch_adopted(&self, pgid: u32, stopped: &mut watch::Receiver<bool>) -> Ended {
        let health = self.health_loop();
        tokio::pin!(health);
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    let (group, dir) = (pgid, self.dir.clone());
                    let alive = tokio::task::spawn_blocking(move || group_alive(group, &dir))
                        .await
                        .unwrap_or(false);
                    if !alive {
                        break Ended::Exited;
                    }
                }
                changed = stopped.changed() => break self.why_stopped(changed.is_err()),
                () = &mut health => break Ended::Stop,
            }
        }
    }

    async fn after_adopted(self, pgid: u32, ended: Ended, stopped: watch::Receiver<bool>) {
        match ended {
            Ended::LetGo => {}
            Ended::Stop => {
                signal_group(pgid, "TERM").await;
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let (group, dir) = (pgid, self.dir.clone());
                    let alive = tokio::task::spawn_blocking(move || group_alive(group, &dir))
                        .await
                        .unwrap_or(false);
                    if !alive {
                        break;
                    }
                    if Instant::now() > deadline {
                        signal_group(pgid, "KILL").await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = std::fs::remove_file(self.dir.join(PID_FILE));
                if let Some(inner) = self.scheduler.upgrade() {
                    inner.release_ports(&self.ports);
                }
            }
            Ended::Exited => {
                // Leftovers of the group, then the usual supervision: a new process.
                signal_group(pgid, "KILL").await;
                let _ = std::fs::remove_file(self.dir.join(PID_FILE));
                if self.update(|s| s.running = false) {
                    self.run(stopped).await;
                }
            }
        }
    }

    /// Updates this instance's state; `false` when the instance is gone.
    fn update(&self, f: impl FnOnce(&mut InstanceState)) -> bool {
        let Some(inner) = self.scheduler.upgrade() else {
            return false;
        };
        let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(service) = state.services.get_mut(&self.id) else {
            return false;
        };
        let Some(instance) = service
            .instances
            .iter_mut()
            .find(|i| i.state.name == self.name)
        else {
            return false;
        };
        let before = instance.state.clone();
        f(&mut instance.state);
        if instance.state != before {
            let snapshot = service.snapshot();
            state.emit(SchedulerEvent::InstancesChanged(snapshot));
        }
        true
    }

    fn command(&self) -> Result<Command, std::io::Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("output.log"))?;
        let javascript =
            self.spec.deployable.deployable_type.as_deref() == Some("application/javascript");
        let mut cmd = Command::new(if javascript { "node" } else { "sh" });
        // Only what Vamp defines, the spec's environment and the allow-list: never the
        // control plane's whole environment (its database and key-value store credentials).
        cmd.env_clear();
        for name in &self.inherit {
            if let Some(value) = std::env::var_os(name) {
                cmd.env(name, value);
            }
        }
        cmd.arg(if javascript { "-e" } else { "-c" })
            .arg(&self.spec.deployable.definition)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0)
            // A kept instance outlives this process; any other dies with its handle.
            .kill_on_drop(!self.keep)
            .env("HOST", "127.0.0.1")
            .env("VAMP_INSTANCE", &self.name)
            .env("VAMP_INSTANCE_DIR", &self.dir);
        for (i, (name, port)) in self.ports.iter().enumerate() {
            if i == 0 {
                cmd.env("PORT", port.to_string());
            }
            cmd.env(format!("PORT{i}"), port.to_string());
            cmd.env(format!("PORT_{}", env_name(name)), port.to_string());
        }
        for (k, v) in &self.spec.environment {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    /// Before a restart: a port another process took while the instance was down is replaced
    /// by a free one (the instance's state, and so the gateway's targets, follow).
    fn reclaim_ports(&mut self) -> bool {
        let Some(inner) = self.scheduler.upgrade() else {
            return false;
        };
        let mut changed = false;
        for port in self.ports.values_mut() {
            if std::net::TcpListener::bind(("127.0.0.1", *port)).is_err() {
                let mut allocator = inner.ports();
                if let Some(free) = allocator.allocate() {
                    allocator.release(*port);
                    *port = free;
                    changed = true;
                }
            }
        }
        if changed {
            let ports = self.ports.clone();
            return self.update(|s| s.ports = ports);
        }
        true
    }

    /// Runs the instance until it is stopped or gone, then gives its ports back.
    async fn run(mut self, stopped: watch::Receiver<bool>) {
        self.supervise(stopped).await;
        if let Some(inner) = self.scheduler.upgrade() {
            inner.release_ports(&self.ports);
        }
    }

    async fn supervise(&mut self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        let mut first = true;
        loop {
            if *stopped.borrow() {
                return;
            }
            if !first && !self.reclaim_ports() {
                return;
            }
            first = false;
            let child = self.command().and_then(|mut c| c.spawn());
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    let _ =
                        std::fs::write(self.dir.join("output.log"), format!("cannot start: {e}\n"));
                    if !self.update(|s| s.running = false) {
                        return;
                    }
                    if self.wait_or_stop(&mut stopped, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let pgid = child.id();
            let started = Instant::now();
            // Recorded for a later scheduler on this directory (see `clean_up`).
            if let Some(pid) = pgid
                && let Some(t) = start_time(pid)
            {
                let _ = std::fs::write(self.dir.join(PID_FILE), format!("{pid} {t}\n"));
            }
            // Running once it listens on its ports (without health checks, which say when it
            // is ready themselves): no route sends a request to it before.
            let early = {
                let ready = self.until_listening();
                tokio::pin!(ready);
                tokio::select! {
                    () = &mut ready => None,
                    _ = child.wait() => Some(Ended::Exited),
                    changed = stopped.changed() => Some(self.why_stopped(changed.is_err())),
                }
            };
            let exited = match early {
                Some(ended) => ended,
                None => {
                    if !self.update(|s| s.running = true) {
                        if !self.letting_go()
                            && let Some(pgid) = pgid
                        {
                            signal_group(pgid, "KILL").await;
                        }
                        return;
                    }
                    let health = self.health_loop();
                    tokio::pin!(health);
                    tokio::select! {
                        _ = child.wait() => Ended::Exited,
                        changed = stopped.changed() => self.why_stopped(changed.is_err()),
                        () = &mut health => Ended::Stop,
                    }
                }
            };
            match exited {
                Ended::LetGo => return,
                Ended::Stop => {
                    // Stop: TERM to the group, KILL after 5 s.
                    if let Some(pgid) = pgid {
                        signal_group(pgid, "TERM").await;
                        if tokio::time::timeout(Duration::from_secs(5), child.wait())
                            .await
                            .is_err()
                        {
                            signal_group(pgid, "KILL").await;
                            let _ = child.wait().await;
                        }
                    }
                    let _ = std::fs::remove_file(self.dir.join(PID_FILE));
                    return;
                }
                Ended::Exited => {
                    if let Some(pgid) = pgid {
                        // Leftover children of the command.
                        signal_group(pgid, "KILL").await;
                    }
                    let _ = std::fs::remove_file(self.dir.join(PID_FILE));
                    let unhealthy = (!self.spec.health_checks.is_empty()).then_some(false);
                    if !self.update(|s| {
                        s.running = false;
                        s.healthy = unhealthy;
                    }) {
                        return;
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_secs(1);
                    }
                    if self.wait_or_stop(&mut stopped, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Returns once the instance's first port (`$PORT`) accepts connections on 127.0.0.1; at
    /// once for an instance with health checks (they tell when it is ready) or without ports;
    /// after [`LISTEN_WAIT`] at most (a service that never listens still runs, as before).
    async fn until_listening(&self) {
        let Some(port) = self.ports.values().next().copied() else {
            return;
        };
        if !self.spec.health_checks.is_empty() {
            return;
        }
        let deadline = Instant::now() + LISTEN_WAIT;
        while Instant::now() < deadline
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sleeps for `d`; `true` when told to stop meanwhile.
    async fn wait_or_stop(&self, stopped: &mut watch::Receiver<bool>, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => *stopped.borrow(),
            _ = stopped.changed() => true,
        }
    }

    /// Runs the health checks forever (never completes unless the instance is gone).
    async fn health_loop(&self) {
        let Some(first) = self.spec.health_checks.first() else {
            return std::future::pending().await;
        };
        tokio::time::sleep(Duration::from_secs(
            first.initial_delay.clamp(0, 3600) as u64
        ))
        .await;
        let mut failures: Vec<i64> = vec![0; self.spec.health_checks.len()];
        loop {
            let mut healthy = true;
            for (h, failed) in self.spec.health_checks.iter().zip(failures.iter_mut()) {
                let Some(port) = self.ports.get(&h.port) else {
                    continue;
                };
                match super::probe::check(h, "127.0.0.1", *port, "vamp-local-scheduler").await {
                    Ok(()) => *failed = 0,
                    Err(_) => *failed += 1,
                }
                if *failed >= h.failures.max(1) {
                    healthy = false;
                }
            }
            if !self.update(|s| s.healthy = Some(healthy)) {
                return std::future::pending().await;
            }
            let interval = self
                .spec
                .health_checks
                .iter()
                .map(|h| h.interval.clamp(1, 3600))
                .min()
                .unwrap_or(10);
            tokio::time::sleep(Duration::from_secs(interval as u64)).await;
        }
    }
}

impl fmt::Debug for LocalScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalScheduler")
            .field("workdir", &self.inner.workdir)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for LocalScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

impl LocalScheduler {
    /// The work directory.
    pub fn workdir(&self) -> &Path {
        &self.inner.workdir
    }
}

#[async_trait]
impl ContainerScheduler for LocalScheduler {
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<(), Error> {
        let spec = spec.normalized()?;
        self.check_spec(&spec)?;
        // Directories and ports are made ready without the state lock; the lock is held only
        // to swap the instances in.
        let first = {
            let mut state = self.state();
            if let Some(existing) = state.services.get(&spec.id)
                && existing.spec == spec
                && !opts.force
            {
                return Ok(());
            }
            Self::reserve_numbers(&mut state, spec.instances)
        };
        let prepared = self
            .prepare_off_runtime(&spec, first, spec.instances)
            .await?;
        let mut state = self.state();
        let state = &mut *state;
        let instances = self.start(&spec, prepared);
        match state.services.get_mut(&spec.id) {
            Some(service) => {
                // Replace every instance with one of the new spec.
                for old in std::mem::replace(&mut service.instances, instances) {
                    let _ = old.stop.send(true);
                }
                service.spec = spec;
                let snapshot = service.snapshot();
                state.emit(SchedulerEvent::Updated(snapshot));
            }
            None => {
                let service = Service {
                    spec: spec.clone(),
                    instances,
                };
                let snapshot = service.snapshot();
                state.services.insert(spec.id.clone(), service);
                state.emit(SchedulerEvent::Deployed(snapshot));
            }
        }
        Ok(())
    }

    async fn undeploy(&self, id: &ServiceId) -> Result<bool, Error> {
        let mut state = self.state();
        for run in state.runs.get(id).into_iter().flatten() {
            let _ = run.stop.send(true);
        }
        let Some(service) = state.services.remove(id) else {
            return Ok(false);
        };
        for i in &service.instances {
            let _ = i.stop.send(true);
        }
        state.emit(SchedulerEvent::Undeployed(id.clone()));
        Ok(true)
    }

    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<(), Error> {
        let not_found = || Error::NotFound {
            backend: self.inner.label.clone(),
            kind: "service".into(),
            name: id.to_string(),
        };
        let (spec, first, more) = {
            let mut state = self.state();
            let Some(service) = state.services.get(id) else {
                return Err(not_found());
            };
            let mut spec = service.spec.clone();
            spec.instances = instances;
            self.check_spec(&spec)?;
            let have = u32::try_from(service.instances.len()).unwrap_or(u32::MAX);
            let more = instances.saturating_sub(have);
            (spec, Self::reserve_numbers(&mut state, more), more)
        };
        let prepared = self.prepare_off_runtime(&spec, first, more).await?;
        let mut state = self.state();
        let state = &mut *state;
        let Some(service) = state.services.get_mut(id) else {
            for p in &prepared {
                self.inner.release_ports(&p.ports);
                let _ = std::fs::remove_dir_all(&p.dir);
            }
            return Err(not_found());
        };
        let want = instances as usize;
        let missing = want.saturating_sub(service.instances.len());
        let (start, spare) = if prepared.len() > missing {
            let mut prepared = prepared;
            let spare = prepared.split_off(missing);
            (prepared, spare)
        } else {
            (prepared, Vec::new())
        };
        for p in &spare {
            self.inner.release_ports(&p.ports);
            let _ = std::fs::remove_dir_all(&p.dir);
        }
        let added = self.start(&service.spec, start);
        service.instances.extend(added);
        while service.instances.len() > want {
            if let Some(i) = service.instances.pop() {
                let _ = i.stop.send(true);
            }
        }
        service.spec.instances = instances;
        let snapshot = service.snapshot();
        state.emit(SchedulerEvent::InstancesChanged(snapshot));
        Ok(())
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>, Error> {
        Ok(self.state().services.get(id).map(Service::snapshot))
    }

    async fn services(&self) -> Result<Vec<DeployedService>, Error> {
        Ok(self
            .state()
            .services
            .values()
            .map(Service::snapshot)
            .collect())
    }

    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent, Error>> {
        let (tx, rx) = mpsc::unbounded();
        self.state().subscribers.push(tx);
        rx.boxed()
    }

    /// Runs `spec` once as a process of its own (not restarted), in a directory that is
    /// removed, and with ports that are given back, when it exits.
    async fn run_once(&self, spec: ServiceSpec) -> Result<(), Error> {
        let spec = spec.normalized()?.with_instances(1);
        self.check_spec(&spec)?;
        let first = Self::reserve_numbers(&mut self.state(), 1);
        let prepared = self
            .prepare_off_runtime(&spec, first, 1)
            .await?
            .pop()
            .expect("one instance prepared");
        let runner = Supervisor {
            scheduler: Arc::downgrade(&self.inner),
            inherit: self.inner.inherit.clone(),
            id: spec.id.clone(),
            name: prepared.name,
            dir: prepared.dir,
            spec,
            ports: prepared.ports,
            // A run is the workflow loop's job: it goes with the scheduler.
            keep: false,
        };
        let mut child = match runner.command().and_then(|mut c| c.spawn()) {
            Ok(c) => c,
            Err(e) => {
                self.inner.release_ports(&runner.ports);
                let _ = std::fs::remove_dir_all(&runner.dir);
                return Err(Error::Backend {
                    backend: self.inner.label.clone(),
                    source: Box::new(e),
                });
            }
        };
        if let Some(pid) = child.id()
            && let Some(t) = start_time(pid)
        {
            let _ = std::fs::write(runner.dir.join(PID_FILE), format!("{pid} {t}\n"));
        }
        let pgid = child.id();
        let (stop, mut stopped) = watch::channel(false);
        let id = runner.id.clone();
        let name = runner.name.clone();
        self.state().runs.entry(id.clone()).or_default().push(Run {
            info: RunInfo::new(name.clone(), vamp_core::time::now_millis()),
            stop,
        });
        tokio::spawn(async move {
            tokio::select! {
                _ = child.wait() => {}
                () = async { let _ = stopped.wait_for(|s| *s).await; } => {
                    if let Some(pgid) = pgid {
                        signal_group(pgid, "KILL").await;
                    }
                    let _ = child.wait().await;
                }
            }
            // Leftover children of the command.
            if let Some(pgid) = pgid {
                signal_group(pgid, "KILL").await;
            }
            if let Some(inner) = runner.scheduler.upgrade() {
                let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(runs) = state.runs.get_mut(&id) {
                    runs.retain(|r| r.info.name != name);
                    if runs.is_empty() {
                        state.runs.remove(&id);
                    }
                }
            }
            if let Some(inner) = runner.scheduler.upgrade() {
                inner.release_ports(&runner.ports);
            }
            let _ = std::fs::remove_dir_all(&runner.dir);
        });
        Ok(())
    }

    async fn runs(&self, id: &ServiceId) -> Result<Vec<RunInfo>, Error> {
        Ok(self
            .state()
            .runs
            .get(id)
            .map(|runs| runs.iter().map(|r| r.info.clone()).collect())
            .unwrap_or_default())
    }

    async fn stop_run(&self, id: &ServiceId, name: &str) -> Result<bool, Error> {
        let state = self.state();
        let run = state
            .runs
            .get(id)
            .and_then(|runs| runs.iter().find(|r| r.info.name == name));
        Ok(run.is_some_and(|r| r.stop.send(true).is_ok()))
    }

    fn capabilities(&self) -> SchedulerCapabilities {
        let mut caps = SchedulerCapabilities::default();
        caps.scale = true;
        caps.health_checks = true;
        caps.instance_ports = true;
        caps.watch = true;
        caps.reachable_instances = true;
        caps.deployable_types = Some(&DEPLOYABLE_TYPES);
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_the_path() {
        assert!(on_path("sh"));
        assert!(!on_path("vamp-no-such-program-on-any-path"));
    }

    #[test]
    fn port_names_become_environment_names() {
        assert_eq!(env_name("webport"), "WEBPORT");
        assert_eq!(env_name("admin-port.1"), "ADMIN_PORT_1");
    }
}
