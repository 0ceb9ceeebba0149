//! A minimal HTTP endpoint for the agent's health: `GET /health` answers 200 when ready
//! (HAProxy runs a configuration), 503 otherwise; `GET /status` always answers 200. Both carry
//! the [`AgentStatus`](super::AgentStatus) as JSON.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::AgentStatus;

/// At most this many connections are served at once; more wait in the listen queue.
pub(crate) const MAX_CONNECTIONS: usize = 32;

pub(crate) async fn serve(listener: TcpListener, status: watch::Receiver<AgentStatus>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut failures: u32 = 0;
    loop {
        let Ok(permit) = std::sync::Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => {
                failures = 0;
                stream
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                failures = (failures + 1).min(10);
                tracing::warn!(error = %e, "the health endpoint cannot accept connections");
                tokio::time::sleep(std::time::Duration::from_millis(10 << failures)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the request head (bounded in size and, as a whole, in time).
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&request);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let snapshot = status.borrow().clone();
            let (code, reason) = match path {
                "/health" if snapshot.ready => (200, "OK"),
                "/health" => (503, "Service Unavailable"),
                "/status" | "/" => (200, "OK"),
                _ => (404, "Not Found"),
            };
            let body = if code == 404 {
                "{\"error\":\"not found\"}".to_owned()
            } else {
                snapshot.to_json().to_string()
            };
            let response = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
