//! Live traffic through a real HAProxy on loopback: each test starts its own HTTP (or TCP)
//! backends and its own HAProxy with the rendered configuration, sends requests, and stops
//! everything. Skipped (visibly) without HAProxy unless integration tests are required.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;
use vamp_core::model::{Gateway, RouteTarget};
use vamp_haproxy::{RenderOptions, render};

/// A TCP backend that echoes what it reads.
fn tcp_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

static RUN: AtomicUsize = AtomicUsize::new(0);

/// A running HAProxy with a rendered configuration; stopped on drop.
struct HaProxy {
    child: Child,
    dir: PathBuf,
}

impl HaProxy {
    /// Starts HAProxy with `gateways`, or `None` when HAProxy is not installed (and not required).
    fn start(gateways: &[Gateway], vhost_port: Option<u16>) -> Option<Self> {
        let bin = haproxy()?;
        let dir = std::env::temp_dir().join(format!(
            "vl-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut opts = RenderOptions::default()
            .with_socket_dir(dir.to_str().unwrap())
            .with_bind_address("127.0.0.1");
        if let Some(p) = vhost_port {
            opts = opts.with_virtual_hosts_bind("127.0.0.1", p);
        }
        let generated = render(gateways, &opts).unwrap().render();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, format!("{BASE_CONFIG}\n{generated}")).unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let proxy = Self { child, dir };
        let ports: Vec<u16> = gateways
            .iter()
            .map(|g| g.port.number as u16)
            .chain(vhost_port)
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in ports {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(Instant::now() < deadline, "HAProxy did not listen on {p}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(proxy)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ab_gateway(port: u16, extra: &str, route_b: &str, a: &HttpBackend, b: &HttpBackend) -> Gateway {
    let g = gateway(&format!(
        "name: live/{port}\nport: {port}\n{extra}routes:\n  a: {{weight: 100%}}\n  b: {route_b}\n"
    ));
    let g = with_targets(g, 0, vec![a.target("a")]);
    with_targets(g, 1, vec![b.target("b")])
}

fn counts(port: u16, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for _ in 0..n {
        *c.entry(who(&get(port, "/", headers))).or_default() += 1;
    }
    c
}

#[test]
fn weights_split_traffic_90_10() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let port = free_port();
    let g = gateway(&format!(
        "name: live/{port}\nport: {port}\nroutes:\n  a: {{weight: 90%}}\n  b: {{weight: 10%}}\n"
    ));
    let g = with_targets(
        with_targets(g, 0, vec![a.target("a")]),
        1,
        vec![b.target("b")],
    );
    let Some(_proxy) = HaProxy::start(&[g], None) else {
        return;
    };
    let c = counts(port, 2000, &[]);
    let share_b = *c.get("b").unwrap_or(&0) as f64 / 2000.0;
    assert!(
        (share_b - 0.10).abs() <= 0.05,
        "b got {:.1}% of 2000 requests: {c:?}",
        share_b * 100.0
    );
    assert_eq!(c.values().sum::<usize>(), 2000);
}

#[test]
fn header_cookie_and_user_agent_conditions_route_only_matching_requests() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    type Headers = Vec<(&'static str, &'static str)>;
    let cases: [(&str, Headers, Headers); 3] = [
        (
            "has header X-Canary",
            vec![("X-Canary", "1")],
            vec![("X-Other", "1")],
        ),
        (
            "has cookie group",
            vec![("Cookie", "group=beta")],
            vec![("Cookie", "other=1")],
        ),
        (
            "user-agent = Chrome",
            vec![("User-Agent", "Mozilla/5.0 Chrome/120.0")],
            vec![("User-Agent", "Mozilla/5.0 Firefox/121.0")],
        ),
    ];
    for (condition, matching, other) in cases {
        let port = free_port();
        let g = ab_gateway(
            port,
            "",
            &format!("{{weight: 0%, condition: '{condition}'}}"),
            &a,
            &b,
        );
        let Some(_proxy) = HaProxy::start(&[g], None) else {
            return;
        };
        assert_eq!(
            counts(port, 50, &matching),
            HashMap::from([("b".to_owned(), 50)]),
            "{condition}: matching requests"
        );
        assert_eq!(
            counts(port, 50, &other),
            HashMap::from([("a".to_owned(), 50)]),
            "{condition}: other requests"
        );
    }
}

#[test]
fn condition_strength_50_diverts_about_half_of_matching_requests() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let port = free_port();
    let g = ab_gateway(
        port,
        "",
        "{weight: 0%, condition: 'has header X-Canary', condition_strength: 50%}",
        &a,
        &b,
    );
    let Some(_proxy) = HaProxy::start(&[g], None) else {
        return;
    };
    let c = counts(port, 1000, &[("X-Canary", "1")]);
    let share_b = *c.get("b").unwrap_or(&0) as f64 / 1000.0;
    assert!(
        (share_b - 0.5).abs() <= 0.07,
        "b got {:.1}% of matching requests: {c:?}",
        share_b * 100.0
    );
    assert_eq!(
        counts(port, 100, &[]),
        HashMap::from([("a".to_owned(), 100)]),
        "non-matching requests follow the weights"
    );
}

#[test]
fn sticky_route_keeps_a_client_on_one_route() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let port = free_port();
    let g = gateway(&format!(
        "name: live/{port}\nport: {port}\nsticky: route\nroutes:\n  a: {{weight: 50%}}\n  b: {{weight: 50%}}\n"
    ));
    let g = with_targets(
        with_targets(g, 0, vec![a.target("a")]),
        1,
        vec![b.target("b")],
    );
    let Some(_proxy) = HaProxy::start(&[g], None) else {
        return;
    };
    let mut routes_seen = std::collections::HashSet::new();
    for _client in 0..6 {
        let first = get(port, "/", &[]);
        let route = who(&first);
        routes_seen.insert(route.clone());
        let cookies: Vec<String> = first
            .headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.split(';').next().unwrap_or_default().to_owned())
            .collect();
        assert!(!cookies.is_empty(), "a sticky gateway sets a cookie");
        let cookie = cookies.join("; ");
        for i in 0..100 {
            assert_eq!(
                who(&get(port, "/", &[("Cookie", &cookie)])),
                route,
                "request {i} with the cookie stays on route {route}"
            );
        }
    }
    assert_eq!(
        routes_seen.len(),
        2,
        "new clients still reach both routes: {routes_seen:?}"
    );
}

#[test]
fn path_rewrite_reaches_the_backend_rewritten() {
    let a = HttpBackend::start("a");
    let port = free_port();
    let g = gateway(&format!(
        "name: live/{port}\nport: {port}\nroutes:\n  a:\n    weight: 100%\n    rewrites:\n      - path: '/v2%[path] if {{ path_beg /api }}'\n"
    ));
    let g = with_targets(g, 0, vec![a.target("a")]);
    let Some(_proxy) = HaProxy::start(&[g], None) else {
        return;
    };
    assert_eq!(get(port, "/api/items", &[]).body.trim(), "a /v2/api/items");
    assert_eq!(
        get(port, "/other", &[]).body.trim(),
        "a /other",
        "the condition limits the rewrite"
    );
}

#[test]
fn tcp_gateway_forwards_bytes() {
    let echo = tcp_echo();
    let port = free_port();
    let g = gateway(&format!(
        "name: live/{port}\nport: {port}/tcp\nroutes:\n  echo: {{weight: 100%}}\n"
    ));
    let g = with_targets(
        g,
        0,
        vec![RouteTarget::Internal {
            name: "echo".into(),
            host: None,
            port: i64::from(echo),
        }],
    );
    let Some(_proxy) = HaProxy::start(&[g], None) else {
        return;
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    s.write_all(&payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(
        back, payload,
        "the bytes come back unchanged through HAProxy"
    );
}

#[test]
fn virtual_host_routes_by_host() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let (pa, pb, vhosts) = (free_port(), free_port(), free_port());
    let ga = with_targets(
        gateway(&format!(
            "name: live/{pa}\nport: {pa}\nvirtual_hosts: [a.example]\nroutes:\n  a: {{weight: 100%}}\n"
        )),
        0,
        vec![a.target("a")],
    );
    let gb = with_targets(
        gateway(&format!(
            "name: live/{pb}\nport: {pb}\nvirtual_hosts: [b.example, beta.example]\nroutes:\n  b: {{weight: 100%}}\n"
        )),
        0,
        vec![b.target("b")],
    );
    let Some(_proxy) = HaProxy::start(&[ga, gb], Some(vhosts)) else {
        return;
    };
    assert_eq!(who(&get(vhosts, "/", &[("Host", "a.example")])), "a");
    assert_eq!(who(&get(vhosts, "/", &[("Host", "b.example")])), "b");
    assert_eq!(
        who(&get(vhosts, "/", &[("Host", "BETA.example")])),
        "b",
        "host names match case-insensitively"
    );
    assert_eq!(
        get(vhosts, "/", &[("Host", "unknown.example")]).status,
        503,
        "no virtual host, no backend"
    );
}
