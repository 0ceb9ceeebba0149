//! Kubernetes as a [`ContainerScheduler`] (feature `scheduler-kubernetes`, crates `kube` and
//! `k8s-openapi`), after Vamp's Kubernetes driver (`runtime.md` §4.3).
//!
//! The library enables no `k8s-openapi` version feature (that crate's rule for libraries): the
//! program linking it picks one, e.g. `k8s-openapi = { version = "0.29", features = ["v1_33"] }`.
//!
//! # Mapping from Vamp's model to Kubernetes
//!
//! | Vamp | Kubernetes |
//! |---|---|
//! | service (deployment, cluster, breed) | a `Deployment` (`apps/v1`) in [`KubernetesOptions::namespace`], named `<deployment>-<cluster>-<breed>-<digest>` (each part itself when it is a DNS label shorter than 32 characters, else the first 20 hex digits of its SHA-1; the three cut to 52 characters; `<digest>` 10 hex digits of the SHA-1 of the whole tuple, so no two services share a name). A Deployment at that name that its spec annotation does not give to the service (made by someone else) is never replaced, scaled or deleted; one of the service's under another name (an earlier version's) is removed once the service runs under its own |
//! | deployable (`docker`, `container/docker`, or no type) | the container's `image` (one container, named like the Deployment) |
//! | instances | `spec.replicas`; scaled through the `scale` subresource |
//! | instance | a pod: name = pod name, host = `status.podIP`, ports = the container ports, running = phase `Running` (and not terminating) |
//! | breed port `8080` | container port `{name: p8080, containerPort: 8080, protocol: TCP}` |
//! | environment | `env: [{name, value}]`, after `PORT`, `PORT0`, … and `PORT_<NAME>` (the container ports) |
//! | scale: cpu, memory | `resources.requests` `{cpu: "<cpu>", memory: "<mem>M"}` |
//! | argument `privileged` | `securityContext.privileged`; other arguments are refused |
//! | health checks | `readinessProbe` (`httpGet` of the path, or `tcpSocket`, on the named port; `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`, `failureThreshold`); healthy = every container ready |
//! | labels | on the Deployment and its pods: `io.vamp: deployment-service`, `io.vamp.deployment-service: <name>`, Vamp's `io.vamp.deployment`, `io.vamp.cluster`, `io.vamp.service` (values outside `[A-Za-z0-9._-]` replaced by `_`, at most 63 characters) and the spec's own valid labels; `spec.selector` matches the first two |
//! | the spec | the annotation `io.vamp/spec` (the spec as JSON, read back by [`ContainerScheduler::service`]) |
//! | dialect `kubernetes: {…}` | merged into the pod template's `spec` (Vamp merged it there); `container: {…}` in it merges into the container |
//!
//! Deploy creates the Deployment (`POST`) or replaces it (`PUT` with the resourceVersion read,
//! re-read and sent again on a `409` conflict) when the spec or the replicas changed; undeploy
//! deletes it with `propagationPolicy: Background` (the pods go with it). Vamp's driver made
//! no Service per deployment service (only per gateway, for external access): instances are
//! pods reached at their pod IP, so the gateway agent runs in the cluster (as Vamp's did, a
//! DaemonSet). Rancher 2.x runs Kubernetes: use this driver.
//!
//! The state lives in the cluster: a scheduler created after a restart finds every Deployment
//! labelled `io.vamp=deployment-service` in its namespace. [`ContainerScheduler::watch`] is fed
//! by `kube::runtime` watchers on those Deployments and their pods. One-shot runs
//! ([`ContainerScheduler::run_once`], a workflow's execution) are Jobs (`batch/v1`) with the
//! same pod template, `restartPolicy: Never`, `backoffLimit: 0`, labelled `io.vamp: workflow-run`, and
//! removed by Kubernetes [`KubernetesOptions::run_ttl`] after they finished
//! (`ttlSecondsAfterFinished`).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use vamp_backends::scheduler::kubernetes::{KubernetesOptions, KubernetesScheduler};
//!
//! let client = kube::Client::try_default().await?;
//! let scheduler = KubernetesScheduler::connect(client, KubernetesOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use indexmap::IndexMap;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use vamp_core::Error;
use vamp_core::scheduler::*;

use super::env_name;
use super::record::{Watchers, merge, metadata_json, spec_from_json};

/// The deployable types this scheduler runs (a breed without a type is an image too).
pub const DEPLOYABLE_TYPES: [&str; 2] = ["container/docker", "docker"];

/// The annotation holding the spec.
pub const SPEC_ANNOTATION: &str = "io.vamp/spec";

const SELECTOR: &str = "io.vamp=deployment-service";

/// Where and how the scheduler works in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubernetesOptions {
    /// The namespace (Vamp: `vamp.container-driver.kubernetes.namespace`). Default `default`.
    pub namespace: String,
    /// The most instances of one service (default 1000).
    pub max_instances: u32,
    /// How long a finished one-shot run's Job stays before Kubernetes removes it
    /// (`ttlSecondsAfterFinished`, default 300 s): time to read its pod's logs.
    pub run_ttl: std::time::Duration,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            max_instances: 1000,
            run_ttl: std::time::Duration::from_secs(300),
        }
    }
}

impl KubernetesOptions {
    /// Options for `namespace`, the rest default.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            ..Self::default()
        }
    }

    /// Sets how long a finished run's Job stays.
    #[must_use]
    pub fn with_run_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.run_ttl = ttl;
        self
    }
}

/// The label value (`io.vamp`) of one-shot runs' Jobs and pods.
pub const RUN_LABEL: &str = "workflow-run";

/// A [`ContainerScheduler`] on a Kubernetes cluster. Cloning shares the scheduler.
#[derive(Clone)]
pub struct KubernetesScheduler {
    inner: Arc<Inner>,
}

struct Inner {
    deployments: Api<Deployment>,
    jobs: Api<k8s_openapi::api::batch::v1::Job>,
    pods: Api<Pod>,
    leases: Api<k8s_openapi::api::coordination::v1::Lease>,
    opts: KubernetesOptions,
    label: String,
    refresh: tokio::sync::Mutex<()>,
    watchers: Watchers,
}

fn dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn part(name: &str) -> String {
    if dns_label(name, 31) {
        name.to_owned()
    } else {
        vamp_core::lookup::hex_sha1(name, "0000")[..20].to_owned()
    }
}

/// The Deployment's name for a service: its parts joined by `-` (each itself when it is a
/// short DNS label, else a digest), cut to leave room for a digest of the whole tuple, which
/// ends the name: two services never share a name (`a-b`/`c` and `a`/`b-c` once did), and the
/// name stays a DNS label of at most 63 characters.
pub fn deployment_name(id: &ServiceId) -> String {
    let joined = format!(
        "{}-{}-{}",
        part(&id.deployment),
        part(&id.cluster),
        part(&id.service)
    );
    let tuple = format!("{}\u{0}{}\u{0}{}", id.deployment, id.cluster, id.service);
    let digest = &vamp_core::lookup::hex_sha1(&tuple, "")[..10];
    let readable = joined[..joined.len().min(52)].trim_end_matches('-');
    format!("{readable}-{digest}")
}

/// A label value Kubernetes accepts: characters outside `[A-Za-z0-9._-]` replaced by `_`,
/// at most 63, starting and ending with an alphanumeric (else `x`-padded).
fn label_value(v: &str) -> String {
    let mut out: String = v
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(63);
    while out
        .chars()
        .last()
        .is_some_and(|c| !c.is_ascii_alphanumeric())
    {
        out.pop();
    }
    while out
        .chars()
        .next()
        .is_some_and(|c| !c.is_ascii_alphanumeric())
    {
        out.remove(0);
    }
    out
}

/// Whether `k` is a valid label key (`[prefix/]name`, name ≤ 63 of `[A-Za-z0-9._-]`).
fn label_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && k.len() <= 253
}

/// A quantity as Kubernetes writes it: `256`, `0.5` (no trailing `.0`).
fn quantity(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Inner {
    fn error(&self, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
                Error::Backend {
                    backend: self.label.clone(),
                    source: format!(
                        "the API server refused the credentials (HTTP {}): {}",
                        status.code, status.message
                    )
                    .into(),
                }
            }
            kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
                Error::Invalid {
                    what: "deployment",
                    value: status.reason.clone(),
                    reason: format!("the API server refused it: {}", status.message),
                }
            }
            kube::Error::Api(status) if status.code >= 500 || status.code == 429 => {
                Error::Unavailable {
                    backend: self.label.clone(),
                    source: format!("HTTP {}: {}", status.code, status.message).into(),
                }
            }
            kube::Error::Api(status) => Error::Backend {
                backend: self.label.clone(),
                source: format!("HTTP {}: {}", status.code, status.message).into(),
            },
            other => Error::Unavailable {
                backend: self.label.clone(),
                source: Box::new(other),
            },
        }
    }

    fn check_spec(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let kind = spec.deployable.deployable_type.as_deref();
        if kind.is_some_and(|k| !DEPLOYABLE_TYPES.contains(&k)) {
            return Err(Error::Invalid {
                what: "deployable",
                value: format!("{}: {kind:?}", spec.id),
                reason: format!(
                    "Kubernetes runs images: type one of {} (or none)",
                    DEPLOYABLE_TYPES.join(", ")
                ),
            });
        }
        let image = spec.deployable.definition.trim();
        if image.is_empty() || image.chars().any(char::is_whitespace) {
            return Err(Error::Invalid {
                what: "deployable",
                value: format!("{}: {image:?}", spec.id),
                reason: "not an image name".into(),
            });
        }
        if spec.instances > self.opts.max_instances {
            return Err(Error::Invalid {
                what: "instances",
                value: format!("{}: {}", spec.id, spec.instances),
                reason: format!(
                    "at most {} instances (KubernetesOptions::max_instances)",
                    self.opts.max_instances
                ),
            });
        }
        self.object(spec).map(drop)
    }

    /// The Deployment sent for `spec`, as JSON.
    fn object(&self, spec: &ServiceSpec) -> Result<Value, Error> {
        let name = deployment_name(&spec.id);
        let mut labels = serde_json::Map::new();
        for (k, v) in &spec.labels {
            if label_key(k) && !k.starts_with("io.vamp") {
                labels.insert(k.clone(), json!(label_value(v)));
            }
        }
        for (k, v) in spec.id.labels() {
            labels.insert(k, json!(label_value(&v)));
        }
        labels.insert("io.vamp".into(), json!("deployment-service"));
        labels.insert("io.vamp.deployment-service".into(), json!(name));
        let mut env = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            if i == 0 {
                env.push(json!({"name": "PORT", "value": p.container_port.to_string()}));
            }
            env.push(json!({"name": format!("PORT{i}"), "value": p.container_port.to_string()}));
            env.push(json!({"name": format!("PORT_{}", env_name(&p.name)), "value": p.container_port.to_string()}));
        }
        for (k, v) in &spec.environment {
            env.push(json!({"name": k, "value": v}));
        }
        let mut privileged = false;
        for a in &spec.arguments {
            match (a.key.as_str(), a.value.trim()) {
                ("privileged", "true") => privileged = true,
                ("privileged", "false") => privileged = false,
                _ => {
                    return Err(Error::Invalid {
                        what: "argument",
                        value: format!("{}: {}={}", spec.id, a.key, a.value),
                        reason: "the Kubernetes scheduler takes only privileged (use the kubernetes dialect for the rest)".into(),
                    });
                }
            }
        }
        let mut container = json!({
            "name": name,
            "image": spec.deployable.definition.trim(),
            "env": env,
            "ports": spec.ports.iter().map(|p| json!({"name": format!("p{}", p.container_port), "containerPort": p.container_port, "protocol": "TCP"})).collect::<Vec<_>>(),
            "resources": {"requests": {"cpu": quantity(spec.cpu), "memory": format!("{}M", quantity(spec.memory_mb))}},
            "securityContext": {"privileged": privileged},
        });
        if let Some(h) = spec.health_checks.first() {
            let (_, port) = spec.health_check_port(h)?;
            let mut probe = json!({
                "initialDelaySeconds": h.initial_delay.max(0),
                "periodSeconds": h.interval.max(1),
                "timeoutSeconds": h.timeout.max(1),
                "failureThreshold": h.failures.max(1),
            });
            match h.protocol.to_ascii_uppercase().as_str() {
                "" | "HTTP" | "HTTPS" => {
                    probe["httpGet"] = json!({
                        "path": if h.path.starts_with('/') { h.path.clone() } else { format!("/{}", h.path) },
                        "port": port.container_port,
                        "scheme": if h.protocol.eq_ignore_ascii_case("https") { "HTTPS" } else { "HTTP" },
                    });
                }
                _ => probe["tcpSocket"] = json!({"port": port.container_port}),
            }
            container["readinessProbe"] = probe;
        }
        let mut pod_spec = json!({"containers": [container]});
        if let Some(dialect) = spec.dialects.get("kubernetes") {
            let mut patch = dialect.to_json();
            if !patch.is_object() {
                return Err(Error::Invalid {
                    what: "dialect",
                    value: format!("{}: kubernetes", spec.id),
                    reason: "the kubernetes dialect must be a map of pod spec fields".into(),
                });
            }
            if let Some(c) = patch.as_object_mut().and_then(|p| p.remove("container")) {
                merge(&mut pod_spec["containers"][0], &c);
            }
            merge(&mut pod_spec, &patch);
        }
        let selector = json!({
            "io.vamp": "deployment-service",
            "io.vamp.deployment-service": name,
        });
        let object = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": self.opts.namespace,
                "labels": labels,
                "annotations": {SPEC_ANNOTATION: metadata_json(spec).to_string()},
            },
            "spec": {
                "replicas": spec.instances,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod_spec,
                },
            },
        });
        // Refused here what would not even be a Deployment.
        serde_json::from_value::<Deployment>(object.clone()).map_err(|e| Error::Invalid {
            what: "dialect",
            value: format!("{}: kubernetes", spec.id),
            reason: format!("not a pod spec: {e}"),
        })?;
        Ok(object)
    }

    /// The Job of a one-shot run of `spec`, named `name`: the Deployment's pod template, not
    /// restarted, labelled `io.vamp: workflow-run`, removed `run_ttl` after it finished.
    fn job(&self, spec: &ServiceSpec, name: &str) -> Result<Value, Error> {
        let deployment = self.object(spec)?;
        let mut labels = deployment["metadata"]["labels"].clone();
        labels["io.vamp"] = json!(RUN_LABEL);
        let mut template = deployment["spec"]["template"].clone();
        template["metadata"]["labels"] = labels.clone();
        template["spec"]["restartPolicy"] = json!("Never");
        let job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": self.opts.namespace,
                "labels": labels,
                "annotations": deployment["metadata"]["annotations"],
            },
            "spec": {
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": self.opts.run_ttl.as_secs().min(i32::MAX as u64),
                "template": template,
            },
        });
        serde_json::from_value::<k8s_openapi::api::batch::v1::Job>(job.clone()).map_err(|e| {
            Error::Invalid {
                what: "dialect",
                value: format!("{}: kubernetes", spec.id),
                reason: format!("not a pod spec for a Job: {e}"),
            }
        })?;
        Ok(job)
    }

    /// The runs of `id` (their Jobs), finished or not.
    async fn run_jobs(
        &self,
        id: &ServiceId,
    ) -> Result<Vec<k8s_openapi::api::batch::v1::Job>, Error> {
        let selector = format!(
            "io.vamp={RUN_LABEL},io.vamp.deployment-service={}",
            deployment_name(id)
        );
        Ok(self
            .jobs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.error(e))?
            .items)
    }

    fn spec_of(d: &Deployment) -> Option<ServiceSpec> {
        let text = d.metadata.annotations.as_ref()?.get(SPEC_ANNOTATION)?;
        let mut v: Value = serde_json::from_str(text).ok()?;
        v["instances"] = json!(d.spec.as_ref()?.replicas.unwrap_or(1).max(0));
        spec_from_json(&v)
    }

    fn snapshot(spec: ServiceSpec, pods: &[&Pod]) -> DeployedService {
        let checks = !spec.health_checks.is_empty();
        let mut instances: Vec<InstanceState> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let status = p.status.as_ref();
                let ip = status.and_then(|s| s.pod_ip.clone()).unwrap_or_default();
                let container_ports: Vec<i32> = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.ports.as_ref())
                    .map(|ports| ports.iter().map(|x| x.container_port).collect())
                    .unwrap_or_default();
                let ports: IndexMap<String, u16> = if ip.is_empty() {
                    IndexMap::new()
                } else {
                    spec.ports
                        .iter()
                        .filter(|sp| container_ports.contains(&i32::from(sp.container_port)))
                        .map(|sp| (sp.name.clone(), sp.container_port))
                        .collect()
                };
                let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
                let healthy = checks.then(|| {
                    status
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
                });
                Some(InstanceState {
                    name: p.metadata.name.clone()?,
                    host: ip,
                    ports,
                    running,
                    healthy,
                })
            })
            .collect();
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        DeployedService { spec, instances }
    }

    async fn pods_of(&self, name: Option<&str>) -> Result<Vec<Pod>, Error> {
        let selector = match name {
            Some(n) => format!("{SELECTOR},io.vamp.deployment-service={n}"),
            None => SELECTOR.to_owned(),
        };
        Ok(self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.error(e))?
            .items)
    }

    /// Whether `d` is the Deployment of service `id`: one this scheduler's kind made for it
    /// (its spec annotation names that service), not an object of another owner or of none.
    fn owns(d: &Deployment, id: &ServiceId) -> bool {
        Self::spec_of(d).is_some_and(|s| s.id == *id)
    }

    fn not_ours(&self, name: &str, id: &ServiceId) -> Error {
        Error::Backend {
            backend: self.label.clone(),
            source: format!(
                "a Deployment '{name}' exists that this scheduler did not make for {id}: it is left alone"
            )
            .into(),
        }
    }

    /// Removes the Deployments of service `id` under another name than its own (made by an
    /// earlier version's naming): each only if it is still the one read (its uid).
    async fn remove_other_names(&self, id: &ServiceId) -> Result<usize, Error> {
        let own = deployment_name(id);
        let all = self
            .deployments
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .map_err(|e| self.error(e))?
            .items;
        let mut removed = 0;
        for d in all {
            let Some(name) = d.metadata.name.clone() else {
                continue;
            };
            if name == own || !Self::owns(&d, id) {
                continue;
            }
            let mut params = DeleteParams::background();
            params.preconditions = Some(kube::api::Preconditions {
                uid: d.metadata.uid.clone(),
                resource_version: None,
            });
            match self.deployments.delete(&name, &params).await {
                Ok(_) => removed += 1,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(removed)
    }

    async fn list(&self) -> Result<BTreeMap<ServiceId, DeployedService>, Error> {
        let deployments = self
            .deployments
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .map_err(|e| self.error(e))?
            .items;
        let pods = self.pods_of(None).await?;
        let mut out = BTreeMap::new();
        for d in &deployments {
            let Some(spec) = Self::spec_of(d) else {
                continue;
            };
            let name = d.metadata.name.clone().unwrap_or_default();
            let mine: Vec<&Pod> = pods
                .iter()
                .filter(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("io.vamp.deployment-service"))
                        == Some(&name)
                })
                .collect();
            let s = Self::snapshot(spec, &mine);
            out.insert(s.spec.id.clone(), s);
        }
        Ok(out)
    }

    async fn refresh(&self) -> Result<(), Error> {
        let _guard = self.refresh.lock().await;
        let now = self.list().await?;
        self.watchers.publish(&now);
        Ok(())
    }
}

/// Follows the Deployments and pods Vamp labelled; every change refreshes the watch.
async fn follow(inner: Weak<Inner>, deployments: Api<Deployment>, pods: Api<Pod>) {
    let config = watcher::Config::default().labels(SELECTOR);
    let d = watcher(deployments, config.clone())
        .map(|e| e.map(drop))
        .boxed();
    let p = watcher(pods, config).map(|e| e.map(drop)).boxed();
    let mut events = futures_util::stream::select(d, p);
    while let Some(event) = events.next().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if event.is_err() {
            // The watcher backs off and resumes by itself; a short pause keeps a broken API
            // server from being asked in a loop.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let _ = inner.refresh().await;
    }
}

/// Makes `ring` the process's TLS provider unless one is already installed: `kube`'s client
/// takes the process default, which rustls cannot pick by itself when both `ring` and
/// `aws-lc-rs` are linked (as with the SQL Server backend). Call it before building a
/// `kube::Client` in a program that links both; the URL selection calls it.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl KubernetesScheduler {
    /// A scheduler on `client` (e.g. `kube::Client::try_default()`: in-cluster or the
    /// kubeconfig), reading what runs in the namespace and starting the watchers.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the API server cannot be reached; [`Error::Backend`] when
    /// it refuses the credentials.
    pub async fn connect(client: kube::Client, opts: KubernetesOptions) -> Result<Self, Error> {
        if !dns_label(&opts.namespace, 63) {
            return Err(crate::invalid(
                "kubernetes",
                format!("the namespace {:?} is not a DNS label", opts.namespace),
            ));
        }
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &opts.namespace);
        let leases = Api::namespaced(client.clone(), &opts.namespace);
        let jobs = Api::namespaced(client.clone(), &opts.namespace);
        let pods: Api<Pod> = Api::namespaced(client, &opts.namespace);
        let inner = Arc::new(Inner {
            leases,
            jobs,
            label: format!("KubernetesScheduler(namespace {})", opts.namespace),
            deployments: deployments.clone(),
            pods: pods.clone(),
            opts,
            refresh: tokio::sync::Mutex::new(()),
            watchers: Watchers::default(),
        });
        inner.refresh().await?;
        tokio::spawn(follow(Arc::downgrade(&inner), deployments, pods));
        Ok(Self { inner })
    }

    /// The Deployment this scheduler sends for `spec`, as JSON (nothing is sent).
    ///
    /// # Errors
    /// [`Error::Invalid`] for what the scheduler cannot run.
    pub fn deployment_for(&self, spec: &ServiceSpec) -> Result<Value, Error> {
        let spec = spec.clone().normalized()?;
        self.inner.check_spec(&spec)?;
        self.inner.object(&spec)
    }
}

impl fmt::Debug for KubernetesScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesScheduler")
            .field("options", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for KubernetesScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

#[async_trait]
impl ContainerScheduler for KubernetesScheduler {
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<(), Error> {
        let inner = &self.inner;
        let spec = spec.normalized()?;
        inner.check_spec(&spec)?;
        let object = inner.object(&spec)?;
        let name = deployment_name(&spec.id);
        let mut tries = 0;
        loop {
            tries += 1;
            let current = inner
                .deployments
                .get_opt(&name)
                .await
                .map_err(|e| inner.error(e))?;
            let result = match current {
                None => {
                    let d: Deployment =
                        serde_json::from_value(object.clone()).expect("checked when built");
                    inner
                        .deployments
                        .create(&PostParams::default(), &d)
                        .await
                        .map(drop)
                }
                Some(current) if !Inner::owns(&current, &spec.id) => {
                    return Err(inner.not_ours(&name, &spec.id));
                }
                Some(current) => {
                    // Compared as recorded: credentials are digests in the annotation.
                    let same = Inner::spec_of(&current).is_some_and(|s| {
                        s.instances == spec.instances && metadata_json(&s) == metadata_json(&spec)
                    });
                    if same && !opts.force {
                        break;
                    }
                    let mut object = object.clone();
                    object["metadata"]["resourceVersion"] =
                        json!(current.metadata.resource_version);
                    if opts.force {
                        // A changed annotation on the template restarts every pod.
                        object["spec"]["template"]["metadata"]["annotations"] = json!({"io.vamp/restarted": format!("{:?}", std::time::SystemTime::now())});
                    }
                    let d: Deployment = serde_json::from_value(object).expect("checked when built");
                    inner
                        .deployments
                        .replace(&name, &PostParams::default(), &d)
                        .await
                        .map(drop)
                }
            };
            match result {
                Ok(()) => break,
                // Created or changed meanwhile: read again.
                Err(kube::Error::Api(s)) if s.code == 409 && tries < 5 => continue,
                Err(e) => return Err(inner.error(e)),
            }
        }
        // The service under its own name now: a copy under an earlier version's name goes.
        inner.remove_other_names(&spec.id).await?;
        inner.refresh().await
    }

    async fn undeploy(&self, id: &ServiceId) -> Result<bool, Error> {
        let inner = &self.inner;
        let name = deployment_name(id);
        let others = inner.remove_other_names(id).await?;
        let Some(current) = inner
            .deployments
            .get_opt(&name)
            .await
            .map_err(|e| inner.error(e))?
        else {
            inner.refresh().await?;
            return Ok(others > 0);
        };
        // Only the service's own Deployment goes, and only the one just read (its uid).
        if !Inner::owns(&current, id) {
            return Ok(false);
        }
        let mut params = DeleteParams::background();
        params.preconditions = Some(kube::api::Preconditions {
            uid: current.metadata.uid.clone(),
            resource_version: None,
        });
        let existed = match inner.deployments.delete(&name, &params).await {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => false,
            Err(e) => return Err(inner.error(e)),
        };
        inner.refresh().await?;
        Ok(existed)
    }

    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<(), Error> {
        let inner = &self.inner;
        if instances > inner.opts.max_instances {
            return Err(Error::Invalid {
                what: "instances",
                value: format!("{id}: {instances}"),
                reason: format!("at most {} instances", inner.opts.max_instances),
            });
        }
        let name = deployment_name(id);
        let current = inner
            .deployments
            .get_opt(&name)
            .await
            .map_err(|e| inner.error(e))?;
        if let Some(current) = &current
            && !Inner::owns(current, id)
        {
            return Err(inner.not_ours(&name, id));
        }
        let patch = json!({"spec": {"replicas": instances}});
        match inner
            .deployments
            .patch_scale(
                &deployment_name(id),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(Error::NotFound {
                    backend: inner.label.clone(),
                    kind: "service".into(),
                    name: id.to_string(),
                });
            }
            Err(e) => return Err(inner.error(e)),
        }
        inner.refresh().await
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>, Error> {
        let inner = &self.inner;
        let name = deployment_name(id);
        let Some(d) = inner
            .deployments
            .get_opt(&name)
            .await
            .map_err(|e| inner.error(e))?
        else {
            return Ok(None);
        };
        let Some(spec) = Inner::spec_of(&d).filter(|s| s.id == *id) else {
            return Ok(None);
        };
        let pods = inner.pods_of(Some(&name)).await?;
        Ok(Some(Inner::snapshot(
            spec,
            &pods.iter().collect::<Vec<_>>(),
        )))
    }

    async fn services(&self) -> Result<Vec<DeployedService>, Error> {
        Ok(self.inner.list().await?.into_values().collect())
    }

    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent, Error>> {
        self.inner.watchers.subscribe()
    }

    /// Runs `spec` once as a Job (`batch/v1`): one pod, never restarted, the Job removed by
    /// Kubernetes [`KubernetesOptions::run_ttl`] after it finished.
    async fn run_once(&self, spec: ServiceSpec) -> Result<(), Error> {
        let inner = &self.inner;
        let spec = spec.normalized()?.with_instances(1);
        inner.check_spec(&spec)?;
        // `<service's name, cut>-<12 hex digits of the time and a counter>`: a DNS label.
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stamp = (u64::try_from(vamp_core::time::now_millis()).unwrap_or(0) << 8) | (n & 0xff);
        let base = deployment_name(&spec.id);
        let base = base[..base.len().min(48)].trim_end_matches('-');
        let name = format!("{base}-{:012x}", stamp & 0xffff_ffff_ffff);
        let job: k8s_openapi::api::batch::v1::Job =
            serde_json::from_value(inner.job(&spec, &name)?).map_err(|e| Error::Invalid {
                what: "dialect",
                value: format!("{}: kubernetes", spec.id),
                reason: e.to_string(),
            })?;
        inner
            .jobs
            .create(&PostParams::default(), &job)
            .await
            .map(drop)
            .map_err(|e| inner.error(e))
    }

    /// The runs of `id` whose Job has not finished.
    async fn runs(&self, id: &ServiceId) -> Result<Vec<RunInfo>, Error> {
        Ok(self
            .inner
            .run_jobs(id)
            .await?
            .into_iter()
            .filter(|j| {
                j.status.as_ref().is_none_or(|s| {
                    s.completion_time.is_none()
                        && s.failed.unwrap_or(0) == 0
                        && s.succeeded.unwrap_or(0) == 0
                })
            })
            .filter_map(|j| {
                let started = j
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(0, |t| t.0.as_millisecond());
                Some(RunInfo::new(j.metadata.name?, started))
            })
            .collect())
    }

    /// Deletes the Job `name` (and its pod) when it is a run of `id`.
    async fn stop_run(&self, id: &ServiceId, name: &str) -> Result<bool, Error> {
        let inner = &self.inner;
        let Some(job) = inner
            .run_jobs(id)
            .await?
            .into_iter()
            .find(|j| j.metadata.name.as_deref() == Some(name))
        else {
            return Ok(false);
        };
        let mut params = DeleteParams::background();
        params.preconditions = Some(kube::api::Preconditions {
            uid: job.metadata.uid.clone(),
            resource_version: None,
        });
        match inner.jobs.delete(name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
            Err(e) => Err(inner.error(e)),
        }
    }

    fn capabilities(&self) -> SchedulerCapabilities {
        let mut caps = SchedulerCapabilities::default();
        caps.scale = true;
        caps.health_checks = true;
        caps.instance_ports = true;
        caps.rolling_update = true;
        caps.watch = true;
        caps.reachable_instances = true;
        caps.adopts_services = true;
        caps.deployable_types = Some(&DEPLOYABLE_TYPES);
        caps
    }
}

/// The `Lease` object of lease `name`: the name itself when it is a DNS label, else a digest.
fn lease_object(name: &str) -> String {
    if dns_label(name, 63) {
        name.to_owned()
    } else {
        format!(
            "vamp-lease-{}",
            &vamp_core::lookup::hex_sha1(name, "")[..20]
        )
    }
}

/// Whether a Lease is held at `now_ms`: a holder and a renewal less than its duration ago.
fn lease_live(spec: &k8s_openapi::api::coordination::v1::LeaseSpec, now_ms: i64) -> bool {
    let renewed = spec.renew_time.as_ref().map(|t| t.0.as_millisecond());
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0)).saturating_mul(1000);
    spec.holder_identity
        .as_deref()
        .is_some_and(|h| !h.is_empty())
        && renewed.is_some_and(|r| r.saturating_add(duration) > now_ms)
}

/// Leases as `coordination.k8s.io/v1` `Lease` objects in the scheduler's namespace, as
/// Kubernetes' own leader election keeps them: `holderIdentity`, `leaseDurationSeconds` (the
/// ttl in whole seconds, rounded up), `acquireTime`, `renewTime`, and `leaseTransitions`, which
/// grows with every acquisition and is the fencing token. Every write is a replace at the
/// `resourceVersion` read, so two replicas never both take a lease. As in Kubernetes' leader
/// election, times are the replicas' clocks (the holder writes `renewTime`, the others compare
/// it with theirs): keep them in sync.
#[async_trait]
impl vamp_core::lease::LeaseStore for KubernetesScheduler {
    async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<vamp_core::lease::LeaseGrant>, Error> {
        use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        vamp_core::lease::check(name, holder, ttl)?;
        let inner = &self.inner;
        let object = lease_object(name);
        let now = k8s_openapi::jiff::Timestamp::now();
        let seconds = i32::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        let grant = |token: i32| {
            vamp_core::lease::LeaseGrant::new(name, holder, u64::try_from(token).unwrap_or(0), ttl)
        };
        let current = inner
            .leases
            .get_opt(&object)
            .await
            .map_err(|e| inner.error(e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(object.clone()),
                    labels: Some(BTreeMap::from([("io.vamp".to_owned(), "lease".to_owned())])),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.to_owned()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(1),
                    ..Default::default()
                }),
            };
            return match inner.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Some(grant(1))),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
                Err(e) => Err(inner.error(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let live = lease_live(spec, now.as_millisecond());
        let mine = spec.holder_identity.as_deref() == Some(holder);
        if live && !mine {
            return Ok(None);
        }
        let mut token = spec.lease_transitions.unwrap_or(0);
        if !live {
            token = token.saturating_add(1);
            spec.holder_identity = Some(holder.to_owned());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(token);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        match inner
            .leases
            .replace(&object, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Some(grant(token))),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
            Err(e) => Err(inner.error(e)),
        }
    }

    async fn observe(&self, name: &str) -> Result<Option<vamp_core::lease::LeaseHolder>, Error> {
        let inner = &self.inner;
        let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
        let lease = inner
            .leases
            .get_opt(&lease_object(name))
            .await
            .map_err(|e| inner.error(e))?;
        Ok(lease
            .and_then(|l| l.spec)
            .filter(|s| lease_live(s, now))
            .map(|s| vamp_core::lease::LeaseHolder {
                holder: s.holder_identity.unwrap_or_default(),
                token: u64::try_from(s.lease_transitions.unwrap_or(0)).unwrap_or(0),
            }))
    }

    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<bool, Error> {
        let inner = &self.inner;
        let object = lease_object(name);
        let now = k8s_openapi::jiff::Timestamp::now();
        let Some(mut lease) = inner
            .leases
            .get_opt(&object)
            .await
            .map_err(|e| inner.error(e))?
        else {
            return Ok(false);
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(false);
        };
        let held = lease_live(spec, now.as_millisecond())
            && spec.holder_identity.as_deref() == Some(holder)
            && u64::try_from(spec.lease_transitions.unwrap_or(0)).ok() == Some(token);
        if !held {
            return Ok(false);
        }
        // As Kubernetes' leader election releases: no holder, a renewal now.
        spec.holder_identity = None;
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            now,
        ));
        match inner
            .leases
            .replace(&object, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
            Err(e) => Err(inner.error(e)),
        }
    }
}

/// How gateways are exposed outside the cluster (Vamp's
/// `vamp.container-driver.kubernetes.service-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum GatewayServiceType {
    /// A port on every node (Vamp's default).
    #[default]
    NodePort,
    /// A load balancer of the cloud provider.
    LoadBalancer,
}

impl GatewayServiceType {
    /// The Service `spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }

    /// `NodePort` or `LoadBalancer` (case-insensitive).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for anything else.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "nodeport" => Ok(Self::NodePort),
            "loadbalancer" => Ok(Self::LoadBalancer),
            _ => Err(crate::invalid(
                "kubernetes",
                format!("service type {s:?}: NodePort or LoadBalancer"),
            )),
        }
    }
}

/// The annotation naming a gateway Service's gateway exactly (labels are sanitised).
pub const GATEWAY_ANNOTATION: &str = "io.vamp/gateway";

/// The Service name of gateway `name`: the name itself when it is a DNS-1035 label shorter
/// than 25 characters, else `hex` and the first 20 hex digits of its SHA-1 (as Vamp named
/// them).
pub fn gateway_service_name(name: &str) -> String {
    if name.len() < 25 && dns_label(name, 24) && name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        name.to_owned()
    } else {
        format!("hex{}", &vamp_core::lookup::hex_sha1(name, "")[..20])
    }
}

/// What [`plan_gateway_services`] decided.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct GatewayServicePlan {
    /// Services to create (JSON objects).
    pub create: Vec<Value>,
    /// Services to replace, with the resourceVersion read (JSON objects).
    pub replace: Vec<Value>,
    /// Services to delete, by name.
    pub delete: Vec<String>,
}

/// The Service exposing gateway `name` on `port`: selecting the gateway agents' pods
/// (`selector`), of type `service_type`.
pub fn gateway_service(
    namespace: &str,
    name: &str,
    port: u16,
    service_type: GatewayServiceType,
    selector: &BTreeMap<String, String>,
) -> Value {
    gateway_service_of(namespace, name, port, service_type, selector, None)
}

/// [`gateway_service`] labelled with its control plane (`io.vamp.owner`), when given.
fn gateway_service_of(
    namespace: &str,
    name: &str,
    port: u16,
    service_type: GatewayServiceType,
    selector: &BTreeMap<String, String>,
    owner: Option<&str>,
) -> Value {
    let mut labels = json!({"io.vamp": "gateway", "io.vamp.gateway": label_value(name)});
    if let Some(owner) = owner {
        labels[vamp_core::scheduler::labels::OWNER] = json!(label_value(owner));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": gateway_service_name(name),
            "namespace": namespace,
            "labels": labels,
            "annotations": {GATEWAY_ANNOTATION: name},
        },
        "spec": {
            "type": service_type.as_str(),
            "selector": selector,
            "ports": [{"name": "port", "protocol": "TCP", "port": port, "targetPort": port}],
        },
    })
}

/// The gateway Services to create, replace and delete so that every gateway with a port
/// (`wanted`: name and port) has its Service and no other gateway has one. `existing` are the
/// Services labelled `io.vamp=gateway` (and, with an `owner`, `io.vamp.owner=<owner>`; the
/// Services created carry it) (pure: no I/O).
pub fn plan_gateway_services(
    namespace: &str,
    existing: &[Value],
    wanted: &BTreeMap<String, u16>,
    service_type: GatewayServiceType,
    selector: &BTreeMap<String, String>,
    owner: Option<&str>,
) -> GatewayServicePlan {
    let mut plan = GatewayServicePlan::default();
    let mut seen = std::collections::BTreeSet::new();
    for svc in existing {
        let service_name = svc["metadata"]["name"].as_str().unwrap_or_default();
        let gateway = svc["metadata"]["annotations"][GATEWAY_ANNOTATION].as_str();
        match gateway.and_then(|g| wanted.get_key_value(g)) {
            Some((g, port))
                if gateway_service_name(g) == service_name && seen.insert(g.clone()) =>
            {
                let mut want =
                    gateway_service_of(namespace, g, *port, service_type, selector, owner);
                let same = svc["spec"]["type"] == want["spec"]["type"]
                    && svc["spec"]["selector"] == want["spec"]["selector"]
                    && svc["spec"]["ports"][0]["port"] == want["spec"]["ports"][0]["port"];
                if !same {
                    want["metadata"]["resourceVersion"] =
                        svc["metadata"]["resourceVersion"].clone();
                    // Kept: the cluster IP it was given.
                    want["spec"]["clusterIP"] = svc["spec"]["clusterIP"].clone();
                    plan.replace.push(want);
                }
            }
            _ => plan.delete.push(service_name.to_owned()),
        }
    }
    for (g, port) in wanted {
        if !seen.contains(g) {
            plan.create.push(gateway_service_of(
                namespace,
                g,
                *port,
                service_type,
                selector,
                owner,
            ));
        }
    }
    plan
}

/// Gateway Services (Vamp's `create-services`): as the reconcile loop's gateway side (beside
/// the gateway driver), it gives every gateway with a port a Service selecting the gateway
/// agents' pods, of type NodePort or LoadBalancer, and removes those of gateways gone. It
/// talks to the API server only when the gateways' names or ports changed since its last
/// successful pass.
pub struct GatewayServices {
    services: Api<k8s_openapi::api::core::v1::Service>,
    namespace: String,
    service_type: GatewayServiceType,
    selector: BTreeMap<String, String>,
    owner: Option<String>,
    last: tokio::sync::Mutex<Option<BTreeMap<String, u16>>>,
}

impl fmt::Debug for GatewayServices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayServices")
            .field("namespace", &self.namespace)
            .field("service_type", &self.service_type)
            .finish_non_exhaustive()
    }
}

impl GatewayServices {
    /// Gateway Services in `namespace`, of `service_type`, selecting the pods labelled
    /// `io.vamp: vamp-gateway-agent` (the agents' DaemonSet or Deployment, as Vamp's).
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        service_type: GatewayServiceType,
    ) -> Self {
        let namespace = namespace.into();
        Self {
            services: Api::namespaced(client, &namespace),
            namespace,
            service_type,
            selector: BTreeMap::from([("io.vamp".to_owned(), "vamp-gateway-agent".to_owned())]),
            owner: None,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Labels the Services with this control plane's identity (`io.vamp.owner`) and touches
    /// only Services that carry it: another control plane's gateway Services in the same
    /// namespace are left alone.
    #[must_use]
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Brings the Services to these gateways (name and port); returns the plan carried out.
    ///
    /// # Errors
    /// The API server's errors ([`Error::Unavailable`] for a temporary one); what was done
    /// stays done and the next call plans again.
    pub async fn sync(&self, wanted: BTreeMap<String, u16>) -> Result<GatewayServicePlan, Error> {
        let mut last = self.last.lock().await;
        if last.as_ref() == Some(&wanted) {
            return Ok(GatewayServicePlan::default());
        }
        let err = |e: kube::Error| Error::Unavailable {
            backend: format!("Kubernetes gateway services (namespace {})", self.namespace),
            source: Box::new(e),
        };
        let selector = match &self.owner {
            Some(o) => format!(
                "io.vamp=gateway,{}={}",
                vamp_core::scheduler::labels::OWNER,
                label_value(o)
            ),
            None => "io.vamp=gateway".to_owned(),
        };
        let existing: Vec<Value> = self
            .services
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(err)?
            .items
            .into_iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect();
        let plan = plan_gateway_services(
            &self.namespace,
            &existing,
            &wanted,
            self.service_type,
            &self.selector,
            self.owner.as_deref(),
        );
        for name in &plan.delete {
            match self.services.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(err(e)),
            }
        }
        let typed = |v: &Value| {
            serde_json::from_value::<k8s_openapi::api::core::v1::Service>(v.clone()).map_err(|e| {
                Error::Invalid {
                    what: "gateway service",
                    value: v["metadata"]["name"].to_string(),
                    reason: e.to_string(),
                }
            })
        };
        for svc in &plan.create {
            match self
                .services
                .create(&PostParams::default(), &typed(svc)?)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(err(e)),
            }
        }
        for svc in &plan.replace {
            let name = svc["metadata"]["name"].as_str().unwrap_or_default();
            self.services
                .replace(name, &PostParams::default(), &typed(svc)?)
                .await
                .map_err(err)?;
        }
        *last = Some(wanted);
        Ok(plan)
    }
}

#[async_trait]
impl vamp_core::ops::controller::GatewaySink for GatewayServices {
    async fn push(&self, pass: vamp_core::ops::controller::GatewayPass) -> Result<(), Error> {
        let wanted = pass
            .iter()
            .filter_map(|g| {
                let port = u16::try_from(g.port.number).ok().filter(|p| *p > 0)?;
                Some((g.name.clone(), port))
            })
            .collect();
        self.sync(wanted).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_what_kubernetes_accepts() {
        let id = ServiceId::new("sava", "web", "sava:1.0.0");
        let name = deployment_name(&id);
        assert!(name.starts_with("sava-web-"));
        assert!(dns_label(&name, 63), "{name}");
        let long = ServiceId::new("a".repeat(30), "b".repeat(30), "c".repeat(30));
        let name = deployment_name(&long);
        assert!(dns_label(&name, 63), "{name}");
        // The readable part cut at 52 characters, then the tuple's digest.
        let digest = name.rsplit('-').next().unwrap();
        assert_eq!(digest.len(), 10, "{name}");
        assert!(
            name.starts_with(&format!("{}-{}", "a".repeat(30), "b".repeat(20))),
            "{name}"
        );
        // Tuples that join to the same text do not share a name.
        let one = deployment_name(&ServiceId::new("a-b", "c", "d"));
        let two = deployment_name(&ServiceId::new("a", "b-c", "d"));
        assert!(one.starts_with("a-b-c-d-") && two.starts_with("a-b-c-d-"));
        assert_ne!(one, two);
        assert_eq!(label_value("sava:1.0.0"), "sava_1.0.0");
        assert_eq!(label_value(":x:"), "x");
        assert!(label_value(&"y".repeat(100)).len() == 63);
        assert!(label_key("team") && label_key("example.com/team"));
        assert!(!label_key("bad key"));
    }
}
