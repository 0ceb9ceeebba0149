//! The local-process scheduler: real processes (`sh`, `python3 -m http.server`, `sleep`) on
//! this machine.
#![cfg(feature = "scheduler-local")]

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use vamp_backends::scheduler::local::LocalScheduler;
use vamp_core::model::{Deployable, HealthCheck, PortType};
use vamp_core::scheduler::*;

fn command(definition: &str) -> Deployable {
    Deployable {
        deployable_type: Some("command".into()),
        definition: definition.into(),
    }
}

fn http_server() -> Deployable {
    command("exec python3 -m http.server \"$PORT\" --bind 127.0.0.1")
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn http_status(port: u16) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_processes_pass_the_scheduler_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    vamp_core::conformance::scheduler::run_all(&scheduler, "conformance", &http_server()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_behind_the_scheduler_s_back_is_seen_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    let workdir = dir.path().to_owned();
    vamp_core::conformance::scheduler::replaces_an_instance_lost_behind_its_back(
        &scheduler,
        "lost",
        &http_server(),
        async |victim: &InstanceState| {
            let record = std::fs::read_to_string(workdir.join(&victim.name).join("instance.pid"))
                .expect("the instance's process group");
            let pgid = record.split_whitespace().next().expect("a process group");
            let killed = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("kill -s KILL -- -{pgid}"))
                .status()
                .unwrap();
            assert!(killed.success(), "kill -KILL -{pgid}");
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_serve_on_their_ports_and_are_stopped_with_their_children() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    let id = ServiceId::new("sava", "sava", "sava:1.0.0");
    // The command starts a child of its own, to check that undeploy stops the whole group.
    let spec = ServiceSpec::new(
        id.clone(),
        command("sleep 1000 & echo $! > child.pid; exec python3 -m http.server \"$PORT_WEBPORT\" --bind 127.0.0.1"),
    )
    .with_instances(2)
    .with_port("webport", 8080, PortType::Http)
    .with_env("GREETING", "hello");
    scheduler
        .deploy(spec, DeployOptions::default())
        .await
        .unwrap();
    let service = eventually("two running instances", async || {
        let s = scheduler.service(&id).await.unwrap()?;
        (s.instances.len() == 2 && s.instances.iter().all(|i| i.running)).then_some(s)
    })
    .await;
    let mut children = Vec::new();
    for i in &service.instances {
        let port = i.ports["webport"];
        let status = eventually("an HTTP answer", async || {
            tokio::task::spawn_blocking(move || http_status(port))
                .await
                .unwrap()
        })
        .await;
        assert_eq!(status, 200, "{} on {port}", i.name);
        let pid_file = dir.path().join(&i.name).join("child.pid");
        let pid = eventually("the child's pid", async || {
            std::fs::read_to_string(&pid_file).ok()
        })
        .await;
        assert!(alive(&pid), "the child {pid} runs");
        children.push(pid);
    }
    assert!(scheduler.undeploy(&id).await.unwrap());
    assert!(!scheduler.undeploy(&id).await.unwrap(), "already gone");
    for pid in children {
        eventually("the child stopped with its instance", async || {
            (!alive(&pid)).then_some(())
        })
        .await;
    }
}

/// Without health checks, an instance runs once its first port accepts connections: until
/// then no gateway may send it a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_runs_once_it_listens_on_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    let id = ServiceId::new("late", "late", "late:1.0.0");
    // Listens only once the file `go` exists in its directory.
    let spec = ServiceSpec::new(
        id.clone(),
        command("while [ ! -f go ]; do sleep 0.05; done; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1"),
    )
    .with_port("web", 8080, PortType::Http);
    scheduler
        .deploy(spec, DeployOptions::default())
        .await
        .unwrap();
    let instance = eventually("the instance's process", async || {
        let s = scheduler.service(&id).await.unwrap()?;
        let i = s.instances.first()?.clone();
        dir.path()
            .join(&i.name)
            .join("instance.pid")
            .exists()
            .then_some(i)
    })
    .await;
    // Started, not listening: not running, however often it is asked.
    for _ in 0..10 {
        let s = scheduler.service(&id).await.unwrap().unwrap();
        assert!(
            !s.instances[0].running,
            "running before it listens: {:?}",
            s.instances[0]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(dir.path().join(&instance.name).join("go"), "").unwrap();
    let port = instance.ports["web"];
    eventually("running once it listens", async || {
        let s = scheduler.service(&id).await.unwrap()?;
        s.instances[0].running.then_some(())
    })
    .await;
    let status = tokio::task::spawn_blocking(move || http_status(port))
        .await
        .unwrap();
    assert_eq!(status, Some(200), "it answers once it runs");
    assert!(scheduler.undeploy(&id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_dies_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    let id = ServiceId::new("crash", "crash", "crash:1.0.0");
    let spec = ServiceSpec::new(id.clone(), command("echo $$ > pid; exec sleep 1000"));
    scheduler
        .deploy(spec, DeployOptions::default())
        .await
        .unwrap();
    let name = eventually("a running instance", async || {
        let s = scheduler.service(&id).await.unwrap()?;
        s.instances
            .first()
            .filter(|i| i.running)
            .map(|i| i.name.clone())
    })
    .await;
    let pid_file = dir.path().join(&name).join("pid");
    let first = eventually("the pid", async || std::fs::read_to_string(&pid_file).ok()).await;
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s KILL {}", first.trim()))
        .status()
        .unwrap();
    let second = eventually("a new process", async || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|p| p.trim() != first.trim() && !p.trim().is_empty())
    })
    .await;
    assert!(alive(&second));
    let s = scheduler.service(&id).await.unwrap().unwrap();
    assert_eq!(s.instances.len(), 1);
    assert_eq!(s.instances[0].name, name, "the same instance, restarted");
    scheduler.undeploy(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_report_healthy_and_unhealthy_instances() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    let check = HealthCheck {
        path: "/".into(),
        port: "webport".into(),
        initial_delay: 0,
        timeout: 2,
        interval: 1,
        failures: 1,
        protocol: "HTTP".into(),
    };
    let healthy = ServiceId::new("health", "health", "up:1.0.0");
    let mut spec =
        ServiceSpec::new(healthy.clone(), http_server()).with_port("webport", 8080, PortType::Http);
    spec.health_checks.push(check.clone());
    scheduler
        .deploy(spec, DeployOptions::default())
        .await
        .unwrap();
    let sick = ServiceId::new("health", "health", "down:1.0.0");
    // Runs, but listens on nothing.
    let mut spec = ServiceSpec::new(sick.clone(), command("exec sleep 1000")).with_port(
        "webport",
        8080,
        PortType::Http,
    );
    spec.health_checks.push(check);
    scheduler
        .deploy(spec, DeployOptions::default())
        .await
        .unwrap();
    for (id, expected) in [(&healthy, true), (&sick, false)] {
        eventually("a health verdict", async || {
            let s = scheduler.service(id).await.unwrap()?;
            let i = s.instances.first()?;
            (i.running && i.healthy == Some(expected)).then_some(())
        })
        .await;
    }
    // A health check naming no port is an invalid spec.
    let mut bad = ServiceSpec::new(ServiceId::new("health", "health", "bad"), http_server());
    bad.health_checks.push(HealthCheck {
        path: "/".into(),
        port: "nope".into(),
        initial_delay: 0,
        timeout: 1,
        interval: 1,
        failures: 1,
        protocol: "TCP".into(),
    });
    assert!(matches!(
        scheduler.deploy(bad, DeployOptions::default()).await,
        Err(vamp_core::Error::Invalid { .. })
    ));
}

#[tokio::test]
async fn only_commands_are_deployable() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    for deployable in [
        Deployable {
            deployable_type: None,
            definition: "magneticio/sava:1.0.0".into(),
        },
        Deployable {
            deployable_type: Some("container/docker".into()),
            definition: "magneticio/sava:1.0.0".into(),
        },
        command("   "),
    ] {
        let spec = ServiceSpec::new(ServiceId::new("d", "c", "s"), deployable.clone());
        match scheduler.deploy(spec, DeployOptions::default()).await {
            Err(vamp_core::Error::Invalid { what, .. }) => assert_eq!(what, "deployable"),
            other => panic!("{deployable:?}: {other:?}"),
        }
    }
    assert!(scheduler.services().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_selection_builds_a_local_scheduler_in_the_given_directory() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("local://{}", dir.path().display());
    let scheduler = vamp_backends::scheduler::SchedulerBackendConfig::from_url(&url)
        .unwrap()
        .build()
        .await
        .unwrap();
    let id = ServiceId::new("url", "url", "svc");
    scheduler
        .deploy(
            ServiceSpec::new(id.clone(), command("exec sleep 1000")),
            DeployOptions::default(),
        )
        .await
        .unwrap();
    let s = eventually("running", async || {
        let s = scheduler.service(&id).await.unwrap()?;
        s.instances.first().filter(|i| i.running).cloned()
    })
    .await;
    assert!(dir.path().join(&s.name).join("output.log").exists());
    scheduler.undeploy(&id).await.unwrap();
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .filter(|c| {
            let args: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first().is_some_and(|a| a.contains("python")) && args.iter().any(|a| a == marker)
        })
        .count()
}

/// A control plane killed with SIGKILL cannot stop its services' process groups; the next
/// scheduler on the same work directory stops them, so nothing is left twice.
#[test]
fn a_new_scheduler_stops_what_a_killed_one_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("vamp-leftover-{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let scheduler = LocalScheduler::new(dir.path()).unwrap();
        // The shell waits on a python process of its group: killing the shell alone (as
        // dropping its handle does) leaves the python process running.
        let spec = ServiceSpec::new(
            ServiceId::new("d", "c", "s"),
            command(&format!(
                "python3 -c 'import time; time.sleep(1000)' {marker} & wait"
            )),
        )
        .with_instances(2);
        scheduler
            .deploy(spec, DeployOptions::default())
            .await
            .unwrap();
        eventually("both instances run", async || {
            (processes_with(&marker) == 2).then_some(())
        })
        .await;
        // As if the process died: no scheduler drop, no graceful stop.
        std::mem::forget(scheduler);
    });
    drop(rt);
    assert_eq!(
        processes_with(&marker),
        2,
        "left running by the killed scheduler"
    );
    let _next = LocalScheduler::new(dir.path()).unwrap();
    assert_eq!(processes_with(&marker), 0, "stopped by the next scheduler");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "their directories are gone"
    );
}

/// An instance gets Vamp's variables, the spec's and an allow-list of the control plane's
/// environment: not the rest of it (where database and key-value store credentials live).
#[tokio::test]
async fn instances_do_not_see_the_control_plane_s_environment() {
    // Set by cargo for the test process; a stand-in for any secret the control plane holds.
    let inherited = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it for tests");
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    let spec = ServiceSpec::new(
        ServiceId::new("env", "c", "s"),
        command("env > env.txt; sleep 30"),
    )
    .with_port("web", 8080, PortType::Http)
    .with_env("GIVEN", "by the spec");
    scheduler
        .deploy(spec, DeployOptions::default())
        .await
        .unwrap();
    let file = dir.path().join("env-c-s-1").join("env.txt");
    let env = eventually("the instance wrote its environment", async || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|t| t.contains("GIVEN="))
    })
    .await;
    assert!(env.contains("GIVEN=by the spec"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PORT=")), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert!(
        !env.contains(&inherited) && !env.contains("CARGO_MANIFEST_DIR"),
        "the control plane's environment leaked: {env}"
    );
    scheduler
        .undeploy(&ServiceId::new("env", "c", "s"))
        .await
        .unwrap();
}

/// An instance restarted after it exited gets a new port if another process took its port
/// meanwhile, instead of failing to start for good.
#[tokio::test]
async fn a_restarted_instance_whose_port_was_taken_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let scheduler = LocalScheduler::new(dir.path()).unwrap();
    let id = ServiceId::new("port", "c", "s");
    let spec = ServiceSpec::new(id.clone(), http_server()).with_port("web", 8080, PortType::Http);
    scheduler
        .deploy(spec, DeployOptions::default())
        .await
        .unwrap();
    let first = eventually("the instance serves", async || {
        let s = scheduler.service(&id).await.ok()??;
        let port = *s.instances.first()?.ports.get("web")?;
        (http_status(port) == Some(200)).then_some(port)
    })
    .await;
    // The process dies; before the supervisor restarts it (1 s later), another process binds
    // its port.
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("http.server") && c.contains(&first.to_string())
            })
        })
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -9 {}", pids[0]))
        .status();
    let squatter = eventually("the port is free to take", async || {
        std::net::TcpListener::bind(("127.0.0.1", first)).ok()
    })
    .await;
    let second = eventually("the instance serves again on a new port", async || {
        let s = scheduler.service(&id).await.ok()??;
        let i = s.instances.first()?;
        let port = *i.ports.get("web")?;
        (port != first && i.running && http_status(port) == Some(200)).then_some(port)
    })
    .await;
    assert_ne!(second, first);
    drop(squatter);
    scheduler.undeploy(&id).await.unwrap();
}

/// The kernel's ephemeral port range.
fn ephemeral_range() -> std::ops::RangeInclusive<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().unwrap());
    parts.next().unwrap()..=parts.next().unwrap()
}

/// Instances get ports from the scheduler's own range, below the kernel's ephemeral ports
/// (which the kernel hands to any process's outgoing connections: a port picked by binding
/// port 0 and releasing it could be taken before the instance bound it), and no port goes to
/// two instances, also across two schedulers deploying at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_their_own_ports_outside_the_kernel_s_ephemeral_range() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = LocalScheduler::new(d1.path()).unwrap();
    let b = LocalScheduler::new(d2.path()).unwrap();
    let spec = |name: &str| {
        ServiceSpec::new(
            ServiceId::new("ports", name, "v1"),
            command("exec sleep 60"),
        )
        .with_instances(10)
        .with_port("one", 8080, PortType::Http)
        .with_port("two", 8081, PortType::Tcp)
    };
    let (ra, rb) = tokio::join!(
        a.deploy(spec("a"), DeployOptions::default()),
        b.deploy(spec("b"), DeployOptions::default())
    );
    ra.unwrap();
    rb.unwrap();
    let mut ports = Vec::new();
    for (s, name) in [(&a, "a"), (&b, "b")] {
        let service = s
            .service(&ServiceId::new("ports", name, "v1"))
            .await
            .unwrap()
            .unwrap();
        for i in &service.instances {
            ports.extend(i.ports.values().copied());
        }
    }
    assert_eq!(ports.len(), 40);
    let ephemeral = ephemeral_range();
    for p in &ports {
        assert!(
            vamp_backends::scheduler::local::DEFAULT_PORT_RANGE.contains(p),
            "port {p} is in the scheduler's range"
        );
        assert!(!ephemeral.contains(p), "port {p} is an ephemeral port");
    }
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ports.len(), "no port twice: {ports:?}");
}

/// A range overlapping the ephemeral ports is refused, and a service beyond the instance
/// limit is a named error, not thousands of processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_ranges_and_instance_counts_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ephemeral = ephemeral_range();
    let e = LocalScheduler::new(dir.path())
        .unwrap()
        .with_port_range(*ephemeral.start()..=*ephemeral.start() + 10)
        .unwrap_err();
    assert!(e.to_string().contains("ephemeral"), "{e}");
    let scheduler = LocalScheduler::new(dir.path())
        .unwrap()
        .with_max_instances(3);
    let spec = ServiceSpec::new(ServiceId::new("limit", "s", "v1"), command("exec sleep 60"))
        .with_instances(4);
    let e = scheduler
        .deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            vamp_core::Error::Invalid {
                what: "instances",
                ..
            }
        ),
        "{e:?}"
    );
    scheduler
        .deploy(spec.with_instances(3), DeployOptions::default())
        .await
        .unwrap();
    let e = scheduler
        .scale(&ServiceId::new("limit", "s", "v1"), 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            vamp_core::Error::Invalid {
                what: "instances",
                ..
            }
        ),
        "{e:?}"
    );
}

/// A port goes back to the range when its instance is gone: with a range of two ports, a
/// second service waits for the first to be undeployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_return_to_the_range_when_their_instances_stop() {
    let dir = tempfile::tempdir().unwrap();
    // A range of its own (no other test uses it), below the ephemeral ports.
    let start = ephemeral_range().start() - 200;
    let scheduler = LocalScheduler::new(dir.path())
        .unwrap()
        .with_port_range(start..=start + 1)
        .unwrap();
    let spec = |name: &str, n: u32| {
        ServiceSpec::new(
            ServiceId::new("range", name, "v1"),
            command("exec sleep 60"),
        )
        .with_instances(n)
        .with_port("p", 8080, PortType::Http)
    };
    scheduler
        .deploy(spec("first", 2), DeployOptions::default())
        .await
        .unwrap();
    let full = scheduler
        .deploy(spec("second", 1), DeployOptions::default())
        .await
        .unwrap_err();
    assert!(full.is_temporary(), "{full:?}");
    assert!(format!("{full:?}").contains("no free port"), "{full:?}");
    scheduler
        .undeploy(&ServiceId::new("range", "first", "v1"))
        .await
        .unwrap();
    eventually("a port is free again", async || {
        scheduler
            .deploy(spec("second", 1), DeployOptions::default())
            .await
            .ok()
    })
    .await;
}

/// A one-shot run runs once (not restarted) and its directory goes when it exits; a
/// JavaScript deployable runs with node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_run_runs_once_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let scheduler = LocalScheduler::new(dir.path().join("work")).unwrap();
    let spec = ServiceSpec::new(
        ServiceId::new("workflows", "once", "once"),
        command("echo ran >> \"$OUT\""),
    )
    .with_env("OUT", out.display().to_string());
    scheduler.run_once(spec).await.unwrap();
    let work = dir.path().join("work");
    eventually("the run finished and its directory is gone", async || {
        let left = std::fs::read_dir(&work).ok()?.count();
        (left == 0 && out.exists()).then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
    {
        let js = ServiceSpec::new(
            ServiceId::new("workflows", "js", "js"),
            Deployable {
                deployable_type: Some("application/javascript".into()),
                definition: "require('fs').appendFileSync(process.env.OUT, 'js ' + process.env.VAMP_INSTANCE + '\\n')".into(),
            },
        )
        .with_env("OUT", out.display().to_string());
        scheduler.run_once(js).await.unwrap();
        let text = eventually("the script ran", async || {
            let t = std::fs::read_to_string(&out).ok()?;
            t.contains("js ").then_some(t)
        })
        .await;
        assert!(text.contains("js workflows-js-js-"), "{text}");
    }
}

/// Workflows on local processes: a time workflow runs its three times, a daemon that dies is
/// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_run_on_local_processes() {
    use std::sync::Arc;
    use vamp_core::dsl::{AnyArtifact, read_str};
    use vamp_core::memory::{InMemoryMetrics, InMemoryPersistence};
    use vamp_core::model::{ArtifactKind, Workflow};
    use vamp_core::ops::workflow::{WorkflowController, WorkflowOptions};
    use vamp_core::persistence::PersistenceExt;
    let dir = tempfile::tempdir().unwrap();
    let ticks = dir.path().join("ticks.txt");
    let pids = dir.path().join("pids.txt");
    let store = Arc::new(InMemoryPersistence::new());
    let workflow = |yaml: String| match read_str(&yaml, Some(ArtifactKind::Workflow))
        .unwrap()
        .remove(0)
    {
        AnyArtifact::Workflow(w) => w,
        other => panic!("{other:?}"),
    };
    let timed: Workflow = workflow(format!(
        "name: tick\nbreed:\n  name: tick\n  deployable: {{type: command, definition: 'echo tick >> {}'}}\nschedule:\n  time: {{period: PT1S, repeat: 3}}\n",
        ticks.display()
    ));
    let daemon: Workflow = workflow(format!(
        "name: keeper\nbreed:\n  name: keeper\n  deployable: {{type: command, definition: 'echo $$ >> {}; exec sleep 600'}}\nschedule: daemon\n",
        pids.display()
    ));
    store.create(&timed).await.unwrap();
    store.create(&daemon).await.unwrap();
    let scheduler = Arc::new(LocalScheduler::new(dir.path().join("work")).unwrap());
    let workflows = WorkflowController::new(
        Arc::clone(&store) as _,
        Arc::clone(&scheduler) as _,
        Arc::new(InMemoryMetrics::new()) as _,
        WorkflowOptions::default(),
    );
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    eventually("three ticks and a daemon", async || {
        for o in workflows.tick().await.unwrap() {
            assert_eq!(o.error, None, "{o:?}");
        }
        (lines(&ticks).len() >= 3 && lines(&pids).len() == 1).then_some(())
    })
    .await;
    // Passes go on: still three ticks (repeat: 3), and the daemon is not deployed again.
    for _ in 0..3 {
        workflows.tick().await.unwrap();
    }
    assert_eq!(lines(&ticks).len(), 3);
    let first = lines(&pids)[0].clone();
    assert!(alive(&first));
    std::process::Command::new("kill")
        .args(["-9", first.trim()])
        .status()
        .unwrap();
    let restarted = eventually("the daemon is started again", async || {
        let p = lines(&pids);
        (p.len() == 2).then(|| p[1].clone())
    })
    .await;
    assert_ne!(restarted, first);
    assert!(alive(&restarted));
}

/// A scheduler that keeps its instances leaves them running when dropped, and one created on
/// the same directory adopts them: the same processes on the same ports, restarted when they
/// die, stopped by an undeploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_instance_outlives_its_scheduler_and_is_adopted_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let id = ServiceId::new("keep", "web", "web");
    let spec = ServiceSpec::new(id.clone(), http_server())
        .with_instances(2)
        .with_port("web", 8080, PortType::Http);
    let first = LocalScheduler::adopting(dir.path()).unwrap();
    first
        .deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    let before = eventually("two instances answer", async || {
        let s = first.service(&id).await.unwrap()?;
        (s.instances.len() == 2
            && s.instances
                .iter()
                .all(|i| http_status(i.ports["web"]) == Some(200)))
        .then_some(s)
    })
    .await;
    let pid_of = |name: &str| {
        std::fs::read_to_string(dir.path().join(name).join("instance.pid"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let pids: Vec<String> = before.instances.iter().map(|i| pid_of(&i.name)).collect();
    drop(first);
    // A moment for the supervisors to let go; the processes keep serving throughout.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pids.iter().all(|p| alive(p)), "kept instances stay");
        assert!(
            before
                .instances
                .iter()
                .all(|i| http_status(i.ports["web"]) == Some(200))
        );
    }
    let second = LocalScheduler::adopting(dir.path()).unwrap();
    let adopted = second.service(&id).await.unwrap().expect("adopted");
    let mut got: Vec<(String, u16)> = adopted
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.ports["web"]))
        .collect();
    let mut want: Vec<(String, u16)> = before
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.ports["web"]))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the same instances on the same ports");
    assert_eq!(adopted.spec.environment, before.spec.environment);
    assert!(adopted.instances.iter().all(|i| i.running));
    assert_eq!(
        adopted
            .instances
            .iter()
            .map(|i| pid_of(&i.name))
            .collect::<Vec<_>>(),
        pids,
        "the same processes"
    );
    // The same spec deployed again (what a reconcile pass does) changes nothing.
    second
        .deploy(spec.clone(), DeployOptions::default())
        .await
        .unwrap();
    assert_eq!(
        adopted
            .instances
            .iter()
            .map(|i| pid_of(&i.name))
            .collect::<Vec<_>>(),
        pids
    );
    // An adopted instance that dies is started again.
    let victim = &adopted.instances[0];
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -s KILL -- -{}", pids[0].trim()))
        .status()
        .unwrap();
    eventually("the dead instance is started again", async || {
        let p = std::fs::read_to_string(dir.path().join(&victim.name).join("instance.pid")).ok()?;
        let pid = p.split_whitespace().next()?.to_owned();
        (pid != pids[0] && alive(&pid) && http_status(victim.ports["web"]) == Some(200))
            .then_some(())
    })
    .await;
    // An undeploy stops the adopted ones too.
    assert!(second.undeploy(&id).await.unwrap());
    eventually("every instance stopped", async || {
        (!alive(&pids[1])).then_some(())
    })
    .await;
}
