//! Docker-compose (v2) files to blueprints, as Vamp's `POST /api/v1/docker-compose` did.
//!
//! Each compose service becomes a cluster with one service whose inline breed is
//! `<service>:1.0.0` (deployable `container/docker` `<image>`); `ports` become breed ports
//! `port_<container port>`; `environment` (list or map) becomes environment variables;
//! `command` becomes the service dialect `{docker: <command>}`; `depends_on` becomes
//! dependencies. A value `<service>:<port>` naming another service is rewritten to
//! `$<service>.host:$<service>.ports.port_<port>`, adding the dependency and the port.
//! Fields Vamp did not support are not silently dropped: they are returned as notes.

use indexmap::IndexMap;

use super::source::{join, node_string};
use crate::error::{Notification as N, ReadError, ReadResult};
use crate::model::*;
use crate::node::{Map, Node};

/// The result of reading a compose file: the blueprint and the fields that were left out.
#[derive(Clone, Debug, PartialEq)]
pub struct ComposeBlueprint {
    /// The blueprint.
    pub blueprint: DefaultBlueprint,
    /// One note per left-out field (`Did not include unsupported field: 'services/db/volumes'`).
    pub ignored: Vec<String>,
}

fn type_error(path: &str, expected: &str, n: &Node) -> ReadError {
    ReadError::new(
        N::UnexpectedTypeError {
            path: path.to_owned(),
            expected: expected.into(),
            actual: n.type_name().into(),
        },
        path,
    )
}

/// Reads a compose `ports` list: `"c"`, `"h:c"`, `"ip:h:c"`, ranges (first port only),
/// `"c/tcp"`, `"c/http"`.
///
/// # Errors
/// `UnsupportedProtocolError` for a protocol other than tcp or http (`udp`).
pub fn read_compose_ports(node: &Node, path: &str) -> ReadResult<Vec<Port>> {
    let items = match node {
        Node::Seq(items) => items.clone(),
        Node::Null => Vec::new(),
        other => vec![other.clone()],
    };
    let mut ports = Vec::new();
    for item in &items {
        let spec = node_string(item, path)?;
        let container = spec.rsplit(':').next().unwrap_or_default();
        let (number, protocol) = match container.split_once('/') {
            Some((n, p)) => (n, Some(p)),
            None => (container, None),
        };
        let first = number.split('-').next().unwrap_or_default().trim();
        if first.is_empty()
            || !first.bytes().all(|b| b.is_ascii_digit())
            || !first.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return Err(ReadError::new(
                N::UnexpectedTypeError {
                    path: path.to_owned(),
                    expected: "a compose port (1-65535)".into(),
                    actual: format!("'{spec}'"),
                },
                path,
            ));
        }
        let value = match protocol.map(str::to_ascii_lowercase).as_deref() {
            None | Some("http") => first.to_owned(),
            // Deliberate difference: the value keeps `/tcp` so the type survives a round trip.
            Some("tcp") => format!("{first}/tcp"),
            Some(_) => {
                return Err(ReadError::new(
                    N::UnsupportedProtocolError {
                        protocol: protocol.unwrap_or_default().to_owned(),
                    },
                    path,
                ));
            }
        };
        ports.push(Port::new(format!("port_{first}"), Some(value)).expect("numeric port"));
    }
    Ok(ports)
}

fn environment(node: &Node, path: &str) -> ReadResult<Vec<EnvironmentVariable>> {
    match node {
        Node::Seq(items) => items
            .iter()
            .map(|i| {
                let s = node_string(i, path)?;
                Ok(match s.split_once('=') {
                    Some((k, v)) => EnvironmentVariable::new(k, Some(v.to_owned())),
                    None => EnvironmentVariable::new(s, None),
                })
            })
            .collect(),
        Node::Map(m) => Ok(m
            .iter()
            .map(|(k, v)| EnvironmentVariable::new(k.clone(), v.scalar_string()))
            .collect()),
        Node::Null => Ok(Vec::new()),
        other => Err(type_error(path, "List or Map", other)),
    }
}

/// Reads a docker-compose file into a blueprint named `name`.
///
/// # Errors
/// A [`ReadError`] for invalid YAML, an invalid port or protocol, or a blueprint that fails
/// validation.
///
/// ```
/// use vamp_core::dsl::read_docker_compose;
/// let compose = "services:\n  web:\n    image: nginx\n    ports: ['8080:80']\n    restart: always\n";
/// let result = read_docker_compose(compose, "site").unwrap();
/// assert_eq!(result.blueprint.clusters[0].name, "web");
/// assert_eq!(result.ignored, ["Did not include unsupported field: 'services/web/restart'"]);
/// ```
pub fn read_docker_compose(text: &str, name: &str) -> ReadResult<ComposeBlueprint> {
    let mut docs = super::load_documents(text)?;
    let root = match docs.len() {
        1 => docs.remove(0),
        0 => Node::Map(Map::new()),
        _ => {
            return Err(ReadError::new(
                N::UnexpectedTypeError {
                    path: "/".into(),
                    expected: "one document".into(),
                    actual: "several".into(),
                },
                "",
            ));
        }
    };
    let Node::Map(mut root) = root else {
        return Err(type_error("/", "Map", &root));
    };
    let mut ignored = Vec::new();
    let services = match root.shift_remove("services") {
        Some(Node::Map(s)) => s,
        None | Some(Node::Null) => Map::new(),
        Some(other) => return Err(type_error("services", "Map", &other)),
    };
    root.shift_remove("version");
    for k in root.keys() {
        ignored.push(format!("Did not include unsupported field: '{k}'"));
    }
    let cluster_names: Vec<String> = services.keys().cloned().collect();
    let mut breeds: IndexMap<String, (DefaultBreed, Map)> = IndexMap::new();
    for (svc, body) in services {
        let sp = join("services", &svc);
        let Node::Map(mut body) = body else {
            return Err(type_error(&sp, "Map", &body));
        };
        let image = match body.shift_remove("image") {
            Some(n) => node_string(&n, &join(&sp, "image"))?,
            None => {
                return Err(ReadError::new(
                    N::MissingPathValueError {
                        path: join(&sp, "image"),
                    },
                    join(&sp, "image"),
                ));
            }
        };
        let mut breed = DefaultBreed::new(format!("{svc}:1.0.0"), image);
        breed.deployable.deployable_type = Some("container/docker".into());
        if let Some(p) = body.shift_remove("ports") {
            for port in read_compose_ports(&p, &join(&sp, "ports"))? {
                if !breed.ports.iter().any(|q| q.name == port.name) {
                    breed.ports.push(port);
                }
            }
        }
        if let Some(e) = body.shift_remove("environment") {
            breed.environment_variables = environment(&e, &join(&sp, "environment"))?;
        }
        let mut dialects = Map::new();
        if let Some(c) = body.shift_remove("command") {
            let command = match c {
                Node::Seq(parts) => parts
                    .iter()
                    .filter_map(Node::scalar_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                other => node_string(&other, &join(&sp, "command"))?,
            };
            dialects.insert("docker".into(), Node::Str(command));
        }
        if let Some(d) = body.shift_remove("depends_on") {
            let deps = match d {
                Node::Seq(items) => items,
                Node::Map(m) => m.keys().map(|k| Node::Str(k.clone())).collect(),
                other => vec![other],
            };
            for dep in deps {
                let dep = node_string(&dep, &join(&sp, "depends_on"))?;
                breed
                    .dependencies
                    .insert(dep.clone(), Ref::Reference(format!("{dep}:1.0.0")));
            }
        }
        for k in body.keys() {
            ignored.push(format!(
                "Did not include unsupported field: '{}'",
                join(&sp, k)
            ));
        }
        breeds.insert(svc, (breed, dialects));
    }
    // `<service>:<port>` values become references to that service's host and port.
    let mut added_ports: Vec<(String, String)> = Vec::new();
    for (_, (breed, _)) in breeds.iter_mut() {
        for env in &mut breed.environment_variables {
            let Some(value) = env.value.clone() else {
                continue;
            };
            let Some((target, port)) = value.split_once(':') else {
                continue;
            };
            if !cluster_names.iter().any(|c| c == target)
                || port.is_empty()
                || !port.bytes().all(|b| b.is_ascii_digit())
                || !port.parse::<u16>().is_ok_and(|p| p > 0)
            {
                continue;
            }
            env.value = Some(format!("${target}.host:${target}.ports.port_{port}"));
            breed
                .dependencies
                .insert(target.to_owned(), Ref::Reference(format!("{target}:1.0.0")));
            added_ports.push((target.to_owned(), port.to_owned()));
        }
    }
    for (target, port) in added_ports {
        if let Some((b, _)) = breeds.get_mut(&target) {
            let name = format!("port_{port}");
            if !b.ports.iter().any(|p| p.name == name) {
                b.ports
                    .push(Port::new(name, Some(port)).expect("numeric port"));
            }
        }
    }
    for (svc, (breed, _)) in &breeds {
        super::validate::breed(breed, &join("services", svc))
            .map_err(|e| e.in_artifact(ArtifactKind::Breed, Some(&breed.name)))?;
    }
    let clusters = breeds
        .into_iter()
        .map(|(svc, (breed, dialects))| {
            let mut service = Service::new(Ref::Inline(breed));
            service.dialects = dialects;
            Cluster::new(svc, vec![service])
        })
        .collect();
    let mut blueprint = DefaultBlueprint {
        name: name.to_owned(),
        metadata: Map::new(),
        clusters,
        gateways: Vec::new(),
        environment_variables: Vec::new(),
        dialects: Map::new(),
    };
    super::validate::blueprint(&mut blueprint, "")
        .map_err(|e| e.in_artifact(ArtifactKind::Blueprint, Some(name)))?;
    Ok(ComposeBlueprint { blueprint, ignored })
}
