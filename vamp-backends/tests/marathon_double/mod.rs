//! A **double** of Marathon's REST API, in process, for tests: no Marathon (nor Mesos) can run
//! on this project's machines. It is not Marathon; it follows Marathon's API reference
//! (`docs/docs/rest-api/public/api/v2` of mesosphere/marathon: `app.json`, `app_tasks.json`,
//! `deployments.json`, `info.json`, and the RAML's error answers) for what the
//! `scheduler-marathon` client uses:
//!
//! * `GET /v2/info`; `GET /v2/apps` (`?embed=apps.tasks`, `?label=key==value`);
//!   `GET /v2/apps/<id>` (`?embed=app.tasks`) answering `{"app": …}` or `404 {"message": "App
//!   '<id>' does not exist"}`; `POST /v2/apps` (`201` with the app and its `deployments`, `409
//!   {"message": "An app with id [<id>] already exists."}`, `422 {"message": "Object is not
//!   valid", "details": [{"path", "errors"}]}` for a bad id, negative instances or a
//!   `portIndex` without a port); `PUT /v2/apps/<id>` (fields replaced; `200
//!   {"deploymentId", "version"}`; `409` "locked" while a deployment holds the app, unless
//!   `?force=true`); `DELETE /v2/apps/<id>`; `DELETE /v2/apps/<id>/tasks/<task>` (the task is
//!   killed and, as Marathon does without `?scale=true`, replaced by a new one);
//!   `GET /v2/deployments`.
//! * Tasks are simulated but reachable: each gets a loopback port per port mapping or port
//!   definition where a small HTTP server answers `200` with `<app id> <task id>`, stopped when
//!   the task goes. A changed app (anything but `instances`) replaces every task. Health
//!   check results are `alive` unless the check's path contains `fail` (the double runs no
//!   checks).
//! * Stored apps get the defaults Marathon adds (`version`, `disk`, `backoffSeconds`,
//!   `container.volumes`, `docker.forcePullImage`), so a client comparing what it sends with
//!   what it reads meets them.
//! * With a token set, requests without `Authorization: token=<token>` get `401`.
//! * Every request is recorded (method, path with query, body) for request-shape tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::http_double;
use tokio::task::JoinHandle;

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: Value,
}

struct Task {
    json: Value,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for Task {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

struct App {
    json: Value,
    tasks: Vec<Task>,
}

#[derive(Default)]
struct State {
    apps: BTreeMap<String, App>,
    locked: BTreeMap<String, String>,
    requests: Vec<Recorded>,
}

struct Shared {
    state: Mutex<State>,
    token: Option<String>,
    counter: AtomicU64,
}

/// The double; stops serving when dropped.
pub struct MarathonDouble {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for MarathonDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl MarathonDouble {
    /// A double without authentication.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A double requiring the DC/OS token `token`.
    pub async fn start_with(token: Option<&str>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            token: token.map(str::to_owned),
            counter: AtomicU64::new(0),
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

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Holds app `id` in a deployment: writes without `?force=true` get `409` until
    /// one with it replaces the deployment.
    pub fn lock(&self, id: &str) {
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed);
        self.shared
            .state
            .lock()
            .unwrap()
            .locked
            .insert(id.to_owned(), format!("deployment-{n}"));
    }

    /// The stored app, as `GET /v2/apps/<id>` would answer it (without tasks).
    pub fn app(&self, id: &str) -> Option<Value> {
        self.shared
            .state
            .lock()
            .unwrap()
            .apps
            .get(id)
            .map(|a| a.json.clone())
    }
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn valid_id(id: &str) -> bool {
    let segment = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    id.starts_with('/') && id[1..].split('/').all(segment)
}

/// A port count and the app's health-check paths.
fn ports_of(app: &Value) -> usize {
    app.pointer("/container/docker/portMappings")
        .and_then(Value::as_array)
        .map(Vec::len)
        .or_else(|| {
            app.get("portDefinitions")
                .and_then(Value::as_array)
                .map(Vec::len)
        })
        .unwrap_or(0)
}

impl Shared {
    async fn launch(&self, app: &Value) -> Task {
        let id = app["id"].as_str().unwrap_or("/").to_owned();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let task_id = format!(
            "{}.instance-{n:08x}",
            id.trim_start_matches('/').replace('/', "_")
        );
        let mut ports = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..ports_of(app) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            servers.push(tokio::spawn(http_double::text_server(
                listener,
                format!("{id} {task_id}"),
            )));
        }
        let checks = app
            .get("healthChecks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let results: Vec<Value> = checks
            .iter()
            .map(|c| {
                let path = c.get("path").and_then(Value::as_str).unwrap_or("/");
                json!({"alive": !path.contains("fail"), "consecutiveFailures": 0, "taskId": task_id})
            })
            .collect();
        let mut json = json!({
            "appId": id,
            "host": "127.0.0.1",
            "id": task_id,
            "ports": ports,
            "slaveId": "agent0",
            "stagedAt": "2026-11-29T12:00:00.000Z",
            "startedAt": "2026-11-29T12:00:01.000Z",
            "state": "TASK_RUNNING",
            "version": app["version"],
        });
        if !results.is_empty() {
            json["healthCheckResults"] = json!(results);
        }
        Task { json, servers }
    }

    fn with_defaults(&self, mut app: Value) -> Value {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        app["version"] = json!(format!("2026-11-29T12:00:{:02}.{n:03}Z", n % 60));
        for (k, v) in [
            ("disk", json!(0)),
            ("backoffSeconds", json!(1)),
            ("backoffFactor", json!(1.15)),
            ("cmd", Value::Null),
            ("args", Value::Null),
            ("constraints", json!([])),
        ] {
            if app.get(k).is_none() {
                app[k] = v;
            }
        }
        if app.get("container").is_some_and(Value::is_object) {
            if app["container"].get("volumes").is_none() {
                app["container"]["volumes"] = json!([]);
            }
            if app["container"].get("docker").is_some_and(Value::is_object)
                && app["container"]["docker"].get("forcePullImage").is_none()
            {
                app["container"]["docker"]["forcePullImage"] = json!(false);
            }
        }
        app
    }

    fn validate(app: &Value) -> Result<(), Value> {
        let mut details = Vec::new();
        let id = app.get("id").and_then(Value::as_str).unwrap_or("");
        if !valid_id(id) {
            details.push(json!({"path": "/id", "errors": ["must fully match regular expression '^(([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])\\.)*([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])|(\\.|\\.\\.)$'"]}));
        }
        if app
            .get("instances")
            .and_then(Value::as_i64)
            .is_some_and(|n| n < 0)
        {
            details.push(json!({"path": "/instances", "errors": ["got -1, expected 0 or more"]}));
        }
        let ports = ports_of(app);
        for (i, c) in app
            .get("healthChecks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if c.get("portIndex")
                .and_then(Value::as_u64)
                .is_some_and(|p| p as usize >= ports)
            {
                details.push(json!({"path": format!("/healthChecks({i})"), "errors": ["Health check port indices must address an element of the ports array or container port mappings."]}));
            }
        }
        if details.is_empty() {
            Ok(())
        } else {
            Err(json!({"message": "Object is not valid", "details": details}))
        }
    }

    fn render(app: &App, tasks: bool) -> Value {
        let mut v = app.json.clone();
        let running = app.tasks.len();
        v["tasksRunning"] = json!(running);
        v["tasksStaged"] = json!(0);
        v["tasksHealthy"] = json!(running);
        v["tasksUnhealthy"] = json!(0);
        if tasks {
            v["tasks"] = json!(app.tasks.iter().map(|t| t.json.clone()).collect::<Vec<_>>());
        }
        v
    }

    async fn set_instances(&self, id: &str, want: usize) {
        let (have, app) = {
            let state = self.state.lock().unwrap();
            let Some(app) = state.apps.get(id) else {
                return;
            };
            (app.tasks.len(), app.json.clone())
        };
        let mut new = Vec::new();
        for _ in have..want {
            new.push(self.launch(&app).await);
        }
        let mut state = self.state.lock().unwrap();
        if let Some(app) = state.apps.get_mut(id) {
            app.tasks.truncate(want);
            app.tasks.extend(new);
        }
    }
}

async fn handle(s: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let authorized = s.token.as_ref().is_none_or(|t| {
        req.headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            == Some(format!("token={t}").as_str())
    });
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
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Unauthorized: missing or invalid token"}),
        );
    }
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.replace("%3D", "=").replace("%2F", "/"))
        })
        .collect();
    let param = |k: &'static str| {
        params
            .iter()
            .filter(move |(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let force = param("force").any(|v| v == "true");
    let embed_tasks = param("embed").any(|v| v.ends_with(".tasks"));
    let n = s.counter.fetch_add(1, Ordering::Relaxed);
    let deployment =
        json!({"deploymentId": format!("deployment-{n}"), "version": "2026-11-29T12:00:00.000Z"});

    match (&method, path.as_str()) {
        (&Method::GET, "/v2/info") => answer(
            StatusCode::OK,
            json!({"name": "marathon", "version": "1.11.24 (double)", "frameworkId": "double-0000", "leader": "127.0.0.1", "http_config": {"http_port": 8080}}),
        ),
        (&Method::GET, "/v2/deployments") => {
            let state = s.state.lock().unwrap();
            let list: Vec<Value> = state
                .locked
                .iter()
                .map(|(app, id)| json!({"id": id, "version": "2026-11-29T12:00:00.000Z", "affectedApps": [app], "affectedPods": [], "steps": [], "currentActions": [], "currentStep": 1, "totalSteps": 1}))
                .collect();
            answer(StatusCode::OK, json!(list))
        }
        (&Method::GET, "/v2/apps") => {
            let state = s.state.lock().unwrap();
            let selectors: Vec<(String, String)> = param("label")
                .filter_map(|l| {
                    l.split_once("==")
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect();
            let apps: Vec<Value> = state
                .apps
                .values()
                .filter(|a| {
                    selectors
                        .iter()
                        .all(|(k, v)| a.json["labels"].get(k).and_then(Value::as_str) == Some(v))
                })
                .map(|a| Shared::render(a, embed_tasks))
                .collect();
            answer(StatusCode::OK, json!({"apps": apps}))
        }
        (&Method::POST, "/v2/apps") => {
            if let Err(e) = Shared::validate(&body) {
                return answer(StatusCode::UNPROCESSABLE_ENTITY, e);
            }
            let id = body["id"].as_str().unwrap_or("").to_owned();
            if s.state.lock().unwrap().apps.contains_key(&id) {
                return answer(
                    StatusCode::CONFLICT,
                    json!({"message": format!("An app with id [{id}] already exists.")}),
                );
            }
            let app = s.with_defaults(body);
            s.state.lock().unwrap().apps.insert(
                id.clone(),
                App {
                    json: app.clone(),
                    tasks: Vec::new(),
                },
            );
            let want = app["instances"].as_u64().unwrap_or(1) as usize;
            s.set_instances(&id, want).await;
            let mut out = app;
            out["deployments"] = json!([{"id": deployment["deploymentId"]}]);
            answer(StatusCode::CREATED, out)
        }
        (m, p) if p.starts_with("/v2/apps/") => {
            let rest = &p["/v2/apps".len()..];
            // /v2/apps/<id>/tasks/<task>
            if let Some((app_id, task)) = rest.split_once("/tasks/") {
                if m != Method::DELETE {
                    return answer(StatusCode::METHOD_NOT_ALLOWED, json!({"message": "method"}));
                }
                let app = {
                    let mut state = s.state.lock().unwrap();
                    let Some(app) = state.apps.get_mut(app_id) else {
                        return answer(
                            StatusCode::NOT_FOUND,
                            json!({"message": format!("App '{app_id}' does not exist")}),
                        );
                    };
                    let Some(i) = app.tasks.iter().position(|t| t.json["id"] == task) else {
                        return answer(
                            StatusCode::NOT_FOUND,
                            json!({"message": format!("Task '{task}' does not exist")}),
                        );
                    };
                    let killed = app.tasks.remove(i);
                    (app.json.clone(), killed.json.clone())
                };
                // Marathon replaces a killed task (no ?scale=true).
                let replacement = s.launch(&app.0).await;
                if let Some(a) = s.state.lock().unwrap().apps.get_mut(app_id) {
                    a.tasks.push(replacement);
                }
                let mut killed = app.1;
                killed["state"] = json!("TASK_KILLED");
                return answer(StatusCode::OK, json!({"task": killed}));
            }
            let id = rest.to_owned();
            let exists = s.state.lock().unwrap().apps.contains_key(&id);
            if !exists {
                return answer(
                    StatusCode::NOT_FOUND,
                    json!({"message": format!("App '{id}' does not exist")}),
                );
            }
            let locked = s.state.lock().unwrap().locked.get(&id).cloned();
            match *m {
                Method::GET => {
                    let state = s.state.lock().unwrap();
                    answer(
                        StatusCode::OK,
                        json!({"app": Shared::render(&state.apps[&id], embed_tasks)}),
                    )
                }
                Method::PUT | Method::DELETE if locked.is_some() && !force => answer(
                    StatusCode::CONFLICT,
                    json!({"message": "App is locked by one or more deployments. Override with the option '?force=true'. View details at '/v2/deployments/<DEPLOYMENT_ID>'.", "deployments": [{"id": locked}]}),
                ),
                Method::PUT => {
                    let (merged, restart) = {
                        let state = s.state.lock().unwrap();
                        let current = state.apps[&id].json.clone();
                        let mut merged = current.clone();
                        if let Value::Object(fields) = &body {
                            for (k, v) in fields {
                                merged[k] = v.clone();
                            }
                        }
                        let restart = body
                            .as_object()
                            .is_some_and(|f| f.keys().any(|k| k != "instances"));
                        (merged, restart)
                    };
                    if let Err(e) = Shared::validate(&merged) {
                        return answer(StatusCode::UNPROCESSABLE_ENTITY, e);
                    }
                    let merged = if restart {
                        s.with_defaults(merged)
                    } else {
                        merged
                    };
                    let want = merged["instances"].as_u64().unwrap_or(1) as usize;
                    {
                        let mut state = s.state.lock().unwrap();
                        let app = state.apps.get_mut(&id).unwrap();
                        app.json = merged;
                        if restart {
                            // A new version: every task is replaced.
                            app.tasks.clear();
                        }
                    }
                    s.set_instances(&id, want).await;
                    s.state.lock().unwrap().locked.remove(&id);
                    answer(StatusCode::OK, deployment)
                }
                Method::DELETE => {
                    let mut state = s.state.lock().unwrap();
                    state.apps.remove(&id);
                    state.locked.remove(&id);
                    answer(StatusCode::OK, deployment)
                }
                _ => answer(StatusCode::METHOD_NOT_ALLOWED, json!({"message": "method"})),
            }
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            json!({"message": format!("no route {path}")}),
        ),
    }
}
