//! The gateway agent as a root process beside HAProxy must survive: hostile configuration
//! values, a planted or shared work directory, a hung `haproxy -c`, HAProxy killed again and
//! again, a restart that fails and then works, and the agent itself killed and restarted
//! beside its running HAProxy. Real HAProxy, real processes; no sleeps as synchronisation.
#![cfg(feature = "agent")]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::sync::watch;
use vamp_core::kv::{DynKeyValueStore, KeyPath, KeyValueStoreExt};
use vamp_core::memory::{InMemoryKv, InMemoryMetrics};
use vamp_core::metrics::EventStore;
use vamp_haproxy::agent::{AgentError, AgentOptions, AgentStatus, GatewayAgent};
use vamp_haproxy::{RenderOptions, render};

fn key() -> KeyPath {
    KeyPath::parse("/vamp/hardening/gateways/haproxy/1.7/configuration").unwrap()
}

/// One route to `backend` on `port`, sockets in `dir`.
fn config(port: u16, dir: &Path, backend: &HttpBackend) -> String {
    let g = gateway(&format!(
        "name: hardening/{port}\nport: {port}\nroutes:\n  a: {{weight: 100%}}\n"
    ));
    let g = with_targets(g, 0, vec![backend.target("a")]);
    let opts = RenderOptions::default()
        .with_socket_dir(dir.to_str().unwrap())
        .with_bind_address("127.0.0.1");
    render(&[g], &opts).unwrap().render()
}

/// A shell script standing in for `haproxy`: logs every call's arguments to `<dir>/calls`, hangs
/// on `-c` while `<dir>/hang` exists, and otherwise runs the real HAProxy.
fn wrapper(dir: &Path, real: &Path) -> PathBuf {
    let path = dir.join("haproxy-wrapper.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$@\" >> {calls}\nif [ \"$1\" = -c ] && [ -e {hang} ]; then exec sleep 1000; fi\nexec {real} \"$@\"\n",
            calls = dir.join("calls").display(),
            hang = dir.join("hang").display(),
            real = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("calls"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

struct Agent {
    status: watch::Receiver<AgentStatus>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl Agent {
    fn start(
        kv: Arc<DynKeyValueStore>,
        options: AgentOptions,
        events: Arc<InMemoryMetrics>,
    ) -> Self {
        Self::run(GatewayAgent::new(kv, options).with_events(events))
    }

    fn run(agent: GatewayAgent) -> Self {
        let status = agent.status();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Self {
            status,
            stop: Some(stop),
            task,
        }
    }

    async fn until(&mut self, what: &str, f: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let mut status = self.status.clone();
        match tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| f(s))).await {
            Ok(Ok(s)) => s.clone(),
            _ => panic!(
                "{what}: the agent did not get there: {:?}",
                *self.status.borrow()
            ),
        }
    }

    /// Stops the agent; the stop itself must not hang.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the agent stops promptly")
            .unwrap()
            .unwrap();
    }
}

/// Waits until `port` serves backend `name`.
async fn until_served(port: u16, name: &str) {
    until_served_within(port, name, Duration::from_secs(60)).await;
}

fn kill(pid: u32, signal: &str) {
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s {signal} {pid}"))
        .status();
}

/// Every dangerous section or directive, appended to a good configuration: rejected with an
/// event, and no HAProxy process (not even `haproxy -c`) is run on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_values_are_rejected_before_haproxy_sees_them() {
    let Some(real) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bin = wrapper(dir.path(), &real);
    let backend = HttpBackend::start("a");
    let port = free_port();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let events = Arc::new(InMemoryMetrics::new());
    let work = dir.path().join("agent");
    let mut agent = Agent::start(
        Arc::clone(&kv),
        AgentOptions::new(key(), &work)
            .with_haproxy_bin(&bin)
            .with_socket_dir(dir.path()),
        Arc::clone(&events),
    );
    let good = config(port, dir.path(), &backend);
    let v = kv.put(&key(), good.clone().into()).await.unwrap();
    agent
        .until("applied", |s| s.applied_version == Some(v.0))
        .await;
    until_served(port, "a").await;

    let marker = dir.path().join("pwned");
    let lua = dir.path().join("evil.lua");
    std::fs::write(
        &lua,
        format!("io.open('{}', 'w'):write('lua ran')\n", marker.display()),
    )
    .unwrap();
    let hostile = [
        format!("program evil\n  command touch {}\n", marker.display()),
        format!("global\n  lua-load {}\n", lua.display()),
        "backend x\n  option external-check\n  external-check command /usr/bin/touch\n  server s 127.0.0.1:1 check\n".to_owned(),
        "global\n  stats socket 0.0.0.0:19999 level admin\n".to_owned(),
        format!("backend x\n  server s unix@{}/stats.sock\n", work.display()),
        "frontend x\n  bind 127.0.0.1:19998\n  acl a env(HOME) -m found\n  use_backend x if a\n"
            .to_owned(),
        "frontend x\n  bind 127.0.0.1:19998\n  log-format \"$HOME\"\n".to_owned(),
        format!(
            "frontend x\n  bind unix@{} accept-proxy\n",
            dir.path().join("../elsewhere.sock").display()
        ),
        format!(
            "backend x\n  server s 127.0.0.1:1 ssl crt {}\n",
            lua.display()
        ),
        ".if defined(HOME)\n.endif\n".to_owned(),
        "backend x\n  server s 127.0.0.1:1\n\u{0}".to_owned(),
    ];
    for (i, bad) in hostile.iter().enumerate() {
        let before = calls(dir.path());
        let value = format!("{good}\n{bad}");
        let v = kv.put(&key(), value.into()).await.unwrap();
        let rejected = (i + 1) as u64;
        agent
            .until("rejected", |s| s.counts.rejected == rejected)
            .await;
        assert_eq!(
            calls(dir.path()),
            before,
            "HAProxy ran on hostile value {i}: {bad}"
        );
        let found = events
            .query(
                &vamp_core::model::EventQuery {
                    tags: vec![
                        "gateway-agent:rejected".into(),
                        format!("kv-version:{}", v.0),
                    ],
                    event_type: None,
                    timestamp: None,
                    aggregator: None,
                },
                vamp_core::persistence::ListOptions::all(),
            )
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "an event names the rejected value {i}");
    }
    assert!(!marker.exists(), "a hostile value ran code");
    until_served(port, "a").await;
    agent.stop().await;
}

/// The work directory is the agent's alone: a link, an open directory or (as root) someone
/// else's is refused, and a planted link in it is replaced, never written through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_work_directory_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    let refused = async |work: &Path| -> String {
        let agent = GatewayAgent::new(
            Arc::new(InMemoryKv::new()),
            AgentOptions::new(key(), work).with_socket_dir(&sockets),
        );
        match agent.run(async {}).await {
            Err(AgentError::Io { message, .. }) => message,
            other => panic!("{work:?}: {other:?}"),
        }
    };
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(refused(&link).await.contains("symbolic link"));
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(refused(&open).await.contains("mode 755"));
    if vamp_haproxy_is_root() {
        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        assert!(refused(&foreign).await.contains("owned by uid 65534"));
    }

    // A link planted where the candidate is written is replaced, not followed.
    let Some(bin) = haproxy() else { return };
    let work = dir.path().join("agent");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, work.join("haproxy.cfg.candidate")).unwrap();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let backend = HttpBackend::start("a");
    let port = free_port();
    std::fs::create_dir(&sockets).unwrap();
    let mut agent = Agent::start(
        Arc::clone(&kv),
        AgentOptions::new(key(), &work)
            .with_haproxy_bin(bin)
            .with_socket_dir(&sockets),
        Arc::new(InMemoryMetrics::new()),
    );
    let v = kv
        .put(&key(), config(port, &sockets, &backend).into())
        .await
        .unwrap();
    agent
        .until("applied", |s| s.applied_version == Some(v.0))
        .await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let meta = std::fs::symlink_metadata(work.join("haproxy.cfg")).unwrap();
    assert!(meta.is_file() && meta.permissions().mode() & 0o077 == 0);
    agent.stop().await;
}

fn vamp_haproxy_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `haproxy -c` that never finishes is killed at the timeout and retried with backoff; the
/// agent keeps taking values, applies the latest once checks work again, and still stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_haproxy_check_times_out_and_is_retried() {
    let Some(real) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bin = wrapper(dir.path(), &real);
    std::fs::write(dir.path().join("hang"), "").unwrap();
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let port = free_port();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let mut agent = Agent::start(
        Arc::clone(&kv),
        AgentOptions::new(key(), dir.path().join("agent"))
            .with_haproxy_bin(&bin)
            .with_socket_dir(dir.path())
            .with_timeout(Duration::from_secs(1))
            .with_backoff(Duration::from_millis(100), Duration::from_millis(400)),
        Arc::new(InMemoryMetrics::new()),
    );
    kv.put(&key(), config(port, dir.path(), &a).into())
        .await
        .unwrap();
    let s = agent.until("retried", |s| s.retries >= 2).await;
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("did not finish"),
        "{s:?}"
    );
    assert_eq!(s.counts.rejected, 0, "a hung check is not a verdict");
    // A newer value while checks hang: the latest wins once they work.
    let v2 = kv
        .put(&key(), config(port, dir.path(), &b).into())
        .await
        .unwrap();
    agent.until("retried again", |s| s.retries >= 3).await;
    std::fs::remove_file(dir.path().join("hang")).unwrap();
    agent
        .until("applied", |s| s.applied_version == Some(v2.0))
        .await;
    until_served(port, "b").await;
    agent.stop().await;
}

/// HAProxy killed again and again comes back each time; a restart that fails (its port taken)
/// is retried with backoff until it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn haproxy_killed_repeatedly_comes_back_and_a_failed_restart_recovers() {
    let Some(bin) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let backend = HttpBackend::start("a");
    let port = free_port();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let mut agent = Agent::start(
        Arc::clone(&kv),
        AgentOptions::new(key(), dir.path().join("agent"))
            .with_haproxy_bin(bin)
            .with_socket_dir(dir.path())
            .with_backoff(Duration::from_millis(50), Duration::from_millis(500)),
        Arc::new(InMemoryMetrics::new()),
    );
    let v = kv
        .put(&key(), config(port, dir.path(), &backend).into())
        .await
        .unwrap();
    agent
        .until("applied", |s| s.applied_version == Some(v.0))
        .await;
    until_served(port, "a").await;
    for round in 1..=4u64 {
        let s = agent.until("running", |s| s.haproxy_pid.is_some()).await;
        kill(s.haproxy_pid.unwrap(), "KILL");
        agent
            .until("restarted", |s| s.starts == round + 1 && s.ready)
            .await;
        until_served(port, "a").await;
    }
    // Kill it while its port is taken: the restart fails, and is tried again.
    let s = agent.until("running", |s| s.haproxy_pid.is_some()).await;
    let starts = s.starts;
    let pid = s.haproxy_pid.unwrap();
    kill(pid, "KILL");
    agent.until("noticed", |s| !s.ready).await;
    let squatter = loop {
        // The dead master's workers may hold the port for a moment.
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    agent
        .until("a failed restart", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("exited at start"))
        })
        .await;
    assert_eq!(agent.status.borrow().starts, starts, "no start succeeded");
    drop(squatter);
    agent
        .until("recovered", |s| s.starts == starts + 1 && s.ready)
        .await;
    until_served(port, "a").await;
    agent.stop().await;
}

/// The helper process of the adoption test: an agent on an in-memory store holding the value
/// of `VAMP_ADOPT_CONFIG`, until killed. Run only by that test, as a separate process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of an_agent_killed_beside_its_haproxy_adopts_it"]
async fn adoption_helper_process() {
    let (Ok(dir), Ok(config), Ok(health), Some(bin)) = (
        std::env::var("VAMP_ADOPT_DIR"),
        std::env::var("VAMP_ADOPT_CONFIG"),
        std::env::var("VAMP_ADOPT_HEALTH"),
        haproxy(),
    ) else {
        return;
    };
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    kv.put(&key(), std::fs::read(config).unwrap().into())
        .await
        .unwrap();
    let dir = PathBuf::from(dir);
    let agent = GatewayAgent::new(
        kv,
        AgentOptions::new(key(), dir.join("agent"))
            .with_haproxy_bin(bin)
            .with_socket_dir(&dir)
            .with_health(health.parse().unwrap()),
    );
    agent.run(std::future::pending()).await.unwrap();
}

fn agent_status(port: u16) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    serde_json::from_str(out.split("\r\n\r\n").nth(1)?).ok()
}

/// The agent is killed (SIGKILL) while its HAProxy serves: HAProxy keeps serving, and the next
/// agent adopts that master instead of starting a second one, then applies its value to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_beside_its_haproxy_adopts_it() {
    if haproxy().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = HttpBackend::start("a");
    let port = free_port();
    let config_file = dir.path().join("value");
    std::fs::write(&config_file, config(port, dir.path(), &backend)).unwrap();
    let spawn = |health: u16| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "adoption_helper_process",
                "--ignored",
                "--nocapture",
            ])
            .env("VAMP_ADOPT_DIR", dir.path())
            .env("VAMP_ADOPT_CONFIG", &config_file)
            .env("VAMP_ADOPT_HEALTH", format!("127.0.0.1:{health}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_status = async |health: u16, what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = tokio::task::spawn_blocking(move || agent_status(health))
                .await
                .unwrap()
                && f(&s)
            {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let health1 = free_port();
    let mut first = spawn(health1);
    let s = wait_status(health1, "first agent applies", &|s| s["ready"] == true).await;
    let master = s["haproxy"]["pid"].as_u64().unwrap() as u32;
    until_served(port, "a").await;
    first.kill().unwrap();
    first.wait().unwrap();
    // HAProxy outlives the agent and keeps serving.
    until_served(port, "a").await;

    let health2 = free_port();
    let mut second = spawn(health2);
    let s = wait_status(health2, "second agent adopts and applies", &|s| {
        s["haproxy"]["adopted"] == true && s["applied_version"].is_u64()
    })
    .await;
    assert_eq!(s["haproxy"]["pid"].as_u64(), Some(u64::from(master)), "{s}");
    assert_eq!(
        s["updates"]["reload"], 1,
        "its value reloaded the adopted master: {s}"
    );
    until_served(port, "a").await;
    // One master only: every HAProxy of this configuration is the master or its workers.
    let cfg = dir.path().join("agent").join("haproxy.cfg");
    let masters: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|c| *c == 0).collect();
            args.iter()
                .any(|a| *a == cfg.as_os_str().as_encoded_bytes())
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|st| {
                        st.rsplit_once(')')
                            .map(|(_, r)| r.split_whitespace().nth(1).map(str::to_owned))
                    })
                    .flatten()
                    .and_then(|ppid| ppid.parse::<u32>().ok())
                    .is_some_and(|ppid| ppid != master)
        })
        .collect();
    assert_eq!(masters, vec![master], "one HAProxy master");
    second.kill().unwrap();
    second.wait().unwrap();
    kill(master, "TERM");
}

/// Request records come only from the HAProxy the agent runs: datagrams from another local
/// sender, with HAProxy's default tag or a guessed one, are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_log_datagrams_are_not_counted() {
    use vamp_core::metrics::MetricsStore;
    let Some(bin) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let backend = HttpBackend::start("a");
    let port = free_port();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let metrics = Arc::new(InMemoryMetrics::new());
    let agent = GatewayAgent::new(
        Arc::clone(&kv),
        AgentOptions::new(key(), dir.path().join("agent"))
            .with_haproxy_bin(bin)
            .with_socket_dir(dir.path())
            .with_syslog("127.0.0.1:0".parse().unwrap()),
    )
    .with_metrics(Arc::clone(&metrics) as Arc<vamp_core::metrics::DynMetricsStore>);
    let mut agent = Agent::run(agent);
    let text = config(port, dir.path(), &backend);
    let frontend = text
        .lines()
        .zip(text.lines().skip(1))
        .find(|(_, next)| next.trim() == format!("bind 127.0.0.1:{port}"))
        .and_then(|(line, _)| line.strip_prefix("frontend "))
        .unwrap()
        .to_owned();
    let v = kv.put(&key(), text.into()).await.unwrap();
    let s = agent
        .until("applied", |s| s.applied_version == Some(v.0))
        .await;
    let syslog = s.syslog.unwrap();
    let count = async || {
        metrics
            .request_metrics(&frontend, Duration::from_secs(600))
            .await
            .unwrap()
            .requests
    };
    let until_count = async |n: u64| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while count().await < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} records",
                count().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    until_served(port, "a").await;
    let served = count().await.max(1);
    until_count(served).await;
    let forger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for tag in ["haproxy", "vga-00000000000000000000000000000000", "vga"] {
        let line = format!(
            "<134>Nov 29 08:00:00 {tag}[1]: {{\"ci\":\"127.0.0.1\",\"cp\":1,\"t\":\"29/Nov/2026:08:00:00.000\",\"ft\":\"{frontend}\",\"b\":\"x\",\"s\":\"y\",\"Tq\":0,\"Tw\":0,\"Tc\":0,\"Tr\":0,\"Tt\":1,\"ST\":500,\"B\":0,\"CC\":\"-\",\"CS\":\"-\",\"tsc\":\"----\",\"ac\":1,\"fc\":1,\"bc\":1,\"sc\":1,\"rc\":0,\"sq\":0,\"bq\":0,\"hr\":\"\",\"hs\":\"\",\"r\":\"GET / HTTP/1.1\"}}"
        );
        for _ in 0..50 {
            forger.send_to(line.as_bytes(), syslog).unwrap();
        }
    }
    // One more real request, sent after the forgeries: counted, and nothing else.
    let before = count().await;
    let _ = tokio::task::spawn_blocking(move || get(port, "/", &[])).await;
    until_count(before + 1).await;
    let m = metrics
        .request_metrics(&frontend, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(m.requests, before + 1);
    assert_eq!(m.status.server_error, 0, "no forged 500 was counted");
    agent.stop().await;
}

/// The runtime API's answer to `get weight <backend>/<server>`.
fn live_weight(stats: &Path, backend: &str, server: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(stats).ok()?;
    c.write_all(format!("get weight {backend}/{server}\n").as_bytes())
        .ok()?;
    c.shutdown(std::net::Shutdown::Write).ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    out.split_whitespace().next()?.parse().ok()
}

/// A weight change that HAProxy takes for one backend and refuses for another (static-rr
/// accepts only 0% or 100% at run time) leaves no mix: the first is put back before the
/// reload, and while the reload cannot finish (the master is stopped) the old weights serve;
/// the timed-out reload is retried and applies the new configuration once the master answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partly_refused_weight_change_leaves_no_mix_and_a_reload_timeout_is_retried() {
    let Some(bin) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let (port_a, port_b) = (free_port(), free_port());
    let value = |wa: u16, wb: u16| {
        format!(
            "frontend fa\n  bind 127.0.0.1:{port_a}\n  mode http\n  default_backend ba\n\nfrontend fb\n  bind 127.0.0.1:{port_b}\n  mode http\n  default_backend bb\n\nbackend ba\n  mode http\n  balance roundrobin\n  server sa 127.0.0.1:{} weight {wa} check\n\nbackend bb\n  mode http\n  balance static-rr\n  server sb 127.0.0.1:{} weight {wb} check\n",
            a.port, b.port
        )
    };
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let work = dir.path().join("agent");
    let mut agent = Agent::start(
        Arc::clone(&kv),
        AgentOptions::new(key(), &work)
            .with_haproxy_bin(bin)
            .with_socket_dir(dir.path())
            .with_timeout(Duration::from_secs(1))
            .with_backoff(Duration::from_millis(100), Duration::from_millis(300)),
        Arc::new(InMemoryMetrics::new()),
    );
    let v1 = kv.put(&key(), value(100, 100).into()).await.unwrap();
    let s = agent
        .until("applied", |s| s.applied_version == Some(v1.0))
        .await;
    let stats = work.join("stats.sock");
    assert_eq!(live_weight(&stats, "ba", "sa"), Some(100));
    let master = s.haproxy_pid.unwrap();
    kill(master, "STOP");
    let v2 = kv.put(&key(), value(50, 20).into()).await.unwrap();
    let s = agent
        .until("the reload timed out", |s| s.retries >= 1)
        .await;
    assert_eq!(s.counts.rejected, 0, "{s:?}");
    assert_eq!(
        (
            live_weight(&stats, "ba", "sa"),
            live_weight(&stats, "bb", "sb")
        ),
        (Some(100), Some(100)),
        "the old weights serve, not a mix"
    );
    kill(master, "CONT");
    let s = agent
        .until("applied after the retry", |s| {
            s.applied_version == Some(v2.0)
        })
        .await;
    assert_eq!((s.counts.reload, s.counts.dynamic), (2, 0), "{s:?}");
    until_served(port_a, "a").await;
    // The new worker runs the new weights (its stats socket is the same path).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while live_weight(&stats, "ba", "sa") != Some(50) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new weights never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live_weight(&stats, "bb", "sb"), Some(20));
    agent.stop().await;
}

/// A gateway whose port another process holds does not stop the others: it is left out,
/// reported (status and event), and applied once the port is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_taken_gateway_port_does_not_stop_the_other_gateways() {
    let Some(bin) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let (port_a, port_b) = (free_port(), free_port());
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port_b)).unwrap();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let events = Arc::new(InMemoryMetrics::new());
    let mut agent = Agent::start(
        Arc::clone(&kv),
        AgentOptions::new(key(), dir.path().join("agent"))
            .with_haproxy_bin(bin)
            .with_socket_dir(dir.path())
            .with_backoff(Duration::from_millis(100), Duration::from_millis(300)),
        Arc::clone(&events),
    );
    let value = format!(
        "{}\n{}",
        config(port_a, dir.path(), &a),
        config(port_b, dir.path(), &b)
    );
    let v = kv.put(&key(), value.into()).await.unwrap();
    let s = agent
        .until("applied without b", |s| s.applied_version == Some(v.0))
        .await;
    assert_eq!(
        s.unavailable,
        [format!("hardening/{port_b} (127.0.0.1:{port_b})")],
        "{s:?}"
    );
    assert_eq!(s.counts.rejected, 0);
    until_served(port_a, "a").await;
    let found = events
        .query(
            &vamp_core::model::EventQuery {
                tags: vec![format!("gateways:hardening/{port_b}")],
                event_type: None,
                timestamp: None,
                aggregator: None,
            },
            vamp_core::persistence::ListOptions::all(),
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "the gateway's port is reported once");
    drop(squatter);
    agent
        .until("b applied once its port is free", |s| {
            s.unavailable.is_empty()
        })
        .await;
    until_served(port_b, "b").await;
    until_served(port_a, "a").await;
    agent.stop().await;
}

/// The file HAProxy loads is exactly the one validated: a candidate changed after `haproxy -c`
/// passed (here by a wrapper that appends to it once the check is done) is not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_changed_after_validation_is_not_applied() {
    let Some(real) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("haproxy-swap.sh");
    let marker = "backend swapped_after_validation";
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -c ]; then {real} \"$@\" || exit $?; for f; do :; done; printf '\\n{marker}\\n' >> \"$f\"; exit 0; fi\nexec {real} \"$@\"\n",
            real = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let backend = HttpBackend::start("a");
    let port = free_port();
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let work = dir.path().join("agent");
    let mut agent = Agent::start(
        Arc::clone(&kv),
        AgentOptions::new(key(), &work)
            .with_haproxy_bin(&bin)
            .with_socket_dir(dir.path())
            .with_backoff(Duration::from_millis(100), Duration::from_millis(300)),
        Arc::new(InMemoryMetrics::new()),
    );
    kv.put(&key(), config(port, dir.path(), &backend).into())
        .await
        .unwrap();
    let s = agent
        .until("the swap is noticed", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("changed between validation and installation"))
        })
        .await;
    assert_eq!(s.applied_version, None, "{s:?}");
    assert!(!s.ready, "HAProxy never started on a swapped file: {s:?}");
    let installed = std::fs::read_to_string(work.join("haproxy.cfg")).unwrap_or_default();
    assert!(!installed.contains(marker), "{installed}");
    agent.stop().await;
}
