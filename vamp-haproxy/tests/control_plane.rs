//! The control plane end to end on real parts: a blueprint of two clusters (a frontend that
//! reaches its backend through `$backend.host:$backend.ports.api`) merged into a deployment in
//! SQLite, deployed by the reconcile loop on the local-process scheduler, its gateways pushed
//! through the in-memory key-value store to the gateway agent and a real HAProxy. Then a second
//! version merged in with a measured weighted split, the first sliced out, and everything
//! undeployed: every process stopped and the gateways gone.
#![cfg(feature = "_ops-tests")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{free_port, haproxy};
use vamp_backends::persistence::sql::{SqlOptions, SqlPersistence};
use vamp_backends::scheduler::local::LocalScheduler;
use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::kv::{DynKeyValueStore, keys};
use vamp_core::memory::InMemoryKv;
use vamp_core::model::{ArtifactKind, DefaultBlueprint, Deployment};
use vamp_core::ops::controller::{Controller, ControllerOptions, GatewaySink};
use vamp_core::ops::deploy::{Artifacts, MergeOptions, merge, slice};
use vamp_core::persistence::{DynPersistenceStore, PersistenceExt};
use vamp_core::scheduler::{ContainerScheduler, DynContainerScheduler};
use vamp_haproxy::RenderOptions;
use vamp_haproxy::agent::{AgentOptions, GatewayAgent};
use vamp_haproxy::driver::{GatewayDriver, Marshaller};

/// An HTTP service in Python: `backend` answers its name and version; `frontend` asks the
/// backend at `$BACKEND` and answers with both.
const SERVICE: &str = r#"
import http.server, os, sys, urllib.request
role, version = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{role} {version}"
        if role == "frontend":
            try:
                with urllib.request.urlopen(os.environ["BACKEND"] + "/", timeout=5) as r:
                    body += " -> " + r.read().decode()
            except Exception as e:
                body += f" -> error {e}"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Backend", f"{role}-{version}")
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn blueprint(yaml: &str) -> DefaultBlueprint {
    match read_str(yaml, Some(ArtifactKind::Blueprint))
        .unwrap()
        .remove(0)
    {
        AnyArtifact::Blueprint(b) => b,
        other => panic!("{other:?}"),
    }
}

fn frontend(version: &str, script: &str) -> String {
    format!(
        "      - breed:
          name: 'frontend:{version}'
          deployable: {{type: command, definition: 'python3 {script} frontend {version}'}}
          ports: {{web: 8080/http}}
          environment_variables:
            BACKEND: http://$backend.host:$backend.ports.api
          dependencies: {{backend: 'backend:1.0'}}
"
    )
}

fn shop(gateway_port: u16, script: &str, frontends: &[(&str, u8)]) -> String {
    let mut y = format!(
        "name: shop
gateways:
  {gateway_port}: frontend/web
clusters:
  frontend:
    gateways:
      web:
        routes:
"
    );
    for (v, w) in frontends {
        y.push_str(&format!("          'frontend:{v}': {{weight: {w}%}}\n"));
    }
    y.push_str("    services:\n");
    for (v, _) in frontends {
        y.push_str(&frontend(v, script));
    }
    y.push_str(&format!(
        "  backend:
    breed:
      name: 'backend:1.0'
      deployable: {{type: command, definition: 'python3 {script} backend 1.0'}}
      ports: {{api: 9090/http}}
"
    ));
    y
}

struct Plane {
    store: Arc<DynPersistenceStore>,
    scheduler: Arc<LocalScheduler>,
    controller: Arc<Controller>,
    now: fn() -> i64,
}

impl Plane {
    async fn apply(&self, yaml: &str) {
        let existing = self.store.get::<Deployment>("shop").await.unwrap();
        let others: Vec<vamp_core::model::Gateway> = Vec::new();
        let m = merge(
            existing.as_ref().map(|v| &v.value),
            "shop",
            &blueprint(yaml),
            &Artifacts::new().with_gateways(&others),
            // Each test of this file its own range: two HAProxies on one port share it.
            &MergeOptions::new((self.now)()).with_port_range(25000, 25499),
        )
        .unwrap();
        match existing {
            Some(v) => self.store.update(&m.deployment, v.version).await.unwrap(),
            None => self.store.create(&m.deployment).await.unwrap(),
        };
    }

    async fn slice(&self, yaml: &str) {
        let existing = self.store.get::<Deployment>("shop").await.unwrap().unwrap();
        let sliced = slice(&existing.value, &blueprint(yaml), (self.now)()).unwrap();
        self.store.update(&sliced, existing.version).await.unwrap();
    }

    /// Runs passes until `done` holds (bounded).
    async fn until(&self, what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            self.controller.tick().await.unwrap();
            if done().await {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The body of a 200 answer on `port`, `None` for anything else (refused, reset, an error).
fn body(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.split_whitespace()
        .nth(1)
        .filter(|code| *code == "200")
        .map(|_| body.to_owned())
}

async fn bodies(port: u16, n: usize) -> Vec<String> {
    tokio::task::spawn_blocking(move || (0..n).filter_map(|_| body(port)).collect())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blueprint_is_deployed_routed_canaried_sliced_and_undeployed() {
    let Some(haproxy_bin) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("service.py");
    std::fs::write(&script, SERVICE).unwrap();
    let script = script.display().to_string();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();

    // The parts: SQLite, local processes, an in-memory KV store, the driver and the agent.
    let store: Arc<DynPersistenceStore> = Arc::new(
        SqlPersistence::connect(
            &format!("sqlite://{}", dir.path().join("vamp.db").display()),
            SqlOptions::default(),
        )
        .await
        .unwrap(),
    );
    let scheduler = Arc::new(LocalScheduler::new(dir.path().join("services")).unwrap());
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let render = RenderOptions::default()
        .with_socket_dir(sockets.to_str().unwrap())
        .with_bind_address("127.0.0.1");
    let driver = Arc::new(GatewayDriver::new(
        Arc::clone(&kv),
        "default",
        vec![Marshaller::new("1.7").with_options(render)],
    ));
    let agent = GatewayAgent::new(
        Arc::clone(&kv),
        AgentOptions::new(
            keys::haproxy_configuration("default", "1.7").unwrap(),
            dir.path().join("agent"),
        )
        .with_haproxy_bin(haproxy_bin)
        .with_socket_dir(&sockets),
    );
    let mut agent_status = agent.status();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async {
        let _ = agent_stopped.await;
    }));
    let mut options = ControllerOptions::default();
    options.reconcile.redeploy_after_ms = 60_000;
    let controller = Arc::new(
        Controller::new(
            Arc::clone(&store),
            Arc::clone(&scheduler) as Arc<DynContainerScheduler>,
            options,
        )
        .with_gateways(driver as Arc<dyn GatewaySink>),
    );
    let plane = Plane {
        store: Arc::clone(&store),
        scheduler: Arc::clone(&scheduler),
        controller,
        now: vamp_core::time::now_millis,
    };
    let port = free_port();

    // 1. Deploy: the frontend answers through the deployment's gateway and reaches the backend.
    plane.apply(&shop(port, &script, &[("1.0", 100)])).await;
    plane
        .until("frontend 1.0 served through its gateway", async || {
            body(port).as_deref() == Some("frontend 1.0 -> backend 1.0")
        })
        .await;
    let d = store
        .get::<Deployment>("shop")
        .await
        .unwrap()
        .unwrap()
        .value;
    for c in &d.clusters {
        assert!(
            vamp_core::ops::status::is_deployed(&c.services[0].status),
            "{}: {:?}",
            c.name,
            c.services[0].status
        );
    }

    // 2. A second version at 50%: the split is measured from real traffic.
    plane
        .apply(&shop(port, &script, &[("1.0", 50), ("1.1", 50)]))
        .await;
    plane
        .until("both versions answer", async || {
            let seen = bodies(port, 20).await;
            seen.iter().any(|b| b.starts_with("frontend 1.0"))
                && seen.iter().any(|b| b.starts_with("frontend 1.1"))
        })
        .await;
    let seen = bodies(port, 400).await;
    assert_eq!(seen.len(), 400, "every request answered");
    let v11 = seen
        .iter()
        .filter(|b| b.starts_with("frontend 1.1"))
        .count();
    assert!(
        (120..=280).contains(&v11),
        "a 50/50 split, measured: {v11} of 400 on 1.1"
    );
    assert!(seen.iter().all(|b| b.ends_with("-> backend 1.0")));

    // 3. All traffic to 1.1, then 1.0 sliced out: only 1.1 answers, 1.0's processes stop.
    plane
        .apply(&shop(port, &script, &[("1.0", 0), ("1.1", 100)]))
        .await;
    plane
        .slice("name: shop\nclusters:\n  frontend:\n    breed: 'frontend:1.0'\n")
        .await;
    plane
        .until("1.0 undeployed", async || {
            plane
                .scheduler
                .services()
                .await
                .unwrap()
                .iter()
                .all(|s| s.spec.id.service != "frontend:1.0")
        })
        .await;
    let seen = bodies(port, 50).await;
    assert_eq!(seen.len(), 50);
    assert!(
        seen.iter().all(|b| b == "frontend 1.1 -> backend 1.0"),
        "{seen:?}"
    );

    // 4. Everything undeployed: no process, no deployment, no gateway.
    plane
        .slice("name: shop\nclusters:\n  frontend:\n    breed: 'frontend:1.1'\n  backend:\n    breed: 'backend:1.0'\n")
        .await;
    plane
        .until("everything undeployed", async || {
            plane.scheduler.services().await.unwrap().is_empty()
                && plane
                    .store
                    .get::<Deployment>("shop")
                    .await
                    .unwrap()
                    .is_none()
        })
        .await;
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("python3") && c.contains(&script))
        .collect();
    assert!(left.is_empty(), "service processes left: {left:?}");
    // The deployment's gateways are gone from HAProxy: the gateway port is closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway still listens"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), agent_status.changed()).await;
    }
    let _ = stop_agent.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), agent_task).await;
}

// === the control plane killed and restarted mid-way ===

/// The helper process of `a_control_plane_killed_mid_way_resumes_without_orphans`: the whole
/// one-machine control plane (SQLite, local processes, the driver, the agent with HAProxy)
/// running on the directory `VAMP_CP_DIR` until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of a_control_plane_killed_mid_way_resumes_without_orphans"]
async fn control_plane_helper_process() {
    let (Ok(dir), Some(haproxy_bin)) = (std::env::var("VAMP_CP_DIR"), haproxy()) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let sockets = dir.join("sockets");
    let store: Arc<DynPersistenceStore> = Arc::new(
        SqlPersistence::connect(
            &format!("sqlite://{}", dir.join("vamp.db").display()),
            SqlOptions::default(),
        )
        .await
        .unwrap(),
    );
    let scheduler = Arc::new(LocalScheduler::new(dir.join("services")).unwrap());
    let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
    let render = RenderOptions::default()
        .with_socket_dir(sockets.to_str().unwrap())
        .with_bind_address("127.0.0.1");
    let driver = Arc::new(GatewayDriver::new(
        Arc::clone(&kv),
        "default",
        vec![Marshaller::new("1.7").with_options(render)],
    ));
    let agent = GatewayAgent::new(
        Arc::clone(&kv),
        AgentOptions::new(
            keys::haproxy_configuration("default", "1.7").unwrap(),
            dir.join("agent"),
        )
        .with_haproxy_bin(haproxy_bin)
        .with_socket_dir(&sockets),
    );
    tokio::spawn(agent.run(std::future::pending()));
    let mut options = ControllerOptions::default();
    options.period = Duration::from_millis(200);
    options.reconcile.drain_ms = 1_000;
    let controller = Controller::new(store, scheduler as Arc<DynContainerScheduler>, options)
        .with_gateways(driver as Arc<dyn GatewaySink>);
    controller.run(std::future::pending()).await;
}

/// Python processes of `script` running `role version`.
fn service_processes(script: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .filter_map(|c| {
            let args: Vec<String> = c
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (args.first()?.contains("python") && args.get(1)? == script)
                .then(|| args[2..].join(" "))
        })
        .collect()
}

struct Parent {
    store: Arc<DynPersistenceStore>,
    script: String,
    port: u16,
}

impl Parent {
    /// Merges (or slices) against the stored deployment, again on a write conflict with the
    /// control plane's status updates.
    async fn change(&self, f: impl Fn(Option<&Deployment>) -> Option<Deployment>) {
        for _ in 0..50 {
            let existing = self.store.get::<Deployment>("shop").await.unwrap();
            let Some(new) = f(existing.as_ref().map(|v| &v.value)) else {
                return;
            };
            let written = match &existing {
                Some(v) => self.store.update(&new, v.version).await.map(|_| ()),
                None => self.store.create(&new).await.map(|_| ()),
            };
            match written {
                Ok(()) => return,
                Err(e) if e.is_conflict() => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("50 write conflicts in a row");
    }

    async fn merge(&self, frontends: &[(&str, u8)]) {
        let yaml = shop(self.port, &self.script, frontends);
        self.change(|d| {
            Some(
                merge(
                    d,
                    "shop",
                    &blueprint(&yaml),
                    &Artifacts::new(),
                    &MergeOptions::new(vamp_core::time::now_millis()).with_port_range(25500, 25999),
                )
                .unwrap()
                .deployment,
            )
        })
        .await;
    }

    async fn slice(&self, yaml: &str) {
        self.change(|d| Some(slice(d?, &blueprint(yaml), vamp_core::time::now_millis()).unwrap()))
            .await;
    }

    async fn deployment(&self) -> Option<Deployment> {
        self.store
            .get::<Deployment>("shop")
            .await
            .unwrap()
            .map(|v| v.value)
    }

    /// Waits (bounded) until `done` holds.
    async fn until(&self, what: &str, mut done: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while !done().await {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stops what the test started even when it fails: the control-plane process, its HAProxy
/// (by the agent's pid file) and the services (a local scheduler on their directory stops
/// whatever an earlier one left there).
struct Cleanup<'a> {
    dir: &'a std::path::Path,
    child: Option<std::process::Child>,
}

impl Cleanup<'_> {
    /// SIGKILLs the control-plane process, leaving its HAProxy and services running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.kill();
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("agent").join("haproxy.pid")) {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("kill {}", pid.trim()))
                .status();
        }
        let _ = LocalScheduler::new(self.dir.join("services"));
    }
}

fn service<'a>(d: &'a Deployment, breed: &str) -> Option<&'a vamp_core::model::DeploymentService> {
    d.clusters
        .iter()
        .flat_map(|c| &c.services)
        .find(|s| s.breed.name == breed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_killed_mid_way_resumes_without_orphans() {
    if haproxy().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("service.py");
    std::fs::write(&script, SERVICE).unwrap();
    let script = script.display().to_string();
    std::fs::create_dir(dir.path().join("sockets")).unwrap();
    let port = free_port();
    let parent = Parent {
        store: Arc::new(
            SqlPersistence::connect(
                &format!("sqlite://{}", dir.path().join("vamp.db").display()),
                SqlOptions::default(),
            )
            .await
            .unwrap(),
        ),
        script: script.clone(),
        port,
    };
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "control_plane_helper_process", "--ignored"])
            .env("VAMP_CP_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut running = Cleanup {
        dir: dir.path(),
        child: None,
    };

    // Killed during the deploy: the backend is being deployed, the frontend not yet running.
    parent.merge(&[("1.0", 100)]).await;
    running.child = Some(spawn());
    parent
        .until("the backend is being deployed", async || {
            parent.deployment().await.is_some_and(|d| {
                service(&d, "backend:1.0").is_some_and(|s| {
                    vamp_core::ops::status::kind(&s.status.phase)
                        != Some(vamp_core::ops::status::PhaseKind::Initiated)
                })
            })
        })
        .await;
    let everything_done = parent.deployment().await.is_some_and(|d| {
        d.clusters
            .iter()
            .flat_map(|c| &c.services)
            .all(|s| vamp_core::ops::status::is_deployed(&s.status))
    });
    running.kill(); // SIGKILL: no clean-up of any kind
    assert!(!everything_done, "killed before the deploy finished");
    running.child = Some(spawn());
    parent
        .until("served after the restart", async || {
            body(port).as_deref() == Some("frontend 1.0 -> backend 1.0")
        })
        .await;
    parent
        .until(
            &format!("no orphan, no duplicate: {:?}", service_processes(&script)),
            async || {
                let mut p = service_processes(&script);
                p.sort();
                p == ["backend 1.0", "frontend 1.0"]
            },
        )
        .await;

    // Killed during the slice: 1.0 is draining, its process still runs.
    parent.merge(&[("1.0", 0), ("1.1", 100)]).await;
    parent
        .until("1.1 serves", async || {
            body(port).is_some_and(|b| b.starts_with("frontend 1.1"))
        })
        .await;
    parent
        .slice("name: shop\nclusters:\n  frontend:\n    breed: 'frontend:1.0'\n")
        .await;
    parent
        .until("1.0 is being undeployed", async || {
            parent.deployment().await.is_some_and(|d| {
                service(&d, "frontend:1.0").is_some_and(|s| {
                    vamp_core::ops::status::kind(&s.status.phase)
                        == Some(vamp_core::ops::status::PhaseKind::Updating)
                })
            })
        })
        .await;
    running.kill();
    running.child = Some(spawn());
    parent
        .until("only 1.1 left, nothing twice", async || {
            let mut p = service_processes(&script);
            p.sort();
            p == ["backend 1.0", "frontend 1.1"]
                && parent
                    .deployment()
                    .await
                    .is_some_and(|d| service(&d, "frontend:1.0").is_none())
        })
        .await;
    // The restarted scheduler started the services anew (new ports): once the gateways follow,
    // every request is served by 1.1.
    parent
        .until("served again", async || bodies(port, 5).await.len() == 5)
        .await;
    let seen = bodies(port, 20).await;
    assert_eq!(seen.len(), 20);
    assert!(
        seen.iter().all(|b| b == "frontend 1.1 -> backend 1.0"),
        "{seen:?}"
    );

    // Undeploy everything, then stop the control plane and its HAProxy.
    parent
        .slice("name: shop\nclusters:\n  frontend:\n    breed: 'frontend:1.1'\n  backend:\n    breed: 'backend:1.0'\n")
        .await;
    parent
        .until("everything undeployed", async || {
            service_processes(&script).is_empty() && parent.deployment().await.is_none()
        })
        .await;
    drop(running);
}
