//! A fleet of gateway agents as operators run them: two containers of the agent's image
//! (`packaging/build-image.sh`, given as `VAMP_TEST_AGENT_IMAGE`) on private Docker networks,
//! reading one key of a real etcd (a container of the machine's Debian etcd). Traffic through
//! both follows a weight change; an agent cut off from etcd (network disconnect) keeps serving
//! its last good configuration with no failed request and catches up when reconnected; an
//! agent container restarted comes back serving the current configuration. Required with
//! CI=true or VAMP_TEST_INTEGRATION=1 (the test command builds the images). The control
//! plane's image (`VAMP_TEST_VAMP_IMAGE`) is checked here too.
#![cfg(feature = "etcd")]

#[path = "../../vamp-backends/tests/docker_image/mod.rs"]
mod docker_image;
mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use vamp_backends::kv::KvBackendConfig;
use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::kv::{KeyPath, KeyValueStoreExt};
use vamp_core::model::{ArtifactKind, Route, RouteTarget};

const KEY: &str = "/vamp/default/gateways/haproxy/1.7/configuration";
const GATEWAY_PORT: u16 = 24001;

/// `docker …`: its standard output, or a panic with what it said.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything the test made, removed on drop (by name).
struct Fleet {
    run: String,
    containers: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for n in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

impl Fleet {
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.run)
    }

    fn run_container(&mut self, name: &str, args: &[&str]) -> String {
        let full = self.name(name);
        self.containers.push(full.clone());
        let mut all = vec!["run", "-d", "--name", &full];
        all.extend_from_slice(args);
        docker(&all);
        full
    }

    fn ip(&self, container: &str, network: &str) -> String {
        docker(&[
            "inspect",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            container,
        ])
    }
}

/// An image holding only the host's etcd and the libraries it needs (no image can be pulled).
fn etcd_image(tag: &str) {
    let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("etcd is installed (Debian: etcd-server)");
    let root = tempfile::tempdir().unwrap();
    let script = format!(
        "set -e; r='{r}'; mkdir -p \"$r/usr/bin\" \"$r/tmp\"; chmod 1777 \"$r/tmp\"; cp '{etcd}' \"$r/usr/bin/etcd\"; \
         for lib in $(ldd '{etcd}' | awk '/=> \\// {{ print $3 }} /^\\s*\\/[^ ]+ \\(/ {{ print $1 }}'); do mkdir -p \"$r$(dirname $lib)\"; cp -L $lib \"$r$lib\"; done; \
         tar -C \"$r\" -cf - . | docker import --change 'LABEL io.vamp.test=1' - {tag} >/dev/null",
        r = root.path().display()
    );
    let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(status.success(), "building {tag}");
}

/// The gateway on `GATEWAY_PORT`, routing to the two backends with `weights`, rendered as
/// the driver writes it for the image's socket directory.
fn configuration(backends: &[(String, String)], weights: (u8, u8)) -> String {
    let yaml = format!(
        "name: fleet/{GATEWAY_PORT}\nport: {GATEWAY_PORT}\nroutes:\n  v1: {{weight: {}%}}\n  v2: {{weight: {}%}}\n",
        weights.0, weights.1
    );
    let AnyArtifact::Gateway(mut g) = read_str(&yaml, Some(ArtifactKind::Gateway))
        .unwrap()
        .remove(0)
    else {
        panic!("a gateway");
    };
    for (i, (name, ip)) in backends.iter().enumerate() {
        if let Route::Default(d) = &mut g.routes[i] {
            d.targets = vec![RouteTarget::Internal {
                name: name.clone(),
                host: Some(ip.clone()),
                port: 8080,
            }];
        }
    }
    let options = vamp_haproxy::RenderOptions::default()
        .with_socket_dir("/usr/local/vamp")
        .with_bind_address("0.0.0.0");
    vamp_haproxy::render(&[g], &options).unwrap().render()
}

/// One GET through an agent: the version that answered, or `None` for a failed request.
async fn through(client: &reqwest::Client, ip: &str) -> Option<String> {
    let r = client
        .get(format!("http://{ip}:{GATEWAY_PORT}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    (r.status() == reqwest::StatusCode::OK).then_some(())?;
    Some(r.text().await.ok()?.trim().to_owned())
}

/// Waits until an agent answers `version` (bounded).
async fn serves(client: &reqwest::Client, ip: &str, version: &str, what: &str) {
    support::eventually(what, Duration::from_secs(90), async || {
        (through(client, ip).await.as_deref() == Some(version)).then_some(())
    })
    .await;
}

/// `n` requests through an agent: every one must answer `version`.
async fn all_answer(client: &reqwest::Client, ip: &str, version: &str, n: usize, what: &str) {
    for i in 0..n {
        let got = through(client, ip).await;
        assert_eq!(got.as_deref(), Some(version), "{what}: request {i} of {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_agent_containers_survives_a_partition_and_a_restart() {
    let Some(image) = std::env::var("VAMP_TEST_AGENT_IMAGE")
        .ok()
        .filter(|i| !i.is_empty())
    else {
        assert!(
            !support::required(),
            "VAMP_TEST_AGENT_IMAGE is required (scripts/test.sh builds it with packaging/build-image.sh)"
        );
        eprintln!(
            "SKIPPED: no agent image (set VAMP_TEST_AGENT_IMAGE; packaging/build-image.sh builds one)"
        );
        return;
    };
    docker_image::ensure_image().expect("the backends' image");
    let run = format!("vamp-fleet-{}", std::process::id());
    let mut fleet = Fleet {
        run: run.clone(),
        containers: Vec::new(),
        networks: Vec::new(),
        images: Vec::new(),
    };
    let etcd_tag = format!("vamp-test/etcd:{}", std::process::id());
    etcd_image(&etcd_tag);
    fleet.images.push(etcd_tag.clone());
    // Two networks: the agents reach etcd on one, serve traffic and reach backends on the
    // other, so an agent can lose etcd and keep serving.
    let (kv_net, data_net) = (fleet.name("kv"), fleet.name("data"));
    for n in [&kv_net, &data_net] {
        docker(&["network", "create", "--label", "io.vamp.test=1", n]);
        fleet.networks.push(n.clone());
    }
    let etcd_name = fleet.name("etcd");
    let advertise = format!("http://{etcd_name}:2379");
    let etcd = fleet.run_container(
        "etcd",
        &[
            "--network",
            &kv_net,
            "-p",
            "127.0.0.1::2379",
            &etcd_tag,
            "/usr/bin/etcd",
            "--data-dir",
            "/tmp/etcd",
            "--listen-client-urls",
            "http://0.0.0.0:2379",
            "--advertise-client-urls",
            &advertise,
        ],
    );
    let etcd_port = docker(&["port", &etcd, "2379/tcp"])
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .to_owned();
    let mut backends = Vec::new();
    for version in ["1.0", "1.1"] {
        let name = fleet.run_container(
            &format!("web-{version}"),
            &[
                "--network",
                &data_net,
                "-e",
                &format!("VERSION={version}"),
                docker_image::IMAGE,
            ],
        );
        let ip = fleet.ip(&name, &data_net);
        backends.push((format!("v{version}"), ip));
    }
    // The agents: etcd by its container name on the kv network.
    let kv_url = format!("etcd://{etcd_name}:2379");
    let mut agents = Vec::new();
    for n in ["a1", "a2"] {
        let name = fleet.run_container(
            n,
            &[
                "--network",
                &kv_net,
                "-e",
                &format!("VAMP_KEY_VALUE_STORE_URL={kv_url}"),
                "-e",
                &format!("VAMP_KEY_VALUE_STORE_PATH={KEY}"),
                "-e",
                "VAMP_GATEWAY_AGENT_DEBOUNCE_MS=50",
                &image,
            ],
        );
        docker(&["network", "connect", &data_net, &name]);
        let ip = fleet.ip(&name, &data_net);
        agents.push((name, ip));
    }

    // The control plane's side: the configuration written to etcd.
    let kv = KvBackendConfig::from_url(&format!("etcd://127.0.0.1:{etcd_port}"))
        .unwrap()
        .build()
        .await
        .expect("etcd answers");
    let key = KeyPath::parse(KEY).unwrap();
    let write = async |weights: (u8, u8)| {
        kv.put(&key, Bytes::from(configuration(&backends, weights)))
            .await
            .expect("write to etcd");
    };
    let client = reqwest::Client::new();

    write((100, 0)).await;
    for (name, ip) in &agents {
        serves(&client, ip, "1.0", &format!("{name} serves 1.0")).await;
    }
    // Every agent's container is healthy by its own health check.
    for (name, _) in &agents {
        support::eventually(
            &format!("{name} healthy"),
            Duration::from_secs(60),
            async || {
                (docker(&["inspect", "--format", "{{.State.Health.Status}}", name]) == "healthy")
                    .then_some(())
            },
        )
        .await;
    }

    // A weight change reaches both.
    write((0, 100)).await;
    for (name, ip) in &agents {
        serves(
            &client,
            ip,
            "1.1",
            &format!("{name} follows the weights to 1.1"),
        )
        .await;
        all_answer(&client, ip, "1.1", 50, name).await;
    }

    // a1 loses etcd: it keeps serving its last good configuration, without a failed request,
    // while a2 follows the next change.
    let (a1, a1_ip) = agents[0].clone();
    let (a2, a2_ip) = agents[1].clone();
    docker(&["network", "disconnect", &kv_net, &a1]);
    write((100, 0)).await;
    serves(&client, &a2_ip, "1.0", "a2 follows while a1 is cut off").await;
    all_answer(&client, &a1_ip, "1.1", 200, "a1 cut off from etcd").await;
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Running}}", &a1]),
        "true",
        "a1 still runs"
    );
    // Reconnected, it catches up.
    docker(&["network", "connect", &kv_net, &a1]);
    serves(&client, &a1_ip, "1.0", "a1 catches up after the partition").await;

    // a2 restarted comes back serving the current configuration.
    docker(&["restart", &a2]);
    serves(
        &client,
        &a2_ip,
        "1.0",
        "a2 serves the current configuration after a restart",
    )
    .await;
    all_answer(&client, &a2_ip, "1.0", 50, "a2 after its restart").await;

    // A stopped agent drains and exits cleanly.
    docker(&["stop", &a2]);
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.ExitCode}}", &a2]),
        "0",
        "SIGTERM stops the agent cleanly"
    );
    // And HAProxy was drained (soft stop), not killed when the grace period ran out.
    let logs = Command::new("docker")
        .args(["logs", &a2])
        .output()
        .expect("docker logs");
    let logs =
        String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("HAProxy drained and exited"),
        "the stopped agent drained HAProxy; its log:\n{logs}"
    );
}

/// The control plane's image: `vamp serve` answers its API from the container, the image's
/// health check says healthy, and `docker stop` ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vamp_image_serves_the_api_and_stops_cleanly() {
    let Some(image) = std::env::var("VAMP_TEST_VAMP_IMAGE")
        .ok()
        .filter(|i| !i.is_empty())
    else {
        assert!(
            !support::required(),
            "VAMP_TEST_VAMP_IMAGE is required (scripts/test.sh builds it with packaging/build-image.sh vamp)"
        );
        eprintln!("SKIPPED: no vamp image (set VAMP_TEST_VAMP_IMAGE)");
        return;
    };
    let mut fleet = Fleet {
        run: format!("vamp-image-{}", std::process::id()),
        containers: Vec::new(),
        networks: Vec::new(),
        images: Vec::new(),
    };
    // Listening on every interface, the image refuses to start without a token.
    let refused = fleet.run_container(
        "no-token",
        &[
            &image,
            "serve",
            "--in-memory",
            "--no-agent",
            "--scheduler",
            "memory://",
        ],
    );
    support::eventually(
        "the tokenless container exits",
        Duration::from_secs(60),
        async || {
            (docker(&["inspect", "--format", "{{.State.Status}}", &refused]) == "exited")
                .then_some(())
        },
    )
    .await;
    assert_ne!(
        docker(&["inspect", "--format", "{{.State.ExitCode}}", &refused]),
        "0"
    );
    let logs = std::process::Command::new("docker")
        .args(["logs", &refused])
        .output()
        .unwrap();
    let logs =
        String::from_utf8_lossy(&logs.stderr).into_owned() + &String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.contains("VAMP_HTTP_API_TOKEN"),
        "the refusal says what to set: {logs}"
    );
    let token = "fleet-test-token-0123456789";
    let name = fleet.run_container(
        "api",
        &[
            "-p",
            "127.0.0.1::8080",
            "-e",
            &format!("VAMP_HTTP_API_TOKEN={token}"),
            &image,
            "serve",
            "--in-memory",
            "--no-agent",
            "--scheduler",
            "memory://",
        ],
    );
    let port = docker(&["port", &name, "8080/tcp"])
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .to_owned();
    support::eventually("healthy", Duration::from_secs(60), async || {
        (docker(&["inspect", "--format", "{{.State.Health.Status}}", &name]) == "healthy")
            .then_some(())
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/v1/info");
    let without = client
        .get(&url)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), reqwest::StatusCode::UNAUTHORIZED);
    let info: serde_json::Value = client
        .get(&url)
        .header("Accept", "application/json")
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info.is_object(), "{info}");
    assert_eq!(
        docker(&["inspect", "--format", "{{.Config.User}}", &name]),
        "1988:1988",
        "not root"
    );
    docker(&["stop", &name]);
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.ExitCode}}", &name]),
        "0"
    );
}
