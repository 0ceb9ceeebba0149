//! A gateway of two routes (`a`, `b`, 50/50) to two HTTP backends, run by an in-process gateway
//! agent with a real HAProxy: what the metrics stores' end-to-end tests send traffic through.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::kv::{DynKeyValueStore, KeyPath, KeyValueStoreExt};
use vamp_core::memory::InMemoryKv;
use vamp_core::metrics::DynMetricsStore;
use vamp_core::model::{ArtifactKind, Route, RouteTarget};
use vamp_haproxy::agent::{AgentOptions, AgentStatus, GatewayAgent};
use vamp_haproxy::{RenderOptions, render};

/// An HTTP backend answering its name: `/fail…` with 500, `/sleep/<ms>…` after waiting that
/// long, anything else at once with 200. One request per connection.
pub async fn backend(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("/");
                if let Some(ms) = path
                    .split('/')
                    .skip_while(|s| *s != "sleep")
                    .nth(1)
                    .and_then(|ms| ms.parse::<u64>().ok())
                {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                let status = if path.starts_with("/fail") {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// The gateway, its agent and HAProxy.
pub struct Fixture {
    /// The gateway's port.
    pub port: u16,
    /// Each route's frontend (the lookup name HAProxy's records and counters carry).
    pub frontends: HashMap<String, String>,
    /// The gateway's own frontend (each request is logged there and at its route's).
    pub gateway_frontend: String,
    /// The agent's status.
    pub status: watch::Receiver<AgentStatus>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// Starts the agent with `base_config` (HAProxy's `global`/`defaults` and anything else
    /// the operator adds) and, if given, a metrics store for its records; waits until HAProxy
    /// serves the gateway.
    pub async fn start(base_config: Option<String>, store: Option<Arc<DynMetricsStore>>) -> Self {
        let (a, b) = (backend("a").await, backend("b").await);
        let port = crate::support::free_port();
        let dir = tempfile::tempdir().unwrap();
        let AnyArtifact::Gateway(mut g) = read_str(
            &format!(
                "name: e2e\nport: {port}\nroutes:\n  a: {{weight: 50%}}\n  b: {{weight: 50%}}\n"
            ),
            Some(ArtifactKind::Gateway),
        )
        .unwrap()
        .remove(0) else {
            unreachable!()
        };
        for ((route, backend_port), name) in g.routes.iter_mut().zip([a, b]).zip(["a", "b"]) {
            let Route::Default(d) = route else {
                unreachable!()
            };
            d.targets = vec![RouteTarget::Internal {
                name: name.into(),
                host: None,
                port: i64::from(backend_port),
            }];
        }
        let render_opts = RenderOptions::default()
            .with_socket_dir(dir.path().to_str().unwrap())
            .with_bind_address("127.0.0.1");
        let config = render(&[g], &render_opts).unwrap();
        let frontends: HashMap<String, String> = [("a", a), ("b", b)]
            .into_iter()
            .map(|(name, port)| {
                let route = config.route_frontend_of_server(&format!("127.0.0.1:{port}"));
                (name.to_owned(), route.unwrap().to_owned())
            })
            .collect();
        let gateway_frontend = config.gateway_frontends().next().unwrap().to_owned();
        let kv: Arc<DynKeyValueStore> = Arc::new(InMemoryKv::new());
        let key = KeyPath::parse("/vamp/e2e/gateways/haproxy/1.7/configuration").unwrap();
        let version = kv.put(&key, config.render().into()).await.unwrap();
        let mut options = AgentOptions::new(key.clone(), dir.path().join("agent"))
            .with_socket_dir(dir.path())
            .with_syslog("127.0.0.1:0".parse().unwrap());
        if let Some(base) = base_config {
            options = options.with_base_config(base);
        }
        let mut agent = GatewayAgent::new(Arc::clone(&kv), options);
        if let Some(store) = store {
            agent = agent.with_metrics(store);
        }
        let status = agent.status();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let fixture = Self {
            port,
            frontends,
            gateway_frontend,
            status,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        };
        fixture
            .until("the agent applies the gateway", |s| {
                s.ready && s.applied_version == Some(version.0)
            })
            .await;
        fixture
    }

    /// Waits (at most 60 s) until the agent's status satisfies `f`.
    pub async fn until(&self, what: &str, f: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let mut rx = self.status.clone();
        match tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| f(s))).await {
            Ok(Ok(s)) => s.clone(),
            _ => panic!("{what}: {:?}", *self.status.borrow()),
        }
    }

    /// Stops the agent (and HAProxy).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// What the client sent and saw, by route: per request, its number and the status it got.
pub type Seen = HashMap<String, Vec<(usize, u16)>>;

/// Requests through the gateway, one connection each (so HAProxy's total time holds no idle
/// time of a kept-alive connection), to `path(i)`; what each route answered, by its body.
pub async fn traffic(port: u16, n: usize, path: impl Fn(usize) -> String) -> Seen {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut seen: Seen = HashMap::new();
    for i in 0..n {
        let r = client
            .get(format!("http://127.0.0.1:{port}{}", path(i)))
            .send()
            .await
            .expect("the gateway answers");
        let status = r.status().as_u16();
        let route = r.text().await.unwrap();
        seen.entry(route).or_default().push((i, status));
    }
    seen
}
