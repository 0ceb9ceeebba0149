//! The programs' `check-health` subcommand: one HTTP/1.0 request to a running server, for a
//! container's or a service manager's health check.

use std::io::{Read, Write};
use std::time::Duration;

/// Sends `GET <path>` to `addr` (`host:port`) and waits at most 3 s to connect and 3 s for the
/// answer. `Ok` when it is a 2xx (a liveness probe answers 204); otherwise what to report: the answer's status line, or why
/// there was none.
pub fn probe(addr: &str, path: &str) -> Result<(), String> {
    let answer = (|| -> std::io::Result<String> {
        let target: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| std::io::Error::other("the address takes HOST:PORT"))?;
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n")
                .as_bytes(),
        )?;
        let mut out = String::new();
        // An answer is at most a small JSON document; a larger one is not a health answer.
        s.take(1 << 20).read_to_string(&mut out)?;
        Ok(out)
    })();
    match answer {
        Ok(a)
            if a.split_whitespace()
                .nth(1)
                .is_some_and(|s| s.len() == 3 && s.starts_with('2')) =>
        {
            Ok(())
        }
        Ok(a) => Err(format!("unhealthy: {}", a.lines().next().unwrap_or(""))),
        Err(e) => Err(format!("no answer on {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-answer server on loopback; returns its address.
    fn answering(answer: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(answer.as_bytes());
        });
        addr
    }

    #[test]
    fn a_200_is_healthy_and_anything_else_is_reported() {
        assert_eq!(
            probe(&answering("HTTP/1.1 200 OK\r\n\r\n{}"), "/health"),
            Ok(())
        );
        assert_eq!(
            probe(
                &answering("HTTP/1.1 503 Service Unavailable\r\n\r\n"),
                "/health"
            ),
            Err("unhealthy: HTTP/1.1 503 Service Unavailable".into())
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(
            probe(&closed, "/health")
                .unwrap_err()
                .starts_with("no answer on")
        );
        assert!(
            probe("not an address", "/")
                .unwrap_err()
                .contains("HOST:PORT")
        );
    }
}
