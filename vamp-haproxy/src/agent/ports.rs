//! Gateway ports that cannot be bound. HAProxy applies a configuration all or nothing, so one
//! gateway whose port another process holds would stop every gateway of this HAProxy from
//! updating. Before a reload, each TCP `bind` of the candidate is probed the way HAProxy binds
//! (`SO_REUSEADDR` and `SO_REUSEPORT`, so HAProxy's own listeners do not count as taken);
//! frontends whose port is held by another process are left out of the configuration applied,
//! reported, and tried again later.

use std::net::SocketAddr;

/// Whether `addr` can be bound as HAProxy binds it.
fn bindable(addr: SocketAddr) -> bool {
    use rustix::net::{AddressFamily, SocketType, bind, socket, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let Ok(fd) = socket(family, SocketType::STREAM, None) else {
        return true; // cannot tell: let HAProxy decide
    };
    let _ = sockopt::set_socket_reuseaddr(&fd, true);
    let _ = sockopt::set_socket_reuseport(&fd, true);
    match bind(&fd, &addr) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::ADDRINUSE,
    }
}

/// A frontend left out because its port is taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unbindable {
    /// The frontend's proxy name.
    pub lookup: String,
    /// The gateway's name (from the generator's `# frontend:` comment), or the lookup.
    pub gateway: String,
    /// The address.
    pub address: String,
}

/// The frontends of `config` whose TCP bind address another process holds.
pub(crate) fn unbindable(config: &str) -> Vec<Unbindable> {
    let mut out = Vec::new();
    let mut comment: Option<String> = None;
    let mut frontend: Option<(String, String)> = None;
    for line in config.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("# frontend: ") {
            comment = Some(name.to_owned());
            continue;
        }
        if let Some(lookup) = line.strip_prefix("frontend ") {
            let lookup = lookup.trim().to_owned();
            frontend = Some((lookup.clone(), comment.take().unwrap_or(lookup)));
            continue;
        }
        if line.starts_with("backend ")
            || line.starts_with("global")
            || line.starts_with("defaults")
        {
            frontend = None;
            continue;
        }
        let (Some((lookup, gateway)), Some(address)) = (&frontend, trimmed.strip_prefix("bind "))
        else {
            continue;
        };
        let address = address.split_whitespace().next().unwrap_or_default();
        let parsed = address.parse::<SocketAddr>().ok().or_else(|| {
            // `:80` and `*:80` mean every IPv4 address.
            let port = address.rsplit_once(':')?.1.parse::<u16>().ok()?;
            address
                .rsplit_once(':')
                .filter(|(h, _)| h.is_empty() || *h == "*")
                .map(|_| SocketAddr::from(([0, 0, 0, 0], port)))
        });
        if let Some(addr) = parsed
            && !bindable(addr)
        {
            out.push(Unbindable {
                lookup: lookup.clone(),
                gateway: gateway.clone(),
                address: address.to_owned(),
            });
        }
    }
    out
}

/// `config` without the frontend sections named in `lookups` (and their comment lines).
pub(crate) fn without_frontends(config: &str, lookups: &[String]) -> String {
    let mut out = String::with_capacity(config.len());
    let mut skipping = false;
    let lines: Vec<&str> = config.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let starts_section = ["frontend ", "backend ", "listen ", "global", "defaults"]
            .iter()
            .any(|k| line.starts_with(k));
        if starts_section {
            skipping = line
                .strip_prefix("frontend ")
                .is_some_and(|l| lookups.iter().any(|x| x == l.trim()));
        }
        // The generator's `# frontend: <name>` comment belongs to the next section.
        let comment_of_skipped = line.trim().starts_with("# frontend: ")
            && lines.get(i + 1).is_some_and(|next| {
                next.strip_prefix("frontend ")
                    .is_some_and(|l| lookups.iter().any(|x| x == l.trim()))
            });
        if !skipping && !comment_of_skipped {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_another_process_is_found_and_its_frontend_left_out() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "global\n  maxconn 1\n\n# frontend: shop/a\nfrontend fa\n  bind 127.0.0.1:{port}\n  default_backend b\n\n# frontend: shop/b\nfrontend fb\n  bind 127.0.0.1:{free}\n  default_backend b\n\nbackend b\n  server s 127.0.0.1:1\n"
        );
        let taken = unbindable(&config);
        assert_eq!(
            taken,
            [Unbindable {
                lookup: "fa".into(),
                gateway: "shop/a".into(),
                address: format!("127.0.0.1:{port}"),
            }]
        );
        let reduced = without_frontends(&config, &["fa".to_owned()]);
        assert!(!reduced.contains("frontend fa") && !reduced.contains("shop/a"));
        assert!(reduced.contains("frontend fb") && reduced.contains("backend b"));
        drop(held);
        assert!(unbindable(&config).is_empty(), "free again");
    }
}
