//! Three replicas of `vamp serve`, each a separate process (this test binary run again:
//! `child_replica`), on one private PostgreSQL (persistence) and one etcd (key-value store and
//! leader election), deploying to the machine's real Docker engine, with a standalone gateway
//! agent (a real HAProxy) in the test: exactly one leader; a deployment made through a
//! follower is deployed; the leader killed with SIGKILL is replaced; a merge and a weight
//! change made after the failover reach traffic; no request through the gateway fails and no
//! service ever runs more instances than its scale. Required with CI=true or
//! VAMP_TEST_INTEGRATION=1 (the test command provides PostgreSQL, etcd, Docker and HAProxy).
//!
//! The same election runs on MariaDB and Redis (leases on Redis).
#![cfg(all(
    feature = "docker",
    feature = "etcd",
    feature = "postgres",
    feature = "mysql",
    feature = "redis"
))]

#[path = "../../vamp-backends/tests/docker_image/mod.rs"]
mod docker_image;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use support::{eventually, free_port, get_json, haproxy_or_skip, send_yaml};

/// The lease's time to live: a dead leader is replaced within it.
const LEASE_TTL_MS: u64 = 3000;

/// A replica, when this binary is run as the child (`VAMP_TEST_REPLICA_ID` set).
#[test]
#[ignore = "the replicas test runs it as its child process"]
fn child_replica() {
    let var = |k: &str| std::env::var(k).ok();
    let (Some(id), Some(data), Some(listen), Some(pg), Some(kv), Some(scheduler), Some(sockets)) = (
        var("VAMP_TEST_REPLICA_ID"),
        var("VAMP_TEST_REPLICA_DATA"),
        var("VAMP_TEST_REPLICA_LISTEN"),
        var("VAMP_TEST_REPLICA_PG"),
        var("VAMP_TEST_REPLICA_KV"),
        var("VAMP_TEST_REPLICA_SCHEDULER"),
        var("VAMP_TEST_REPLICA_SOCKETS"),
    ) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = vamp_examples::serve::ServeConfig::new(data);
        config.listen = Some(listen.parse().unwrap());
        config.persistence = Some(pg);
        config.kv = Some(kv);
        config.scheduler = Some(scheduler);
        config.haproxy_socket_dir = Some(sockets.into());
        config.replica_id = Some(id);
        config.lease_ttl_ms = LEASE_TTL_MS;
        config.no_agent = true;
        config.period_ms = 200;
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let server = vamp_examples::serve::start(config)
            .await
            .expect("vamp serve starts");
        term.recv().await;
        server.stop().await;
    });
}

struct Replica {
    id: String,
    base: String,
    child: std::process::Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) => Some(v),
        Err(_) => {
            assert!(
                !support::required(),
                "{name} is required (scripts/test.sh sets it)"
            );
            eprintln!("SKIPPED: set {name}");
            None
        }
    }
}

/// One GET through the gateway on `port`: the body, or what went wrong.
async fn get(client: &Client, port: u16) -> Result<String, String> {
    let r = client
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| format!("{e:?}"))?;
    if status == StatusCode::OK {
        Ok(text.trim().to_owned())
    } else {
        Err(format!("{status}: {text}"))
    }
}

/// The containers of namespace `ns` whose service label is `service`, running.
fn containers(ns: &str, service: &str) -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=io.vamp.namespace={ns}"),
            "--filter",
            &format!("label=io.vamp.service={service}"),
        ])
        .output()
        .expect("the docker command");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The replicas' views of the election: (id, leader, leader_id) of those that answer.
async fn views(client: &Client, replicas: &[Replica]) -> Vec<(String, bool, Option<String>)> {
    let mut out = Vec::new();
    for r in replicas {
        let info = get_json(client, &format!("{}/info?on=loops", r.base)).await;
        if let Some(leader) = info["leader"].as_bool() {
            out.push((
                r.id.clone(),
                leader,
                info["leader_id"].as_str().map(str::to_owned),
            ));
        }
    }
    out
}

/// Waits until exactly one of `replicas` leads and every one of them names it.
async fn one_leader(client: &Client, replicas: &[Replica], limit: Duration) -> String {
    eventually("exactly one leader, named by all", limit, async || {
        let v = views(client, replicas).await;
        let leaders: Vec<&String> = v.iter().filter(|x| x.1).map(|x| &x.0).collect();
        (v.len() == replicas.len()
            && leaders.len() == 1
            && v.iter().all(|x| x.2.as_ref() == Some(leaders[0])))
        .then(|| leaders[0].clone())
    })
    .await
}

fn with_table(url: &str, table: &str) -> String {
    format!(
        "{url}{}table={table}",
        if url.contains('?') { '&' } else { '?' }
    )
}

/// One election after the other: two control planes at once would both give their cluster
/// gateway the first port of the gateway range, and their agents would compete for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_elect_one_leader_and_fail_over_on_postgresql_and_etcd_then_mariadb_and_redis()
 {
    if !haproxy_or_skip() || !support::docker_engine_or_skip() {
        return;
    }
    let (Some(pg), Some(etcd), Some(mysql), Some(redis)) = (
        required_env("VAMP_POSTGRES_URL"),
        required_env("VAMP_ETCD_ENDPOINTS"),
        required_env("VAMP_MYSQL_URL"),
        required_env("VAMP_REDIS_URL"),
    ) else {
        return;
    };
    let run = std::process::id();
    let etcd_host = support::etcd_host(&etcd);
    replicas_fail_over(
        &with_table(&pg, &format!("replicas_pg_{run}")),
        &format!("etcd://{etcd_host}/replicas-{run}"),
        "replicas-pg",
    )
    .await;
    replicas_fail_over(
        &with_table(&mysql, &format!("replicas_my_{run}")),
        &format!("{redis}?prefix=/replicas-{run}"),
        "replicas-my",
    )
    .await;
}

/// Three replicas on `persistence` and `kv` (which holds the leases too), see the module.
async fn replicas_fail_over(persistence: &str, kv: &str, test: &str) {
    docker_image::ensure_image().expect("the test image");
    let ns = docker_image::Namespace::new(test);
    let mut scheduler = format!("docker://?namespace={}", ns.0);
    if std::env::var("VAMP_TEST_DOCKER_NETWORK").is_ok_and(|n| n == "host") {
        scheduler.push_str("&network=host");
    }
    let (pg, kv) = (persistence.to_owned(), kv.to_owned());
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();

    // The standalone gateway agent, reading the gateway configuration the leader writes.
    let agent_kv = vamp_backends::kv::KvBackendConfig::from_url(&kv)
        .unwrap()
        .build()
        .await
        .unwrap();
    let key = vamp_core::kv::keys::haproxy_configuration("default", "1.7").unwrap();
    let agent = vamp_haproxy::agent::GatewayAgent::new(
        agent_kv,
        vamp_haproxy::agent::AgentOptions::new(key, dir.path().join("agent"))
            .with_socket_dir(&sockets)
            .with_syslog(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
    );
    let (stop_agent, agent_stopped) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(agent.run(async move {
        let mut rx = agent_stopped;
        let _ = rx.wait_for(|s| *s).await;
    }));

    let spawn = |i: usize| {
        let id = format!("replica-{i}");
        let listen = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_replica", "--nocapture"])
            .env("VAMP_TEST_REPLICA_ID", &id)
            .env("VAMP_TEST_REPLICA_DATA", dir.path().join(&id))
            .env("VAMP_TEST_REPLICA_LISTEN", &listen)
            .env("VAMP_TEST_REPLICA_PG", &pg)
            .env("VAMP_TEST_REPLICA_KV", &kv)
            .env("VAMP_TEST_REPLICA_SCHEDULER", &scheduler)
            .env("VAMP_TEST_REPLICA_SOCKETS", &sockets)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Replica {
            id,
            base: format!("http://{listen}/api/v1"),
            child,
        }
    };
    let mut replicas: Vec<Replica> = (0..3).map(spawn).collect();
    let client = Client::new();
    let leader = one_leader(&client, &replicas, Duration::from_secs(120)).await;
    eprintln!("leader: {leader}");

    // A deployment made through a follower is deployed (by the leader).
    let port = free_port();
    let breed = |v: &str| {
        format!(
            "        name: web:{v}\n        deployable:\n          type: docker\n          definition: {}\n        ports: {{port: 8080/http}}\n        environment_variables: {{VERSION: '{v}'}}\n",
            docker_image::IMAGE
        )
    };
    let follower = replicas.iter().position(|r| r.id != leader).unwrap();
    send_yaml(
        &client,
        reqwest::Method::PUT,
        replicas[follower].base.clone(),
        format!(
            "kind: deployment\nname: shop\ngateways:\n  {port}: web/port\nclusters:\n  web:\n    services:\n    - breed:\n{}      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n",
            breed("1.0")
        ),
    )
    .await;
    eventually(
        "1.0 answers through the agent's gateway",
        Duration::from_secs(120),
        async || (support::through(&client, port).await.as_deref() == Some("1.0")).then_some(()),
    )
    .await;

    // An event posted to one replica reaches an event stream opened on another.
    {
        use futures_util::StreamExt;
        let tag = format!("relay:{}", std::process::id());
        let stream = client
            .get(format!("{}/events/stream?tag={tag}", replicas[0].base))
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        let mut stream = stream.bytes_stream();
        // The stream is open (its first bytes, a keep-alive or the headers' flush, need not
        // come): post until the event arrives, bounded.
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.contains(&tag) {
            send_yaml(
                &client,
                reqwest::Method::POST,
                format!("{}/events", replicas[2].base),
                format!("tags: ['{tag}']\nvalue: relayed\ntype: test\n"),
            )
            .await;
            if let Ok(Some(Ok(chunk))) =
                tokio::time::timeout(Duration::from_secs(2), stream.next()).await
            {
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            assert!(
                Instant::now() < deadline,
                "the event never reached the other replica: {seen}"
            );
        }
    }

    // Continuous traffic from now on; every failure counted.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen_11 = Arc::new(AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (stop, sent, failed, seen_11) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&seen_11),
        );
        // Each request on a new connection, as in the restart test: a keep-alive connection
        // that an old HAProxy process closes at a reload races the client's next request on
        // it (HTTP's own race, which clients settle by retrying; reqwest does not).
        let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
        async move {
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                match get(&client, port).await.as_deref() {
                    Ok("1.1") => {
                        seen_11.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok("1.0") => {}
                    other => {
                        eprintln!("failed request at {:?}: {other:?}", started.elapsed());
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // Never more instances than the scale, sampled throughout.
    let duplicates = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let (stop, duplicates, ns) = (Arc::clone(&stop), Arc::clone(&duplicates), ns.0.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let (a, b) = tokio::task::spawn_blocking({
                    let ns = ns.clone();
                    move || (containers(&ns, "web:1.0"), containers(&ns, "web:1.1"))
                })
                .await
                .unwrap();
                if a > 1 || b > 1 {
                    eprintln!("more containers than the scale: 1.0: {a}, 1.1: {b}");
                    duplicates.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    // The leader dies without a word; another replica takes over.
    let at = replicas.iter().position(|r| r.id == leader).unwrap();
    let mut dead = replicas.remove(at);
    let killed = Instant::now();
    eprintln!("SIGKILL of {leader} at {:?}", started.elapsed());
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let next = one_leader(
        &client,
        &replicas,
        Duration::from_millis(LEASE_TTL_MS) + Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "failover: {next} leads {:?} after the SIGKILL of {leader} (lease ttl {LEASE_TTL_MS} ms)",
        killed.elapsed()
    );
    assert_ne!(next, leader);

    // A merge and a weight change after the failover, through the remaining follower.
    eprintln!("merge at {:?}", started.elapsed());
    let follower = replicas.iter().position(|r| r.id != next).unwrap();
    send_yaml(
        &client,
        reqwest::Method::PUT,
        format!("{}/deployments/shop", replicas[follower].base),
        format!(
            "name: shop\nclusters:\n  web:\n    services:\n    - breed:\n{}      scale: {{cpu: 0.1, memory: 64MB, instances: 1}}\n",
            breed("1.1")
        ),
    )
    .await;
    eventually(
        "1.1 deployed and running",
        Duration::from_secs(120),
        async || {
            let d = get_json(&client, &format!("{}/deployments/shop", replicas[0].base)).await;
            let services = d["clusters"]["web"]["services"].as_array()?.clone();
            (services.len() == 2
                && services
                    .iter()
                    .all(|s| s["status"]["phase"]["name"] == "Done"))
            .then_some(())
        },
    )
    .await;
    eprintln!("weights at {:?}", started.elapsed());
    send_yaml(
        &client,
        reqwest::Method::PUT,
        format!("{}/gateways/shop/web/port", replicas[follower].base),
        "name: shop/web/port\nroutes:\n  shop/web/web:1.0/port: {weight: 50%}\n  shop/web/web:1.1/port: {weight: 50%}\n".into(),
    )
    .await;
    eventually(
        "1.1 gets traffic after the failover",
        Duration::from_secs(120),
        async || (seen_11.load(Ordering::SeqCst) >= 20).then_some(()),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    sampler.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{sent} requests through the gateway, {failed} failed");
    assert_eq!(failed, 0, "no request fails ({sent} sent)");
    assert_eq!(
        duplicates.load(Ordering::SeqCst),
        0,
        "no duplicate instance"
    );
    assert_eq!(containers(&ns.0, "web:1.0"), 1);
    assert_eq!(containers(&ns.0, "web:1.1"), 1);

    // Clean up: the deployment removed by the leader, the replicas and the agent stopped.
    let r = client
        .delete(format!("{}/deployments/shop", replicas[0].base))
        .header("Accept", "application/json")
        .header("Content-Type", "application/x-yaml")
        .body(format!(
            "name: shop\nclusters:\n  web:\n    services:\n    - breed:\n{}    - breed:\n{}",
            breed("1.0"),
            breed("1.1")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    eventually(
        "the containers are removed",
        Duration::from_secs(120),
        async || (containers(&ns.0, "web:1.0") + containers(&ns.0, "web:1.1") == 0).then_some(()),
    )
    .await;
    drop(replicas);
    stop_agent.send(true).unwrap();
    let _ = agent_task.await;
}
