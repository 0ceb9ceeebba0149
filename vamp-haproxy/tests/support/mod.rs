//! Test support: a real `haproxy -c`, and gateways built from the DSL plus targets.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vamp_core::dsl::{AnyArtifact, read_str};
use vamp_core::model::{ArtifactKind, Gateway, Route, RouteTarget};

pub use vamp_haproxy::BASE_CONFIG;

/// Whether integration tests must run (a missing server is a failure).
pub fn integration_required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
        || std::env::var("VAMP_TEST_INTEGRATION").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The HAProxy binary, if installed; panics when integration tests are required and it is not.
pub fn haproxy() -> Option<PathBuf> {
    let bin = std::env::var("VAMP_HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
    match Command::new(&bin).arg("-v").output() {
        Ok(o) if o.status.success() => Some(PathBuf::from(bin)),
        _ => {
            assert!(
                !integration_required(),
                "HAProxy ('{bin}') is required: install Debian's haproxy package or set VAMP_HAPROXY_BIN"
            );
            eprintln!("SKIPPED: HAProxy not found; set VAMP_TEST_INTEGRATION=1 to require it");
            None
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `haproxy -c` on the base config followed by `generated`; `Ok(())` or HAProxy's output.
/// `None` when HAProxy is not installed and not required.
pub fn haproxy_check(generated: &str) -> Option<Result<(), String>> {
    let bin = haproxy()?;
    let dir = std::env::temp_dir().join(format!("vamp-haproxy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!(
        "check-{}.cfg",
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&file, format!("{BASE_CONFIG}\n{generated}")).unwrap();
    let out = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// Asserts that HAProxy accepts the configuration (when HAProxy is available).
pub fn assert_haproxy_accepts(generated: &str) {
    assert_agent_accepts(generated);
    if let Some(Err(e)) = haproxy_check(generated) {
        panic!("haproxy -c rejected the configuration:\n{e}\n--- configuration ---\n{generated}");
    }
}

/// A gateway from DSL text.
pub fn gateway(yaml: &str) -> Gateway {
    match read_str(yaml, Some(ArtifactKind::Gateway))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
        .remove(0)
    {
        AnyArtifact::Gateway(g) => g,
        other => panic!("{other:?}"),
    }
}

/// An internal target.
pub fn target(name: &str, host: Option<&str>, port: i64) -> RouteTarget {
    RouteTarget::Internal {
        name: name.into(),
        host: host.map(str::to_owned),
        port,
    }
}

/// Sets the targets of route `index`.
pub fn with_targets(mut g: Gateway, index: usize, targets: Vec<RouteTarget>) -> Gateway {
    match &mut g.routes[index] {
        Route::Default(d) => d.targets = targets,
        other => panic!("{other:?}"),
    }
    g
}

/// Vamp's normalisation (haproxy-cases.md §0).
pub fn normalize(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\n\s*\n\s*\n").unwrap();
    let collapsed = re.replace_all(text, "\n\n");
    let ws = regex::Regex::new(r"\s+").unwrap();
    collapsed
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| ws.replace_all(l, " ").into_owned())
        .collect()
}

/// A backend that answers every HTTP request with its name and the path it received.
pub struct HttpBackend {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl HttpBackend {
    pub fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || serve(&mut conn, name));
            }
        });
        Self { port, stop }
    }

    pub fn target(&self, name: &str) -> RouteTarget {
        RouteTarget::Internal {
            name: name.into(),
            host: None,
            port: i64::from(self.port),
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

pub fn serve(conn: &mut TcpStream, name: &str) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request per connection is enough for these tests; HAProxy health checks
        // (plain TCP connects) close without sending anything.
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let body = format!("{name} {path}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes());
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Which backend answered ("a", "b", ...).
pub fn who(r: &Response) -> String {
    assert_eq!(r.status, 200, "status {} body {:?}", r.status, r.body);
    r.body
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Asserts that the gateway agent's allow-list accepts what the generator wrote (the socket
/// directory is read off the configuration's first `unix@` path).
pub fn assert_agent_accepts(generated: &str) {
    let dir = generated
        .split("unix@")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|path| path.rsplit_once('/'))
        .map_or("/usr/local/vamp", |(dir, _)| dir);
    let policy = vamp_haproxy::allow::AllowPolicy::new(dir);
    if let Err(refusal) = vamp_haproxy::allow::check(generated, &policy) {
        panic!("the agent's allow-list refused generated configuration: {refusal}\n{generated}");
    }
}

/// Waits until HAProxy answers on `port` from backend `name`, failing after `within`. A
/// request that panics (refused, reset) is "not yet".
pub async fn until_served_within(port: u16, name: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = name.to_owned();
        let ok = tokio::task::spawn_blocking(move || who(&get(port, "/", &[])) == n)
            .await
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy never served {name} on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
