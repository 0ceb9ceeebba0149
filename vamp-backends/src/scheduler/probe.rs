//! Health checks run by the scheduler itself (local processes, Docker containers).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vamp_core::model::HealthCheck;

/// One health check: `Ok(())` when it passes.
pub(crate) async fn check(
    health: &HealthCheck,
    host: &str,
    port: u16,
    agent: &str,
) -> Result<(), String> {
    let timeout = Duration::from_secs(health.timeout.clamp(1, 300) as u64);
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        if !matches!(
            health.protocol.to_ascii_uppercase().as_str(),
            "HTTP" | "HTTPS" | ""
        ) {
            return Ok(());
        }
        if health.path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!("the path {:?} is not a request path", health.path));
        }
        let path = if health.path.starts_with('/') {
            health.path.clone()
        } else {
            format!("/{}", health.path)
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nUser-Agent: {agent}\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
        let status: u16 = String::from_utf8_lossy(&head[..n])
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("not an HTTP answer")?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
