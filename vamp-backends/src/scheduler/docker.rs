//! Docker containers as a [`ContainerScheduler`] (feature `scheduler-docker`, crate `bollard`):
//! one container per instance on a local or remote Docker engine.
//!
//! # Mapping from Vamp's model to Docker
//!
//! | Vamp | Docker |
//! |---|---|
//! | service (deployment, cluster, breed) | a *service record* (a labelled volume, below) and one container per instance |
//! | deployable (`docker`, `container/docker`, or no type) | the container's image (pulled when missing and the engine can pull) |
//! | instance `n` | container `vamp-<deployment>-<cluster>-<breed>-<key>-<spec>-<n>` |
//! | breed port `8080` | container port `8080/tcp` published on [`DockerOptions::publish_ip`] at a port the engine picks (bridge and named networks); on the host network, a port from [`DockerOptions::host_port_range`] |
//! | environment | the container's environment, after `PORT`, `PORT0`, `PORT1`, … and `PORT_<NAME>` (the port the container listens on, per breed port) |
//! | scale: cpu, memory | `NanoCpus`, `Memory` (MB) when [`DockerOptions::enforce_resources`] |
//! | scale: instances | the number of containers |
//! | argument `privileged: true` | `HostConfig.Privileged` |
//! | arguments `user`, `workdir`, `hostname`, `cap-add`, `cap-drop`, `label` (`k=v`), `env` (`K=V`) | the same `docker run` options; any other argument is refused (Vamp passed them to Marathon as Docker parameters) |
//! | network `BRIDGE` / `HOST` / other name | `NetworkMode` `bridge` / `host` / that network |
//! | dialect `docker: {…}` | merged into the container-create request body (Docker Engine API field names, e.g. `Cmd`, `Entrypoint`, `HostConfig`), the dialect winning, as Vamp merged dialects; a field Docker's API does not have is refused |
//! | health checks | run by the scheduler against each instance's published port (`HTTP`/`HTTPS`: a `GET` of the path answered with 2xx/3xx; anything else: a TCP connect), every `interval` s after `initial_delay`, unhealthy after `failures` failures in a row; without health checks, Docker's own `HEALTHCHECK` verdict when the image has one |
//! | labels | Vamp's (`io.vamp=deployment-service`, `io.vamp.deployment`, `io.vamp.cluster`, `io.vamp.service`), the scheduler's own (`io.vamp.namespace`, `io.vamp.key`, `io.vamp.spec-hash`, `io.vamp.instance`, `io.vamp.ports`) and the spec's labels (never replacing the `io.vamp.*` ones) |
//!
//! Every container runs with the restart policy `unless-stopped`, so the engine restarts a
//! process that exits. The service record is what the scheduler wants: a volume (volumes
//! carry labels and need no image or process) named `vamp-…-g<generation>` whose labels hold
//! the whole spec as JSON (`io.vamp.spec`). A deploy or scale writes a record of the next
//! generation, then removes the older ones; a reader takes the newest. Nothing else is kept
//! in the control plane's memory, so a scheduler created after a restart of the control
//! plane (or a second one on the same engine) finds every service an earlier one deployed,
//! with its instances. A spec change (anything but the number of instances) starts containers
//! of the new spec first and then removes the old ones.
//!
//! A background task (started by [`DockerScheduler::connect`], ended when the last clone of
//! the scheduler is dropped) follows the engine's events and every
//! [`DockerOptions::resync`] repairs what changed behind the scheduler's back: a container
//! removed or stopped by hand is replaced or started again, extra ones are removed. It also
//! runs the health checks and feeds [`ContainerScheduler::watch`].
//!
//! The namespace ([`DockerOptions::namespace`], the URL's `?namespace=`) separates control
//! planes sharing an engine: each sees only the services of its own namespace.
//!
//! The dialect gives whoever writes blueprints the power of the Docker API on the engine
//! (mounts, privileges, devices): give a control plane a Docker engine only where its blueprint
//! authors may have that power.
//!
//! ```no_run
//! # async fn example() -> Result<(), vamp_core::Error> {
//! use vamp_backends::scheduler::docker::{DockerOptions, DockerScheduler};
//! use vamp_core::model::{Deployable, PortType};
//! use vamp_core::scheduler::*;
//!
//! let scheduler = DockerScheduler::connect(DockerOptions::default()).await?;
//! let deployable = Deployable { deployable_type: Some("docker".into()), definition: "magneticio/sava:1.0.0".into() };
//! let spec = ServiceSpec::new(ServiceId::new("sava", "sava", "sava:1.0.0"), deployable)
//!     .with_instances(2)
//!     .with_port("webport", 8080, PortType::Http);
//! scheduler.deploy(spec, DeployOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HostConfig, PortBinding,
    RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use indexmap::IndexMap;
use serde_json::Value;
use vamp_core::Error;
use vamp_core::model::Argument;
use vamp_core::scheduler::*;

use super::env_name;
use super::ports::{DEFAULT_PORT_RANGE, PortAllocator};
use super::record::{Watchers, merge, spec_from_json, spec_hash, spec_json};

/// The deployable types this scheduler runs (a breed without a type is a Docker image too).
pub const DEPLOYABLE_TYPES: [&str; 2] = ["container/docker", "docker"];

/// The most instances one service may have by default.
pub const DEFAULT_MAX_INSTANCES: u32 = 256;

/// Label values and keys of the scheduler's own.
mod label {
    pub const VAMP: &str = "io.vamp";
    pub const NAMESPACE: &str = "io.vamp.namespace";
    pub const KEY: &str = "io.vamp.key";
    pub const SPEC_HASH: &str = "io.vamp.spec-hash";
    pub const INSTANCE: &str = "io.vamp.instance";
    pub const PORTS: &str = "io.vamp.ports";
    pub const SPEC: &str = "io.vamp.spec";
    pub const GENERATION: &str = "io.vamp.generation";
    pub const SERVICE_VALUE: &str = "deployment-service";
    pub const RECORD_VALUE: &str = "deployment-service-record";
    pub const RUN_VALUE: &str = "workflow-run";
}

/// How the scheduler uses the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DockerOptions {
    /// The engine: `unix:///var/run/docker.sock`, `tcp://host:2375`, `http://host:2375`;
    /// `None`: `DOCKER_HOST`, else the local socket.
    pub address: Option<String>,
    /// The namespace this scheduler's services live in (label `io.vamp.namespace`).
    pub namespace: String,
    /// The host instances are reached at (what [`InstanceState::host`] reports): by default
    /// `127.0.0.1` for a local engine, the engine's host for a remote one.
    pub host: Option<String>,
    /// The host address ports are published on (default `127.0.0.1`: only this machine
    /// reaches the instances; `0.0.0.0` publishes them to every network, as Vamp did).
    pub publish_ip: String,
    /// The network when a spec names none: `bridge` (default), `host`, or a network's name.
    pub network: String,
    /// Ports given to instances on the host network.
    pub host_port_range: RangeInclusive<u16>,
    /// Whether CPU and memory limits are set on containers (default true).
    pub enforce_resources: bool,
    /// The most instances of one service.
    pub max_instances: u32,
    /// How often the background task repairs services and re-reads the engine (default 5 s).
    pub resync: Duration,
    /// How long a container is given to stop before it is killed (default 10 s).
    pub stop_timeout: Duration,
    /// Seconds the engine's API may take to answer a request (default 120).
    pub request_timeout_secs: u64,
}

impl Default for DockerOptions {
    fn default() -> Self {
        Self {
            address: None,
            namespace: "default".into(),
            host: None,
            publish_ip: "127.0.0.1".into(),
            network: "bridge".into(),
            host_port_range: DEFAULT_PORT_RANGE,
            enforce_resources: true,
            max_instances: DEFAULT_MAX_INSTANCES,
            resync: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(10),
            request_timeout_secs: 120,
        }
    }
}

/// A [`ContainerScheduler`] running each instance as a Docker container. Cloning shares the
/// scheduler.
#[derive(Clone)]
pub struct DockerScheduler {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    opts: DockerOptions,
    host: String,
    label: String,
    /// Serialises this scheduler's own changes.
    ops: tokio::sync::Mutex<()>,
    /// Serialises reading the engine and comparing with `known`.
    refresh: tokio::sync::Mutex<()>,
    watchers: Watchers,
    health: Mutex<HashMap<String, Health>>,
    host_ports: Mutex<PortAllocator>,
}

/// Health-check bookkeeping of one container.
#[derive(Clone, Debug, Default)]
struct Health {
    started: Option<Instant>,
    next: Option<Instant>,
    failures: Vec<i64>,
    healthy: bool,
}

/// A service as the engine holds it.
#[derive(Clone, Debug)]
struct Record {
    spec: ServiceSpec,
    hash: String,
    generation: u64,
    volumes: Vec<(u64, String)>,
}

/// One of a service's containers.
#[derive(Clone, Debug)]
struct Container {
    id: String,
    name: String,
    hash: String,
    number: u64,
    state: Option<ContainerSummaryStateEnum>,
    docker_health: Option<bool>,
    ports: IndexMap<String, u16>,
    host_ports: Option<IndexMap<String, u16>>,
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The key of a service in a namespace: stable, and the same for every scheduler.
fn service_key(namespace: &str, id: &ServiceId) -> String {
    let text = format!(
        "{namespace}\u{0}{}\u{0}{}\u{0}{}",
        id.deployment, id.cluster, id.service
    );
    vamp_core::lookup::hex_sha1(&text, "")[..16].to_owned()
}

/// `vamp-<deployment>-<cluster>-<service>-<key8>`, at most 64 characters.
fn name_prefix(key: &str, id: &ServiceId) -> String {
    let mut readable = sanitize(&format!("{}-{}-{}", id.deployment, id.cluster, id.service));
    readable.truncate(40);
    format!("vamp-{readable}-{}", &key[..8])
}

/// The keys of `patch` (objects, recursively) missing from `got`: fields Docker does not have.
fn unknown_fields(patch: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    if let (Value::Object(p), Value::Object(g)) = (patch, got) {
        for (k, v) in p {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match g.get(k) {
                None if !v.is_null() => out.push(here),
                Some(gv) => unknown_fields(v, gv, &here, out),
                None => {}
            }
        }
    }
}

impl Inner {
    fn backend_error(&self, e: bollard::errors::Error) -> Error {
        use bollard::errors::Error as B;
        match e {
            B::DockerResponseServerError {
                status_code,
                message,
            } if status_code >= 500 => Error::Unavailable {
                backend: self.label.clone(),
                source: format!("HTTP {status_code}: {message}").into(),
            },
            B::DockerResponseServerError {
                status_code,
                message,
            } => Error::Backend {
                backend: self.label.clone(),
                source: format!("HTTP {status_code}: {message}").into(),
            },
            B::RequestTimeoutError | B::IOError { .. } | B::HyperResponseError { .. } => {
                Error::Unavailable {
                    backend: self.label.clone(),
                    source: Box::new(e),
                }
            }
            other => Error::Unavailable {
                backend: self.label.clone(),
                source: Box::new(other),
            },
        }
    }

    fn filters(&self, kind: &str, key: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![
            format!("{}={kind}", label::VAMP),
            format!("{}={}", label::NAMESPACE, self.opts.namespace),
        ];
        if let Some(key) = key {
            labels.push(format!("{}={key}", label::KEY));
        }
        HashMap::from([("label".to_owned(), labels)])
    }

    /// The newest record of every service (or of one).
    async fn records(&self, key: Option<&str>) -> Result<BTreeMap<String, Record>, Error> {
        let options = ListVolumesOptionsBuilder::new()
            .filters(&self.filters(label::RECORD_VALUE, key))
            .build();
        let volumes = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| self.backend_error(e))?
            .volumes
            .unwrap_or_default();
        let mut out: BTreeMap<String, Record> = BTreeMap::new();
        for v in volumes {
            let (Some(key), Some(generation), Some(text)) = (
                v.labels.get(label::KEY),
                v.labels
                    .get(label::GENERATION)
                    .and_then(|g| g.parse::<u64>().ok()),
                v.labels.get(label::SPEC),
            ) else {
                continue;
            };
            let Some(spec) = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|j| spec_from_json(&j))
            else {
                continue;
            };
            let entry = out.entry(key.clone()).or_insert_with(|| Record {
                hash: spec_hash(&spec),
                spec: spec.clone(),
                generation,
                volumes: Vec::new(),
            });
            entry.volumes.push((generation, v.name.clone()));
            if generation > entry.generation {
                entry.hash = spec_hash(&spec);
                entry.spec = spec;
                entry.generation = generation;
            }
        }
        Ok(out)
    }

    /// Every container of every service (or of one), by service key.
    async fn containers(
        &self,
        key: Option<&str>,
    ) -> Result<HashMap<String, Vec<Container>>, Error> {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&self.filters(label::SERVICE_VALUE, key))
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.backend_error(e))?;
        let mut out: HashMap<String, Vec<Container>> = HashMap::new();
        for c in list {
            if let Some((key, container)) = Self::container(c) {
                out.entry(key).or_default().push(container);
            }
        }
        for list in out.values_mut() {
            list.sort_by_key(|c| c.number);
        }
        Ok(out)
    }

    /// The one-shot runs of a service key still running.
    async fn run_containers(&self, key: &str) -> Result<Vec<ContainerSummary>, Error> {
        let options = ListContainersOptionsBuilder::new()
            .filters(&self.filters(label::RUN_VALUE, Some(key)))
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.backend_error(e))
    }

    /// Kills and removes a run's container; whether it was there.
    async fn remove_run(&self, id: &str) -> Result<bool, Error> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(false),
            Err(e) => Err(self.backend_error(e)),
        }
    }

    fn container(c: ContainerSummary) -> Option<(String, Container)> {
        let labels = c.labels.unwrap_or_default();
        let key = labels.get(label::KEY)?.clone();
        let number = labels.get(label::INSTANCE)?.parse().ok()?;
        let name = c
            .names
            .unwrap_or_default()
            .first()?
            .trim_start_matches('/')
            .to_owned();
        let mut published: IndexMap<String, u16> = IndexMap::new();
        for p in c.ports.unwrap_or_default() {
            if let Some(public) = p.public_port {
                // Several entries (IPv4, IPv6) for one port: the first.
                published
                    .entry(p.private_port.to_string())
                    .or_insert(public);
            }
        }
        let host_ports = labels
            .get(label::PORTS)
            .and_then(|p| serde_json::from_str::<IndexMap<String, u16>>(p).ok());
        let docker_health = c.status.as_deref().and_then(|s| {
            if s.contains("(healthy)") {
                Some(true)
            } else if s.contains("(unhealthy)") || s.contains("(health: starting)") {
                Some(false)
            } else {
                None
            }
        });
        Some((
            key,
            Container {
                id: c.id?,
                name,
                hash: labels.get(label::SPEC_HASH)?.clone(),
                number,
                state: c.state,
                docker_health,
                ports: published,
                host_ports,
            },
        ))
    }

    fn running(c: &Container) -> bool {
        c.state == Some(ContainerSummaryStateEnum::RUNNING)
    }

    fn host_network(&self, spec: &ServiceSpec) -> bool {
        self.network(spec) == "host"
    }

    fn network(&self, spec: &ServiceSpec) -> String {
        match spec.network.as_deref() {
            None | Some("") => self.opts.network.clone(),
            Some(n) if n.eq_ignore_ascii_case("bridge") => "bridge".into(),
            Some(n) if n.eq_ignore_ascii_case("host") => "host".into(),
            Some(n) => n.to_owned(),
        }
    }

    fn snapshot(&self, record: &Record, containers: &[Container]) -> DeployedService {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let instances = containers
            .iter()
            .filter(|c| c.hash == record.hash)
            .map(|c| {
                let ports = match &c.host_ports {
                    Some(p) => p.clone(),
                    None => record
                        .spec
                        .ports
                        .iter()
                        .filter_map(|p| {
                            Some((p.name.clone(), *c.ports.get(&p.container_port.to_string())?))
                        })
                        .collect(),
                };
                let healthy = if record.spec.health_checks.is_empty() {
                    c.docker_health
                } else {
                    Some(health.get(&c.name).is_some_and(|h| h.healthy) && Self::running(c))
                };
                InstanceState {
                    name: c.name.clone(),
                    host: self.host.clone(),
                    ports,
                    running: Self::running(c),
                    healthy,
                }
            })
            .collect();
        DeployedService {
            spec: record.spec.clone(),
            instances,
        }
    }

    /// Reads every service from the engine, compares with what was seen before and tells
    /// the watchers.
    async fn refresh(&self) -> Result<BTreeMap<ServiceId, DeployedService>, Error> {
        let _guard = self.refresh.lock().await;
        let records = self.records(None).await?;
        let mut containers = self.containers(None).await?;
        let now: BTreeMap<ServiceId, DeployedService> = records
            .iter()
            .map(|(key, r)| {
                let list = containers.remove(key).unwrap_or_default();
                (r.spec.id.clone(), self.snapshot(r, &list))
            })
            .collect();
        self.watchers.publish(&now);
        Ok(now)
    }

    /// Reports container `name` as stopped (from the engine's `die` event).
    async fn died(&self, name: &str) {
        let _guard = self.refresh.lock().await;
        self.watchers.stopped(name);
    }

    fn check_spec(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let kind = spec.deployable.deployable_type.as_deref();
        if kind.is_some_and(|k| !DEPLOYABLE_TYPES.contains(&k)) {
            return Err(Error::Invalid {
                what: "deployable",
                value: format!("{}: {kind:?}", spec.id),
                reason: format!(
                    "the Docker scheduler runs images: type one of {} (or none)",
                    DEPLOYABLE_TYPES.join(", ")
                ),
            });
        }
        let image = spec.deployable.definition.trim();
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
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
                    "the Docker scheduler runs at most {} instances of a service (DockerOptions::max_instances)",
                    self.opts.max_instances
                ),
            });
        }
        // Health checks naming no port were refused by ServiceSpec::normalized.
        // Builds a container body to refuse bad arguments and dialects before storing.
        self.body(spec, "check", 1, &IndexMap::new())?;
        Ok(())
    }

    /// The create request of instance `number`.
    fn body(
        &self,
        spec: &ServiceSpec,
        key: &str,
        number: u64,
        host_ports: &IndexMap<String, u16>,
    ) -> Result<ContainerCreateBody, Error> {
        let host = self.host_network(spec);
        let mut env: Vec<String> = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let port = if host {
                host_ports.get(&p.name).copied().unwrap_or(p.container_port)
            } else {
                p.container_port
            };
            if i == 0 {
                env.push(format!("PORT={port}"));
            }
            env.push(format!("PORT{i}={port}"));
            env.push(format!("PORT_{}={port}", env_name(&p.name)));
        }
        for (k, v) in &spec.environment {
            if k.is_empty() || k.contains('=') || k.chars().any(char::is_control) {
                return Err(Error::Invalid {
                    what: "environment variable",
                    value: format!("{}: {k:?}", spec.id),
                    reason: "not a variable name".into(),
                });
            }
            env.push(format!("{k}={v}"));
        }
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("io.vamp"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend(spec.id.labels());
        labels.insert(label::VAMP.into(), label::SERVICE_VALUE.into());
        labels.insert(label::NAMESPACE.into(), self.opts.namespace.clone());
        labels.insert(label::KEY.into(), key.into());
        labels.insert(label::SPEC_HASH.into(), spec_hash(spec));
        labels.insert(label::INSTANCE.into(), number.to_string());
        if host {
            labels.insert(
                label::PORTS.into(),
                serde_json::to_string(host_ports).unwrap_or_default(),
            );
        }
        let mut host_config = HostConfig {
            network_mode: Some(self.network(spec)),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        let mut exposed = Vec::new();
        if !host {
            let mut bindings = HashMap::new();
            for p in &spec.ports {
                let port = format!("{}/tcp", p.container_port);
                exposed.push(port.clone());
                bindings.insert(
                    port,
                    Some(vec![PortBinding {
                        host_ip: Some(self.opts.publish_ip.clone()),
                        host_port: Some(String::new()),
                    }]),
                );
            }
            host_config.port_bindings = Some(bindings);
        }
        if self.opts.enforce_resources {
            host_config.nano_cpus = Some((spec.cpu * 1e9) as i64);
            host_config.memory = Some((spec.memory_mb * 1024.0 * 1024.0) as i64);
        }
        let mut body = ContainerCreateBody {
            image: Some(spec.deployable.definition.trim().to_owned()),
            env: Some(env),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            ..Default::default()
        };
        for a in &spec.arguments {
            self.argument(spec, a, &mut body, &mut host_config, &mut labels)?;
        }
        body.labels = Some(labels);
        body.host_config = Some(host_config);
        if let Some(dialect) = spec.dialects.get("docker") {
            let patch = dialect.to_json();
            if !patch.is_object() {
                return Err(Error::Invalid {
                    what: "dialect",
                    value: format!("{}: docker", spec.id),
                    reason: "the docker dialect must be a map of Docker API fields".into(),
                });
            }
            let mut value = serde_json::to_value(&body).map_err(|e| Error::Invalid {
                what: "dialect",
                value: spec.id.to_string(),
                reason: e.to_string(),
            })?;
            merge(&mut value, &patch);
            let merged: ContainerCreateBody =
                serde_json::from_value(value).map_err(|e| Error::Invalid {
                    what: "dialect",
                    value: format!("{}: docker", spec.id),
                    reason: format!("not a Docker container request: {e}"),
                })?;
            let back = serde_json::to_value(&merged).unwrap_or(Value::Null);
            let mut unknown = Vec::new();
            unknown_fields(&patch, &back, "", &mut unknown);
            if !unknown.is_empty() {
                return Err(Error::Invalid {
                    what: "dialect",
                    value: format!("{}: docker", spec.id),
                    reason: format!(
                        "Docker's container API has no field {} (names are the API's, e.g. Cmd, Entrypoint, HostConfig)",
                        unknown.join(", ")
                    ),
                });
            }
            body = merged;
            // The scheduler's own labels stay.
            let mut labels = body.labels.take().unwrap_or_default();
            for (k, v) in self.own_labels(spec, key, number, host, host_ports) {
                labels.insert(k, v);
            }
            body.labels = Some(labels);
        }
        Ok(body)
    }

    fn own_labels(
        &self,
        spec: &ServiceSpec,
        key: &str,
        number: u64,
        host: bool,
        host_ports: &IndexMap<String, u16>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = spec.id.labels().into_iter().collect();
        out.push((label::VAMP.into(), label::SERVICE_VALUE.into()));
        out.push((label::NAMESPACE.into(), self.opts.namespace.clone()));
        out.push((label::KEY.into(), key.into()));
        out.push((label::SPEC_HASH.into(), spec_hash(spec)));
        out.push((label::INSTANCE.into(), number.to_string()));
        if host {
            out.push((
                label::PORTS.into(),
                serde_json::to_string(host_ports).unwrap_or_default(),
            ));
        }
        out
    }

    fn argument(
        &self,
        spec: &ServiceSpec,
        a: &Argument,
        body: &mut ContainerCreateBody,
        host_config: &mut HostConfig,
        labels: &mut HashMap<String, String>,
    ) -> Result<(), Error> {
        let bad = |reason: &str| Error::Invalid {
            what: "argument",
            value: format!("{}: {}={}", spec.id, a.key, a.value),
            reason: reason.to_owned(),
        };
        match a.key.as_str() {
            "privileged" => {
                host_config.privileged = Some(match a.value.trim() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("privileged is true or false")),
                });
            }
            "user" => body.user = Some(a.value.clone()),
            "workdir" => body.working_dir = Some(a.value.clone()),
            "hostname" => body.hostname = Some(a.value.clone()),
            "cap-add" => host_config
                .cap_add
                .get_or_insert_with(Vec::new)
                .push(a.value.clone()),
            "cap-drop" => host_config
                .cap_drop
                .get_or_insert_with(Vec::new)
                .push(a.value.clone()),
            "label" => {
                let (k, v) = a
                    .value
                    .split_once('=')
                    .ok_or_else(|| bad("a label is k=v"))?;
                if !k.starts_with("io.vamp") {
                    labels.insert(k.to_owned(), v.to_owned());
                }
            }
            "env" => {
                if !a.value.contains('=') {
                    return Err(bad("an env argument is NAME=value"));
                }
                body.env.get_or_insert_with(Vec::new).push(a.value.clone());
            }
            _ => {
                return Err(bad(
                    "the Docker scheduler takes the arguments privileged, user, workdir, hostname, cap-add, cap-drop, label and env (use the docker dialect for the rest)",
                ));
            }
        }
        Ok(())
    }

    /// Writes a record of the next generation for `spec`, then removes the older ones.
    async fn write_record(
        &self,
        key: &str,
        spec: &ServiceSpec,
        previous: Option<&Record>,
    ) -> Result<(), Error> {
        let generation = previous.map_or(1, |r| r.generation + 1);
        let mut labels: HashMap<String, String> = spec.id.labels().into_iter().collect();
        labels.insert(label::VAMP.into(), label::RECORD_VALUE.into());
        labels.insert(label::NAMESPACE.into(), self.opts.namespace.clone());
        labels.insert(label::KEY.into(), key.into());
        labels.insert(label::GENERATION.into(), generation.to_string());
        labels.insert(label::SPEC.into(), spec_json(spec, true).to_string());
        let name = format!("{}-g{generation}", name_prefix(key, &spec.id));
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(|e| self.backend_error(e))?;
        if let Some(previous) = previous {
            for (_, volume) in &previous.volumes {
                self.remove_volume(volume).await?;
            }
        }
        Ok(())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), Error> {
        match self
            .docker
            .remove_volume(
                name,
                Some(RemoveVolumeOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.backend_error(e)),
        }
    }

    async fn remove_container(&self, c: &Container) -> Result<(), Error> {
        let stop = StopContainerOptionsBuilder::new()
            .t(i32::try_from(self.opts.stop_timeout.as_secs()).unwrap_or(10))
            .build();
        if Self::running(c) {
            let _ = self.docker.stop_container(&c.id, Some(stop)).await;
        }
        let result = self
            .docker
            .remove_container(
                &c.id,
                Some(RemoveContainerOptionsBuilder::new().force(true).build()),
            )
            .await;
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.name);
        if let Some(ports) = &c.host_ports {
            let mut allocator = self.host_ports.lock().unwrap_or_else(|p| p.into_inner());
            for port in ports.values() {
                allocator.release(*port);
            }
        }
        match result {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(self.backend_error(e)),
        }
    }

    /// Pulls `image` when the engine does not have it.
    async fn pull(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let image = spec.deployable.definition.trim();
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(Error::Invalid {
                    what: "deployable",
                    value: format!("{}: {image}", spec.id),
                    reason: format!(
                        "the image is not on the Docker engine and could not be pulled: {e}"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Makes sure the engine has the spec's image (pulling it when missing).
    async fn ensure_image(&self, spec: &ServiceSpec) -> Result<(), Error> {
        match self
            .docker
            .inspect_image(spec.deployable.definition.trim())
            .await
        {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => self.pull(spec).await,
            Err(e) => Err(self.backend_error(e)),
        }
    }

    /// Creates and starts instance `number` of `record`.
    async fn create(&self, key: &str, record: &Record, number: u64) -> Result<(), Error> {
        let spec = &record.spec;
        let mut host_ports = IndexMap::new();
        if self.host_network(spec) {
            let mut allocator = self.host_ports.lock().unwrap_or_else(|p| p.into_inner());
            for p in &spec.ports {
                let Some(port) = allocator.allocate() else {
                    for port in host_ports.values() {
                        allocator.release(*port);
                    }
                    return Err(Error::Unavailable {
                        backend: self.label.clone(),
                        source: "no free port left in the scheduler's host port range".into(),
                    });
                };
                host_ports.insert(p.name.clone(), port);
            }
        }
        let release = |ports: &IndexMap<String, u16>| {
            let mut allocator = self.host_ports.lock().unwrap_or_else(|p| p.into_inner());
            for port in ports.values() {
                allocator.release(*port);
            }
        };
        let body = match self.body(spec, key, number, &host_ports) {
            Ok(b) => b,
            Err(e) => {
                release(&host_ports);
                return Err(e);
            }
        };
        let name = format!("{}-{}-{number}", name_prefix(key, &spec.id), record.hash);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let mut created = self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await;
        if let Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) = created
        {
            if let Err(e) = self.pull(spec).await {
                release(&host_ports);
                return Err(e);
            }
            created = self.docker.create_container(Some(options), body).await;
        }
        let id = match created {
            Ok(r) => r.id,
            // Another scheduler created this instance meanwhile.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                release(&host_ports);
                return Ok(());
            }
            Err(e) => {
                release(&host_ports);
                return Err(self.backend_error(e));
            }
        };
        if let Err(e) = self.docker.start_container(&id, None).await {
            let _ = self
                .docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                )
                .await;
            release(&host_ports);
            return Err(self.backend_error(e));
        }
        Ok(())
    }

    /// Brings a service's containers in line with its record: the wanted instances of the
    /// current spec exist and run, then the others are removed.
    async fn reconcile(
        &self,
        key: &str,
        record: &Record,
        containers: &[Container],
    ) -> Result<(), Error> {
        let wanted = u64::from(record.spec.instances);
        let current: Vec<&Container> = containers
            .iter()
            .filter(|c| c.hash == record.hash)
            .collect();
        for n in 1..=wanted {
            match current.iter().find(|c| c.number == n) {
                None => self.create(key, record, n).await?,
                Some(c)
                    if matches!(
                        c.state,
                        Some(
                            ContainerSummaryStateEnum::EXITED
                                | ContainerSummaryStateEnum::CREATED
                                | ContainerSummaryStateEnum::DEAD
                        )
                    ) =>
                {
                    if self.docker.start_container(&c.id, None).await.is_err() {
                        self.remove_container(c).await?;
                        self.create(key, record, n).await?;
                    }
                }
                Some(_) => {}
            }
        }
        for c in containers {
            if c.hash != record.hash || c.number > wanted || c.number == 0 {
                self.remove_container(c).await?;
            }
        }
        Ok(())
    }

    /// Repairs every service, and removes containers without a record.
    async fn reconcile_all(&self) -> Result<(), Error> {
        let _ops = self.ops.lock().await;
        let records = self.records(None).await?;
        let containers = self.containers(None).await?;
        let mut failed = None;
        for (key, record) in &records {
            let list = containers.get(key).map(Vec::as_slice).unwrap_or(&[]);
            // One service failing (its image was removed) does not hold up the others.
            if let Err(e) = self.reconcile(key, record, list).await {
                failed = Some(e);
            }
        }
        for (key, list) in &containers {
            if !records.contains_key(key) {
                for c in list {
                    self.remove_container(c).await?;
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Runs the health checks that are due.
    async fn check_health(&self) {
        let known = self.watchers.known();
        for service in known.values() {
            if service.spec.health_checks.is_empty() {
                continue;
            }
            for instance in &service.instances {
                let now = Instant::now();
                let due = {
                    let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
                    let h = health.entry(instance.name.clone()).or_default();
                    if !instance.running {
                        *h = Health::default();
                        false
                    } else {
                        let started = *h.started.get_or_insert(now);
                        let delay = service.spec.health_checks[0].initial_delay.clamp(0, 3600);
                        now >= started + Duration::from_secs(delay as u64)
                            && h.next.is_none_or(|next| now >= next)
                    }
                };
                if !due {
                    continue;
                }
                let mut results = Vec::new();
                for h in &service.spec.health_checks {
                    let Some(port) = instance.ports.get(&h.port) else {
                        results.push(false);
                        continue;
                    };
                    results.push(
                        super::probe::check(h, &self.host, *port, "vamp-docker-scheduler")
                            .await
                            .is_ok(),
                    );
                }
                let interval = service
                    .spec
                    .health_checks
                    .iter()
                    .map(|h| h.interval.clamp(1, 3600))
                    .min()
                    .unwrap_or(10);
                let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
                let h = health.entry(instance.name.clone()).or_default();
                h.failures.resize(results.len(), 0);
                let mut healthy = true;
                for ((ok, failed), check) in results
                    .iter()
                    .zip(h.failures.iter_mut())
                    .zip(&service.spec.health_checks)
                {
                    *failed = if *ok { 0 } else { *failed + 1 };
                    if *failed >= check.failures.max(1) {
                        healthy = false;
                    }
                }
                h.healthy = healthy;
                h.next = Some(Instant::now() + Duration::from_secs(interval as u64));
            }
        }
    }
}

/// The background task: follows the engine's events, repairs and checks every `resync`.
async fn monitor(inner: Weak<Inner>) {
    let Some(first) = inner.upgrade() else {
        return;
    };
    let docker = first.docker.clone();
    let filters = HashMap::from([
        (
            "type".to_owned(),
            vec!["container".to_owned(), "volume".to_owned()],
        ),
        (
            "label".to_owned(),
            vec![format!("{}={}", label::NAMESPACE, first.opts.namespace)],
        ),
    ]);
    let resync = first.opts.resync;
    drop(first);
    let mut events = docker
        .events(Some(EventsOptionsBuilder::new().filters(&filters).build()))
        .boxed();
    let mut tick = tokio::time::interval(resync.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_repair = Instant::now();
    loop {
        let event = tokio::select! {
            e = events.next() => Some(e),
            _ = tick.tick() => None,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match event {
            Some(Some(Ok(event))) => {
                // A container that died and was restarted at once (same name, same ports)
                // looks unchanged to the next read: the death is reported from the event.
                if event.action.as_deref() == Some("die")
                    && let Some(name) = event
                        .actor
                        .as_ref()
                        .and_then(|a| a.attributes.as_ref())
                        .and_then(|a| a.get("name"))
                {
                    inner.died(name).await;
                }
                let _ = inner.refresh().await;
            }
            Some(_) => {
                // The stream ended or failed (the engine restarted): follow it again.
                tokio::time::sleep(Duration::from_secs(1)).await;
                events = docker
                    .events(Some(EventsOptionsBuilder::new().filters(&filters).build()))
                    .boxed();
                let _ = inner.refresh().await;
            }
            None => {
                if last_repair.elapsed() >= resync {
                    last_repair = Instant::now();
                    let _ = inner.reconcile_all().await;
                }
                inner.check_health().await;
                let _ = inner.refresh().await;
            }
        }
    }
}

impl DockerScheduler {
    /// Connects to the engine (negotiating the API version), reads what it runs and starts
    /// the background task.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the engine cannot be reached; [`Error::InvalidConfig`] for
    /// a malformed address or option.
    pub async fn connect(opts: DockerOptions) -> Result<Self, Error> {
        if opts.namespace.is_empty()
            || opts.namespace.len() > 63
            || !opts
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(crate::invalid(
                "docker",
                format!(
                    "the namespace {:?} must be 1-63 letters, digits, '-', '_' or '.'",
                    opts.namespace
                ),
            ));
        }
        if opts.publish_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(crate::invalid(
                "docker",
                format!("publish_ip {:?} is not an IP address", opts.publish_ip),
            ));
        }
        let address = opts
            .address
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let timeout = opts.request_timeout_secs;
        let docker = if let Some(path) = address.strip_prefix("unix://") {
            Docker::connect_with_unix(path, timeout, bollard::API_DEFAULT_VERSION)
        } else if let Some(rest) = address
            .strip_prefix("tcp://")
            .or_else(|| address.strip_prefix("http://"))
        {
            Docker::connect_with_http(rest, timeout, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(crate::invalid(
                "docker",
                "the engine's address is unix:///path or tcp://host:port".to_owned(),
            ));
        };
        let label = format!("DockerScheduler({address}, namespace {})", opts.namespace);
        let unavailable = |e: bollard::errors::Error| Error::Unavailable {
            backend: label.clone(),
            source: Box::new(e),
        };
        let docker = docker.map_err(unavailable)?;
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        let host = opts.host.clone().unwrap_or_else(|| {
            address
                .strip_prefix("tcp://")
                .or_else(|| address.strip_prefix("http://"))
                .and_then(|rest| rest.rsplit_once(':').map(|(h, _)| h.to_owned()))
                .unwrap_or_else(|| "127.0.0.1".to_owned())
        });
        let inner = Arc::new(Inner {
            docker,
            host,
            label,
            ops: tokio::sync::Mutex::new(()),
            refresh: tokio::sync::Mutex::new(()),
            watchers: Watchers::default(),
            health: Mutex::new(HashMap::new()),
            host_ports: Mutex::new(PortAllocator::new(opts.host_port_range.clone())),
            opts,
        });
        inner.refresh().await?;
        tokio::spawn(monitor(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The engine's client, for what the trait does not cover.
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// The options it runs with.
    pub fn options(&self) -> &DockerOptions {
        &self.inner.opts
    }

    fn not_found(&self, id: &ServiceId) -> Error {
        Error::NotFound {
            backend: self.inner.label.clone(),
            kind: "service".into(),
            name: id.to_string(),
        }
    }

    /// Writes `spec` as the service's record (unless unchanged) and reconciles.
    async fn apply(&self, spec: ServiceSpec, force: bool) -> Result<(), Error> {
        let inner = &self.inner;
        let key = service_key(&inner.opts.namespace, &spec.id);
        {
            let _ops = inner.ops.lock().await;
            let previous = inner.records(Some(&key)).await?.remove(&key);
            let unchanged = previous
                .as_ref()
                .is_some_and(|r| spec_json(&r.spec, true) == spec_json(&spec, true));
            if !unchanged || force {
                if force && let Some(r) = &previous {
                    // Every container is replaced.
                    for list in inner.containers(Some(&key)).await?.values() {
                        for c in list {
                            inner.remove_container(c).await?;
                        }
                    }
                    let _ = r;
                }
                if !unchanged {
                    inner.ensure_image(&spec).await?;
                    inner.write_record(&key, &spec, previous.as_ref()).await?;
                }
            }
            let record = inner
                .records(Some(&key))
                .await?
                .remove(&key)
                .ok_or_else(|| self.not_found(&spec.id))?;
            let containers = inner
                .containers(Some(&key))
                .await?
                .remove(&key)
                .unwrap_or_default();
            inner.reconcile(&key, &record, &containers).await?;
        }
        inner.refresh().await?;
        Ok(())
    }
}

impl fmt::Debug for DockerScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerScheduler")
            .field("label", &self.inner.label)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for DockerScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

#[async_trait]
impl ContainerScheduler for DockerScheduler {
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<(), Error> {
        let spec = spec.normalized()?;
        self.inner.check_spec(&spec)?;
        self.apply(spec, opts.force).await
    }

    async fn undeploy(&self, id: &ServiceId) -> Result<bool, Error> {
        let inner = &self.inner;
        let key = service_key(&inner.opts.namespace, id);
        let existed = {
            let _ops = inner.ops.lock().await;
            let record = inner.records(Some(&key)).await?.remove(&key);
            if let Some(r) = &record {
                for (_, volume) in &r.volumes {
                    inner.remove_volume(volume).await?;
                }
            }
            let containers = inner
                .containers(Some(&key))
                .await?
                .remove(&key)
                .unwrap_or_default();
            for c in &containers {
                inner.remove_container(c).await?;
            }
            for run in inner.run_containers(&key).await? {
                if let Some(id) = &run.id {
                    inner.remove_run(id).await?;
                }
            }
            record.is_some()
        };
        inner.refresh().await?;
        Ok(existed)
    }

    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<(), Error> {
        let key = service_key(&self.inner.opts.namespace, id);
        let record = self
            .inner
            .records(Some(&key))
            .await?
            .remove(&key)
            .ok_or_else(|| self.not_found(id))?;
        let mut spec = record.spec;
        spec.instances = instances;
        self.inner.check_spec(&spec)?;
        self.apply(spec, false).await
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>, Error> {
        let inner = &self.inner;
        let key = service_key(&inner.opts.namespace, id);
        let Some(record) = inner.records(Some(&key)).await?.remove(&key) else {
            return Ok(None);
        };
        let containers = inner
            .containers(Some(&key))
            .await?
            .remove(&key)
            .unwrap_or_default();
        Ok(Some(inner.snapshot(&record, &containers)))
    }

    async fn services(&self) -> Result<Vec<DeployedService>, Error> {
        let inner = &self.inner;
        let records = inner.records(None).await?;
        let mut containers = inner.containers(None).await?;
        let mut out: Vec<DeployedService> = records
            .iter()
            .map(|(key, r)| inner.snapshot(r, &containers.remove(key).unwrap_or_default()))
            .collect();
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(out)
    }

    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent, Error>> {
        self.inner.watchers.subscribe()
    }

    /// Runs `spec` once as a container that is removed when it exits (no restart, no
    /// published ports).
    async fn run_once(&self, spec: ServiceSpec) -> Result<(), Error> {
        let inner = &self.inner;
        let spec = spec.normalized()?.with_instances(1);
        inner.check_spec(&spec)?;
        let key = service_key(&inner.opts.namespace, &spec.id);
        let mut body = inner.body(&spec, &key, 0, &IndexMap::new())?;
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(label::VAMP.into(), label::RUN_VALUE.into());
        }
        if let Some(host_config) = body.host_config.as_mut() {
            host_config.restart_policy = None;
            host_config.auto_remove = Some(true);
            host_config.port_bindings = None;
        }
        body.exposed_ports = None;
        let mut created = inner.docker.create_container(None, body.clone()).await;
        if let Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) = created
        {
            inner.pull(&spec).await?;
            created = inner.docker.create_container(None, body).await;
        }
        let id = created.map_err(|e| inner.backend_error(e))?.id;
        inner
            .docker
            .start_container(&id, None)
            .await
            .map_err(|e| inner.backend_error(e))
    }

    async fn runs(&self, id: &ServiceId) -> Result<Vec<RunInfo>, Error> {
        let key = service_key(&self.inner.opts.namespace, id);
        Ok(self
            .inner
            .run_containers(&key)
            .await?
            .into_iter()
            .filter_map(|c| {
                Some(RunInfo::new(
                    c.id?,
                    c.created.unwrap_or(0).saturating_mul(1000),
                ))
            })
            .collect())
    }

    async fn stop_run(&self, id: &ServiceId, name: &str) -> Result<bool, Error> {
        let key = service_key(&self.inner.opts.namespace, id);
        // Only a run of this service is stopped, whatever name is given.
        let ours = self
            .inner
            .run_containers(&key)
            .await?
            .into_iter()
            .any(|c| c.id.as_deref() == Some(name));
        if !ours {
            return Ok(false);
        }
        self.inner.remove_run(name).await
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use vamp_core::model::{Deployable, HealthCheck, PortType};

    use super::*;

    fn spec() -> ServiceSpec {
        let mut s = ServiceSpec::new(
            ServiceId::new("sava", "web", "sava:1.0.0"),
            Deployable {
                deployable_type: Some("docker".into()),
                definition: "magneticio/sava:1.0.0".into(),
            },
        )
        .with_instances(3)
        .with_port("webport", 8080, PortType::Http)
        .with_env("GREETING", "hello");
        s.arguments.push(Argument {
            key: "privileged".into(),
            value: "true".into(),
        });
        s.health_checks.push(HealthCheck {
            path: "/health".into(),
            port: "webport".into(),
            initial_delay: 1,
            timeout: 2,
            interval: 3,
            failures: 4,
            protocol: "HTTP".into(),
        });
        s.network = Some("BRIDGE".into());
        s.normalized().unwrap()
    }

    #[test]
    fn a_spec_survives_its_record() {
        let s = spec();
        let back = spec_from_json(&spec_json(&s, true)).unwrap();
        assert_eq!(back, s);
        let mut scaled = s.clone();
        scaled.instances = 7;
        assert_eq!(
            spec_hash(&scaled),
            spec_hash(&s),
            "a scale keeps the containers"
        );
        let changed = s.clone().with_env("GREETING", "hi");
        assert_ne!(spec_hash(&changed), spec_hash(&s));
    }

    #[test]
    fn names_are_docker_names_and_keys_differ_per_namespace() {
        let id = ServiceId::new("Sava Deployment", "web", "sava:1.0.0");
        let key = service_key("default", &id);
        assert_ne!(key, service_key("other", &id));
        let prefix = name_prefix(&key, &id);
        assert!(prefix.starts_with("vamp-sava-deployment-web-sava-1-0-0-"));
        assert!(prefix.len() <= 64);
        assert!(
            prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
    }

    /// A scheduler's inner part on an engine never contacted (the client connects lazily).
    fn inner(opts: DockerOptions) -> Inner {
        Inner {
            docker: Docker::connect_with_http("127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION)
                .unwrap(),
            host: "127.0.0.1".into(),
            label: "test".into(),
            ops: tokio::sync::Mutex::new(()),
            refresh: tokio::sync::Mutex::new(()),
            watchers: Watchers::default(),
            health: Mutex::new(HashMap::new()),
            host_ports: Mutex::new(PortAllocator::new(opts.host_port_range.clone())),
            opts,
        }
    }

    /// The exact request sent to create an instance: Docker Engine API v1.41 field names.
    #[test]
    fn the_create_request_carries_vamp_s_mapping() {
        let mut s = spec();
        s.cpu = 0.5;
        s.memory_mb = 256.0;
        s.labels.insert("team".into(), "canary".into());
        s.labels
            .insert("io.vamp.deployment".into(), "forged".into());
        let key = service_key("default", &s.id);
        let body = inner(DockerOptions::default())
            .body(&s, &key, 2, &IndexMap::new())
            .unwrap();
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["Image"], "magneticio/sava:1.0.0");
        assert_eq!(
            v["Env"],
            json!([
                "PORT=8080",
                "PORT0=8080",
                "PORT_WEBPORT=8080",
                "GREETING=hello"
            ])
        );
        assert_eq!(v["ExposedPorts"], json!({"8080/tcp": {}}));
        let host = &v["HostConfig"];
        assert_eq!(
            host["PortBindings"],
            json!({"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]})
        );
        assert_eq!(host["NetworkMode"], "bridge");
        assert_eq!(host["RestartPolicy"]["Name"], "unless-stopped");
        assert_eq!(host["NanoCpus"], 500_000_000);
        assert_eq!(host["Memory"], 256 * 1024 * 1024);
        assert_eq!(host["Privileged"], true);
        let labels = &v["Labels"];
        assert_eq!(labels["io.vamp"], "deployment-service");
        assert_eq!(
            labels["io.vamp.deployment"], "sava",
            "a spec label cannot forge Vamp's"
        );
        assert_eq!(labels["io.vamp.cluster"], "web");
        assert_eq!(labels["io.vamp.service"], "sava:1.0.0");
        assert_eq!(labels["io.vamp.namespace"], "default");
        assert_eq!(labels["io.vamp.key"], key.as_str());
        assert_eq!(labels["io.vamp.instance"], "2");
        assert_eq!(labels["io.vamp.spec-hash"], spec_hash(&s).as_str());
        assert_eq!(labels["team"], "canary");
    }

    #[test]
    fn on_the_host_network_instances_listen_on_their_own_ports() {
        let mut s = spec();
        s.network = Some("HOST".into());
        let ports = IndexMap::from([("webport".to_owned(), 20123u16)]);
        let body = inner(DockerOptions::default())
            .body(&s, "k", 1, &ports)
            .unwrap();
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["HostConfig"]["NetworkMode"], "host");
        assert!(
            v["HostConfig"]
                .get("PortBindings")
                .is_none_or(Value::is_null)
        );
        assert!(v.get("ExposedPorts").is_none_or(Value::is_null));
        assert_eq!(v["Env"][0], "PORT=20123");
        assert_eq!(v["Labels"]["io.vamp.ports"], r#"{"webport":20123}"#);
    }

    #[test]
    fn merging_replaces_scalars_and_merges_maps() {
        let mut base =
            json!({"Image": "a", "HostConfig": {"NetworkMode": "bridge", "Privileged": false}});
        merge(
            &mut base,
            &json!({"Cmd": ["x"], "HostConfig": {"Privileged": true}}),
        );
        assert_eq!(
            base,
            json!({"Image": "a", "Cmd": ["x"], "HostConfig": {"NetworkMode": "bridge", "Privileged": true}})
        );
        let mut unknown = Vec::new();
        unknown_fields(
            &json!({"Cmd": ["x"], "Nonsense": 1, "HostConfig": {"Bogus": 2}}),
            &json!({"Cmd": ["x"], "HostConfig": {}}),
            "",
            &mut unknown,
        );
        assert_eq!(unknown, ["Nonsense", "HostConfig.Bogus"]);
    }
}
