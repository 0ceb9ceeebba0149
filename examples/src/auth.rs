//! Who may call the API, and from where: bearer tokens with roles, same-origin sessions for
//! the web console, mutual TLS, and the browser checks (host, origin, CORS, content types).
//!
//! Everything here is one layer ([`guard`]) that [`crate::api::Api::router`] puts around the
//! whole router, so a route is protected because it is in the router, not because its
//! handler remembered. Only two requests pass without a caller: `GET /healthz` (a liveness
//! probe that answers `204` and no data) and `POST /api/v1/login` (which checks the token it
//! is given itself).
//!
//! | check | refused with |
//! |---|---|
//! | a loopback listener's `Host` is a loopback name or address, or one of [`Security::allowed_hosts`] (DNS rebinding) | `403` |
//! | a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an origin not in [`Security::cors_origins`] | `403`, no grant |
//! | a write (`POST`, `PUT`, `PATCH`, `DELETE`) whose `Origin` is neither the server's own nor an allowed one | `403` |
//! | a write whose `Content-Type` is not JSON, YAML, JavaScript or `application/octet-stream`, or a `POST`/`PUT`/`PATCH` body without one (so no simple cross-origin form or text request changes anything) | `415` |
//! | no credential, or a wrong one, when tokens are configured | `401` with `WWW-Authenticate: Bearer` |
//! | a `read` caller's write | `403` |
//!
//! Tokens are never logged or shown: each is kept as its SHA-256 digest and compared in
//! constant time against every configured digest.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The liveness probe's path (no authentication, no data).
pub const LIVENESS_PATH: &str = "/healthz";
/// The login route: a token in, a session cookie out.
pub const LOGIN_PATH: &str = "/api/v1/login";
/// The logout route: the session ends.
pub const LOGOUT_PATH: &str = "/api/v1/logout";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "vamp_session";
/// The shortest token accepted (a guessable token is refused at start).
pub const MIN_TOKEN_LEN: usize = 16;
/// The environment variable of the single write token.
pub const TOKEN_ENV: &str = "VAMP_HTTP_API_TOKEN";

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `GET` and `HEAD` (event streams included).
    Read,
    /// Everything.
    Write,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            _ => None,
        }
    }

    /// The role's name in token files and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// One configured token: a name, a role and the token's digest (the token itself is not
/// kept).
#[derive(Clone)]
struct Token {
    name: String,
    role: Role,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// The API's tokens. `Debug` shows names and roles, never a token.
#[derive(Clone, Debug, Default)]
pub struct Tokens(Vec<Token>);

impl Tokens {
    /// No tokens: nobody needs one (the loopback default).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds a token.
    ///
    /// # Errors
    /// A token shorter than [`MIN_TOKEN_LEN`], with whitespace, or a name given twice.
    pub fn add(&mut self, name: &str, role: Role, token: &str) -> Result<(), String> {
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "token name '{}' must be 1-64 printable characters without spaces",
                name.escape_debug()
            ));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "token '{name}' is shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        if token.len() > 4096 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "token '{name}' must be at most 4096 characters without whitespace"
            ));
        }
        if self.0.iter().any(|t| t.name == name) {
            return Err(format!("token name '{name}' is given twice"));
        }
        let digest = digest(token.as_bytes());
        if self.0.iter().any(|t| bool::from(t.digest.ct_eq(&digest))) {
            return Err(format!("token '{name}' is the same as another token"));
        }
        self.0.push(Token {
            name: name.to_owned(),
            role,
            digest,
        });
        Ok(())
    }

    /// One `write` token named after [`TOKEN_ENV`] (its value).
    ///
    /// # Errors
    /// As [`Tokens::add`].
    pub fn single(token: &str) -> Result<Self, String> {
        let mut t = Self::none();
        t.add(TOKEN_ENV, Role::Write, token.trim())?;
        Ok(t)
    }

    /// Reads a token file: one token a line, `<name> <role> <token>` (role `read` or
    /// `write`), blank lines and `#` comments ignored.
    ///
    /// ```
    /// use vamp_examples::auth::{Role, Tokens};
    /// let t = Tokens::parse("# the team\nci write 0123456789abcdef0123\nviewer read fedcba9876543210fedc\n").unwrap();
    /// assert_eq!(t.len(), 2);
    /// assert_eq!(t.authenticate("fedcba9876543210fedc"), Some(("viewer", Role::Read)));
    /// assert_eq!(t.authenticate("nope"), None);
    /// ```
    ///
    /// # Errors
    /// A malformed line (named by its number; the token is never shown), or a file with no
    /// token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut t = Self::none();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [name, role, token] = parts[..] else {
                return Err(format!("line {}: expected '<name> <role> <token>'", i + 1));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "line {}: role '{}' is neither 'read' nor 'write'",
                    i + 1,
                    role.escape_debug()
                )
            })?;
            t.add(name, role, token)
                .map_err(|e| format!("line {}: {e}", i + 1))?;
        }
        if t.is_empty() {
            return Err("no token in the file".into());
        }
        Ok(t)
    }

    /// The name and role of the token `presented`, comparing it with every configured token
    /// in constant time (no early exit, digests of equal length).
    pub fn authenticate(&self, presented: &str) -> Option<(&str, Role)> {
        let d = digest(presented.as_bytes());
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some((t.name.as_str(), t.role));
            }
        }
        found
    }
}

/// How a caller was recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// No authentication is configured (loopback default or `--insecure-no-auth`).
    Nobody,
    /// A bearer token.
    Token,
    /// A session cookie from the login route.
    Session,
    /// A client certificate (mutual TLS) alone.
    Certificate,
}

/// The caller of a request, put in its extensions by [`guard`].
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name, the certificate's subject, or `anonymous`.
    pub name: String,
    /// What the caller may do.
    pub role: Role,
    /// How it was recognised.
    pub via: Via,
    /// The client certificate's subject, under mutual TLS.
    pub certificate: Option<Arc<str>>,
}

/// Where a connection comes from: its address and, under mutual TLS, the verified client
/// certificate's subject. The server's listeners give it as connect info.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The client certificate's subject (mutual TLS).
    pub certificate: Option<Arc<str>>,
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            certificate: None,
        }
    }
}

/// Live sessions: at most [`Sessions::MAX`], each for [`Security::session_ttl`]; a full table
/// forgets its oldest session. Kept by the digest of the session id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: parking_lot::Mutex<HashMap<[u8; 32], Session>>,
}

#[derive(Clone, Debug)]
struct Session {
    name: String,
    role: Role,
    expires: Instant,
}

/// `bytes` bytes from the operating system's random source, in hex (session ids, the
/// control plane's identity, replica ids).
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).expect("the operating system's random source");
    vamp_core::lookup::hex(&raw)
}

impl Sessions {
    /// The most sessions kept at once.
    pub const MAX: usize = 10_000;

    fn create(&self, name: &str, role: Role, ttl: Duration) -> String {
        let id = random_hex(32);
        let now = Instant::now();
        let mut map = self.map.lock();
        if map.len() >= Self::MAX {
            map.retain(|_, s| s.expires > now);
        }
        if map.len() >= Self::MAX
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            digest(id.as_bytes()),
            Session {
                name: name.to_owned(),
                role,
                expires: now + ttl,
            },
        );
        id
    }

    fn find(&self, id: &str) -> Option<(String, Role)> {
        let key = digest(id.as_bytes());
        let mut map = self.map.lock();
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some((s.name.clone(), s.role)),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn end(&self, id: &str) -> bool {
        self.map.lock().remove(&digest(id.as_bytes())).is_some()
    }

    /// How many sessions are live (expired ones not yet forgotten included).
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The API's security settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Security {
    /// The tokens; none means no authentication (allowed on loopback, or with
    /// [`Security::insecure_no_auth`], or when client certificates authenticate).
    pub tokens: Tokens,
    /// The server runs without authentication on a non-loopback address, by the operator's
    /// choice (`--insecure-no-auth`): a warning at start and in `/api/v1/info`.
    pub insecure_no_auth: bool,
    /// Client certificates are verified (mutual TLS); without tokens, a verified certificate
    /// authenticates a `write` caller named by its subject.
    pub client_certificates: bool,
    /// The listener is TLS (session cookies are `Secure`, the own origin is `https://`).
    pub tls: bool,
    /// The listener is on a loopback address (the `Host` header is checked).
    pub loopback: bool,
    /// Origins granted CORS and allowed to write (exact `scheme://host[:port]`).
    pub cors_origins: Vec<String>,
    /// Further names the `Host` header may carry (a loopback listener allows loopback names
    /// and addresses; another listener checks `Host` only when this list is given).
    pub allowed_hosts: Vec<String>,
    /// How long a console session lasts (default 12 h).
    pub session_ttl: Duration,
}

impl Default for Security {
    /// No authentication, a loopback listener, no CORS grants.
    fn default() -> Self {
        Self {
            tokens: Tokens::none(),
            insecure_no_auth: false,
            client_certificates: false,
            tls: false,
            loopback: true,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

impl Security {
    /// Whether callers must authenticate.
    pub fn authenticates(&self) -> bool {
        !self.tokens.is_empty() || self.client_certificates
    }

    /// Whether a server listening on `addr` with these settings may start, and if not why:
    /// a non-loopback address needs a token (or client certificates), or
    /// `--insecure-no-auth`.
    ///
    /// # Errors
    /// The refusal, saying what to set.
    pub fn check_start(&self, addr: SocketAddr) -> Result<(), String> {
        if addr.ip().is_loopback() || self.authenticates() || self.insecure_no_auth {
            return Ok(());
        }
        Err(format!(
            "refusing to serve the API on {addr} without authentication: set {TOKEN_ENV}, give --api-tokens FILE or --tls-client-ca FILE, listen on a loopback address, or start with --insecure-no-auth"
        ))
    }

    /// Warnings to show at start and in `/api/v1/info`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.insecure_no_auth && !self.authenticates() {
            w.push("the API runs without authentication (--insecure-no-auth): anyone who reaches it can run commands on the scheduler's hosts".to_owned());
        }
        w
    }
}

/// The state of [`guard`]: the settings and the live sessions.
#[derive(Debug)]
pub struct Guard {
    security: Security,
    sessions: Sessions,
}

impl Guard {
    /// A guard with these settings and no sessions.
    pub fn new(security: Security) -> Self {
        Self {
            security,
            sessions: Sessions::default(),
        }
    }

    /// The settings.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// The live sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

/// Why the layer refuses a request (small, unlike a `Response`).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = refuse(self.status, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vamp\""),
            );
        }
        r
    }
}

fn unauthorized(message: &str) -> Refusal {
    Refusal::new(StatusCode::UNAUTHORIZED, message)
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]:port`), lower-cased.
fn host_name(value: &str) -> String {
    let v = value.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match v.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => v,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn loopback_host(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Guard {
    fn host_allowed(&self, headers: &HeaderMap) -> Result<(), String> {
        let s = &self.security;
        if !s.loopback && s.allowed_hosts.is_empty() {
            return Ok(());
        }
        let Some(value) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return Err("a request without a Host header is refused".into());
        };
        let name = host_name(value);
        if (s.loopback && loopback_host(&name))
            || s.allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&name))
        {
            Ok(())
        } else {
            Err(format!(
                "Host '{}' is not allowed here (add it with --allowed-host)",
                value.escape_debug()
            ))
        }
    }

    fn own_origin(&self, headers: &HeaderMap) -> Option<String> {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let scheme = if self.security.tls { "https" } else { "http" };
        Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
    }

    fn origin_granted(&self, origin: &str) -> bool {
        self.security
            .cors_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }

    fn cors_headers(&self, origin: &str, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("Link, X-Total-Count, ETag"),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }

    fn credential(&self, request: &Request, peer: Option<&Peer>) -> Result<Caller, Refusal> {
        let s = &self.security;
        let certificate = peer.and_then(|p| p.certificate.clone());
        if !s.authenticates() {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Write,
                via: Via::Nobody,
                certificate,
            });
        }
        if s.client_certificates && certificate.is_none() {
            return Err(unauthorized("a client certificate is required"));
        }
        if s.tokens.is_empty() {
            let subject = certificate.clone().unwrap_or_else(|| Arc::from(""));
            return Ok(Caller {
                name: subject.to_string(),
                role: Role::Write,
                via: Via::Certificate,
                certificate,
            });
        }
        let headers = request.headers();
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let Some(token) = value.to_str().ok().and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            }) else {
                return Err(unauthorized(
                    "the Authorization header must be 'Bearer <token>'",
                ));
            };
            return match s.tokens.authenticate(token.trim()) {
                Some((name, role)) => Ok(Caller {
                    name: name.to_owned(),
                    role,
                    via: Via::Token,
                    certificate,
                }),
                None => Err(unauthorized("the token is not valid")),
            };
        }
        if let Some(id) = session_cookie(headers) {
            return match self.sessions.find(id) {
                Some((name, role)) => Ok(Caller {
                    name,
                    role,
                    via: Via::Session,
                    certificate,
                }),
                None => Err(unauthorized("the session has ended; log in again")),
            };
        }
        Err(unauthorized(
            "authentication is required: send 'Authorization: Bearer <token>'",
        ))
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == SESSION_COOKIE).then_some(v.trim())
        })
}

/// Media types a write may carry (none of them is one a browser sends cross-origin
/// without a preflight).
const WRITE_TYPES: [&str; 5] = [
    "application/json",
    "application/x-yaml",
    "application/yaml",
    "application/javascript",
    "application/octet-stream",
];

fn write_type_allowed(method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
    // Vamp's bulk and slice `DELETE`s carry a body without a type; a browser never sends a
    // cross-origin `DELETE` without a preflight.
    let has_body = *method != Method::DELETE
        && headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    match headers.get(header::CONTENT_TYPE) {
        None if !has_body => Ok(()),
        None => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "A request body needs a Content-Type: application/json or application/x-yaml.",
        )),
        Some(v) => {
            let essence = v
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if WRITE_TYPES.contains(&essence.as_str()) {
                Ok(())
            } else {
                Err(Refusal::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Only the following content types are supported: application/json, application/x-yaml.",
                ))
            }
        }
    }
}

/// The layer around the whole router: host, CORS and origin checks, content types of writes,
/// then the caller (token, session or client certificate) and its role. Puts the [`Caller`]
/// in the request's extensions.
pub async fn guard(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Err(m) = guard.host_allowed(headers) {
        return refuse(StatusCode::FORBIDDEN, &m);
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = request.method().clone();
    // A CORS preflight: granted to listed origins only, before any credential (browsers
    // send none with it).
    if method == Method::OPTIONS
        && let Some(origin) = &origin
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        if !guard.origin_granted(origin) {
            return refuse(StatusCode::FORBIDDEN, "This origin is not allowed.");
        }
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        guard.cors_headers(origin, h);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, HEAD, OPTIONS, DELETE, PUT"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, Accept, If-Match"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return r;
    }
    if is_write(&method) {
        if let Some(o) = &origin
            && Some(o.to_ascii_lowercase()) != guard.own_origin(headers)
            && !guard.origin_granted(o)
        {
            return refuse(
                StatusCode::FORBIDDEN,
                &format!(
                    "A write from origin '{}' is refused (allow it with --cors-origin).",
                    o.escape_debug()
                ),
            );
        }
        if let Err(r) = write_type_allowed(&method, headers) {
            return r.into_response();
        }
    }
    let path = request.uri().path();
    let public = (method == Method::GET || method == Method::HEAD) && path == LIVENESS_PATH
        || method == Method::POST && path == LOGIN_PATH;
    if !public {
        let peer = request
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .map(|c| &c.0);
        let caller = match guard.credential(&request, peer) {
            Ok(c) => c,
            Err(r) => return r.into_response(),
        };
        let logout = method == Method::POST && path == LOGOUT_PATH;
        if is_write(&method) && caller.role < Role::Write && !logout {
            return refuse(
                StatusCode::FORBIDDEN,
                &format!("'{}' has the read role and may not write.", caller.name),
            );
        }
        if is_write(&method) {
            tracing::info!(caller = %caller.name, certificate = caller.certificate.as_deref(), %method, path, "write");
        }
        request.extensions_mut().insert(caller);
    }
    let mut response = next.run(request).await;
    if let Some(o) = &origin
        && guard.origin_granted(o)
    {
        guard.cors_headers(o, response.headers_mut());
    }
    response
}

/// `GET /healthz`: the process answers (no data, no authentication).
pub async fn liveness() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `POST /api/v1/login`: a token (`Authorization: Bearer …`, or a JSON body
/// `{"token": "…"}`) in, a session cookie (`HttpOnly; SameSite=Strict`, `Secure` under
/// TLS) out. Without authentication configured it answers `204` and sets nothing.
pub async fn login(guard: &Guard, headers: &HeaderMap, body: Body) -> Response {
    let s = &guard.security;
    if s.tokens.is_empty() {
        return if s.authenticates() {
            refuse(
                StatusCode::BAD_REQUEST,
                "This server authenticates by client certificate; there is nothing to log in with.",
            )
        } else {
            StatusCode::NO_CONTENT.into_response()
        };
    }
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = match from_header {
        Some(t) => t,
        None => {
            let Ok(bytes) = axum::body::to_bytes(body, 8192).await else {
                return refuse(StatusCode::BAD_REQUEST, "The login body is too large.");
            };
            match serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("token")?.as_str().map(str::to_owned))
            {
                Some(t) => t,
                None => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "Send the token as 'Authorization: Bearer <token>' or a JSON body {\"token\": \"…\"}.",
                    );
                }
            }
        }
    };
    let Some((name, role)) = s.tokens.authenticate(token.trim()) else {
        return unauthorized("the token is not valid").into_response();
    };
    let id = guard.sessions.create(name, role, s.session_ttl);
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        s.session_ttl.as_secs(),
        if s.tls { "; Secure" } else { "" }
    );
    tracing::info!(caller = name, "login");
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "name": name, "role": role.as_str() }).to_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /api/v1/logout`: the session of the request's cookie ends (`204`), and the cookie
/// is cleared.
pub fn logout(guard: &Guard, headers: &HeaderMap) -> Response {
    if let Some(id) = session_cookie(headers) {
        guard.sessions.end(id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("vamp_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_read_and_refuse_bad_lines_without_showing_tokens() {
        let t =
            Tokens::parse("a write 0123456789abcdef\n\n# x\nb read abcdefabcdefabcdef\n").unwrap();
        assert_eq!(t.authenticate("0123456789abcdef"), Some(("a", Role::Write)));
        assert_eq!(
            t.authenticate("abcdefabcdefabcdef"),
            Some(("b", Role::Read))
        );
        assert_eq!(t.authenticate("0123456789abcdeF"), None);
        for (text, want) in [
            ("a admin 0123456789abcdef", "line 1: role 'admin'"),
            ("a write short", "line 1: token 'a' is shorter"),
            ("a write", "line 1: expected"),
            (
                "a write 0123456789abcdef\na read 0123456789abcdeX",
                "line 2: token name 'a' is given twice",
            ),
            (
                "a write 0123456789abcdef\nb read 0123456789abcdef",
                "line 2: token 'b' is the same",
            ),
            ("# nothing", "no token"),
        ] {
            let e = Tokens::parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains("0123456789abcdef"), "{e}");
        }
        let debug = format!("{t:?}");
        assert!(
            debug.contains("\"a\"") && !debug.contains("0123456789abcdef"),
            "{debug}"
        );
    }

    #[test]
    fn host_names_are_taken_from_host_headers() {
        for (value, name) in [
            ("localhost:8080", "localhost"),
            ("127.0.0.1", "127.0.0.1"),
            ("[::1]:80", "::1"),
            ("Example.COM.", "example.com"),
            ("evil.example:80", "evil.example"),
        ] {
            assert_eq!(host_name(value), name);
        }
        assert!(loopback_host("localhost") && loopback_host("a.localhost"));
        assert!(loopback_host("127.9.9.9") && loopback_host("::1"));
        assert!(!loopback_host("localhost.evil.example") && !loopback_host("10.0.0.1"));
    }

    #[test]
    fn a_full_session_table_forgets_its_oldest_session() {
        let s = Sessions::default();
        let first = s.create("a", Role::Read, Duration::from_secs(60));
        for _ in 1..Sessions::MAX {
            s.create("b", Role::Read, Duration::from_secs(3600));
        }
        assert_eq!(s.len(), Sessions::MAX);
        assert!(s.find(&first).is_some());
        let last = s.create("c", Role::Write, Duration::from_secs(3600));
        assert_eq!(s.len(), Sessions::MAX);
        assert!(s.find(&first).is_none());
        assert_eq!(s.find(&last), Some(("c".into(), Role::Write)));
        assert!(s.end(&last) && s.find(&last).is_none());
    }

    #[test]
    fn a_non_loopback_start_needs_a_credential_or_the_insecure_flag() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let mut s = Security::default();
        assert!(s.check_start("127.0.0.1:8080".parse().unwrap()).is_ok());
        let e = s.check_start(public).unwrap_err();
        assert!(
            e.contains(TOKEN_ENV) && e.contains("--insecure-no-auth"),
            "{e}"
        );
        s.insecure_no_auth = true;
        assert!(s.check_start(public).is_ok());
        assert_eq!(s.warnings().len(), 1);
        s.insecure_no_auth = false;
        s.tokens = Tokens::single("0123456789abcdef").unwrap();
        assert!(s.check_start(public).is_ok());
        assert!(s.warnings().is_empty());
    }
}
