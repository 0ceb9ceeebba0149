//! A TCP proxy between a store handle and its server that injects the faults of
//! `vamp_core::conformance::kv::Faults`: it cuts every open connection at once or after a
//! number of bytes from the server, holds connections off (refusing new ones), and asks the
//! test to make the server forget its change history.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// What forgets the server's history (compaction, trimming).
pub type Forget = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

struct Shared {
    connections: Mutex<Vec<AbortHandle>>,
    /// Bytes from the server still allowed before every connection is cut; negative: disarmed.
    budget: AtomicI64,
    held: AtomicBool,
    /// While true, nothing is forwarded and nothing is closed: a half-open connection.
    stalled: tokio::sync::watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            connections: Mutex::default(),
            budget: AtomicI64::new(-1),
            held: AtomicBool::new(false),
            stalled: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Shared {
    async fn unstalled(&self) {
        let mut rx = self.stalled.subscribe();
        let _ = rx.wait_for(|s| !*s).await;
    }

    fn cut_all(&self) {
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// How many of `n` bytes may pass, and whether the connections are cut after them.
    fn take(&self, n: usize) -> (usize, bool) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let mut b = self.budget.load(Ordering::SeqCst);
        loop {
            if b < 0 {
                return (n as usize, false);
            }
            let (next, passed, cut) = if b > n {
                (b - n, n, false)
            } else {
                (-1, b, true)
            };
            match self
                .budget
                .compare_exchange(b, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return (passed as usize, cut),
                Err(now) => b = now,
            }
        }
    }
}

/// The proxy; dropping it closes everything.
pub struct FaultProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    forget: Forget,
}

impl FaultProxy {
    /// Proxies 127.0.0.1:`port` to `target` (`host:port`).
    pub async fn start(target: String, forget: Forget) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let held = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if held.held.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut connections = held.connections.lock().unwrap();
                connections.retain(|c| !c.is_finished());
                let shared = Arc::clone(&held);
                let target = target.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        relay(inbound, outbound, &shared).await;
                    }
                });
                connections.push(handle.abort_handle());
            }
        });
        Self {
            port,
            shared,
            task,
            forget,
        }
    }
}

async fn relay(inbound: TcpStream, outbound: TcpStream, shared: &Shared) {
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            shared.unstalled().await;
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            shared.unstalled().await;
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            shared.unstalled().await;
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            shared.unstalled().await;
            let (passed, cut) = shared.take(n);
            if client_write.write_all(&buf[..passed]).await.is_err() {
                return;
            }
            if cut {
                let _ = client_write.flush().await;
                shared.cut_all();
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

impl FaultProxy {
    /// Stops forwarding without closing anything (a half-open connection: requests go
    /// unanswered), until [`FaultProxy::unstall`].
    #[allow(dead_code)]
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Forwards again.
    #[allow(dead_code)]
    pub fn unstall(&self) {
        self.shared.stalled.send_replace(false);
    }
}

impl vamp_core::conformance::kv::Faults for FaultProxy {
    fn cut_after(&self, bytes: u64) {
        if bytes == 0 {
            self.shared.budget.store(-1, Ordering::SeqCst);
            self.shared.cut_all();
        } else {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.shared.budget.store(bytes, Ordering::SeqCst);
        }
    }

    fn disarm(&self) {
        self.shared.budget.store(-1, Ordering::SeqCst);
    }

    fn hold(&self) {
        self.shared.held.store(true, Ordering::SeqCst);
        self.shared.cut_all();
    }

    fn release(&self) {
        self.shared.held.store(false, Ordering::SeqCst);
    }

    fn forget_history(&self) -> BoxFuture<'_, ()> {
        (self.forget)()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.cut_all();
    }
}
