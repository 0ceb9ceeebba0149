//! How a new configuration reaches a running HAProxy: not at all (nothing changed), through
//! the runtime API (only server weights changed), or by a reload (anything else). Pure: the
//! gateway agent feeds it the running and the candidate configuration text.
//!
//! ```
//! use vamp_haproxy::update::{plan_update, Update, WeightChange};
//!
//! let running = "backend b\n  server s1 127.0.0.1:8081 weight 90 check\n  server s2 127.0.0.1:8082 weight 10 check\n";
//! let candidate = "backend b\n  server s1 127.0.0.1:8081 weight 50 check\n  server s2 127.0.0.1:8082 weight 50 check\n";
//! match plan_update(running, candidate) {
//!     Update::Weights(changes) => assert_eq!(changes, vec![
//!         WeightChange { backend: "b".into(), server: "s1".into(), weight: 50 },
//!         WeightChange { backend: "b".into(), server: "s2".into(), weight: 50 },
//!     ]),
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(plan_update(running, &running.replace("8082", "8083")), Update::Reload);
//! ```

/// What a candidate configuration needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The same configuration: nothing to do.
    Noop,
    /// Only server weights (or comments) differ: apply these through the runtime API and
    /// write the file, without a reload. Empty when only comments changed.
    Weights(Vec<WeightChange>),
    /// Anything structural: reload.
    Reload,
}

/// `set weight <backend>/<server> <weight>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightChange {
    /// The backend (or `listen`) section.
    pub backend: String,
    /// The server's name.
    pub server: String,
    /// The new weight (HAProxy accepts 0..=256).
    pub weight: u16,
}

/// One meaningful line: its words (as HAProxy reads them, [`crate::lex`]) with a server's weight
/// masked, and the server's identity and weight when it is a `server` line with a weight.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    masked: Vec<String>,
    server: Option<(String, String, String)>,
}

/// The lines of a configuration, or `None` when a line cannot be read safely (then only a full
/// validation may decide).
fn lines(config: &str) -> Option<Vec<Line>> {
    let mut section = String::new();
    let mut out = Vec::new();
    for raw in config.split('\n') {
        let tokens = crate::lex::words(raw).ok()?;
        let Some(first) = tokens.first() else {
            continue;
        };
        // Section keywords start at column 0 in HAProxy's files, but HAProxy does not
        // require it: recognise them by keyword.
        match first.as_str() {
            "backend" | "listen" => section = tokens.get(1).cloned().unwrap_or_default(),
            "frontend" | "global" | "defaults" | "resolvers" | "peers" | "userlist" | "program"
            | "http-errors" | "ring" | "mailers" | "cache" => section.clear(),
            _ => {}
        }
        let weight_at = (first == "server" && !section.is_empty())
            .then(|| tokens.iter().position(|t| t == "weight"))
            .flatten()
            .filter(|i| {
                tokens.get(i + 1).is_some_and(|w| {
                    !w.is_empty() && w.len() <= 3 && w.bytes().all(|b| b.is_ascii_digit())
                })
            });
        match (weight_at, tokens.get(1)) {
            (Some(i), Some(server)) => {
                let weight = tokens[i + 1].clone();
                let server = server.clone();
                let mut masked = tokens;
                masked[i + 1] = "*".into();
                out.push(Line {
                    masked,
                    server: Some((section.clone(), server, weight)),
                });
            }
            _ => out.push(Line {
                masked: tokens,
                server: None,
            }),
        }
    }
    Some(out)
}

/// The changes that put `changes`' servers back to their weights in `running`.
pub fn reverting(running: &str, changes: &[WeightChange]) -> Vec<WeightChange> {
    let lines = lines(running).unwrap_or_default();
    changes
        .iter()
        .filter_map(|c| {
            lines.iter().find_map(|l| match &l.server {
                Some((backend, server, weight)) if *backend == c.backend && *server == c.server => {
                    weight.parse().ok().map(|weight| WeightChange {
                        backend: backend.clone(),
                        server: server.clone(),
                        weight,
                    })
                }
                _ => None,
            })
        })
        .collect()
}

/// Compares the running configuration with a candidate. Lines are compared word by word as
/// HAProxy reads them (quotes, escapes, ASCII spaces and tabs only), so a candidate is a
/// weight change only when HAProxy would read nothing else differently; anything that cannot
/// be read that way is a [`Update::Reload`], which the agent validates first.
pub fn plan_update(running: &str, candidate: &str) -> Update {
    if running == candidate {
        return Update::Noop;
    }
    let (Some(old), Some(new)) = (lines(running), lines(candidate)) else {
        return Update::Reload;
    };
    if old.len() != new.len() {
        return Update::Reload;
    }
    let mut changes = Vec::new();
    for (o, n) in old.iter().zip(&new) {
        if o.masked != n.masked {
            return Update::Reload;
        }
        if let (Some((_, _, ow)), Some((backend, server, nw))) = (&o.server, &n.server)
            && ow != nw
        {
            let Ok(weight) = nw.parse::<u16>() else {
                return Update::Reload;
            };
            if weight > 256 {
                return Update::Reload;
            }
            changes.push(WeightChange {
                backend: backend.clone(),
                server: server.clone(),
                weight,
            });
        }
    }
    Update::Weights(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "global\n  maxconn 10\n\nfrontend f\n  bind :80\n  default_backend b\n\n# backend: b\nbackend b\n  balance roundrobin\n  server s1 unix@/tmp/s1.sock send-proxy weight 100 check\n  server s2 127.0.0.1:8082 cookie s2 weight 0 check inter 500\n";

    #[test]
    fn identical_text_is_a_noop() {
        assert_eq!(plan_update(RUNNING, RUNNING), Update::Noop);
    }

    #[test]
    fn weight_changes_are_dynamic() {
        let candidate = RUNNING
            .replace("weight 100", "weight 90")
            .replace("weight 0", "weight 10");
        assert_eq!(
            plan_update(RUNNING, &candidate),
            Update::Weights(vec![
                WeightChange {
                    backend: "b".into(),
                    server: "s1".into(),
                    weight: 90
                },
                WeightChange {
                    backend: "b".into(),
                    server: "s2".into(),
                    weight: 10
                },
            ])
        );
    }

    #[test]
    fn comments_and_blank_lines_need_no_reload() {
        let candidate = RUNNING.replace("# backend: b", "# backend: b (renamed)\n\n");
        assert_eq!(plan_update(RUNNING, &candidate), Update::Weights(vec![]));
    }

    #[test]
    fn structure_reloads() {
        for candidate in [
            RUNNING.replace("127.0.0.1:8082", "127.0.0.1:8083"),
            RUNNING.replace("roundrobin", "leastconn"),
            RUNNING.replace("  server s2", "  server s3"),
            RUNNING.replace("bind :80", "bind :81"),
            format!("{RUNNING}  server s4 127.0.0.1:9 weight 1\n"),
            RUNNING.replace("weight 0 check", "check"),
            RUNNING.replace("weight 100", "weight 300"),
            // A weight outside a backend section is not a server weight.
            RUNNING.replace("maxconn 10", "maxconn 11"),
        ] {
            assert_eq!(
                plan_update(RUNNING, &candidate),
                Update::Reload,
                "{candidate}"
            );
        }
    }

    #[test]
    fn servers_are_named_by_their_backend_section() {
        let running =
            "backend a\n  server x 1.1.1.1:1 weight 1\nlisten l\n  server x 1.1.1.1:2 weight 1\n";
        let candidate =
            "backend a\n  server x 1.1.1.1:1 weight 1\nlisten l\n  server x 1.1.1.1:2 weight 7\n";
        assert_eq!(
            plan_update(running, candidate),
            Update::Weights(vec![WeightChange {
                backend: "l".into(),
                server: "x".into(),
                weight: 7
            }])
        );
    }

    #[test]
    fn only_what_haproxy_reads_as_a_weight_change_skips_validation() {
        for candidate in [
            // A non-ASCII space is part of a word for HAProxy, not a separator.
            RUNNING.replace("balance roundrobin", "balance\u{a0}roundrobin"),
            // Spacing inside a quoted argument is part of the argument.
            format!("{RUNNING}  acl a hdr(x) 'a  b'\n"),
            // An unreadable line.
            RUNNING.replace("maxconn 10", "maxconn 'ten"),
        ] {
            let running = if candidate.contains("'a  b'") {
                format!("{RUNNING}  acl a hdr(x) 'a b'\n")
            } else {
                RUNNING.to_owned()
            };
            assert_eq!(
                plan_update(&running, &candidate),
                Update::Reload,
                "{candidate}"
            );
        }
        // Spacing between words is not: HAProxy reads the same words.
        let respaced = RUNNING.replace("balance roundrobin", "balance    roundrobin");
        assert_eq!(plan_update(RUNNING, &respaced), Update::Weights(vec![]));
    }
}
