//! Vamp's artifact model: breeds, blueprints, deployments, gateways, routes, conditions,
//! rewrites, scales, SLAs, escalations, workflows, templates and events.
//!
//! Names follow Vamp's vocabulary (`DefaultBreed`, `BreedReference`, `DefaultRoute`, ...).
//! A position that may hold either a reference to a stored artifact or an inline definition is a
//! [`Ref`]. Every artifact serialises to and from Vamp's DSL through [`crate::dsl`]; the serde
//! implementations on the top-level artifacts use that canonical form.

use std::fmt;

use indexmap::IndexMap;

use crate::node::{Map, Node};
use crate::units::{MegaByte, Percentage, Quantity};

/// Free-form metadata of an artifact (`metadata:`), a map.
pub type Metadata = Map;

/// Free-form dialects (`dialects:`), passed to container drivers.
pub type Dialects = Map;

/// A reference to a stored artifact, or an inline (anonymous or named) definition.
#[derive(Clone, Debug, PartialEq)]
pub enum Ref<T> {
    /// `breed: name`, `{reference: name}` or `{ref: name}`.
    Reference(String),
    /// An inline definition.
    Inline(T),
}

impl<T> Ref<T> {
    /// The inline definition, if this is one.
    pub fn inline(&self) -> Option<&T> {
        match self {
            Self::Inline(t) => Some(t),
            Self::Reference(_) => None,
        }
    }

    /// Whether this is a reference.
    pub fn is_reference(&self) -> bool {
        matches!(self, Self::Reference(_))
    }
}

/// The kinds of artifact, with Vamp's plural kind strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ArtifactKind {
    /// `breeds`
    Breed,
    /// `blueprints`
    Blueprint,
    /// `deployments`
    Deployment,
    /// `gateways`
    Gateway,
    /// `routes`
    Route,
    /// `conditions`
    Condition,
    /// `rewrites`
    Rewrite,
    /// `slas`
    Sla,
    /// `escalations`
    Escalation,
    /// `scales`
    Scale,
    /// `workflows`
    Workflow,
    /// `templates`
    Template,
    /// `canary-policies`: an extension of Vamp's DSL (see [`CanaryPolicy`]).
    CanaryPolicy,
    /// `events` (not stored as an artifact)
    Event,
    /// `event queries` (not stored as an artifact)
    EventQuery,
    /// `control-planes`: the control plane's own records (its identity, see
    /// [`crate::ops::identity`]); stored beside the artifacts, read by no DSL and served by no
    /// artifact route.
    ControlPlane,
}

impl ArtifactKind {
    /// Every kind, in a stable order.
    pub const ALL: [Self; 16] = [
        Self::Breed,
        Self::Blueprint,
        Self::Deployment,
        Self::Gateway,
        Self::Route,
        Self::Condition,
        Self::Rewrite,
        Self::Sla,
        Self::Escalation,
        Self::Scale,
        Self::Workflow,
        Self::Template,
        Self::CanaryPolicy,
        Self::Event,
        Self::EventQuery,
        Self::ControlPlane,
    ];

    /// Vamp's kind string (`breeds`, `blueprints`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Breed => "breeds",
            Self::Blueprint => "blueprints",
            Self::Deployment => "deployments",
            Self::Gateway => "gateways",
            Self::Route => "routes",
            Self::Condition => "conditions",
            Self::Rewrite => "rewrites",
            Self::Sla => "slas",
            Self::Escalation => "escalations",
            Self::Scale => "scales",
            Self::Workflow => "workflows",
            Self::Template => "templates",
            Self::CanaryPolicy => "canary-policies",
            Self::Event => "events",
            Self::EventQuery => "event-queries",
            Self::ControlPlane => "control-planes",
        }
    }

    /// Parses a kind string; singular forms (`breed`) and the plural are both accepted, as in
    /// Vamp's list reader, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let lower = lower.replace('_', "-");
        let plural = if lower.ends_with('s') {
            lower
        } else {
            format!("{lower}s")
        };
        Some(match plural.as_str() {
            "breeds" => Self::Breed,
            "blueprints" => Self::Blueprint,
            "deployments" => Self::Deployment,
            "gateways" => Self::Gateway,
            "routes" => Self::Route,
            "conditions" => Self::Condition,
            "rewrites" => Self::Rewrite,
            "slas" => Self::Sla,
            "escalations" => Self::Escalation,
            "scales" => Self::Scale,
            "workflows" => Self::Workflow,
            "templates" => Self::Template,
            "canary-policies" | "canary-policys" | "canaries" | "canarys" => Self::CanaryPolicy,
            "events" => Self::Event,
            "event-queries" | "querys" | "queries" | "event-querys" => Self::EventQuery,
            "control-planes" => Self::ControlPlane,
            _ => return None,
        })
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored artifact kind: its [`ArtifactKind`] and name (kube-core's `Resource` idea).
///
/// Implemented by the top-level artifacts that a [`PersistenceStore`](crate::persistence::PersistenceStore)
/// keeps; their serde form is the canonical DSL.
pub trait Artifact:
    Clone
    + fmt::Debug
    + PartialEq
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind.
    const KIND: ArtifactKind;

    /// The artifact's name.
    fn name(&self) -> &str;
}

macro_rules! artifact {
    ($ty:ty, $kind:ident, |$x:ident| $name:expr) => {
        impl Artifact for $ty {
            const KIND: ArtifactKind = ArtifactKind::$kind;
            fn name(&self) -> &str {
                let $x = self;
                $name
            }
        }
    };
}

artifact!(DefaultBreed, Breed, |x| &x.name);
artifact!(DefaultBlueprint, Blueprint, |x| &x.name);
artifact!(Deployment, Deployment, |x| &x.name);
artifact!(Gateway, Gateway, |x| &x.name);
artifact!(DefaultCondition, Condition, |x| &x.name);
artifact!(PathRewrite, Rewrite, |x| &x.name);
artifact!(Sla, Sla, |x| x.name());
artifact!(DefaultScale, Scale, |x| &x.name);
artifact!(Workflow, Workflow, |x| &x.name);
artifact!(Template, Template, |x| &x.name);
artifact!(CanaryPolicy, CanaryPolicy, |x| &x.name);
artifact!(Route, Route, |x| match x {
    Route::Default(r) => &r.name,
    Route::Reference { name, .. } => name,
});
artifact!(Escalation, Escalation, |x| match x {
    Escalation::Reference(n) => n,
    Escalation::ToAll { name, .. }
    | Escalation::ToOne { name, .. }
    | Escalation::ScaleInstances { name, .. }
    | Escalation::ScaleCpu { name, .. }
    | Escalation::ScaleMemory { name, .. }
    | Escalation::Generic { name, .. } => name,
});

// === breeds ===

/// What a breed deploys: a container image or a command, with its type.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployable {
    /// `container/docker`, `docker`, `command`, `cmd`, `application/javascript`, ...;
    /// `None` means the configured default (`container/docker`).
    pub deployable_type: Option<String>,
    /// The image name, command line or script.
    pub definition: String,
}

/// Whether a port speaks HTTP or plain TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PortType {
    /// HTTP (the default).
    #[default]
    Http,
    /// TCP.
    Tcp,
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        })
    }
}

/// A port trait: `name: 8080/http`.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    /// The port's name.
    pub name: String,
    /// An alias, if any.
    pub alias: Option<String>,
    /// The value as written (`8080/http`, `8080`, `$db.constants.port`).
    pub value: Option<String>,
    /// The port number (0 when unassigned or not a number).
    pub number: i64,
    /// HTTP or TCP.
    pub port_type: PortType,
}

impl Port {
    /// Builds a port from its name and value the way Vamp did: `N/http` and `N/tcp` give number
    /// and type, a plain number is HTTP, anything else has number 0.
    ///
    /// Returns `None` when the value ends with `/http` or `/tcp` but the prefix is not a number
    /// (Vamp threw a raw `NumberFormatException` there).
    pub fn new(name: impl Into<String>, value: Option<String>) -> Option<Self> {
        let (number, port_type) = match value.as_deref() {
            None => (0, PortType::Http),
            Some(v) => {
                let lower = v.to_ascii_lowercase();
                if let Some(n) = lower.strip_suffix("/http") {
                    (n.trim().parse::<i64>().ok()?, PortType::Http)
                } else if let Some(n) = lower.strip_suffix("/tcp") {
                    (n.trim().parse::<i64>().ok()?, PortType::Tcp)
                } else {
                    (v.trim().parse::<i64>().unwrap_or(0), PortType::Http)
                }
            }
        };
        Some(Self {
            name: name.into(),
            alias: None,
            value,
            number,
            port_type,
        })
    }

    /// `<number>/<http|tcp>`.
    pub fn to_value(&self) -> String {
        format!("{}/{}", self.number, self.port_type)
    }

    /// Whether the port number is assigned (`> 0`).
    pub fn assigned(&self) -> bool {
        self.number > 0
    }
}

/// An environment variable trait: `NAME[ALIAS]: value`.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvironmentVariable {
    /// The variable's name.
    pub name: String,
    /// The name injected into the container, if different (`timeout[TIME_OUT]`).
    pub alias: Option<String>,
    /// The value; `None` when it must be supplied by a blueprint or deployment.
    pub value: Option<String>,
    /// The value after interpolation, once resolved.
    pub interpolated: Option<String>,
}

impl EnvironmentVariable {
    /// A variable with a name and an optional value, no alias, not interpolated.
    pub fn new(name: impl Into<String>, value: Option<String>) -> Self {
        Self {
            name: name.into(),
            alias: None,
            value,
            interpolated: None,
        }
    }
}

/// A constant trait, referable by dependents as `$dep.constants.name`.
#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    /// The constant's name.
    pub name: String,
    /// An alias, if any.
    pub alias: Option<String>,
    /// The value (required; `None` only inside a `MissingConstantValueError`).
    pub value: Option<String>,
}

/// A container argument `key: value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Argument {
    /// The key (`privileged` is special).
    pub key: String,
    /// The value, as text.
    pub value: String,
}

impl Argument {
    /// Whether this is the `privileged` argument.
    pub fn privileged(&self) -> bool {
        self.key == "privileged"
    }
}

/// A health check.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    /// The path to check (default `/`).
    pub path: String,
    /// The name of the port to check.
    pub port: String,
    /// Seconds before the first check.
    pub initial_delay: i64,
    /// Seconds a check may take.
    pub timeout: i64,
    /// Seconds between checks.
    pub interval: i64,
    /// Failures before the instance is unhealthy.
    pub failures: i64,
    /// `HTTP` (default), `HTTPS`, `TCP`, ...
    pub protocol: String,
}

/// A breed: a deployable with its ports, environment variables, constants, arguments,
/// dependencies and health checks.
#[derive(Clone, Debug, PartialEq)]
pub struct DefaultBreed {
    /// The breed's name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// What the breed deploys.
    pub deployable: Deployable,
    /// Ports.
    pub ports: Vec<Port>,
    /// Environment variables.
    pub environment_variables: Vec<EnvironmentVariable>,
    /// Constants.
    pub constants: Vec<Constant>,
    /// Container arguments.
    pub arguments: Vec<Argument>,
    /// Dependencies by alias.
    pub dependencies: IndexMap<String, Ref<DefaultBreed>>,
    /// Health checks; `None` when not given.
    pub health_checks: Option<Vec<HealthCheck>>,
}

impl DefaultBreed {
    /// A breed with a name and a deployable definition and nothing else.
    pub fn new(name: impl Into<String>, definition: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            metadata: Map::new(),
            deployable: Deployable {
                deployable_type: None,
                definition: definition.into(),
            },
            ports: Vec::new(),
            environment_variables: Vec::new(),
            constants: Vec::new(),
            arguments: Vec::new(),
            dependencies: IndexMap::new(),
            health_checks: None,
        }
    }
}

/// A breed: a reference or an inline definition.
pub type Breed = Ref<DefaultBreed>;

impl Breed {
    /// The breed's name (the reference name or the inline breed's name).
    pub fn name(&self) -> &str {
        match self {
            Self::Reference(n) => n,
            Self::Inline(b) => &b.name,
        }
    }
}

// === scales ===

/// Resources and instance count of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct DefaultScale {
    /// The scale's name ("" when anonymous).
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// CPU shares.
    pub cpu: Quantity,
    /// Memory.
    pub memory: MegaByte,
    /// Number of instances (default 1).
    pub instances: i64,
}

/// A scale: a reference or an inline definition.
pub type Scale = Ref<DefaultScale>;

// === gateways ===

/// A gateway or route path: `name`, `deployment/port`, `deployment/cluster/port`,
/// `deployment/cluster/service/port`, or an external `[host:port]`.
///
/// Equality compares segments only, as in Vamp.
#[derive(Clone, Debug)]
pub struct GatewayPath {
    /// The path as written.
    pub source: String,
    /// The segments (split on `/`, empty segments dropped; an external path is one segment).
    pub segments: Vec<String>,
}

impl GatewayPath {
    /// Parses a path.
    pub fn new(source: impl Into<String>) -> Self {
        let source = source.into();
        let segments = if Self::is_external_source(&source) {
            vec![source.clone()]
        } else {
            source
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Self { source, segments }
    }

    fn is_external_source(source: &str) -> bool {
        source.starts_with('[') && source.ends_with(']') && source.len() >= 2
    }

    /// Whether this is an external target `[host:port]`.
    pub fn external(&self) -> Option<&str> {
        if Self::is_external_source(&self.source) {
            Some(&self.source[1..self.source.len() - 1])
        } else {
            None
        }
    }

    /// The normalised path (`a/b/c`).
    pub fn normalized(&self) -> String {
        self.segments.join("/")
    }
}

impl PartialEq for GatewayPath {
    fn eq(&self, other: &Self) -> bool {
        self.segments == other.segments
    }
}

impl fmt::Display for GatewayPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Sticky sessions of a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sticky {
    /// A client sticks to a route.
    Route,
    /// A client sticks to a route and an instance.
    Instance,
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Route => "route",
            Self::Instance => "instance",
        })
    }
}

/// A route selector expression (`label(app)(sava) and port(8080)`), validated on read.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSelector {
    /// The expression as written.
    pub definition: String,
}

/// A condition: an expression over the request (`user-agent = Chrome`).
#[derive(Clone, Debug, PartialEq)]
pub struct DefaultCondition {
    /// The condition's name ("" when anonymous).
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The expression.
    pub definition: String,
}

/// A condition: a reference or an inline definition.
pub type Condition = Ref<DefaultCondition>;

/// A path rewrite `<new path> if <condition>`.
#[derive(Clone, Debug, PartialEq)]
pub struct PathRewrite {
    /// The rewrite's name ("" when anonymous).
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The new path (HAProxy format string).
    pub path: String,
    /// The HAProxy condition under which the path is rewritten.
    pub condition: String,
}

/// A rewrite: a reference or an inline definition.
pub type Rewrite = Ref<PathRewrite>;

/// Where a route sends traffic once resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteTarget {
    /// An instance or gateway reachable at host:port.
    Internal {
        /// The target's name (instance or gateway name).
        name: String,
        /// The host, if any (default `127.0.0.1`).
        host: Option<String>,
        /// The port.
        port: i64,
    },
    /// An external `host:port`.
    External {
        /// `host:port`.
        url: String,
    },
}

/// A route definition of a gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct DefaultRoute {
    /// The route's name ("" when anonymous).
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// Where the route points (its key in the gateway's `routes` map).
    pub path: GatewayPath,
    /// A selector for discovered targets.
    pub selector: Option<RouteSelector>,
    /// The share of traffic (`50%`).
    pub weight: Option<Percentage>,
    /// A condition on the request.
    pub condition: Option<Condition>,
    /// The share of requests matching the condition that this route takes.
    pub condition_strength: Option<Percentage>,
    /// Path rewrites.
    pub rewrites: Vec<Rewrite>,
    /// HAProxy balance algorithm for this route's backend.
    pub balance: Option<String>,
    /// Resolved targets.
    pub targets: Vec<RouteTarget>,
}

impl DefaultRoute {
    /// An anonymous route to `path` with nothing else set.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            name: String::new(),
            metadata: Map::new(),
            path: GatewayPath::new(path),
            selector: None,
            weight: None,
            condition: None,
            condition_strength: None,
            rewrites: Vec::new(),
            balance: None,
            targets: Vec::new(),
        }
    }
}

/// A route: a reference to a stored route (at a path) or a definition.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// A reference to a stored route, placed at `path`.
    Reference {
        /// The stored route's name.
        name: String,
        /// Where the route points.
        path: GatewayPath,
    },
    /// A route definition.
    Default(DefaultRoute),
}

impl Route {
    /// The route's path.
    pub fn path(&self) -> &GatewayPath {
        match self {
            Self::Reference { path, .. } => path,
            Self::Default(r) => &r.path,
        }
    }

    /// The definition, if this is not a reference.
    pub fn definition(&self) -> Option<&DefaultRoute> {
        match self {
            Self::Default(r) => Some(r),
            Self::Reference { .. } => None,
        }
    }
}

/// Host and port a gateway is served on (set by the system).
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayService {
    /// The host.
    pub host: String,
    /// The port.
    pub port: Port,
}

/// A gateway: a port with weighted, conditional routes.
#[derive(Clone, Debug, PartialEq)]
pub struct Gateway {
    /// The name (`name`, `deployment/port` or `deployment/cluster/port`; "" when anonymous).
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The port (number 0 when unassigned).
    pub port: Port,
    /// Where the gateway is served.
    pub service: Option<GatewayService>,
    /// Sticky sessions.
    pub sticky: Option<Sticky>,
    /// Virtual host names.
    pub virtual_hosts: Vec<String>,
    /// A selector for discovered routes.
    pub selector: Option<RouteSelector>,
    /// The routes.
    pub routes: Vec<Route>,
    /// Whether the gateway is deployed.
    pub deployed: bool,
}

impl Gateway {
    /// An anonymous, unassigned gateway on `port` with no routes.
    pub fn new(port: Port) -> Self {
        Self {
            name: String::new(),
            metadata: Map::new(),
            port,
            service: None,
            sticky: None,
            virtual_hosts: Vec::new(),
            selector: None,
            routes: Vec::new(),
            deployed: false,
        }
    }

    /// Whether this is an internal (cluster) gateway: three name segments.
    pub fn internal(&self) -> bool {
        GatewayPath::new(self.name.clone()).segments.len() == 3
    }
}

// === SLAs and escalations ===

/// An escalation: what to do when an SLA is violated.
#[derive(Clone, Debug, PartialEq)]
pub enum Escalation {
    /// A stored escalation.
    Reference(String),
    /// Run every escalation in the group.
    ToAll {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// The group.
        escalations: Vec<Escalation>,
    },
    /// Run the first escalation of the group that applies.
    ToOne {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// The group.
        escalations: Vec<Escalation>,
    },
    /// Scale the number of instances.
    ScaleInstances {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// Lower bound.
        minimum: i64,
        /// Upper bound.
        maximum: i64,
        /// Step.
        scale_by: i64,
        /// Cluster to scale (default: the SLA's cluster).
        target: Option<String>,
    },
    /// Scale CPU shares.
    ScaleCpu {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// Lower bound.
        minimum: f64,
        /// Upper bound.
        maximum: f64,
        /// Step.
        scale_by: f64,
        /// Cluster to scale.
        target: Option<String>,
    },
    /// Scale memory (MB).
    ScaleMemory {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// Lower bound.
        minimum: f64,
        /// Upper bound.
        maximum: f64,
        /// Step.
        scale_by: f64,
        /// Cluster to scale.
        target: Option<String>,
    },
    /// Any other escalation type, with its parameters.
    Generic {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// The type.
        escalation_type: String,
        /// Every other key.
        parameters: Map,
    },
}

/// A service level agreement.
#[derive(Clone, Debug, PartialEq)]
pub enum Sla {
    /// A stored SLA, optionally with its own escalations.
    Reference {
        /// The stored SLA's name.
        name: String,
        /// Escalations of this use.
        escalations: Vec<Escalation>,
    },
    /// Response time over a sliding window.
    ResponseTimeSlidingWindow {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// Upper threshold (ms).
        upper: i64,
        /// Lower threshold (ms).
        lower: i64,
        /// Window (s).
        interval: i64,
        /// Cooldown after an escalation (s).
        cooldown: i64,
        /// Escalations.
        escalations: Vec<Escalation>,
    },
    /// Only escalations, no check of its own.
    EscalationOnly {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// Escalations.
        escalations: Vec<Escalation>,
    },
    /// Any other SLA type, with its parameters.
    Generic {
        /// The name ("" when anonymous).
        name: String,
        /// Free-form metadata.
        metadata: Metadata,
        /// The type.
        sla_type: String,
        /// Escalations.
        escalations: Vec<Escalation>,
        /// Every other key.
        parameters: Map,
    },
}

impl Sla {
    /// The SLA's name ("" when anonymous).
    pub fn name(&self) -> &str {
        match self {
            Self::Reference { name, .. }
            | Self::ResponseTimeSlidingWindow { name, .. }
            | Self::EscalationOnly { name, .. }
            | Self::Generic { name, .. } => name,
        }
    }

    /// The SLA's escalations.
    pub fn escalations(&self) -> &[Escalation] {
        match self {
            Self::Reference { escalations, .. }
            | Self::ResponseTimeSlidingWindow { escalations, .. }
            | Self::EscalationOnly { escalations, .. }
            | Self::Generic { escalations, .. } => escalations,
        }
    }
}

// === blueprints ===

/// Health counters of a deployed service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// Staged instances.
    pub staged: i64,
    /// Running instances.
    pub running: i64,
    /// Healthy instances.
    pub healthy: i64,
    /// Unhealthy instances.
    pub unhealthy: i64,
}

/// A service of a blueprint cluster: a breed with its scale and overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// The breed.
    pub breed: Breed,
    /// Environment variable overrides.
    pub environment_variables: Vec<EnvironmentVariable>,
    /// The scale.
    pub scale: Option<Scale>,
    /// Container arguments.
    pub arguments: Vec<Argument>,
    /// Health checks.
    pub health_checks: Option<Vec<HealthCheck>>,
    /// Network.
    pub network: Option<String>,
    /// Dialects.
    pub dialects: Dialects,
    /// Health counters.
    pub health: Option<Health>,
}

impl Service {
    /// A service of `breed` with nothing else set.
    pub fn new(breed: Breed) -> Self {
        Self {
            breed,
            environment_variables: Vec::new(),
            scale: None,
            arguments: Vec::new(),
            health_checks: None,
            network: None,
            dialects: Map::new(),
            health: None,
        }
    }
}

/// A cluster of a blueprint: services with the same role, routed by the cluster's gateways.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The services.
    pub services: Vec<Service>,
    /// Internal gateways, one per breed port.
    pub gateways: Vec<Gateway>,
    /// Health checks.
    pub health_checks: Option<Vec<HealthCheck>>,
    /// Network.
    pub network: Option<String>,
    /// SLA.
    pub sla: Option<Sla>,
    /// Dialects.
    pub dialects: Dialects,
}

impl Cluster {
    /// A cluster with a name and services and nothing else.
    pub fn new(name: impl Into<String>, services: Vec<Service>) -> Self {
        Self {
            name: name.into(),
            metadata: Map::new(),
            services,
            gateways: Vec::new(),
            health_checks: None,
            network: None,
            sla: None,
            dialects: Map::new(),
        }
    }
}

/// A blueprint: clusters of services and the gateways in front of them.
#[derive(Clone, Debug, PartialEq)]
pub struct DefaultBlueprint {
    /// The blueprint's name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The clusters.
    pub clusters: Vec<Cluster>,
    /// External gateways.
    pub gateways: Vec<Gateway>,
    /// Blueprint-level environment variables (`cluster.environment_variables.NAME`).
    pub environment_variables: Vec<EnvironmentVariable>,
    /// Dialects.
    pub dialects: Dialects,
}

/// A blueprint: a reference or an inline definition.
pub type Blueprint = Ref<DefaultBlueprint>;

// === deployments ===

/// What the system intends for a deployed service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intention {
    /// Deploy.
    Deployment,
    /// Undeploy.
    Undeployment,
}

/// Where a deployed service is on the way to its intention.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Just started.
    Initiated {
        /// Since when (ISO-8601).
        since: String,
    },
    /// Being updated.
    Updating {
        /// Since when.
        since: String,
    },
    /// Done.
    Done {
        /// Since when.
        since: String,
    },
    /// Failed, with the notification text.
    Failed {
        /// Since when.
        since: String,
        /// What failed.
        notification: String,
    },
}

/// The status of a deployed service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceStatus {
    /// The intention.
    pub intention: Intention,
    /// Since when (ISO-8601).
    pub since: String,
    /// The phase.
    pub phase: Phase,
}

/// A running instance of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// The instance's name.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Port numbers by port name.
    pub ports: IndexMap<String, i64>,
    /// Whether it is deployed.
    pub deployed: bool,
}

/// A service of a deployment cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentService {
    /// Status.
    pub status: ServiceStatus,
    /// The breed, always expanded.
    pub breed: DefaultBreed,
    /// Environment variables.
    pub environment_variables: Vec<EnvironmentVariable>,
    /// The scale.
    pub scale: Option<DefaultScale>,
    /// Instances.
    pub instances: Vec<Instance>,
    /// Arguments.
    pub arguments: Vec<Argument>,
    /// Health checks.
    pub health_checks: Option<Vec<HealthCheck>>,
    /// Network.
    pub network: Option<String>,
    /// Dependency alias → cluster name.
    pub dependencies: IndexMap<String, String>,
    /// Dialects.
    pub dialects: Dialects,
    /// Health counters.
    pub health: Option<Health>,
}

/// A cluster of a deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentCluster {
    /// The cluster's name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The services.
    pub services: Vec<DeploymentService>,
    /// Internal gateways.
    pub gateways: Vec<Gateway>,
    /// Health checks.
    pub health_checks: Option<Vec<HealthCheck>>,
    /// Network.
    pub network: Option<String>,
    /// SLA.
    pub sla: Option<Sla>,
    /// Dialects.
    pub dialects: Dialects,
}

/// A trait value of a deployment (`cluster.hosts.host`).
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    /// `cluster.hosts.host`.
    pub name: String,
    /// The host.
    pub value: Option<String>,
}

/// A deployment: a blueprint made real.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    /// The deployment's name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The clusters.
    pub clusters: Vec<DeploymentCluster>,
    /// External gateways.
    pub gateways: Vec<Gateway>,
    /// Ports (`cluster.ports.port` → gateway port).
    pub ports: Vec<Port>,
    /// Environment variables (`cluster.environment_variables.NAME`).
    pub environment_variables: Vec<EnvironmentVariable>,
    /// Hosts (`cluster.hosts.host`).
    pub hosts: Vec<Host>,
    /// Dialects.
    pub dialects: Dialects,
}

// === workflows ===

/// A workflow's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkflowStatus {
    /// Starting (the default).
    Starting,
    /// Running.
    Running,
    /// Stopping.
    Stopping,
    /// Suspended.
    Suspended,
    /// Suspending.
    Suspending,
    /// Restarting, optionally in a phase (`stopping` or `starting`).
    Restarting(Option<RestartingPhase>),
}

/// The phase of a restarting workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartingPhase {
    /// Stopping the old run.
    Stopping,
    /// Starting the new run.
    Starting,
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Suspended => "suspended",
            Self::Suspending => "suspending",
            Self::Restarting(None) => "restarting",
            Self::Restarting(Some(RestartingPhase::Stopping)) => "restarting/stopping",
            Self::Restarting(Some(RestartingPhase::Starting)) => "restarting/starting",
        })
    }
}

/// An ISO-8601 repeat period `P1Y2M3DT4H5M6S`: a date part and a time part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RepeatPeriod {
    /// `P1Y2M3D` as (years, months, days), if given.
    pub period: Option<(i64, i64, i64)>,
    /// `PT4H5M6S` as seconds, if given.
    pub duration: Option<i64>,
}

impl fmt::Display for RepeatPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.period.is_none() && self.duration.is_none() {
            return f.write_str("PT1S");
        }
        f.write_str("P")?;
        if let Some((y, m, d)) = self.period {
            if y != 0 {
                write!(f, "{y}Y")?;
            }
            if m != 0 {
                write!(f, "{m}M")?;
            }
            if d != 0 || (y == 0 && m == 0) {
                write!(f, "{d}D")?;
            }
        }
        if let Some(secs) = self.duration {
            f.write_str("T")?;
            let (h, rest) = (secs / 3600, secs % 3600);
            let (m, s) = (rest / 60, rest % 60);
            if h != 0 {
                write!(f, "{h}H")?;
            }
            if m != 0 {
                write!(f, "{m}M")?;
            }
            if s != 0 || (h == 0 && m == 0) {
                write!(f, "{s}S")?;
            }
        }
        Ok(())
    }
}

/// How often a time schedule repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Forever.
    Forever,
    /// A number of times.
    Count(i64),
}

/// When a workflow runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Always (a daemon).
    Daemon,
    /// On events carrying all of these tags.
    Event {
        /// The tags (a set, in first-seen order).
        tags: Vec<String>,
    },
    /// On a timer.
    Time {
        /// The period.
        period: RepeatPeriod,
        /// How often.
        repeat: Repeat,
        /// The start (ISO-8601 offset date-time), `None` for now.
        start: Option<String>,
    },
}

/// A workflow: a breed run on a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Workflow {
    /// The workflow's name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The breed to run.
    pub breed: Breed,
    /// The status.
    pub status: WorkflowStatus,
    /// The schedule.
    pub schedule: Schedule,
    /// The scale.
    pub scale: Option<Scale>,
    /// Environment variables.
    pub environment_variables: Vec<EnvironmentVariable>,
    /// Arguments.
    pub arguments: Vec<Argument>,
    /// Network.
    pub network: Option<String>,
    /// Health checks.
    pub health_checks: Option<Vec<HealthCheck>>,
    /// Dialects.
    pub dialects: Dialects,
    /// Running instances.
    pub instances: Vec<Instance>,
}

// === templates and imports ===

/// A template: a stored fragment that other documents import.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    /// The template's name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The fragment.
    pub definition: Map,
}

/// One entry of an `import:` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReference {
    /// The artifact's name.
    pub name: String,
    /// Its kind (`templates` when not given).
    pub kind: ArtifactKind,
}

/// A document with `import:`: the document without the import, and what it imports.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    /// The document minus `import`.
    pub base: Map,
    /// The imported artifacts, in order.
    pub references: Vec<ImportReference>,
}

// === canary policies (an extension of Vamp's DSL) ===

/// A canary release that decides for itself: the weights of `canary` in `gateway` move
/// through `steps`, one every `interval`, while every gate passes; after `failures` failed
/// checks in a row the stable route gets all traffic back. See
/// [`crate::ops::canary`] for the decisions and the statistics behind them.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryPolicy {
    /// The policy's name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// The gateway whose weights move (`sava/sava/webport`, or a standalone gateway).
    pub gateway: String,
    /// The stable route's path in the gateway (`sava/sava/sava:1.0/webport`).
    pub stable: String,
    /// The canary route's path.
    pub canary: String,
    /// The canary's weights, in percent, increasing. Passing the last (or reaching 100%)
    /// promotes: the canary gets all traffic.
    pub steps: Vec<u8>,
    /// Time between checks (ms).
    pub interval_ms: i64,
    /// Failed checks in a row before the rollback (at least 1).
    pub failures: u32,
    /// Requests each compared route needs in a check before it can pass or fail.
    pub minimum_requests: u64,
    /// The gates every check must pass.
    pub gates: CanaryGates,
    /// After promotion, slice the stable route's service out of its deployment.
    pub slice_stable: bool,
    /// Cookie stickiness on the gateway while the release runs: a user stays on the version
    /// first served.
    pub sticky: bool,
    /// Where the release is (written by the control plane).
    pub status: CanaryStatus,
}

/// The gates of a [`CanaryPolicy`]; unset gates are not checked.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CanaryGates {
    /// The canary's share of 5xx answers must not exceed this (a fraction, 0–1).
    pub max_error_rate: Option<f64>,
    /// The canary's response-time percentile must not exceed this (ms).
    pub max_response_time: Option<(f64, f64)>,
    /// The canary's error rate must not exceed the stable route's by more than this (a
    /// fraction, 0–1).
    pub relative_error_rate: Option<f64>,
    /// The canary's response-time percentile must not exceed the stable route's by more than
    /// this fraction: `(percentile, margin)`.
    pub relative_response_time: Option<(f64, f64)>,
    /// The confidence of the statistical tests (a fraction, default 0.95).
    pub confidence: f64,
}

/// The phase of a canary release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CanaryPhase {
    /// Not started yet.
    #[default]
    Pending,
    /// Moving through the steps.
    Progressing,
    /// Paused through the API: nothing moves.
    Paused,
    /// The canary got its last step.
    Promoted,
    /// The stable route got all traffic back after failed checks.
    RolledBack,
    /// Stopped through the API: the stable route got all traffic back.
    Aborted,
}

impl CanaryPhase {
    /// The DSL word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Progressing => "progressing",
            Self::Paused => "paused",
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
        }
    }

    /// Parses the DSL word.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "progressing" => Self::Progressing,
            "paused" => Self::Paused,
            "promoted" => Self::Promoted,
            "rolled_back" => Self::RolledBack,
            "aborted" => Self::Aborted,
            _ => return None,
        })
    }

    /// Whether the release is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Promoted | Self::RolledBack | Self::Aborted)
    }
}

/// Where a canary release is: persisted with the policy, so a restarted control plane resumes.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CanaryStatus {
    /// The phase.
    pub phase: CanaryPhase,
    /// The index of the current step in `steps` (`None` before the first).
    pub step: Option<usize>,
    /// Failed checks in a row.
    pub failed_checks: u32,
    /// When the current step began (ms since the epoch).
    pub since_ms: Option<i64>,
    /// When the last check ran (ms since the epoch).
    pub last_check_ms: Option<i64>,
    /// Why the last decision was taken.
    pub reason: Option<String>,
}

// === events ===

/// An event: tags, a value, a type and a timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// An id, once stored.
    pub id: Option<String>,
    /// A version (`1.0` for system events).
    pub version: Option<String>,
    /// The tags (a set, in first-seen order; never empty).
    pub tags: Vec<String>,
    /// The value (any tree).
    pub value: Node,
    /// When (ISO-8601 offset date-time).
    pub timestamp: String,
    /// The type (default `event`).
    pub event_type: String,
    /// A digest, if any.
    pub digest: Option<String>,
}

impl Event {
    /// A system event of the control plane (version `1.0`, as Vamp's) at `now_ms`.
    pub fn system(
        tags: Vec<String>,
        value: Node,
        event_type: impl Into<String>,
        now_ms: i64,
    ) -> Self {
        let mut e = Self::new(tags, value, event_type);
        e.version = Some("1.0".into());
        e.timestamp = crate::time::format_epoch_millis(now_ms);
        e
    }

    /// A new event of `event_type` with `tags` and `value`, timestamped now (no id yet).
    pub fn new(tags: Vec<String>, value: Node, event_type: impl Into<String>) -> Self {
        Self {
            id: None,
            version: None,
            tags,
            value,
            timestamp: crate::time::now_iso(),
            event_type: event_type.into(),
            digest: None,
        }
    }
}

/// A time range of an event query; values are strings like `now() - 10m`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TimeRange {
    /// Less than.
    pub lt: Option<String>,
    /// Less than or equal.
    pub lte: Option<String>,
    /// Greater than.
    pub gt: Option<String>,
    /// Greater than or equal.
    pub gte: Option<String>,
}

/// An aggregation of an event query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregatorType {
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Average.
    Average,
    /// Sum.
    Sum,
    /// Count.
    Count,
}

impl fmt::Display for AggregatorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Min => "min",
            Self::Max => "max",
            Self::Average => "average",
            Self::Sum => "sum",
            Self::Count => "count",
        })
    }
}

/// An aggregator: a type over a field.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregator {
    /// The aggregation.
    pub aggregator_type: AggregatorType,
    /// The field (default `value`).
    pub field: String,
}

/// A query over events.
#[derive(Clone, Debug, PartialEq)]
pub struct EventQuery {
    /// Events must carry all these tags.
    pub tags: Vec<String>,
    /// Events must be of this type.
    pub event_type: Option<String>,
    /// Time range.
    pub timestamp: Option<TimeRange>,
    /// Aggregation.
    pub aggregator: Option<Aggregator>,
}

#[cfg(test)]
mod time_schedule_spec {
    //! reader-fixtures.md A.7 TimeScheduleSpec, through the workflow reader.
    use super::*;
    use crate::dsl::{AnyArtifact, read_str};

    fn period(p: &str) -> RepeatPeriod {
        let doc = format!("name: w\nbreed: b\nschedule:\n  time: {{period: '{p}'}}\n");
        match read_str(&doc, Some(ArtifactKind::Workflow))
            .unwrap()
            .remove(0)
        {
            AnyArtifact::Workflow(Workflow {
                schedule:
                    Schedule::Time {
                        period,
                        repeat: Repeat::Forever,
                        start: None,
                    },
                ..
            }) => period,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spec() {
        assert_eq!(
            period(""),
            RepeatPeriod {
                period: None,
                duration: None
            }
        );
        assert_eq!(period(""), RepeatPeriod::default());
        assert_eq!(
            RepeatPeriod::default().to_string(),
            "PT1S",
            "Vamp formats the empty period as PT1S"
        );
        assert_eq!(
            period("P1Y2M3D"),
            RepeatPeriod {
                period: Some((1, 2, 3)),
                duration: None
            }
        );
        assert_eq!(
            period("PT1H2M3S"),
            RepeatPeriod {
                period: None,
                duration: Some(3723)
            }
        );
        assert_eq!(
            period("P1Y2M3DT1H2M3S"),
            RepeatPeriod {
                period: Some((1, 2, 3)),
                duration: Some(3723)
            }
        );
        assert_eq!(period("P1Y2M3DT1H2M3S").to_string(), "P1Y2M3DT1H2M3S");
        let bad = read_str(
            "name: w\nbreed: b\nschedule: {time: {period: 1Y}}\n",
            Some(ArtifactKind::Workflow),
        )
        .unwrap_err();
        assert_eq!(bad.code(), "IllegalWorkflowSchedulePeriod");
    }
}
