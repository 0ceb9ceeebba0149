//! `vamp serve`: a one-machine Vamp composed from the library. The REST API ([`crate::api`]),
//! the reconcile loop, the gateway driver and (optionally) an in-process gateway agent with
//! its own HAProxy, on backends chosen by URL.
//!
//! | flag | environment | default |
//! |---|---|---|
//! | `--listen` | `VAMP_HTTP_API_INTERFACE` + `VAMP_HTTP_API_PORT` | `127.0.0.1:8080` |
//! | `--data-dir` | `VAMP_DATA_DIR` | `.vamp` |
//! | `--persistence` | `VAMP_PERSISTENCE_URL`, or `VAMP_PERSISTENCE_DATABASE_TYPE` (+ `…_SQL_URL`) | `sqlite://<data-dir>/vamp.db` (`--in-memory`: `memory://`) |
//! | `--kv` | `VAMP_KEY_VALUE_STORE_URL`, or `VAMP_PERSISTENCE_KEY_VALUE_STORE_TYPE` (+ `…_<TYPE>_URL`) | `memory://` |
//! | `--scheduler` | `VAMP_CONTAINER_DRIVER_URL`, or `VAMP_CONTAINER_DRIVER_TYPE` (`docker`, `kubernetes`, `marathon` with `VAMP_CONTAINER_DRIVER_MARATHON_URL`) | `local://<data-dir>/instances` |
//! | `--namespace` | `VAMP_NAMESPACE` | `default` |
//! | `--gateway-host` | `VAMP_GATEWAY_DRIVER_HOST` | `127.0.0.1` |
//! | `--agent` / `--no-agent` | `VAMP_GATEWAY_AGENT` (`true`/`false`) | an in-process agent when HAProxy is found |
//! | `--haproxy` | `VAMP_HAPROXY_BIN` | `haproxy` |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vamp_backends::kv::KvBackendConfig;
use vamp_backends::metrics::MetricsBackendConfig;
use vamp_backends::persistence::PersistenceBackendConfig;
use vamp_backends::scheduler::SchedulerBackendConfig;
use vamp_core::kv::{DynKeyValueStore, keys};
use vamp_core::metrics::{DynEventStore, DynMetricsStore};
use vamp_core::ops::controller::{Controller, ControllerOptions};
use vamp_core::persistence::DynPersistenceStore;
use vamp_core::scheduler::DynContainerScheduler;
use vamp_haproxy::RenderOptions;
use vamp_haproxy::agent::{AgentOptions, GatewayAgent};
use vamp_haproxy::driver::{GatewayDriver, Marshaller};

use crate::api::{Api, ApiOptions};

/// How long in-flight requests may take to finish once the server stops.
const GRACE: Duration = Duration::from_secs(10);

/// What `vamp serve` runs on.
#[derive(Clone, Debug, clap::Args)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the embedded defaults keep their data.
    #[arg(long, env = "VAMP_DATA_DIR", default_value = ".vamp")]
    pub data_dir: PathBuf,
    /// Keep the artifacts in memory instead of SQLite in the data directory.
    #[arg(long)]
    pub in_memory: bool,
    /// The persistence backend's URL (`sqlite://…`, `postgres://…`, `mysql://…`, `memory://`).
    #[arg(long)]
    pub persistence: Option<String>,
    /// The key-value store's URL (`memory://`, `etcd://…`, `consul://…`, `zk://…`, `redis://…`).
    #[arg(long)]
    pub kv: Option<String>,
    /// The container scheduler's URL (`local://dir`, `memory://`; with the features of the
    /// same names `docker://?namespace=…`, `marathon://host:8080`, `kubernetes://`).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// The events and request-metrics store's URL (`memory://`, the default, fed by the
    /// in-process agent; with the feature `elasticsearch`,
    /// `elasticsearch://host:9200?index=vamp-pulse&logs=vamp-vga-default`).
    #[arg(long)]
    pub metrics_store: Option<String>,
    /// Vamp's namespace (the key-value store's `/vamp/<namespace>`).
    #[arg(long, env = "VAMP_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The host services reach gateways on.
    #[arg(long, env = "VAMP_GATEWAY_DRIVER_HOST", default_value = "127.0.0.1")]
    pub gateway_host: String,
    /// Run no gateway agent in this process (run `gateway-agent` beside HAProxy instead).
    #[arg(long)]
    pub no_agent: bool,
    /// The HAProxy binary of the in-process agent.
    #[arg(long, env = "VAMP_HAPROXY_BIN", default_value = "haproxy")]
    pub haproxy: String,
    /// Time between passes of the reconcile, SLA and canary loops, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub period_ms: u64,
    /// Time between publications of Vamp's metrics and health events, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub pulse_ms: u64,
}

impl ServeConfig {
    /// The defaults, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: data_dir.into(),
            in_memory: false,
            persistence: None,
            kv: None,
            scheduler: None,
            metrics_store: None,
            namespace: "default".into(),
            gateway_host: "127.0.0.1".into(),
            no_agent: false,
            haproxy: "haproxy".into(),
            period_ms: 1000,
            pulse_ms: 5000,
        }
    }

    /// Fills what flags left open from Vamp's environment variables (`env`).
    #[must_use]
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        if let (Some(interface), Some(port)) = (
            env("VAMP_HTTP_API_INTERFACE"),
            env("VAMP_HTTP_API_PORT").and_then(|p| p.parse::<u16>().ok()),
        ) && let Ok(ip) = interface.parse::<std::net::IpAddr>()
        {
            self.listen = SocketAddr::new(ip, port);
        }
        if self.persistence.is_none() {
            self.persistence = env("VAMP_PERSISTENCE_URL").or_else(|| {
                match env("VAMP_PERSISTENCE_DATABASE_TYPE")?.as_str() {
                    "in-memory" => Some("memory://".into()),
                    "sqlite" | "postgres" | "mysql" | "sqlserver" => {
                        env("VAMP_PERSISTENCE_DATABASE_SQL_URL")
                    }
                    _ => None,
                }
            });
        }
        if self.kv.is_none() {
            self.kv = env("VAMP_KEY_VALUE_STORE_URL").or_else(|| {
                let t = env("VAMP_PERSISTENCE_KEY_VALUE_STORE_TYPE")?;
                let url = match t.as_str() {
                    "etcd" => env("VAMP_PERSISTENCE_KEY_VALUE_STORE_ETCD_URL")?,
                    "consul" => env("VAMP_PERSISTENCE_KEY_VALUE_STORE_CONSUL_URL")?,
                    "zookeeper" => env("VAMP_PERSISTENCE_KEY_VALUE_STORE_ZOOKEEPER_SERVERS")?,
                    "redis" => format!(
                        "{}:{}",
                        env("VAMP_PERSISTENCE_KEY_VALUE_STORE_REDIS_HOST")?,
                        env("VAMP_PERSISTENCE_KEY_VALUE_STORE_REDIS_PORT")
                            .unwrap_or_else(|| "6379".into())
                    ),
                    _ => return None,
                };
                let scheme = if t == "zookeeper" { "zk" } else { t.as_str() };
                let rest = url
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                Some(format!("{scheme}://{rest}"))
            });
        }
        if self.scheduler.is_none() {
            self.scheduler = env("VAMP_CONTAINER_DRIVER_URL").or_else(|| {
                match env("VAMP_CONTAINER_DRIVER_TYPE")?.as_str() {
                    "in-memory" | "memory" => Some("memory://".into()),
                    "docker" => Some("docker://".into()),
                    // Vamp's in-cluster default; the namespace is Vamp's.
                    "kubernetes" => Some("kubernetes://".into()),
                    "marathon" | "dcos" => {
                        let url = env("VAMP_CONTAINER_DRIVER_MARATHON_URL")?;
                        Some(match url.strip_prefix("https://") {
                            Some(rest) => format!("marathon://{rest}?tls=true"),
                            None => format!("marathon://{}", url.trim_start_matches("http://")),
                        })
                    }
                    _ => None,
                }
            });
        }
        if self.metrics_store.is_none() {
            self.metrics_store = env("VAMP_METRICS_STORE_URL").or_else(|| {
                // Vamp's pulse on Elasticsearch (`vamp.pulse.elasticsearch.url`).
                if env("VAMP_PULSE_TYPE")? != "elasticsearch" {
                    return None;
                }
                Some(vamp_backends::metrics::elasticsearch_url(&env(
                    "VAMP_PULSE_ELASTICSEARCH_URL",
                )?))
            });
        }
        if env("VAMP_GATEWAY_AGENT").is_some_and(|v| v == "false") {
            self.no_agent = true;
        }
        self
    }

    fn persistence_url(&self) -> String {
        self.persistence.clone().unwrap_or_else(|| {
            if self.in_memory {
                "memory://".into()
            } else {
                format!("sqlite://{}", self.data_dir.join("vamp.db").display())
            }
        })
    }

    fn scheduler_url(&self) -> String {
        self.scheduler
            .clone()
            .unwrap_or_else(|| format!("local://{}", self.data_dir.join("instances").display()))
    }
}

/// A running server; [`Server::stop`] (or dropping it) shuts it down gracefully.
#[derive(Debug)]
pub struct Server {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The key-value store the gateways are written to.
    pub kv: Arc<DynKeyValueStore>,
    /// Request metrics (from HAProxy's logs, when the agent runs here).
    pub metrics: Arc<DynMetricsStore>,
    /// Events (Vamp's pulse).
    pub events: Arc<DynEventStore>,
    /// The in-process gateway agent's status, when one runs.
    pub agent: Option<watch::Receiver<vamp_haproxy::agent::AgentStatus>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Stops accepting, finishes in-flight requests, stops the loop and the agent. The
    /// services deployed keep running (the scheduler adopts or stops them next start).
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Whether `bin` runs as HAProxy.
pub fn haproxy_works(bin: &str) -> bool {
    std::process::Command::new(bin)
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts the server.
///
/// # Errors
/// A backend that cannot be built or reached, or an address that cannot be bound.
pub async fn start(config: ServeConfig) -> Result<Server, String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("data directory {}: {e}", config.data_dir.display()))?;
    let persistence_url = config.persistence_url();
    let persistence: Arc<DynPersistenceStore> =
        PersistenceBackendConfig::from_url(&persistence_url)
            .map_err(|e| format!("persistence: {e}"))?
            .build()
            .await
            .map_err(|e| format!("persistence: {e}"))?;
    let kv_url = config.kv.clone().unwrap_or_else(|| "memory://".into());
    let kv: Arc<DynKeyValueStore> = KvBackendConfig::from_url(&kv_url)
        .map_err(|e| format!("key-value store: {e}"))?
        .build()
        .await
        .map_err(|e| format!("key-value store: {e}"))?;
    let scheduler_url = config.scheduler_url();
    let scheduler: Arc<DynContainerScheduler> = SchedulerBackendConfig::from_url(&scheduler_url)
        .map_err(|e| format!("scheduler: {e}"))?
        .build()
        .await
        .map_err(|e| format!("scheduler: {e}"))?;
    let stores =
        MetricsBackendConfig::from_url(config.metrics_store.as_deref().unwrap_or("memory://"))
            .map_err(|e| format!("metrics store: {e}"))?
            .build()
            .await
            .map_err(|e| format!("metrics store: {e}"))?;
    let metrics: Arc<DynMetricsStore> = stores.requests;
    let events: Arc<DynEventStore> = stores.events;

    let socket_dir = config.data_dir.join("haproxy");
    std::fs::create_dir_all(&socket_dir).map_err(|e| e.to_string())?;
    let render = RenderOptions::default()
        .with_socket_dir(socket_dir.display().to_string())
        .with_bind_address("127.0.0.1");
    let driver = GatewayDriver::new(
        Arc::clone(&kv),
        config.namespace.clone(),
        vec![Marshaller::new("1.7").with_options(render)],
    )
    .with_events(Arc::clone(&events));
    let mut controller_options = ControllerOptions::default();
    controller_options.period = Duration::from_millis(config.period_ms.max(10));
    let controller = Arc::new(
        Controller::new(
            Arc::clone(&persistence),
            Arc::clone(&scheduler),
            controller_options,
        )
        .with_events(Arc::clone(&events))
        .with_gateways(Arc::new(driver)),
    );

    let mut config_keys = BTreeMap::new();
    config_keys.insert("vamp.namespace".to_owned(), config.namespace.clone().into());
    config_keys.insert(
        "vamp.http-api.interface".to_owned(),
        config.listen.ip().to_string().into(),
    );
    config_keys.insert("vamp.http-api.port".to_owned(), config.listen.port().into());
    config_keys.insert(
        "vamp.persistence.database.type".to_owned(),
        persistence.to_string().into(),
    );
    config_keys.insert(
        "vamp.persistence.key-value-store.type".to_owned(),
        kv.to_string().into(),
    );
    config_keys.insert(
        "vamp.container-driver.type".to_owned(),
        scheduler.to_string().into(),
    );
    config_keys.insert(
        "vamp.gateway-driver.host".to_owned(),
        config.gateway_host.clone().into(),
    );
    let mut options = ApiOptions::default();
    options.merge = options.merge.with_gateway_host(config.gateway_host.clone());
    options.config = config_keys;
    let (shutdown, stopped) = watch::channel(false);
    let api = Arc::new(
        Api::new(
            Arc::clone(&persistence),
            Arc::clone(&events),
            Arc::clone(&scheduler),
            options,
        )
        .with_shutdown(stopped.clone())
        .with_kv(Arc::clone(&kv), config.namespace.clone()),
    );

    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    let mut agent_status = None;

    if !config.no_agent {
        if !haproxy_works(&config.haproxy) {
            return Err(format!(
                "HAProxy ('{}') does not run: install it (Debian: apt-get install haproxy), set --haproxy, or start with --no-agent",
                config.haproxy
            ));
        }
        let key =
            keys::haproxy_configuration(&config.namespace, "1.7").map_err(|e| e.to_string())?;
        let agent_options = AgentOptions::new(key, config.data_dir.join("agent"))
            .with_haproxy_bin(&config.haproxy)
            .with_socket_dir(&socket_dir)
            .with_syslog(SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut agent = GatewayAgent::new(Arc::clone(&kv), agent_options);
        // A store that scrapes its figures (Prometheus) takes no records: the agent's
        // request-time histogram goes to the process's metrics exporter instead.
        if metrics.metrics_capabilities().record {
            agent = agent.with_metrics(Arc::clone(&metrics));
        }
        agent_status = Some(agent.status());
        tasks.push(tokio::spawn({
            let stop = until_stopped(stopped.clone());
            async move {
                if let Err(e) = agent.run(stop).await {
                    tracing::error!(error = %e, "the gateway agent stopped");
                }
            }
        }));
    }
    // Vamp's metrics and health events, and the SLAs and escalations that read them.
    let pulse = vamp_core::ops::pulse::PulseController::new(
        Arc::clone(&persistence),
        Arc::clone(&metrics),
        Arc::clone(&events),
    );
    let sla =
        vamp_core::ops::sla::SlaController::new(Arc::clone(&persistence), Arc::clone(&events));
    tasks.push(tokio::spawn({
        let stop = until_stopped(stopped.clone());
        let period = Duration::from_millis(config.pulse_ms.max(100));
        async move { pulse.run(period, stop).await }
    }));
    tasks.push(tokio::spawn({
        let stop = until_stopped(stopped.clone());
        let period = Duration::from_millis(config.period_ms.max(10));
        async move { sla.run(period, stop).await }
    }));
    // Canary releases decide from the metrics the agent reads from HAProxy's logs.
    let canaries = vamp_core::ops::canary::CanaryController::new(
        Arc::clone(&persistence),
        Arc::clone(&metrics),
    )
    .with_events(Arc::clone(&events));
    tasks.push(tokio::spawn({
        let stop = until_stopped(stopped.clone());
        let period = Duration::from_millis(config.period_ms.max(10));
        async move { canaries.run(period, stop).await }
    }));
    tasks.push(tokio::spawn({
        let controller = Arc::clone(&controller);
        let stop = until_stopped(stopped.clone());
        async move { controller.run(stop).await }
    }));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Workflows run on the scheduler, told where the API is.
    let mut workflow_options = vamp_core::ops::workflow::WorkflowOptions::default();
    workflow_options.vamp_url = format!("http://{addr}");
    workflow_options.namespace = config.namespace.clone();
    // Vamp gave workflows the key-value store's settings (they are the operator's own code;
    // an in-memory store is not reachable from another process).
    if !kv_url.starts_with("memory:") {
        workflow_options
            .environment
            .insert("VAMP_KEY_VALUE_STORE_URL".into(), kv_url.clone());
    }
    let workflows = vamp_core::ops::workflow::WorkflowController::new(
        Arc::clone(&persistence),
        Arc::clone(&scheduler),
        Arc::clone(&events),
        workflow_options,
    );
    tasks.push(tokio::spawn({
        let stop = until_stopped(stopped.clone());
        let period = Duration::from_millis(config.period_ms.max(10));
        async move { workflows.run(period, stop).await }
    }));
    let router = api.router();
    tasks.push(tokio::spawn({
        let stop = until_stopped(stopped.clone());
        let mut deadline = stopped.clone();
        async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(stop);
            // In-flight requests get a grace period (their own time limit), then they are
            // dropped.
            let grace = async move {
                let _ = deadline.wait_for(|s| *s).await;
                tokio::time::sleep(GRACE).await;
            };
            tokio::select! {
                r = serve => if let Err(e) = r {
                    tracing::error!(error = %e, "the API server failed");
                },
                () = grace => tracing::warn!("requests still open after {GRACE:?} were dropped"),
            }
        }
    }));
    tracing::info!(
        %addr,
        persistence = %persistence,
        kv = %kv,
        scheduler = %scheduler,
        metrics = %metrics,
        agent = !config.no_agent,
        "vamp serves"
    );
    Ok(Server {
        addr,
        kv,
        metrics,
        events,
        agent: agent_status,
        shutdown,
        tasks,
    })
}
