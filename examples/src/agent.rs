//! The `gateway-agent` program: the Vamp gateway agent (VGA), watching one key of a
//! key-value store and keeping a local HAProxy running its configuration (see
//! `vamp_haproxy::agent`). `examples/gateway_agent.rs` runs [`main`].
//!
//! ```text
//! gateway-agent [--kv URL] [--key PATH] [--haproxy BIN] [--work-dir DIR] [--config FILE]
//!               [--master-socket PATH] [--stats-socket PATH] [--base-config FILE]
//!               [--socket-dir DIR] [--health ADDR] [--metrics ADDR] [--debounce-ms N]
//!               [--drain-ms N] [--metrics-store URL] [--bind-address IP]
//!               [--rendered-socket-dir DIR]
//! gateway-agent check-health [--health ADDR]
//! ```
//!
//! `check-health` asks a running agent's `/health` (a container's health check): exit 0 when it
//! answers 200, 1 otherwise. `SIGTERM` and `SIGINT` stop the agent; HAProxy is then drained
//! (`--drain-ms`: its listeners close and connections in flight get that long to finish).
//!
//! | flag | environment | default |
//! |---|---|---|
//! | `--kv` | `VAMP_KEY_VALUE_STORE_URL`, or VGA-style `VAMP_KEY_VALUE_STORE_TYPE` + `VAMP_KEY_VALUE_STORE_CONNECTION` | `memory://` |
//! | `--key` | `VAMP_KEY_VALUE_STORE_PATH` | `/vamp/default/gateways/haproxy/1.7/configuration` |
//! | `--haproxy` | `VAMP_HAPROXY_BIN` | `haproxy` |
//! | `--work-dir` (private: created 0700; one owned by someone else or open to others is refused) | `VAMP_GATEWAY_AGENT_DIR` | `/run/vamp-gateway-agent` as root, else `$XDG_RUNTIME_DIR/vamp-gateway-agent` or `$TMPDIR/vamp-gateway-agent` |
//! | `--socket-dir` (the generator's `socket_dir`: the only place values may bind or reach unix sockets) | `VAMP_HAPROXY_SOCKET_DIR` | `/usr/local/vamp` |
//! | `--config` (the file HAProxy runs) | `VAMP_HAPROXY_CONFIG` | `<work dir>/haproxy.cfg` |
//! | `--master-socket` | `VAMP_HAPROXY_MASTER_SOCKET` | `<work dir>/master.sock` |
//! | `--stats-socket` (runtime API) | `VAMP_HAPROXY_STATS_SOCKET` | `<work dir>/stats.sock` |
//! | `--base-config` (a file with `global`/`defaults` settings) | `VAMP_HAPROXY_BASE_CONFIG` | `vamp_haproxy::BASE_CONFIG` |
//! | `--health` (`/health`, `/status`) | `VAMP_GATEWAY_AGENT_HEALTH` | `127.0.0.1:1988` |
//! | `--debounce-ms` | `VAMP_GATEWAY_AGENT_DEBOUNCE_MS` | `100` |
//! | `--metrics` (Prometheus text format on `/metrics`) | `VAMP_GATEWAY_AGENT_METRICS` | off |
//! | `--drain-ms` (on stop, HAProxy's soft stop before it is stopped) | `VAMP_GATEWAY_AGENT_DRAIN_MS` | `0` |
//! | `--bind-address` (binds the gateways on this address, whatever was rendered: one of several agents on a host) | `VAMP_GATEWAY_AGENT_BIND_ADDRESS` | as rendered |
//! | `--rendered-socket-dir` (the control plane's socket directory, when `--socket-dir` is another: its sockets are moved there) | `VAMP_GATEWAY_AGENT_RENDERED_SOCKET_DIR` | the same as `--socket-dir` |
//! | `--metrics-store` (where HAProxy's request records go, e.g. `elasticsearch://host:9200?logs=vamp-vga-default`) | `VAMP_GATEWAY_AGENT_METRICS_STORE`, or Vamp's `VAMP_ELASTICSEARCH_URL` (`http://host:9200`, index `vamp-vga-<VAMP_NAMESPACE>`, as its Filebeat wrote) | off |
//!
//! KV URLs: `etcd://host:2379/prefix`, `consul://host:8500/prefix`, `zk://host:2181/prefix`,
//! `redis://host:6379/0`, each needing this crate's feature of the same name (`--features
//! etcd,consul,zookeeper,redis`); an Elasticsearch metrics store needs `--features
//! elasticsearch`. With a metrics store the agent receives HAProxy's logs on a loopback UDP
//! port and writes one record per request in Filebeat's document shape, so no Filebeat is
//! needed; while the store is away records wait (up to
//! `vamp_haproxy::agent::MAX_PENDING_RECORDS`) and are sent again, and `/status` counts them
//! (`logs`: received, stored, pending, dropped, refused). Unlike Vamp's VGA the key path is used as given (no etcd
//! `/value` suffix is added). Logs go to stderr (`tracing`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vamp_backends::kv::KvBackendConfig;
use vamp_backends::metrics::MetricsBackendConfig;
use vamp_core::kv::KeyPath;
use vamp_haproxy::agent::{AgentOptions, GatewayAgent};

const USAGE: &str = "usage: gateway-agent [--kv URL] [--key PATH] [--haproxy BIN] [--work-dir DIR] [--config FILE] [--master-socket PATH] [--stats-socket PATH] [--base-config FILE] [--socket-dir DIR] [--health ADDR] [--metrics ADDR] [--debounce-ms N] [--drain-ms N] [--metrics-store URL] [--bind-address IP] [--rendered-socket-dir DIR]\n       gateway-agent check-health [--health ADDR]";

#[derive(Debug, PartialEq, Eq)]
struct Settings {
    kv: String,
    key: String,
    haproxy: String,
    work_dir: String,
    socket_dir: String,
    config: Option<String>,
    master_socket: Option<String>,
    stats_socket: Option<String>,
    base_config: Option<String>,
    health: String,
    metrics: Option<String>,
    debounce_ms: String,
    drain_ms: String,
    metrics_store: Option<String>,
    bind_address: Option<String>,
    rendered_socket_dir: Option<String>,
}

/// `/run/vamp-gateway-agent` where the agent may write `/run` (as root), else the user's
/// runtime directory, else the temporary directory. The agent refuses a directory that someone
/// else owns or that is open to others, so a predictable path cannot be planted.
fn default_work_dir(env: &impl Fn(&str) -> Option<String>) -> String {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        return "/run/vamp-gateway-agent".into();
    }
    env("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("vamp-gateway-agent")
        .display()
        .to_string()
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The settings from the environment (`env`), then the flags (`args`, without the program).
fn settings(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Settings, String> {
    let vga_url = match (
        env("VAMP_KEY_VALUE_STORE_TYPE"),
        env("VAMP_KEY_VALUE_STORE_CONNECTION"),
    ) {
        (Some(t), Some(c)) => Some(format!("{t}://{}", c.trim_start_matches("http://"))),
        _ => None,
    };
    let mut s = Settings {
        kv: env("VAMP_KEY_VALUE_STORE_URL")
            .or(vga_url)
            .unwrap_or_else(|| "memory://".into()),
        key: env("VAMP_KEY_VALUE_STORE_PATH")
            .unwrap_or_else(|| "/vamp/default/gateways/haproxy/1.7/configuration".into()),
        haproxy: env("VAMP_HAPROXY_BIN").unwrap_or_else(|| "haproxy".into()),
        work_dir: env("VAMP_GATEWAY_AGENT_DIR").unwrap_or_else(|| default_work_dir(&env)),
        socket_dir: env("VAMP_HAPROXY_SOCKET_DIR").unwrap_or_else(|| "/usr/local/vamp".into()),
        config: env("VAMP_HAPROXY_CONFIG"),
        master_socket: env("VAMP_HAPROXY_MASTER_SOCKET"),
        stats_socket: env("VAMP_HAPROXY_STATS_SOCKET"),
        base_config: env("VAMP_HAPROXY_BASE_CONFIG"),
        health: env("VAMP_GATEWAY_AGENT_HEALTH").unwrap_or_else(|| "127.0.0.1:1988".into()),
        metrics: env("VAMP_GATEWAY_AGENT_METRICS"),
        debounce_ms: env("VAMP_GATEWAY_AGENT_DEBOUNCE_MS").unwrap_or_else(|| "100".into()),
        drain_ms: env("VAMP_GATEWAY_AGENT_DRAIN_MS").unwrap_or_else(|| "0".into()),
        metrics_store: env("VAMP_GATEWAY_AGENT_METRICS_STORE").or_else(|| {
            // Vamp's agent shipped its logs with Filebeat to this address, into
            // `vamp-vga-<namespace>-<date>`.
            let url = env("VAMP_ELASTICSEARCH_URL")?;
            let logs = format!(
                "vamp-vga-{}",
                env("VAMP_NAMESPACE").unwrap_or_else(|| "default".into())
            );
            Some(format!(
                "{}?logs={logs}",
                vamp_backends::metrics::elasticsearch_url(&url)
            ))
        }),
        bind_address: env("VAMP_GATEWAY_AGENT_BIND_ADDRESS"),
        rendered_socket_dir: env("VAMP_GATEWAY_AGENT_RENDERED_SOCKET_DIR"),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if matches!(arg.as_str(), "-h" | "--help") {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--kv" => s.kv = value,
            "--key" => s.key = value,
            "--haproxy" => s.haproxy = value,
            "--work-dir" => s.work_dir = value,
            "--socket-dir" => s.socket_dir = value,
            "--config" => s.config = Some(value),
            "--master-socket" => s.master_socket = Some(value),
            "--stats-socket" => s.stats_socket = Some(value),
            "--base-config" => s.base_config = Some(value),
            "--health" => s.health = value,
            "--metrics" => s.metrics = Some(value),
            "--debounce-ms" => s.debounce_ms = value,
            "--drain-ms" => s.drain_ms = value,
            "--metrics-store" => s.metrics_store = Some(value),
            "--bind-address" => s.bind_address = Some(value),
            "--rendered-socket-dir" => s.rendered_socket_dir = Some(value),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(s)
}

/// `check-health`: 0 when the agent at `addr` answers `/health` with 200.
fn check_health(addr: &str) -> ExitCode {
    match crate::health::probe(addr, "/health") {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("gateway-agent: {why}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM (a container or service manager stopping the agent) or SIGINT.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The `gateway-agent` program: `args` are those after the program's name. Exit codes: 0
/// stopped, 1 could not run, 2 usage.
pub fn main(args: Vec<String>) -> ExitCode {
    // `try_init`: a process that set its own subscriber keeps it.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a container's or a journal's log stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(e) => {
            eprintln!("gateway-agent: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(mut args: Vec<String>) -> ExitCode {
    let health_check = args.first().is_some_and(|a| a == "check-health");
    if health_check {
        args.remove(0);
    }
    let s = match settings(args, process_env) {
        Ok(s) => s,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("gateway-agent: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if health_check {
        return check_health(&s.health);
    }
    if let Some(addr) = &s.metrics {
        let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
            eprintln!("gateway-agent: --metrics takes host:port");
            return ExitCode::from(2);
        };
        let builder = match metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    vamp_core::metrics::REQUEST_DURATION_HISTOGRAM.into(),
                ),
                &vamp_core::metrics::REQUEST_DURATION_BUCKETS,
            ) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("gateway-agent: metrics: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = builder.install() {
            eprintln!("gateway-agent: cannot serve metrics on {addr}: {e}");
            return ExitCode::from(1);
        }
    }
    let key = match KeyPath::parse(&s.key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("gateway-agent: key: {e}");
            return ExitCode::from(2);
        }
    };
    let (Ok(health), Ok(debounce), Ok(drain)) = (
        s.health.parse(),
        s.debounce_ms.parse::<u64>(),
        s.drain_ms.parse::<u64>(),
    ) else {
        eprintln!("gateway-agent: --health takes host:port, --debounce-ms and --drain-ms a number");
        return ExitCode::from(2);
    };
    let mut options = AgentOptions::new(key, PathBuf::from(&s.work_dir))
        .with_haproxy_bin(&s.haproxy)
        .with_socket_dir(&s.socket_dir)
        .with_health(health)
        .with_debounce(Duration::from_millis(debounce))
        .with_drain(Duration::from_millis(drain));
    if let Some(config) = &s.config {
        options = options.with_config_path(config);
    }
    if let Some(address) = &s.bind_address {
        match address.parse::<std::net::IpAddr>() {
            Ok(a) => options = options.with_bind_address(a),
            Err(_) => {
                eprintln!("gateway-agent: --bind-address takes an IP address, not {address:?}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(dir) = &s.rendered_socket_dir {
        options = options.with_rendered_socket_dir(dir);
    }
    options.master_socket_path = s.master_socket.as_ref().map(PathBuf::from);
    options.stats_socket_path = s.stats_socket.as_ref().map(PathBuf::from);
    if let Some(file) = &s.base_config {
        match std::fs::read_to_string(file) {
            Ok(base) => options = options.with_base_config(base),
            Err(e) => {
                eprintln!("gateway-agent: base config {file}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let kv = match KvBackendConfig::from_url(&s.kv) {
        Ok(c) => match c.build().await {
            Ok(kv) => kv,
            Err(e) => {
                eprintln!(
                    "gateway-agent: key-value store {}: {e}",
                    vamp_backends::url::redact(&s.kv)
                );
                return ExitCode::from(1);
            }
        },
        Err(e) => {
            eprintln!("gateway-agent: {e}");
            return ExitCode::from(2);
        }
    };
    // HAProxy's logs feed the request-time histogram of the exporter and the metrics store.
    if s.metrics.is_some() || s.metrics_store.is_some() {
        options = options.with_syslog(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    let mut records = None;
    if let Some(url) = &s.metrics_store {
        let redacted = vamp_backends::url::redact(url);
        let built = match MetricsBackendConfig::from_url(url) {
            Ok(c) => c.build().await,
            Err(e) => {
                eprintln!("gateway-agent: metrics store {redacted}: {e}");
                return ExitCode::from(2);
            }
        };
        match built {
            Ok(stores) => records = Some(stores.requests),
            Err(e) => {
                eprintln!("gateway-agent: metrics store {redacted}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    tracing::info!(kv = %kv, key = %s.key, work_dir = %s.work_dir, health = %s.health, metrics_store = records.as_ref().map(ToString::to_string), "gateway agent starting");
    let mut agent = GatewayAgent::new(kv, options);
    if let Some(records) = records {
        agent = agent.with_metrics(records);
    }
    let shutdown = async {
        stop_signal().await;
        tracing::info!(drain_ms = drain, "stopping");
    };
    match agent.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-agent: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn defaults_are_the_embedded_store_and_vamps_key() {
        let s = settings(args(&[]), env_of(&[])).unwrap();
        assert_eq!(s.kv, "memory://");
        assert_eq!(s.key, "/vamp/default/gateways/haproxy/1.7/configuration");
        assert_eq!(
            (s.haproxy.as_str(), s.health.as_str()),
            ("haproxy", "127.0.0.1:1988")
        );
        assert_eq!(s.metrics, None);
    }

    #[test]
    fn vamps_elasticsearch_variable_names_the_metrics_store() {
        let s = settings(
            args(&[]),
            env_of(&[
                ("VAMP_ELASTICSEARCH_URL", "http://es.local:9200/"),
                ("VAMP_NAMESPACE", "prod"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.metrics_store.as_deref(),
            Some("elasticsearch://es.local:9200?logs=vamp-vga-prod")
        );
        let s = settings(
            args(&[]),
            env_of(&[("VAMP_ELASTICSEARCH_URL", "https://u:p@es:443")]),
        )
        .unwrap();
        assert_eq!(
            s.metrics_store.as_deref(),
            Some("elasticsearch+https://u:p@es:443?logs=vamp-vga-default")
        );
        let s = settings(
            args(&["--metrics-store", "memory://"]),
            env_of(&[("VAMP_ELASTICSEARCH_URL", "http://es:9200")]),
        )
        .unwrap();
        assert_eq!(s.metrics_store.as_deref(), Some("memory://"));
        assert_eq!(
            settings(args(&[]), env_of(&[])).unwrap().metrics_store,
            None
        );
    }

    #[test]
    fn vga_variables_name_the_store() {
        let s = settings(
            args(&[]),
            env_of(&[
                ("VAMP_KEY_VALUE_STORE_TYPE", "etcd"),
                ("VAMP_KEY_VALUE_STORE_CONNECTION", "http://etcd:2379"),
                (
                    "VAMP_KEY_VALUE_STORE_PATH",
                    "/vamp/prod/gateways/haproxy/1.7/configuration",
                ),
                ("VAMP_GATEWAY_AGENT_METRICS", "0.0.0.0:9101"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kv, "etcd://etcd:2379");
        assert_eq!(s.key, "/vamp/prod/gateways/haproxy/1.7/configuration");
        assert_eq!(s.metrics.as_deref(), Some("0.0.0.0:9101"));
        // A URL variable wins over the VGA pair; flags win over both.
        let s = settings(
            args(&["--kv", "redis://r:6379/0", "--stats-socket", "/run/s.sock"]),
            env_of(&[
                ("VAMP_KEY_VALUE_STORE_URL", "zk://z:2181/vamp"),
                ("VAMP_KEY_VALUE_STORE_TYPE", "etcd"),
                ("VAMP_KEY_VALUE_STORE_CONNECTION", "etcd:2379"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kv, "redis://r:6379/0");
        assert_eq!(s.stats_socket.as_deref(), Some("/run/s.sock"));
        let s = settings(
            args(&[]),
            env_of(&[("VAMP_KEY_VALUE_STORE_URL", "zk://z:2181/vamp")]),
        )
        .unwrap();
        assert_eq!(s.kv, "zk://z:2181/vamp");
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert_eq!(
            settings(args(&["--kv"]), env_of(&[])).unwrap_err(),
            "--kv needs a value"
        );
        assert_eq!(
            settings(args(&["--nope", "x"]), env_of(&[])).unwrap_err(),
            "unknown flag --nope"
        );
        assert_eq!(settings(args(&["--help"]), env_of(&[])).unwrap_err(), "");
    }
}
