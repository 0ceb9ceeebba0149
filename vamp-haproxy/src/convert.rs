//! Gateways to the HAProxy model, as Vamp's `HaProxyGatewayMarshaller` did (runtime.md §1.4).
//!
//! Per gateway G with routes R₁…Rₙ:
//! * frontends: `G` (binds the gateway port; a `use_backend im_Rᵢ` per conditional route),
//!   `o_G` (unix socket; the weighted re-entry point), and one per route `Rᵢ` (unix socket);
//! * backends: `o_G` (a proxy server per route, weighted), `im_Rᵢ` per conditional route
//!   (condition strength to `Rᵢ`, the rest back to `o_G`), and `Rᵢ` per route (the targets).
//!
//! Names are Vamp's lookup names, so HAProxy logs and dashboards keep working.

use std::sync::OnceLock;

use regex::Regex;
use vamp_core::lookup::{LookupClass, lookup_name, route_lookup_name};
use vamp_core::model::{DefaultRoute, Gateway, PortType, Ref, Route, RouteTarget, Sticky};
use vamp_core::units::Percentage;

use crate::acl::{raw, resolve};
use crate::config::*;
use crate::error::RenderError;

/// Options of the renderer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenderOptions {
    /// Directory of the unix sockets that chain frontends (default `/usr/local/vamp`).
    pub socket_dir: String,
    /// Address the gateway frontends bind (default `0.0.0.0`).
    pub bind_address: String,
    /// Address and port of the shared `virtual_hosts` frontend (default `0.0.0.0:80`).
    pub virtual_hosts_bind: (String, u16),
    /// Log formats (default: Vamp's JSON lines).
    pub log_formats: LogFormats,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            socket_dir: "/usr/local/vamp".into(),
            bind_address: "0.0.0.0".into(),
            virtual_hosts_bind: ("0.0.0.0".into(), 80),
            log_formats: LogFormats::default(),
        }
    }
}

impl RenderOptions {
    /// Sets the socket directory.
    #[must_use]
    pub fn with_socket_dir(mut self, dir: impl Into<String>) -> Self {
        self.socket_dir = dir.into();
        self
    }

    /// Sets the bind address of gateway frontends, and of the `virtual_hosts` frontend (which
    /// binds where the gateways do; [`RenderOptions::with_virtual_hosts_bind`] after this
    /// sets it apart).
    #[must_use]
    pub fn with_bind_address(mut self, address: impl Into<String>) -> Self {
        self.bind_address = address.into();
        self.virtual_hosts_bind.0.clone_from(&self.bind_address);
        self
    }

    /// Sets the `virtual_hosts` frontend's address and port.
    #[must_use]
    pub fn with_virtual_hosts_bind(mut self, address: impl Into<String>, port: u16) -> Self {
        self.virtual_hosts_bind = (address.into(), port);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), RenderError> {
        let dir_ok = self.socket_dir.starts_with('/')
            && self
                .socket_dir
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
        if !dir_ok {
            return Err(RenderError::InvalidOption {
                option: "socket_dir",
                reason: format!(
                    "{:?} must be an absolute path of letters, digits and /._-",
                    self.socket_dir
                ),
            });
        }
        for (option, addr) in [
            ("bind_address", &self.bind_address),
            ("virtual_hosts_bind", &self.virtual_hosts_bind.0),
        ] {
            if addr.is_empty()
                || !addr
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || ".:[]*".contains(c))
            {
                return Err(RenderError::InvalidOption {
                    option,
                    reason: format!("{addr:?} is not an IP address"),
                });
            }
        }
        for f in [&self.log_formats.http, &self.log_formats.tcp] {
            let one_word = crate::lex::words(f).map(|w| w.len() == 1);
            if !matches!(one_word, Ok(true)) {
                return Err(RenderError::InvalidOption {
                    option: "log_formats",
                    reason: "a log format must be one word of HAProxy's configuration (quoted), without control characters or $ expansion".into(),
                });
            }
            if let Err(reason) = crate::lex::words(f)
                .ok()
                .and_then(|w| w.into_iter().next())
                .map_or(Ok(()), |w| crate::allow::check_log_format(&w))
            {
                return Err(RenderError::InvalidOption {
                    option: "log_formats",
                    reason,
                });
            }
        }
        Ok(())
    }
}

fn unsafe_value(what: &'static str, value: &str, reason: &'static str) -> RenderError {
    RenderError::Unsafe {
        what,
        value: value.to_owned(),
        reason,
    }
}

/// `host:port` of a server, validated.
fn address(host: &str, port: i64, what: &'static str) -> Result<String, RenderError> {
    static HOST: OnceLock<Regex> = OnceLock::new();
    let re = HOST.get_or_init(|| {
        Regex::new(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*|\[[0-9A-Fa-f:.]+\])$")
            .expect("static regex")
    });
    if !re.is_match(host) {
        return Err(unsafe_value(
            what,
            host,
            "must be a host name or an IP address",
        ));
    }
    if !(1..=65535).contains(&port) {
        return Err(unsafe_value(
            what,
            &format!("{host}:{port}"),
            "the port must be 1..65535",
        ));
    }
    Ok(format!("{host}:{port}"))
}

fn external_address(url: &str) -> Result<String, RenderError> {
    let (host, port) = url
        .rsplit_once(':')
        .ok_or_else(|| unsafe_value("external target", url, "must be host:port"))?;
    let port: i64 = port
        .parse()
        .map_err(|_| unsafe_value("external target", url, "must be host:port"))?;
    address(host, port, "external target")
}

fn virtual_host(host: &str) -> Result<&str, RenderError> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^[A-Za-z0-9*_](?:[A-Za-z0-9*_.-]*[A-Za-z0-9_])?(?::[0-9]{1,5})?$")
            .expect("static regex")
    });
    if re.is_match(host) {
        Ok(host)
    } else {
        Err(unsafe_value(
            "virtual host",
            host,
            "must be a host name (letters, digits, . - _ *), optionally with :port",
        ))
    }
}

/// Whether `b` is a `balance` argument the generator accepts (and the agent's allow-list).
pub(crate) fn is_balance(b: &str) -> bool {
    if let Some(expr) = b.strip_prefix("hash ")
        && crate::allow::check_log_format(&format!("%[{expr}]")).is_err()
    {
        return false;
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^(?:roundrobin|static-rr|leastconn|first|source|random(?:\([0-9]+\))?|uri(?: (?:whole|len [0-9]+|depth [0-9]+|path-only))*|url_param [A-Za-z0-9_.-]+(?: check_post(?: [0-9]+)?)?|hdr\([A-Za-z0-9_-]+\)(?: use_domain_only)?|rdp-cookie(?:\([A-Za-z0-9_-]+\))?|hash [a-z0-9_.()-]+)$").expect("static regex")
    });
    re.is_match(b)
}

fn rewrite_path(path: &str) -> Result<String, RenderError> {
    if path.is_empty()
        || path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "#\"'\\".contains(c))
    {
        return Err(unsafe_value(
            "rewrite path",
            path,
            "must be one word without quotes, backslashes or '#'",
        ));
    }
    if crate::allow::check_log_format(path).is_err() {
        return Err(unsafe_value(
            "rewrite path",
            path,
            "its %[...] expressions must use known fetches (not env) and converters (not map)",
        ));
    }
    Ok(path.to_owned())
}

fn rewrite_condition(condition: &str) -> Result<String, RenderError> {
    static BRACED: OnceLock<Regex> = OnceLock::new();
    let braced = BRACED.get_or_init(|| Regex::new(r"^\s*\{.*\}\s*$").expect("static regex"));
    let c = raw(condition, "rewrite condition")?;
    let c = if braced.is_match(&c) {
        c
    } else {
        format!("{{ {c} }}")
    };
    // `http-request set-path <path> if <condition>` on one line of at most 64 words.
    let ws = match crate::lex::words(&c) {
        Ok(ws) if ws.len() + 4 <= crate::lex::MAX_WORDS => ws,
        _ => {
            return Err(unsafe_value(
                "rewrite condition",
                condition,
                "too many words: HAProxy reads at most 64 on a line",
            ));
        }
    };
    if crate::allow::check_condition(&ws, &[], true).is_err() {
        return Err(unsafe_value(
            "rewrite condition",
            condition,
            "must be ACL criteria in { } joined by || or 'or': a known fetch (not env), only the -i, -n, -m and -- flags",
        ));
    }
    Ok(c)
}

/// Fills Vamp's defaults (`GatewayActor.process`): when every route is a definition and the
/// given weights total at most 100%, routes without a weight share the rest (integer split, the
/// last one takes the remainder) and move before the weighted ones; condition strength defaults
/// to 100% for routes with a condition and 0% otherwise.
///
/// # Errors
/// [`RenderError::InvalidWeights`] when the weights then total neither 0% nor 100%.
pub fn with_defaults(gateway: &Gateway) -> Result<Gateway, RenderError> {
    let mut g = gateway.clone();
    let all_definitions = g.routes.iter().all(|r| r.definition().is_some());
    // The same filling as a deployment merge's (`vamp_core::ops::deploy::fill_weights`).
    let total = vamp_core::ops::deploy::fill_weights(&mut g.routes);
    if all_definitions && total != 0 && total != 100 {
        return Err(RenderError::InvalidWeights {
            gateway: g.name.clone(),
            total,
        });
    }
    for r in &mut g.routes {
        if let Route::Default(d) = r
            && d.condition_strength.is_none()
        {
            let has_condition = matches!(&d.condition, Some(Ref::Inline(c)) if !c.definition.trim().is_empty())
                || matches!(d.condition, Some(Ref::Reference(_)));
            d.condition_strength = Some(Percentage(if has_condition { 100 } else { 0 }));
        }
    }
    Ok(g)
}

/// One gateway's part of the configuration.
#[derive(Debug, Default)]
pub(crate) struct Part {
    pub(crate) frontends: Vec<Frontend>,
    pub(crate) backends: Vec<Backend>,
    pub(crate) virtual_hosts: Vec<VirtualHost>,
    pub(crate) virtual_host_backends: Vec<VirtualHostBackend>,
}

fn route_error(gateway: &str, route: &DefaultRoute) -> impl Fn(RenderError) -> RenderError + use<> {
    let gateway = gateway.to_owned();
    let route = route.path.source.clone();
    move |e| RenderError::Route {
        gateway: gateway.clone(),
        route: route.clone(),
        source: Box::new(e),
    }
}

pub(crate) fn convert_gateway(g: &Gateway, opts: &RenderOptions) -> Result<Part, RenderError> {
    let gw_err = |e: RenderError| RenderError::Gateway {
        gateway: g.name.clone(),
        source: Box::new(e),
    };
    if !(1..=65535).contains(&g.port.number) {
        return Err(RenderError::UnassignedPort {
            gateway: g.name.clone(),
        });
    }
    let g = with_defaults(g)?;
    let port = g.port.number as u16;
    let mode = if g.port.port_type == PortType::Tcp {
        Mode::Tcp
    } else {
        Mode::Http
    };
    let default_balance = if mode == Mode::Http {
        "roundrobin"
    } else {
        "leastconn"
    };
    let sticky_route = g.sticky.is_some();
    let sticky_instance = g.sticky == Some(Sticky::Instance);
    let lookup = lookup_name(LookupClass::Gateway, &g.name);
    let other = format!("o_{lookup}");
    let other_name = format!("other {}", g.name);

    let mut routes = Vec::new();
    for r in &g.routes {
        match r {
            Route::Default(d) => routes.push(d),
            Route::Reference { name, .. } => {
                return Err(RenderError::UnresolvedReference {
                    gateway: g.name.clone(),
                    what: "route",
                    name: name.clone(),
                });
            }
        }
    }

    let mut part = Part::default();
    let mut gateway_conditions = Vec::new();
    let mut intermediates = Vec::new();
    let mut route_frontends = Vec::new();
    let mut route_backends = Vec::new();
    let mut other_servers = Vec::new();
    for r in &routes {
        let err = route_error(&g.name, r);
        let r_lookup = route_lookup_name(&g.name, &r.path.segments);
        let r_name = format!("{}//{}", g.name, r.path.segments.join("/"));
        let weight = r.weight.map_or(0, |w| w.0);
        other_servers.push(ProxyServer {
            name: r_name.clone(),
            lookup: r_lookup.clone(),
            unix_socket: format!("{r_lookup}.sock"),
            weight,
        });
        match &r.condition {
            Some(Ref::Reference(name)) => {
                return Err(RenderError::UnresolvedReference {
                    gateway: g.name.clone(),
                    what: "condition",
                    name: name.clone(),
                });
            }
            Some(Ref::Inline(c)) if !c.definition.trim().is_empty() => {
                let strength = r.condition_strength.map_or(100, |s| s.0);
                let im = format!("im_{r_lookup}");
                intermediates.push(Backend {
                    name: format!("intermediate {r_name}"),
                    lookup: im.clone(),
                    mode,
                    balance: default_balance.into(),
                    sticky: sticky_route,
                    rewrites: Vec::new(),
                    proxy_servers: vec![
                        ProxyServer {
                            name: r_name.clone(),
                            lookup: r_lookup.clone(),
                            unix_socket: format!("{r_lookup}.sock"),
                            weight: strength,
                        },
                        ProxyServer {
                            name: other_name.clone(),
                            lookup: other.clone(),
                            unix_socket: format!("{other}.sock"),
                            weight: 100 - strength,
                        },
                    ],
                    servers: Vec::new(),
                });
                gateway_conditions.push(Condition {
                    destination: im,
                    acls: resolve(&c.definition).map_err(&err)?,
                });
            }
            _ => {}
        }
        let mut rewrites = Vec::new();
        for rw in &r.rewrites {
            match rw {
                Ref::Reference(name) => {
                    return Err(RenderError::UnresolvedReference {
                        gateway: g.name.clone(),
                        what: "rewrite",
                        name: name.clone(),
                    });
                }
                Ref::Inline(p) => rewrites.push(Rewrite {
                    path: rewrite_path(&p.path).map_err(&err)?,
                    condition: rewrite_condition(&p.condition).map_err(&err)?,
                }),
            }
        }
        let balance_text = r
            .balance
            .clone()
            .unwrap_or_else(|| default_balance.to_owned());
        if !is_balance(&balance_text) {
            return Err(RenderError::InvalidBalance {
                gateway: g.name.clone(),
                route: r.path.source.clone(),
                balance: balance_text,
            });
        }
        let mut servers = Vec::new();
        for t in &r.targets {
            servers.push(match t {
                RouteTarget::Internal { name, host, port } => Server {
                    name: name.clone(),
                    lookup: lookup_name(LookupClass::InternalRouteTarget, name),
                    address: address(host.as_deref().unwrap_or("127.0.0.1"), *port, "target")
                        .map_err(&err)?,
                    weight: 100,
                    check_interval: None,
                },
                RouteTarget::External { url } => Server {
                    name: url.clone(),
                    lookup: lookup_name(LookupClass::ExternalRouteTarget, url),
                    address: external_address(url).map_err(&err)?,
                    weight: 100,
                    check_interval: None,
                },
            });
        }
        route_frontends.push(Frontend {
            name: r_name.clone(),
            lookup: r_lookup.clone(),
            bind: None,
            mode,
            unix_socket: Some((format!("{r_lookup}.sock"), "accept-proxy".into())),
            conditions: Vec::new(),
            default_backend: r_lookup.clone(),
        });
        route_backends.push(Backend {
            name: r_name,
            lookup: r_lookup,
            mode,
            balance: balance_text,
            sticky: sticky_instance,
            rewrites,
            proxy_servers: Vec::new(),
            servers,
        });
    }

    part.frontends.push(Frontend {
        name: g.name.clone(),
        lookup: lookup.clone(),
        bind: Some((opts.bind_address.clone(), port)),
        mode,
        unix_socket: None,
        conditions: gateway_conditions,
        default_backend: other.clone(),
    });
    part.frontends.push(Frontend {
        name: other_name.clone(),
        lookup: other.clone(),
        bind: None,
        mode,
        unix_socket: Some((format!("{other}.sock"), "accept-proxy".into())),
        conditions: Vec::new(),
        default_backend: other.clone(),
    });
    part.frontends.extend(route_frontends);
    part.backends.push(Backend {
        name: other_name,
        lookup: other,
        mode,
        balance: default_balance.into(),
        sticky: sticky_route,
        rewrites: Vec::new(),
        proxy_servers: other_servers,
        servers: Vec::new(),
    });
    part.backends.extend(intermediates);
    part.backends.extend(route_backends);
    if !g.virtual_hosts.is_empty() {
        for h in &g.virtual_hosts {
            let h = virtual_host(h).map_err(gw_err)?;
            part.virtual_hosts.push(VirtualHost {
                name: g.name.clone(),
                acl: Acl::new(format!("hdr(host) -i {h}")),
                destination: lookup.clone(),
            });
        }
        part.virtual_host_backends.push(VirtualHostBackend {
            name: g.name.clone(),
            lookup,
            port,
        });
    }
    Ok(part)
}

/// Converts gateways in the given order (Vamp's marshaller; its tests use this order).
///
/// # Errors
/// The first gateway's [`RenderError`].
pub fn convert_in_order(
    gateways: &[Gateway],
    opts: &RenderOptions,
) -> Result<HaProxyConfig, RenderError> {
    opts.validate()?;
    let mut config = HaProxyConfig {
        frontends: Vec::new(),
        backends: Vec::new(),
        virtual_hosts: Vec::new(),
        virtual_host_backends: Vec::new(),
        socket_dir: opts.socket_dir.clone(),
        virtual_hosts_bind: opts.virtual_hosts_bind.clone(),
        log_formats: opts.log_formats.clone(),
    };
    for g in gateways {
        let part = convert_gateway(g, opts)?;
        config.frontends.extend(part.frontends);
        config.backends.extend(part.backends);
        config.virtual_hosts.extend(part.virtual_hosts);
        config
            .virtual_host_backends
            .extend(part.virtual_host_backends);
    }
    Ok(config)
}

/// Renders gateways deterministically: sorted as Vamp's synchroniser sorted them (fewer name
/// segments first, then by name), so any order of the same gateways gives the same text.
///
/// # Errors
/// The first gateway's [`RenderError`].
///
/// ```
/// use vamp_core::dsl::{read_str, AnyArtifact};
/// use vamp_core::model::{ArtifactKind, Route, RouteTarget};
/// use vamp_haproxy::{render, RenderOptions};
///
/// let AnyArtifact::Gateway(mut g) = read_str("name: sava\nport: 8080\nroutes:\n  a: {weight: 90%}\n  b: {weight: 10%}", Some(ArtifactKind::Gateway)).unwrap().remove(0) else { unreachable!() };
/// for (i, r) in g.routes.iter_mut().enumerate() {
///     if let Route::Default(d) = r { d.targets.push(RouteTarget::Internal { name: format!("i{i}"), host: None, port: 9000 + i as i64 }); }
/// }
/// let config = render(&[g], &RenderOptions::default()).unwrap().render();
/// assert!(config.contains("weight 90 check"));
/// assert!(config.contains("server 62") || config.contains("127.0.0.1:9000"));
/// ```
pub fn render(gateways: &[Gateway], opts: &RenderOptions) -> Result<HaProxyConfig, RenderError> {
    let mut sorted: Vec<&Gateway> = gateways.iter().collect();
    sorted.sort_by(|a, b| {
        let segs = |g: &Gateway| g.name.split('/').filter(|s| !s.is_empty()).count();
        (segs(a), &a.name, a.port.number).cmp(&(segs(b), &b.name, b.port.number))
    });
    let owned: Vec<Gateway> = sorted.into_iter().cloned().collect();
    convert_in_order(&owned, opts)
}
