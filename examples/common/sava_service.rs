//! The demo service: a tiny HTTP server that answers every request with its version (like
//! Vamp's `sava` demo), and fails a given share of requests with a 500.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Serves forever on `listener`: `200 <version>`, except `fail_percent` of every 100
/// consecutive requests, spread evenly (2%: every 50th), which get `500 <version> failed`.
pub fn serve(listener: TcpListener, version: String, fail_percent: u32) {
    let counter = Arc::new(AtomicU64::new(0));
    let version = Arc::new(version);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let counter = Arc::clone(&counter);
        let version = Arc::clone(&version);
        std::thread::spawn(move || answer(conn, &version, fail_percent, &counter));
    }
}

fn answer(mut conn: TcpStream, version: &str, fail_percent: u32, counter: &AtomicU64) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            // Health checks connect and close without a request.
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 65_536 {
            return;
        }
    }
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let p = u64::from(fail_percent);
    let fail = (n + 1) * p / 100 > n * p / 100;
    let (status, body) = if fail {
        ("500 Internal Server Error", format!("{version} failed\n"))
    } else {
        ("200 OK", format!("{version}\n"))
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes());
}
