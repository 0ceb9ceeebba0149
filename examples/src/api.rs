//! Vamp's REST API (`model.md` §7) over the library: a thin layer that reads requests with
//! the DSL, plans with [`vamp_core::ops`], stores through the [`PersistenceStore`](vamp_core::persistence::PersistenceStore) and
//! publishes Vamp's events. The reconcile loop ([`vamp_core::ops::controller::Controller`])
//! does the rest: it deploys what is stored and pushes the gateways.
//!
//! Conventions (§7.1): `Accept` is required on the API routes (JSON, YAML or `*/*`; YAML out
//! iff it starts with `application/x-yaml`); `POST`/`PUT` need `Content-Type`
//! `application/json` or `application/x-yaml` and are read by the YAML reader either way;
//! lists are paged (`page`, `per_page`, at most 30) with `X-Total-Count` and `Link`; every
//! response says `Cache-Control: no-store`; CORS is granted only to configured origins, and
//! every route sits behind the security layer ([`crate::auth`]); a Vamp notification is a 400 with
//! `{"message": …}`, a missing artifact a 404 with an empty body. What differs from Vamp is in
//! COMPATIBILITY.md.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use tokio::sync::Mutex;
use vamp_core::dsl::{AnyArtifact, load_documents, read_node, to_node};
use vamp_core::kv::{DynKeyValueStore, KeyValueStoreExt, PutMode, Version, Versioned, keys};
use vamp_core::layers::Owned;

/// The scheduler as a control plane that records owners sees it.
pub type OwnedScheduler = Owned<Arc<DynContainerScheduler>>;
use vamp_core::metrics::{DynEventStore, EventStore};
use vamp_core::model::*;
use vamp_core::node::Node;
use vamp_core::ops::artifacts::{Stored, check_gateway_delete, plan_put};
use vamp_core::ops::catalog::{Catalog, footprint};
use vamp_core::ops::deploy::{MergeOptions, export_blueprint, merge, slice};
use vamp_core::persistence::{
    ArtifactWrite, DynPersistenceStore, ListOptions, PersistenceExt, WriteOp,
};
use vamp_core::scheduler::DynContainerScheduler;

use crate::auth::{self, Guard, Security};

/// The kinds served by the generic routes (`GET|POST /{kind}`, `…/{kind}/{name}`).
const CRUD_KINDS: [ArtifactKind; 12] = [
    ArtifactKind::Breed,
    ArtifactKind::Blueprint,
    ArtifactKind::Sla,
    ArtifactKind::Scale,
    ArtifactKind::Escalation,
    ArtifactKind::Route,
    ArtifactKind::Condition,
    ArtifactKind::Rewrite,
    ArtifactKind::Workflow,
    ArtifactKind::Gateway,
    ArtifactKind::Template,
    ArtifactKind::CanaryPolicy,
];

/// Page size when none is asked for, and the most a page holds (Vamp: 30).
pub const PER_PAGE: usize = 30;

/// How the server behaves.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ApiOptions {
    /// How blueprints are merged (gateway host, port range, default scale); `now` is set per
    /// request.
    pub merge: MergeOptions,
    /// The largest request body (default 1 MiB).
    pub body_limit: usize,
    /// The longest a request may take (default 10 s, Vamp's `response-timeout`).
    pub request_timeout: Duration,
    /// Interval of keep-alive comments on event streams (default 15 s, as Vamp).
    pub keep_alive: Duration,
    /// Configuration shown by `GET /config` (Vamp's keys).
    pub config: BTreeMap<String, serde_json::Value>,
    /// Who may call, and from where (tokens, client certificates, CORS, hosts).
    pub security: Security,
    /// What deployables may ask of the machines (checked before anything is stored).
    pub policy: vamp_core::policy::Policy,
    /// Quotas and limits of the whole server.
    pub limits: Limits,
}

/// Quotas and limits of the whole server, with defaults a laptop survives. A request over one
/// is refused before anything is stored: a 400 naming the limit (a 503 for event streams).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Services of all deployments together (default 1,000; `--max-services`).
    pub max_services: usize,
    /// Instances of all deployments together (default 4,000; `--max-instances`).
    pub max_instances: u64,
    /// Event streams open at once (default 1,000; `--max-event-streams`).
    pub max_event_streams: usize,
    /// Tags an event query or stream may name (default 32).
    pub max_tags: usize,
    /// The longest tag (default 256 bytes).
    pub max_tag_len: usize,
    /// The longest artifact name (default 256 bytes).
    pub max_name_len: usize,
    /// HAProxy template overrides stored (default 64).
    pub max_templates: usize,
    /// The largest template override (default 256 KiB).
    pub max_template_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_services: 1000,
            max_instances: 4000,
            max_event_streams: 1000,
            max_tags: 32,
            max_tag_len: 256,
            max_name_len: 256,
            max_templates: 64,
            max_template_bytes: 256 << 10,
        }
    }
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            merge: MergeOptions::new(0),
            body_limit: 1 << 20,
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            config: BTreeMap::new(),
            security: Security::default(),
            policy: vamp_core::policy::Policy::default(),
            limits: Limits::default(),
        }
    }
}

/// What the API serves from.
pub struct Api {
    persistence: Arc<DynPersistenceStore>,
    events: Arc<DynEventStore>,
    scheduler: Arc<DynContainerScheduler>,
    options: ApiOptions,
    /// Writes are planned from what is stored and then stored: one at a time.
    writes: Mutex<()>,
    /// Set when the server shuts down: open event streams end.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The key-value store and namespace of the gateway side (`/vga/…`, `/config`).
    kv: Option<(Arc<DynKeyValueStore>, String)>,
    started: std::time::Instant,
    /// The security layer's state.
    guard: Arc<Guard>,
    /// Event streams open now.
    streams: Arc<std::sync::atomic::AtomicUsize>,
    /// The server's supervised loops, shown by `/info`.
    loops: Option<Arc<crate::supervise::Loops>>,
    /// The scheduler as its control plane's owner sees it (`/scheduler/unowned`).
    owned: Option<Arc<OwnedScheduler>>,
    /// The stored deployments, gateways and what merges reference, decoded and indexed: the
    /// persistence above writes through it (see [`Api::catalog`]).
    catalog: Arc<Catalog>,
    /// This replica's part in the leader election (`/info`).
    elector: Option<Arc<vamp_core::ops::leader::Elector>>,
    /// Told after every write: the reconcile loop's next pass comes sooner.
    wake: Option<Arc<tokio::sync::Notify>>,
    /// The unowned services being adopted or removed now.
    unowned_actions: Arc<parking_lot::Mutex<BTreeSet<vamp_core::scheduler::ServiceId>>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("persistence", &self.persistence.to_string())
            .field("events", &self.events.to_string())
            .field("scheduler", &self.scheduler.to_string())
            .finish_non_exhaustive()
    }
}

impl Api {
    /// The API over these backends.
    pub fn new(
        persistence: Arc<DynPersistenceStore>,
        events: Arc<DynEventStore>,
        scheduler: Arc<DynContainerScheduler>,
        options: ApiOptions,
    ) -> Self {
        let guard = Arc::new(Guard::new(options.security.clone()));
        let catalog = Arc::new(Catalog::new(persistence));
        let persistence = Arc::clone(&catalog) as Arc<DynPersistenceStore>;
        Self {
            guard,
            streams: Arc::default(),
            loops: None,
            owned: None,
            catalog,
            wake: None,
            elector: None,
            unowned_actions: Arc::default(),
            persistence,
            events,
            scheduler,
            options,
            writes: Mutex::new(()),
            shutdown: tokio::sync::watch::channel(false).1,
            kv: None,
            started: std::time::Instant::now(),
        }
    }

    /// Serves the gateway side's keys (`/vga/…`, dynamic `/config`) from `kv` below
    /// `/vamp/<namespace>`.
    #[must_use]
    pub fn with_kv(mut self, kv: Arc<DynKeyValueStore>, namespace: impl Into<String>) -> Self {
        self.kv = Some((kv, namespace.into()));
        self
    }

    /// The same API over other persistence and event stores (a bulk request's stage).
    fn over(&self, persistence: Arc<DynPersistenceStore>, events: Arc<DynEventStore>) -> Self {
        // Another store (versions are its own): its own catalog, loaded on first use.
        let catalog = Arc::new(Catalog::new(persistence));
        Self {
            persistence: Arc::clone(&catalog) as Arc<DynPersistenceStore>,
            catalog,
            events,
            scheduler: Arc::clone(&self.scheduler),
            options: self.options.clone(),
            writes: Mutex::new(()),
            shutdown: self.shutdown.clone(),
            kv: self.kv.clone(),
            started: self.started,
            guard: Arc::clone(&self.guard),
            streams: Arc::clone(&self.streams),
            loops: self.loops.clone(),
            owned: self.owned.clone(),
            elector: self.elector.clone(),
            wake: self.wake.clone(),
            unowned_actions: Arc::clone(&self.unowned_actions),
        }
    }

    /// Reads from and writes through `catalog` (shared with the loops, which write through it
    /// too) instead of one of its own; `catalog` must be over this API's persistence.
    #[must_use]
    pub fn with_catalog(mut self, catalog: Arc<Catalog>) -> Self {
        self.persistence = Arc::clone(&catalog) as Arc<DynPersistenceStore>;
        self.catalog = catalog;
        self
    }

    /// Notifies `wake` after every write (the reconcile loop of `vamp serve` waits on it, so
    /// that a new deployment is acted on at once, not at the next period).
    #[must_use]
    pub fn with_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Shows the state of these loops in `/info` (and reports the server degraded, with a 500,
    /// while one is failing).
    #[must_use]
    pub fn with_loops(mut self, loops: Arc<crate::supervise::Loops>) -> Self {
        self.loops = Some(loops);
        self
    }

    /// Acts on the scheduler through `owned` (only on this control plane's services), shows
    /// its identity in `/info` and serves the services of other owners or none at
    /// `/scheduler/unowned`, for an operator to adopt or remove.
    #[must_use]
    pub fn with_owner(mut self, owned: Arc<OwnedScheduler>) -> Self {
        self.scheduler = Arc::clone(&owned) as Arc<DynContainerScheduler>;
        self.owned = Some(owned);
        self
    }

    /// Shows this replica's part in the leader election in `/info`: `leader` (whether it
    /// runs the loops), `leader_token` (its fencing token while it does: one per leadership
    /// term), `replica` (its id) and `leader_id`.
    #[must_use]
    pub fn with_election(mut self, elector: Arc<vamp_core::ops::leader::Elector>) -> Self {
        self.elector = Some(elector);
        self
    }

    /// Ends open event streams when `shutdown` turns true (a graceful shutdown waits for
    /// open connections, and a stream never finishes by itself).
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The routes below `/api/v1`, as a table: each path with the methods it answers and
    /// their handlers. [`Api::router`] is built from it alone, and [`Api::routes`] lists it.
    fn table() -> Vec<(&'static str, Verbs)> {
        let v = Verbs::default;
        vec![
            (
                "/",
                v().post(bulk_create).put(bulk_update).delete(bulk_delete),
            ),
            ("/login", v().get(caller).post(login)),
            ("/logout", v().post(logout)),
            ("/info", v().get(info)),
            ("/information", v().get(info)),
            ("/config", v().get(config).put(put_config).post(put_config)),
            (
                "/configuration",
                v().get(config).put(put_config).post(put_config),
            ),
            ("/config/{key}", v().get(config_key)),
            ("/events", v().get(list_events).post(publish_event)),
            ("/events/stream", v().get(event_stream)),
            ("/logs", v().get(log_stream)),
            ("/log", v().get(log_stream)),
            (
                "/deployments",
                v().get(list_deployments).post(create_deployment),
            ),
            (
                "/deployments/{name}",
                v().get(get_deployment)
                    .put(update_deployment)
                    .delete(delete_deployment),
            ),
            (
                "/deployments/{d}/clusters/{c}/sla",
                v().get(get_sla)
                    .post(put_sla)
                    .put(put_sla)
                    .delete(delete_sla),
            ),
            (
                "/deployments/{d}/clusters/{c}/services/{s}/scale",
                v().get(get_scale).put(put_scale),
            ),
            (
                "/workflows/{name}/status",
                v().get(get_workflow_status).put(put_workflow_status),
            ),
            (
                "/canary-policies/{name}/status",
                v().get(get_canary_status).put(put_canary_status),
            ),
            ("/stats", v().get(stats)),
            ("/statistics", v().get(stats)),
            ("/mesosconfig", v().get(mesos_config)),
            ("/scheduler/nodes", v().get(scheduler_nodes)),
            ("/scheduler/routing", v().get(scheduler_routing)),
            ("/scheduler/unowned", v().get(list_unowned)),
            ("/scheduler/unowned/adopt", v().post(adopt_unowned)),
            ("/scheduler/unowned/remove", v().post(remove_unowned)),
            (
                "/vga/{kind}/{name}/template",
                v().get(get_template)
                    .put(put_template)
                    .post(put_template)
                    .delete(delete_template),
            ),
            (
                "/vga/{kind}/{name}/configuration",
                v().get(get_vga_configuration),
            ),
            ("/vga/{kind}/{name}/config", v().get(get_vga_configuration)),
            ("/docker-compose", v().post(docker_compose)),
            ("/health/{*path}", v().get(health)),
            ("/metrics/{*path}", v().get(metrics)),
            ("/{kind}", v().get(list_kind).post(create_kind)),
            (
                "/{kind}/{*name}",
                v().get(get_kind).put(update_kind).delete(delete_kind),
            ),
        ]
    }

    /// Every route of the router: its full path (parameters as `{name}`) and the methods it
    /// answers (`GET` also answers `HEAD`). The liveness probe ([`auth::LIVENESS_PATH`]) and
    /// the login route are the only ones answered without a caller.
    pub fn routes() -> Vec<RouteInfo> {
        let mut out = vec![RouteInfo {
            path: auth::LIVENESS_PATH.to_owned(),
            methods: vec![Method::GET],
        }];
        out.extend(Self::table().into_iter().map(|(path, v)| RouteInfo {
            path: format!("/api/v1{}", path.trim_end_matches('/')),
            methods: v.methods,
        }));
        out
    }

    /// The routes, behind the security layer ([`auth::guard`]: host, origin, content type,
    /// caller and role) and the conventions. Every route also answers with one trailing slash
    /// (`/api/v1/`, `/api/v1/breeds/`), as Vamp's did and its clients send.
    pub fn router(self: Arc<Self>) -> Router {
        let limit = self.options.body_limit;
        let timeout = self.options.request_timeout;
        let guard = Arc::clone(&self.guard);
        let mut api = Router::new();
        for (path, verbs) in Self::table() {
            api = api.route(path, verbs.router);
        }
        let routes = Router::new()
            .route(auth::LIVENESS_PATH, get(auth::liveness))
            .nest("/api/v1", api.with_state(self))
            .fallback(|| async { StatusCode::NOT_FOUND });
        // Routed inside a router of its own, so that the layers below (the outermost
        // trimming the path first) run before its routing.
        Router::new()
            .fallback_service(routes)
            .layer(axum::extract::DefaultBodyLimit::max(limit))
            .layer(middleware::from_fn_with_state(guard, auth::guard))
            .layer(middleware::from_fn(conventions))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                timeout,
            ))
            .layer(middleware::map_request(trim_trailing_slash))
    }

    /// The security layer's state (its settings and the console's sessions).
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// The index of stored deployments, gateways and what merges reference that the API reads
    /// (its writes go through it). Keep it current with [`Catalog::follow`] as a supervised
    /// loop, as `vamp serve` does; without one it is loaded on first use and then sees only
    /// this API's writes.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    fn now() -> i64 {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(i64::MAX)
    }
}

type Shared = State<Arc<Api>>;
type Params = Query<Vec<(String, String)>>;

// ------------------------------------------------------------------------------------------
// Conventions

/// No caching. (CORS grants and preflights are the security layer's: [`auth::guard`].)
async fn conventions(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A request's path without its one trailing slash, as every layer and route sees it.
async fn trim_trailing_slash(mut request: Request) -> Request {
    if let Some(uri) = without_trailing_slash(request.uri()) {
        *request.uri_mut() = uri;
    }
    request
}

/// `uri` without the one trailing slash of its path (`/api/v1/breeds/` → `/api/v1/breeds`),
/// if it has one (and is more than `/`).
fn without_trailing_slash(uri: &axum::http::Uri) -> Option<axum::http::Uri> {
    let path = uri.path();
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty() && !p.ends_with('/'))?;
    let path_and_query = match uri.query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    axum::http::Uri::from_parts(parts).ok()
}

/// One route of [`Api::routes`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteInfo {
    /// The full path, parameters as `{name}` and `{*rest}`.
    pub path: String,
    /// The methods it answers.
    pub methods: Vec<Method>,
}

/// The handlers of one path, with the methods they answer (the route table's entries).
#[derive(Default)]
struct Verbs {
    router: axum::routing::MethodRouter<Arc<Api>>,
    methods: Vec<Method>,
}

impl Verbs {
    fn on<H, T>(mut self, method: Method, handler: H) -> Self
    where
        H: axum::handler::Handler<T, Arc<Api>>,
        T: 'static,
    {
        let filter = axum::routing::MethodFilter::try_from(method.clone())
            .expect("the table names standard methods");
        self.router = self.router.on(filter, handler);
        self.methods.push(method);
        self
    }

    fn get<H: axum::handler::Handler<T, Arc<Api>>, T: 'static>(self, h: H) -> Self {
        self.on(Method::GET, h)
    }

    fn post<H: axum::handler::Handler<T, Arc<Api>>, T: 'static>(self, h: H) -> Self {
        self.on(Method::POST, h)
    }

    fn put<H: axum::handler::Handler<T, Arc<Api>>, T: 'static>(self, h: H) -> Self {
        self.on(Method::PUT, h)
    }

    fn delete<H: axum::handler::Handler<T, Arc<Api>>, T: 'static>(self, h: H) -> Self {
        self.on(Method::DELETE, h)
    }
}

/// `POST /login` (see [`auth::login`]).
async fn login(State(api): Shared, headers: HeaderMap, body: axum::body::Body) -> Response {
    auth::login(&api.guard, &headers, body).await
}

/// `GET /login`: who the caller is (name, role, how recognised, client certificate).
async fn caller(caller: Option<axum::Extension<auth::Caller>>) -> Response {
    let Some(axum::Extension(c)) = caller else {
        return StatusCode::NOT_FOUND.into_response();
    };
    body(
        StatusCode::OK,
        Format::Json,
        &serde_json::json!({
            "name": c.name,
            "role": c.role.as_str(),
            "via": format!("{:?}", c.via).to_ascii_lowercase(),
            "certificate": c.certificate.as_deref(),
        }),
    )
}

/// `POST /logout` (see [`auth::logout`]).
async fn logout(State(api): Shared, headers: HeaderMap) -> Response {
    auth::logout(&api.guard, &headers)
}

/// How a response body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

const MEDIA_TYPES: &str = "application/json, application/x-yaml";

/// The response format from `Accept` (required: Vamp answered a missing header with a 400).
fn accept(headers: &HeaderMap) -> Result<Format, ApiError> {
    let value = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if value.starts_with("application/x-yaml") {
        Ok(Format::Yaml)
    } else if value.contains("application/json")
        || value.contains("application/x-yaml")
        || value.contains("*/*")
    {
        Ok(Format::Json)
    } else {
        Err(ApiError::bad(format!(
            "Only the following media types are supported: {MEDIA_TYPES}."
        )))
    }
}

/// `POST`/`PUT` bodies are JSON or YAML (both read by the YAML reader).
fn content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if value.starts_with("application/json") || value.starts_with("application/x-yaml") {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "Only the following content types are supported: {MEDIA_TYPES}."
        )))
    }
}

fn flag(params: &[(String, String)], name: &str) -> bool {
    params
        .iter()
        .any(|(k, v)| k == name && v.eq_ignore_ascii_case("true"))
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An error answer: Vamp's status and `{"message": …}` body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: Option<String>,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: Some(message.into()),
        }
    }

    fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: None,
        }
    }

    /// A `412`: the artifact is not at the version `If-Match` named.
    fn precondition(what: &str, name: &str, found: Option<Version>, wanted: Version) -> Self {
        let found = found.map_or_else(
            || "not stored".to_owned(),
            |v| format!("at version {}", v.0),
        );
        Self {
            status: StatusCode::PRECONDITION_FAILED,
            message: Some(format!(
                "{what} '{name}' is {found}, not at version {} (If-Match); nothing was changed.",
                wanted.0
            )),
        }
    }

    /// The error of document `n` of a bulk request, named in the message.
    fn in_document(self, n: usize, kind: ArtifactKind, name: &str) -> Self {
        let what = format!("Document {n} ({} '{name}')", kind.as_str());
        Self {
            status: self.status,
            message: Some(match self.message {
                Some(m) => format!("{what}: {m} Nothing was stored."),
                None => format!("{what}: not found. Nothing was stored."),
            }),
        }
    }

    /// With `If-Match`, a write that lost a race is a `412`, not a `409` to retry.
    fn expecting(self, expected: Option<Version>, what: &str, name: &str) -> Self {
        match expected {
            Some(v) if self.status == StatusCode::CONFLICT => {
                Self::precondition(what, name, None, v)
            }
            _ => self,
        }
    }
}

/// The version `If-Match` names (`"<version>"`, as the `ETag`s of this API), if given.
fn if_match(headers: &HeaderMap) -> Result<Option<Version>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let digits = text.trim_start_matches("W/").trim_matches('"');
    digits
        .parse::<u64>()
        .map(|v| Some(Version(v)))
        .map_err(|_| {
            ApiError::bad(format!(
                "If-Match takes one ETag of this API (\"<version>\"), not '{}'.",
                text.escape_debug()
            ))
        })
}

/// A response with the `ETag` of `version`.
fn with_etag(mut response: Response, version: Option<Version>) -> Response {
    if let Some(v) = version
        && let Ok(h) = HeaderValue::from_str(&format!("\"{}\"", v.0))
    {
        response.headers_mut().insert(header::ETAG, h);
    }
    response
}

impl From<vamp_core::Error> for ApiError {
    fn from(e: vamp_core::Error) -> Self {
        use vamp_core::Error as E;
        match &e {
            E::Read(r) => Self::bad(r.to_string()),
            E::Operation(o) => Self::bad(o.to_string()),
            E::Invalid { .. } => Self::bad(e.to_string()),
            E::NotFound { .. } => Self::not_found(),
            E::Conflict { .. } | E::AlreadyExists { .. } | E::NotOwned { .. } => Self {
                status: StatusCode::CONFLICT,
                message: Some(e.to_string()),
            },
            E::Unavailable { .. } => {
                tracing::warn!(error = %e, "a backend is unavailable");
                Self {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: Some(e.to_string()),
                }
            }
            _ => {
                tracing::error!(error = ?e, "internal error");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: Some("Internal server error.".into()),
                }
            }
        }
    }
}

impl From<vamp_core::error::ReadError> for ApiError {
    fn from(e: vamp_core::error::ReadError) -> Self {
        Self::bad(e.to_string())
    }
}

impl From<vamp_core::ops::OperationError> for ApiError {
    fn from(e: vamp_core::ops::OperationError) -> Self {
        Self::bad(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.message {
            None => self.status.into_response(),
            Some(message) => (
                self.status,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({ "message": message }).to_string(),
            )
                .into_response(),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// How often a write that lost a race with another writer is planned and tried again.
const CONFLICT_RETRIES: usize = 5;

/// Evaluates `write` again when it lost a race with another writer (a 409: the reconcile
/// loop stores statuses while a request plans from what it read); every attempt reads and
/// plans anew, so the request applies to the newest state. (A macro: an async closure here
/// would not be `Send`.)
macro_rules! retrying {
    ($write:expr) => {{
        let mut attempt = 0;
        loop {
            match $write {
                Err(e) if e.status == StatusCode::CONFLICT && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}

/// A body in the asked format.
/// A JSON body already written.
fn json_text(status: StatusCode, text: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn body(status: StatusCode, format: Format, value: &serde_json::Value) -> Response {
    match format {
        Format::Json => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response(),
        Format::Yaml => (
            status,
            [(header::CONTENT_TYPE, "application/x-yaml")],
            vamp_core::dsl::node_to_yaml(&Node::from_json(value)),
        )
            .into_response(),
    }
}

fn artifact_json(a: &AnyArtifact) -> serde_json::Value {
    to_node(a).to_json()
}

/// The page asked for (`page`, from 1, and `per_page`, at most [`PER_PAGE`]) of `total`
/// items; a page past the last is empty.
#[derive(Clone, Copy, Debug)]
struct Page {
    /// The page asked for, within `1..=last` (for the links).
    number: usize,
    /// Whether the page asked for is past the last: it holds nothing (as Vamp's did).
    past_last: bool,
    per_page: usize,
    last: usize,
    total: usize,
}

impl Page {
    fn of(params: &[(String, String)], total: usize) -> Result<Self, ApiError> {
        let number = |name: &str, default: usize| -> Result<usize, ApiError> {
            match param(params, name) {
                None => Ok(default),
                Some(v) => v.parse::<usize>().map_err(|_| {
                    ApiError::bad(format!("'{name}' must be a positive number: '{v}'"))
                }),
            }
        };
        let per_page = number("per_page", PER_PAGE)?.clamp(1, PER_PAGE);
        let last = total.div_ceil(per_page).max(1);
        let asked = number("page", 1)?.max(1);
        Ok(Self {
            number: asked.min(last),
            past_last: asked > last,
            per_page,
            last,
            total,
        })
    }

    /// How many items come before the page (all of them for a page past the last).
    fn offset(&self) -> usize {
        if self.past_last {
            self.total
        } else {
            (self.number - 1) * self.per_page
        }
    }

    /// The page's `items` (already cut to the page) with `X-Total-Count` and `Link`.
    fn response(&self, format: Format, path: &str, items: Vec<serde_json::Value>) -> Response {
        self.headers(
            path,
            body(StatusCode::OK, format, &serde_json::Value::Array(items)),
        )
    }

    /// The page as a JSON array of items already written as JSON.
    fn json_response(&self, path: &str, items: &[Arc<str>]) -> Response {
        let mut text = String::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
        text.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(item);
        }
        text.push(']');
        self.headers(path, json_text(StatusCode::OK, text))
    }

    fn headers(&self, path: &str, mut response: Response) -> Response {
        let per_page = self.per_page;
        let link = |p: usize| format!("<{path}?page={p}&per_page={per_page}>");
        let links = format!(
            "{}; rel=first, {}; rel=prev, {}; rel=next, {}; rel=last",
            link(1),
            link(self.number.saturating_sub(1).max(1)),
            link((self.number + 1).min(self.last)),
            link(self.last)
        );
        let h = response.headers_mut();
        h.insert("X-Total-Count", HeaderValue::from(self.total));
        if let Ok(v) = HeaderValue::from_str(&links) {
            h.insert(header::LINK, v);
        }
        response
    }
}

/// One page of `items` with `X-Total-Count` and `Link`.
fn paged(
    format: Format,
    path: &str,
    params: &[(String, String)],
    items: Vec<serde_json::Value>,
) -> Result<Response, ApiError> {
    let page = Page::of(params, items.len())?;
    let items: Vec<_> = items
        .into_iter()
        .skip(page.offset())
        .take(page.per_page)
        .collect();
    Ok(page.response(format, path, items))
}

/// The documents of a request body.
fn documents(bytes: &[u8]) -> Result<Vec<Node>, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::bad("The request body is not UTF-8 text."))?;
    Ok(load_documents(text)?)
}

/// The one artifact of a body, read as `kind`.
fn one(bytes: &[u8], kind: ArtifactKind) -> Result<AnyArtifact, ApiError> {
    let mut docs = documents(bytes)?;
    if docs.is_empty() {
        return Err(ApiError::bad("The request body is empty."));
    }
    Ok(read_node(docs.swap_remove(0), Some(kind))?)
}

/// The one document of a body read as `kind`, which may leave out its name (a scale or SLA
/// given inline): it is read with a placeholder name, which `clear` takes out again.
fn anonymous<T>(
    bytes: &[u8],
    kind: ArtifactKind,
    take: impl FnOnce(AnyArtifact) -> Option<T>,
    clear: impl FnOnce(&mut T),
) -> Result<T, ApiError> {
    let mut docs = documents(bytes)?;
    if docs.is_empty() {
        return Err(ApiError::bad("The request body is empty."));
    }
    let mut doc = docs.swap_remove(0);
    let unnamed = matches!(&doc, Node::Map(m) if !m.contains_key("name"));
    if unnamed && let Node::Map(m) = &mut doc {
        m.insert("name".into(), Node::Str("anonymous".into()));
    }
    let mut value = take(read_node(doc, Some(kind))?)
        .ok_or_else(|| ApiError::bad(format!("Unexpected resource: '{}'.", kind.as_str())))?;
    if unnamed {
        clear(&mut value);
    }
    Ok(value)
}

fn kind_of(segment: &str) -> Result<ArtifactKind, ApiError> {
    ArtifactKind::parse(segment)
        .filter(|k| CRUD_KINDS.contains(k))
        .ok_or_else(|| ApiError::bad(format!("Unexpected resource: '{segment}'.")))
}

fn status_for_write(kind: ArtifactKind, crud: StatusCode) -> StatusCode {
    if matches!(kind, ArtifactKind::Gateway | ArtifactKind::Workflow) {
        StatusCode::ACCEPTED
    } else {
        crud
    }
}

// ------------------------------------------------------------------------------------------
// Reading what is stored

impl Api {
    async fn stored(&self, kind: ArtifactKind) -> Result<Vec<AnyArtifact>, ApiError> {
        let records = self.persistence.list(kind, ListOptions::all()).await?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            if let Some(content) = r.content {
                out.push(read_node(Node::from_json(&content), Some(kind))?);
            }
        }
        Ok(out)
    }

    /// Every deployment, normalised (internal gateway names and ports restored), shared with
    /// the catalog.
    async fn deployments(&self) -> Result<Vec<Versioned<Arc<Deployment>>>, ApiError> {
        self.catalog.ensure_loaded().await?;
        Ok(self.catalog.deployments())
    }

    /// Every deployment, normalised, as owned values (for the planners that take slices).
    async fn deployments_owned(&self) -> Result<Vec<Deployment>, ApiError> {
        Ok(self
            .deployments()
            .await?
            .into_iter()
            .map(|d| Arc::unwrap_or_clone(d.value))
            .collect())
    }

    /// One deployment, normalised, as stored now: read from the store, decoded only when the
    /// catalog does not hold that version.
    async fn deployment(&self, name: &str) -> Result<Option<Versioned<Arc<Deployment>>>, ApiError> {
        let Some(record) = self
            .catalog
            .inner()
            .read(ArtifactKind::Deployment, name)
            .await?
        else {
            return Ok(None);
        };
        let Some(content) = &record.content else {
            return Ok(None);
        };
        // Indexed at once unless the catalog holds this version (or a newer one) already.
        self.catalog.apply(&record);
        if let Some(d) = self.catalog.deployment(name)
            && d.version == record.version
        {
            return Ok(Some(d));
        }
        // Not indexed at this version (the catalog holds a newer one, or the record does not
        // decode): the record read, decoded here.
        let mut d: Deployment =
            serde_json::from_value(content.clone()).map_err(|e| vamp_core::Error::Invalid {
                what: "stored artifact",
                value: format!("deployments/{name}"),
                reason: e.to_string(),
            })?;
        vamp_core::ops::deploy::normalize(&mut d);
        Ok(Some(Versioned {
            value: Arc::new(d),
            version: record.version,
        }))
    }

    async fn gateways(&self) -> Result<Vec<Gateway>, ApiError> {
        self.catalog.ensure_loaded().await?;
        Ok(self
            .catalog
            .gateways()
            .into_iter()
            .map(|v| Arc::unwrap_or_clone(v.value))
            .collect())
    }

    /// Every gateway: the stored ones, then the deployments' (cluster and deployment
    /// gateways), as Vamp listed them.
    async fn all_gateways(&self) -> Result<Vec<Gateway>, ApiError> {
        let mut out = self.gateways().await?;
        for d in self.deployments().await? {
            out.extend(vamp_core::ops::reconcile::gateways(std::slice::from_ref(
                &*d.value,
            )));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn merge_options(&self) -> MergeOptions {
        let mut o = self.options.merge.clone();
        o.now = Self::now();
        o
    }

    /// Publishes an event; a failure is logged, not fatal to the write that caused it.
    async fn publish(&self, tags: Vec<String>, value: Node, event_type: &str) {
        let mut event = Event::new(tags, value, event_type);
        event.version = Some("1.0".into());
        if let Err(e) = self.events.publish(event).await {
            tracing::warn!(error = %e, "an event could not be published");
        }
    }

    async fn archive(&self, kind: ArtifactKind, name: &str, what: &str, source: Node) {
        // Every write is archived: the loops may have something to do.
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        self.publish(
            vec![
                format!("{}:{name}", kind.as_str()),
                kind.as_str().to_owned(),
                format!("archive:{what}"),
            ],
            source,
            "archive",
        )
        .await;
    }

    /// Refuses a name over [`Limits::max_name_len`].
    fn check_name(&self, kind: ArtifactKind, name: &str) -> Result<(), ApiError> {
        let max = self.options.limits.max_name_len;
        if name.len() > max {
            return Err(ApiError::bad(format!(
                "The name of {} '{}…' is longer than {max} bytes.",
                kind.as_str(),
                name.chars().take(32).collect::<String>()
            )));
        }
        Ok(())
    }

    /// Refuses `updated` (the deployment `name` after a write) when the server's deployments
    /// together would be over the service or instance quota (counted by the catalog, the
    /// stored `name` replaced by `updated`).
    fn check_quota(&self, name: &str, updated: &Deployment) -> Result<(), ApiError> {
        let (all_services, all_instances) = self.catalog.footprint();
        let (old_services, old_instances) = self
            .catalog
            .deployment(name)
            .map_or((0, 0), |d| footprint(&d.value));
        let (new_services, new_instances) = footprint(updated);
        let services = (all_services - old_services).saturating_add(new_services);
        let instances = all_instances
            .saturating_sub(old_instances)
            .saturating_add(new_instances);
        let l = &self.options.limits;
        if services > l.max_services {
            return Err(ApiError::bad(format!(
                "Deployment '{name}' would bring the server to {services} services, over its quota of {} (--max-services).",
                l.max_services
            )));
        }
        if instances > l.max_instances {
            return Err(ApiError::bad(format!(
                "Deployment '{name}' would bring the server to {instances} instances, over its quota of {} (--max-instances).",
                l.max_instances
            )));
        }
        Ok(())
    }

    /// Refuses an event query or stream over the tag limits.
    fn check_tags(&self, tags: &[String]) -> Result<(), ApiError> {
        let l = &self.options.limits;
        if tags.len() > l.max_tags {
            return Err(ApiError::bad(format!(
                "An event query names at most {} tags.",
                l.max_tags
            )));
        }
        if tags.iter().any(|t| t.len() > l.max_tag_len) {
            return Err(ApiError::bad(format!(
                "An event tag is at most {} bytes long.",
                l.max_tag_len
            )));
        }
        Ok(())
    }

    /// Refuses what the operator's policy refuses (a 400 naming the breed, field and rule).
    fn check_policy(&self, spec: &vamp_core::scheduler::ServiceSpec) -> Result<(), ApiError> {
        self.options
            .policy
            .check(spec)
            .map_err(|v| ApiError::bad(v.to_string()))
    }

    /// Checks what a breed or workflow would run against the policy before it is stored (a
    /// deployment's services are checked by [`Api::check_deployables`]).
    async fn check_artifact_policy(&self, artifact: &AnyArtifact) -> Result<(), ApiError> {
        use vamp_core::scheduler::{ServiceId, ServiceSpec};
        match artifact {
            AnyArtifact::Breed(b) => {
                let spec = ServiceSpec::new(ServiceId::new("", "", &b.name), b.deployable.clone());
                self.check_policy(&spec)
            }
            AnyArtifact::Gateway(g) => self
                .options
                .policy
                .check_gateway(g)
                .map_err(|v| ApiError::bad(v.to_string())),
            AnyArtifact::Workflow(w) => {
                let stored =
                    vamp_core::ops::workflow::with_stored_breed(&*self.persistence, w.clone());
                // A missing breed is the workflow loop's to report.
                let Some(w) = stored.await? else {
                    return Ok(());
                };
                let options = vamp_core::ops::workflow::WorkflowOptions::default();
                if let Some(mut spec) = vamp_core::ops::workflow::spec(&w, &options, 1) {
                    spec.arguments.clone_from(&w.arguments);
                    spec.network.clone_from(&w.network);
                    spec.dialects.clone_from(&w.dialects);
                    self.check_policy(&spec)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Refuses a deployment whose deployables the policy or the scheduler refuse, before
    /// anything is stored.
    fn check_deployables(&self, d: &Deployment) -> Result<(), ApiError> {
        for g in &d.gateways {
            self.options
                .policy
                .check_gateway(g)
                .map_err(|v| ApiError::bad(v.to_string()))?;
        }
        for c in &d.clusters {
            for s in &c.services {
                let id = vamp_core::scheduler::ServiceId::new(&d.name, &c.name, &s.breed.name);
                self.check_policy(&vamp_core::ops::reconcile::service_spec(id, s, &[]))?;
            }
        }
        let Some(types) = self.scheduler.capabilities().deployable_types else {
            return Ok(());
        };
        for c in &d.clusters {
            for s in &c.services {
                let deployable = &s.breed.deployable;
                let kind = deployable
                    .deployable_type
                    .as_deref()
                    .unwrap_or("container/docker");
                if !types.contains(&kind) {
                    return Err(ApiError::bad(format!(
                        "Breed '{}' has a deployable of type '{kind}', which the container scheduler {} cannot run (it runs: {}).",
                        s.breed.name,
                        self.scheduler,
                        types.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Generic artifacts

async fn list_kind(
    State(api): Shared,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    let format = accept(&headers)?;
    let kind = kind_of(&kind)?;
    let items: Vec<serde_json::Value> = if kind == ArtifactKind::Gateway {
        api.all_gateways()
            .await?
            .into_iter()
            .map(|g| artifact_json(&AnyArtifact::Gateway(g)))
            .collect()
    } else {
        api.stored(kind).await?.iter().map(artifact_json).collect()
    };
    paged(
        format,
        &format!("/api/v1/{}", kind.as_str()),
        &params,
        items,
    )
}

async fn get_kind(
    State(api): Shared,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let format = accept(&headers)?;
    let kind = kind_of(&kind)?;
    let (found, version) = api
        .find_versioned(kind, &name)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(with_etag(
        body(StatusCode::OK, format, &artifact_json(&found)),
        version,
    ))
}

impl Api {
    /// The stored version of an artifact, if it is stored.
    async fn stored_version(
        &self,
        kind: ArtifactKind,
        name: &str,
    ) -> Result<Option<Version>, ApiError> {
        Ok(self
            .persistence
            .read(kind, name)
            .await?
            .filter(|r| r.content.is_some())
            .map(|r| r.version))
    }

    /// The artifact and its stored version (none for a gateway of a deployment, which lives
    /// in the deployment).
    async fn find_versioned(
        &self,
        kind: ArtifactKind,
        name: &str,
    ) -> Result<Option<(AnyArtifact, Option<Version>)>, ApiError> {
        if kind == ArtifactKind::Gateway {
            // A deployment's gateway lives in its deployment, read as the store holds it now
            // (another replica's write included); a standalone one is read below.
            let path = GatewayPath::new(name);
            if path.segments.len() > 1
                && let Some(d) = self.deployment(&path.segments[0]).await?
                && let Some(g) =
                    vamp_core::ops::reconcile::gateways(std::slice::from_ref(&*d.value))
                        .into_iter()
                        .find(|g| g.name == name)
            {
                let version = self.stored_version(kind, name).await?;
                return Ok(Some((AnyArtifact::Gateway(g), version)));
            }
        }
        match self.persistence.read(kind, name).await? {
            Some(record) => match record.content {
                Some(content) => Ok(Some((
                    read_node(Node::from_json(&content), Some(kind))?,
                    Some(record.version),
                ))),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Plans and (unless `validate_only`) stores a create or update of `artifact`; returns
    /// what was (or would be) stored last: the artifact itself. Planned again when another
    /// writer won.
    async fn put_artifact(
        &self,
        artifact: AnyArtifact,
        validate_only: bool,
        creating: bool,
    ) -> Result<AnyArtifact, ApiError> {
        Ok(self
            .put_artifact_expecting(artifact, validate_only, creating, None)
            .await?
            .0)
    }

    /// Stores `artifact` if it is at version `expected` (`If-Match`; a `412` otherwise), and
    /// returns it with its new version. The write is conditional on the version read even
    /// without `If-Match`, so that a writer elsewhere (another server on the same database)
    /// is never overwritten: a lost race is planned again from what is stored then.
    async fn put_artifact_expecting(
        &self,
        artifact: AnyArtifact,
        validate_only: bool,
        creating: bool,
        expected: Option<Version>,
    ) -> Result<(AnyArtifact, Option<Version>), ApiError> {
        let name = artifact.name().to_owned();
        let what = artifact.kind().as_str();
        retrying!(
            self.put_artifact_once(artifact.clone(), validate_only, creating, expected)
                .await
                .map_err(|e| e.expecting(expected, what, &name))
        )
    }

    async fn put_artifact_once(
        &self,
        artifact: AnyArtifact,
        validate_only: bool,
        creating: bool,
        expected: Option<Version>,
    ) -> Result<(AnyArtifact, Option<Version>), ApiError> {
        let kind = artifact.kind();
        let name = artifact.name().to_owned();
        vamp_core::persistence::validate_name(&name)?;
        self.check_name(kind, &name)?;
        if kind == ArtifactKind::Gateway && GatewayPath::new(&name).segments.len() == 3 && !creating
        {
            if expected.is_some() {
                return Err(ApiError::bad(
                    "A gateway of a deployment has no ETag of its own: use the deployment's.",
                ));
            }
            return Ok((
                self.put_internal_gateway(artifact, validate_only).await?,
                None,
            ));
        }
        let (existing, current) = match self.find_versioned(kind, &name).await? {
            Some((a, v)) => (Some(a), v),
            None => (None, None),
        };
        if let Some(v) = expected
            && current != Some(v)
        {
            return Err(ApiError::precondition(kind.as_str(), &name, current, v));
        }
        // A canary policy's status is the control plane's: an update without one keeps it.
        let artifact = match (artifact, &existing) {
            (AnyArtifact::CanaryPolicy(mut c), Some(AnyArtifact::CanaryPolicy(old)))
                if c.status == CanaryStatus::default() =>
            {
                c.status = old.status.clone();
                AnyArtifact::CanaryPolicy(c)
            }
            (a, _) => a,
        };
        let gateways = self.gateways().await?;
        let deployments = self.deployments_owned().await?;
        let stored = Stored::new(existing.as_ref(), &gateways, &deployments);
        self.check_artifact_policy(&artifact).await?;
        let writes = plan_put(artifact.clone(), &stored)?;
        if validate_only || writes.is_empty() {
            return Ok((writes.last().cloned().unwrap_or(artifact), current));
        }
        let batch = writes
            .iter()
            .map(|a| {
                // The artifact itself only over the version read (or only if still absent).
                let mode = if a.kind() == kind && a.name() == name {
                    match (current, existing.is_some()) {
                        (Some(v), _) => PutMode::Update(v),
                        (None, false) => PutMode::Create,
                        (None, true) => PutMode::Overwrite,
                    }
                } else {
                    PutMode::Overwrite
                };
                ArtifactWrite::put(a.kind(), a.name(), artifact_json(a), mode)
            })
            .collect();
        let versions = self.persistence.write(batch).await?;
        let version = writes
            .iter()
            .zip(&versions)
            .rev()
            .find(|(a, _)| a.kind() == kind && a.name() == name)
            .and_then(|(_, v)| *v);
        for a in &writes {
            // A PUT is an update, also of what it creates (Vamp's bulk PUT: `archive:update`).
            let itself = a.kind() == kind && a.name() == name;
            let what = if itself && (existing.is_some() || !creating) {
                "update"
            } else {
                "create"
            };
            self.archive(a.kind(), a.name(), what, to_node(a)).await;
        }
        Ok((writes.last().cloned().unwrap_or(artifact), version))
    }

    /// An internal gateway (`deployment/cluster/port`) lives in its deployment: an update
    /// changes the cluster gateway's routes (weights, conditions, …), never the set of them.
    async fn put_internal_gateway(
        &self,
        artifact: AnyArtifact,
        validate_only: bool,
    ) -> Result<AnyArtifact, ApiError> {
        let AnyArtifact::Gateway(g) = artifact else {
            unreachable!("checked by the caller")
        };
        let path = GatewayPath::new(&g.name);
        let deployment = self
            .deployment(&path.segments[0])
            .await?
            .ok_or_else(ApiError::not_found)?;
        let mut d = (*deployment.value).clone();
        let cluster = d
            .clusters
            .iter_mut()
            .find(|c| c.name == path.segments[1])
            .ok_or_else(ApiError::not_found)?;
        let slot = cluster
            .gateways
            .iter_mut()
            .find(|x| x.name == g.name)
            .ok_or_else(ApiError::not_found)?;
        let existing = AnyArtifact::Gateway(slot.clone());
        let stored = Stored::new(Some(&existing), &[], &[]);
        let writes = plan_put(AnyArtifact::Gateway(g.clone()), &stored)?;
        if validate_only || writes.is_empty() {
            return Ok(AnyArtifact::Gateway(g));
        }
        let mut updated = g.clone();
        // The port stays the deployment's.
        updated.port = slot.port.clone();
        vamp_core::ops::deploy::fill_weights(&mut updated.routes);
        *slot = updated.clone();
        self.persistence.update(&d, deployment.version).await?;
        self.archive(
            ArtifactKind::Gateway,
            &g.name,
            "update",
            to_node(&AnyArtifact::Gateway(updated.clone())),
        )
        .await;
        Ok(AnyArtifact::Gateway(updated))
    }

    async fn delete_artifact(&self, kind: ArtifactKind, name: &str) -> Result<bool, ApiError> {
        self.delete_artifact_expecting(kind, name, None).await
    }

    /// Deletes the artifact if it is at version `expected` (`If-Match`; a `412` otherwise).
    async fn delete_artifact_expecting(
        &self,
        kind: ArtifactKind,
        name: &str,
        expected: Option<Version>,
    ) -> Result<bool, ApiError> {
        if let Some(v) = expected {
            let current = self.stored_version(kind, name).await?;
            if current != Some(v) {
                return Err(ApiError::precondition(kind.as_str(), name, current, v));
            }
        }
        if kind == ArtifactKind::Gateway {
            let gateways = self.gateways().await?;
            let deployments = self.deployments_owned().await?;
            check_gateway_delete(name, &Stored::new(None, &gateways, &deployments))?;
        }
        self.check_unused(kind, name).await?;
        // A workflow is stopped by the workflow loop (its daemon and runs go first), which
        // then deletes it (Vamp: status `stopping`).
        if kind == ArtifactKind::Workflow {
            let Some(w) = self.persistence.get::<Workflow>(name).await? else {
                return Ok(false);
            };
            let mut stopping = w.value.clone();
            stopping.status = WorkflowStatus::Stopping;
            self.persistence
                .update(&stopping, expected.unwrap_or(w.version))
                .await
                .map_err(|e| ApiError::from(e).expecting(expected, kind.as_str(), name))?;
            self.archive(kind, name, "delete", Node::Null).await;
            return Ok(true);
        }
        let existed = self.persistence.read(kind, name).await?.is_some();
        if existed {
            self.persistence
                .write(vec![ArtifactWrite {
                    kind,
                    name: name.to_owned(),
                    op: WriteOp::Delete { expected },
                }])
                .await
                .map_err(|e| ApiError::from(e).expecting(expected, kind.as_str(), name))?;
            self.archive(kind, name, "delete", Node::Null).await;
        }
        Ok(existed)
    }

    /// A breed that a stored blueprint or a deployed service uses cannot be deleted.
    async fn check_unused(&self, kind: ArtifactKind, name: &str) -> Result<(), ApiError> {
        if kind != ArtifactKind::Breed {
            return Ok(());
        }
        let in_use = |user: String| {
            Err(ApiError::bad(format!(
                "Artifact is in use: breeds/{name} by {user}; remove it from there first."
            )))
        };
        for b in self.persistence.list_all::<DefaultBlueprint>().await? {
            let uses = b.value.clusters.iter().any(|c| {
                c.services.iter().any(|s| match &s.breed {
                    Ref::Reference(r) => r == name,
                    Ref::Inline(i) => i.name == name,
                })
            });
            if uses {
                return in_use(format!("blueprints/{}", b.value.name));
            }
        }
        for d in self.deployments().await? {
            let uses = d.value.clusters.iter().any(|c| {
                // A service on its way out (sliced, not yet gone) no longer counts.
                c.services
                    .iter()
                    .any(|s| s.breed.name == name && s.status.intention == Intention::Deployment)
            });
            if uses {
                return in_use(format!("deployments/{}", d.value.name));
            }
        }
        Ok(())
    }
}

async fn create_kind(
    State(api): Shared,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    content_type(&headers)?;
    let kind = kind_of(&kind)?;
    if param(&params, "name").is_some() {
        // Vamp: `?name=` is for docker-compose only; with any other kind, not found.
        return Err(ApiError::not_found());
    }
    let artifact = one(&bytes, kind)?;
    let _write = api.writes.lock().await;
    let stored = api
        .put_artifact(artifact, flag(&params, "validate_only"), true)
        .await?;
    Ok(body(
        status_for_write(kind, StatusCode::CREATED),
        format,
        &artifact_json(&stored),
    ))
}

async fn update_kind(
    State(api): Shared,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    let kind = kind_of(&kind)?;
    let javascript = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/javascript"));
    let artifact = if javascript && kind == ArtifactKind::Breed {
        // A JavaScript breed: the body is the script (Vamp's workflows ran them).
        let mut deployable = vamp_core::node::Map::new();
        deployable.insert("type".into(), Node::Str("application/javascript".into()));
        deployable.insert(
            "definition".into(),
            Node::Str(String::from_utf8_lossy(&bytes).into_owned()),
        );
        let mut breed = vamp_core::node::Map::new();
        breed.insert("name".into(), Node::Str(name.clone()));
        breed.insert("deployable".into(), Node::Map(deployable));
        read_node(Node::Map(breed), Some(ArtifactKind::Breed))?
    } else {
        content_type(&headers)?;
        one(&bytes, kind)?
    };
    if artifact.name() != name {
        return Err(ApiError::bad(format!(
            "Inconsistent artifact name: '{}' in the body, '{name}' in the path.",
            artifact.name()
        )));
    }
    let expected = if_match(&headers)?;
    let _write = api.writes.lock().await;
    let (stored, version) = api
        .put_artifact_expecting(artifact, flag(&params, "validate_only"), false, expected)
        .await?;
    Ok(with_etag(
        body(
            status_for_write(kind, StatusCode::OK),
            format,
            &artifact_json(&stored),
        ),
        version,
    ))
}

async fn delete_kind(
    State(api): Shared,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    accept(&headers)?;
    let kind = kind_of(&kind)?;
    if flag(&params, "validate_only") {
        return Ok(status_for_write(kind, StatusCode::NO_CONTENT).into_response());
    }
    let expected = if_match(&headers)?;
    let _write = api.writes.lock().await;
    api.delete_artifact_expecting(kind, &name, expected).await?;
    Ok(status_for_write(kind, StatusCode::NO_CONTENT).into_response())
}

// ------------------------------------------------------------------------------------------
// Deployments

impl Api {
    /// The blueprint a deployment request carries: a blueprint (inline or a reference) or an
    /// exported deployment.
    fn blueprint_of(doc: Node) -> Result<DefaultBlueprint, ApiError> {
        let mut doc = doc;
        if vamp_core::dsl::document_kind(&doc) == Some(ArtifactKind::Deployment) {
            // An exported deployment, or (as Vamp read it first) a blueprint of kind
            // deployment.
            if let Ok(AnyArtifact::Deployment(d)) =
                read_node(doc.clone(), Some(ArtifactKind::Deployment))
            {
                return Ok(export_blueprint(&d));
            }
            if let Node::Map(m) = &mut doc {
                m.shift_remove("kind");
            }
        }
        match read_node(doc, Some(ArtifactKind::Blueprint))? {
            AnyArtifact::Blueprint(b) => Ok(b),
            other => Err(ApiError::bad(format!(
                "Unexpected resource: '{}'.",
                other.kind().as_str()
            ))),
        }
    }

    /// Merges `blueprint` into the deployment `name` and (unless `validate_only`) stores it
    /// with the blueprint's new inline breeds; planned again when another writer won.
    async fn deploy(
        &self,
        name: Option<&str>,
        blueprint: &DefaultBlueprint,
        validate_only: bool,
    ) -> Result<(Deployment, Vec<DefaultBreed>), ApiError> {
        retrying!(self.deploy_once(name, blueprint, validate_only, None).await)
    }

    /// [`Api::deploy`] into the deployment `name` if it is at version `expected` (`If-Match`;
    /// a `412` otherwise).
    async fn deploy_expecting(
        &self,
        name: &str,
        blueprint: &DefaultBlueprint,
        validate_only: bool,
        expected: Option<Version>,
    ) -> Result<(Deployment, Vec<DefaultBreed>), ApiError> {
        retrying!(
            self.deploy_once(Some(name), blueprint, validate_only, expected)
                .await
                .map_err(|e| e.expecting(expected, "deployments", name))
        )
    }

    async fn deploy_once(
        &self,
        name: Option<&str>,
        blueprint: &DefaultBlueprint,
        validate_only: bool,
        expected: Option<Version>,
    ) -> Result<(Deployment, Vec<DefaultBreed>), ApiError> {
        let name = name.unwrap_or(&blueprint.name).to_owned();
        vamp_core::persistence::validate_name(&name)?;
        self.check_name(ArtifactKind::Deployment, &name)?;
        if name == vamp_core::ops::workflow::SCOPE {
            return Err(ApiError::bad(format!(
                "The deployment name '{name}' is reserved for the services of workflows."
            )));
        }
        let existing = self.deployment(&name).await?;
        if let Some(v) = expected {
            let current = existing.as_ref().map(|e| e.version);
            if current != Some(v) {
                return Err(ApiError::precondition("deployments", &name, current, v));
            }
        }
        self.catalog.ensure_loaded().await?;
        // What the blueprint references, and the ports other gateways hold, from the catalog
        // (a merge reads them without copying them).
        let merged = self.catalog.with_artifacts(|artifacts| {
            merge(
                existing.as_ref().map(|v| &*v.value),
                &name,
                blueprint,
                artifacts,
                &self.merge_options(),
            )
        })?;
        self.check_deployables(&merged.deployment)?;
        self.check_quota(&name, &merged.deployment)?;
        if validate_only {
            return Ok((merged.deployment, merged.new_breeds));
        }
        let mut batch: Vec<ArtifactWrite> = merged
            .new_breeds
            .iter()
            .map(|b| {
                // Vamp stored a blueprint's inline breeds as they are (over a stored one).
                ArtifactWrite::put(
                    ArtifactKind::Breed,
                    &b.name,
                    artifact_json(&AnyArtifact::Breed(b.clone())),
                    PutMode::Overwrite,
                )
            })
            .collect();
        let mode = existing
            .as_ref()
            .map_or(PutMode::Create, |v| PutMode::Update(v.version));
        batch.push(ArtifactWrite::put(
            ArtifactKind::Deployment,
            &name,
            artifact_json(&AnyArtifact::Deployment(merged.deployment.clone())),
            mode,
        ));
        self.persistence.write(batch).await?;
        for b in &merged.new_breeds {
            self.archive(
                ArtifactKind::Breed,
                &b.name,
                "create",
                to_node(&AnyArtifact::Breed(b.clone())),
            )
            .await;
        }
        let what = if existing.is_some() {
            "update"
        } else {
            "create"
        };
        self.archive(
            ArtifactKind::Deployment,
            &name,
            what,
            to_node(&AnyArtifact::Blueprint(blueprint.clone())),
        )
        .await;
        Ok((merged.deployment, merged.new_breeds))
    }

    /// Slices `blueprint`'s services out of the deployment `name` (planned again when
    /// another writer won).
    async fn slice(
        &self,
        name: &str,
        blueprint: &DefaultBlueprint,
        validate_only: bool,
    ) -> Result<Deployment, ApiError> {
        self.slice_expecting(name, blueprint, validate_only, None)
            .await
    }

    /// [`Api::slice`] if the deployment is at version `expected` (`If-Match`; a `412`
    /// otherwise).
    async fn slice_expecting(
        &self,
        name: &str,
        blueprint: &DefaultBlueprint,
        validate_only: bool,
        expected: Option<Version>,
    ) -> Result<Deployment, ApiError> {
        retrying!(
            self.slice_once(name, blueprint, validate_only, expected)
                .await
                .map_err(|e| e.expecting(expected, "deployments", name))
        )
    }

    async fn slice_once(
        &self,
        name: &str,
        blueprint: &DefaultBlueprint,
        validate_only: bool,
        expected: Option<Version>,
    ) -> Result<Deployment, ApiError> {
        let existing = self.deployment(name).await?.ok_or_else(|| {
            ApiError::from(vamp_core::ops::OperationError::ArtifactNotFound {
                kind: "deployments".into(),
                name: name.to_owned(),
            })
        })?;
        if let Some(v) = expected
            && existing.version != v
        {
            return Err(ApiError::precondition(
                "deployments",
                name,
                Some(existing.version),
                v,
            ));
        }
        let sliced = slice(&existing.value, blueprint, Self::now())?;
        if !validate_only {
            self.persistence.update(&sliced, existing.version).await?;
            self.archive(
                ArtifactKind::Deployment,
                name,
                "delete",
                to_node(&AnyArtifact::Blueprint(blueprint.clone())),
            )
            .await;
        }
        Ok(sliced)
    }
}

fn deployment_json(d: &Deployment, as_blueprint: bool) -> serde_json::Value {
    if as_blueprint {
        artifact_json(&AnyArtifact::Blueprint(export_blueprint(d)))
    } else {
        artifact_json(&AnyArtifact::Deployment(d.clone()))
    }
}

async fn list_deployments(
    State(api): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    let format = accept(&headers)?;
    let as_blueprint = flag(&params, "as_blueprint");
    // Only the page is copied out of the catalog and written as JSON.
    api.catalog.ensure_loaded().await?;
    let page = Page::of(&params, api.catalog.deployment_count())?;
    if format == Format::Json && !as_blueprint {
        // Each deployment's JSON is written once per version and kept by the catalog.
        let (_, items) = api
            .catalog
            .deployments_json_page(page.offset(), page.per_page);
        return Ok(page.json_response("/api/v1/deployments", &items));
    }
    let (_, deployments) = api.catalog.deployments_page(page.offset(), page.per_page);
    let items = deployments
        .iter()
        .map(|d| deployment_json(&d.value, as_blueprint))
        .collect();
    Ok(page.response(format, "/api/v1/deployments", items))
}

async fn get_deployment(
    State(api): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    let format = accept(&headers)?;
    let d = api
        .deployment(&name)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if format == Format::Json
        && !flag(&params, "as_blueprint")
        && let Some((version, json)) = api.catalog.deployment_json(&name)
        && version == d.version
    {
        return Ok(with_etag(
            json_text(StatusCode::OK, json.to_string()),
            Some(d.version),
        ));
    }
    Ok(with_etag(
        body(
            StatusCode::OK,
            format,
            &deployment_json(&d.value, flag(&params, "as_blueprint")),
        ),
        Some(d.version),
    ))
}

async fn create_deployment(
    State(api): Shared,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    content_type(&headers)?;
    let mut docs = documents(&bytes)?;
    if docs.is_empty() {
        return Err(ApiError::bad("The request body is empty."));
    }
    let blueprint = Api::blueprint_of(docs.swap_remove(0))?;
    let _write = api.writes.lock().await;
    let (d, breeds) = api
        .deploy(None, &blueprint, flag(&params, "validate_only"))
        .await?;
    // Vamp answered with the stored inline breeds and the deployment.
    let mut results: Vec<serde_json::Value> = breeds
        .into_iter()
        .map(|b| artifact_json(&AnyArtifact::Breed(b)))
        .collect();
    results.push(deployment_json(&d, false));
    Ok(body(
        StatusCode::ACCEPTED,
        format,
        &serde_json::Value::Array(results),
    ))
}

async fn update_deployment(
    State(api): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    content_type(&headers)?;
    let mut docs = documents(&bytes)?;
    if docs.is_empty() {
        return Err(ApiError::bad("The request body is empty."));
    }
    let blueprint = Api::blueprint_of(docs.swap_remove(0))?;
    let validate_only = flag(&params, "validate_only");
    let expected = if_match(&headers)?;
    let _write = api.writes.lock().await;
    let d = if flag(&params, "delete") {
        api.slice_expecting(&name, &blueprint, validate_only, expected)
            .await?
    } else {
        api.deploy_expecting(&name, &blueprint, validate_only, expected)
            .await?
            .0
    };
    Ok(body(
        StatusCode::ACCEPTED,
        format,
        &deployment_json(&d, false),
    ))
}

async fn delete_deployment(
    State(api): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    let docs = documents(&bytes)?;
    let _write = api.writes.lock().await;
    let Some(doc) = docs.into_iter().next() else {
        // An empty body only returns the deployment (Vamp).
        let d = api
            .deployment(&name)
            .await?
            .ok_or_else(ApiError::not_found)?;
        return Ok(body(
            StatusCode::ACCEPTED,
            format,
            &deployment_json(&d.value, false),
        ));
    };
    let blueprint = Api::blueprint_of(doc)?;
    let d = api
        .slice_expecting(
            &name,
            &blueprint,
            flag(&params, "validate_only"),
            if_match(&headers)?,
        )
        .await?;
    Ok(body(
        StatusCode::ACCEPTED,
        format,
        &deployment_json(&d, false),
    ))
}

async fn get_sla(
    State(api): Shared,
    Path((d, c)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let format = accept(&headers)?;
    let d = api.deployment(&d).await?.ok_or_else(ApiError::not_found)?;
    let cluster = d
        .value
        .clusters
        .iter()
        .find(|x| x.name == c)
        .ok_or_else(ApiError::not_found)?;
    let sla = cluster.sla.clone().ok_or_else(ApiError::not_found)?;
    Ok(body(
        StatusCode::OK,
        format,
        &artifact_json(&AnyArtifact::Sla(sla)),
    ))
}

async fn set_sla(api: &Api, d: &str, c: &str, sla: Option<Sla>) -> Result<Deployment, ApiError> {
    retrying!(set_sla_once(api, d, c, sla.clone()).await)
}

async fn set_sla_once(
    api: &Api,
    d: &str,
    c: &str,
    sla: Option<Sla>,
) -> Result<Deployment, ApiError> {
    let existing = api.deployment(d).await?.ok_or_else(ApiError::not_found)?;
    let updated = vamp_core::ops::deploy::set_sla(&existing.value, c, sla)?;
    api.persistence.update(&updated, existing.version).await?;
    Ok(updated)
}

async fn put_sla(
    State(api): Shared,
    Path((d, c)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    content_type(&headers)?;
    let sla = anonymous(
        &bytes,
        ArtifactKind::Sla,
        |a| match a {
            AnyArtifact::Sla(s) => Some(s),
            _ => None,
        },
        |s| match s {
            Sla::Reference { .. } => {}
            Sla::ResponseTimeSlidingWindow { name, .. }
            | Sla::EscalationOnly { name, .. }
            | Sla::Generic { name, .. } => name.clear(),
        },
    )?;
    let _write = api.writes.lock().await;
    set_sla(&api, &d, &c, Some(sla.clone())).await?;
    Ok(body(
        StatusCode::ACCEPTED,
        format,
        &artifact_json(&AnyArtifact::Sla(sla)),
    ))
}

async fn delete_sla(
    State(api): Shared,
    Path((d, c)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    accept(&headers)?;
    let _write = api.writes.lock().await;
    set_sla(&api, &d, &c, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_scale(
    State(api): Shared,
    Path((d, c, s)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let format = accept(&headers)?;
    let d = api.deployment(&d).await?.ok_or_else(ApiError::not_found)?;
    let service = d
        .value
        .clusters
        .iter()
        .find(|x| x.name == c)
        .and_then(|x| x.services.iter().find(|v| v.breed.name == s))
        .ok_or_else(ApiError::not_found)?;
    let scale = service.scale.clone().ok_or_else(ApiError::not_found)?;
    Ok(body(
        StatusCode::OK,
        format,
        &artifact_json(&AnyArtifact::Scale(scale)),
    ))
}

async fn put_scale(
    State(api): Shared,
    Path((d, c, s)): Path<(String, String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    content_type(&headers)?;
    // A scale, or a reference to a stored one (`name: small`, or just `small`).
    let docs = documents(&bytes)?;
    let reference = match docs
        .first()
        .ok_or_else(|| ApiError::bad("The request body is empty."))?
    {
        Node::Str(name) => Some(name.clone()),
        Node::Map(m) if m.len() == 1 => m.get("name").and_then(Node::as_str).map(str::to_owned),
        _ => None,
    };
    let scale = if let Some(name) = reference {
        api.persistence
            .get::<DefaultScale>(&name)
            .await?
            .map(|v| v.value)
            .ok_or_else(|| {
                ApiError::from(vamp_core::ops::OperationError::ArtifactNotFound {
                    kind: "scales".into(),
                    name,
                })
            })?
    } else {
        anonymous(
            &bytes,
            ArtifactKind::Scale,
            |a| match a {
                AnyArtifact::Scale(s) => Some(s),
                _ => None,
            },
            |s| s.name.clear(),
        )?
    };
    let _write = api.writes.lock().await;
    let scaled: Result<(), ApiError> = retrying!(
        async {
            let existing = api.deployment(&d).await?.ok_or_else(ApiError::not_found)?;
            let updated =
                vamp_core::ops::deploy::scale(&existing.value, &c, &s, scale.clone(), Api::now())?;
            api.check_quota(&d, &updated)?;
            api.persistence.update(&updated, existing.version).await?;
            Ok::<(), ApiError>(())
        }
        .await
    );
    scaled?;
    api.publish(
        vec![
            format!("deployment-service-scales:{d}"),
            "deployment-service-scales".into(),
            "archive:update".into(),
            "archive".into(),
        ],
        to_node(&AnyArtifact::Scale(scale.clone())),
        "archive",
    )
    .await;
    Ok(body(
        StatusCode::ACCEPTED,
        format,
        &artifact_json(&AnyArtifact::Scale(scale)),
    ))
}

/// `GET /workflows/{name}/status`: the status word, as Vamp answered it; with
/// `?detailed=true`, `{status, error, runs, last_run}`, where `error` says what keeps the
/// workflow from running (its breed not stored, the scheduler refusing it), or is null.
async fn get_workflow_status(
    State(api): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    use vamp_core::ops::workflow::{LAST_RUN_KEY, RUNS_KEY, recorded_error};
    let format = accept(&headers)?;
    let w = api
        .persistence
        .get::<Workflow>(&name)
        .await?
        .ok_or_else(ApiError::not_found)?
        .value;
    let status = serde_json::Value::String(w.status.to_string());
    let answer = if param(&params, "detailed") == Some("true") {
        serde_json::json!({
            "status": status,
            "error": recorded_error(&w),
            "runs": w.metadata.get(RUNS_KEY).map(Node::to_json),
            "last_run": w.metadata.get(LAST_RUN_KEY).map(Node::to_json),
        })
    } else {
        status
    };
    Ok(body(StatusCode::OK, format, &answer))
}

async fn put_workflow_status(
    State(api): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    let word = String::from_utf8_lossy(&bytes)
        .trim()
        .trim_matches('"')
        .to_owned();
    let _write = api.writes.lock().await;
    let w = api
        .persistence
        .get::<Workflow>(&name)
        .await?
        .ok_or_else(ApiError::not_found)?;
    // The status is read the way the workflow reader reads it.
    let mut node = to_node(&AnyArtifact::Workflow(w.value.clone()));
    if let Node::Map(m) = &mut node {
        m.insert("status".into(), Node::Str(word.clone()));
    }
    let AnyArtifact::Workflow(updated) = read_node(node, Some(ArtifactKind::Workflow))? else {
        return Err(ApiError::bad("Unexpected resource: 'workflows'."));
    };
    api.persistence.update(&updated, w.version).await?;
    api.publish(
        vec![
            format!("workflow-statuses:{name}"),
            "workflow-statuses".into(),
            "archive:update".into(),
            "archive".into(),
        ],
        Node::Str(word),
        "archive",
    )
    .await;
    Ok(body(
        StatusCode::ACCEPTED,
        format,
        &serde_json::Value::String(updated.status.to_string()),
    ))
}

/// `GET /canary-policies/{name}/status`: the release's status.
async fn get_canary_status(
    State(api): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let format = accept(&headers)?;
    let c = api
        .persistence
        .get::<CanaryPolicy>(&name)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let node = to_node(&AnyArtifact::CanaryPolicy(c.value));
    let status = node.to_json()["status"].clone();
    Ok(body(StatusCode::OK, format, &status))
}

/// `PUT /canary-policies/{name}/status` with `paused`, `progressing` (resume) or `aborted`
/// (the stable route gets all traffic back) → 202.
async fn put_canary_status(
    State(api): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    let word = String::from_utf8_lossy(&bytes)
        .trim()
        .trim_matches('"')
        .to_owned();
    let wanted = match CanaryPhase::parse(&word) {
        Some(p @ (CanaryPhase::Paused | CanaryPhase::Progressing | CanaryPhase::Aborted)) => p,
        _ => {
            return Err(ApiError::bad(format!(
                "Invalid canary policy: status '{word}': one of paused, progressing, aborted"
            )));
        }
    };
    let _write = api.writes.lock().await;
    let stored = api
        .persistence
        .get::<CanaryPolicy>(&name)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let mut c = stored.value;
    let from = c.status.phase;
    let allowed = match wanted {
        CanaryPhase::Paused => from == CanaryPhase::Progressing,
        CanaryPhase::Progressing => from == CanaryPhase::Paused,
        _ => !from.is_final(),
    };
    if !allowed && from != wanted {
        return Err(ApiError::bad(format!(
            "Invalid canary policy: '{name}' is {}, it cannot become {}",
            from.as_str(),
            wanted.as_str()
        )));
    }
    c.status.phase = wanted;
    api.persistence.update(&c, stored.version).await?;
    api.archive(
        ArtifactKind::CanaryPolicy,
        &name,
        "update",
        Node::Str(wanted.as_str().into()),
    )
    .await;
    let status = to_node(&AnyArtifact::CanaryPolicy(c)).to_json()["status"].clone();
    Ok(body(StatusCode::ACCEPTED, format, &status))
}

// ------------------------------------------------------------------------------------------
// Bulk

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bulk {
    Create,
    Update,
    Delete,
}

async fn bulk(
    api: &Api,
    headers: &HeaderMap,
    params: &[(String, String)],
    bytes: &[u8],
    op: Bulk,
) -> ApiResult {
    let format = accept(headers)?;
    if op != Bulk::Delete {
        content_type(headers)?;
    }
    let validate_only = flag(params, "validate_only");
    let docs = documents(bytes)?;
    // Every document is read before anything is written.
    let mut planned = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let Some(kind) = vamp_core::dsl::document_kind(&doc) else {
            return Err(ApiError::bad(format!(
                "Document {}: every document needs a 'kind' (and a 'name'). Nothing was stored.",
                i + 1
            )));
        };
        let name = vamp_core::dsl::lookup_string(&doc, "name")
            .ok()
            .flatten()
            .unwrap_or_default();
        let read: Result<_, ApiError> = (|| {
            if kind == ArtifactKind::Deployment {
                Ok((kind, name.clone(), Some(Api::blueprint_of(doc)?), None))
            } else if op == Bulk::Delete && CRUD_KINDS.contains(&kind) {
                // As Vamp's: a deletion reads the document's kind and name alone (a
                // reference such as `{kind: breed, name: x}` deletes the breed).
                if name.is_empty() {
                    return Err(ApiError::bad("A document to delete needs a 'name'."));
                }
                vamp_core::persistence::validate_name(&name)?;
                Ok((kind, name.clone(), None, None))
            } else if CRUD_KINDS.contains(&kind) {
                let artifact = read_node(doc, Some(kind))?;
                Ok((kind, artifact.name().to_owned(), None, Some(artifact)))
            } else {
                Err(ApiError::bad(format!(
                    "Unexpected resource: '{}'.",
                    kind.as_str()
                )))
            }
        })();
        planned.push(read.map_err(|e| e.in_document(i + 1, kind, &name))?);
    }
    let _write = api.writes.lock().await;
    // Every document is applied to a stage over the store, then the stage is committed as one
    // batch: all documents or none (the answer names the failing one).
    let staged = Arc::new(vamp_core::layers::Staged::new(Arc::clone(&api.persistence)));
    let recorded = Arc::new(vamp_core::memory::InMemoryMetrics::new());
    let tx = api.over(
        Arc::clone(&staged) as Arc<DynPersistenceStore>,
        Arc::clone(&recorded) as Arc<DynEventStore>,
    );
    let mut results = Vec::new();
    // Deletions run in reverse (a deployment before the blueprint and breeds it came from).
    if op == Bulk::Delete {
        planned.reverse();
    }
    let count = planned.len();
    for (i, (kind, name, blueprint, artifact)) in planned.into_iter().enumerate() {
        let n = if op == Bulk::Delete { count - i } else { i + 1 };
        let applied: Result<(), ApiError> = async {
            match (op, blueprint, artifact) {
                (Bulk::Delete, Some(bp), _) if tx.deployment(&name).await?.is_some() => {
                    let d = tx.slice(&name, &bp, false).await?;
                    results.push(deployment_json(&d, false));
                }
                (Bulk::Delete, Some(_), _) => {}
                (Bulk::Delete, None, _) => {
                    if let Some((stored, _)) = tx.find_versioned(kind, &name).await? {
                        tx.delete_artifact(kind, &name).await?;
                        results.push(artifact_json(&stored));
                    }
                }
                (_, Some(bp), _) => {
                    let name = (!name.is_empty()).then_some(name.as_str());
                    let (d, _) = tx.deploy(name, &bp, false).await?;
                    results.push(deployment_json(&d, false));
                }
                (_, None, Some(a)) => {
                    let stored = tx.put_artifact(a, false, op == Bulk::Create).await?;
                    results.push(artifact_json(&stored));
                }
                _ => {}
            }
            Ok(())
        }
        .await;
        applied.map_err(|e| e.in_document(n, kind, &name))?;
    }
    if !validate_only {
        staged.commit().await?;
        // The documents' events, now that they are stored, oldest first.
        let mut events = recorded
            .query(
                &EventQuery {
                    tags: Vec::new(),
                    event_type: None,
                    timestamp: None,
                    aggregator: None,
                },
                ListOptions::all(),
            )
            .await?;
        events.reverse();
        for mut e in events {
            e.id = None;
            if let Err(err) = api.events.publish(e).await {
                tracing::warn!(error = %err, "an event could not be published");
            }
        }
    }
    Ok(body(
        StatusCode::ACCEPTED,
        format,
        &serde_json::Value::Array(results),
    ))
}

async fn bulk_create(
    State(api): Shared,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    bulk(&api, &headers, &params, &bytes, Bulk::Create).await
}

async fn bulk_update(
    State(api): Shared,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    bulk(&api, &headers, &params, &bytes, Bulk::Update).await
}

async fn bulk_delete(
    State(api): Shared,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    bulk(&api, &headers, &params, &bytes, Bulk::Delete).await
}

// ------------------------------------------------------------------------------------------
// Events

/// An event query from `tag=`/`type=` parameters, or from a query body.
fn event_query(params: &[(String, String)], bytes: &[u8]) -> Result<EventQuery, ApiError> {
    if !bytes.iter().all(u8::is_ascii_whitespace)
        && let AnyArtifact::EventQuery(q) = one(bytes, ArtifactKind::EventQuery)?
    {
        return Ok(q);
    }
    let tags: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "tag" || k == "tags")
        .map(|(_, v)| v.clone())
        .collect();
    Ok(EventQuery {
        tags,
        event_type: param(params, "type").map(str::to_owned),
        timestamp: None,
        aggregator: None,
    })
}

fn event_json(e: &Event) -> serde_json::Value {
    artifact_json(&AnyArtifact::Event(e.clone()))
}

async fn publish_event(State(api): Shared, headers: HeaderMap, bytes: Bytes) -> ApiResult {
    let format = accept(&headers)?;
    content_type(&headers)?;
    let AnyArtifact::Event(event) = one(&bytes, ArtifactKind::Event)? else {
        return Err(ApiError::bad("Unexpected resource: 'events'."));
    };
    let stored = api.events.publish(event).await?;
    Ok(body(StatusCode::CREATED, format, &event_json(&stored)))
}

async fn list_events(
    State(api): Shared,
    headers: HeaderMap,
    Query(params): Params,
    bytes: Bytes,
) -> ApiResult {
    let format = accept(&headers)?;
    let query = event_query(&params, &bytes)?;
    api.check_tags(&query.tags)?;
    if let Some(aggregator) = &query.aggregator {
        let result = api
            .events
            .aggregate(&query, aggregator.aggregator_type.into(), &aggregator.field)
            .await?;
        return Ok(body(
            StatusCode::OK,
            format,
            &serde_json::json!({ "value": result.value }),
        ));
    }
    // Counted, then only the page read: a request costs its page, not every event stored.
    let total = api
        .events
        .aggregate(&query, vamp_core::metrics::Aggregation::Count, "value")
        .await?
        .value
        .map_or(0, |n| n as usize);
    let page = Page::of(&params, total)?;
    let events = api
        .events
        .query(&query, ListOptions::page(page.offset(), page.per_page))
        .await?;
    Ok(page.response(
        format,
        "/api/v1/events",
        events.iter().map(event_json).collect(),
    ))
}

/// One open event stream, counted until it is dropped.
struct StreamSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Api {
    /// Event streams open now.
    pub fn event_streams(&self) -> usize {
        self.streams.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn event_stream(
    State(api): Shared,
    Query(params): Params,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let query = event_query(&params, &bytes)?;
    api.check_tags(&query.tags)?;
    // Counted while the stream lives: dropped with it when the client goes.
    let counted = stream_slot(&api)?;
    let stream = api
        .events
        .subscribe(query.tags.clone(), query.event_type.clone())
        .filter_map(|item| async move {
            match item {
                Ok(e) => Some(Ok::<_, std::convert::Infallible>(
                    SseEvent::default()
                        .event(e.event_type.clone())
                        .data(event_json(&e).to_string()),
                )),
                Err(err) => {
                    tracing::warn!(error = %err, "event stream");
                    None
                }
            }
        });
    Ok(sse(&api, counted, stream))
}

/// The answer of a Server-Sent Events stream: kept alive, ended by the server's shutdown, and
/// counted in `slot` while it lives.
fn sse(
    api: &Api,
    slot: StreamSlot,
    stream: impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>
    + Send
    + 'static,
) -> Response {
    let mut shutdown = api.shutdown.clone();
    let stream = stream
        .take_until(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .map(move |item| {
            let _slot = &slot;
            item
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(api.options.keep_alive))
        .into_response()
}

/// Opens a counted stream slot, or refuses past `--max-event-streams`.
fn stream_slot(api: &Api) -> Result<StreamSlot, ApiError> {
    let max = api.options.limits.max_event_streams;
    let open = Arc::clone(&api.streams);
    if open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= max {
        open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: Some(format!(
                "{max} event streams are open, the most this server serves at once (--max-event-streams)."
            )),
        });
    }
    Ok(StreamSlot(open))
}

/// `GET /logs?level=INFO&logger=PREFIX` (also `/log`): the server's own log records from now
/// on, as Server-Sent Events of type `log` (`crate::logs`); records a slow client could not
/// take are skipped, and a `log` event from `vamp` says how many.
async fn log_stream(State(api): Shared, Query(params): Params) -> Result<Response, ApiError> {
    let least = crate::logs::level(param(&params, "level")).map_err(ApiError::bad)?;
    let logger = param(&params, "logger")
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    let feed = crate::logs::feed().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: Some(
            "This process keeps no log feed (vamp_examples::logs::install was not called).".into(),
        ),
    })?;
    let counted = stream_slot(&api)?;
    let stream =
        tokio_stream::wrappers::BroadcastStream::new(feed.subscribe()).filter_map(move |item| {
            let logger = logger.clone();
            async move {
                let record = match item {
                    Ok(r) => r,
                    Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                        Arc::new(crate::logs::LogRecord::skipped(n))
                    }
                };
                crate::logs::shown(&record, least, logger.as_deref()).then(|| {
                    Ok::<_, std::convert::Infallible>(
                        SseEvent::default()
                            .event("log")
                            .data(record.to_json().to_string()),
                    )
                })
            }
        });
    Ok(sse(&api, counted, stream))
}

// ------------------------------------------------------------------------------------------
// Docker compose, the gateway side's keys, the scheduler

/// `POST /docker-compose?name=X`: a docker-compose file becomes the blueprint `X` (201, the
/// blueprint as YAML, with a comment per field left out).
async fn docker_compose(State(api): Shared, Query(params): Params, bytes: Bytes) -> ApiResult {
    let name = param(&params, "name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("A blueprint name is required: ?name=…"))?
        .to_owned();
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad("The request body is not UTF-8 text."))?;
    let compose = vamp_core::dsl::read_docker_compose(text, &name)?;
    let blueprint = AnyArtifact::Blueprint(compose.blueprint);
    if !flag(&params, "validate_only") {
        let _write = api.writes.lock().await;
        api.put_artifact(blueprint.clone(), false, true).await?;
    }
    let mut yaml: String = compose.ignored.iter().map(|i| format!("# {i}\n")).collect();
    yaml.push_str(&vamp_core::dsl::to_yaml(&blueprint));
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/x-yaml")],
        yaml,
    )
        .into_response())
}

impl Api {
    fn kv(&self) -> Result<(&Arc<DynKeyValueStore>, &str), ApiError> {
        self.kv
            .as_ref()
            .map(|(kv, ns)| (kv, ns.as_str()))
            .ok_or_else(ApiError::not_found)
    }
}

fn check_vga(kind: &str) -> Result<(), ApiError> {
    if kind == "haproxy" {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// `GET /vga/haproxy/{name}/configuration`: the configuration the gateway driver rendered.
async fn get_vga_configuration(
    State(api): Shared,
    Path((kind, name)): Path<(String, String)>,
) -> ApiResult {
    check_vga(&kind)?;
    let (kv, ns) = api.kv()?;
    let key = keys::haproxy_configuration(ns, &name)?;
    let config = kv.get_string(&key).await?.ok_or_else(ApiError::not_found)?;
    Ok(text(StatusCode::OK, config))
}

/// `GET /vga/haproxy/{name}/template`: a template override in the key-value store (this
/// renderer has no template and reports an override as ignored).
async fn get_template(State(api): Shared, Path((kind, name)): Path<(String, String)>) -> ApiResult {
    check_vga(&kind)?;
    let (kv, ns) = api.kv()?;
    let key = keys::haproxy_template(ns, &name)?;
    Ok(text(
        StatusCode::OK,
        kv.get_string(&key).await?.unwrap_or_default(),
    ))
}

async fn put_template(
    State(api): Shared,
    Path((kind, name)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    check_vga(&kind)?;
    let (kv, ns) = api.kv()?;
    let key = keys::haproxy_template(ns, &name)?;
    let l = &api.options.limits;
    if bytes.len() > l.max_template_bytes {
        return Err(ApiError::bad(format!(
            "A template is at most {} bytes.",
            l.max_template_bytes
        )));
    }
    let stored = kv
        .list_all(&keys::gateways(ns)?.child("haproxy")?)
        .await?
        .into_iter()
        .filter(|k| k.to_string().ends_with("/template") && *k != key)
        .count();
    if stored >= l.max_templates {
        return Err(ApiError::bad(format!(
            "{stored} templates are stored, the most this server keeps."
        )));
    }
    kv.put(&key, bytes.clone()).await?;
    api.publish(
        vec![
            "marshaller:template".into(),
            "type:haproxy".into(),
            format!("name:{name}"),
        ],
        Node::Null,
        "event",
    )
    .await;
    Ok(text(
        StatusCode::ACCEPTED,
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

async fn delete_template(
    State(api): Shared,
    Path((kind, name)): Path<(String, String)>,
) -> ApiResult {
    check_vga(&kind)?;
    let (kv, ns) = api.kv()?;
    kv.delete(&keys::haproxy_template(ns, &name)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT|POST /config`: a dynamic configuration (a map of `vamp.*` keys, `vamp.http-api.*`
/// left out) stored in the key-value store (`/vamp/<ns>/configuration/applied`) → 202. It is
/// not reloaded: the server's own configuration is fixed at start.
async fn put_config(State(api): Shared, headers: HeaderMap, bytes: Bytes) -> ApiResult {
    let format = accept(&headers)?;
    content_type(&headers)?;
    let mut docs = documents(&bytes)?;
    let Some(Node::Map(map)) = (!docs.is_empty()).then(|| docs.swap_remove(0)) else {
        return Err(ApiError::bad("Configuration is not valid."));
    };
    let mut json = Node::Map(map).to_json();
    if let Some(o) = json.as_object_mut() {
        o.retain(|k, _| !k.starts_with("vamp.http-api"));
        if let Some(vamp) = o.get_mut("vamp").and_then(|v| v.as_object_mut()) {
            vamp.remove("http-api");
        }
    }
    let (kv, ns) = api.kv()?;
    kv.put(&keys::configuration_applied(ns)?, json.to_string().into())
        .await?;
    Ok(body(StatusCode::ACCEPTED, format, &json))
}

async fn mesos_config(headers: HeaderMap) -> ApiResult {
    let format = accept(&headers).unwrap_or(Format::Json);
    Ok(body(
        StatusCode::OK,
        format,
        &serde_json::Value::String(String::new()),
    ))
}

/// `GET /scheduler/nodes`: the machines instances run on (the hosts the scheduler reports).
async fn scheduler_nodes(
    State(api): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    let format = accept(&headers)?;
    let mut hosts: BTreeMap<String, usize> = BTreeMap::new();
    for s in api.scheduler.services().await? {
        for i in &s.instances {
            *hosts.entry(i.host.clone()).or_default() += 1;
        }
    }
    let items = hosts
        .into_iter()
        .map(|(host, instances)| serde_json::json!({ "name": host, "instances": instances }))
        .collect();
    paged(format, "/api/v1/scheduler/nodes", &params, items)
}

/// `GET /scheduler/routing?selector=…`: the services the scheduler runs, with their
/// instances' addresses (routing groups); `selector` filters by a substring of the name.
async fn scheduler_routing(
    State(api): Shared,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    let format = accept(&headers)?;
    let selector = param(&params, "selector").unwrap_or("");
    let items = api
        .scheduler
        .services()
        .await?
        .into_iter()
        .filter(|s| s.spec.id.to_string().contains(selector))
        .map(|s| {
            let instances: Vec<serde_json::Value> = s
                .instances
                .iter()
                .map(|i| {
                    serde_json::json!({
                        "name": i.name,
                        "host": i.host,
                        "ports": i.ports,
                        "running": i.running,
                    })
                })
                .collect();
            serde_json::json!({ "name": s.spec.id.to_string(), "instances": instances })
        })
        .collect();
    paged(format, "/api/v1/scheduler/routing", &params, items)
}

/// `GET /scheduler/unowned`: the services in the scheduler's namespace that carry Vamp's
/// labels but belong to another control plane (`owner`) or to none (`owner: null`). This
/// server neither updates nor removes them; an operator adopts or removes each.
async fn list_unowned(State(api): Shared, headers: HeaderMap, Query(params): Params) -> ApiResult {
    let format = accept(&headers)?;
    let unowned = match &api.owned {
        Some(owned) => owned.unowned().await?,
        None => Vec::new(),
    };
    let items = unowned
        .iter()
        .map(|s| {
            serde_json::json!({
                "deployment": s.spec.id.deployment,
                "cluster": s.spec.id.cluster,
                "service": s.spec.id.service,
                "owner": vamp_core::layers::owner_of(s),
                "deployable": s.spec.deployable.definition,
                "instances": s.instances.len(),
            })
        })
        .collect();
    paged(format, "/api/v1/scheduler/unowned", &params, items)
}

/// The service a `/scheduler/unowned/…` request names: `{deployment, cluster, service}`.
fn unowned_target(
    api: &Api,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<(Arc<OwnedScheduler>, vamp_core::scheduler::ServiceId), ApiError> {
    content_type(headers)?;
    let owned = api.owned.clone().ok_or_else(|| {
        ApiError::bad("This server does not record owners: every service is its own.")
    })?;
    let docs = documents(bytes)?;
    let Some(Node::Map(m)) = docs.first() else {
        return Err(ApiError::bad("Expected {deployment, cluster, service}."));
    };
    let field = |k: &str| {
        m.get(k)
            .and_then(Node::scalar_string)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::bad(format!("Can't find any value for path: /{k}")))
    };
    let id = vamp_core::scheduler::ServiceId::new(
        field("deployment")?,
        field("cluster")?,
        field("service")?,
    );
    Ok((owned, id))
}

/// `POST /scheduler/unowned/adopt` with `{deployment, cluster, service}`: the service is
/// deployed again with this control plane's identity, and reconciled from then on (removed if
/// no stored deployment wants it). Answers 202 once the service is found unowned (the
/// scheduler takes its time); 200 with `adopted: false` for a service already its own.
async fn adopt_unowned(State(api): Shared, headers: HeaderMap, bytes: Bytes) -> ApiResult {
    unowned_action(&api, &headers, &bytes, "adopt").await
}

/// `POST /scheduler/unowned/remove` with `{deployment, cluster, service}`: removes a
/// service of another control plane or of none. Answers 202 once the service is found
/// unowned; 400 for a service of this control plane, 404 for none.
async fn remove_unowned(State(api): Shared, headers: HeaderMap, bytes: Bytes) -> ApiResult {
    unowned_action(&api, &headers, &bytes, "remove").await
}

async fn unowned_action(
    api: &Arc<Api>,
    headers: &HeaderMap,
    bytes: &Bytes,
    action: &'static str,
) -> ApiResult {
    let format = accept(headers)?;
    let (owned, id) = unowned_target(api, headers, bytes)?;
    let answer = |status, done: bool| {
        let key = if action == "adopt" {
            "adopted"
        } else {
            "removed"
        };
        Ok(body(
            status,
            format,
            &serde_json::json!({ "service": id.to_string(), key: done }),
        ))
    };
    match owned.unowned_service(&id).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(ApiError::not_found()),
        Err(vamp_core::Error::Invalid { .. }) if action == "adopt" => {
            return answer(StatusCode::OK, false);
        }
        Err(e) => return Err(e.into()),
    }
    // One action per service at a time: repeated requests do not pile up tasks.
    if !api.unowned_actions.lock().insert(id.clone()) {
        return answer(StatusCode::ACCEPTED, false);
    }
    let actions = Arc::clone(&api.unowned_actions);
    let target = id.clone();
    tokio::spawn(async move {
        let result = if action == "adopt" {
            owned.adopt(&target).await
        } else {
            owned.remove_unowned(&target).await
        };
        match result {
            Ok(done) => tracing::info!(service = %target, action, done, "unowned service"),
            Err(e) => tracing::warn!(service = %target, action, error = %e, "unowned service"),
        }
        actions.lock().remove(&target);
    });
    answer(StatusCode::ACCEPTED, true)
}

/// `GET /stats`: how many artifacts of each kind are stored, services and instances the
/// scheduler runs, and the server's uptime.
async fn stats(State(api): Shared, headers: HeaderMap) -> ApiResult {
    let format = accept(&headers)?;
    let mut persistence = serde_json::Map::new();
    for kind in CRUD_KINDS.iter().chain([&ArtifactKind::Deployment]) {
        let n = api.persistence.list(*kind, ListOptions::all()).await?.len();
        persistence.insert(kind.as_str().into(), n.into());
    }
    let services = api.scheduler.services().await?;
    let instances: usize = services.iter().map(|s| s.instances.len()).sum();
    Ok(body(
        StatusCode::OK,
        format,
        &serde_json::json!({
            "persistence": persistence,
            "container_driver": { "services": services.len(), "instances": instances },
            "system": { "uptime_seconds": api.started.elapsed().as_secs() },
        }),
    ))
}

// ------------------------------------------------------------------------------------------
// Health and metrics, info and config

/// The value of the newest event of `event_type` carrying `tags` within `window` seconds.
async fn latest(
    api: &Api,
    tags: Vec<String>,
    event_type: &str,
    params: &[(String, String)],
) -> Result<Option<serde_json::Value>, ApiError> {
    let window: i64 = param(params, "window")
        .and_then(|w| w.parse().ok())
        .unwrap_or(120);
    let query = EventQuery {
        tags,
        event_type: Some(event_type.to_owned()),
        timestamp: Some(TimeRange {
            lt: None,
            lte: None,
            gt: None,
            gte: Some(format!("now-{window}s")),
        }),
        aggregator: None,
    };
    let events = api.events.query(&query, ListOptions::page(0, 1)).await?;
    Ok(events.first().map(|e| e.value.to_json()))
}

/// `gateways/{g}[/routes/{r}]…`: the tags of a health or metrics path (without the metric).
fn path_tags(segments: &[&str]) -> Option<Vec<String>> {
    match segments {
        ["gateways", rest @ ..] => {
            // A gateway name may have up to three segments; `routes/` starts a route.
            let split = rest.iter().position(|s| *s == "routes");
            let (gateway, route) = match split {
                Some(i) => (&rest[..i], rest.get(i + 1..)),
                None => (rest, None),
            };
            if gateway.is_empty() {
                return None;
            }
            // Gateway-level events carry `gateway`, route-level ones `route` (runtime.md §5.4).
            let mut tags = vec![format!("gateways:{}", gateway.join("/"))];
            match route {
                Some([]) => return None,
                Some(route) => {
                    tags.push(format!("routes:{}", route.join("/")));
                    tags.push("route".into());
                }
                None => tags.push("gateway".into()),
            }
            Some(tags)
        }
        ["deployments", d, rest @ ..] => {
            let mut tags = vec![format!("deployments:{d}")];
            let mut it = rest.iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                match *k {
                    "clusters" => tags.push(format!("clusters:{v}")),
                    "services" => tags.push(format!("services:{v}")),
                    "ports" => tags.push(format!("ports:{v}")),
                    _ => return None,
                }
            }
            Some(tags)
        }
        _ => None,
    }
}

async fn health(
    State(api): Shared,
    Path(path): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    let format = accept(&headers)?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.contains(&"instances") {
        return Err(ApiError::not_found());
    }
    let mut tags = path_tags(&segments).ok_or_else(ApiError::not_found)?;
    tags.push("health".into());
    let value = latest(&api, tags, "health", &params)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(body(StatusCode::OK, format, &value))
}

async fn metrics(
    State(api): Shared,
    Path(path): Path<String>,
    headers: HeaderMap,
    Query(params): Params,
) -> ApiResult {
    let format = accept(&headers)?;
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.contains(&"instances") {
        return Err(ApiError::not_found());
    }
    let metric = segments.pop().ok_or_else(ApiError::not_found)?.to_owned();
    let mut tags = path_tags(&segments).ok_or_else(ApiError::not_found)?;
    tags.push(format!("metrics:{metric}"));
    let value = latest(&api, tags, "metrics", &params)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(body(StatusCode::OK, format, &value))
}

async fn info(State(api): Shared, headers: HeaderMap, Query(params): Params) -> ApiResult {
    let format = accept(&headers)?;
    let on: BTreeSet<&str> = params
        .iter()
        .filter(|(k, _)| k == "on")
        .flat_map(|(_, v)| v.split(','))
        .collect();
    let wanted = |c: &str| on.is_empty() || on.contains(c);
    let mut out = serde_json::Map::new();
    out.insert("message".into(), "Hi, I'm Vamp! How are you?".into());
    out.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    out.insert("event_streams".into(), api.event_streams().into());
    // What the API reads from: how many deployments it holds, and records it cannot read.
    out.insert(
        "catalog".into(),
        serde_json::json!({
            "loaded": api.catalog.is_loaded(),
            "deployments": api.catalog.deployment_count(),
            "problems": api.catalog.problems(),
        }),
    );
    if let Some(owned) = &api.owned {
        out.insert("identity".into(), owned.owner().into());
    }
    if let Some(elector) = &api.elector {
        let l = elector.leadership();
        out.insert("leader".into(), l.leader.into());
        out.insert("leader_token".into(), l.token.into());
        out.insert("replica".into(), elector.options().holder.clone().into());
        out.insert("leader_id".into(), l.leader_id.into());
    }
    let security = api.guard.security();
    out.insert(
        "security".into(),
        serde_json::json!({
            "authentication": if !security.tokens.is_empty() {
                "token"
            } else if security.client_certificates {
                "certificate"
            } else {
                "none"
            },
            "tls": security.tls,
            "warnings": security.warnings(),
        }),
    );
    let mut failed = false;
    let mut component = |name: &str, label: String, result: Result<(), vamp_core::Error>| {
        let mut c = serde_json::Map::new();
        c.insert("type".into(), label.into());
        match result {
            Ok(()) => {
                c.insert("status".into(), "ok".into());
            }
            Err(e) => {
                failed = true;
                c.insert("status".into(), "failed".into());
                c.insert("error".into(), e.to_string().into());
            }
        }
        out.insert(name.into(), c.into());
    };
    if wanted("persistence") {
        let r = api
            .persistence
            .list(ArtifactKind::Breed, ListOptions::page(0, 1))
            .await
            .map(drop);
        component("persistence", api.persistence.to_string(), r);
    }
    if wanted("pulse") {
        let r = api
            .events
            .query(
                &EventQuery {
                    tags: Vec::new(),
                    event_type: None,
                    timestamp: None,
                    aggregator: None,
                },
                ListOptions::page(0, 1),
            )
            .await
            .map(drop);
        component("pulse", api.events.to_string(), r);
    }
    if wanted("container_driver") {
        let r = api.scheduler.services().await.map(drop);
        component("container_driver", api.scheduler.to_string(), r);
    }
    if let Some(loops) = &api.loops
        && wanted("loops")
    {
        let all: serde_json::Map<String, serde_json::Value> = loops
            .all()
            .into_iter()
            .map(|(name, state)| (name.to_owned(), state.to_json()))
            .collect();
        out.insert("loops".into(), all.into());
        let degraded = loops.degraded();
        out.insert("degraded".into(), degraded.into());
        failed |= degraded;
    }
    let status = if failed {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    Ok(body(status, format, &serde_json::Value::Object(out)))
}

async fn config(State(api): Shared, headers: HeaderMap, Query(params): Params) -> ApiResult {
    let format = accept(&headers).unwrap_or(Format::Json);
    if param(&params, "type") == Some("dynamic") {
        // What `PUT /config` stored.
        let (kv, ns) = api.kv()?;
        let stored = kv
            .get_string(&keys::configuration_applied(ns)?)
            .await?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        return Ok(body(StatusCode::OK, format, &stored));
    }
    let flatten = flag(&params, "flatten");
    let config = &api.options.config;
    let value = if flatten {
        serde_json::Value::Object(config.clone().into_iter().collect())
    } else {
        nest(config)
    };
    Ok(body(StatusCode::OK, format, &value))
}

async fn config_key(State(api): Shared, Path(key): Path<String>, headers: HeaderMap) -> ApiResult {
    let format = accept(&headers).unwrap_or(Format::Json);
    let value = api
        .options
        .config
        .get(&key)
        .cloned()
        .ok_or_else(ApiError::not_found)?;
    Ok(body(
        StatusCode::OK,
        format,
        &serde_json::json!({ key: value }),
    ))
}

/// `a.b.c: v` keys as nested objects.
fn nest(flat: &BTreeMap<String, serde_json::Value>) -> serde_json::Value {
    let mut root = serde_json::Map::new();
    for (key, value) in flat {
        let mut node = &mut root;
        let parts: Vec<&str> = key.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            let entry = node
                .entry((*part).to_owned())
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            if !entry.is_object() {
                *entry = serde_json::Value::Object(serde_json::Map::new());
            }
            node = entry.as_object_mut().expect("an object");
        }
        node.insert(parts[parts.len() - 1].to_owned(), value.clone());
    }
    serde_json::Value::Object(root)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::stream::BoxStream;
    use vamp_core::memory::{InMemoryMetrics, InMemoryPersistence, InMemoryScheduler};
    use vamp_core::persistence::{
        ArtifactRecord, ChangeOptions, PersistenceCapabilities, PersistenceStore,
    };

    use super::*;

    /// A store whose next `n` versioned deployment writes lose to "another writer".
    #[derive(Debug, Default)]
    struct Contended {
        inner: InMemoryPersistence,
        conflicts: AtomicUsize,
    }

    impl std::fmt::Display for Contended {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Contended")
        }
    }

    #[async_trait::async_trait]
    impl PersistenceStore for Contended {
        async fn read(
            &self,
            kind: ArtifactKind,
            name: &str,
        ) -> vamp_core::Result<Option<ArtifactRecord>> {
            self.inner.read(kind, name).await
        }
        async fn write(
            &self,
            writes: Vec<ArtifactWrite>,
        ) -> vamp_core::Result<Vec<Option<vamp_core::kv::Version>>> {
            let versioned = writes.iter().any(|w| {
                w.kind == ArtifactKind::Deployment
                    && matches!(
                        w.op,
                        WriteOp::Put {
                            mode: PutMode::Update(_),
                            ..
                        }
                    )
            });
            if versioned
                && self
                    .conflicts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(vamp_core::Error::Conflict {
                    backend: "Contended".into(),
                    key: "deployments/sava".into(),
                    expected: 1,
                    found: Some(2),
                });
            }
            self.inner.write(writes).await
        }
        async fn list(
            &self,
            kind: ArtifactKind,
            opts: ListOptions,
        ) -> vamp_core::Result<Vec<ArtifactRecord>> {
            self.inner.list(kind, opts).await
        }
        async fn history(
            &self,
            kind: ArtifactKind,
            name: &str,
        ) -> vamp_core::Result<Vec<ArtifactRecord>> {
            self.inner.history(kind, name).await
        }
        fn changes(
            &self,
            opts: ChangeOptions,
        ) -> BoxStream<'static, vamp_core::Result<ArtifactRecord>> {
            self.inner.changes(opts)
        }
        fn capabilities(&self) -> PersistenceCapabilities {
            self.inner.capabilities()
        }
        async fn head(&self) -> vamp_core::Result<Option<Version>> {
            self.inner.head().await
        }
    }

    const V1: &str = "name: sava\nclusters:\n  sava:\n    breed: {name: 'sava:1.0', deployable: sava, ports: {webport: 8080/http}}\n";

    /// A merge that loses a race with another writer (the reconcile loop storing statuses) is
    /// planned again from the newest deployment instead of failing with a 409; only a store
    /// that keeps losing makes it fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_merge_that_loses_a_race_is_planned_again() {
        let store = Arc::new(Contended::default());
        let api = Arc::new(Api::new(
            Arc::clone(&store) as _,
            Arc::new(InMemoryMetrics::new()) as _,
            Arc::new(InMemoryScheduler::new()) as _,
            ApiOptions::default(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, api.router()).await });
        let client = reqwest::Client::new();
        let send = async |method: reqwest::Method, path: &str, body: String| {
            client
                .request(method, format!("http://{addr}/api/v1{path}"))
                .header("Accept", "application/json")
                .header("Content-Type", "application/x-yaml")
                .body(body)
                .send()
                .await
                .unwrap()
        };
        let r = send(reqwest::Method::POST, "/deployments", V1.into()).await;
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
        store.conflicts.store(2, Ordering::SeqCst);
        let r = send(
            reqwest::Method::PUT,
            "/deployments/sava",
            V1.replace("sava:1.0", "sava:1.1"),
        )
        .await;
        assert_eq!(
            r.status(),
            reqwest::StatusCode::ACCEPTED,
            "{}",
            r.text().await.unwrap()
        );
        let d = store
            .inner
            .get::<Deployment>("sava")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.value.clusters[0].services.len(), 2);
        store.conflicts.store(100, Ordering::SeqCst);
        let r = send(
            reqwest::Method::PUT,
            "/deployments/sava",
            V1.replace("sava:1.0", "sava:1.2"),
        )
        .await;
        assert_eq!(r.status(), reqwest::StatusCode::CONFLICT);
        server.abort();
    }
}
