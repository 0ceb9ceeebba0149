//! Vamp installed on Kubernetes from `packaging/kubernetes/vamp.yaml`, as the README's three
//! commands do (the namespace, the API token's Secret, the manifests), then used: both
//! `vamp serve` replicas answer, one of them leads through the Lease, a deployment made through
//! either gets its Kubernetes Deployment and a Service for its gateway, and a time workflow's
//! runs are Jobs that complete and are removed after their time to live.
//!
//! On the API-server **double** of `vamp-backends/tests` (no cluster runs on this project's
//! machines): the manifests' objects are applied through `kube` as their `k8s-openapi` types,
//! and the double runs the `vamp` Deployment's pods: each container is `vamp serve`, this test
//! binary run again ([`vamp_image`]: the image's entrypoint, `vamp`, is
//! [`vamp_examples::serve::main`]), with the image's environment (`packaging/vamp/Dockerfile`)
//! and the container's as the kubelet makes it (the ConfigMap, the Secret, the pod's name), and
//! a kubeconfig in place of the service-account mount naming the same server, token and
//! namespace. The pods' requests are authorized by the double's RBAC against the manifests'
//! Role: nothing Vamp calls may be refused. The replicas share PostgreSQL and etcd (the test
//! command provides both; required with CI=true or VAMP_TEST_INTEGRATION=1).
//!
//! On a real cluster (`a_real_cluster_installs_and_runs_vamp`, ignored; run it with
//! `cargo test -p vamp-examples --all-features --test kubernetes_install -- --ignored
//! a_real_cluster`): the same steps and checks, with the images of `packaging/build-image.sh`
//! loaded into the cluster, through `kubectl port-forward`.
#![cfg(all(feature = "kubernetes", feature = "postgres", feature = "etcd"))]

#[path = "../../vamp-backends/tests/http_double/mod.rs"]
#[allow(dead_code)]
mod http_double;
#[path = "../../vamp-backends/tests/kube_double/mod.rs"]
#[allow(dead_code)]
mod kube_double;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use support::eventually;

/// The container arguments of the `vamp` image run by the double, as JSON.
const ARGS_ENV: &str = "VAMP_TEST_CONTAINER_ARGS";

/// The `vamp` image's container, when the install test runs this binary as one: the image's
/// entrypoint `vamp` with the container's arguments.
#[test]
#[ignore = "the install test runs it as a pod's container"]
fn vamp_image() {
    let Ok(args) = std::env::var(ARGS_ENV) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).unwrap();
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    let code = vamp_examples::serve::main(&args[1..]);
    assert_eq!(code, std::process::ExitCode::SUCCESS, "vamp serve's exit");
}

/// The image's `ENV` of a Dockerfile (`ENV K=V \` continued lines).
fn image_env(dockerfile: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dockerfile),
    )
    .unwrap();
    let mut env = Vec::new();
    let mut in_env = false;
    for line in text.lines() {
        let rest = match line.strip_prefix("ENV ") {
            Some(r) => r,
            None if in_env => line,
            None => continue,
        };
        in_env = rest.trim_end().ends_with('\\');
        for pair in rest.trim_end_matches('\\').split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap();
            env.push((k.to_owned(), v.to_owned()));
        }
    }
    env
}

/// Applies the manifests in namespace `ns` through `kube`, each object as its `k8s-openapi`
/// type (a field the type does not know fails the test), after the Secret of the API token,
/// with the ConfigMap's settings replaced by `settings` (as a user sets them).
async fn install(client: &kube::Client, ns: &str, token: &str, settings: &[(&str, String)]) {
    use k8s_openapi::api::{apps, core, rbac};
    async fn create<K>(client: &kube::Client, ns: &str, o: &Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let typed: K = serde_json::from_value(o.clone())
            .unwrap_or_else(|e| panic!("{} {}: {e}", o["kind"], o["metadata"]["name"]));
        let back = serde_json::to_value(&typed).unwrap();
        assert_eq!(&back, o, "{} is its k8s-openapi type", o["kind"]);
        Api::<K>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &typed)
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", o["kind"], o["metadata"]["name"]));
    }
    // kubectl create secret generic vamp-api --from-literal=token=…
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vamp-api", "namespace": ns},
        "stringData": {"token": token},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the API token's Secret");
    for mut o in kube_double::KubeDouble::vamp_manifests() {
        if o["kind"] == "ConfigMap" {
            for (k, v) in settings {
                assert!(o["data"].get(*k).is_some(), "the ConfigMap sets {k}");
                o["data"][*k] = json!(v);
            }
        }
        match o["kind"].as_str().unwrap() {
            "ServiceAccount" => create::<core::v1::ServiceAccount>(client, ns, &o).await,
            "Role" => create::<rbac::v1::Role>(client, ns, &o).await,
            "RoleBinding" => create::<rbac::v1::RoleBinding>(client, ns, &o).await,
            "ConfigMap" => create::<core::v1::ConfigMap>(client, ns, &o).await,
            "Deployment" => create::<apps::v1::Deployment>(client, ns, &o).await,
            "Service" => create::<core::v1::Service>(client, ns, &o).await,
            "DaemonSet" => create::<apps::v1::DaemonSet>(client, ns, &o).await,
            other => panic!("unexpected kind {other}"),
        }
    }
}

/// Whether a pod's `Ready` condition is true.
fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Where the test reaches a pod's API (port 8080): its base URL.
type Reach<'a> = &'a (dyn Fn(&Pod) -> String + Sync);

/// The checks, once installed in `ns`: both replicas ready and answering with the token (and
/// only with it), one leader named by both, a deployment's gateway Service, a time workflow's
/// Jobs completed and removed. `logs` shows the replicas' output when something never happens.
async fn use_vamp(client: &kube::Client, ns: &str, token: &str, reach: Reach<'_>) {
    let limit = Duration::from_secs(120);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let vamp = ListParams::default().labels("app.kubernetes.io/name=vamp");
    let replicas = eventually("both vamp replicas ready", limit, async || {
        let list = pods.list(&vamp).await.ok()?.items;
        (list.len() == 2 && list.iter().all(ready)).then_some(list)
    })
    .await;
    let bases: Vec<String> = replicas.iter().map(reach).collect();
    let http = Client::new();
    let call = async |method: reqwest::Method, url: String, body: Option<&str>| {
        let mut r = http
            .request(method, url)
            .bearer_auth(token)
            .header("Accept", "application/json")
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            r = r
                .header("Content-Type", "application/x-yaml")
                .body(b.to_owned());
        }
        match r.send().await {
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, json!(e.to_string())),
        }
    };
    // The API requires the token.
    let anonymous = http
        .get(format!("{}/api/v1/info", bases[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // One leader, through the Lease, named by both.
    let leader = eventually("one leader named by both replicas", limit, async || {
        let mut views = Vec::new();
        for b in &bases {
            let (status, info) = call(
                reqwest::Method::GET,
                format!("{b}/api/v1/info?on=loops"),
                None,
            )
            .await;
            if status != StatusCode::OK {
                return None;
            }
            views.push((
                info["leader"].as_bool()?,
                info["leader_id"].as_str()?.to_owned(),
            ));
        }
        let leaders: Vec<usize> = (0..views.len()).filter(|i| views[*i].0).collect();
        (leaders.len() == 1 && views[0].1 == views[1].1).then(|| leaders[0])
    })
    .await;
    let follower = &bases[1 - leader];

    // A deployment with a gateway, made through the follower.
    let blueprint = "name: shop\ngateways:\n  9050: web/port\nclusters:\n  web:\n    services:\n    - breed:\n        name: web:1.0\n        deployable: {type: docker, definition: 'magneticio/sava:1.0.0'}\n        ports: {port: 8080/http}\n      scale: {cpu: 0.1, memory: 64MB, instances: 1}\n";
    let (status, body) = call(
        reqwest::Method::PUT,
        format!("{follower}/api/v1/deployments/shop"),
        Some(blueprint),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let gateways = ListParams::default().labels("io.vamp=gateway");
    // Its two gateways (the cluster's, `shop/web/port`, and the deployment's on 9050).
    let of_gateway = |s: &Service| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("io.vamp/gateway"))
            .cloned()
            .unwrap_or_default()
    };
    let exposed = eventually("a Service for each of its gateways", limit, async || {
        let list = services.list(&gateways).await.ok()?.items;
        (list.len() == 2).then_some(list)
    })
    .await;
    let names: Vec<String> = exposed.iter().map(of_gateway).collect();
    assert!(
        names.iter().any(|g| g == "shop/web/port") && names.iter().all(|g| g.starts_with("shop/")),
        "{names:?}"
    );
    for s in exposed {
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(
            spec.selector.unwrap().get("io.vamp").map(String::as_str),
            Some("vamp-gateway-agent"),
            "the Service sends to the gateway agents"
        );
    }
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), ns);
    eventually("the service's Deployment", limit, async || {
        let list = deployments
            .list(&ListParams::default().labels("io.vamp=deployment-service"))
            .await
            .ok()?
            .items;
        (list.len() == 1).then_some(())
    })
    .await;

    // A time workflow: its runs are Jobs that complete and go after their time to live.
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{follower}/api/v1/breeds"),
        Some("name: tick\ndeployable: {type: docker, definition: 'busybox:1.36'}\n"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(
        reqwest::Method::POST,
        format!("{follower}/api/v1/workflows"),
        Some("name: nightly\nbreed: tick\nschedule:\n  time: {period: PT2S}\n"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let runs = ListParams::default().labels("io.vamp=workflow-run");
    let first = eventually("a workflow run's Job", limit, async || {
        let list = jobs.list(&runs).await.ok()?.items;
        list.into_iter().next()?.metadata.name
    })
    .await;
    eventually("the run's Job completes", limit, async || {
        let job = jobs.get_opt(&first).await.ok()??;
        (job.status?.succeeded == Some(1)).then_some(())
    })
    .await;
    eventually(
        "the completed Job is removed after its time to live",
        limit,
        async || jobs.get_opt(&first).await.ok()?.is_none().then_some(()),
    )
    .await;
    let (status, body) = call(
        reqwest::Method::DELETE,
        format!("{follower}/api/v1/workflows/nightly"),
        None,
    )
    .await;
    assert!(status.is_success(), "{status} {body}");

    // Undeployed: the gateway's Service goes with the deployment.
    let (status, body) = call(
        reqwest::Method::DELETE,
        format!("{follower}/api/v1/deployments/shop"),
        Some(blueprint),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    eventually("the gateway's Service removed", limit, async || {
        services
            .list(&gateways)
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
}

/// The replicas' output, shown when the test fails.
struct Logs(std::path::PathBuf);

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let log = entry.path().join("log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {}:", log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The manifests on the API-server double, which runs the `vamp` pods as processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_manifests_install_vamp_on_the_api_server_double() {
    let (Ok(pg), Ok(etcd)) = (
        std::env::var("VAMP_POSTGRES_URL"),
        std::env::var("VAMP_ETCD_ENDPOINTS"),
    ) else {
        assert!(
            !support::required(),
            "VAMP_POSTGRES_URL and VAMP_ETCD_ENDPOINTS are required (scripts/test.sh sets them)"
        );
        eprintln!("SKIPPED: set VAMP_POSTGRES_URL and VAMP_ETCD_ENDPOINTS");
        return;
    };
    let run = std::process::id();
    let etcd_host = support::etcd_host(&etcd);
    let double = kube_double::KubeDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let _logs = Logs(dir.path().to_owned());
    let root = dir.path().to_owned();
    let server = double.address();
    let image = image_env("packaging/vamp/Dockerfile");
    assert!(
        image.iter().any(|(k, _)| k == "VAMP_HTTP_API_PORT"),
        "{image:?}"
    );
    double.run_images(Arc::new(move |pod: &kube_double::PodRun| {
        if pod.image != "vamp:latest" {
            return None;
        }
        let home = root.join(&pod.pod);
        std::fs::create_dir_all(&home).unwrap();
        // In place of the service-account mount: the same server, token and namespace.
        let kubeconfig = home.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster: {{server: '{server}'}}\ncontexts:\n- name: pod\n  context: {{cluster: cluster, namespace: {}, user: sa}}\ncurrent-context: pod\nusers:\n- name: sa\n  user: {{token: '{}'}}\n",
                pod.namespace,
                pod.token.as_deref().expect("the vamp pod's token is mounted")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(home.join("log")).unwrap();
        let mut c = std::process::Command::new(std::env::current_exe().unwrap());
        c.args(["--exact", "vamp_image", "--ignored", "--nocapture"])
            .env_clear()
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(path) = std::env::var_os("PATH") {
            c.env("PATH", path);
        }
        // The image's environment, then the container's. A container listens on all of its
        // pod's addresses (0.0.0.0 in the image); here the pod's one.
        for (k, v) in &image {
            let v = match k.as_str() {
                "VAMP_HTTP_API_INTERFACE" => pod.ip.to_string(),
                "VAMP_DATA_DIR" => home.join("data").display().to_string(),
                _ => v.clone(),
            };
            c.env(k, v);
        }
        c.envs(pod.env.iter().map(|(k, v)| (k, v)))
            .env("KUBECONFIG", &kubeconfig)
            .env(ARGS_ENV, serde_json::to_string(&pod.args).unwrap());
        Some(c)
    }));
    vamp_backends::scheduler::kubernetes::install_tls_provider();
    let client =
        kube::Client::try_from(kube::Config::new(double.address().parse().unwrap())).unwrap();
    // As `openssl rand -hex 32` would give.
    let token = format!(
        "{:032x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            ^ (u128::from(run) << 64)
    );
    install(
        &client,
        "vamp",
        &token,
        &[
            (
                "VAMP_PERSISTENCE_URL",
                format!(
                    "{pg}{}table=k8s_install_{run}",
                    if pg.contains('?') { '&' } else { '?' }
                ),
            ),
            (
                "VAMP_KEY_VALUE_STORE_URL",
                format!("etcd://{etcd_host}/k8s-install-{run}"),
            ),
            (
                "VAMP_CONTAINER_DRIVER_URL",
                "kubernetes://?namespace=vamp&run-ttl=1".into(),
            ),
        ],
    )
    .await;
    let reach = |p: &Pod| {
        format!(
            "http://{}:8080",
            p.status.as_ref().unwrap().pod_ip.as_ref().unwrap()
        )
    };
    use_vamp(&client, "vamp", &token, &reach).await;
    // Everything Vamp called, the manifests' Role allowed; what it does not grant is refused.
    assert_eq!(double.forbidden(), Vec::<String>::new());
    let sa = double.service_account_token("vamp", "vamp");
    let mut config = kube::Config::new(double.address().parse().unwrap());
    config.auth_info.token = Some(sa.into());
    let as_vamp = kube::Client::try_from(config).unwrap();
    let refused = Api::<Secret>::namespaced(as_vamp, "vamp")
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403),
        "{refused:?}"
    );
}

/// `kubectl port-forward` to a pod's port 8080, stopped on drop.
struct PortForward {
    child: std::process::Child,
    base: String,
}

impl PortForward {
    fn start(ns: &str, pod: &str) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new("kubectl")
            .args(["port-forward", "-n", ns, &format!("pod/{pod}"), ":8080"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("kubectl port-forward said {line:?}"))
            .to_owned();
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same on a real cluster: `KUBECONFIG` (or the pod's service account) with the right to
/// create namespace `vamp` and what the manifests hold; the images of
/// `packaging/build-image.sh` loaded into the cluster (`kind load docker-image vamp:latest
/// vamp-gateway-agent:latest`); `VAMP_TEST_KUBERNETES_PERSISTENCE_URL` and
/// `VAMP_TEST_KUBERNETES_KV_URL` reachable from the pods; `kubectl` (port-forward) and an image
/// `busybox:1.36` the cluster can pull. Removes namespace `vamp` at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a real cluster: KUBECONFIG, VAMP_TEST_KUBERNETES_PERSISTENCE_URL, VAMP_TEST_KUBERNETES_KV_URL"]
async fn a_real_cluster_installs_and_runs_vamp() {
    use k8s_openapi::api::core::v1::Namespace;
    let persistence = std::env::var("VAMP_TEST_KUBERNETES_PERSISTENCE_URL")
        .expect("VAMP_TEST_KUBERNETES_PERSISTENCE_URL");
    let kv = std::env::var("VAMP_TEST_KUBERNETES_KV_URL").expect("VAMP_TEST_KUBERNETES_KV_URL");
    vamp_backends::scheduler::kubernetes::install_tls_provider();
    let client = kube::Client::try_default().await.expect("a cluster");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "vamp"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace vamp (remove an earlier one first)");
    let token = format!(
        "{:032x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    install(
        &client,
        "vamp",
        &token,
        &[
            ("VAMP_PERSISTENCE_URL", persistence),
            ("VAMP_KEY_VALUE_STORE_URL", kv),
            (
                "VAMP_CONTAINER_DRIVER_URL",
                "kubernetes://?namespace=vamp&run-ttl=5".into(),
            ),
        ],
    )
    .await;
    let forwards = std::sync::Mutex::new(Vec::new());
    let reach = |p: &Pod| {
        let f = PortForward::start("vamp", p.metadata.name.as_deref().unwrap());
        let base = f.base.clone();
        forwards.lock().unwrap().push(f);
        base
    };
    use_vamp(&client, "vamp", &token, &reach).await;
    drop(forwards);
    let _ = namespaces.delete("vamp", &Default::default()).await;
}
