//! A minimal HTTP endpoint for the agent's health: `GET /health` answers 200 when ready
//! (HAProxy runs a configuration), 503 otherwise; `GET /status` always answers 200. Both carry
//! the [`AgentStatus`](super::AgentStatus) as JSON.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::AgentStatus;

/// At most this many connections are served at once; more wait in the listen queue.
pub(crate) const MAX_CONNECTIONS: usize = 32;

/// Where connections come from (a listener; a failing source in the tests).
pub(crate) trait Accept: Send {
    /// A connection.
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// The next connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Stream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

pub(crate) async fn serve(mut connections: impl Accept, status: watch::Receiver<AgentStatus>) {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut failures: u32 = 0;
    loop {
        let Ok(permit) = std::sync::Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let mut stream = match connections.accept().await {
            Ok(stream) => {
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
            #[cfg(test)]
            let _active = tests::Active::enter();
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static ACTIVE: AtomicUsize = AtomicUsize::new(0);
    static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

    /// Counts a connection being served.
    pub(super) struct Active;

    impl Active {
        pub(super) fn enter() -> Self {
            let now = ACTIVE.fetch_add(1, Ordering::SeqCst) + 1;
            HIGH_WATER.fetch_max(now, Ordering::SeqCst);
            Self
        }
    }

    impl Drop for Active {
        fn drop(&mut self) {
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Accept errors (out of file descriptors and the like) back off instead of spinning: in
    /// virtual time, twenty failed accepts are spread over the growing delays, not made at
    /// one instant.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off() {
        let (_tx, rx) = watch::channel(AgentStatus::default());
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Failing(std::sync::Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>);
        impl Accept for Failing {
            type Stream = tokio::io::DuplexStream;
            async fn accept(&mut self) -> std::io::Result<Self::Stream> {
                let n = {
                    let mut c = self.0.lock().unwrap();
                    c.push(tokio::time::Instant::now());
                    c.len()
                };
                if n >= 20 {
                    std::future::pending::<()>().await;
                }
                Err(std::io::Error::from_raw_os_error(24)) // EMFILE
            }
        }
        let server = tokio::spawn(serve(Failing(std::sync::Arc::clone(&calls)), rx));
        // Sleeping (not spinning) lets the paused clock advance to the server's next timer.
        while calls.lock().unwrap().len() < 20 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let calls = calls.lock().unwrap().clone();
        let waited = calls[19] - calls[0];
        // 20, 40, 80, … ms doubling to 10 s: about a minute of virtual time in all.
        assert!(
            waited >= std::time::Duration::from_secs(30),
            "accept errors were retried without backing off: {waited:?}"
        );
        assert!(calls.windows(2).all(|w| w[1] > w[0]), "every retry waited");
        server.abort();
    }

    /// 40 idle connections do not make the endpoint hold 40 sockets and tasks: at most
    /// [`MAX_CONNECTIONS`] are served at once, and a real request is still answered once the
    /// idle ones reach their deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(AgentStatus::default());
        let server = tokio::spawn(serve(listener, rx));
        let mut idle = Vec::new();
        for _ in 0..40 {
            idle.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        // Accepted in order: the request below is served after every idle connection was.
        let mut c = tokio::net::TcpStream::connect(address).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            c.read_to_string(&mut answer),
        )
        .await
        .expect("answered once idle connections time out")
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        let high = HIGH_WATER.load(Ordering::SeqCst);
        assert!(high <= MAX_CONNECTIONS, "{high} connections served at once");
        server.abort();
    }
}
