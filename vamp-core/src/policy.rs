//! The operator's policy: what a deployable may ask of the machines it runs on, checked
//! before anything is stored (as Kubernetes' Pod Security Admission checks pods).
//!
//! By default a [`ServiceSpec`] is refused when it asks for:
//!
//! | rule | what it stops |
//! |---|---|
//! | `privileged` | argument `privileged: true`; Docker `HostConfig.Privileged`; Kubernetes `securityContext.privileged`; Marathon `container.docker.privileged` |
//! | `capabilities` | argument `cap-add`; Docker `HostConfig.CapAdd`; Kubernetes `securityContext.capabilities.add`; Marathon parameter `cap-add` |
//! | `host-namespaces` | network `HOST`; arguments `net`/`network`/`pid`/`ipc`/`uts`/`userns` = `host`; Docker `HostConfig.{NetworkMode,PidMode,IpcMode,UTSMode,UsernsMode}`; Kubernetes `hostNetwork`, `hostPID`, `hostIPC`; Marathon `networks` of mode `host` and `container.docker.network` `HOST` |
//! | `host-paths` | arguments `volume`/`v`/`mount`/`device`/`volumes-from`; Docker `Volumes`, `HostConfig.{Binds,Mounts,Devices,VolumesFrom}`; Kubernetes and Marathon volumes with a `hostPath` |
//! | `arguments` | any argument but `privileged: false`, `user`, `workdir`, `hostname`, `label`, `env`, `cap-drop` and the above |
//! | `dialects` | a dialect key outside [`DOCKER_KEYS`], [`KUBERNETES_KEYS`], [`MARATHON_KEYS`] (Kubernetes `serviceAccountName`, for one) |
//!
//! and, when the operator gives the lists, a deployable type outside
//! [`Policy::deployable_types`] (`deployable-types`) or an image outside
//! [`Policy::image_prefixes`] (`images`). Each rule can be lifted ([`Allow`]); further dialect
//! keys can be allowed by their path (`kubernetes.serviceAccountName`).
//!
//! ```
//! use vamp_core::model::{Argument, Deployable};
//! use vamp_core::policy::Policy;
//! use vamp_core::scheduler::{ServiceId, ServiceSpec};
//!
//! let image = Deployable { deployable_type: None, definition: "magneticio/sava:1.0.0".into() };
//! let mut spec = ServiceSpec::new(ServiceId::new("d", "c", "sava"), image);
//! spec.arguments.push(Argument { key: "privileged".into(), value: "true".into() });
//! let e = Policy::default().check(&spec).unwrap_err();
//! assert_eq!((e.breed.as_str(), e.field.as_str(), e.rule), ("sava", "arguments.privileged", "privileged"));
//! let mut lax = Policy::default();
//! lax.allow.privileged = true;
//! assert!(lax.check(&spec).is_ok());
//! ```

use crate::model::Deployable;
use crate::node::{Map, Node};
use crate::scheduler::ServiceSpec;

/// Rules the operator lifts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Allow {
    /// Privileged containers.
    pub privileged: bool,
    /// Added Linux capabilities.
    pub capabilities: bool,
    /// The host's network, PID, IPC, UTS or user namespaces.
    pub host_namespaces: bool,
    /// Host paths, binds and devices.
    pub host_paths: bool,
    /// Any container argument.
    pub arguments: bool,
    /// Any dialect key.
    pub dialects: bool,
    /// Further dialect keys, by path (`kubernetes.serviceAccountName`,
    /// `docker.HostConfig.Sysctls`); a path allows everything below it.
    pub dialect_keys: Vec<String>,
    /// Gateway routes to link-local and cloud metadata addresses (`[169.254.169.254:80]`).
    pub link_local_targets: bool,
}

/// The operator's policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// Rules lifted.
    pub allow: Allow,
    /// The deployable types allowed (empty: whatever the scheduler runs).
    pub deployable_types: Vec<String>,
    /// The prefixes a container image must start with (empty: any image).
    pub image_prefixes: Vec<String>,
}

/// A deployable the policy refuses: the breed, the field and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Breed '{breed}' is refused by the operator policy: '{field}' breaks the rule '{rule}' ({reason})."
)]
#[non_exhaustive]
pub struct PolicyViolation {
    /// The breed (the service's name).
    pub breed: String,
    /// The field (`arguments.privileged`, `dialects.docker.HostConfig.Binds`, `network`, …).
    pub field: String,
    /// The rule (`privileged`, `capabilities`, `host-namespaces`, `host-paths`, `arguments`,
    /// `dialects`, `deployable-types`, `images`).
    pub rule: &'static str,
    /// Why, in words.
    pub reason: String,
}

/// A gateway route the policy refuses: where it points is not for gateways to reach.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "Gateway '{gateway}' is refused by the operator policy: route '{route}' breaks the rule 'link-local-targets' (link-local and cloud metadata addresses are not reachable through gateways)."
)]
#[non_exhaustive]
pub struct ReachViolation {
    /// The gateway.
    pub gateway: String,
    /// The route (`[host:port]`).
    pub route: String,
}

/// Names of cloud metadata services (besides their link-local addresses).
pub const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Whether `host` (a name or an IP address, `[v6]` included) is link-local or a cloud
/// metadata service.
pub fn link_local(host: &str) -> bool {
    let h = host
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.');
    if METADATA_NAMES.iter().any(|n| h.eq_ignore_ascii_case(n)) {
        return true;
    }
    match h.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_link_local(),
        Ok(std::net::IpAddr::V6(v6)) => {
            // fe80::/10, AWS's fd00:ec2::254, and IPv4-mapped link-local.
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
        Err(_) => false,
    }
}

/// Top-level keys of the `docker` dialect (Docker Engine API container-create fields) allowed
/// by default; `HostConfig` is checked by [`DOCKER_HOST_CONFIG_KEYS`].
pub const DOCKER_KEYS: &[&str] = &[
    "Cmd",
    "Entrypoint",
    "Env",
    "Labels",
    "WorkingDir",
    "User",
    "Hostname",
    "Domainname",
    "StopSignal",
    "StopTimeout",
    "Healthcheck",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "HostConfig",
];

/// `HostConfig` keys of the `docker` dialect allowed by default.
pub const DOCKER_HOST_CONFIG_KEYS: &[&str] = &[
    "Memory",
    "MemoryReservation",
    "MemorySwap",
    "NanoCpus",
    "CpuShares",
    "CpuQuota",
    "CpuPeriod",
    "CpusetCpus",
    "PidsLimit",
    "Ulimits",
    "ShmSize",
    "ReadonlyRootfs",
    "Init",
    "RestartPolicy",
    "LogConfig",
    "CapDrop",
    "OomScoreAdj",
    "Tmpfs",
];

/// Keys of the `kubernetes` dialect (pod spec fields, and `container` for the container)
/// allowed by default; `securityContext` and `volumes` are checked field by field.
pub const KUBERNETES_KEYS: &[&str] = &[
    "nodeSelector",
    "tolerations",
    "affinity",
    "terminationGracePeriodSeconds",
    "priorityClassName",
    "imagePullSecrets",
    "dnsPolicy",
    "dnsConfig",
    "topologySpreadConstraints",
    "securityContext",
    "volumes",
    "container",
];

/// Keys of the `kubernetes` dialect's `container` allowed by default.
pub const KUBERNETES_CONTAINER_KEYS: &[&str] = &[
    "resources",
    "command",
    "args",
    "env",
    "envFrom",
    "workingDir",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "imagePullPolicy",
    "lifecycle",
    "volumeMounts",
    "securityContext",
];

/// `securityContext` keys (pod or container) allowed by default: they only restrict.
pub const KUBERNETES_SECURITY_KEYS: &[&str] = &[
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    "seccompProfile",
    "capabilities",
    "privileged",
];

/// Keys of the `marathon` dialect (app fields) allowed by default; `container` and
/// `networks` are checked field by field.
pub const MARATHON_KEYS: &[&str] = &[
    "constraints",
    "labels",
    "acceptedResourceRoles",
    "backoffSeconds",
    "backoffFactor",
    "maxLaunchDelaySeconds",
    "upgradeStrategy",
    "killSelection",
    "unreachableStrategy",
    "taskKillGracePeriodSeconds",
    "container",
    "networks",
];

struct Check<'a> {
    policy: &'a Policy,
    breed: &'a str,
}

impl Check<'_> {
    fn refuse(
        &self,
        field: String,
        rule: &'static str,
        reason: impl Into<String>,
    ) -> PolicyViolation {
        PolicyViolation {
            breed: self.breed.to_owned(),
            field,
            rule,
            reason: reason.into(),
        }
    }

    fn rule(
        &self,
        lifted: bool,
        field: String,
        rule: &'static str,
        reason: &str,
    ) -> Result<(), PolicyViolation> {
        if lifted {
            Ok(())
        } else {
            Err(self.refuse(field, rule, reason))
        }
    }

    /// A dialect key outside the allow-lists.
    fn key(&self, path: &str) -> Result<(), PolicyViolation> {
        let a = &self.policy.allow;
        if a.dialects
            || a.dialect_keys.iter().any(|k| {
                path == k
                    || path
                        .strip_prefix(k.as_str())
                        .is_some_and(|r| r.starts_with('.'))
            })
        {
            return Ok(());
        }
        Err(self.refuse(
            format!("dialects.{path}"),
            "dialects",
            "the key is not in the policy's allow-list of dialect keys",
        ))
    }

    fn argument(&self, field: &str, key: &str, value: &str) -> Result<(), PolicyViolation> {
        let a = &self.policy.allow;
        let host = value.trim().eq_ignore_ascii_case("host");
        match key.trim().to_ascii_lowercase().as_str() {
            "privileged" => {
                let on = !matches!(
                    value.trim().to_ascii_lowercase().as_str(),
                    "false" | "no" | "0" | ""
                );
                self.rule(
                    a.privileged || !on,
                    field.to_owned(),
                    "privileged",
                    "privileged containers control their host",
                )
            }
            "cap-add" => self.rule(
                a.capabilities,
                field.to_owned(),
                "capabilities",
                "added capabilities widen what a container may do to its host",
            ),
            "net" | "network" | "pid" | "ipc" | "uts" | "userns" if host => self.rule(
                a.host_namespaces,
                field.to_owned(),
                "host-namespaces",
                "the host's namespaces are not the container's to share",
            ),
            "net" | "network" => Ok(()),
            "volume" | "v" | "mount" | "device" | "volumes-from" => self.rule(
                a.host_paths,
                field.to_owned(),
                "host-paths",
                "host paths, binds and devices reach the host's files",
            ),
            "user" | "workdir" | "hostname" | "label" | "env" | "cap-drop" => Ok(()),
            _ => self.rule(
                a.arguments,
                field.to_owned(),
                "arguments",
                "the argument is not in the policy's allow-list",
            ),
        }
    }

    fn docker(&self, d: &Map) -> Result<(), PolicyViolation> {
        let a = &self.policy.allow;
        for (k, v) in d {
            let path = format!("docker.{k}");
            match k.as_str() {
                "Volumes" => self.rule(
                    a.host_paths,
                    format!("dialects.{path}"),
                    "host-paths",
                    "volumes reach the host's files",
                )?,
                "HostConfig" => {
                    let Node::Map(h) = v else {
                        return self.key(&path);
                    };
                    for (hk, hv) in h {
                        let hpath = format!("{path}.{hk}");
                        let field = format!("dialects.{hpath}");
                        match hk.as_str() {
                            "Privileged" => self.rule(
                                a.privileged || matches!(hv, Node::Bool(false) | Node::Null),
                                field,
                                "privileged",
                                "privileged containers control their host",
                            )?,
                            "CapAdd" => self.rule(
                                a.capabilities || is_empty(hv),
                                field,
                                "capabilities",
                                "added capabilities widen what a container may do to its host",
                            )?,
                            "NetworkMode" | "PidMode" | "IpcMode" | "UTSMode" | "UsernsMode" => {
                                self.rule(
                                    a.host_namespaces,
                                    field,
                                    "host-namespaces",
                                    "a container's namespaces are its own",
                                )?;
                            }
                            "Binds" | "Mounts" | "Devices" | "VolumesFrom" | "DeviceRequests" => {
                                self.rule(
                                    a.host_paths || is_empty(hv),
                                    field,
                                    "host-paths",
                                    "host paths, binds and devices reach the host's files",
                                )?;
                            }
                            k if DOCKER_HOST_CONFIG_KEYS.contains(&k) => {}
                            _ => self.key(&hpath)?,
                        }
                    }
                }
                k if DOCKER_KEYS.contains(&k) => {}
                _ => self.key(&path)?,
            }
        }
        Ok(())
    }

    fn security_context(&self, path: &str, v: &Node) -> Result<(), PolicyViolation> {
        let a = &self.policy.allow;
        let Node::Map(m) = v else {
            return self.key(path);
        };
        for (k, v) in m {
            let p = format!("{path}.{k}");
            match k.as_str() {
                "privileged" => self.rule(
                    a.privileged || matches!(v, Node::Bool(false) | Node::Null),
                    format!("dialects.{p}"),
                    "privileged",
                    "privileged containers control their host",
                )?,
                "allowPrivilegeEscalation" => self.rule(
                    a.privileged || matches!(v, Node::Bool(false) | Node::Null),
                    format!("dialects.{p}"),
                    "privileged",
                    "privilege escalation lets a process gain more than it started with",
                )?,
                "capabilities" => {
                    if let Node::Map(c) = v {
                        for (ck, cv) in c {
                            match ck.as_str() {
                                "add" => self.rule(
                                    a.capabilities || is_empty(cv),
                                    format!("dialects.{p}.add"),
                                    "capabilities",
                                    "added capabilities widen what a container may do to its host",
                                )?,
                                "drop" => {}
                                _ => self.key(&format!("{p}.{ck}"))?,
                            }
                        }
                    }
                }
                k if KUBERNETES_SECURITY_KEYS.contains(&k) => {}
                _ => self.key(&p)?,
            }
        }
        Ok(())
    }

    fn volumes(&self, path: &str, v: &Node) -> Result<(), PolicyViolation> {
        if let Node::Seq(items) = v {
            for (i, item) in items.iter().enumerate() {
                if let Node::Map(m) = item
                    && m.contains_key("hostPath")
                {
                    self.rule(
                        self.policy.allow.host_paths,
                        format!("dialects.{path}[{i}].hostPath"),
                        "host-paths",
                        "host paths reach the host's files",
                    )?;
                }
            }
        }
        Ok(())
    }

    fn kubernetes(&self, d: &Map) -> Result<(), PolicyViolation> {
        let a = &self.policy.allow;
        for (k, v) in d {
            let path = format!("kubernetes.{k}");
            match k.as_str() {
                "hostNetwork" | "hostPID" | "hostIPC" | "hostUsers" => {
                    let off = matches!(v, Node::Bool(false) | Node::Null)
                        || (k == "hostUsers" && matches!(v, Node::Bool(false)));
                    self.rule(
                        a.host_namespaces || off,
                        format!("dialects.{path}"),
                        "host-namespaces",
                        "the host's namespaces are not the pod's to share",
                    )?;
                }
                "securityContext" => self.security_context(&path, v)?,
                "volumes" => self.volumes(&path, v)?,
                "container" => {
                    let Node::Map(c) = v else {
                        return self.key(&path);
                    };
                    for (ck, cv) in c {
                        let cpath = format!("{path}.{ck}");
                        match ck.as_str() {
                            "securityContext" => self.security_context(&cpath, cv)?,
                            k if KUBERNETES_CONTAINER_KEYS.contains(&k) => {}
                            _ => self.key(&cpath)?,
                        }
                    }
                }
                k if KUBERNETES_KEYS.contains(&k) => {}
                _ => self.key(&path)?,
            }
        }
        Ok(())
    }

    fn marathon(&self, d: &Map) -> Result<(), PolicyViolation> {
        let a = &self.policy.allow;
        for (k, v) in d {
            let path = format!("marathon.{k}");
            match k.as_str() {
                "networks" => {
                    if let Node::Seq(items) = v {
                        for (i, n) in items.iter().enumerate() {
                            if let Node::Map(m) = n
                                && matches!(m.get("mode"), Some(Node::Str(s)) if s.eq_ignore_ascii_case("host"))
                            {
                                self.rule(
                                    a.host_namespaces,
                                    format!("dialects.{path}[{i}].mode"),
                                    "host-namespaces",
                                    "the host's network is not the app's to share",
                                )?;
                            }
                        }
                    }
                }
                "container" => {
                    let Node::Map(c) = v else {
                        return self.key(&path);
                    };
                    for (ck, cv) in c {
                        let cpath = format!("{path}.{ck}");
                        match (ck.as_str(), cv) {
                            ("volumes", _) => self.volumes(&cpath, cv)?,
                            ("docker", Node::Map(dm)) => {
                                for (dk, dv) in dm {
                                    let dpath = format!("{cpath}.{dk}");
                                    match dk.as_str() {
                                        "privileged" => self.rule(
                                            a.privileged
                                                || matches!(dv, Node::Bool(false) | Node::Null),
                                            format!("dialects.{dpath}"),
                                            "privileged",
                                            "privileged containers control their host",
                                        )?,
                                        "network" => {
                                            let host = matches!(dv, Node::Str(s) if s.eq_ignore_ascii_case("host"));
                                            self.rule(
                                                a.host_namespaces || !host,
                                                format!("dialects.{dpath}"),
                                                "host-namespaces",
                                                "the host's network is not the app's to share",
                                            )?;
                                        }
                                        "parameters" => {
                                            if let Node::Seq(ps) = dv {
                                                for (i, p) in ps.iter().enumerate() {
                                                    if let Node::Map(pm) = p {
                                                        let text = |n: Option<&Node>| match n {
                                                            Some(Node::Str(s)) => s.clone(),
                                                            Some(other) => {
                                                                other.to_json().to_string()
                                                            }
                                                            None => String::new(),
                                                        };
                                                        self.argument(
                                                            &format!("dialects.{dpath}[{i}]"),
                                                            &text(pm.get("key")),
                                                            &text(pm.get("value")),
                                                        )?;
                                                    }
                                                }
                                            }
                                        }
                                        "forcePullImage" => {}
                                        _ => self.key(&dpath)?,
                                    }
                                }
                            }
                            _ => self.key(&cpath)?,
                        }
                    }
                }
                k if MARATHON_KEYS.contains(&k) => {}
                _ => self.key(&path)?,
            }
        }
        Ok(())
    }
}

fn is_empty(n: &Node) -> bool {
    match n {
        Node::Null => true,
        Node::Seq(s) => s.is_empty(),
        Node::Map(m) => m.is_empty(),
        _ => false,
    }
}

fn container_image(d: &Deployable) -> bool {
    matches!(
        d.deployable_type.as_deref(),
        None | Some("docker" | "container/docker")
    )
}

impl Allow {
    /// Lifts the rule named `rule` (`privileged`, `capabilities`, `host-namespaces`,
    /// `host-paths`, `arguments`, `dialects`).
    ///
    /// # Errors
    /// An unknown rule.
    pub fn lift(&mut self, rule: &str) -> Result<(), String> {
        match rule.trim() {
            "privileged" => self.privileged = true,
            "capabilities" => self.capabilities = true,
            "host-namespaces" => self.host_namespaces = true,
            "host-paths" => self.host_paths = true,
            "arguments" => self.arguments = true,
            "dialects" => self.dialects = true,
            "link-local-targets" => self.link_local_targets = true,
            other => {
                return Err(format!(
                    "unknown policy rule '{}' (rules: privileged, capabilities, host-namespaces, host-paths, arguments, dialects, link-local-targets)",
                    other.escape_debug()
                ));
            }
        }
        Ok(())
    }
}

impl Policy {
    /// Checks where a gateway's external routes (`[host:port]`) point: link-local and cloud
    /// metadata addresses are refused unless [`Allow::link_local_targets`]. (A name that
    /// resolves to such an address is not resolved here.)
    ///
    /// ```
    /// use vamp_core::dsl::{read_str, AnyArtifact};
    /// use vamp_core::model::ArtifactKind;
    /// use vamp_core::policy::Policy;
    /// let doc = "name: g\nport: 9050\nroutes:\n  '[169.254.169.254:80]': {weight: 100%}";
    /// let AnyArtifact::Gateway(g) = read_str(doc, Some(ArtifactKind::Gateway)).unwrap().remove(0) else { unreachable!() };
    /// assert!(Policy::default().check_gateway(&g).is_err());
    /// ```
    ///
    /// # Errors
    /// The first route that breaks the rule.
    pub fn check_gateway(&self, g: &crate::model::Gateway) -> Result<(), ReachViolation> {
        if self.allow.link_local_targets {
            return Ok(());
        }
        for r in &g.routes {
            let path = r.path();
            let Some(external) = path.external() else {
                continue;
            };
            let host = match external.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => external,
            };
            if link_local(host) {
                return Err(ReachViolation {
                    gateway: g.name.clone(),
                    route: path.source.clone(),
                });
            }
        }
        Ok(())
    }

    /// Reads a policy document (YAML or JSON):
    ///
    /// ```yaml
    /// allow: [host-paths]                          # rules lifted
    /// dialect-keys: [kubernetes.serviceAccountName] # further dialect keys allowed
    /// images: [registry.example.com/]             # image prefixes (none: any image)
    /// deployable-types: [container/docker]        # (none: what the scheduler runs)
    /// ```
    ///
    /// ```
    /// let p = vamp_core::policy::Policy::parse("allow: [privileged]\nimages: [r.example/]").unwrap();
    /// assert!(p.allow.privileged && !p.allow.host_paths);
    /// assert_eq!(p.image_prefixes, ["r.example/"]);
    /// assert!(vamp_core::policy::Policy::parse("allow: [root]").is_err());
    /// ```
    ///
    /// # Errors
    /// A document that is not such a map, naming the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let docs = crate::dsl::load_documents(text).map_err(|e| e.to_string())?;
        let mut p = Self::default();
        let Some(doc) = docs.into_iter().next() else {
            return Ok(p);
        };
        let Node::Map(m) = doc else {
            return Err("a policy is a map (allow, dialect-keys, images, deployable-types)".into());
        };
        let list = |key: &str, v: &Node| -> Result<Vec<String>, String> {
            match v {
                Node::Seq(items) => items
                    .iter()
                    .map(|i| match i {
                        Node::Str(s) => Ok(s.clone()),
                        _ => Err(format!("'{key}' lists strings")),
                    })
                    .collect(),
                Node::Str(s) => Ok(vec![s.clone()]),
                Node::Null => Ok(Vec::new()),
                _ => Err(format!("'{key}' lists strings")),
            }
        };
        for (k, v) in &m {
            match k.as_str() {
                "allow" => {
                    for rule in list(k, v)? {
                        p.allow.lift(&rule)?;
                    }
                }
                "dialect-keys" => p.allow.dialect_keys = list(k, v)?,
                "images" => p.image_prefixes = list(k, v)?,
                "deployable-types" => p.deployable_types = list(k, v)?,
                other => {
                    return Err(format!(
                        "unknown policy key '{}' (keys: allow, dialect-keys, images, deployable-types)",
                        other.escape_debug()
                    ));
                }
            }
        }
        Ok(p)
    }

    /// Checks one service spec (a deployment's service or a workflow's run) against the
    /// policy.
    ///
    /// # Errors
    /// The first violation: breed, field and rule.
    pub fn check(&self, spec: &ServiceSpec) -> Result<(), PolicyViolation> {
        let c = Check {
            policy: self,
            breed: &spec.id.service,
        };
        let kind = spec
            .deployable
            .deployable_type
            .as_deref()
            .unwrap_or("container/docker");
        if !self.deployable_types.is_empty() && !self.deployable_types.iter().any(|t| t == kind) {
            return Err(c.refuse(
                "deployable.type".into(),
                "deployable-types",
                format!(
                    "the policy allows only {}",
                    self.deployable_types.join(", ")
                ),
            ));
        }
        if !self.image_prefixes.is_empty()
            && container_image(&spec.deployable)
            && !self
                .image_prefixes
                .iter()
                .any(|p| spec.deployable.definition.starts_with(p.as_str()))
        {
            return Err(c.refuse(
                "deployable.definition".into(),
                "images",
                format!(
                    "images must start with one of {}",
                    self.image_prefixes.join(", ")
                ),
            ));
        }
        if spec
            .network
            .as_deref()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case("host"))
        {
            c.rule(
                self.allow.host_namespaces,
                "network".into(),
                "host-namespaces",
                "the host's network is not the container's to share",
            )?;
        }
        for a in &spec.arguments {
            c.argument(&format!("arguments.{}", a.key), &a.key, &a.value)?;
        }
        for (name, value) in &spec.dialects {
            match (name.as_str(), value) {
                ("docker", Node::Map(m)) => c.docker(m)?,
                ("kubernetes", Node::Map(m)) => c.kubernetes(m)?,
                ("marathon", Node::Map(m)) => c.marathon(m)?,
                ("docker" | "kubernetes" | "marathon", _) if !is_empty(value) => c.key(name)?,
                // A dialect no scheduler reads changes nothing.
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Argument;
    use crate::scheduler::ServiceId;

    fn spec() -> ServiceSpec {
        ServiceSpec::new(
            ServiceId::new("d", "c", "sava"),
            Deployable {
                deployable_type: None,
                definition: "magneticio/sava:1.0.0".into(),
            },
        )
    }

    fn dialect(name: &str, yaml: &str) -> ServiceSpec {
        let mut s = spec();
        let node = crate::dsl::load_documents(yaml).unwrap().remove(0);
        s.dialects.insert(name.into(), node);
        s
    }

    #[test]
    fn each_rule_refuses_what_it_names_and_can_be_lifted() {
        type Case = (ServiceSpec, &'static str, &'static str, fn(&mut Allow));
        let cases: Vec<Case> = vec![
            (
                dialect("docker", "HostConfig: {Privileged: true}"),
                "dialects.docker.HostConfig.Privileged",
                "privileged",
                |a| a.privileged = true,
            ),
            (
                dialect("docker", "HostConfig: {Binds: ['/:/host']}"),
                "dialects.docker.HostConfig.Binds",
                "host-paths",
                |a| a.host_paths = true,
            ),
            (
                dialect("docker", "HostConfig: {CapAdd: [SYS_ADMIN]}"),
                "dialects.docker.HostConfig.CapAdd",
                "capabilities",
                |a| a.capabilities = true,
            ),
            (
                dialect("docker", "HostConfig: {PidMode: host}"),
                "dialects.docker.HostConfig.PidMode",
                "host-namespaces",
                |a| a.host_namespaces = true,
            ),
            (
                dialect("docker", "HostConfig: {Sysctls: {a: b}}"),
                "dialects.docker.HostConfig.Sysctls",
                "dialects",
                |a| a.dialect_keys.push("docker.HostConfig.Sysctls".into()),
            ),
            (
                dialect("kubernetes", "hostNetwork: true"),
                "dialects.kubernetes.hostNetwork",
                "host-namespaces",
                |a| a.host_namespaces = true,
            ),
            (
                dialect("kubernetes", "volumes: [{name: r, hostPath: {path: /}}]"),
                "dialects.kubernetes.volumes[0].hostPath",
                "host-paths",
                |a| a.host_paths = true,
            ),
            (
                dialect("kubernetes", "serviceAccountName: admin"),
                "dialects.kubernetes.serviceAccountName",
                "dialects",
                |a| a.dialect_keys.push("kubernetes.serviceAccountName".into()),
            ),
            (
                dialect(
                    "kubernetes",
                    "container: {securityContext: {privileged: true}}",
                ),
                "dialects.kubernetes.container.securityContext.privileged",
                "privileged",
                |a| a.privileged = true,
            ),
            (
                dialect(
                    "kubernetes",
                    "container: {securityContext: {capabilities: {add: [NET_ADMIN]}}}",
                ),
                "dialects.kubernetes.container.securityContext.capabilities.add",
                "capabilities",
                |a| a.capabilities = true,
            ),
            (
                dialect("marathon", "container: {docker: {privileged: true}}"),
                "dialects.marathon.container.docker.privileged",
                "privileged",
                |a| a.privileged = true,
            ),
            (
                dialect(
                    "marathon",
                    "container: {docker: {parameters: [{key: volume, value: '/:/host'}]}}",
                ),
                "dialects.marathon.container.docker.parameters[0]",
                "host-paths",
                |a| a.host_paths = true,
            ),
            (
                dialect("marathon", "networks: [{mode: host}]"),
                "dialects.marathon.networks[0].mode",
                "host-namespaces",
                |a| a.host_namespaces = true,
            ),
            (
                dialect("marathon", "user: root"),
                "dialects.marathon.user",
                "dialects",
                |a| a.dialects = true,
            ),
        ];
        for (s, field, rule, lift) in cases {
            let e = Policy::default().check(&s).unwrap_err();
            assert_eq!((e.field.as_str(), e.rule), (field, rule), "{e}");
            assert!(e.to_string().contains("Breed 'sava'"), "{e}");
            let mut p = Policy::default();
            lift(&mut p.allow);
            assert_eq!(p.check(&s), Ok(()), "{field} lifted");
        }
        for (key, value, rule) in [
            ("privileged", "true", "privileged"),
            ("cap-add", "NET_ADMIN", "capabilities"),
            ("net", "host", "host-namespaces"),
            ("pid", "HOST", "host-namespaces"),
            ("volume", "/:/host", "host-paths"),
            ("security-opt", "seccomp=unconfined", "arguments"),
        ] {
            let mut s = spec();
            s.arguments.push(Argument {
                key: key.into(),
                value: value.into(),
            });
            assert_eq!(Policy::default().check(&s).unwrap_err().rule, rule, "{key}");
        }
        let mut host = spec();
        host.network = Some("HOST".into());
        assert_eq!(Policy::default().check(&host).unwrap_err().field, "network");
    }

    #[test]
    fn ordinary_services_pass() {
        let mut s = dialect(
            "docker",
            "Cmd: [serve]\nEnv: ['A=1']\nHostConfig: {Memory: 1000, CapDrop: [ALL], Privileged: false}",
        );
        s.arguments.push(Argument {
            key: "privileged".into(),
            value: "false".into(),
        });
        s.arguments.push(Argument {
            key: "user".into(),
            value: "1000".into(),
        });
        s.network = Some("BRIDGE".into());
        assert_eq!(Policy::default().check(&s), Ok(()));
        let k = dialect(
            "kubernetes",
            "nodeSelector: {a: b}\nsecurityContext: {runAsNonRoot: true}\ncontainer: {resources: {limits: {cpu: 1}}, securityContext: {capabilities: {drop: [ALL]}, allowPrivilegeEscalation: false}}\nvolumes: [{name: t, emptyDir: {}}]",
        );
        assert_eq!(Policy::default().check(&k), Ok(()));
        // A dialect no scheduler reads is left alone.
        assert_eq!(
            Policy::default().check(&dialect("nomad", "anything: goes")),
            Ok(())
        );
    }

    #[test]
    fn link_local_and_metadata_hosts_are_recognised() {
        for h in [
            "169.254.169.254",
            "169.254.0.1",
            "[fe80::1]",
            "fd00:ec2::254",
            "metadata.google.internal",
            "METADATA.",
            "::ffff:169.254.1.1",
        ] {
            assert!(link_local(h), "{h}");
        }
        for h in [
            "10.0.0.1",
            "127.0.0.1",
            "[::1]",
            "example.com",
            "metadata.example.com",
            "fd00::1",
        ] {
            assert!(!link_local(h), "{h}");
        }
    }

    #[test]
    fn images_and_deployable_types_follow_the_operator_s_lists() {
        let p = Policy {
            image_prefixes: vec!["registry.example.com/".into()],
            ..Policy::default()
        };
        let e = p.check(&spec()).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.rule),
            ("deployable.definition", "images")
        );
        let mut ok = spec();
        ok.deployable = Deployable {
            deployable_type: None,
            definition: "registry.example.com/sava:1".into(),
        };
        assert_eq!(p.check(&ok), Ok(()));
        let p = Policy {
            deployable_types: vec!["container/docker".into()],
            ..Policy::default()
        };
        let mut cmd = spec();
        cmd.deployable = Deployable {
            deployable_type: Some("command".into()),
            definition: "sh -c 'rm -rf ~'".into(),
        };
        assert_eq!(p.check(&cmd).unwrap_err().rule, "deployable-types");
        assert_eq!(p.check(&spec()), Ok(()));
    }
}
