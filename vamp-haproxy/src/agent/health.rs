//! A minimal HTTP endpoint for the agent's health: `GET /health` answers 200 when ready
//! (HAProxy runs a configuration), 503 otherwise; `GET /status` always answers 200. Both carry
//! the [`AgentStatus`](super::AgentStatus) as JSON.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::AgentStatus;

pub(crate) async fn serve(listener: TcpListener, status: watch::Receiver<AgentStatus>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the request head (bounded).
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
                    .await
                {
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
