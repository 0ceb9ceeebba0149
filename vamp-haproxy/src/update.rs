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

/// One meaningful line: its text with a server's weight masked, and the server's identity and
/// weight when it is a `server` line with a weight.
#[derive(Debug, PartialEq, Eq)]
struct Line<'a> {
    masked: String,
    server: Option<(&'a str, &'a str, &'a str)>,
}

fn lines(config: &str) -> Vec<Line<'_>> {
    let mut section: &str = "";
    let mut out = Vec::new();
    for raw in config.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        // Section keywords start at column 0 in HAProxy's files, but HAProxy does not
        // require it: recognise them by keyword.
        match tokens[0] {
            "backend" | "listen" => section = tokens.get(1).copied().unwrap_or(""),
            "frontend" | "global" | "defaults" | "resolvers" | "peers" | "userlist" | "program"
            | "http-errors" | "ring" | "mailers" | "cache" => section = "",
            _ => {}
        }
        let weight_at = (tokens[0] == "server" && !section.is_empty())
            .then(|| tokens.iter().position(|t| *t == "weight"))
            .flatten()
            .filter(|i| tokens.get(i + 1).is_some_and(|w| w.parse::<u16>().is_ok()));
        match (weight_at, tokens.get(1)) {
            (Some(i), Some(server)) => {
                let mut masked: Vec<&str> = tokens.clone();
                masked[i + 1] = "*";
                out.push(Line {
                    masked: masked.join(" "),
                    server: Some((section, server, tokens[i + 1])),
                });
            }
            _ => out.push(Line {
                masked: tokens.join(" "),
                server: None,
            }),
        }
    }
    out
}

/// Compares the running configuration with a candidate.
pub fn plan_update(running: &str, candidate: &str) -> Update {
    if running == candidate {
        return Update::Noop;
    }
    let old = lines(running);
    let new = lines(candidate);
    if old.len() != new.len() {
        return Update::Reload;
    }
    let mut changes = Vec::new();
    for (o, n) in old.iter().zip(&new) {
        if o.masked != n.masked {
            return Update::Reload;
        }
        if let (Some((_, _, ow)), Some((backend, server, nw))) = (o.server, n.server)
            && ow != nw
        {
            let Ok(weight) = nw.parse::<u16>() else {
                return Update::Reload;
            };
            if weight > 256 {
                return Update::Reload;
            }
            changes.push(WeightChange {
                backend: backend.to_owned(),
                server: server.to_owned(),
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
}
