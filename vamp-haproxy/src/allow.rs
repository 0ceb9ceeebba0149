//! What the gateway agent accepts from the key-value store: exactly the sections and directives
//! the generator ([`crate::render`]) writes, read with HAProxy's own quoting rules
//! ([`crate::lex`]). Anyone who can write the configuration key must not be able to make a
//! root HAProxy run programs, load Lua, read files or the environment, open admin sockets or
//! write files outside the socket directory; so everything else is refused **before** any
//! HAProxy process sees the text (`haproxy -c` itself runs `lua-load` scripts while parsing).
//!
//! The allow-list, per section (every other section, directive, option, a line before the
//! first section and HAProxy's `.if`/`.diag` preprocessor lines are refused):
//!
//! | section | directive | accepted form |
//! | --- | --- | --- |
//! | `frontend <name>` | `bind` | `<ip>:<port>`, or `unix@<socket dir>/<file>.sock accept-proxy` |
//! | | `mode` | `http`, `tcp` |
//! | | `option` | `httplog`, `tcplog` |
//! | | `log-format` | one word whose `%[…]` expressions use known fetches and converters |
//! | | `acl` | `<name> <fetch>[(<args>)]` with `-i`, `-n`, `-m <method>`, `--`, then patterns |
//! | | `use_backend` | `<name>` [`if`/`unless` over this section's ACL names, `!`, `or`, `\|\|`] |
//! | | `default_backend` | `<name>` |
//! | `backend <name>` | `mode`, `balance` | as above; `balance` as the generator validates it |
//! | | `option` | `forwardfor` |
//! | | `cookie` | `<name> insert indirect nocache` |
//! | | `http-request` | `set-path <log-format> if <condition>` (ACL names or `{ <criterion> }`), `set-header X-Forwarded-Port %[dst_port]` |
//! | | `server` | `<name> <host>:<port>` or `unix@<socket dir>/<file>.sock`, then only `send-proxy`, `check`, `weight <0-256>`, `inter <ms>`, `cookie <name>` |
//!
//! Fetches are those of [`crate::fetches`] except `env` (it reads the agent's environment,
//! where credentials live); converters that read files (`map*`) or need Lua are refused.
//!
//! ```
//! use vamp_haproxy::allow::{check, AllowPolicy};
//! let policy = AllowPolicy::new("/usr/local/vamp");
//! assert!(check("backend b\n  mode http\n  server s 10.0.0.1:80 weight 10 check\n", &policy).is_ok());
//! let refused = check("program x\n  command /bin/sh -c id\n", &policy).unwrap_err();
//! assert_eq!(refused.line, 1);
//! assert!(check("backend b\n  server s 10.0.0.1:80 ssl crt /etc/shadow\n", &policy).is_err());
//! ```

use std::fmt;

use crate::lex::words;

/// What the allow-list needs to know about the agent's host.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AllowPolicy {
    /// The directory of the unix sockets that chain frontends ([`crate::RenderOptions`]'s
    /// `socket_dir`); `bind unix@` and `server unix@` must name a `.sock` file directly in it.
    pub socket_dir: String,
}

impl AllowPolicy {
    /// The policy for sockets in `socket_dir`.
    pub fn new(socket_dir: impl Into<String>) -> Self {
        Self {
            socket_dir: socket_dir.into().trim_end_matches('/').to_owned(),
        }
    }
}

/// A refused configuration: the first offending line and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The line number (from 1) in the checked text.
    pub line: usize,
    /// The line, shortened and with control characters replaced, for messages.
    pub text: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} ({:?}): {}", self.line, self.text, self.reason)
    }
}

impl std::error::Error for Refusal {}

fn shown(line: &str) -> String {
    let mut s: String = line
        .trim()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(120)
        .collect();
    if line.trim().chars().count() > 120 {
        s.push('…');
    }
    s
}

/// A proxy, ACL, backend or server name as the generator writes them (lookup names, hex ACL
/// names, `virtual_hosts`).
fn is_name(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 128
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
}

fn is_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.chars().all(|c| c.is_ascii_digit())
        && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
}

/// `<ip>:<port>` of a `bind`: IPv4, IPv6 (bare or bracketed), `*` or empty.
fn is_bind_address(w: &str) -> bool {
    let Some((ip, port)) = w.rsplit_once(':') else {
        return false;
    };
    is_port(port)
        && ip
            .chars()
            .all(|c| c.is_ascii_hexdigit() || ".:[]*".contains(c))
}

/// `<host>:<port>` of a server: a host name or an IP address, never a `…@` address family.
fn is_server_address(w: &str) -> bool {
    let Some((host, port)) = w.rsplit_once(':') else {
        return false;
    };
    if !is_port(port) || host.is_empty() || host.len() > 253 {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !v6.is_empty()
            && v6
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ".:".contains(c));
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

impl AllowPolicy {
    /// `unix@<socket dir>/<file>.sock`.
    fn is_socket(&self, w: &str) -> bool {
        let Some(path) = w.strip_prefix("unix@") else {
            return false;
        };
        let Some(file) = path
            .strip_prefix(self.socket_dir.as_str())
            .and_then(|f| f.strip_prefix('/'))
        else {
            return false;
        };
        file.len() > 5
            && file.ends_with(".sock")
            && !file.starts_with('.')
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    }
}

/// A fetch with optional arguments, no converters: `req.hdr(host)`, `path_beg`.
fn check_fetch(w: &str) -> Result<(), String> {
    let (name, args) = match w.find('(') {
        Some(i) => (&w[..i], Some(&w[i..])),
        None => (w, None),
    };
    if !crate::fetches::is_fetch(name) {
        return Err(format!("'{name}' is not a known HAProxy sample fetch"));
    }
    if crate::fetches::is_sensitive_fetch(name) {
        return Err(format!(
            "the fetch '{name}' reads the agent's environment and is not allowed"
        ));
    }
    if let Some(args) = args
        && (!args.ends_with(')') || args[1..args.len() - 1].contains(['(', ')']))
    {
        return Err("a fetch's arguments must be one (...) group".into());
    }
    Ok(())
}

/// An ACL criterion: a fetch, flags, patterns (the generator's [`crate::acl::raw_criterion`]
/// rules).
fn check_criterion(ws: &[String]) -> Result<(), String> {
    let Some(first) = ws.first() else {
        return Err("an ACL needs a criterion".into());
    };
    check_fetch(first)?;
    let mut rest = ws[1..].iter();
    while let Some(w) = rest.next() {
        match w.as_str() {
            "--" => break,
            "-i" | "-n" => {}
            "-m" => {
                let method = rest.next().map(String::as_str).unwrap_or_default();
                if ![
                    "found", "bool", "int", "ip", "bin", "len", "str", "sub", "reg", "beg", "end",
                    "dir", "dom",
                ]
                .contains(&method)
                {
                    return Err(format!("'-m {method}' is not a match method"));
                }
            }
            w if w.starts_with('-')
                && w.len() > 1
                && !w[1..].starts_with(|c: char| c.is_ascii_digit()) =>
            {
                return Err(format!(
                    "the ACL flag '{w}' is not allowed (only -i, -n, -m and --; -f and -M read files)"
                ));
            }
            _ => break,
        }
    }
    Ok(())
}

/// A log-format string: every `%[fetch,conv,…]` uses a known, allowed fetch and converters that
/// neither read files nor need Lua.
pub(crate) fn check_log_format(format: &str) -> Result<(), String> {
    let mut rest = format;
    while let Some(i) = rest.find("%[") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(']') else {
            return Err("an unclosed %[ expression".into());
        };
        let expr = &after[..end];
        let mut parts = split_top_level(expr).into_iter();
        check_fetch(parts.next().unwrap_or_default())?;
        for conv in parts {
            let name = conv.split('(').next().unwrap_or_default();
            if !crate::fetches::is_converter(name) {
                return Err(format!("'{name}' is not a known converter"));
            }
            if name.starts_with("map") || name.starts_with("lua.") {
                return Err(format!(
                    "the converter '{name}' reads files or needs Lua and is not allowed"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// Splits `a(b,c),d` on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A condition after `if`/`unless`: ACL names of this section, `!`, `or`, `||`, and (when
/// `anonymous` is allowed) `{ <criterion> }` blocks.
pub(crate) fn check_condition(
    ws: &[String],
    acls: &[String],
    anonymous: bool,
) -> Result<(), String> {
    if ws.is_empty() {
        return Err("an empty condition".into());
    }
    let mut i = 0;
    while i < ws.len() {
        let w = ws[i].as_str();
        if w == "or" || w == "||" {
            i += 1;
            continue;
        }
        if w == "{" || w == "!{" {
            if !anonymous {
                return Err("anonymous ACLs are not allowed here".into());
            }
            let Some(close) = ws[i + 1..].iter().position(|x| x == "}") else {
                return Err("an unclosed '{'".into());
            };
            check_criterion(&ws[i + 1..i + 1 + close])?;
            i += close + 2;
            continue;
        }
        let name = w.strip_prefix('!').unwrap_or(w);
        if !acls.iter().any(|a| a == name) {
            return Err(format!("'{name}' is not an ACL of this section"));
        }
        i += 1;
    }
    Ok(())
}

#[derive(PartialEq)]
enum Section {
    None,
    Frontend,
    Backend,
}

/// Checks a configuration value against the allow-list.
///
/// # Errors
/// The first [`Refusal`].
pub fn check(config: &str, policy: &AllowPolicy) -> Result<(), Refusal> {
    let mut section = Section::None;
    let mut acls: Vec<String> = Vec::new();
    for (n, line) in config.split('\n').enumerate() {
        let refuse = |reason: String| Refusal {
            line: n + 1,
            text: shown(line),
            reason,
        };
        if line.trim_start().starts_with('.') {
            return Err(refuse(
                "HAProxy preprocessor lines (.if, .diag, …) are not allowed".into(),
            ));
        }
        let ws = words(line).map_err(|e| refuse(e.to_string()))?;
        let Some(keyword) = ws.first() else { continue };
        let args = &ws[1..];
        let result: Result<(), String> = match (keyword.as_str(), &section) {
            ("frontend" | "backend", _) => {
                if args.len() == 1 && is_name(&args[0]) {
                    section = if keyword == "frontend" {
                        Section::Frontend
                    } else {
                        Section::Backend
                    };
                    acls.clear();
                    Ok(())
                } else {
                    Err(format!("'{keyword}' takes one proxy name"))
                }
            }
            (_, Section::None) => Err(format!(
                "'{keyword}' is not a section the generator writes (only frontend and backend)"
            )),
            ("mode", _) => match args {
                [m] if m == "http" || m == "tcp" => Ok(()),
                _ => Err("mode must be http or tcp".into()),
            },
            ("option", Section::Frontend) => match args {
                [o] if o == "httplog" || o == "tcplog" => Ok(()),
                _ => Err("only 'option httplog' and 'option tcplog' in a frontend".into()),
            },
            ("option", Section::Backend) => match args {
                [o] if o == "forwardfor" => Ok(()),
                _ => Err("only 'option forwardfor' in a backend".into()),
            },
            ("bind", Section::Frontend) => match args {
                [a] if is_bind_address(a) => Ok(()),
                [s, p] if policy.is_socket(s) && p == "accept-proxy" => Ok(()),
                _ => Err(format!(
                    "bind takes <ip>:<port>, or unix@{}/<file>.sock accept-proxy",
                    policy.socket_dir
                )),
            },
            ("log-format", Section::Frontend) => match args {
                [f] => check_log_format(f),
                _ => Err("log-format takes one word".into()),
            },
            ("acl", Section::Frontend) => match args {
                [name, criterion @ ..] if is_name(name) => {
                    check_criterion(criterion).map(|()| acls.push(name.clone()))
                }
                _ => Err("acl takes a name and a criterion".into()),
            },
            ("use_backend", Section::Frontend) => match args {
                [b] if is_name(b) => Ok(()),
                [b, cond, rest @ ..] if is_name(b) && (cond == "if" || cond == "unless") => {
                    check_condition(rest, &acls, false)
                }
                _ => Err("use_backend takes a backend and an optional condition".into()),
            },
            ("default_backend", Section::Frontend) => match args {
                [b] if is_name(b) => Ok(()),
                _ => Err("default_backend takes one backend".into()),
            },
            ("balance", Section::Backend) => {
                if crate::convert::is_balance(&args.join(" ")) {
                    Ok(())
                } else {
                    Err("not a balance algorithm the generator writes".into())
                }
            }
            ("cookie", Section::Backend) => match args {
                [name, a, b, c]
                    if is_name(name) && a == "insert" && b == "indirect" && c == "nocache" =>
                {
                    Ok(())
                }
                _ => Err("only 'cookie <name> insert indirect nocache'".into()),
            },
            ("http-request", Section::Backend) => match args {
                [set, path, cond, rest @ ..]
                    if set == "set-path" && (cond == "if" || cond == "unless") =>
                {
                    check_log_format(path).and_then(|()| check_condition(rest, &acls, true))
                }
                [set, header, value]
                    if set == "set-header"
                        && header == "X-Forwarded-Port"
                        && value == "%[dst_port]" =>
                {
                    Ok(())
                }
                _ => Err(
                    "only 'http-request set-path … if …' and 'set-header X-Forwarded-Port %[dst_port]'"
                        .into(),
                ),
            },
            ("server", Section::Backend) => check_server(args, policy),
            _ => Err(format!(
                "'{keyword}' is not a directive the generator writes in a {}",
                if section == Section::Frontend {
                    "frontend"
                } else {
                    "backend"
                }
            )),
        };
        result.map_err(refuse)?;
    }
    Ok(())
}

fn check_server(args: &[String], policy: &AllowPolicy) -> Result<(), String> {
    let [name, address, options @ ..] = args else {
        return Err("server takes a name and an address".into());
    };
    if !is_name(name) {
        return Err(format!("'{name}' is not a server name"));
    }
    if !(is_server_address(address) || policy.is_socket(address)) {
        return Err(format!(
            "'{address}' is neither <host>:<port> nor unix@{}/<file>.sock",
            policy.socket_dir
        ));
    }
    let mut options = options.iter();
    while let Some(o) = options.next() {
        match o.as_str() {
            "send-proxy" | "check" => {}
            "weight" => match options.next().and_then(|w| w.parse::<u16>().ok()) {
                Some(w) if w <= 256 => {}
                _ => return Err("weight takes 0..256".into()),
            },
            "inter" => {
                if !options.next().is_some_and(|v| {
                    !v.is_empty() && v.len() <= 9 && v.chars().all(|c| c.is_ascii_digit())
                }) {
                    return Err("inter takes milliseconds".into());
                }
            }
            "cookie" => {
                if !options.next().is_some_and(|v| is_name(v)) {
                    return Err("cookie takes a name".into());
                }
            }
            other => {
                return Err(format!(
                    "the server option '{other}' is not one the generator writes"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AllowPolicy {
        AllowPolicy::new("/run/vamp")
    }

    #[test]
    fn hostile_sections_and_directives_are_refused() {
        let p = policy();
        for (hostile, why) in [
            ("program x\n  command /bin/sh\n", "program section"),
            ("global\n  lua-load /tmp/x.lua\n", "global section"),
            ("defaults\n  mode http\n", "defaults section"),
            ("  maxconn 1\n", "a line before any section"),
            ("backend b\n  option external-check\n", "external-check"),
            (
                "backend b\n  external-check command /bin/sh\n",
                "external-check command",
            ),
            (
                "frontend f\n  bind :80\n  stats socket 0.0.0.0:9999 level admin\n",
                "stats socket",
            ),
            (
                "frontend f\n  bind unix@/etc/passwd accept-proxy\n",
                "a socket outside the dir",
            ),
            (
                "frontend f\n  bind unix@/run/vamp/../x.sock accept-proxy\n",
                "dot-dot",
            ),
            (
                "frontend f\n  bind 0.0.0.0:80 ssl crt /etc/shadow\n",
                "bind options",
            ),
            ("frontend f\n  bind abns@x\n", "abstract socket"),
            (
                "backend b\n  server s 1.2.3.4:80 ssl crt /etc/ssl/key.pem\n",
                "server ssl",
            ),
            (
                "backend b\n  server s unix@/run/haproxy/admin.sock\n",
                "admin socket",
            ),
            (
                "backend b\n  server s 1.2.3.4:80 source 0.0.0.0 usesrc clientip\n",
                "source",
            ),
            (
                "backend b\n  server s 1.2.3.4:80 weight 300\n",
                "weight range",
            ),
            (
                "frontend f\n  acl a hdr(host) -f /etc/shadow\n",
                "ACL from a file",
            ),
            (
                "frontend f\n  acl a env(DB_PASSWORD) -m beg a\n",
                "env fetch",
            ),
            ("frontend f\n  acl a lua.x\n", "unknown fetch"),
            (
                "frontend f\n  log-format %[env(SECRET)]\n",
                "env in a log format",
            ),
            (
                "frontend f\n  log-format %[req.hdr(x),map(/etc/shadow)]\n",
                "map converter",
            ),
            (
                "frontend f\n  log-format \"$HOME\"\n",
                "environment expansion",
            ),
            (
                "frontend f\n  use_backend b if { env(X) -m found }\n",
                "anonymous ACL",
            ),
            ("frontend f\n  use_backend b if nope\n", "undefined ACL"),
            ("frontend f\n  lua-load /tmp/x.lua\n", "lua-load"),
            (
                "frontend f\n  http-request lua.x\n",
                "http-request in a frontend",
            ),
            (
                "backend b\n  http-request set-path %[env(HOME)] if { path_beg /a }\n",
                "env in set-path",
            ),
            (
                "backend b\n  http-request set-path /x if { env(HOME) -m found }\n",
                "env in a condition",
            ),
            (
                "backend b\n  http-request redirect location /x\n",
                "redirect",
            ),
            ("backend b\n  cookie c insert\n", "cookie form"),
            (".if defined(HOME)\nbackend b\n.endif\n", "preprocessor"),
            ("backend b\n  balance hash env(X)\n", "balance"),
            ("backend b x\n", "two names"),
            ("backend b\n  mode http\r\n", "carriage return"),
            ("backend b\n  server s 1.2.3.4:80 check\u{0}\n", "NUL"),
        ] {
            let refusal = check(hostile, &p);
            assert!(refusal.is_err(), "{why}: {hostile:?} was accepted");
        }
    }

    #[test]
    fn the_generator_s_own_forms_are_accepted() {
        let p = policy();
        let config = "# HAProxy - Frontends & Backends managed by Vamp\n\nfrontend virtual_hosts\n  bind 0.0.0.0:80\n  mode http\n  option httplog\n  log-format \"{\\\"ci\\\":\\\"%ci\\\"}\"\n  acl 0123456789abcdef hdr(host) -i a.example\n  use_backend gw if 0123456789abcdef\n\nbackend gw\n  balance roundrobin\n  mode http\n  option forwardfor\n  http-request set-header X-Forwarded-Port %[dst_port]\n  server gw 127.0.0.1:9050\n\nfrontend f\n  bind :::9050\n  option httplog\n  log-format x\n  bind unix@/run/vamp/o_f.sock accept-proxy\n  mode http\n  acl a1 req.fhdr(User-Agent) -m sub 'Chrome'\n  acl a2 req.cook_cnt(x) eq 0\n  use_backend im_r if a1 !a2 or a2\n  default_backend o_f\n\nbackend r\n  mode http\n  balance uri whole\n  cookie r insert indirect nocache\n  http-request set-path /v2%[path] if { path_beg /v1 }\n  server o unix@/run/vamp/o_f.sock send-proxy weight 100 check cookie o\n  option forwardfor\n  server s1 10.0.0.1:8080 cookie s1 weight 90 check inter 500 cookie s1\n  server s2 [::1]:8080 weight 0 check\n";
        check(config, &p).unwrap();
    }
}
