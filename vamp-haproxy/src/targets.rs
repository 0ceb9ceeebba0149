//! Route targets, resolved the way Vamp's gateway synchroniser did (runtime.md §1.8), for
//! gateways read from documents (the DSL carries no targets).
//!
//! * `[host:port]` → an external target;
//! * a path naming another gateway of the set → that gateway's port on 127.0.0.1;
//! * `deployment/cluster/service/port` of a deployment → every instance of that service.
//!
//! A route whose targets cannot all be resolved gets none, as in Vamp.

use std::collections::HashMap;

use vamp_core::model::{Deployment, Gateway, Port, Route, RouteTarget};

/// Fills the targets of routes that have none.
pub fn resolve_targets<D: std::borrow::Borrow<Deployment>>(
    gateways: &mut [Gateway],
    deployments: &[D],
) {
    // The first gateway of each name with a port, and the deployments by name: one lookup
    // per route, whatever the counts.
    let ports: Vec<(String, i64)> = gateways
        .iter()
        .map(|g| (g.name.clone(), g.port.number))
        .collect();
    let mut lookup = Lookup::default();
    for (name, port) in &ports {
        lookup.add_port(name, *port);
    }
    for d in deployments {
        lookup.add_deployment(d.borrow());
    }
    for g in gateways.iter_mut() {
        lookup.resolve(g);
    }
}

/// What route targets are resolved from: gateway ports by name (the first of each name with a
/// port) and deployments by name.
#[derive(Debug, Default)]
pub(crate) struct Lookup<'a> {
    ports: HashMap<&'a str, i64>,
    deployments: HashMap<&'a str, Vec<&'a Deployment>>,
}

impl<'a> Lookup<'a> {
    /// Gateway `name` listens on `port` (unless one of that name came first, or it has none).
    pub(crate) fn add_port(&mut self, name: &'a str, port: i64) {
        if port > 0 {
            self.ports.entry(name).or_insert(port);
        }
    }

    /// `d`'s instances are targets of the routes naming its services.
    pub(crate) fn add_deployment(&mut self, d: &'a Deployment) {
        self.deployments.entry(d.name.as_str()).or_default().push(d);
    }

    /// Fills the targets of `g`'s routes that have none.
    pub(crate) fn resolve(&self, g: &mut Gateway) {
        for r in &mut g.routes {
            let Route::Default(d) = r else { continue };
            if !d.targets.is_empty() {
                continue;
            }
            if let Some(url) = d.path.external() {
                d.targets = vec![RouteTarget::External {
                    url: url.to_owned(),
                }];
                continue;
            }
            let path = d.path.normalized();
            if let Some((name, port)) = self.ports.get_key_value(path.as_str()) {
                d.targets = vec![RouteTarget::Internal {
                    name: (*name).to_owned(),
                    host: None,
                    port: *port,
                }];
                continue;
            }
            if let [dep, cluster, service, port] = d.path.segments.as_slice() {
                let instances = self
                    .deployments
                    .get(dep.as_str())
                    .into_iter()
                    .flatten()
                    .flat_map(|x| x.clusters.iter().filter(|c| &c.name == cluster))
                    .flat_map(|c| c.services.iter().filter(|s| &s.breed.name == service))
                    .flat_map(|s| s.instances.iter());
                let targets: Option<Vec<RouteTarget>> = instances
                    .map(|i| {
                        i.ports.get(port).map(|p| RouteTarget::Internal {
                            name: i.name.clone(),
                            host: Some(i.host.clone()),
                            port: *p,
                        })
                    })
                    .collect();
                d.targets = targets.unwrap_or_default();
            }
        }
    }
}

/// The gateways of a deployment: its own (`deployment/port`) and one per cluster gateway
/// (`deployment/cluster/port`, routes to `deployment/cluster/service/port`). Cluster gateway
/// ports come from the deployment's `cluster.ports.port` values.
pub fn deployment_gateways(d: &Deployment) -> Vec<Gateway> {
    let mut out = Vec::new();
    for c in &d.clusters {
        for g in &c.gateways {
            let mut gw = g.clone();
            gw.name = format!("{}/{}/{}", d.name, c.name, g.port.name);
            let key = format!("{}.ports.{}", c.name, g.port.name);
            if let Some(p) = d
                .ports
                .iter()
                .find(|p| p.name == key)
                .and_then(|p| p.value.clone())
                .and_then(|v| Port::new(g.port.name.clone(), Some(v)))
            {
                gw.port = p;
            }
            for r in &mut gw.routes {
                if let Route::Default(route) = r {
                    let service = route.path.source.clone();
                    route.path = vamp_core::model::GatewayPath::new(format!(
                        "{}/{}/{}/{}",
                        d.name, c.name, service, g.port.name
                    ));
                }
            }
            out.push(gw);
        }
    }
    for g in &d.gateways {
        let mut gw = g.clone();
        gw.name = format!("{}/{}", d.name, g.port.name);
        for r in &mut gw.routes {
            if let Route::Default(route) = r {
                route.path = vamp_core::model::GatewayPath::new(format!(
                    "{}/{}",
                    d.name,
                    route.path.normalized()
                ));
            }
        }
        out.push(gw);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vamp_core::dsl::{AnyArtifact, read_str};

    #[test]
    fn external_and_gateway_targets() {
        let AnyArtifact::Gateway(a) = read_str(
            "name: a\nport: 9000\nroutes: {'[10.0.0.1:80]': {weight: 100%}}",
            None.or(Some(vamp_core::model::ArtifactKind::Gateway)),
        )
        .unwrap()
        .remove(0) else {
            panic!()
        };
        let AnyArtifact::Gateway(b) = read_str(
            "name: b\nport: 9001\nroutes: {a: {weight: 100%}}",
            Some(vamp_core::model::ArtifactKind::Gateway),
        )
        .unwrap()
        .remove(0) else {
            panic!()
        };
        let mut gs = vec![a, b];
        resolve_targets::<Deployment>(&mut gs, &[]);
        assert_eq!(
            gs[0].routes[0].definition().unwrap().targets,
            vec![RouteTarget::External {
                url: "10.0.0.1:80".into()
            }]
        );
        assert_eq!(
            gs[1].routes[0].definition().unwrap().targets,
            vec![RouteTarget::Internal {
                name: "a".into(),
                host: None,
                port: 9000
            }]
        );
    }

    #[test]
    fn deployment_instances_are_targets() {
        let doc = "kind: deployments\nname: sava\nclusters:\n  sava:\n    gateways:\n      webport:\n        routes: {sava:1.0.0: {weight: 100%}}\n    services:\n    - status: {intention: Deployment, since: '2026-01-01T00:00:00Z', phase: {name: Done, since: '2026-01-01T00:00:00Z'}}\n      breed: {name: 'sava:1.0.0', deployable: magneticio/sava:1.0.0, ports: {webport: 8080/http}}\n      instances:\n      - {name: sava-1, host: 10.0.0.5, ports: {webport: 31001}, deployed: true}\n      - {name: sava-2, host: 10.0.0.6, ports: {webport: 31002}, deployed: true}\nports: {sava.webport: '40000'}\ngateways:\n  9050: sava/webport\n";
        let AnyArtifact::Deployment(d) = read_str(doc, None).unwrap().remove(0) else {
            panic!()
        };
        let mut gs = deployment_gateways(&d);
        assert_eq!(
            gs.iter()
                .map(|g| (g.name.as_str(), g.port.number))
                .collect::<Vec<_>>(),
            [("sava/sava/webport", 40000), ("sava/9050", 9050)]
        );
        resolve_targets(&mut gs, std::slice::from_ref(&d));
        assert_eq!(
            gs[0].routes[0].definition().unwrap().targets,
            vec![
                RouteTarget::Internal {
                    name: "sava-1".into(),
                    host: Some("10.0.0.5".into()),
                    port: 31001
                },
                RouteTarget::Internal {
                    name: "sava-2".into(),
                    host: Some("10.0.0.6".into()),
                    port: 31002
                }
            ]
        );
        assert_eq!(
            gs[1].routes[0].definition().unwrap().targets,
            vec![RouteTarget::Internal {
                name: "sava/sava/webport".into(),
                host: None,
                port: 40000
            }]
        );
    }
}
