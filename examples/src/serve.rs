//! `vamp serve`: a one-machine Vamp composed from the library. The REST API ([`crate::api`]),
//! the reconcile loop, the gateway driver and (optionally) an in-process gateway agent with
//! its own HAProxy, on backends chosen by URL.
//!
//! | flag | environment | default |
//! |---|---|---|
//! | `--listen` (wins over the environment) | `VAMP_HTTP_API_INTERFACE` + `VAMP_HTTP_API_PORT` | `127.0.0.1:8080` |
//! | (none: a secret stays off command lines) | `VAMP_HTTP_API_TOKEN` (one `write` token) | none |
//! | `--api-tokens FILE` | `VAMP_HTTP_API_TOKENS_FILE` (lines `<name> <read\|write> <token>`) | none |
//! | `--insecure-no-auth` | | off: a non-loopback address without a token is refused |
//! | `--tls-cert FILE` `--tls-key FILE` | `VAMP_HTTP_API_TLS_CERT`, `VAMP_HTTP_API_TLS_KEY` | plain HTTP; re-read on SIGHUP |
//! | `--tls-client-ca FILE` | `VAMP_HTTP_API_TLS_CLIENT_CA` | no client certificates |
//! | `--cors-origin ORIGIN` (repeatable) | | no CORS grant |
//! | `--allowed-host NAME` (repeatable) | | loopback names on a loopback listener |
//! | `--policy FILE` | `VAMP_POLICY_FILE` | the default operator policy ([`vamp_core::policy`]) |
//! | `--policy-allow RULE` (repeatable) | | no rule lifted |
//! | `--data-dir` | `VAMP_DATA_DIR` | `.vamp` |
//! | `--persistence` | `VAMP_PERSISTENCE_URL`, or `VAMP_PERSISTENCE_DATABASE_TYPE` (+ `…_SQL_URL`, Vamp's JDBC form too, `…_SQL_USER`, `…_SQL_PASSWORD`; PostgreSQL and MySQL with the features `postgres`, `mysql`) | `sqlite://<data-dir>/vamp.db` (`--in-memory`: `memory://`) |
//! | `--kv` | `VAMP_KEY_VALUE_STORE_URL`, or `VAMP_PERSISTENCE_KEY_VALUE_STORE_TYPE` (+ `…_<TYPE>_URL`) | `memory://` |
//! | `--scheduler` | `VAMP_CONTAINER_DRIVER_URL`, or `VAMP_CONTAINER_DRIVER_TYPE` (`docker`, `kubernetes`, `marathon` with `VAMP_CONTAINER_DRIVER_MARATHON_URL`) | `local://<data-dir>/instances` |
//! | `--namespace` | `VAMP_NAMESPACE` | `default` |
//! | `--gateway-host` | `VAMP_GATEWAY_DRIVER_HOST` | `127.0.0.1` |
//! | `--gateway-bind-address` | `VAMP_GATEWAY_DRIVER_BIND_ADDRESS` | `127.0.0.1` with the in-process agent; `0.0.0.0` with `--no-agent` |
//! | `--agent` / `--no-agent` | `VAMP_GATEWAY_AGENT` (`true`/`false`) | an in-process agent when HAProxy is found |
//! | `--stop-on-exit` | | off: local services and the agent's HAProxy keep running when the server stops, and are adopted by the next start |
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
use crate::auth::{Peer, Security, Tokens};
use crate::supervise::{Loops, supervise};
use crate::tls::{TlsFiles, TlsListener, TlsReloader};
use vamp_core::ops::leader::{ElectionOptions, Elector};

/// A test hook: the loop it is given to panics in its first pass (to show supervision).
#[derive(Debug)]
struct PanicHook(std::sync::atomic::AtomicBool);

/// Runs `pass` over `controller` supervised (see [`supervise`]) as the loop `name`, with the
/// test hook that may make its first pass panic.
#[allow(clippy::too_many_arguments)]
fn spawn_loop<C, P, Fut>(
    name: &'static str,
    loops: &Arc<Loops>,
    period: Duration,
    wake: Option<&Arc<tokio::sync::Notify>>,
    stopped: &watch::Receiver<bool>,
    leader: Option<&Arc<Elector>>,
    hook: bool,
    controller: Arc<C>,
    pass: P,
) -> tokio::task::JoinHandle<()>
where
    C: Send + Sync + 'static,
    P: Fn(Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = crate::supervise::PassResult> + Send + 'static,
{
    let hook = Arc::new(PanicHook::new(hook));
    let leader = leader.cloned();
    tokio::spawn(supervise(
        name,
        Arc::clone(loops),
        period,
        wake.cloned(),
        stopped.clone(),
        move || leader.as_ref().is_none_or(|e| e.is_leader()),
        move || {
            let hook = Arc::clone(&hook);
            let pass = pass(Arc::clone(&controller));
            // Inside the pass's task, where a panic is caught.
            async move {
                hook.fire();
                pass.await
            }
        },
    ))
}

/// Runs `watch` (a pass that lasts until what it watches ends, and says why) as a supervised
/// loop on every replica: its end is reported with the pass, not as a failure (the next pass,
/// a second later, watches again), and the server's stop ends it.
fn spawn_watch<C, W, Fut>(
    name: &'static str,
    loops: &Arc<Loops>,
    stopped: &watch::Receiver<bool>,
    controller: Arc<C>,
    watch: W,
) -> tokio::task::JoinHandle<()>
where
    C: Send + Sync + 'static,
    W: Fn(Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    let stop = stopped.clone();
    spawn_loop(
        name,
        loops,
        Duration::from_secs(1),
        None,
        stopped,
        None,
        false,
        controller,
        move |c| {
            let mut stop = stop.clone();
            let ended = watch(c);
            async move {
                tokio::select! {
                    why = ended => Ok(vec![why]),
                    _ = stop.wait_for(|s| *s) => Ok(Vec::new()),
                }
            }
        },
    )
}

impl PanicHook {
    fn new(armed: bool) -> Self {
        Self(std::sync::atomic::AtomicBool::new(armed))
    }

    fn fire(&self) {
        assert!(
            !self.0.swap(false, std::sync::atomic::Ordering::SeqCst),
            "panic hook: this loop was told to panic once"
        );
    }
}

/// How long in-flight requests may take to finish once the server stops.
const GRACE: Duration = Duration::from_secs(10);

/// What `vamp serve` runs on.
#[derive(Clone, clap::Args)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Where the API listens (default `127.0.0.1:8080`; the flag wins over
    /// `VAMP_HTTP_API_INTERFACE`/`VAMP_HTTP_API_PORT`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The single `write` token (`VAMP_HTTP_API_TOKEN`; no flag, so that it stays off
    /// command lines).
    #[arg(skip)]
    pub api_token: Option<Secret>,
    /// A file of tokens, one a line: `<name> <read|write> <token>`.
    #[arg(long, env = "VAMP_HTTP_API_TOKENS_FILE")]
    pub api_tokens: Option<PathBuf>,
    /// Serve a non-loopback address without authentication (a warning at start and in
    /// `/api/v1/info`).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// The API's TLS certificate chain (PEM); re-read with the key on SIGHUP.
    #[arg(long, env = "VAMP_HTTP_API_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The API's TLS private key (PEM).
    #[arg(long, env = "VAMP_HTTP_API_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to (mutual TLS).
    #[arg(long, env = "VAMP_HTTP_API_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// An origin (`https://console.example.com`) granted CORS and allowed to write.
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
    /// A further name the `Host` header may carry.
    #[arg(long = "allowed-host")]
    pub allowed_hosts: Vec<String>,
    /// The operator policy deployables pass (YAML: `allow`, `dialect-keys`, `images`,
    /// `deployable-types`; see `vamp_core::policy`).
    #[arg(long, env = "VAMP_POLICY_FILE")]
    pub policy: Option<PathBuf>,
    /// A policy rule to lift (`privileged`, `capabilities`, `host-namespaces`, `host-paths`,
    /// `arguments`, `dialects`, `link-local-targets`).
    #[arg(long = "policy-allow")]
    pub policy_allow: Vec<String>,
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
    /// The ports given to gateways without one, `first-last` (Vamp's
    /// `vamp.operation.gateway.port-range`; default `24000-29999`).
    #[arg(long, env = "VAMP_OPERATION_GATEWAY_PORT_RANGE")]
    pub gateway_port_range: Option<String>,
    /// The address gateways bind on in the rendered configuration (`bind <address>:<port>`).
    /// Default `127.0.0.1` with this process's own agent; with `--no-agent`, whose agents run
    /// on other hosts (or pods), `0.0.0.0`, as Vamp rendered it.
    #[arg(long, env = "VAMP_GATEWAY_DRIVER_BIND_ADDRESS")]
    pub gateway_bind_address: Option<std::net::IpAddr>,
    /// Run no gateway agent in this process (run `gateway-agent` beside HAProxy instead).
    #[arg(long)]
    pub no_agent: bool,
    /// Stop the local scheduler's services and the in-process agent's HAProxy when the server
    /// stops. By default they keep running, and the next start on the same data directory
    /// adopts them (same processes, same ports, no request lost).
    #[arg(long)]
    pub stop_on_exit: bool,
    /// The directory of the UNIX sockets that join HAProxy's frontends and backends, as the
    /// rendered configuration names it (default `<data-dir>/haproxy`). Replicas give the same
    /// one, that of their standalone agents (`/usr/local/vamp` in the agent's image).
    #[arg(long, env = "VAMP_GATEWAY_DRIVER_SOCKET_DIR")]
    pub haproxy_socket_dir: Option<PathBuf>,
    /// The HAProxy binary of the in-process agent.
    #[arg(long, env = "VAMP_HAPROXY_BIN", default_value = "haproxy")]
    pub haproxy: String,
    /// The key-value store's URL given to workflow runs as `VAMP_KEY_VALUE_STORE_URL`
    /// (none by default: runs get no key-value store, and never the server's own URL or its
    /// password unless this is it).
    #[arg(
        long,
        env = "VAMP_WORKFLOW_KEY_VALUE_STORE_URL",
        hide_env_values = true
    )]
    pub workflow_kv_url: Option<Secret>,
    /// The most services of all deployments together.
    #[arg(long, default_value_t = 1000)]
    pub max_services: usize,
    /// The most instances of all deployments together.
    #[arg(long, default_value_t = 4000)]
    pub max_instances: u64,
    /// The most event streams open at once (503 beyond).
    #[arg(long, default_value_t = 1000)]
    pub max_event_streams: usize,
    /// The most workflow runs alive at once.
    #[arg(long, default_value_t = 16)]
    pub max_workflow_runs: usize,
    /// How long a workflow run may take before it is killed (an event says so), in seconds.
    #[arg(long, default_value_t = 60)]
    pub workflow_timeout_s: u64,
    /// For tests: the loop of this name (`reconcile`, `canary`, `sla`, `pulse`, `workflows`)
    /// panics in its first pass, to show that it is restarted.
    #[arg(skip)]
    pub panic_once_in: Option<String>,
    /// Time between passes of the reconcile, SLA and canary loops, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub period_ms: u64,
    /// Time between publications of Vamp's metrics and health events, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub pulse_ms: u64,
    /// Where the replicas of this control plane elect their leader (`memory://`, one process;
    /// `etcd://…`, `redis://…`, `zk://…`, `consul://…`, `postgres://…`, `mysql://…`,
    /// `sqlite://…`, `kubernetes://…`). Default: the key-value store when it is not in memory,
    /// else the Kubernetes scheduler's Leases, else the persistence database when it is
    /// PostgreSQL or MySQL/MariaDB, else memory (a single replica).
    #[arg(long, env = "VAMP_LEASE_URL")]
    pub lease: Option<String>,
    /// The leader lease's time to live in milliseconds: a leader that dies is replaced
    /// within it.
    #[arg(long, default_value_t = 15000)]
    pub lease_ttl_ms: u64,
    /// This replica's id in the election (default: the host name and a random suffix).
    #[arg(long, env = "VAMP_REPLICA_ID")]
    pub replica_id: Option<String>,
}

impl ServeConfig {
    /// The defaults, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: None,
            api_token: None,
            api_tokens: None,
            insecure_no_auth: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            policy: None,
            policy_allow: Vec::new(),
            workflow_kv_url: None,
            max_services: 1000,
            max_instances: 4000,
            max_event_streams: 1000,
            max_workflow_runs: 16,
            workflow_timeout_s: 60,
            panic_once_in: None,
            data_dir: data_dir.into(),
            in_memory: false,
            persistence: None,
            kv: None,
            scheduler: None,
            metrics_store: None,
            namespace: "default".into(),
            gateway_host: "127.0.0.1".into(),
            gateway_port_range: None,
            gateway_bind_address: None,
            no_agent: false,
            stop_on_exit: false,
            haproxy: "haproxy".into(),
            haproxy_socket_dir: None,
            period_ms: 1000,
            pulse_ms: 5000,
            lease: None,
            lease_ttl_ms: 15000,
            replica_id: None,
        }
    }

    /// Where the election's leases are: `--lease`, else the key-value store if it has leases
    /// (etcd, Redis, ZooKeeper, Consul), else Kubernetes' Leases when it is the scheduler, else the persistence database if it is a server that replicas share
    /// (PostgreSQL, MySQL/MariaDB), else memory (a single replica).
    fn lease_url(&self) -> String {
        if let Some(url) = &self.lease {
            return url.clone();
        }
        match self.kv.as_deref() {
            Some(kv)
                if ["etcd", "redis", "zk", "zookeeper"]
                    .iter()
                    .any(|s| kv.starts_with(s)) =>
            {
                kv.to_owned()
            }
            _ if self
                .scheduler
                .as_deref()
                .is_some_and(|s| s.starts_with("kubernetes") || s.starts_with("k8s")) =>
            {
                self.scheduler_url()
            }
            _ => {
                let persistence = self.persistence_url();
                if ["postgres", "mysql", "mariadb"]
                    .iter()
                    .any(|s| persistence.starts_with(s))
                {
                    persistence
                } else {
                    "memory://".into()
                }
            }
        }
    }

    /// Fills what flags left open from Vamp's environment variables (`env`).
    #[must_use]
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        if self.api_token.is_none() {
            self.api_token = env(crate::auth::TOKEN_ENV).map(Secret);
        }
        if self.listen.is_none()
            && let (Some(interface), Some(port)) = (
                env("VAMP_HTTP_API_INTERFACE"),
                env("VAMP_HTTP_API_PORT").and_then(|p| p.parse::<u16>().ok()),
            )
            && let Ok(ip) = interface.parse::<std::net::IpAddr>()
        {
            self.listen = Some(SocketAddr::new(ip, port));
        }
        if self.persistence.is_none() {
            self.persistence = env("VAMP_PERSISTENCE_URL").or_else(|| {
                match env("VAMP_PERSISTENCE_DATABASE_TYPE")?.as_str() {
                    "in-memory" => Some("memory://".into()),
                    "sqlite" | "postgres" | "mysql" | "sqlserver" => Some(sql_url(
                        &env("VAMP_PERSISTENCE_DATABASE_SQL_URL")?,
                        env("VAMP_PERSISTENCE_DATABASE_SQL_USER").as_deref(),
                        env("VAMP_PERSISTENCE_DATABASE_SQL_PASSWORD").as_deref(),
                    )),
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

    /// Where the API listens.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The API's security settings from the flags (the token file read), for a listener on
    /// `addr`.
    ///
    /// # Errors
    /// An unreadable or malformed token file, a bad token, or a start that would serve a
    /// non-loopback address without authentication.
    pub fn security(&self, addr: SocketAddr) -> Result<Security, String> {
        let mut s = Security::default();
        if let Some(path) = &self.api_tokens {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("API tokens {}: {e}", path.display()))?;
            s.tokens =
                Tokens::parse(&text).map_err(|e| format!("API tokens {}: {e}", path.display()))?;
            warn_if_readable_by_others(path);
        }
        if let Some(Secret(token)) = &self.api_token {
            s.tokens
                .add(
                    crate::auth::TOKEN_ENV,
                    crate::auth::Role::Write,
                    token.trim(),
                )
                .map_err(|e| format!("{}: {e}", crate::auth::TOKEN_ENV))?;
        }
        s.insecure_no_auth = self.insecure_no_auth;
        s.client_certificates = self.tls_client_ca.is_some();
        s.tls = self.tls_cert.is_some();
        s.loopback = addr.ip().is_loopback();
        for o in &self.cors_origins {
            let o = o.trim_end_matches('/');
            if o == "*" || o == "null" || !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(format!(
                    "--cors-origin '{o}': an origin is scheme://host[:port] ('*' and 'null' are never granted)"
                ));
            }
            s.cors_origins.push(o.to_ascii_lowercase());
        }
        s.allowed_hosts.clone_from(&self.allowed_hosts);
        s.check_start(addr)?;
        Ok(s)
    }

    /// The operator policy from `--policy` and `--policy-allow`.
    ///
    /// # Errors
    /// An unreadable or malformed policy file, or an unknown rule.
    pub fn operator_policy(&self) -> Result<vamp_core::policy::Policy, String> {
        let mut p = match &self.policy {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("policy {}: {e}", path.display()))?;
                vamp_core::policy::Policy::parse(&text)
                    .map_err(|e| format!("policy {}: {e}", path.display()))?
            }
            None => vamp_core::policy::Policy::default(),
        };
        for rule in &self.policy_allow {
            p.allow
                .lift(rule)
                .map_err(|e| format!("--policy-allow: {e}"))?;
        }
        Ok(p)
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
        let url = self
            .scheduler
            .clone()
            .unwrap_or_else(|| format!("local://{}", self.data_dir.join("instances").display()));
        // Local processes outlive the server unless it stops them on exit.
        if url.starts_with("local:") && !url.contains("keep=") && !self.stop_on_exit {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}keep=true")
        } else {
            url
        }
    }
}

/// Vamp's SQL URL (`vamp.persistence.database.sql.url`, a JDBC URL such as
/// `jdbc:postgresql://host:5432/vamp`, `jdbc:mysql://host:3306/vamp` or
/// `jdbc:sqlserver://host:1433;databaseName=vamp`) with its user and password as this
/// project's URL (`postgres://user:password@host:5432/vamp`, …); a URL of this project's form
/// passes unchanged (the user and password are added when it has none).
pub fn sql_url(url: &str, user: Option<&str>, password: Option<&str>) -> String {
    let rest = url.trim().strip_prefix("jdbc:").unwrap_or(url.trim());
    let Some((scheme, rest)) = rest.split_once("://") else {
        return url.to_owned();
    };
    let scheme = match scheme {
        "postgresql" | "postgres" => "postgres",
        "mysql" | "mariadb" => "mysql",
        "sqlserver" | "mssql" => "sqlserver",
        other => other,
    };
    // SQL Server's properties (`;databaseName=vamp;…`): the database as the path.
    let rest = match rest.split_once(';') {
        Some((host, props)) if scheme == "sqlserver" => {
            let db = props.split(';').find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.eq_ignore_ascii_case("databaseName").then_some(v)
            });
            match db {
                Some(db) => format!("{host}/{db}"),
                None => host.to_owned(),
            }
        }
        _ => rest.to_owned(),
    };
    let has_userinfo = rest
        .split('/')
        .next()
        .is_some_and(|authority| authority.contains('@'));
    match user.filter(|u| !u.is_empty()) {
        Some(user) if !has_userinfo => {
            let password = password
                .filter(|p| !p.is_empty())
                .map(|p| format!(":{}", vamp_backends::url::encode_component(p)))
                .unwrap_or_default();
            format!(
                "{scheme}://{}{password}@{rest}",
                vamp_backends::url::encode_component(user)
            )
        }
        _ => format!("{scheme}://{rest}"),
    }
}

impl std::fmt::Debug for ServeConfig {
    /// The settings, with every backend URL's password and secret parameters redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = |u: &Option<String>| u.as_deref().map(vamp_backends::url::redact);
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("in_memory", &self.in_memory)
            .field("persistence", &url(&self.persistence))
            .field("kv", &url(&self.kv))
            .field("scheduler", &url(&self.scheduler))
            .field("metrics_store", &url(&self.metrics_store))
            .field("lease", &url(&self.lease))
            .field("replica_id", &self.replica_id)
            .field("namespace", &self.namespace)
            .field("api_token", &self.api_token)
            .field("api_tokens", &self.api_tokens)
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("tls_cert", &self.tls_cert)
            .field("tls_client_ca", &self.tls_client_ca)
            .field("cors_origins", &self.cors_origins)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("policy", &self.policy)
            .field("gateway_bind_address", &self.gateway_bind_address)
            .field("no_agent", &self.no_agent)
            .field("stop_on_exit", &self.stop_on_exit)
            .field("workflow_kv_url", &self.workflow_kv_url)
            .finish_non_exhaustive()
    }
}

/// A secret (a token) whose `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            "the API token file is readable by others than its owner (chmod 600 it)"
        );
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
    guard: Arc<crate::auth::Guard>,
}

impl Server {
    /// How many console sessions are live.
    pub fn sessions(&self) -> usize {
        self.guard.sessions().len()
    }

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

/// Reads a gateway port range, `first-last` (1 to 65535, first at most last).
fn parse_port_range(range: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "--gateway-port-range '{range}': expected first-last, two ports from 1 to 65535 with first at most last (e.g. 24000-29999)"
        )
    };
    let (first, last) = range.trim().split_once('-').ok_or_else(bad)?;
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
    match (port(first), port(last)) {
        (Some(f), Some(l)) if f <= l => Ok((f, l)),
        _ => Err(bad()),
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
    let listen = config.listen_addr();
    let security = config.security(listen)?;
    let policy = config.operator_policy()?;
    for w in security.warnings() {
        tracing::warn!("{w}");
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let mut files = TlsFiles::new(cert, key);
            if let Some(ca) = &config.tls_client_ca {
                files = files.with_client_ca(ca);
            }
            Some(TlsReloader::new(files)?)
        }
        (None, None) if config.tls_client_ca.is_none() => None,
        _ => {
            return Err(
                "TLS needs both --tls-cert and --tls-key (and them for --tls-client-ca)".into(),
            );
        }
    };
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
    // Nothing the policy refuses is deployed, whatever stored it.
    let scheduler: Arc<DynContainerScheduler> =
        Arc::new(vamp_core::layers::Policed::new(scheduler, policy.clone()));
    // This control plane acts only on what it created: its identity, kept in persistence
    // (replicas on one store share it), marks every service it deploys.
    let identity = vamp_core::ops::identity::establish(&*persistence, &new_identity())
        .await
        .map_err(|e| format!("control-plane identity: {e}"))?;
    let owned = Arc::new(vamp_core::layers::Owned::new(scheduler, identity.clone()));
    // Replicas that share the persistence elect one leader, which alone runs the loops; its
    // writes are fenced (a leader that lost the lease cannot write after another took over).
    let lease_url = config.lease_url();
    let sql = [
        "postgres",
        "mysql",
        "mariadb",
        "sqlite",
        "mssql",
        "sqlserver",
    ]
    .iter()
    .any(|s| lease_url.starts_with(s));
    let on_scheduler = ["kubernetes", "k8s"]
        .iter()
        .any(|s| lease_url.starts_with(s));
    let leases = if sql {
        PersistenceBackendConfig::from_url(&lease_url)
            .map_err(|e| format!("leases: {e}"))?
            .build_leases()
            .await
    } else if on_scheduler {
        SchedulerBackendConfig::from_url(&lease_url)
            .map_err(|e| format!("leases: {e}"))?
            .build_leases()
            .await
    } else {
        KvBackendConfig::from_url(&lease_url)
            .map_err(|e| format!("leases: {e}"))?
            .build_leases()
            .await
    }
    .map_err(|e| format!("leases: {e}"))?;
    let replica = match &config.replica_id {
        Some(id) if vamp_core::lease::is_valid_name(id) => id.clone(),
        Some(id) => {
            return Err(format!(
                "--replica-id '{id}': 1 to 128 ASCII letters, digits, '.', '_' or '-'"
            ));
        }
        None => new_replica_id(),
    };
    let elector = Arc::new(Elector::new(
        leases,
        Arc::clone(&persistence),
        ElectionOptions::new(format!("vamp-{identity}"), replica.clone()).with_ttl(
            Duration::from_millis(config.lease_ttl_ms.clamp(1000, 600_000)),
        ),
    ));
    // What is stored, decoded and indexed once for the API and the loops (kept current by
    // their writes, which go through it, and by the store's change feed).
    let catalog = Arc::new(vamp_core::ops::catalog::Catalog::new(Arc::clone(
        &persistence,
    )));
    // The loops' persistence: fenced by the leader's token.
    let loop_persistence: Arc<DynPersistenceStore> = Arc::new(vamp_core::layers::Fenced::new(
        Arc::clone(&catalog) as Arc<DynPersistenceStore>,
        elector.fence(),
    ));
    let scheduler: Arc<DynContainerScheduler> = Arc::clone(&owned) as Arc<DynContainerScheduler>;
    let stores =
        MetricsBackendConfig::from_url(config.metrics_store.as_deref().unwrap_or("memory://"))
            .map_err(|e| format!("metrics store: {e}"))?
            .build()
            .await
            .map_err(|e| format!("metrics store: {e}"))?;
    let metrics: Arc<DynMetricsStore> = stores.requests;
    let local_events: Arc<DynEventStore> = stores.events;
    // Replicas share a key-value store (not an in-memory one): events published on one reach
    // the event streams and event workflows of all, through it.
    let shared_events = if kv_url.starts_with("memory") {
        None
    } else {
        let prefix =
            vamp_core::kv::KeyPath::parse(&format!("/vamp/{}/events-relay", config.namespace))
                .map_err(|e| format!("namespace: {e}"))?;
        let own_store = config
            .metrics_store
            .as_deref()
            .is_none_or(|m| m.starts_with("memory"));
        Some(Arc::new(vamp_core::layers::SharedEvents::new(
            Arc::clone(&local_events),
            Arc::clone(&kv),
            prefix,
            replica.clone(),
            own_store,
        )))
    };
    let events: Arc<DynEventStore> = match &shared_events {
        Some(shared) => Arc::clone(shared) as Arc<DynEventStore>,
        None => local_events,
    };

    let socket_dir = config
        .haproxy_socket_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("haproxy"));
    // Only an agent of this process uses the directory; without one it is a path on the
    // standalone agents' machines (`/usr/local/vamp` in their image), which this process may
    // not be allowed to create (vamp's image runs as a user of its own).
    if !config.no_agent {
        std::fs::create_dir_all(&socket_dir)
            .map_err(|e| format!("HAProxy socket directory {}: {e}", socket_dir.display()))?;
    }
    let bind_address = config.gateway_bind_address.unwrap_or(if config.no_agent {
        std::net::IpAddr::from([0, 0, 0, 0])
    } else {
        std::net::IpAddr::from([127, 0, 0, 1])
    });
    let render = RenderOptions::default()
        .with_socket_dir(socket_dir.display().to_string())
        .with_bind_address(bind_address.to_string());
    // The driver's writes are the leader's: fenced in the key-value store too (every store
    // here checks a write against the fence key atomically; one that cannot writes unfenced).
    let fenced_kv = if kv.capabilities().guard {
        Some(Arc::new(vamp_core::layers::FencedKv::new(
            Arc::clone(&kv),
            elector.fence(),
            vamp_core::kv::keys::fence(&config.namespace).map_err(|e| format!("namespace: {e}"))?,
            replica.clone(),
        )))
    } else {
        None
    };
    let driver_kv: Arc<DynKeyValueStore> = match &fenced_kv {
        Some(f) => Arc::clone(f) as Arc<DynKeyValueStore>,
        None => Arc::clone(&kv),
    };
    let driver = GatewayDriver::new(
        driver_kv,
        config.namespace.clone(),
        vec![Marshaller::new("1.7").with_options(render)],
    )
    .with_events(Arc::clone(&events));
    // The platform's own gateway side beside the driver: on Kubernetes, a Service per gateway.
    let platform_gateways = SchedulerBackendConfig::from_url(&scheduler_url)
        .map_err(|e| format!("scheduler: {e}"))?
        .build_gateway_services(&identity.to_string())
        .await
        .map_err(|e| format!("gateway services: {e}"))?;
    let gateway_side: Arc<dyn vamp_core::ops::controller::GatewaySink> = match platform_gateways {
        Some(services) => Arc::new(vamp_core::ops::controller::GatewaySinks(vec![
            Arc::new(driver),
            services,
        ])),
        None => Arc::new(driver),
    };
    let mut controller_options = ControllerOptions::default();
    controller_options.period = Duration::from_millis(config.period_ms.max(10));
    let controller = Arc::new(
        Controller::new(
            Arc::clone(&loop_persistence),
            Arc::clone(&scheduler),
            controller_options,
        )
        .with_events(Arc::clone(&events))
        .with_gateways(gateway_side)
        .with_catalog(Arc::clone(&catalog)),
    );

    let mut config_keys = BTreeMap::new();
    config_keys.insert("vamp.namespace".to_owned(), config.namespace.clone().into());
    config_keys.insert(
        "vamp.http-api.interface".to_owned(),
        listen.ip().to_string().into(),
    );
    config_keys.insert("vamp.http-api.port".to_owned(), listen.port().into());
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
    if let Some(range) = &config.gateway_port_range {
        let (first, last) = parse_port_range(range)?;
        options.merge = options.merge.with_port_range(first, last);
    }
    options.config = config_keys;
    options.security = security;
    options.policy = policy;
    options.limits.max_services = config.max_services;
    options.limits.max_instances = config.max_instances;
    options.limits.max_event_streams = config.max_event_streams;
    let (shutdown, stopped) = watch::channel(false);
    // Writes through the API bring the reconcile loop's next pass forward.
    let wake = Arc::new(tokio::sync::Notify::new());
    let reconcile_wake = Arc::clone(&wake);
    let loops = Arc::new(Loops::default());
    let api = Arc::new(
        Api::new(
            Arc::clone(&persistence),
            Arc::clone(&events),
            Arc::clone(&scheduler),
            options,
        )
        .with_shutdown(stopped.clone())
        .with_kv(Arc::clone(&kv), config.namespace.clone())
        .with_loops(Arc::clone(&loops))
        .with_owner(owned)
        .with_election(Arc::clone(&elector))
        .with_catalog(Arc::clone(&catalog))
        .with_wake(Arc::clone(&wake)),
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
            .with_syslog(SocketAddr::from(([127, 0, 0, 1], 0)))
            .with_keep_haproxy(!config.stop_on_exit);
        let mut agent = GatewayAgent::new(Arc::clone(&kv), agent_options);
        // A store that scrapes its figures (Prometheus) takes no records: the agent's
        // request-time histogram goes to the process's metrics exporter instead.
        if metrics.metrics_capabilities().record {
            agent = agent.with_metrics(Arc::clone(&metrics));
        }
        agent_status = Some(agent.status());
        loops.running("gateway-agent");
        tasks.push(tokio::spawn({
            let stop = until_stopped(stopped.clone());
            let loops = Arc::clone(&loops);
            async move {
                // The agent supervises its HAProxy itself; an agent that ends (or panics)
                // is reported, and the server shows itself degraded.
                let error = match tokio::spawn(agent.run(stop)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(format!("panicked: {e}")),
                };
                if let Some(e) = &error {
                    tracing::error!(error = %e, "the gateway agent stopped");
                }
                loops.ended("gateway-agent", error);
            }
        }));
    }
    // Vamp's metrics and health events, and the SLAs and escalations that read them.
    // Each loop's passes run supervised: a panic is a restart after a backoff, errors are
    // logged and shown by /api/v1/info.
    let hook = |name: &'static str| config.panic_once_in.as_deref() == Some(name);
    // The election: every replica takes part; the loops below run on the leader alone. A
    // first round now, so that a single replica leads from its first pass.
    if let Err(e) = elector.tick().await {
        tracing::warn!(error = %e, "the first round of the leader election failed");
    }
    // A leader claims the key-value fence as it takes over (every round: a no-op once done).
    let claim = move |fenced: Option<Arc<vamp_core::layers::FencedKv<Arc<DynKeyValueStore>>>>,
                      leader: bool| async move {
        match fenced {
            Some(f) if leader => f.claim().await.map(drop).map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    };
    if let Err(e) = claim(fenced_kv.clone(), elector.is_leader()).await {
        tracing::warn!(error = %e, "the key-value fence could not be claimed");
    }
    // Then a round every quarter of the lease's time to live.
    tasks.push(spawn_loop(
        "election",
        &loops,
        elector.options().renew_every(),
        None,
        &stopped,
        None,
        false,
        Arc::new((Arc::clone(&elector), fenced_kv.clone())),
        move |pair| async move {
            let (e, fenced) = (&pair.0, pair.1.clone());
            let before = e.is_leader();
            let r = e
                .tick()
                .await
                .map(|_| Vec::new())
                .map_err(|e| e.to_string());
            if e.is_leader() != before {
                tracing::info!(leader = e.is_leader(), "leadership changed");
            }
            let claimed = claim(fenced, e.is_leader()).await;
            r.and_then(|v| claimed.map(|()| v))
        },
    ));
    if let Some(shared) = &shared_events {
        // Other replicas' events, for as long as this one runs.
        tasks.push(spawn_watch(
            "event-relay",
            &loops,
            &stopped,
            Arc::clone(shared),
            |shared| async move {
                shared.relay().await;
                "the event relay's watch ended; watching again".to_owned()
            },
        ));
    }
    // The API's index of what is stored (on every replica), kept current from the store's
    // change feed: a pass loads it and follows the feed until the feed fails (the next pass
    // loads again) or the server stops.
    tasks.push(spawn_watch(
        "catalog",
        &loops,
        &stopped,
        Arc::clone(api.catalog()),
        |catalog| async move {
            match catalog.follow().await {
                Ok(()) => "the store's change feed ended; loading again".to_owned(),
                Err(e) => format!("the store's change feed: {e}; loading again"),
            }
        },
    ));
    {
        // On stop, the lease is given up: another replica takes over at once.
        let elector = Arc::clone(&elector);
        let mut stop = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            if let Err(e) = elector.resign().await {
                tracing::warn!(error = %e, "the leader lease was not released");
            }
        }));
    }
    let pulse = vamp_core::ops::pulse::PulseController::new(
        Arc::clone(&loop_persistence),
        Arc::clone(&metrics),
        Arc::clone(&events),
    )
    .with_catalog(Arc::clone(&catalog));
    let sla =
        vamp_core::ops::sla::SlaController::new(Arc::clone(&loop_persistence), Arc::clone(&events))
            .with_catalog(Arc::clone(&catalog));
    let period = Duration::from_millis(config.period_ms.max(10));
    tasks.push(spawn_loop(
        "pulse",
        &loops,
        Duration::from_millis(config.pulse_ms.max(100)),
        None,
        &stopped,
        Some(&elector),
        hook("pulse"),
        Arc::new(pulse),
        |c| async move {
            c.tick()
                .await
                .map(|_| Vec::new())
                .map_err(|e| e.to_string())
        },
    ));
    tasks.push(spawn_loop(
        "sla",
        &loops,
        period,
        None,
        &stopped,
        Some(&elector),
        hook("sla"),
        Arc::new(sla),
        |c| async move { c.tick().await.map(|r| r.errors).map_err(|e| e.to_string()) },
    ));
    // Canary releases decide from the metrics the agent reads from HAProxy's logs.
    let canaries = Arc::new(
        vamp_core::ops::canary::CanaryController::new(
            Arc::clone(&loop_persistence),
            Arc::clone(&metrics),
        )
        .with_events(Arc::clone(&events)),
    );
    tasks.push(spawn_loop(
        "canary",
        &loops,
        period,
        None,
        &stopped,
        Some(&elector),
        hook("canary"),
        canaries,
        |c| async move {
            c.tick()
                .await
                .map(|outcomes| {
                    outcomes
                        .into_iter()
                        .filter_map(|o| Some(format!("canary policy '{}': {}", o.policy, o.error?)))
                        .collect()
                })
                .map_err(|e| e.to_string())
        },
    ));
    tasks.push(spawn_loop(
        "reconcile",
        &loops,
        period,
        Some(&wake),
        &stopped,
        Some(&elector),
        hook("reconcile"),
        Arc::clone(&controller),
        move |c| {
            let wake = Arc::clone(&reconcile_wake);
            async move {
                c.tick()
                    .await
                    .map(|r| {
                        // Services acted on or on their way: the next pass soon (after the
                        // wake gap), to record what they became.
                        if !r.plan.actions.is_empty() || r.in_progress > 0 {
                            wake.notify_one();
                        }
                        let mut errors = r.errors;
                        errors.extend(
                            r.failed
                                .into_iter()
                                .map(|(id, e)| format!("service {id}: {e}")),
                        );
                        errors.extend(r.persistence_error);
                        errors
                    })
                    .map_err(|e| e.to_string())
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Workflows run on the scheduler, told where the API is.
    let mut workflow_options = vamp_core::ops::workflow::WorkflowOptions::default();
    workflow_options.vamp_url =
        format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    workflow_options.namespace = config.namespace.clone();
    workflow_options.max_runs = config.max_workflow_runs;
    workflow_options.execution_timeout_s = config.workflow_timeout_s.max(1);
    // Vamp gave workflows the key-value store's settings; here only what the operator chose
    // to give them (a password only if that URL has one).
    if let Some(url) = &config.workflow_kv_url {
        workflow_options
            .environment
            .insert("VAMP_KEY_VALUE_STORE_URL".into(), url.0.clone());
    }
    let workflows = vamp_core::ops::workflow::WorkflowController::new(
        Arc::clone(&loop_persistence),
        Arc::clone(&scheduler),
        Arc::clone(&events),
        workflow_options,
    );
    tasks.push(spawn_loop(
        "workflows",
        &loops,
        period,
        None,
        &stopped,
        Some(&elector),
        hook("workflows"),
        Arc::new(workflows),
        |c| async move {
            c.tick()
                .await
                .map(|outcomes| {
                    outcomes
                        .into_iter()
                        .filter_map(|o| Some(format!("workflow '{}': {}", o.workflow, o.error?)))
                        .collect()
                })
                .map_err(|e| e.to_string())
        },
    ));

    let guard = Arc::clone(api.guard());
    let app = api.router().into_make_service_with_connect_info::<Peer>();
    let stop = until_stopped(stopped.clone());
    let mut deadline = stopped.clone();
    // In-flight requests get a grace period (their own time limit), then they are dropped.
    let grace = async move {
        let _ = deadline.wait_for(|s| *s).await;
        tokio::time::sleep(GRACE).await;
    };
    let serve: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> =
        match &tls {
            None => Box::pin(
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .into_future(),
            ),
            Some(tls) => {
                let listener =
                    TlsListener::new(listener, tls.clone()).map_err(|e| e.to_string())?;
                Box::pin(
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .into_future(),
                )
            }
        };
    tasks.push(tokio::spawn(async move {
        tokio::select! {
            r = serve => if let Err(e) = r {
                tracing::error!(error = %e, "the API server failed");
            },
            () = grace => tracing::warn!("requests still open after {GRACE:?} were dropped"),
        }
    }));
    // The certificate and key are read again on SIGHUP; open connections keep theirs.
    if let Some(tls) = tls {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("SIGHUP: {e}"))?;
        let mut stop = stopped.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    r = hup.recv() => if r.is_none() { return },
                }
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificate and key read again"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files not read again; the old ones stay")
                    }
                }
            }
        }));
    }
    tracing::info!(
        %addr,
        persistence = %persistence,
        kv = %kv,
        scheduler = %scheduler,
        identity = %identity,
        replica = %replica,
        leases = %vamp_backends::url::redact(&lease_url),
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
        guard,
    })
}

/// A new replica id: the host name (when it is a valid name) and 4 random bytes in hex.
fn new_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && h.len() <= 100 && vamp_core::lease::is_valid_name(h))
        .unwrap_or_else(|| "vamp".into());
    format!("{host}-{}", crate::auth::random_hex(4))
}

/// A new control-plane identity: 16 random bytes in hex.
fn new_identity() -> String {
    crate::auth::random_hex(16)
}

/// `vamp serve`'s command line.
#[derive(clap::Parser)]
#[command(
    name = "vamp serve",
    about = "A one-machine Vamp: REST API, reconcile loop, gateway agent"
)]
struct ServeArgs {
    #[command(flatten)]
    config: ServeConfig,
}

/// The `vamp serve` program: parses `args` (those after `serve`) and the environment, serves
/// until SIGTERM or Ctrl-C, then stops. Exit codes: 0 stopped, 1 could not start, 2 usage.
pub fn main(args: &[String]) -> std::process::ExitCode {
    use clap::Parser;
    use std::process::ExitCode;
    let parsed = match ServeArgs::try_parse_from(
        std::iter::once("vamp serve".to_owned()).chain(args.iter().cloned()),
    ) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // The usual output, and the records of `GET /api/v1/logs` (a process that set its own
    // subscriber keeps it).
    crate::logs::install();
    let config = parsed
        .config
        .with_env(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vamp serve: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let server = match start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("vamp serve: {e}");
                return ExitCode::from(1);
            }
        };
        println!("vamp serves on http://{}/api/v1", server.addr);
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("vamp serve: {e}");
                    return ExitCode::from(1);
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        server.stop().await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_port_ranges_are_read_and_bad_ones_named() {
        assert_eq!(parse_port_range("10000-29999"), Ok((10000, 29999)));
        assert_eq!(parse_port_range(" 40000 - 45000 "), Ok((40000, 45000)));
        assert_eq!(parse_port_range("8080-8080"), Ok((8080, 8080)));
        for bad in [
            "",
            "24000",
            "0-10",
            "30000-20000",
            "1-70000",
            "a-b",
            "-5-10",
        ] {
            let e = parse_port_range(bad).unwrap_err();
            assert!(
                e.contains("--gateway-port-range") && e.contains(bad),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn vamp_s_jdbc_urls_and_credentials_become_persistence_urls() {
        for (url, user, password, want) in [
            (
                "jdbc:postgresql://db:5432/vamp",
                Some("vamp"),
                Some("p@ss:w/rd"),
                "postgres://vamp:p%40ss%3Aw%2Frd@db:5432/vamp",
            ),
            (
                "jdbc:mysql://db:3306/vamp",
                Some("root"),
                None,
                "mysql://root@db:3306/vamp",
            ),
            (
                "jdbc:sqlserver://db:1433;databaseName=vamp;encrypt=true",
                Some("sa"),
                Some("x"),
                "sqlserver://sa:x@db:1433/vamp",
            ),
            (
                "postgres://u:p@db/vamp",
                Some("other"),
                Some("y"),
                "postgres://u:p@db/vamp",
            ),
            (
                "sqlite:///var/lib/vamp/vamp.db",
                None,
                None,
                "sqlite:///var/lib/vamp/vamp.db",
            ),
        ] {
            assert_eq!(sql_url(url, user, password), want, "{url}");
        }
        let env = |k: &str| match k {
            "VAMP_PERSISTENCE_DATABASE_TYPE" => Some("postgres".to_owned()),
            "VAMP_PERSISTENCE_DATABASE_SQL_URL" => {
                Some("jdbc:postgresql://db:5432/vamp".to_owned())
            }
            "VAMP_PERSISTENCE_DATABASE_SQL_USER" => Some("vamp".to_owned()),
            "VAMP_PERSISTENCE_DATABASE_SQL_PASSWORD" => Some("hunter2-secret".to_owned()),
            _ => None,
        };
        let config = ServeConfig::new(".vamp").with_env(env);
        assert_eq!(
            config.persistence.as_deref(),
            Some("postgres://vamp:hunter2-secret@db:5432/vamp")
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2-secret"), "{debug}");
        assert!(debug.contains("db:5432"), "{debug}");
    }
}
