//! A **double** of the Kubernetes API server, in process, speaking real HTTP, for tests: no
//! API server can run on this project's machines. It is not Kubernetes; it follows the
//! Kubernetes API reference (API concepts: resource versions, watches, `Status` bodies;
//! `apps/v1` Deployment, its `scale` subresource, `v1` Pod) for what the
//! `scheduler-kubernetes` driver and `kube`'s clients and watchers use:
//!
//! * `GET|POST /apis/apps/v1/namespaces/{ns}/deployments`, `GET|PUT|PATCH|DELETE …/{name}`,
//!   `GET|PATCH …/{name}/scale` (merge patch); `GET /api/v1/namespaces/{ns}/pods`,
//!   `GET|DELETE …/pods/{name}`. Lists filter by `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`)
//!   and carry the list's `resourceVersion`.
//! * Watches (`?watch=true&resourceVersion=N`): newline-delimited `ADDED`/`MODIFIED`/`DELETED`
//!   events after version `N`, from a bounded history, then live; a version older than the
//!   history gets an `ERROR` event with a `410 Expired` `Status`, as the API server answers.
//!   A watch ends after `timeoutSeconds`.
//! * Errors as `Status` objects: `404 NotFound`, `409 AlreadyExists` (create),
//!   `409 Conflict` (update with a stale `resourceVersion`), `422 Invalid` with `causes`
//!   (names, label values, a selector that does not match the template, no containers, no
//!   `resourceVersion` on update), `401 Unauthorized` without the bearer token when one is set.
//! * A Deployment controller of its own: pods named `<deployment>-<template hash>-<n>` follow
//!   `spec.replicas` and are replaced when the template changes; a deleted pod is replaced.
//!   Pods are simulated but reachable: each gets its own loopback address (`127.x.y.z`) as
//!   `podIP`, with an HTTP server on every container port answering `200` with the pod's name.
//!   A pod is ready unless its readiness probe's path contains `fail` (no probe is run).
//! * A container runtime of its own for images a test names ([`KubeDouble::run_images`]):
//!   such a pod's container runs as a local process (the test builds its command from a
//!   [`PodRun`]: the image, `command` and `args` with `$(VAR)` expanded, and the environment
//!   as the kubelet gives it: `envFrom` ConfigMaps and Secrets, then `env` with `value`,
//!   `fieldRef` (`metadata.name`, `metadata.namespace`, `status.podIP`,
//!   `spec.serviceAccountName`), `configMapKeyRef` and `secretKeyRef`; a missing reference
//!   not marked `optional` leaves the container waiting, `CreateContainerConfigError`, as
//!   the kubelet does). The pod is ready once its `httpGet` readiness probe answers `2xx`
//!   at the pod's address; the process is killed when the pod goes. With one network
//!   namespace for every pod, the test gives the process the pod's own address to listen on
//!   where a container would listen on all of its pod's.
//! * Service-account tokens ([`KubeDouble::service_account_token`], and a run pod's own
//!   unless `automountServiceAccountToken: false`): a request bearing one is authorized as
//!   `system:serviceaccount:<ns>:<name>` against the stored Roles bound to it by RoleBindings
//!   in the request's namespace (`apiGroups`, `resources` with `resource/subresource`,
//!   `verbs`, `resourceNames`), as the RBAC authorizer does: `403 Forbidden` otherwise
//!   (recorded: [`KubeDouble::forbidden`]). Discovery (`GET /version`, `/api`, `/apis`) is
//!   open to any authenticated caller.
//! * `batch/v1` Jobs: `GET|POST /apis/batch/v1/namespaces/{ns}/jobs`, `GET|DELETE …/{name}`;
//!   `422 Invalid` for a bad name, no containers, or a pod template whose `restartPolicy` is
//!   not `Never` or `OnFailure` (as the API server validates). A Job controller of its own: a
//!   Job's pod "runs" at once (`status.active: 1`) and succeeds 50 ms later (`succeeded: 1`,
//!   `completionTime`, condition `Complete`), unless its image names `long-running` (it runs
//!   until deleted); a finished Job with `ttlSecondsAfterFinished` is deleted that many
//!   seconds later, as the TTL-after-finished controller does.
//! * `v1` Services: `GET|POST /api/v1/namespaces/{ns}/services`, `GET|PUT|DELETE …/{name}`;
//!   `422 Invalid` for a name that is not a DNS-1035 label, no ports, a port outside
//!   1–65535 or an unknown `spec.type`; a `clusterIP` given (`10.96.x.y`), a `nodePort`
//!   (from 30000) for `NodePort` and `LoadBalancer`; a `PUT` needs the current
//!   `resourceVersion` (`409 Conflict` otherwise).
//! * Stored, not acted on: `v1` ServiceAccounts, ConfigMaps and Secrets (`stringData` merged
//!   into base64 `data` on create, as the API server does), `rbac.authorization.k8s.io/v1`
//!   Roles and RoleBindings, `apps/v1` DaemonSets (`GET|POST …/{resource}`, `GET|DELETE
//!   …/{name}`; `409 AlreadyExists`, `422 Invalid` for a name that is not a DNS subdomain).
//! * `coordination.k8s.io/v1` Leases: `GET|POST /apis/coordination.k8s.io/v1/namespaces/{ns}/leases`,
//!   `GET|PUT|DELETE …/{name}`; a `PUT` needs the current `resourceVersion` (`409 Conflict`
//!   otherwise), a `POST` of an existing name is `409 AlreadyExists`.
//! * Every request is recorded (method, path with query, body) for request-shape tests.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::http_double;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How many events a watch can resume from.
const HISTORY: usize = 2000;

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Value,
}

impl Recorded {
    /// What RBAC checks of it, as the double's authorizer reads it: (API group,
    /// resource[/subresource], verb); `None` for a call outside a namespace or an unknown
    /// method.
    #[allow(dead_code)] // used by the RBAC test (vamp-backends/tests/kubernetes.rs)
    pub fn rbac_attributes(&self) -> Option<(String, String, String)> {
        let (path, query) = self.path.split_once('?').unwrap_or((&self.path, ""));
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let watching = query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        let method = Method::from_bytes(self.method.as_bytes()).ok()?;
        let (verb, group, resource, _, _) = attributes(&method, &segments, watching)?;
        Some((group.to_owned(), resource, verb.to_owned()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Deployment,
    Pod,
}

#[derive(Clone, Debug)]
struct Ev {
    rv: u64,
    kind: Kind,
    ns: String,
    typ: &'static str,
    object: Value,
}

struct PodEntry {
    json: Value,
    owner: String,
    servers: Vec<JoinHandle<()>>,
    /// The container's process, for a pod of an image the double runs (killed on drop).
    _process: Option<tokio::process::Child>,
}

/// A container the double runs as a local process (see [`KubeDouble::run_images`]).
#[derive(Clone, Debug)]
#[allow(dead_code)] // read by the tests that run images (examples/tests)
pub struct PodRun {
    pub namespace: String,
    pub pod: String,
    /// The pod's own address.
    pub ip: Ipv4Addr,
    pub image: String,
    /// The container's `command` and `args`, `$(VAR)` expanded from `env`.
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// The environment the kubelet gives the container, in its order.
    pub env: Vec<(String, String)>,
    /// The pod's service-account token, unless `automountServiceAccountToken: false`.
    pub token: Option<String>,
}

/// Builds the command of a run pod's container; `None`: the double's text server instead.
pub type Runtime = Arc<dyn Fn(&PodRun) -> Option<std::process::Command> + Send + Sync>;

impl Drop for PodEntry {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    deployments: BTreeMap<(String, String), Value>,
    pods: BTreeMap<(String, String), PodEntry>,
    leases: BTreeMap<(String, String), Value>,
    jobs: BTreeMap<(String, String), Value>,
    /// Objects only stored: (group, resource, namespace, name).
    stored: BTreeMap<(String, String, String, String), Value>,
    services: BTreeMap<(String, String), Value>,
    next_node_port: u16,
    history: VecDeque<Ev>,
    requests: Vec<Recorded>,
    counter: u64,
    next_ip: u32,
    /// Service-account tokens: token → (namespace, service account).
    sa_tokens: BTreeMap<String, (String, String)>,
    /// Requests refused by RBAC: "<user> <verb> <resource> <group> <namespace>".
    forbidden: Vec<String>,
}

struct Shared {
    /// Itself, for the tasks it starts.
    me: std::sync::Weak<Shared>,
    state: Mutex<State>,
    events: broadcast::Sender<Ev>,
    token: Option<String>,
    ip_base: u32,
    /// The longest a watch stays open (the API server's own limit, shortened by tests).
    watch_limit: Mutex<Duration>,
    /// Watches still to be answered `410 Expired` whatever their version.
    expire: std::sync::atomic::AtomicU32,
    /// `410 Expired` answers given.
    expired: std::sync::atomic::AtomicU32,
    /// The container runtime for run images.
    runtime: Mutex<Option<Runtime>>,
}

/// The double; stops serving when dropped.
pub struct KubeDouble {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for KubeDouble {
    fn drop(&mut self) {
        self.server.abort();
        // Run pods' processes end with their pods.
        if let Ok(mut state) = self.shared.state.lock() {
            state.pods.clear();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: String, details: Value) -> Response<Body> {
    full(
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "details": details, "code": code}),
    )
}

fn not_found(kind: &str, group: &str, name: &str) -> Response<Body> {
    let full_kind = if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    };
    status(
        404,
        "NotFound",
        format!("{full_kind} \"{name}\" not found"),
        json!({"name": name, "group": group, "kind": kind}),
    )
}

fn invalid(name: &str, causes: Vec<(String, String)>) -> Response<Body> {
    let message = causes
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    status(
        422,
        "Invalid",
        format!("Deployment.apps \"{name}\" is invalid: {message}"),
        json!({"name": name, "group": "apps", "kind": "Deployment",
               "causes": causes.iter().map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f})).collect::<Vec<_>>()}),
    )
}

fn dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns1123_label)
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()))
}

/// Whether `labels` match a selector `k=v,k==v,k!=v,k`.
fn matches(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k.trim()).and_then(Value::as_str) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k.trim()).and_then(Value::as_str) == Some(v.trim())
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl State {
    fn emit(
        &mut self,
        tx: &broadcast::Sender<Ev>,
        kind: Kind,
        ns: &str,
        typ: &'static str,
        object: Value,
    ) {
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(self.rv);
        let ev = Ev {
            rv,
            kind,
            ns: ns.to_owned(),
            typ,
            object,
        };
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let _ = tx.send(ev);
    }

    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }
}

impl KubeDouble {
    /// A double without authentication.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A double requiring `Authorization: Bearer <token>`.
    pub async fn start_with(token: Option<&str>) -> Self {
        let seed = u32::from(std::process::id() as u16)
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
                & 0xffff);
        // 127.<seed>.0.2 upwards: a block of loopback addresses of this double's own.
        let ip_base = u32::from(Ipv4Addr::new(
            127,
            (seed % 250) as u8 + 2,
            (seed >> 8) as u8,
            2,
        ));
        let shared = Arc::new_cyclic(|me| Shared {
            me: std::sync::Weak::clone(me),
            state: Mutex::new(State::default()),
            events: broadcast::channel(4096).0,
            token: token.map(str::to_owned),
            ip_base,
            watch_limit: Mutex::new(Duration::from_secs(290)),
            expire: std::sync::atomic::AtomicU32::new(0),
            expired: std::sync::atomic::AtomicU32::new(0),
            runtime: Mutex::new(None),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::clone(&shared);
        let server = tokio::spawn(http_double::serve(listener, move |req| {
            let s = Arc::clone(&s);
            async move { handle(&s, req).await }
        }));
        Self {
            addr,
            shared,
            server,
        }
    }

    /// Runs the containers `runtime` gives a command for as local processes (pods created
    /// after this call).
    #[allow(dead_code)] // used by the tests that run images (examples/tests)
    pub fn run_images(&self, runtime: Runtime) {
        *self.shared.runtime.lock().unwrap() = Some(runtime);
    }

    /// A token of service account `ns/name`: requests bearing it are authorized by RBAC.
    pub fn service_account_token(&self, ns: &str, name: &str) -> String {
        self.shared.sa_token(ns, name)
    }

    /// The requests RBAC refused: "<user> <verb> <resource> <group> <namespace>".
    pub fn forbidden(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().forbidden.clone()
    }

    /// The objects of Vamp's manifests, `packaging/kubernetes/vamp.yaml`, as JSON: what
    /// the tests apply to the double.
    pub fn vamp_manifests() -> Vec<Value> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/kubernetes/vamp.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        vamp_core::dsl::load_documents(&text)
            .unwrap()
            .iter()
            .map(vamp_core::node::Node::to_json)
            .collect()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Services of namespace `ns`, by name.
    pub fn services(&self, ns: &str) -> BTreeMap<String, Value> {
        self.shared
            .state
            .lock()
            .unwrap()
            .services
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(k, v)| (k.1.clone(), v.clone()))
            .collect()
    }

    /// The Jobs of namespace `ns`, by name.
    pub fn jobs(&self, ns: &str) -> BTreeMap<String, Value> {
        self.shared
            .state
            .lock()
            .unwrap()
            .jobs
            .iter()
            .filter(|(k, _)| k.0 == ns)
            .map(|(k, j)| (k.1.clone(), j.clone()))
            .collect()
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Ends every watch after `limit` (the client must watch again from its last version).
    pub fn limit_watches(&self, limit: Duration) {
        *self.shared.watch_limit.lock().unwrap() = limit;
    }

    /// Answers the next `n` watches that resume from a version `410 Expired`, as the API
    /// server does once that version left its history.
    pub fn expire_next_watches(&self, n: u32) {
        self.shared
            .expire
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many watches were answered `410 Expired`.
    pub fn expired(&self) -> u32 {
        self.shared
            .expired
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The names of the pods of a namespace.
    pub fn pods(&self, ns: &str) -> Vec<String> {
        self.shared
            .state
            .lock()
            .unwrap()
            .pods
            .keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, name)| name.clone())
            .collect()
    }
}

impl Shared {
    /// Brings the pods of Deployment `ns/name` in line with it (the double's controller).
    async fn reconcile(&self, ns: &str, name: &str) {
        let deployment = self
            .state
            .lock()
            .unwrap()
            .deployments
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned();
        let Some(d) = deployment else {
            // Deleted: its pods go (propagation Background).
            let mut state = self.state.lock().unwrap();
            let gone: Vec<(String, String)> = state
                .pods
                .iter()
                .filter(|(k, p)| k.0 == ns && p.owner == name)
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                if let Some(p) = state.pods.remove(&key) {
                    let mut json = p.json.clone();
                    json["metadata"]["resourceVersion"] = json!(state.bump());
                    state.emit(&self.events, Kind::Pod, ns, "DELETED", json);
                }
            }
            return;
        };
        let template = d["spec"]["template"].clone();
        let hash = vamp_core::lookup::hex_sha1(&template.to_string(), "")[..10].to_owned();
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        // Pods of an older template go; extra pods go.
        let keep: Vec<(String, String)> = {
            let mut state = self.state.lock().unwrap();
            let mine: Vec<((String, String), String)> = state
                .pods
                .iter()
                .filter(|(k, p)| k.0 == ns && p.owner == name)
                .map(|(k, p)| {
                    (
                        k.clone(),
                        p.json["metadata"]["labels"]["pod-template-hash"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    )
                })
                .collect();
            let mut keep = Vec::new();
            for (key, h) in mine {
                if h == hash && keep.len() < replicas {
                    keep.push(key);
                } else if let Some(p) = state.pods.remove(&key) {
                    let mut json = p.json.clone();
                    json["metadata"]["resourceVersion"] = json!(state.bump());
                    state.emit(&self.events, Kind::Pod, ns, "DELETED", json);
                }
            }
            keep
        };
        for _ in keep.len()..replicas {
            self.launch(ns, name, &template, &hash).await;
        }
        self.refresh_status(ns, name, replicas);
    }

    /// Deployment `ns/name`'s status from its pods.
    fn refresh_status(&self, ns: &str, name: &str, replicas: usize) {
        let mut state = self.state.lock().unwrap();
        let ready = state
            .pods
            .iter()
            .filter(|(k, p)| k.0 == ns && p.owner == name)
            .filter(|(_, p)| p.json["status"]["containerStatuses"][0]["ready"] == json!(true))
            .count();
        let rv = state.bump();
        if let Some(d) = state.deployments.get_mut(&(ns.to_owned(), name.to_owned())) {
            d["status"] = json!({
                "observedGeneration": d["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
            });
            d["metadata"]["resourceVersion"] = json!(rv);
            let d = d.clone();
            state.emit(&self.events, Kind::Deployment, ns, "MODIFIED", d);
        }
    }

    async fn launch(&self, ns: &str, owner: &str, template: &Value, hash: &str) {
        let ports: Vec<u16> = template["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| {
                p["containerPort"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
            })
            .collect();
        let (n, mut ip_n) = {
            let mut state = self.state.lock().unwrap();
            state.counter += 1;
            (state.counter, state.next_ip)
        };
        let name = format!("{owner}-{hash}-{n:05x}");
        let runtime = self.runtime.lock().unwrap().clone();
        let container = &template["spec"]["containers"][0];
        let image = container["image"].as_str().unwrap_or("").to_owned();
        let has_runtime = runtime.is_some();
        // An address of its own where every container port can be bound.
        let (ip, mut servers) = loop {
            let ip = Ipv4Addr::from(self.ip_base + ip_n);
            ip_n += 1;
            let mut listeners = Vec::new();
            for p in &ports {
                match TcpListener::bind((ip, *p)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => break,
                }
            }
            if listeners.len() == ports.len() && has_runtime {
                // The process binds them; the double only checked they are free.
                break (ip, Vec::new());
            }
            if listeners.len() == ports.len() {
                let servers = listeners
                    .into_iter()
                    .map(|l| tokio::spawn(http_double::text_server(l, name.clone())))
                    .collect::<Vec<_>>();
                break (ip, servers);
            }
        };
        // A run image's container: its environment as the kubelet makes it, then its process.
        let mut process = None;
        let mut waiting = None;
        let mut run = false;
        if let Some(runtime) = runtime {
            let sa = template["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            let env = {
                let state = self.state.lock().unwrap();
                container_env(&state, ns, &name, ip, &sa, container)
            };
            match env {
                Err(why) => waiting = Some(why),
                Ok(env) => {
                    let token = (template["spec"]["automountServiceAccountToken"] != json!(false))
                        .then(|| self.sa_token(ns, &sa));
                    let expand = |v: &Value| -> Vec<String> {
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(|a| expand_vars(a, &env))
                            .collect()
                    };
                    let pod_run = PodRun {
                        namespace: ns.to_owned(),
                        pod: name.clone(),
                        ip,
                        image: image.clone(),
                        command: expand(&container["command"]),
                        args: expand(&container["args"]),
                        env: env.clone(),
                        token,
                    };
                    if let Some(command) = runtime(&pod_run) {
                        run = true;
                        let mut command = tokio::process::Command::from(command);
                        command.kill_on_drop(true);
                        match command.spawn() {
                            Ok(child) => process = Some(child),
                            Err(e) => waiting = Some(format!("RunContainerError: {e}")),
                        }
                    }
                }
            }
            if run {
                if let Some(probe) = http_probe(container, ip) {
                    servers.push(tokio::spawn(probe_until_ready(
                        std::sync::Weak::clone(&self.me),
                        ns.to_owned(),
                        name.clone(),
                        owner.to_owned(),
                        probe,
                    )));
                }
            } else if waiting.is_none() {
                // Not a run image: the double's text servers after all.
                for p in &ports {
                    if let Ok(l) = TcpListener::bind((ip, *p)).await {
                        servers.push(tokio::spawn(http_double::text_server(l, name.clone())));
                    }
                }
            }
        }
        let probe_path = container["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .unwrap_or("");
        let ready = !run && waiting.is_none() && !probe_path.contains("fail");
        let mut labels = template["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!(hash);
        let containers = template["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut state = self.state.lock().unwrap();
        state.next_ip = state.next_ip.max(ip_n);
        let rv = state.bump();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("uid-pod-{n}"), "resourceVersion": rv,
                "labels": labels, "creationTimestamp": "2026-11-29T12:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{owner}-{hash}"), "uid": format!("uid-rs-{owner}-{hash}"), "controller": true}],
            },
            "spec": template["spec"],
            "status": {
                "phase": "Running", "podIP": ip.to_string(), "hostIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": containers.iter().map(|c| json!({
                    "name": c["name"], "ready": ready, "restartCount": 0, "image": c["image"], "imageID": "",
                    "started": waiting.is_none(),
                    "state": match &waiting {
                        None => json!({"running": {"startedAt": "2026-11-29T12:00:01Z"}}),
                        Some(why) => json!({"waiting": {"reason": "CreateContainerConfigError", "message": why}}),
                    },
                })).collect::<Vec<_>>(),
            },
        });
        state.pods.insert(
            (ns.to_owned(), name.clone()),
            PodEntry {
                json: pod.clone(),
                owner: owner.to_owned(),
                servers,
                _process: process,
            },
        );
        state.emit(&self.events, Kind::Pod, ns, "ADDED", pod);
    }

    fn validate(d: &Value, name: &str) -> Vec<(String, String)> {
        let mut causes = Vec::new();
        if !dns1123_subdomain(name) {
            causes.push(("metadata.name".into(), format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")));
        }
        for path in ["/metadata/labels", "/spec/template/metadata/labels"] {
            if let Some(labels) = d.pointer(path).and_then(Value::as_object) {
                for (k, v) in labels {
                    let v = v.as_str().unwrap_or("");
                    if !label_value_ok(v) {
                        causes.push((format!("{}[{k}]", path.trim_start_matches('/').replace('/', ".")), format!("Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'")));
                    }
                }
            }
        }
        let selector = d
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object);
        match selector {
            None => causes.push(("spec.selector".into(), "Required value".into())),
            Some(sel) => {
                let labels = d
                    .pointer("/spec/template/metadata/labels")
                    .cloned()
                    .unwrap_or(json!({}));
                if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                    causes.push((
                        "spec.template.metadata.labels".into(),
                        "Invalid value: `selector` does not match template `labels`".into(),
                    ));
                }
            }
        }
        let containers = d
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array);
        match containers {
            None => causes.push((
                "spec.template.spec.containers".into(),
                "Required value".into(),
            )),
            Some(cs) if cs.is_empty() => causes.push((
                "spec.template.spec.containers".into(),
                "Required value".into(),
            )),
            Some(cs) => {
                for (i, c) in cs.iter().enumerate() {
                    if !c["name"].as_str().is_some_and(dns1123_label) {
                        causes.push((
                            format!("spec.template.spec.containers[{i}].name"),
                            "Invalid value: a lowercase RFC 1123 label".into(),
                        ));
                    }
                    if c["image"].as_str().is_none_or(str::is_empty) {
                        causes.push((
                            format!("spec.template.spec.containers[{i}].image"),
                            "Required value".into(),
                        ));
                    }
                }
            }
        }
        causes
    }
}

/// The environment the kubelet gives `container` of pod `ns/pod`: `envFrom` (ConfigMaps,
/// Secrets), then `env`; an error for a missing reference not marked `optional`.
fn container_env(
    state: &State,
    ns: &str,
    pod: &str,
    ip: Ipv4Addr,
    sa: &str,
    container: &Value,
) -> Result<Vec<(String, String)>, String> {
    let object = |resource: &str, name: &str| {
        state.stored.get(&(
            String::new(),
            resource.to_owned(),
            ns.to_owned(),
            name.to_owned(),
        ))
    };
    // A ConfigMap's or Secret's entries as text (a Secret's `data` is base64).
    let entries = |resource: &str, name: &str| -> Option<Vec<(String, String)>> {
        let o = object(resource, name)?;
        Some(
            o["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let v = v.as_str().unwrap_or("");
                    let text = if resource == "secrets" {
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v)
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                            .unwrap_or_default()
                    } else {
                        v.to_owned()
                    };
                    (k.clone(), text)
                })
                .collect(),
        )
    };
    let optional = |r: &Value| r["optional"] == json!(true);
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in container["envFrom"].as_array().into_iter().flatten() {
        for (resource, r) in [
            ("configmaps", &from["configMapRef"]),
            ("secrets", &from["secretRef"]),
        ] {
            let Some(name) = r["name"].as_str() else {
                continue;
            };
            match entries(resource, name) {
                Some(e) => {
                    let prefix = from["prefix"].as_str().unwrap_or("");
                    for (k, v) in e {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if optional(r) => {}
                None => return Err(format!("{resource} \"{name}\" not found")),
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("").to_owned();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            Some(expand_vars(v, &env))
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            Some(match path {
                "metadata.name" => pod.to_owned(),
                "metadata.namespace" => ns.to_owned(),
                "status.podIP" => ip.to_string(),
                "status.hostIP" => "127.0.0.1".to_owned(),
                "spec.serviceAccountName" => sa.to_owned(),
                "spec.nodeName" => "node-1".to_owned(),
                other => return Err(format!("unsupported fieldPath {other}")),
            })
        } else {
            let mut found = None;
            for (resource, r) in [
                ("configmaps", &from["configMapKeyRef"]),
                ("secrets", &from["secretKeyRef"]),
            ] {
                let (Some(o), Some(key)) = (r["name"].as_str(), r["key"].as_str()) else {
                    continue;
                };
                let v = entries(resource, o)
                    .and_then(|e| e.into_iter().find(|(k, _)| k == key).map(|(_, v)| v));
                match v {
                    Some(v) => found = Some(Some(v)),
                    None if optional(r) => found = Some(None),
                    None => return Err(format!("{resource} \"{o}\" has no key {key:?}")),
                }
            }
            found.flatten()
        };
        if let Some(v) = value {
            set(&mut env, name, v);
        }
    }
    Ok(env)
}

/// `$(VAR)` replaced by `env`'s value where defined, `$$` by `$`, as the kubelet expands
/// `command`, `args` and `env` values.
fn expand_vars(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's `httpGet` readiness probe at `ip`: (port, path); a named port resolved
/// against the container's ports.
fn http_probe(container: &Value, ip: Ipv4Addr) -> Option<(SocketAddr, String)> {
    let get = &container["readinessProbe"]["httpGet"];
    let port = match &get["port"] {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
        Value::String(name) => container["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| u16::try_from(p["containerPort"].as_u64()?).ok())?,
        _ => return None,
    };
    let path = get["path"].as_str().unwrap_or("/").to_owned();
    Some((SocketAddr::from((ip, port)), path))
}

/// Probes a run pod until it answers `2xx`, then marks it ready and updates its Deployment's
/// status (the kubelet's readiness probe, every 100 ms).
async fn probe_until_ready(
    shared: std::sync::Weak<Shared>,
    ns: String,
    pod: String,
    owner: String,
    (addr, path): (SocketAddr, String),
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let answer = async {
            let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
            c.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .ok()?;
            let mut head = [0u8; 12];
            c.read_exact(&mut head).await.ok()?;
            Some(head[9] == b'2')
        };
        let ok = tokio::time::timeout(Duration::from_secs(1), answer)
            .await
            .ok()
            .flatten()
            == Some(true);
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(s) = shared.upgrade() else {
        return;
    };
    {
        let mut state = s.state.lock().unwrap();
        let Some(json) = state
            .pods
            .get(&(ns.clone(), pod.clone()))
            .map(|p| p.json.clone())
        else {
            return;
        };
        let mut json = json;
        json["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        for c in json["status"]["containerStatuses"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            c["ready"] = json!(true);
        }
        json["metadata"]["resourceVersion"] = json!(state.bump());
        if let Some(p) = state.pods.get_mut(&(ns.clone(), pod.clone())) {
            p.json = json.clone();
        }
        state.emit(&s.events, Kind::Pod, &ns, "MODIFIED", json);
    }
    let replicas = s
        .state
        .lock()
        .unwrap()
        .deployments
        .get(&(ns.clone(), owner.clone()))
        .and_then(|d| d["spec"]["replicas"].as_u64());
    if let Some(r) = replicas {
        s.refresh_status(&ns, &owner, r as usize);
    }
}

/// What RBAC checks of a request: (verb, group, resource[/subresource], namespace, name).
fn attributes<'a>(
    method: &Method,
    segments: &[&'a str],
    watching: bool,
) -> Option<(&'static str, &'a str, String, &'a str, Option<&'a str>)> {
    let (group, rest) = match segments {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let ["namespaces", ns, resource, rest @ ..] = rest else {
        return None;
    };
    let (name, sub) = match rest {
        [] => (None, None),
        [name] => (Some(*name), None),
        [name, sub] => (Some(*name), Some(*sub)),
        _ => return None,
    };
    let verb = match (method.as_str(), name) {
        ("GET", _) if watching => "watch",
        ("GET", Some(_)) => "get",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => return None,
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => (*resource).to_owned(),
    };
    Some((verb, group, resource, ns, name))
}

/// Whether service account `(sa_ns, sa)` may do `verb` on `resource` of `group` in `ns`
/// (named `name`): a rule of a Role bound to it there grants it.
fn rbac_allows(
    state: &State,
    (sa_ns, sa): (&str, &str),
    (verb, group, resource, ns, name): (&str, &str, &str, &str, Option<&str>),
) -> bool {
    let rbac = "rbac.authorization.k8s.io";
    let has = |list: &Value, v: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .any(|x| x.as_str() == Some(v) || x.as_str() == Some("*"))
    };
    state
        .stored
        .iter()
        .filter(|(k, _)| k.0 == rbac && k.1 == "rolebindings" && k.2 == ns)
        .filter(|(_, b)| {
            b["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == json!("ServiceAccount")
                    && s["name"].as_str() == Some(sa)
                    && s["namespace"].as_str().unwrap_or(ns) == sa_ns
            })
        })
        .filter(|(_, b)| b["roleRef"]["kind"] == json!("Role"))
        .filter_map(|(_, b)| {
            state.stored.get(&(
                rbac.to_owned(),
                "roles".to_owned(),
                ns.to_owned(),
                b["roleRef"]["name"].as_str()?.to_owned(),
            ))
        })
        .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
        .any(|rule| {
            has(&rule["apiGroups"], group)
                && has(&rule["resources"], resource)
                && has(&rule["verbs"], verb)
                && (rule["resourceNames"].as_array().is_none_or(Vec::is_empty)
                    || name.is_some_and(|n| has(&rule["resourceNames"], n)))
        })
}

impl Shared {
    /// A new token of service account `ns/name`.
    fn sa_token(&self, ns: &str, name: &str) -> String {
        let mut state = self.state.lock().unwrap();
        state.counter += 1;
        let token = format!("sa-token-{ns}-{name}-{}-{}", state.counter, self.ip_base);
        state
            .sa_tokens
            .insert(token.clone(), (ns.to_owned(), name.to_owned()));
        token
    }
}

fn list_of(kind: &str, api_version: &str, rv: u64, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

/// A watch's answer: history after `from`, then live events, as newline-delimited JSON.
fn watch(
    s: &Shared,
    kind: Kind,
    ns: &str,
    selector: String,
    from: Option<u64>,
    timeout: Duration,
) -> Response<Body> {
    let mut live = s.events.subscribe();
    let (backlog, expired, start) = {
        let state = s.state.lock().unwrap();
        let oldest = state.history.front().map_or(state.rv + 1, |e| e.rv);
        let start = from.unwrap_or(state.rv);
        let forced = from.is_some()
            && s.expire
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
        let expired = forced || from.is_some_and(|f| f + 1 < oldest && state.rv > f);
        if expired {
            s.expired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let backlog: Vec<Ev> = state
            .history
            .iter()
            .filter(|e| e.rv > start)
            .cloned()
            .collect();
        (backlog, expired, start)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let ns = ns.to_owned();
    tokio::spawn(async move {
        let relevant = |e: &Ev| {
            e.kind == kind && e.ns == ns && matches(&selector, &e.object["metadata"]["labels"])
        };
        let line =
            |e: &Ev| Bytes::from(format!("{}\n", json!({"type": e.typ, "object": e.object})));
        if expired {
            let error = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {start}"), "reason": "Expired", "code": 410}});
            let _ = tx.send(Bytes::from(format!("{error}\n"))).await;
            return;
        }
        let mut last = start;
        for e in backlog.iter().filter(|e| relevant(e)) {
            last = last.max(e.rv);
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let e = tokio::select! {
                e = live.recv() => e,
                () = tokio::time::sleep_until(deadline) => return,
                () = tx.closed() => return,
            };
            match e {
                Ok(e) if e.rv > last && relevant(&e) => {
                    last = e.rv;
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

/// The routes of objects only stored (see the module).
fn stored(
    s: &Arc<Shared>,
    method: &Method,
    (group, ns, resource): (&str, &str, &str),
    name: Option<&str>,
    body: &Value,
) -> Response<Body> {
    let mut state = s.state.lock().unwrap();
    let key = |n: &str| {
        (
            group.to_owned(),
            resource.to_owned(),
            ns.to_owned(),
            n.to_owned(),
        )
    };
    match (method.clone(), name) {
        (Method::GET, None) => {
            let items = state
                .stored
                .iter()
                .filter(|(k, _)| k.0 == group && k.1 == resource && k.2 == ns)
                .map(|(_, v)| v.clone())
                .collect();
            let kind = body["kind"].as_str().unwrap_or("List").to_owned();
            full(StatusCode::OK, list_of(&kind, "v1", state.rv, items))
        }
        (Method::POST, None) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
            if !dns1123_subdomain(&name) {
                return invalid(
                    &name,
                    vec![("metadata.name".into(), format!("invalid name {name:?}"))],
                );
            }
            if state.stored.contains_key(&key(&name)) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("{resource} \"{name}\" already exists"),
                    json!({"name": name, "group": group, "kind": resource}),
                );
            }
            let mut v = body.clone();
            // A Secret's `stringData` is write-only: merged into `data`, base64.
            if let Some(Value::Object(strings)) =
                v.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                for (k, text) in strings {
                    v["data"][k] = json!(base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        text.as_str().unwrap_or("")
                    ));
                }
            }
            v["metadata"]["namespace"] = json!(ns);
            v["metadata"]["uid"] = json!(format!("uid-{resource}-{name}"));
            v["metadata"]["resourceVersion"] = json!(state.bump());
            state.stored.insert(key(&name), v.clone());
            full(StatusCode::CREATED, v)
        }
        (Method::GET, Some(name)) => match state.stored.get(&key(name)) {
            Some(v) => full(StatusCode::OK, v.clone()),
            None => not_found(resource, group, name),
        },
        (Method::DELETE, Some(name)) => match state.stored.remove(&key(name)) {
            Some(v) => full(StatusCode::OK, v),
            None => not_found(resource, group, name),
        },
        _ => status(
            405,
            "MethodNotAllowed",
            "method not allowed".into(),
            json!({}),
        ),
    }
}

/// The Service routes (see the module).
fn service(
    s: &Arc<Shared>,
    method: &Method,
    ns: &str,
    name: Option<&str>,
    body: &Value,
    selector: &str,
) -> Response<Body> {
    let mut state = s.state.lock().unwrap();
    let check = |svc: &Value, name: &str| {
        let mut causes = Vec::new();
        let dns1035 = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && dns1123_label(name);
        if !dns1035 {
            causes.push(("metadata.name".to_owned(), format!("invalid name {name:?}")));
        }
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        if ports.is_empty() {
            causes.push(("spec.ports".to_owned(), "Required value".to_owned()));
        }
        for p in &ports {
            if !p["port"].as_u64().is_some_and(|p| (1..=65535).contains(&p)) {
                causes.push((
                    "spec.ports.port".to_owned(),
                    format!("invalid port {}", p["port"]),
                ));
            }
        }
        if !matches!(
            svc["spec"]["type"].as_str(),
            None | Some("ClusterIP" | "NodePort" | "LoadBalancer")
        ) {
            causes.push(("spec.type".to_owned(), "Unsupported value".to_owned()));
        }
        causes
    };
    match (method.clone(), name) {
        (Method::GET, None) => {
            let items = state
                .services
                .iter()
                .filter(|(k, v)| k.0 == ns && matches(selector, &v["metadata"]["labels"]))
                .map(|(_, v)| v.clone())
                .collect();
            full(StatusCode::OK, list_of("Service", "v1", state.rv, items))
        }
        (Method::POST, None) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let causes = check(body, &name);
            if !causes.is_empty() {
                return invalid(&name, causes);
            }
            let key = (ns.to_owned(), name.clone());
            if state.services.contains_key(&key) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("services \"{name}\" already exists"),
                    json!({"name": name, "kind": "services"}),
                );
            }
            let mut v = body.clone();
            let n = state.services.len() as u64 + state.rv;
            v["metadata"]["namespace"] = json!(ns);
            v["metadata"]["uid"] = json!(format!("uid-svc-{name}"));
            v["metadata"]["resourceVersion"] = json!(state.bump());
            v["spec"]["clusterIP"] = json!(format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff));
            if matches!(
                v["spec"]["type"].as_str(),
                Some("NodePort" | "LoadBalancer")
            ) && let Some(ports) = v["spec"]["ports"].as_array_mut()
            {
                for p in ports {
                    state.next_node_port = state.next_node_port.max(30000) + 1;
                    p["nodePort"] = json!(state.next_node_port - 1);
                }
            }
            state.services.insert(key, v.clone());
            full(StatusCode::CREATED, v)
        }
        (Method::GET, Some(name)) => match state.services.get(&(ns.to_owned(), name.to_owned())) {
            Some(v) => full(StatusCode::OK, v.clone()),
            None => not_found("services", "", name),
        },
        (Method::PUT, Some(name)) => {
            let key = (ns.to_owned(), name.to_owned());
            let Some(current) = state.services.get(&key).cloned() else {
                return not_found("services", "", name);
            };
            let causes = check(body, name);
            if !causes.is_empty() {
                return invalid(name, causes);
            }
            if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on services \"{name}\": the object has been modified"
                    ),
                    json!({"name": name, "kind": "services"}),
                );
            }
            let mut v = body.clone();
            v["metadata"]["namespace"] = json!(ns);
            v["metadata"]["uid"] = current["metadata"]["uid"].clone();
            v["metadata"]["resourceVersion"] = json!(state.bump());
            v["spec"]["clusterIP"] = current["spec"]["clusterIP"].clone();
            state.services.insert(key, v.clone());
            full(StatusCode::OK, v)
        }
        (Method::DELETE, Some(name)) => {
            match state.services.remove(&(ns.to_owned(), name.to_owned())) {
                Some(v) => full(StatusCode::OK, v),
                None => not_found("services", "", name),
            }
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "method not allowed".into(),
            json!({}),
        ),
    }
}

/// The Job routes and the Job controller (see the module).
fn job(
    s: &Arc<Shared>,
    method: &Method,
    ns: &str,
    name: Option<&str>,
    body: &Value,
    selector: &str,
) -> Response<Body> {
    let mut state = s.state.lock().unwrap();
    match (method.clone(), name) {
        (Method::GET, None) => {
            let items = state
                .jobs
                .iter()
                .filter(|(k, j)| k.0 == ns && matches(selector, &j["metadata"]["labels"]))
                .map(|(_, j)| j.clone())
                .collect();
            full(StatusCode::OK, list_of("Job", "batch/v1", state.rv, items))
        }
        (Method::POST, None) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let mut causes = Vec::new();
            if !dns1123_subdomain(&name) || name.len() > 63 {
                causes.push(("metadata.name".to_owned(), format!("invalid name {name:?}")));
            }
            let pod = &body["spec"]["template"]["spec"];
            if pod["containers"].as_array().is_none_or(Vec::is_empty) {
                causes.push((
                    "spec.template.spec.containers".to_owned(),
                    "Required value".to_owned(),
                ));
            }
            if !matches!(pod["restartPolicy"].as_str(), Some("Never" | "OnFailure")) {
                causes.push((
                    "spec.template.spec.restartPolicy".to_owned(),
                    "Unsupported value: supported values: \"OnFailure\", \"Never\"".to_owned(),
                ));
            }
            if !causes.is_empty() {
                return invalid(&name, causes);
            }
            let key = (ns.to_owned(), name.clone());
            if state.jobs.contains_key(&key) {
                return status(
                    409,
                    "AlreadyExists",
                    format!("jobs.batch \"{name}\" already exists"),
                    json!({"name": name, "group": "batch", "kind": "jobs"}),
                );
            }
            let mut j = body.clone();
            j["metadata"]["namespace"] = json!(ns);
            j["metadata"]["uid"] = json!(format!("uid-job-{name}"));
            j["metadata"]["creationTimestamp"] = json!("2026-11-29T12:00:00Z");
            j["metadata"]["resourceVersion"] = json!(state.bump());
            j["status"] = json!({"active": 1, "startTime": "2026-11-29T12:00:00Z"});
            state.jobs.insert(key.clone(), j.clone());
            let long = pod["containers"][0]["image"]
                .as_str()
                .is_some_and(|i| i.contains("long-running"));
            let ttl = body["spec"]["ttlSecondsAfterFinished"].as_u64();
            if !long {
                let s = Arc::clone(s);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    {
                        let mut state = s.state.lock().unwrap();
                        let rv = state.bump();
                        let Some(j) = state.jobs.get_mut(&key) else {
                            return;
                        };
                        j["metadata"]["resourceVersion"] = json!(rv);
                        j["status"] = json!({
                            "succeeded": 1,
                            "startTime": "2026-11-29T12:00:00Z",
                            "completionTime": "2026-11-29T12:00:01Z",
                            "conditions": [{"type": "Complete", "status": "True"}],
                        });
                    }
                    if let Some(ttl) = ttl {
                        tokio::time::sleep(Duration::from_secs(ttl)).await;
                        s.state.lock().unwrap().jobs.remove(&key);
                    }
                });
            }
            full(StatusCode::CREATED, j)
        }
        (Method::GET, Some(name)) => match state.jobs.get(&(ns.to_owned(), name.to_owned())) {
            Some(j) => full(StatusCode::OK, j.clone()),
            None => not_found("jobs", "batch", name),
        },
        (Method::DELETE, Some(name)) => {
            let key = (ns.to_owned(), name.to_owned());
            let Some(j) = state.jobs.get(&key) else {
                return not_found("jobs", "batch", name);
            };
            if let Some(uid) = body["preconditions"]["uid"].as_str()
                && j["metadata"]["uid"].as_str() != Some(uid)
            {
                return status(
                    409,
                    "Conflict",
                    format!("Precondition failed: UID in precondition: {uid}"),
                    json!({"name": name, "group": "batch", "kind": "jobs"}),
                );
            }
            let j = state.jobs.remove(&key).expect("read above");
            full(StatusCode::OK, j)
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "method not allowed".into(),
            json!({}),
        ),
    }
}

/// The Lease routes (see the module).
fn lease(
    s: &Shared,
    method: &Method,
    ns: &str,
    name: Option<&str>,
    body: &Value,
) -> Response<Body> {
    let mut state = s.state.lock().unwrap();
    let conflict = |name: &str, reason: &str, message: String| {
        status(
            409,
            reason,
            message,
            json!({"name": name, "group": "coordination.k8s.io", "kind": "leases"}),
        )
    };
    match (method.clone(), name) {
        (Method::GET, None) => {
            let items = state
                .leases
                .iter()
                .filter(|(k, _)| k.0 == ns)
                .map(|(_, l)| l.clone())
                .collect();
            full(
                StatusCode::OK,
                list_of("Lease", "coordination.k8s.io/v1", state.rv, items),
            )
        }
        (Method::POST, None) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
            if !dns1123_subdomain(&name) {
                return status(
                    422,
                    "Invalid",
                    format!("Lease.coordination.k8s.io \"{name}\" is invalid: metadata.name"),
                    json!({"name": name, "group": "coordination.k8s.io", "kind": "Lease"}),
                );
            }
            let key = (ns.to_owned(), name.clone());
            if state.leases.contains_key(&key) {
                return conflict(
                    &name,
                    "AlreadyExists",
                    format!("leases.coordination.k8s.io \"{name}\" already exists"),
                );
            }
            let mut l = body.clone();
            l["apiVersion"] = json!("coordination.k8s.io/v1");
            l["kind"] = json!("Lease");
            l["metadata"]["namespace"] = json!(ns);
            l["metadata"]["uid"] = json!(format!("uid-lease-{name}"));
            l["metadata"]["resourceVersion"] = json!(state.bump());
            state.leases.insert(key, l.clone());
            full(StatusCode::CREATED, l)
        }
        (Method::GET, Some(name)) => match state.leases.get(&(ns.to_owned(), name.to_owned())) {
            Some(l) => full(StatusCode::OK, l.clone()),
            None => not_found("leases", "coordination.k8s.io", name),
        },
        (Method::PUT, Some(name)) => {
            let key = (ns.to_owned(), name.to_owned());
            let Some(current) = state.leases.get(&key).cloned() else {
                return not_found("leases", "coordination.k8s.io", name);
            };
            if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                return conflict(
                    name,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            let mut l = body.clone();
            l["apiVersion"] = json!("coordination.k8s.io/v1");
            l["kind"] = json!("Lease");
            l["metadata"]["namespace"] = json!(ns);
            l["metadata"]["uid"] = current["metadata"]["uid"].clone();
            l["metadata"]["resourceVersion"] = json!(state.bump());
            state.leases.insert(key, l.clone());
            full(StatusCode::OK, l)
        }
        (Method::DELETE, Some(name)) => {
            match state.leases.remove(&(ns.to_owned(), name.to_owned())) {
                Some(_) => full(
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                ),
                None => not_found("leases", "coordination.k8s.io", name),
            }
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "method not allowed".into(),
            json!({}),
        ),
    }
}

async fn handle(s: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned);
    let service_account = bearer
        .as_ref()
        .and_then(|b| s.state.lock().unwrap().sa_tokens.get(b).cloned());
    let authorized =
        service_account.is_some() || s.token.as_ref().is_none_or(|t| bearer.as_ref() == Some(t));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.state.lock().unwrap().requests.push(Recorded {
        method: method.to_string(),
        path: if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        },
        body: body.clone(),
    });
    if !authorized {
        return status(401, "Unauthorized", "Unauthorized".into(), json!({}));
    }
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    let selector = params.get("labelSelector").cloned().unwrap_or_default();
    let watching = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let from = params
        .get("resourceVersion")
        .filter(|r| !r.is_empty() && *r != "0")
        .and_then(|r| r.parse().ok());
    let timeout = Duration::from_secs(
        params
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290u64)
            .min(290),
    )
    .min(*s.watch_limit.lock().unwrap());
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // RBAC, for a service account's token.
    if let Some((sa_ns, sa)) = &service_account {
        let discovery = method == Method::GET
            && matches!(
                segments.as_slice(),
                ["version"] | ["api"] | ["apis"] | ["api", _] | ["apis", _, _]
            );
        let allowed = discovery
            || attributes(&method, &segments, watching).is_some_and(
                |(verb, group, resource, ns, name)| {
                    let state = s.state.lock().unwrap();
                    rbac_allows(&state, (sa_ns, sa), (verb, group, &resource, ns, name))
                },
            );
        if !allowed {
            let what = attributes(&method, &segments, watching)
                .map(|(verb, group, resource, ns, _)| format!("{verb} {resource} {group:?} {ns}"))
                .unwrap_or_else(|| format!("{method} {path}"));
            let user = format!("system:serviceaccount:{sa_ns}:{sa}");
            s.state
                .lock()
                .unwrap()
                .forbidden
                .push(format!("{user} {what}"));
            return status(
                403,
                "Forbidden",
                format!("User \"{user}\" cannot {what}"),
                json!({}),
            );
        }
    }
    if let [
        "apis",
        "coordination.k8s.io",
        "v1",
        "namespaces",
        ns,
        "leases",
        rest @ ..,
    ] = segments.as_slice()
    {
        return lease(s, &method, ns, rest.first().copied(), &body);
    }
    let stored_kind = match segments.as_slice() {
        [
            "api",
            "v1",
            "namespaces",
            ns,
            r @ ("serviceaccounts" | "configmaps" | "secrets"),
            rest @ ..,
        ] => Some(("", *ns, *r, rest.first().copied())),
        [
            "apis",
            "rbac.authorization.k8s.io",
            "v1",
            "namespaces",
            ns,
            r @ ("roles" | "rolebindings"),
            rest @ ..,
        ] => Some(("rbac.authorization.k8s.io", *ns, *r, rest.first().copied())),
        [
            "apis",
            "apps",
            "v1",
            "namespaces",
            ns,
            r @ "daemonsets",
            rest @ ..,
        ] => Some(("apps", *ns, *r, rest.first().copied())),
        _ => None,
    };
    if let Some((group, ns, resource, name)) = stored_kind {
        return stored(s, &method, (group, ns, resource), name, &body);
    }
    if let ["api", "v1", "namespaces", ns, "services", rest @ ..] = segments.as_slice() {
        return service(s, &method, ns, rest.first().copied(), &body, &selector);
    }
    if let ["apis", "batch", "v1", "namespaces", ns, "jobs", rest @ ..] = segments.as_slice() {
        return job(s, &method, ns, rest.first().copied(), &body, &selector);
    }
    match segments.as_slice() {
        ["apis", "apps", "v1", "namespaces", ns, "deployments"] => {
            let ns = (*ns).to_owned();
            if method == Method::GET {
                if watching {
                    return watch(s, Kind::Deployment, &ns, selector, from, timeout);
                }
                let state = s.state.lock().unwrap();
                let items = state
                    .deployments
                    .iter()
                    .filter(|(k, d)| k.0 == ns && matches(&selector, &d["metadata"]["labels"]))
                    .map(|(_, d)| d.clone())
                    .collect();
                return full(
                    StatusCode::OK,
                    list_of("Deployment", "apps/v1", state.rv, items),
                );
            }
            if method != Method::POST {
                return status(
                    405,
                    "MethodNotAllowed",
                    "method not allowed".into(),
                    json!({}),
                );
            }
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let causes = Shared::validate(&body, &name);
            if !causes.is_empty() {
                return invalid(&name, causes);
            }
            let created = {
                let mut state = s.state.lock().unwrap();
                let key = (ns.clone(), name.clone());
                if state.deployments.contains_key(&key) {
                    return status(
                        409,
                        "AlreadyExists",
                        format!("deployments.apps \"{name}\" already exists"),
                        json!({"name": name, "group": "apps", "kind": "deployments"}),
                    );
                }
                let mut d = body.clone();
                d["metadata"]["namespace"] = json!(ns);
                d["metadata"]["uid"] = json!(format!("uid-deploy-{name}"));
                d["metadata"]["generation"] = json!(1);
                d["metadata"]["creationTimestamp"] = json!("2026-11-29T12:00:00Z");
                d["metadata"]["resourceVersion"] = json!(state.bump());
                state.deployments.insert(key, d.clone());
                state.emit(&s.events, Kind::Deployment, &ns, "ADDED", d.clone());
                d
            };
            s.reconcile(&ns, &name).await;
            full(StatusCode::CREATED, created)
        }
        [
            "apis",
            "apps",
            "v1",
            "namespaces",
            ns,
            "deployments",
            name,
            rest @ ..,
        ] => {
            let (ns, name) = ((*ns).to_owned(), (*name).to_owned());
            let key = (ns.clone(), name.clone());
            let Some(current) = s.state.lock().unwrap().deployments.get(&key).cloned() else {
                return not_found("deployments", "apps", &name);
            };
            let scale = rest == ["scale"];
            let scale_of = |d: &Value| {
                json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
                       "metadata": {"name": name, "namespace": ns, "resourceVersion": d["metadata"]["resourceVersion"]},
                       "spec": {"replicas": d["spec"]["replicas"]},
                       "status": {"replicas": d["spec"]["replicas"], "selector": "io.vamp=deployment-service"}})
            };
            match (method.clone(), scale) {
                (Method::GET, false) => full(StatusCode::OK, current),
                (Method::GET, true) => full(StatusCode::OK, scale_of(&current)),
                (Method::PUT, false) => {
                    let Some(sent_rv) = body["metadata"]["resourceVersion"].as_str() else {
                        return invalid(
                            &name,
                            vec![(
                                "metadata.resourceVersion".into(),
                                "Invalid value: 0x0: must be specified for an update".into(),
                            )],
                        );
                    };
                    if Some(sent_rv) != current["metadata"]["resourceVersion"].as_str() {
                        return status(
                            409,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on deployments.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                            ),
                            json!({"name": name, "group": "apps", "kind": "deployments"}),
                        );
                    }
                    let causes = Shared::validate(&body, &name);
                    if !causes.is_empty() {
                        return invalid(&name, causes);
                    }
                    let updated = {
                        let mut state = s.state.lock().unwrap();
                        let mut d = body.clone();
                        for k in ["uid", "creationTimestamp", "namespace"] {
                            d["metadata"][k] = current["metadata"][k].clone();
                        }
                        let generation = current["metadata"]["generation"].as_u64().unwrap_or(1)
                            + u64::from(d["spec"] != current["spec"]);
                        d["metadata"]["generation"] = json!(generation);
                        d["status"] = current["status"].clone();
                        d["metadata"]["resourceVersion"] = json!(state.bump());
                        state.deployments.insert(key.clone(), d.clone());
                        state.emit(&s.events, Kind::Deployment, &ns, "MODIFIED", d.clone());
                        d
                    };
                    s.reconcile(&ns, &name).await;
                    full(StatusCode::OK, updated)
                }
                (Method::PATCH, _) => {
                    let mut d = current.clone();
                    if scale {
                        if let Some(r) = body.pointer("/spec/replicas") {
                            d["spec"]["replicas"] = r.clone();
                        }
                    } else {
                        fn merge(b: &mut Value, p: &Value) {
                            match (b, p) {
                                (Value::Object(b), Value::Object(p)) => {
                                    for (k, v) in p {
                                        if v.is_null() {
                                            b.remove(k);
                                        } else {
                                            merge(b.entry(k.clone()).or_insert(Value::Null), v);
                                        }
                                    }
                                }
                                (b, p) => *b = p.clone(),
                            }
                        }
                        merge(&mut d, &body);
                    }
                    let causes = Shared::validate(&d, &name);
                    if !causes.is_empty() {
                        return invalid(&name, causes);
                    }
                    let updated = {
                        let mut state = s.state.lock().unwrap();
                        let generation = current["metadata"]["generation"].as_u64().unwrap_or(1)
                            + u64::from(d["spec"] != current["spec"]);
                        d["metadata"]["generation"] = json!(generation);
                        d["metadata"]["resourceVersion"] = json!(state.bump());
                        state.deployments.insert(key.clone(), d.clone());
                        state.emit(&s.events, Kind::Deployment, &ns, "MODIFIED", d.clone());
                        d
                    };
                    s.reconcile(&ns, &name).await;
                    full(
                        StatusCode::OK,
                        if scale { scale_of(&updated) } else { updated },
                    )
                }
                (Method::DELETE, false) => {
                    {
                        let mut state = s.state.lock().unwrap();
                        state.deployments.remove(&key);
                        let mut d = current.clone();
                        d["metadata"]["resourceVersion"] = json!(state.bump());
                        state.emit(&s.events, Kind::Deployment, &ns, "DELETED", d);
                    }
                    s.reconcile(&ns, &name).await;
                    full(
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "group": "apps", "kind": "deployments", "uid": current["metadata"]["uid"]}}),
                    )
                }
                _ => status(
                    405,
                    "MethodNotAllowed",
                    "method not allowed".into(),
                    json!({}),
                ),
            }
        }
        ["api", "v1", "namespaces", ns, "pods"] => {
            let ns = (*ns).to_owned();
            if watching {
                return watch(s, Kind::Pod, &ns, selector, from, timeout);
            }
            let state = s.state.lock().unwrap();
            let items = state
                .pods
                .iter()
                .filter(|(k, p)| k.0 == ns && matches(&selector, &p.json["metadata"]["labels"]))
                .map(|(_, p)| p.json.clone())
                .collect();
            full(StatusCode::OK, list_of("Pod", "v1", state.rv, items))
        }
        ["api", "v1", "namespaces", ns, "pods", name] => {
            let key = ((*ns).to_owned(), (*name).to_owned());
            match method {
                Method::GET => match s.state.lock().unwrap().pods.get(&key) {
                    Some(p) => full(StatusCode::OK, p.json.clone()),
                    None => not_found("pods", "", name),
                },
                Method::DELETE => {
                    let (owner, json) = {
                        let mut state = s.state.lock().unwrap();
                        let Some(p) = state.pods.remove(&key) else {
                            return not_found("pods", "", name);
                        };
                        let mut json = p.json.clone();
                        json["metadata"]["resourceVersion"] = json!(state.bump());
                        state.emit(&s.events, Kind::Pod, ns, "DELETED", json.clone());
                        (p.owner.clone(), json)
                    };
                    // The ReplicaSet replaces it.
                    s.reconcile(ns, &owner).await;
                    full(StatusCode::OK, json)
                }
                _ => status(
                    405,
                    "MethodNotAllowed",
                    "method not allowed".into(),
                    json!({}),
                ),
            }
        }
        _ => status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
            json!({}),
        ),
    }
}
