//! Marathon (Mesos, DC/OS) as a [`ContainerScheduler`] (feature `scheduler-marathon`): a thin
//! `reqwest` client of Marathon's REST API (`/v2/apps`, `/v2/deployments`, `/v2/info`), after
//! Vamp's Marathon driver (`runtime.md` §4.2).
//!
//! # Mapping from Vamp's model to Marathon
//!
//! | Vamp | Marathon |
//! |---|---|
//! | service (deployment, cluster, breed) | app `/<group>/deployment-<deployment>-service-<cluster>-<breed>-<digest>`, each part itself when it is a DNS label (lower-case letters, digits, `-`, at most 63), else the first 20 hex digits of its SHA-1, and `<digest>` 10 hex digits of the SHA-1 of the whole tuple (no two services share an id). An app at that id whose spec label does not give it to the service (made by someone else) is never updated, scaled or deleted; one of the service's under another id (an earlier version's) is removed once the service runs under its own |
//! | deployable `docker`, `container/docker` or no type | `container: {type: DOCKER, docker: {image, network, portMappings, parameters, privileged, forcePullImage: false}}` |
//! | deployable `command`, `cmd` | `cmd`, with `portDefinitions` (`$PORT0`, `$PORT1`, … given by Marathon) |
//! | breed port `8080` | `portMappings[i] = {containerPort: 8080, hostPort: 0, protocol: tcp, name}` (network `BRIDGE`); `portDefinitions[i] = {port: 0, protocol: tcp, name}` (network `HOST` and commands) |
//! | scale | `instances`, `cpus`, `mem` (MB) |
//! | environment | `env` |
//! | argument `privileged` | `container.docker.privileged`; other arguments become Docker `parameters` `{key, value}` (refused for commands) |
//! | health checks | `healthChecks[i] = {path, portIndex, protocol, gracePeriodSeconds, intervalSeconds, timeoutSeconds, maxConsecutiveFailures}` (`portIndex`: the index of the breed port named by the check) |
//! | labels | `labels`: Vamp's (`io.vamp.deployment`, `io.vamp.cluster`, `io.vamp.service`), `io.vamp.namespace` (the group), `io.vamp.spec` (the spec as JSON, read back by [`ContainerScheduler::service`]) and the spec's own |
//! | dialect `marathon: {…}` | merged into the app (the dialect winning, as in Vamp) |
//! | rolling updates | `upgradeStrategy: {maximumOverCapacity: 1.0, minimumHealthCapacity: 1.0}` |
//! | instance | a task: name = task id, host = task host, ports = the task's ports zipped with the breed's, running = `TASK_RUNNING`, healthy = every `healthCheckResults[].alive` |
//!
//! An update reads the app and sends (`PUT /v2/apps/<id>`) only the fields whose value is not
//! already there (Marathon adds defaults to what it stores, so "there" means contained in it);
//! an unchanged spec sends nothing. A write refused because a deployment of the app is in
//! progress (`409`, "locked") is sent again with `?force=true`: the newest wish replaces the
//! one under way, as a control plane converging on it needs. Scale is `PUT {instances}`;
//! undeploy is `DELETE /v2/apps/<id>`.
//!
//! Everything lives in Marathon: a scheduler created after a restart (or a second one) finds
//! every app of its group. [`ContainerScheduler::watch`] compares what Marathon reports every
//! [`MarathonOptions::poll`] (and after each change made through this scheduler) with what it
//! saw before. One-shot runs need Metronome (Vamp used it for workflows) and are not
//! supported ([`ContainerScheduler::run_once`] answers [`Error::NotSupported`]).
//!
//! DC/OS: the address is the cluster's (`https://dcos.example.com/service/marathon`), the
//! token ([`MarathonOptions::token`], the URL's `?token=`) is sent as `Authorization:
//! token=<token>`; plain Marathon takes HTTP basic credentials from the URL's user and
//! password. Neither ever appears in an error, a log or `Debug` output.
//!
//! ```no_run
//! # async fn example() -> Result<(), vamp_core::Error> {
//! use vamp_backends::scheduler::marathon::{MarathonOptions, MarathonScheduler};
//! use vamp_core::model::{Deployable, PortType};
//! use vamp_core::scheduler::*;
//!
//! let scheduler = MarathonScheduler::connect(MarathonOptions::new("http://marathon.mesos:8080")).await?;
//! let deployable = Deployable { deployable_type: Some("docker".into()), definition: "magneticio/sava:1.0.0".into() };
//! let spec = ServiceSpec::new(ServiceId::new("sava", "sava", "sava:1.0.0"), deployable)
//!     .with_instances(2)
//!     .with_port("webport", 8080, PortType::Http);
//! scheduler.deploy(spec, DeployOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use indexmap::IndexMap;
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};
use vamp_core::Error;
use vamp_core::scheduler::*;

use super::record::{Watchers, merge, metadata_json, spec_from_json};
use crate::Secret;

/// The deployable types this scheduler runs: Docker images and commands.
pub const DEPLOYABLE_TYPES: [&str; 4] = ["container/docker", "docker", "command", "cmd"];

/// The most instances one service may have by default.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

const SPEC_LABEL: &str = "io.vamp.spec";
const NAMESPACE_LABEL: &str = "io.vamp.namespace";

/// How to reach Marathon.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MarathonOptions {
    /// Marathon's address (`http://host:8080`, or DC/OS's `https://…/service/marathon`).
    pub address: String,
    /// The group the apps live in (`/<group>/…`; Vamp's namespace). Default `vamp`.
    pub group: String,
    /// A DC/OS token, sent as `Authorization: token=<token>`.
    pub token: Option<Secret>,
    /// HTTP basic credentials (user, password) for a plain Marathon.
    pub basic: Option<(String, Secret)>,
    /// How often the watch reads Marathon (default 2 s).
    pub poll: Duration,
    /// How long one request may take (default 30 s).
    pub request_timeout: Duration,
    /// The most instances of one service.
    pub max_instances: u32,
}

impl MarathonOptions {
    /// Options for the Marathon at `address`, with the defaults.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            group: "vamp".into(),
            token: None,
            basic: None,
            poll: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

impl fmt::Debug for MarathonOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MarathonOptions")
            .field("address", &self.address)
            .field("group", &self.group)
            .field("token", &self.token)
            .field("basic", &self.basic.as_ref().map(|(u, p)| (u, p)))
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

/// A [`ContainerScheduler`] on Marathon. Cloning shares the scheduler.
#[derive(Clone)]
pub struct MarathonScheduler {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    opts: MarathonOptions,
    label: String,
    refresh: tokio::sync::Mutex<()>,
    watchers: Watchers,
}

/// A Marathon deployment in progress (`GET /v2/deployments`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MarathonDeployment {
    /// The deployment's id.
    pub id: String,
    /// The apps it changes.
    pub affected_apps: Vec<String>,
}

/// A path segment of an app id: `name` when it is a DNS label, else 20 hex digits of its SHA-1.
fn segment(name: &str) -> String {
    let dns = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if dns {
        name.to_owned()
    } else {
        vamp_core::lookup::hex_sha1(name, "")[..20].to_owned()
    }
}

/// The app id of a service in `group`: its parts (each itself when it is a DNS label, else a
/// digest) and a digest of the whole tuple, so two services never share an id (`a-b`/`c` and
/// `a`/`b-c` once did).
pub fn app_id(group: &str, id: &ServiceId) -> String {
    let tuple = format!("{}\u{0}{}\u{0}{}", id.deployment, id.cluster, id.service);
    format!(
        "/{group}/deployment-{}-service-{}-{}-{}",
        segment(&id.deployment),
        segment(&id.cluster),
        segment(&id.service),
        &vamp_core::lookup::hex_sha1(&tuple, "")[..10]
    )
}

/// Whether `small` is contained in `big`: every key of an object with a contained value,
/// arrays of the same length with contained items, anything else equal.
fn contained(small: &Value, big: &Value) -> bool {
    match (small, big) {
        (Value::Object(s), Value::Object(b)) => s
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|bv| contained(v, bv)) || v.is_null()),
        (Value::Array(s), Value::Array(b)) => {
            s.len() == b.len() && s.iter().zip(b).all(|(x, y)| contained(x, y))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

impl Inner {
    fn unavailable(&self, e: impl Into<vamp_core::error::BoxError>) -> Error {
        Error::Unavailable {
            backend: self.label.clone(),
            source: e.into(),
        }
    }

    /// One request; the answer's status and JSON body (`Null` when empty or not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Error> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(token) = &self.opts.token {
            request = request.header("Authorization", format!("token={}", token.0));
        } else if let Some((user, password)) = &self.opts.basic {
            request = request.basic_auth(user, Some(&password.0));
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        // reqwest's errors name the URL, which holds no credential (they go in headers).
        let response = request
            .send()
            .await
            .map_err(|e| self.unavailable(e.without_url()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.unavailable(e.without_url()))?;
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(Error::Backend {
                backend: self.label.clone(),
                source: format!(
                    "Marathon refused the credentials (HTTP {}): check the token or user",
                    status.as_u16()
                )
                .into(),
            }),
            s if s.is_server_error() => {
                Err(self.unavailable(format!("HTTP {}: {}", s.as_u16(), message(&value))))
            }
            _ => Ok((status, value)),
        }
    }

    fn refused(&self, what: &str, status: StatusCode, body: &Value) -> Error {
        if status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST {
            return Error::Invalid {
                what: "app",
                value: what.to_owned(),
                reason: format!("Marathon refused it: {}", details(body)),
            };
        }
        Error::Backend {
            backend: self.label.clone(),
            source: format!("{what}: HTTP {}: {}", status.as_u16(), message(body)).into(),
        }
    }

    fn check_spec(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let kind = spec.deployable.deployable_type.as_deref();
        if kind.is_some_and(|k| !DEPLOYABLE_TYPES.contains(&k)) {
            return Err(Error::Invalid {
                what: "deployable",
                value: format!("{}: {kind:?}", spec.id),
                reason: format!(
                    "Marathon runs Docker images and commands: type one of {} (or none)",
                    DEPLOYABLE_TYPES.join(", ")
                ),
            });
        }
        if spec.deployable.definition.trim().is_empty() {
            return Err(Error::Invalid {
                what: "deployable",
                value: spec.id.to_string(),
                reason: "empty".into(),
            });
        }
        if spec.instances > self.opts.max_instances {
            return Err(Error::Invalid {
                what: "instances",
                value: format!("{}: {}", spec.id, spec.instances),
                reason: format!(
                    "at most {} instances of a service (MarathonOptions::max_instances)",
                    self.opts.max_instances
                ),
            });
        }
        self.app(spec).map(drop)
    }

    /// The app Vamp sends for `spec`.
    fn app(&self, spec: &ServiceSpec) -> Result<Value, Error> {
        let docker = !matches!(
            spec.deployable.deployable_type.as_deref(),
            Some("command" | "cmd")
        );
        let network = match spec.network.as_deref() {
            None | Some("") => "BRIDGE".to_owned(),
            Some(n) => n.to_ascii_uppercase(),
        };
        let mut labels: Map<String, Value> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        for (k, v) in spec.id.labels() {
            labels.insert(k, json!(v));
        }
        labels.insert(NAMESPACE_LABEL.into(), json!(self.opts.group));
        labels.insert(SPEC_LABEL.into(), json!(metadata_json(spec).to_string()));
        let mut health_checks = Vec::new();
        for h in &spec.health_checks {
            let (index, _) = spec.health_check_port(h)?;
            let protocol = match h.protocol.to_ascii_uppercase().as_str() {
                "" | "HTTP" => "HTTP".to_owned(),
                other => other.to_owned(),
            };
            let mut check = json!({
                "portIndex": index,
                "protocol": protocol,
                "gracePeriodSeconds": h.initial_delay,
                "intervalSeconds": h.interval,
                "timeoutSeconds": h.timeout,
                "maxConsecutiveFailures": h.failures,
            });
            if protocol.starts_with("HTTP") || protocol.starts_with("MESOS_HTTP") {
                check["path"] = json!(h.path);
            }
            health_checks.push(check);
        }
        let mut app = json!({
            "id": app_id(&self.opts.group, &spec.id),
            "instances": spec.instances,
            "cpus": spec.cpu,
            "mem": spec.memory_mb,
            "env": spec.environment,
            "labels": labels,
            "healthChecks": health_checks,
            "upgradeStrategy": {"maximumOverCapacity": 1.0, "minimumHealthCapacity": 1.0},
        });
        let port_definitions = || {
            spec.ports
                .iter()
                .map(|p| json!({"port": 0, "protocol": "tcp", "name": p.name}))
                .collect::<Vec<_>>()
        };
        if docker {
            let mut privileged = false;
            let mut parameters = Vec::new();
            for a in &spec.arguments {
                if a.privileged() {
                    privileged = match a.value.trim() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(Error::Invalid {
                                what: "argument",
                                value: format!("{}: privileged={}", spec.id, a.value),
                                reason: "privileged is true or false".into(),
                            });
                        }
                    };
                } else {
                    parameters.push(json!({"key": a.key, "value": a.value}));
                }
            }
            let mut container = json!({
                "type": "DOCKER",
                "docker": {
                    "image": spec.deployable.definition.trim(),
                    "network": network,
                    "parameters": parameters,
                    "privileged": privileged,
                    "forcePullImage": false,
                },
            });
            if network == "BRIDGE" {
                container["docker"]["portMappings"] = spec
                    .ports
                    .iter()
                    .map(|p| {
                        json!({"containerPort": p.container_port, "hostPort": 0, "protocol": "tcp", "name": p.name})
                    })
                    .collect();
            } else {
                app["portDefinitions"] = json!(port_definitions());
            }
            app["container"] = container;
        } else {
            if let Some(a) = spec.arguments.first() {
                return Err(Error::Invalid {
                    what: "argument",
                    value: format!("{}: {}", spec.id, a.key),
                    reason: "Marathon passes arguments to Docker only, and this is a command"
                        .into(),
                });
            }
            app["cmd"] = json!(spec.deployable.definition);
            app["portDefinitions"] = json!(port_definitions());
        }
        if let Some(dialect) = spec.dialects.get("marathon") {
            let patch = dialect.to_json();
            if !patch.is_object() {
                return Err(Error::Invalid {
                    what: "dialect",
                    value: format!("{}: marathon", spec.id),
                    reason: "the marathon dialect must be a map of app fields".into(),
                });
            }
            merge(&mut app, &patch);
            // The id and Vamp's labels stay.
            app["id"] = json!(app_id(&self.opts.group, &spec.id));
            for (k, v) in spec.id.labels() {
                app["labels"][k] = json!(v);
            }
            app["labels"][NAMESPACE_LABEL] = json!(self.opts.group);
            app["labels"][SPEC_LABEL] = json!(metadata_json(spec).to_string());
        }
        Ok(app)
    }

    /// A service from an app (with its tasks), if it is one of this group's.
    fn service(&self, app: &Value) -> Option<DeployedService> {
        let labels = app.get("labels")?;
        if labels.get(NAMESPACE_LABEL)?.as_str()? != self.opts.group {
            return None;
        }
        let mut stored: Value = serde_json::from_str(labels.get(SPEC_LABEL)?.as_str()?).ok()?;
        stored["instances"] = app.get("instances").cloned().unwrap_or(json!(0));
        let spec = spec_from_json(&stored)?;
        let checks = !spec.health_checks.is_empty();
        let instances = app
            .get("tasks")
            .and_then(Value::as_array)
            .map(|tasks| {
                tasks
                    .iter()
                    .filter_map(|t| {
                        let ports: IndexMap<String, u16> = spec
                            .ports
                            .iter()
                            .zip(t.get("ports").and_then(Value::as_array)?)
                            .filter_map(|(p, v)| {
                                Some((p.name.clone(), u16::try_from(v.as_u64()?).ok()?))
                            })
                            .collect();
                        let running = match t.get("state").and_then(Value::as_str) {
                            Some(state) => state == "TASK_RUNNING",
                            None => t.get("startedAt").is_some_and(|s| !s.is_null()),
                        };
                        let healthy = checks.then(|| {
                            t.get("healthCheckResults")
                                .and_then(Value::as_array)
                                .is_some_and(|r| {
                                    !r.is_empty()
                                        && r.iter().all(|x| {
                                            x.get("alive").and_then(Value::as_bool) == Some(true)
                                        })
                                })
                        });
                        Some(InstanceState {
                            name: t.get("id")?.as_str()?.to_owned(),
                            host: t.get("host")?.as_str()?.to_owned(),
                            ports,
                            running,
                            healthy,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(DeployedService { spec, instances })
    }

    /// Whether `app` is service `id`'s: in this scheduler's group, its spec label naming that
    /// service (not an app of another owner or of none).
    fn owns(&self, app: &Value, id: &ServiceId) -> bool {
        self.service(app).is_some_and(|s| s.spec.id == *id)
    }

    fn not_ours(&self, id: &ServiceId) -> Error {
        Error::Backend {
            backend: self.label.clone(),
            source: format!(
                "an app '{}' exists that this scheduler did not make for {id}: it is left alone",
                app_id(&self.opts.group, id)
            )
            .into(),
        }
    }

    /// Removes the apps of service `id` under another id than its own (made by an earlier
    /// version's naming); how many went.
    async fn remove_other_ids(&self, id: &ServiceId) -> Result<usize, Error> {
        let own = app_id(&self.opts.group, id);
        let path = format!("/v2/apps?label={NAMESPACE_LABEL}=={}", self.opts.group);
        let (status, body) = self.call(Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(self.refused("the app list", status, &body));
        }
        let mut removed = 0;
        for app in body
            .get("apps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(other) = app.get("id").and_then(Value::as_str) else {
                continue;
            };
            if other == own || !self.owns(app, id) {
                continue;
            }
            let (status, answer) = self
                .call(Method::DELETE, &format!("/v2/apps{other}?force=true"), None)
                .await?;
            if status.is_success() {
                removed += 1;
            } else if status != StatusCode::NOT_FOUND {
                return Err(self.refused(other, status, &answer));
            }
        }
        Ok(removed)
    }

    async fn get_app(&self, id: &ServiceId) -> Result<Option<Value>, Error> {
        let path = format!("/v2/apps{}?embed=app.tasks", app_id(&self.opts.group, id));
        let (status, body) = self.call(Method::GET, &path, None).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(body.get("app").cloned()),
            s => Err(self.refused(&id.to_string(), s, &body)),
        }
    }

    async fn list(&self) -> Result<BTreeMap<ServiceId, DeployedService>, Error> {
        let path = format!(
            "/v2/apps?embed=apps.tasks&label={NAMESPACE_LABEL}=={}",
            self.opts.group
        );
        let (status, body) = self.call(Method::GET, &path, None).await?;
        if !status.is_success() {
            return Err(self.refused("the app list", status, &body));
        }
        Ok(body
            .get("apps")
            .and_then(Value::as_array)
            .map(|apps| {
                apps.iter()
                    .filter_map(|a| self.service(a))
                    .map(|s| (s.spec.id.clone(), s))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Reads every service and tells the watchers what changed.
    async fn refresh(&self) -> Result<(), Error> {
        let _guard = self.refresh.lock().await;
        let now = self.list().await?;
        self.watchers.publish(&now);
        Ok(())
    }

    /// Sends a change of an app; a write refused because a deployment holds the app is sent
    /// again with `?force=true`.
    async fn write(
        &self,
        method: Method,
        id: &ServiceId,
        body: Option<&Value>,
        force: bool,
    ) -> Result<StatusCode, Error> {
        let app = app_id(&self.opts.group, id);
        let path = match method {
            Method::POST => "/v2/apps".to_owned(),
            _ => format!("/v2/apps{app}"),
        };
        let forced = format!("{path}?force=true");
        let (status, answer) = self
            .call(method.clone(), if force { &forced } else { &path }, body)
            .await?;
        if status == StatusCode::CONFLICT && method != Method::POST && !force {
            let (status, answer) = self.call(method, &forced, body).await?;
            return self.accepted(id, status, &answer);
        }
        self.accepted(id, status, &answer)
    }

    fn accepted(
        &self,
        id: &ServiceId,
        status: StatusCode,
        body: &Value,
    ) -> Result<StatusCode, Error> {
        if status.is_success() || status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT
        {
            Ok(status)
        } else {
            Err(self.refused(&id.to_string(), status, body))
        }
    }
}

fn message(body: &Value) -> String {
    body.get("message")
        .and_then(Value::as_str)
        .map_or_else(|| "no message".to_owned(), str::to_owned)
}

/// Marathon's validation answer: its message and each `details[].path` with its errors.
fn details(body: &Value) -> String {
    let mut out = message(body);
    if let Some(details) = body.get("details").and_then(Value::as_array) {
        for d in details {
            let path = d.get("path").and_then(Value::as_str).unwrap_or("?");
            let errors: Vec<&str> = d
                .get("errors")
                .and_then(Value::as_array)
                .map(|e| e.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.push_str(&format!("; {path}: {}", errors.join(", ")));
        }
    }
    out
}

/// Polls Marathon for the watch until the scheduler is dropped.
async fn poll(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let _ = inner.refresh().await;
    }
}

impl MarathonScheduler {
    /// Checks Marathon (`GET /v2/info`), reads the group's apps and starts the watch's poll.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when Marathon cannot be reached; [`Error::Backend`] when it
    /// refuses the credentials; [`Error::InvalidConfig`] for a bad address or group.
    pub async fn connect(opts: MarathonOptions) -> Result<Self, Error> {
        let base = opts.address.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(crate::invalid(
                "marathon",
                "the address is http://host:port or https://host/path",
            ));
        }
        if opts.group.is_empty() || segment(&opts.group) != opts.group {
            return Err(crate::invalid(
                "marathon",
                format!(
                    "the group {:?} must be lower-case letters, digits and '-'",
                    opts.group
                ),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .build()
            .map_err(|e| crate::invalid("marathon", e.to_string()))?;
        let label = format!(
            "MarathonScheduler({}, group /{})",
            crate::url::redact(&base),
            opts.group
        );
        let inner = Arc::new(Inner {
            http,
            base,
            label,
            refresh: tokio::sync::Mutex::new(()),
            watchers: Watchers::default(),
            opts,
        });
        let (status, body) = inner.call(Method::GET, "/v2/info", None).await?;
        if !status.is_success() {
            return Err(inner.refused("/v2/info", status, &body));
        }
        inner.refresh().await?;
        tokio::spawn(poll(Arc::downgrade(&inner), inner.opts.poll));
        Ok(Self { inner })
    }

    /// Marathon's `/v2/info` (name, version, leader, …).
    ///
    /// # Errors
    /// As [`MarathonScheduler::connect`].
    pub async fn info(&self) -> Result<Value, Error> {
        let (status, body) = self.inner.call(Method::GET, "/v2/info", None).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(self.inner.refused("/v2/info", status, &body))
        }
    }

    /// The deployments in progress that change this group's apps (`GET /v2/deployments`).
    ///
    /// # Errors
    /// As [`MarathonScheduler::connect`].
    pub async fn deployments(&self) -> Result<Vec<MarathonDeployment>, Error> {
        let (status, body) = self
            .inner
            .call(Method::GET, "/v2/deployments", None)
            .await?;
        if !status.is_success() {
            return Err(self.inner.refused("/v2/deployments", status, &body));
        }
        let prefix = format!("/{}/", self.inner.opts.group);
        Ok(body
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| {
                        let affected_apps: Vec<String> = d
                            .get("affectedApps")?
                            .as_array()?
                            .iter()
                            .filter_map(|a| a.as_str().map(str::to_owned))
                            .filter(|a| a.starts_with(&prefix))
                            .collect();
                        (!affected_apps.is_empty()).then(|| MarathonDeployment {
                            id: d.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                            affected_apps,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The app this scheduler sends for `spec` (for inspection; nothing is sent).
    ///
    /// # Errors
    /// [`Error::Invalid`] for what Marathon cannot run.
    pub fn app_for(&self, spec: &ServiceSpec) -> Result<Value, Error> {
        let spec = spec.clone().normalized()?;
        self.inner.check_spec(&spec)?;
        self.inner.app(&spec)
    }
}

impl fmt::Debug for MarathonScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MarathonScheduler")
            .field("options", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for MarathonScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.label)
    }
}

#[async_trait]
impl ContainerScheduler for MarathonScheduler {
    async fn deploy(&self, spec: ServiceSpec, opts: DeployOptions) -> Result<(), Error> {
        let inner = &self.inner;
        let spec = spec.normalized()?;
        inner.check_spec(&spec)?;
        let app = inner.app(&spec)?;
        match inner.get_app(&spec.id).await? {
            None => {
                let status = inner
                    .write(Method::POST, &spec.id, Some(&app), false)
                    .await?;
                if status == StatusCode::CONFLICT {
                    // Created meanwhile (another control plane): update it instead.
                    inner.write(Method::PUT, &spec.id, Some(&app), true).await?;
                }
            }
            Some(current) if !inner.owns(&current, &spec.id) => {
                return Err(inner.not_ours(&spec.id));
            }
            Some(current) => {
                let mut changed = Map::new();
                if let Value::Object(fields) = &app {
                    for (k, v) in fields {
                        if opts.force || !current.get(k).is_some_and(|c| contained(v, c)) {
                            changed.insert(k.clone(), v.clone());
                        }
                    }
                }
                if !changed.is_empty() {
                    // The whole app on a forced deploy: Marathon restarts every task.
                    let body = if opts.force {
                        app
                    } else {
                        Value::Object(changed)
                    };
                    inner
                        .write(Method::PUT, &spec.id, Some(&body), opts.force)
                        .await?;
                }
            }
        }
        // The service under its own id now: a copy under an earlier version's id goes.
        inner.remove_other_ids(&spec.id).await?;
        inner.refresh().await
    }

    async fn undeploy(&self, id: &ServiceId) -> Result<bool, Error> {
        let others = self.inner.remove_other_ids(id).await?;
        match self.inner.get_app(id).await? {
            Some(app) if self.inner.owns(&app, id) => {}
            // Nothing of this service's (an app of another owner stays).
            _ => {
                self.inner.refresh().await?;
                return Ok(others > 0);
            }
        }
        let status = self.inner.write(Method::DELETE, id, None, false).await?;
        self.inner.refresh().await?;
        Ok(status.is_success())
    }

    async fn scale(&self, id: &ServiceId, instances: u32) -> Result<(), Error> {
        let inner = &self.inner;
        let Some(app) = inner.get_app(id).await? else {
            return Err(Error::NotFound {
                backend: inner.label.clone(),
                kind: "service".into(),
                name: id.to_string(),
            });
        };
        if !inner.owns(&app, id) {
            return Err(inner.not_ours(id));
        }
        if instances > inner.opts.max_instances {
            return Err(Error::Invalid {
                what: "instances",
                value: format!("{id}: {instances}"),
                reason: format!("at most {} instances", inner.opts.max_instances),
            });
        }
        if app.get("instances").and_then(Value::as_u64) != Some(u64::from(instances)) {
            inner
                .write(
                    Method::PUT,
                    id,
                    Some(&json!({"instances": instances})),
                    false,
                )
                .await?;
        }
        inner.refresh().await
    }

    async fn service(&self, id: &ServiceId) -> Result<Option<DeployedService>, Error> {
        Ok(self
            .inner
            .get_app(id)
            .await?
            .and_then(|app| self.inner.service(&app))
            .filter(|s| s.spec.id == *id))
    }

    async fn services(&self) -> Result<Vec<DeployedService>, Error> {
        Ok(self.inner.list().await?.into_values().collect())
    }

    fn watch(&self) -> BoxStream<'static, Result<SchedulerEvent, Error>> {
        self.inner.watchers.subscribe()
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
    use super::*;

    #[test]
    fn app_ids_follow_vamp_s_scheme() {
        let id = ServiceId::new("sava", "web", "sava:1.0.0");
        let app = app_id("vamp", &id);
        let hashed = &vamp_core::lookup::hex_sha1("sava:1.0.0", "")[..20];
        let tuple = &vamp_core::lookup::hex_sha1("sava\u{0}web\u{0}sava:1.0.0", "")[..10];
        assert_eq!(
            app,
            format!("/vamp/deployment-sava-service-web-{hashed}-{tuple}")
        );
        assert_ne!(
            app_id("vamp", &ServiceId::new("a-service-b", "c", "d")),
            app_id("vamp", &ServiceId::new("a", "b-service-c", "d")),
        );
        assert_eq!(segment("a-b1"), "a-b1");
        assert_eq!(segment("-a").len(), 20);
        assert_eq!(segment("Upper").len(), 20);
    }

    #[test]
    fn containment_ignores_what_marathon_adds() {
        let sent = json!({"docker": {"image": "a", "network": "BRIDGE"}, "type": "DOCKER"});
        let stored = json!({"docker": {"image": "a", "network": "BRIDGE", "forcePullImage": false}, "type": "DOCKER", "volumes": []});
        assert!(contained(&sent, &stored));
        assert!(!contained(&json!({"docker": {"image": "b"}}), &stored));
        assert!(contained(&json!(1.0), &json!(1)));
        assert!(!contained(&json!([1, 2]), &json!([1])));
    }
}
