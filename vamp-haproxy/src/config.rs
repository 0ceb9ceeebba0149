//! The typed HAProxy model (frontends, backends, servers, ACLs) and its renderer.
//!
//! Rendering writes with [`std::fmt::Write`]; it is deterministic. Every string in the model
//! has been validated or quoted by the converter ([`crate::convert`]), so rendering cannot
//! add a line, a directive or a comment.

use std::fmt;

/// HTTP or TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `mode http`
    Http,
    /// `mode tcp`
    Tcp,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        })
    }
}

/// An ACL: a name (16 hex characters) and a criterion.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Acl {
    /// The name: the first 16 hex characters of the SHA-1 of the definition (Vamp's rule).
    pub name: String,
    /// The criterion (`req.hdr(host) example.com`).
    pub definition: String,
}

impl Acl {
    /// An ACL named after its definition.
    pub fn new(definition: impl Into<String>) -> Self {
        let definition = definition.into();
        let hex = vamp_core::lookup::hex_sha1(&definition, "0000");
        Self {
            name: hex.chars().take(16).collect(),
            definition,
        }
    }
}

/// The ACLs of a condition and the expression over their names (`a b or !c`); no expression
/// means the condition always holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acls {
    /// The ACLs, each once, in the order the expression uses them.
    pub acls: Vec<Acl>,
    /// The expression (`None`: unconditional).
    pub condition: Option<String>,
}

/// A `use_backend` rule: the destination backend and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// The destination backend's lookup name.
    pub destination: String,
    /// When; `None` means never (the rule is not written).
    pub acls: Option<Acls>,
}

/// A frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The human name (written in a comment).
    pub name: String,
    /// The proxy name (a lookup name).
    pub lookup: String,
    /// `bind <ip>:<port>`.
    pub bind: Option<(String, u16)>,
    /// HTTP or TCP.
    pub mode: Mode,
    /// `bind unix@<dir>/<sock> <protocol>`: socket file name and protocol.
    pub unix_socket: Option<(String, String)>,
    /// `use_backend` rules, in order.
    pub conditions: Vec<Condition>,
    /// `default_backend`.
    pub default_backend: String,
}

/// A server reached through a unix socket of another frontend (`send-proxy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyServer {
    /// The human name (written in a comment).
    pub name: String,
    /// The server name (a lookup name).
    pub lookup: String,
    /// The socket file name.
    pub unix_socket: String,
    /// The weight (0..=100).
    pub weight: u8,
}

/// A real server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// The human name (written in a comment).
    pub name: String,
    /// The server name (a lookup name).
    pub lookup: String,
    /// `host:port` (validated).
    pub address: String,
    /// The weight.
    pub weight: u8,
    /// `check inter <ms>`.
    pub check_interval: Option<u32>,
}

/// `http-request set-path <path> if <condition>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// The new path (a log-format string).
    pub path: String,
    /// The condition (HAProxy ACL syntax).
    pub condition: String,
}

/// A backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The human name (written in a comment).
    pub name: String,
    /// The proxy name (a lookup name).
    pub lookup: String,
    /// HTTP or TCP.
    pub mode: Mode,
    /// The balance algorithm (validated).
    pub balance: String,
    /// `cookie <lookup> insert indirect nocache` and per-server cookies.
    pub sticky: bool,
    /// Path rewrites.
    pub rewrites: Vec<Rewrite>,
    /// Servers behind other frontends' sockets.
    pub proxy_servers: Vec<ProxyServer>,
    /// Real servers.
    pub servers: Vec<Server>,
}

/// A virtual host rule of the shared `virtual_hosts` frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualHost {
    /// The gateway's name (written in a comment).
    pub name: String,
    /// `hdr(host) -i <host>`.
    pub acl: Acl,
    /// The virtual-host backend's lookup.
    pub destination: String,
}

/// A virtual-host backend: forwards to a gateway's port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualHostBackend {
    /// The gateway's name (written in a comment).
    pub name: String,
    /// The gateway's lookup.
    pub lookup: String,
    /// The gateway's port.
    pub port: u16,
}

/// The log formats written into frontends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogFormats {
    /// The `log-format` argument for HTTP frontends.
    pub http: String,
    /// The `log-format` argument for TCP frontends.
    pub tcp: String,
}

impl Default for LogFormats {
    /// Vamp's JSON log lines (runtime.md §1.10), which [`crate::log`] parses.
    fn default() -> Self {
        Self {
            http: VAMP_LOG_HTTP.to_owned(),
            tcp: VAMP_LOG_TCP.to_owned(),
        }
    }
}

/// The agent-side part of a configuration for HAProxy 2.6+ (`global` and `defaults`), to which
/// the generated configuration is appended. Unlike Vamp's VGA base it has no `nbproc` (removed
/// in HAProxy 2.5), and servers whose names do not resolve yet start down instead of failing
/// the whole configuration (`init-addr last,libc,none`). Frontends log to the `global` log
/// targets (`log global`; the gateway agent adds its own), except connections that send nothing
/// (`option dontlognull`, as in Vamp's VGA).
///
/// `httpclient.ssl.verify none`: HAProxy 2.6 loads the whole system CA store for its internal
/// HTTP client (Lua's and ACME's) at every start, check and reload, about 20–35 ms of each on
/// this project's machines; with verification off it loads none. Nothing in a configuration
/// the generator writes uses that client (the agent's allow-list refuses Lua), so this changes
/// no behaviour; a base configuration that adds Lua using the client should drop the line. The
/// keyword needs HAProxy built with OpenSSL (every distribution's package is): for a build
/// without it, pass a base configuration without the line.
pub const BASE_CONFIG: &str = "global\n  maxconn 4096\n  httpclient.ssl.verify none\n\ndefaults\n  log global\n  option dontlognull\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  default-server init-addr last,libc,none\n";

/// Vamp's HTTP log format.
pub const VAMP_LOG_HTTP: &str = r#""""{\"ci\":\"%ci\",\"cp\":%cp,\"t\":\"%t\",\"ft\":\"%ft\",\"b\":\"%b\",\"s\":\"%s\",\"Tq\":%Tq,\"Tw\":%Tw,\"Tc\":%Tc,\"Tr\":%Tr,\"Tt\":%Tt,\"ST\":%ST,\"B\":%B,\"CC\":\"%CC\",\"CS\":\"%CS\",\"tsc\":\"%tsc\",\"ac\":%ac,\"fc\":%fc,\"bc\":%bc,\"sc\":%sc,\"rc\":%rc,\"sq\":%sq,\"bq\":%bq,\"hr\":\"%hr\",\"hs\":\"%hs\",\"r\":%{+Q}r}""""#;

/// Vamp's TCP log format.
pub const VAMP_LOG_TCP: &str = r#""""{\"ci\":\"%ci\",\"cp\":%cp,\"t\":\"%t\",\"ft\":\"%ft\",\"b\":\"%b\",\"s\":\"%s\",\"Tw\":%Tw,\"Tc\":%Tc,\"Tt\":%Tt,\"B\":%B,\"ts\":\"%ts\",\"ac\":%ac,\"fc\":%fc,\"bc\":%bc,\"sc\":%sc,\"rc\":%rc,\"sq\":%sq,\"bq\":%bq}""""#;

/// A complete generated configuration (the part below the agent's `global` and `defaults`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaProxyConfig {
    /// Frontends, in order.
    pub frontends: Vec<Frontend>,
    /// Backends, in order.
    pub backends: Vec<Backend>,
    /// Virtual-host rules of the shared `virtual_hosts` frontend.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Virtual-host backends.
    pub virtual_host_backends: Vec<VirtualHostBackend>,
    /// Where the unix sockets live.
    pub socket_dir: String,
    /// The address the `virtual_hosts` frontend binds (`0.0.0.0:80`).
    pub virtual_hosts_bind: (String, u16),
    /// The log formats.
    pub log_formats: LogFormats,
}

/// A comment-safe rendering of a name: control characters become `?`.
fn comment(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl HaProxyConfig {
    /// Writes the configuration.
    pub fn write_to(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write_header(out)?;
        let dir = self.socket_dir.trim_end_matches('/');
        if !self.virtual_hosts.is_empty() {
            write_virtual_hosts_head(out, &self.virtual_hosts_bind, &self.log_formats)?;
            for v in &self.virtual_hosts {
                write_virtual_host(out, v)?;
            }
            for b in &self.virtual_host_backends {
                write_virtual_host_backend(out, b)?;
            }
        }
        if !self.frontends.is_empty() {
            write_port_mapping_head(out)?;
        }
        for f in &self.frontends {
            write_frontend(out, f, dir, &self.log_formats)?;
        }
        for b in &self.backends {
            write_backend(out, b, dir)?;
        }
        Ok(())
    }
}

// The pieces of the text, in the order `write_to` writes them (also used by
// `crate::incremental`, whose output must be the same bytes).

pub(crate) fn write_header(out: &mut impl fmt::Write) -> fmt::Result {
    writeln!(out, "# HAProxy - Frontends & Backends managed by Vamp")
}

pub(crate) fn write_virtual_hosts_head(
    out: &mut impl fmt::Write,
    bind: &(String, u16),
    log_formats: &LogFormats,
) -> fmt::Result {
    writeln!(out, "\n# Virtual hosts\n")?;
    writeln!(out, "frontend virtual_hosts")?;
    writeln!(out, "  bind {}:{}", bind.0, bind.1)?;
    writeln!(out, "  mode http")?;
    writeln!(out, "  option httplog")?;
    writeln!(out, "  log-format {}", log_formats.http)?;
    Ok(())
}

pub(crate) fn write_virtual_host(out: &mut impl fmt::Write, v: &VirtualHost) -> fmt::Result {
    writeln!(out, "\n  # destination: {}", comment(&v.name))?;
    writeln!(out, "  acl {} {}", v.acl.name, v.acl.definition)?;
    writeln!(out, "  use_backend {} if {}", v.destination, v.acl.name)?;
    Ok(())
}

pub(crate) fn write_virtual_host_backend(
    out: &mut impl fmt::Write,
    b: &VirtualHostBackend,
) -> fmt::Result {
    writeln!(out, "\n# backend: {}", comment(&b.name))?;
    writeln!(out, "backend {}", b.lookup)?;
    writeln!(out, "  balance roundrobin")?;
    writeln!(out, "  mode http")?;
    writeln!(out, "  option forwardfor")?;
    writeln!(
        out,
        "  http-request set-header X-Forwarded-Port %[dst_port]"
    )?;
    writeln!(out, "  server {} 127.0.0.1:{}", b.lookup, b.port)?;
    Ok(())
}

pub(crate) fn write_port_mapping_head(out: &mut impl fmt::Write) -> fmt::Result {
    writeln!(out, "\n# Port mapping")
}

pub(crate) fn write_frontend(
    out: &mut impl fmt::Write,
    f: &Frontend,
    dir: &str,
    log_formats: &LogFormats,
) -> fmt::Result {
    writeln!(out, "\n# frontend: {}", comment(&f.name))?;
    writeln!(out, "frontend {}", f.lookup)?;
    if let Some((ip, port)) = &f.bind {
        writeln!(out, "  bind {ip}:{port}")?;
    }
    match f.mode {
        Mode::Http => writeln!(out, "  option httplog\n  log-format {}", log_formats.http)?,
        Mode::Tcp => writeln!(out, "  option tcplog\n  log-format {}", log_formats.tcp)?,
    }
    if let Some((sock, protocol)) = &f.unix_socket {
        writeln!(out, "  bind unix@{dir}/{sock} {protocol}")?;
    }
    writeln!(out, "  mode {}", f.mode)?;
    for c in &f.conditions {
        let Some(acls) = &c.acls else { continue };
        for acl in &acls.acls {
            writeln!(out, "  acl {} {}", acl.name, acl.definition)?;
        }
        match &acls.condition {
            // HAProxy reads at most 64 words a line: a longer condition becomes one
            // rule per term, consecutive and to the same backend, so the first match
            // still wins with the same meaning.
            Some(cond) if cond.split(' ').count() + 3 > crate::lex::MAX_WORDS => {
                for term in cond.split(" or ") {
                    writeln!(out, "  use_backend {} if {term}", c.destination)?;
                }
            }
            Some(cond) => writeln!(out, "  use_backend {} if {cond}", c.destination)?,
            None => writeln!(out, "  use_backend {}", c.destination)?,
        }
    }
    writeln!(out, "  default_backend {}", f.default_backend)?;
    Ok(())
}

pub(crate) fn write_backend(out: &mut impl fmt::Write, b: &Backend, dir: &str) -> fmt::Result {
    writeln!(out, "\n# backend: {}", comment(&b.name))?;
    writeln!(out, "backend {}", b.lookup)?;
    writeln!(out, "  mode {}", b.mode)?;
    writeln!(out, "  balance {}", b.balance)?;
    if b.sticky {
        writeln!(out, "  cookie {} insert indirect nocache", b.lookup)?;
    }
    for r in &b.rewrites {
        writeln!(out, "  http-request set-path {} if {}", r.path, r.condition)?;
    }
    for ps in &b.proxy_servers {
        write!(
            out,
            "  server {} unix@{dir}/{} send-proxy weight {} check",
            ps.lookup, ps.unix_socket, ps.weight
        )?;
        if b.sticky {
            write!(out, " cookie {}", ps.lookup)?;
        }
        writeln!(out)?;
    }
    if !b.servers.is_empty() {
        writeln!(out, "  option forwardfor")?;
    }
    for s in &b.servers {
        write!(out, "  server {} {}", s.lookup, s.address)?;
        if b.mode == Mode::Http {
            write!(out, " cookie {}", s.lookup)?;
        }
        write!(out, " weight {} check", s.weight)?;
        if let Some(inter) = s.check_interval {
            write!(out, " inter {inter}")?;
        }
        if b.sticky {
            write!(out, " cookie {}", s.lookup)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

impl fmt::Display for HaProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl HaProxyConfig {
    /// The lookup name of the route frontend whose requests reach the server at `address`
    /// (`host:port`): the frontend HAProxy's logs and counters name for that route's traffic.
    /// `None` when no route backend has such a server.
    ///
    /// ```
    /// use vamp_core::model::*;
    /// use vamp_haproxy::{RenderOptions, render};
    ///
    /// let mut g = Gateway::new(Port::new("", Some("9050".into())).unwrap());
    /// g.name = "shop".into();
    /// let mut route = DefaultRoute::new("shop/web:1.0/port");
    /// route.targets = vec![RouteTarget::Internal { name: "a".into(), host: Some("10.0.0.5".into()), port: 8080 }];
    /// g.routes = vec![Route::Default(route)];
    /// let config = render(&[g], &RenderOptions::default()).unwrap();
    /// let route = config.route_frontend_of_server("10.0.0.5:8080").unwrap();
    /// assert_ne!(Some(route), config.gateway_frontends().next());
    /// assert!(config.route_frontend_of_server("10.0.0.6:8080").is_none());
    /// ```
    pub fn route_frontend_of_server(&self, address: &str) -> Option<&str> {
        let backend = self
            .backends
            .iter()
            .find(|be| be.servers.iter().any(|s| s.address == address))?;
        self.frontends
            .iter()
            .find(|f| f.bind.is_none() && f.default_backend == backend.lookup)
            .map(|f| f.lookup.as_str())
    }

    /// The lookup names of the gateways' own frontends (the ones bound to a port), in order.
    pub fn gateway_frontends(&self) -> impl Iterator<Item = &str> {
        self.frontends
            .iter()
            .filter(|f| f.bind.is_some())
            .map(|f| f.lookup.as_str())
    }

    /// The configuration as text.
    pub fn render(&self) -> String {
        // About 600 bytes a section (a route with its frontend and backend): room for the
        // whole text at once, so that it is not copied as it grows.
        let sections = self.frontends.len() + self.backends.len() + self.virtual_hosts.len();
        let mut s = String::with_capacity(640 * sections + 256);
        let _ = self.write_to(&mut s);
        s
    }
}
