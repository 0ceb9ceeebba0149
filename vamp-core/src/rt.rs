//! Runtime-agnostic timers: [`sleep`] and [`timeout`] work under any executor (tokio,
//! async-std, `block_on`) because one background thread, started on first use, wakes them.
//! `vamp-core` uses them for retry backoff and in the conformance suites; they are not meant
//! for high-frequency timing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

struct Entry {
    at: Instant,
    seq: u64,
    fired: Arc<AtomicBool>,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Timer {
    heap: Mutex<(BinaryHeap<Reverse<Entry>>, u64)>,
    cv: Condvar,
}

fn timer() -> &'static Timer {
    static T: OnceLock<&'static Timer> = OnceLock::new();
    T.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            heap: Mutex::new((BinaryHeap::new(), 0)),
            cv: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("vamp-timer".into())
            .spawn(move || {
                let mut guard = t.heap.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let now = Instant::now();
                    while guard.0.peek().is_some_and(|Reverse(e)| e.at <= now) {
                        if let Some(Reverse(e)) = guard.0.pop() {
                            e.fired.store(true, Ordering::SeqCst);
                            e.waker.wake();
                        }
                    }
                    guard = match guard.0.peek().map(|Reverse(e)| e.at) {
                        Some(at) => {
                            t.cv.wait_timeout(guard, at.saturating_duration_since(now))
                                .unwrap_or_else(|e| e.into_inner())
                                .0
                        }
                        None => t.cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
                    };
                }
            })
            .expect("spawn the vamp-timer thread");
        t
    })
}

/// A future that completes after a duration.
#[derive(Debug)]
pub struct Sleep {
    at: Instant,
    fired: Arc<AtomicBool>,
    registered: bool,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired.load(Ordering::SeqCst) || Instant::now() >= self.at {
            return Poll::Ready(());
        }
        // Register (again) with the current waker; a stale registration only causes a spurious wake.
        let t = timer();
        let mut guard = t.heap.lock().unwrap_or_else(|e| e.into_inner());
        guard.1 += 1;
        let seq = guard.1;
        guard.0.push(Reverse(Entry {
            at: self.at,
            seq,
            fired: Arc::clone(&self.fired),
            waker: cx.waker().clone(),
        }));
        drop(guard);
        t.cv.notify_one();
        self.registered = true;
        Poll::Pending
    }
}

/// Completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        at: Instant::now() + duration,
        fired: Arc::new(AtomicBool::new(false)),
        registered: false,
    }
}

/// The future's output, or `None` if `duration` passed first.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    use futures_util::future::{Either, select};
    let future = std::pin::pin!(future);
    match select(future, sleep(duration)).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(((), _)) => None,
    }
}

/// Runs `pass` now and then every `period` after the previous pass ended, until `shutdown`
/// completes (checked between passes). The loops of [`crate::ops`] run on this.
pub async fn every<F, Fut>(period: Duration, shutdown: impl Future<Output = ()>, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    use futures_util::future::{Either, select};
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        pass().await;
        if let Either::Right(_) = select(std::pin::pin!(sleep(period)), shutdown.as_mut()).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_and_times_out() {
        let start = Instant::now();
        sleep(Duration::from_millis(30)).await;
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert_eq!(
            timeout(Duration::from_millis(10), std::future::pending::<()>()).await,
            None
        );
        assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Some(7));
    }

    #[test]
    fn works_without_a_runtime() {
        futures_util::FutureExt::now_or_never(sleep(Duration::ZERO)).unwrap();
        let mut many: Vec<_> = (0..100)
            .map(|i| sleep(Duration::from_millis(i % 7)))
            .collect();
        for s in &mut many {
            block_on(s);
        }
    }

    fn block_on<F: Future + Unpin>(f: F) -> F::Output {
        struct ThreadWaker(std::thread::Thread);
        impl std::task::Wake for ThreadWaker {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = f;
        loop {
            if let Poll::Ready(v) = Pin::new(&mut f).poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
