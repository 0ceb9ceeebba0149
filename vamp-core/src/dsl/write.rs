//! The writer: every artifact to its canonical DSL tree, and trees to YAML or JSON.
//!
//! The canonical form uses the long forms of the DSL (no shortcuts that depend on context),
//! always includes `kind`, and reads back to an equal artifact.

use std::fmt::Write as _;

use super::AnyArtifact;
use crate::model::*;
use crate::node::{Map, Node, resolve_plain};

fn s(v: impl Into<String>) -> Node {
    Node::Str(v.into())
}

struct M(Map);

impl M {
    fn new() -> Self {
        Self(Map::new())
    }
    fn put(mut self, k: &str, v: Node) -> Self {
        self.0.insert(k.to_owned(), v);
        self
    }
    fn opt(self, k: &str, v: Option<Node>) -> Self {
        match v {
            Some(v) => self.put(k, v),
            None => self,
        }
    }
    fn nonempty_map(self, k: &str, v: &Map) -> Self {
        if v.is_empty() {
            self
        } else {
            self.put(k, Node::Map(v.clone()))
        }
    }
    fn name(self, name: &str) -> Self {
        if name.is_empty() {
            self
        } else {
            self.put("name", s(name))
        }
    }
    fn done(self) -> Node {
        Node::Map(self.0)
    }
}

fn trait_map<'a>(items: impl Iterator<Item = (String, Option<&'a String>)>) -> Node {
    Node::Map(
        items
            .map(|(k, v)| (k, v.map_or(Node::Null, |v| s(v.clone()))))
            .collect(),
    )
}

fn env_vars(vars: &[EnvironmentVariable]) -> Node {
    trait_map(vars.iter().map(|e| {
        let key = match &e.alias {
            Some(a) => format!("{}[{a}]", e.name),
            None => e.name.clone(),
        };
        (key, e.value.as_ref())
    }))
}

fn arguments(args: &[Argument]) -> Node {
    Node::Seq(
        args.iter()
            .map(|a| Node::Map(Map::from_iter([(a.key.clone(), s(a.value.clone()))])))
            .collect(),
    )
}

fn health_checks(hcs: &[HealthCheck]) -> Node {
    Node::Seq(
        hcs.iter()
            .map(|h| {
                M::new()
                    .put("path", s(h.path.clone()))
                    .put("port", s(h.port.clone()))
                    .put("initial_delay", s(format!("{}s", h.initial_delay)))
                    .put("timeout", s(format!("{}s", h.timeout)))
                    .put("interval", s(format!("{}s", h.interval)))
                    .put("failures", Node::Int(h.failures))
                    .put("protocol", s(h.protocol.clone()))
                    .done()
            })
            .collect(),
    )
}

fn breed_ref(b: &Breed) -> Node {
    match b {
        Ref::Reference(n) => s(n.clone()),
        Ref::Inline(b) => breed_node(b, false),
    }
}

fn breed_node(b: &DefaultBreed, top: bool) -> Node {
    let deployable = match &b.deployable.deployable_type {
        None => s(b.deployable.definition.clone()),
        Some(t) => M::new()
            .put("type", s(t.clone()))
            .put("definition", s(b.deployable.definition.clone()))
            .done(),
    };
    let mut m = M::new();
    if top {
        m = m.put("kind", s("breeds"));
    }
    m = m
        .put("name", s(b.name.clone()))
        .nonempty_map("metadata", &b.metadata)
        .put("deployable", deployable);
    if !b.ports.is_empty() {
        m = m.put(
            "ports",
            trait_map(b.ports.iter().map(|p| (p.name.clone(), p.value.as_ref()))),
        );
    }
    if !b.environment_variables.is_empty() {
        m = m.put("environment_variables", env_vars(&b.environment_variables));
    }
    if !b.constants.is_empty() {
        m = m.put(
            "constants",
            trait_map(
                b.constants
                    .iter()
                    .map(|c| (c.name.clone(), c.value.as_ref())),
            ),
        );
    }
    if !b.arguments.is_empty() {
        m = m.put("arguments", arguments(&b.arguments));
    }
    if !b.dependencies.is_empty() {
        m = m.put(
            "dependencies",
            Node::Map(
                b.dependencies
                    .iter()
                    .map(|(k, v)| (k.clone(), breed_ref(v)))
                    .collect(),
            ),
        );
    }
    m.opt(
        "health_checks",
        b.health_checks.as_deref().map(health_checks),
    )
    .done()
}

fn scale_node(sc: &DefaultScale, top: bool) -> Node {
    let mut m = M::new();
    if top {
        m = m.put("kind", s("scales")).name(&sc.name);
    }
    m.nonempty_map("metadata", &sc.metadata)
        .put("cpu", Node::Float(sc.cpu.0))
        .put("memory", s(sc.memory.to_string()))
        .put("instances", Node::Int(sc.instances))
        .done()
}

fn scale_ref(sc: &Scale) -> Node {
    match sc {
        Ref::Reference(n) => s(n.clone()),
        Ref::Inline(sc) => scale_node(sc, false),
    }
}

fn condition_ref(c: &Condition) -> Node {
    match c {
        Ref::Reference(n) => M::new().put("reference", s(n.clone())).done(),
        Ref::Inline(c) if c.metadata.is_empty() => s(c.definition.clone()),
        Ref::Inline(c) => M::new()
            .nonempty_map("metadata", &c.metadata)
            .put("condition", s(c.definition.clone()))
            .done(),
    }
}

fn rewrite_node(r: &PathRewrite, top: bool) -> Node {
    let mut m = M::new();
    if top {
        m = m.put("kind", s("rewrites")).name(&r.name);
    }
    m.nonempty_map("metadata", &r.metadata)
        .put("path", s(format!("{} if {}", r.path, r.condition)))
        .done()
}

fn route_body(r: &DefaultRoute, top: bool) -> Node {
    let mut m = M::new();
    if top {
        m = m.put("kind", s("routes")).name(&r.name);
    }
    m.nonempty_map("metadata", &r.metadata)
        .opt(
            "selector",
            r.selector.as_ref().map(|x| s(x.definition.clone())),
        )
        .opt("weight", r.weight.map(|w| s(w.to_string())))
        .opt("condition", r.condition.as_ref().map(condition_ref))
        .opt(
            "condition_strength",
            r.condition_strength.map(|w| s(w.to_string())),
        )
        .opt(
            "rewrites",
            (!r.rewrites.is_empty()).then(|| {
                Node::Seq(
                    r.rewrites
                        .iter()
                        .map(|x| match x {
                            Ref::Reference(n) => s(n.clone()),
                            Ref::Inline(x) => rewrite_node(x, false),
                        })
                        .collect(),
                )
            }),
        )
        .opt("balance", r.balance.as_ref().map(|b| s(b.clone())))
        .done()
}

fn routes(routes: &[Route]) -> Node {
    Node::Map(
        routes
            .iter()
            .map(|r| match r {
                Route::Reference { name, path } => (path.source.clone(), s(name.clone())),
                Route::Default(d) => (d.path.source.clone(), route_body(d, false)),
            })
            .collect(),
    )
}

/// The gateway body (everything but name and port).
fn gateway_body(g: &Gateway, mut m: M) -> M {
    m = m.nonempty_map("metadata", &g.metadata).opt(
        "service",
        g.service.as_ref().map(|sv| {
            M::new()
                .put("host", s(sv.host.clone()))
                .put("port", s(sv.port.value.clone().unwrap_or_default()))
                .done()
        }),
    );
    m = m.opt("sticky", g.sticky.map(|x| s(x.to_string())));
    if !g.virtual_hosts.is_empty() {
        m = m.put(
            "virtual_hosts",
            Node::Seq(g.virtual_hosts.iter().map(|v| s(v.clone())).collect()),
        );
    }
    m = m.opt(
        "selector",
        g.selector.as_ref().map(|x| s(x.definition.clone())),
    );
    m = m.put("routes", routes(&g.routes));
    if g.deployed {
        m = m.put("deployed", Node::Bool(true));
    }
    m
}

pub(crate) fn gateway_node(g: &Gateway) -> Node {
    let m = M::new()
        .put("kind", s("gateways"))
        .put("name", s(g.name.clone()));
    let m = match &g.port.value {
        Some(v) => m.put("port", s(v.clone())),
        None => m,
    };
    gateway_body(g, m).done()
}

/// Blueprint/deployment gateways: key is the port value when the key alone gives the port.
fn port_gateways(gateways: &[Gateway]) -> Node {
    Node::Map(
        gateways
            .iter()
            .map(|g| {
                let value = g.port.value.clone().unwrap_or_default();
                let key_gives_port = Port::new("", Some(value.clone()))
                    .is_some_and(|p| p.number != 0 && p.number.to_string() == g.port.name);
                if key_gives_port {
                    (value, gateway_body(g, M::new()).done())
                } else {
                    (
                        g.port.name.clone(),
                        gateway_body(g, M::new().put("port", s(value))).done(),
                    )
                }
            })
            .collect(),
    )
}

fn cluster_gateways(gateways: &[Gateway]) -> Node {
    if let [g] = gateways
        && g.port.name.is_empty()
    {
        return gateway_body(g, M::new()).done();
    }
    Node::Map(
        gateways
            .iter()
            .map(|g| (g.port.name.clone(), gateway_body(g, M::new()).done()))
            .collect(),
    )
}

fn escalation_node(e: &Escalation, top: bool) -> Node {
    let head = |name: &str, metadata: &Map, t: &str| {
        let m = if top {
            M::new().put("kind", s("escalations")).name(name)
        } else {
            M::new()
        };
        m.nonempty_map("metadata", metadata).put("type", s(t))
    };
    match e {
        Escalation::Reference(n) => s(n.clone()),
        Escalation::ToAll {
            name,
            metadata,
            escalations,
        } => head(name, metadata, "to_all")
            .put(
                "escalations",
                Node::Seq(
                    escalations
                        .iter()
                        .map(|x| escalation_node(x, false))
                        .collect(),
                ),
            )
            .done(),
        Escalation::ToOne {
            name,
            metadata,
            escalations,
        } => head(name, metadata, "to_one")
            .put(
                "escalations",
                Node::Seq(
                    escalations
                        .iter()
                        .map(|x| escalation_node(x, false))
                        .collect(),
                ),
            )
            .done(),
        Escalation::ScaleInstances {
            name,
            metadata,
            minimum,
            maximum,
            scale_by,
            target,
        } => head(name, metadata, "scale_instances")
            .put("minimum", Node::Int(*minimum))
            .put("maximum", Node::Int(*maximum))
            .put("scale_by", Node::Int(*scale_by))
            .opt("target", target.as_ref().map(|t| s(t.clone())))
            .done(),
        Escalation::ScaleCpu {
            name,
            metadata,
            minimum,
            maximum,
            scale_by,
            target,
        }
        | Escalation::ScaleMemory {
            name,
            metadata,
            minimum,
            maximum,
            scale_by,
            target,
        } => {
            let t = if matches!(e, Escalation::ScaleCpu { .. }) {
                "scale_cpu"
            } else {
                "scale_memory"
            };
            head(name, metadata, t)
                .put("minimum", Node::Float(*minimum))
                .put("maximum", Node::Float(*maximum))
                .put("scale_by", Node::Float(*scale_by))
                .opt("target", target.as_ref().map(|t| s(t.clone())))
                .done()
        }
        Escalation::Generic {
            name,
            metadata,
            escalation_type,
            parameters,
        } => {
            let mut m = head(name, metadata, escalation_type);
            for (k, v) in parameters {
                m = m.put(k, v.clone());
            }
            m.done()
        }
    }
}

fn escalations(es: &[Escalation]) -> Node {
    Node::Seq(es.iter().map(|e| escalation_node(e, false)).collect())
}

fn sla_node(sla: &Sla, top: bool) -> Node {
    let head = |name: &str, metadata: &Map, t: &str| {
        let m = if top {
            M::new().put("kind", s("slas")).name(name)
        } else {
            M::new()
        };
        m.nonempty_map("metadata", metadata).put("type", s(t))
    };
    let with_escalations = |m: M, es: &[Escalation]| {
        if es.is_empty() {
            m
        } else {
            m.put("escalations", escalations(es))
        }
    };
    match sla {
        Sla::Reference {
            name,
            escalations: es,
        } if es.is_empty() => s(name.clone()),
        Sla::Reference {
            name,
            escalations: es,
        } => with_escalations(M::new().put("reference", s(name.clone())), es).done(),
        Sla::ResponseTimeSlidingWindow {
            name,
            metadata,
            upper,
            lower,
            interval,
            cooldown,
            escalations: es,
        } => {
            let m = head(name, metadata, "response_time_sliding_window")
                .put(
                    "threshold",
                    M::new()
                        .put("upper", Node::Int(*upper))
                        .put("lower", Node::Int(*lower))
                        .done(),
                )
                .put(
                    "window",
                    M::new()
                        .put("interval", Node::Int(*interval))
                        .put("cooldown", Node::Int(*cooldown))
                        .done(),
                );
            with_escalations(m, es).done()
        }
        Sla::EscalationOnly {
            name,
            metadata,
            escalations: es,
        } => with_escalations(head(name, metadata, "escalation_only"), es).done(),
        Sla::Generic {
            name,
            metadata,
            sla_type,
            escalations: es,
            parameters,
        } => {
            let mut m = with_escalations(head(name, metadata, sla_type), es);
            for (k, v) in parameters {
                m = m.put(k, v.clone());
            }
            m.done()
        }
    }
}

fn service_node(sv: &Service) -> Node {
    let mut m = M::new().put("breed", breed_ref(&sv.breed));
    if !sv.environment_variables.is_empty() {
        m = m.put("environment_variables", env_vars(&sv.environment_variables));
    }
    m = m.opt("scale", sv.scale.as_ref().map(scale_ref));
    if !sv.arguments.is_empty() {
        m = m.put("arguments", arguments(&sv.arguments));
    }
    m.opt(
        "health_checks",
        sv.health_checks.as_deref().map(health_checks),
    )
    .opt("network", sv.network.as_ref().map(|n| s(n.clone())))
    .nonempty_map("dialects", &sv.dialects)
    .opt("health", sv.health.map(health_node))
    .done()
}

fn health_node(h: Health) -> Node {
    M::new()
        .put("staged", Node::Int(h.staged))
        .put("running", Node::Int(h.running))
        .put("healthy", Node::Int(h.healthy))
        .put("unhealthy", Node::Int(h.unhealthy))
        .done()
}

fn cluster_tail(
    m: M,
    gateways: &[Gateway],
    hcs: Option<&[HealthCheck]>,
    network: Option<&String>,
    sla: Option<&Sla>,
    dialects: &Map,
) -> M {
    let m = if gateways.is_empty() {
        m
    } else {
        m.put("gateways", cluster_gateways(gateways))
    };
    m.opt("health_checks", hcs.map(health_checks))
        .opt("network", network.map(|n| s(n.clone())))
        .opt("sla", sla.map(|x| sla_node(x, false)))
        .nonempty_map("dialects", dialects)
}

pub(crate) fn blueprint_node(bp: &DefaultBlueprint) -> Node {
    let clusters = bp
        .clusters
        .iter()
        .map(|c| {
            let m = M::new().nonempty_map("metadata", &c.metadata).put(
                "services",
                Node::Seq(c.services.iter().map(service_node).collect()),
            );
            let m = cluster_tail(
                m,
                &c.gateways,
                c.health_checks.as_deref(),
                c.network.as_ref(),
                c.sla.as_ref(),
                &c.dialects,
            );
            (c.name.clone(), m.done())
        })
        .collect();
    let mut m = M::new()
        .put("kind", s("blueprints"))
        .put("name", s(bp.name.clone()))
        .nonempty_map("metadata", &bp.metadata)
        .put("clusters", Node::Map(clusters));
    if !bp.gateways.is_empty() {
        m = m.put("gateways", port_gateways(&bp.gateways));
    }
    if !bp.environment_variables.is_empty() {
        m = m.put("environment_variables", env_vars(&bp.environment_variables));
    }
    m.nonempty_map("dialects", &bp.dialects).done()
}

fn instances(is: &[Instance]) -> Node {
    Node::Seq(
        is.iter()
            .map(|i| {
                M::new()
                    .put("name", s(i.name.clone()))
                    .put("host", s(i.host.clone()))
                    .put(
                        "ports",
                        Node::Map(
                            i.ports
                                .iter()
                                .map(|(k, v)| (k.clone(), Node::Int(*v)))
                                .collect(),
                        ),
                    )
                    .put("deployed", Node::Bool(i.deployed))
                    .done()
            })
            .collect(),
    )
}

/// The period as the reader takes it back ("" for the empty period, which Vamp formatted
/// as `PT1S`).
fn period_text(p: &RepeatPeriod) -> String {
    if *p == RepeatPeriod::default() {
        String::new()
    } else {
        p.to_string()
    }
}

pub(crate) fn workflow_node(w: &Workflow) -> Node {
    let schedule = match &w.schedule {
        Schedule::Daemon => s("daemon"),
        Schedule::Event { tags } => M::new()
            .put(
                "event",
                M::new()
                    .put(
                        "tags",
                        Node::Seq(tags.iter().map(|t| s(t.clone())).collect()),
                    )
                    .done(),
            )
            .done(),
        Schedule::Time {
            period,
            repeat,
            start,
        } => {
            let t = M::new()
                .put("period", s(period_text(period)))
                .opt(
                    "repeat",
                    match repeat {
                        Repeat::Forever => None,
                        Repeat::Count(n) => Some(Node::Int(*n)),
                    },
                )
                .opt("start", start.as_ref().map(|x| s(x.clone())));
            M::new().put("time", t.done()).done()
        }
    };
    let mut m = M::new()
        .put("kind", s("workflows"))
        .put("name", s(w.name.clone()))
        .nonempty_map("metadata", &w.metadata)
        .put("breed", breed_ref(&w.breed))
        .put("status", s(w.status.to_string()))
        .put("schedule", schedule)
        .opt("scale", w.scale.as_ref().map(scale_ref));
    if !w.environment_variables.is_empty() {
        m = m.put("environment_variables", env_vars(&w.environment_variables));
    }
    if !w.arguments.is_empty() {
        m = m.put("arguments", arguments(&w.arguments));
    }
    m = m
        .opt("network", w.network.as_ref().map(|n| s(n.clone())))
        .opt(
            "health_checks",
            w.health_checks.as_deref().map(health_checks),
        )
        .nonempty_map("dialects", &w.dialects);
    if !w.instances.is_empty() {
        m = m.put("instances", instances(&w.instances));
    }
    m.done()
}

fn status_node(st: &ServiceStatus) -> Node {
    let phase = match &st.phase {
        Phase::Initiated { since } => M::new()
            .put("name", s("Initiated"))
            .put("since", s(since.clone())),
        Phase::Updating { since } => M::new()
            .put("name", s("Updating"))
            .put("since", s(since.clone())),
        Phase::Done { since } => M::new()
            .put("name", s("Done"))
            .put("since", s(since.clone())),
        Phase::Failed {
            since,
            notification,
        } => M::new()
            .put("name", s("Failed"))
            .put("since", s(since.clone()))
            .put("notification", s(notification.clone())),
    };
    let intention = match st.intention {
        Intention::Deployment => "Deployment",
        Intention::Undeployment => "Undeployment",
    };
    M::new()
        .put("intention", s(intention))
        .put("since", s(st.since.clone()))
        .put("phase", phase.done())
        .done()
}

/// Persistence form of environment variables: a list with aliases and interpolated values.
fn env_var_list(vars: &[EnvironmentVariable]) -> Node {
    Node::Seq(
        vars.iter()
            .map(|e| {
                M::new()
                    .put("name", s(e.name.clone()))
                    .opt("alias", e.alias.as_ref().map(|a| s(a.clone())))
                    .opt("value", e.value.as_ref().map(|v| s(v.clone())))
                    .opt(
                        "interpolated",
                        e.interpolated.as_ref().map(|v| s(v.clone())),
                    )
                    .done()
            })
            .collect(),
    )
}

pub(crate) fn deployment_node(d: &Deployment) -> Node {
    let clusters = d
        .clusters
        .iter()
        .map(|c| {
            let services = c
                .services
                .iter()
                .map(|sv| {
                    let mut m = M::new()
                        .put("status", status_node(&sv.status))
                        .put("breed", breed_node(&sv.breed, false));
                    if !sv.environment_variables.is_empty() {
                        m = m.put(
                            "environment_variables",
                            env_var_list(&sv.environment_variables),
                        );
                    }
                    m = m.opt("scale", sv.scale.as_ref().map(|x| scale_node(x, false)));
                    if !sv.instances.is_empty() {
                        m = m.put("instances", instances(&sv.instances));
                    }
                    if !sv.arguments.is_empty() {
                        m = m.put("arguments", arguments(&sv.arguments));
                    }
                    m = m
                        .opt(
                            "health_checks",
                            sv.health_checks.as_deref().map(health_checks),
                        )
                        .opt("network", sv.network.as_ref().map(|n| s(n.clone())));
                    if !sv.dependencies.is_empty() {
                        m = m.put(
                            "dependencies",
                            Node::Map(
                                sv.dependencies
                                    .iter()
                                    .map(|(k, v)| (k.clone(), s(v.clone())))
                                    .collect(),
                            ),
                        );
                    }
                    m.nonempty_map("dialects", &sv.dialects)
                        .opt("health", sv.health.map(health_node))
                        .done()
                })
                .collect();
            let m = M::new()
                .nonempty_map("metadata", &c.metadata)
                .put("services", Node::Seq(services));
            let m = cluster_tail(
                m,
                &c.gateways,
                c.health_checks.as_deref(),
                c.network.as_ref(),
                c.sla.as_ref(),
                &c.dialects,
            );
            (c.name.clone(), m.done())
        })
        .collect();
    let strip = |name: &str, group: &str| name.replacen(&format!(".{group}."), ".", 1);
    let mut m = M::new()
        .put("kind", s("deployments"))
        .put("name", s(d.name.clone()))
        .nonempty_map("metadata", &d.metadata)
        .put("clusters", Node::Map(clusters));
    if !d.gateways.is_empty() {
        m = m.put("gateways", port_gateways(&d.gateways));
    }
    if !d.ports.is_empty() {
        m = m.put(
            "ports",
            trait_map(
                d.ports
                    .iter()
                    .map(|p| (strip(&p.name, "ports"), p.value.as_ref())),
            ),
        );
    }
    if !d.environment_variables.is_empty() {
        m = m.put(
            "environment_variables",
            env_var_list(&d.environment_variables),
        );
    }
    if !d.hosts.is_empty() {
        m = m.put(
            "hosts",
            trait_map(d.hosts.iter().map(|h| {
                (
                    h.name
                        .strip_suffix(".hosts.host")
                        .unwrap_or(&h.name)
                        .to_owned(),
                    h.value.as_ref(),
                )
            })),
        );
    }
    m.nonempty_map("dialects", &d.dialects).done()
}

pub(crate) fn route_node(r: &Route) -> Node {
    match r {
        Route::Default(r) => route_body(r, true),
        Route::Reference { name, .. } => M::new()
            .put("kind", s("routes"))
            .put("reference", s(name.clone()))
            .done(),
    }
}

pub(crate) fn condition_node(c: &DefaultCondition) -> Node {
    M::new()
        .put("kind", s("conditions"))
        .name(&c.name)
        .nonempty_map("metadata", &c.metadata)
        .put("condition", s(c.definition.clone()))
        .done()
}

pub(crate) fn template_node(t: &Template) -> Node {
    M::new()
        .put("kind", s("templates"))
        .put("name", s(t.name.clone()))
        .nonempty_map("metadata", &t.metadata)
        .put("definition", Node::Map(t.definition.clone()))
        .done()
}

pub(crate) fn event_node(e: &Event) -> Node {
    M::new()
        .put("kind", s("events"))
        .opt("id", e.id.as_ref().map(|x| s(x.clone())))
        .opt("version", e.version.as_ref().map(|x| s(x.clone())))
        .put(
            "tags",
            Node::Seq(e.tags.iter().map(|t| s(t.clone())).collect()),
        )
        .put("value", e.value.clone())
        .put("timestamp", s(e.timestamp.clone()))
        .put("type", s(e.event_type.clone()))
        .opt("digest", e.digest.as_ref().map(|x| s(x.clone())))
        .done()
}

pub(crate) fn event_query_node(q: &EventQuery) -> Node {
    M::new()
        .put("kind", s("event-queries"))
        .put(
            "tags",
            Node::Seq(q.tags.iter().map(|t| s(t.clone())).collect()),
        )
        .opt("type", q.event_type.as_ref().map(|x| s(x.clone())))
        .opt(
            "timestamp",
            q.timestamp.as_ref().map(|t| {
                M::new()
                    .opt("lt", t.lt.as_ref().map(|x| s(x.clone())))
                    .opt("lte", t.lte.as_ref().map(|x| s(x.clone())))
                    .opt("gt", t.gt.as_ref().map(|x| s(x.clone())))
                    .opt("gte", t.gte.as_ref().map(|x| s(x.clone())))
                    .done()
            }),
        )
        .opt(
            "aggregator",
            q.aggregator.as_ref().map(|a| {
                M::new()
                    .put("type", s(a.aggregator_type.to_string()))
                    .put("field", s(a.field.clone()))
                    .done()
            }),
        )
        .done()
}

pub(crate) fn top_breed(b: &DefaultBreed) -> Node {
    breed_node(b, true)
}
pub(crate) fn top_scale(x: &DefaultScale) -> Node {
    scale_node(x, true)
}
pub(crate) fn top_rewrite(r: &PathRewrite) -> Node {
    rewrite_node(r, true)
}
pub(crate) fn top_sla(x: &Sla) -> Node {
    sla_node(x, true)
}
pub(crate) fn top_escalation(e: &Escalation) -> Node {
    escalation_node(e, true)
}

/// The canonical DSL tree of a deployment (with `kind`): [`to_node`] of
/// `AnyArtifact::Deployment`, without copying the deployment into one.
pub fn deployment_to_node(d: &Deployment) -> Node {
    deployment_node(d)
}

/// The canonical DSL tree of an artifact (with `kind`).
pub fn to_node(artifact: &AnyArtifact) -> Node {
    match artifact {
        AnyArtifact::Breed(b) => breed_node(b, true),
        AnyArtifact::Blueprint(b) => blueprint_node(b),
        AnyArtifact::Deployment(d) => deployment_node(d),
        AnyArtifact::Gateway(g) => gateway_node(g),
        AnyArtifact::Route(r) => route_node(r),
        AnyArtifact::Condition(c) => condition_node(c),
        AnyArtifact::Rewrite(r) => rewrite_node(r, true),
        AnyArtifact::Sla(x) => sla_node(x, true),
        AnyArtifact::Escalation(e) => escalation_node(e, true),
        AnyArtifact::Scale(x) => scale_node(x, true),
        AnyArtifact::Workflow(w) => workflow_node(w),
        AnyArtifact::Template(t) => template_node(t),
        AnyArtifact::CanaryPolicy(c) => super::canary::canary_policy_node(c),
        AnyArtifact::Event(e) => event_node(e),
        AnyArtifact::EventQuery(q) => event_query_node(q),
    }
}

// === emitters ===

/// Whether a string can be written as a plain YAML scalar and read back as the same string.
fn plain_ok(v: &str) -> bool {
    let Some(first) = v.chars().next() else {
        return false;
    };
    (first.is_ascii_alphanumeric() || matches!(first, '_' | '.' | '/' | '$'))
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '_' | '.' | '/' | '$' | '-' | ':' | '%' | '@' | '(' | ')' | '=' | ' ' | '+'
                )
        })
        && !v.ends_with([' ', ':'])
        && !v.contains(": ")
        && !v.contains(" #")
        && resolve_plain(v) == Node::Str(v.to_owned())
}

fn scalar_yaml(n: &Node, out: &mut String) {
    match n {
        Node::Null => out.push('~'),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Node::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Node::Timestamp(v) if resolve_plain(v) == Node::Timestamp(v.clone()) => out.push_str(v),
        Node::Str(v) | Node::Timestamp(v) => {
            if plain_ok(v) {
                out.push_str(v);
            } else {
                out.push_str(&serde_json::to_string(v).unwrap_or_default());
            }
        }
        Node::Seq(_) | Node::Map(_) => {}
    }
}

fn key_yaml(k: &str, out: &mut String) {
    scalar_yaml(&Node::Str(k.to_owned()), out);
}

fn node_yaml(n: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match n {
        Node::Map(m) if !m.is_empty() => {
            for (k, v) in m {
                out.push_str(&pad);
                key_yaml(k, out);
                out.push(':');
                value_yaml(v, indent, out);
            }
        }
        Node::Seq(items) if !items.is_empty() => {
            for v in items {
                out.push_str(&pad);
                out.push('-');
                match v {
                    Node::Map(m) if !m.is_empty() => {
                        // First entry on the dash line, the rest indented below it.
                        out.push(' ');
                        let mut inner = String::new();
                        node_yaml(v, indent + 2, &mut inner);
                        out.push_str(inner.trim_start_matches(' '));
                    }
                    _ => value_yaml(v, indent, out),
                }
            }
        }
        Node::Map(_) => out.push_str("{}\n"),
        Node::Seq(_) => out.push_str("[]\n"),
        scalar => {
            out.push_str(&pad);
            scalar_yaml(scalar, out);
            out.push('\n');
        }
    }
}

fn value_yaml(v: &Node, indent: usize, out: &mut String) {
    match v {
        Node::Map(m) if !m.is_empty() => {
            out.push('\n');
            node_yaml(v, indent + 2, out);
        }
        Node::Seq(items) if !items.is_empty() => {
            out.push('\n');
            node_yaml(v, indent + 2, out);
        }
        Node::Map(_) => out.push_str(" {}\n"),
        Node::Seq(_) => out.push_str(" []\n"),
        scalar => {
            out.push(' ');
            scalar_yaml(scalar, out);
            out.push('\n');
        }
    }
}

/// Writes a tree as block-style YAML.
pub fn node_to_yaml(n: &Node) -> String {
    let mut out = String::new();
    node_yaml(n, 0, &mut out);
    out
}

/// The canonical YAML of an artifact.
///
/// ```
/// use vamp_core::dsl::{read_str, to_yaml};
/// use vamp_core::model::ArtifactKind;
/// let a = read_str("name: sava\nport: 8080\nroutes: {web: {weight: 100%}}", Some(ArtifactKind::Gateway)).unwrap();
/// let yaml = to_yaml(&a[0]);
/// assert!(yaml.starts_with("kind: gateways\nname: sava\nport: \"8080\"\n"), "{yaml}");
/// assert_eq!(read_str(&yaml, None).unwrap(), a);
/// ```
pub fn to_yaml(artifact: &AnyArtifact) -> String {
    node_to_yaml(&to_node(artifact))
}

/// The canonical JSON of an artifact (pretty-printed).
pub fn to_json(artifact: &AnyArtifact) -> String {
    serde_json::to_string_pretty(&to_node(artifact).to_json()).unwrap_or_default()
}
