//! Gateway ports that cannot be bound. HAProxy applies a configuration all or nothing, so one
//! gateway whose port another process holds would stop every gateway of this HAProxy from
//! updating. Before a reload, each TCP `bind` of the candidate is probed with `SO_REUSEADDR`
//! but without `SO_REUSEPORT`: a port in use counts as taken unless the configuration this
//! agent's HAProxy runs binds it (HAProxy's own listeners) or, when that configuration is
//! unknown, every listener on it is a socket of HAProxy's processes (from `/proc`). Probing with `SO_REUSEPORT`, as
//! HAProxy binds, would miss another HAProxy (a second control plane's agent on the same
//! machine) holding the port the same way: both would listen and share each other's traffic.
//! Frontends whose port is held by another process are left out of the configuration
//! applied, reported, and tried again later.

use std::net::SocketAddr;

/// The inodes of the sockets listening where `addr` would (its port, on its address or on
/// every address; IPv4 and IPv6), from `/proc/net`; `None` when they cannot be read. Another
/// address's listener on the same port (another agent on the same host) is not in the way.
fn listeners_on(addr: SocketAddr) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        read_any = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let listening = *state == "0A";
            let Some((ip, port)) = local.rsplit_once(':') else {
                continue;
            };
            let on_port = u16::from_str_radix(port, 16).ok() == Some(addr.port());
            // An address we cannot read counts as overlapping (the safe side).
            let overlaps = proc_ip(ip).is_none_or(|ip| {
                ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified()
            });
            if listening
                && on_port
                && overlaps
                && let Ok(inode) = inode.parse()
            {
                out.push(inode);
            }
        }
    }
    read_any.then_some(out)
}

/// An address as `/proc/net/tcp{,6}` prints it: 32-bit words in hex, each in the host's byte
/// order; an IPv4-mapped IPv6 address as its IPv4 address.
fn proc_ip(hex: &str) -> Option<std::net::IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match hex.len() {
        8 => Some(std::net::Ipv4Addr::from(word(0)?).into()),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            Some(v6.to_ipv4_mapped().map_or(v6.into(), Into::into))
        }
        _ => None,
    }
}

/// The socket inodes held by the processes `roots` and their descendants.
fn sockets_of(roots: &[u32]) -> std::collections::HashSet<u64> {
    let mut pids: Vec<u32> = roots.to_vec();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        let parents: Vec<(u32, u32)> = entries
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let ppid = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect();
        let mut grew = true;
        while grew {
            grew = false;
            for (pid, ppid) in &parents {
                if pids.contains(ppid) && !pids.contains(pid) {
                    pids.push(*pid);
                    grew = true;
                }
            }
        }
    }
    let mut out = std::collections::HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse().ok())
            {
                out.insert(inode);
            }
        }
    }
    out
}

/// Who holds ports: this agent's HAProxy (its processes, and the addresses the configuration
/// it runs binds).
pub(crate) struct Ours<'a> {
    /// The HAProxy master and workers.
    pub pids: &'a [u32],
    /// The configuration HAProxy runs, if known.
    pub running: Option<&'a str>,
}

/// Whether `addr` is free, or held by this agent's own HAProxy: the configuration it runs
/// binds the address (`ours`), or, when that configuration is unknown, every socket listening
/// on the port belongs to its processes (`own_sockets`, read from `/proc`).
fn bindable(
    addr: SocketAddr,
    ours: &[SocketAddr],
    own_sockets: &std::collections::HashSet<u64>,
) -> bool {
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
    match bind(&fd, &addr) {
        Ok(()) => true,
        Err(e) if e == rustix::io::Errno::ADDRINUSE => {
            // The configuration HAProxy runs binds it: ours (cheap; the common case of every
            // update).
            if ours.iter().any(|o| {
                // The same port on the same address, or where either side is every address.
                o.port() == addr.port()
                    && (o.ip() == addr.ip()
                        || o.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            }) {
                return true;
            }
            // Otherwise ours only if every listener on it is a socket of our HAProxy (read
            // from /proc, only when the configuration it runs is unknown: `own_sockets` is
            // empty otherwise).
            match listeners_on(addr) {
                Some(listeners) if !listeners.is_empty() && !own_sockets.is_empty() => {
                    listeners.iter().all(|i| own_sockets.contains(i))
                }
                _ => false,
            }
        }
        Err(_) => true,
    }
}

/// The TCP bind addresses of `config`'s frontends: (lookup, gateway, address as written,
/// parsed address).
pub(super) fn binds(config: &str) -> Vec<(String, String, String, Option<SocketAddr>)> {
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
        out.push((lookup.clone(), gateway.clone(), address.to_owned(), parsed));
    }
    out
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

/// The frontends of `config` whose TCP bind address another process holds (see [`Ours`]).
pub(crate) fn unbindable(config: &str, ours: &Ours<'_>) -> Vec<Unbindable> {
    // Scanning /proc costs (every process's parent, every socket of HAProxy's processes, the
    // kernel's TCP tables, long under load): only when the configuration HAProxy runs is
    // unknown (first start, an adopted HAProxy, an update that failed half-way).
    let own_sockets = if ours.pids.is_empty() || ours.running.is_some() {
        std::collections::HashSet::new()
    } else {
        sockets_of(ours.pids)
    };
    let running = ours.running;
    let ours: Vec<SocketAddr> = running
        .map(|r| binds(r).into_iter().filter_map(|b| b.3).collect())
        .unwrap_or_default();
    binds(config)
        .into_iter()
        .filter_map(|(lookup, gateway, address, parsed)| {
            let addr = parsed?;
            (!bindable(addr, &ours, &own_sockets)).then_some(Unbindable {
                lookup,
                gateway,
                address,
            })
        })
        .collect()
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

    /// A listener on another address of the same port (another agent on the same host) is
    /// not in the way; one on the address, or on every address, is.
    #[test]
    fn only_listeners_where_the_address_would_bind_are_in_the_way() {
        let other = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let port = other.local_addr().unwrap().port();
        let at = |ip: &str| listeners_on(SocketAddr::new(ip.parse().unwrap(), port)).unwrap();
        assert!(at("127.0.0.2").is_empty());
        assert_eq!(at("127.0.0.3").len(), 1);
        assert_eq!(at("0.0.0.0").len(), 1);
        assert_eq!(
            proc_ip("0100007F"),
            Some(std::net::Ipv4Addr::LOCALHOST.into())
        );
        assert_eq!(
            proc_ip("0000000000000000FFFF00000300007F"),
            Some(std::net::Ipv4Addr::new(127, 0, 0, 3).into())
        );
        assert_eq!(
            proc_ip("00000000000000000000000001000000"),
            Some(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert_eq!(proc_ip("zz"), None);
    }

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
        let taken = unbindable(
            &config,
            &Ours {
                pids: &[],
                running: None,
            },
        );
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
        assert!(
            unbindable(
                &config,
                &Ours {
                    pids: &[],
                    running: None
                }
            )
            .is_empty(),
            "free again"
        );
    }

    /// A listener with `SO_REUSEPORT`, as another HAProxy binds.
    fn reuseport_listener() -> (rustix::fd::OwnedFd, u16) {
        use rustix::net::{AddressFamily, SocketType, bind, listen, socket, sockopt};
        let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        sockopt::set_socket_reuseaddr(&fd, true).unwrap();
        sockopt::set_socket_reuseport(&fd, true).unwrap();
        bind(&fd, &SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        listen(&fd, 16).unwrap();
        let addr: SocketAddr = rustix::net::getsockname(&fd).unwrap().try_into().unwrap();
        let port = addr.port();
        (fd, port)
    }

    #[test]
    fn a_port_our_haproxy_s_process_listens_on_is_ours_and_another_s_is_taken() {
        // "Our HAProxy": a child process listening with SO_REUSEPORT.
        let child = std::process::Command::new("python3")
            .args(["-c", "import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(('127.0.0.1',0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(60)"])
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            return; // no python3 here
        };
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let guard = ChildGuard(child);
        let haproxy_port: u16 = line.trim().parse().unwrap();
        let ours = [guard.0.id()];
        let config = format!("frontend fa\n  bind 127.0.0.1:{haproxy_port}\n");
        assert!(
            unbindable(
                &config,
                &Ours {
                    pids: &ours,
                    running: None
                }
            )
            .is_empty(),
            "the listener is our HAProxy's, whatever the configuration known"
        );
        // Another process (this test) listening the same way: taken.
        let (_other, other_port) = reuseport_listener();
        let config = format!("frontend fb\n  bind 127.0.0.1:{other_port}\n");
        assert_eq!(
            unbindable(
                &config,
                &Ours {
                    pids: &ours,
                    running: None
                }
            )
            .len(),
            1,
            "another process's listener is taken even with SO_REUSEPORT"
        );
    }

    struct ChildGuard(std::process::Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn another_haproxy_s_port_is_taken_and_our_own_is_not() {
        let (_other, port) = reuseport_listener();
        let config = format!(
            "# frontend: shop/a\nfrontend fa\n  bind 127.0.0.1:{port}\n  default_backend b\n\nbackend b\n  server s 127.0.0.1:1\n"
        );
        assert_eq!(
            unbindable(
                &config,
                &Ours {
                    pids: &[],
                    running: None
                }
            )
            .len(),
            1,
            "held with SO_REUSEPORT by another process: taken"
        );
        assert!(
            unbindable(
                &config,
                &Ours {
                    pids: &[],
                    running: Some(&config)
                }
            )
            .is_empty(),
            "held by the configuration this agent runs: ours"
        );
        let everywhere = format!("frontend fa\n  bind 0.0.0.0:{port}\n");
        assert!(
            unbindable(
                &config,
                &Ours {
                    pids: &[],
                    running: Some(&everywhere)
                }
            )
            .is_empty(),
            "ours on every address covers 127.0.0.1"
        );
    }
}
