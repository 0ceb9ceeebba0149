//! The server's loops under supervision: each pass of a loop (reconcile, canary, SLA, pulse,
//! workflows) runs as its own task, so a panic in one pass is caught, recorded and followed by
//! another pass after a backoff (1 s doubling to 30 s while it keeps panicking), and a pass's
//! errors (the loop's own, and those it reports per artifact) are logged and recorded, never
//! dropped. [`Loops`] is what `/api/v1/info` shows: every loop's state, passes, restarts and
//! last error; the server is degraded while one is failing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

/// The longest wait after a panicking pass.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a loop is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoopState {
    /// Passes that finished (with or without errors).
    pub passes: u64,
    /// Passes that panicked, each followed by a new pass after a backoff.
    pub restarts: u64,
    /// Passes that returned an error.
    pub failures: u64,
    /// Whether the last pass failed (panicked or returned an error).
    pub failing: bool,
    /// The last pass's error or panic, if it failed; otherwise the last one seen.
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<SystemTime>,
    /// Errors the last pass reported for single artifacts (the loop went on with the rest).
    pub artifact_errors: Vec<String>,
    /// Whether the loop has stopped (the server is stopping).
    pub stopped: bool,
    /// Whether the loop waits because this replica is not the leader (its passes are the
    /// leader's to run).
    pub standby: bool,
    /// How long the last finished pass took.
    pub last_pass: Option<Duration>,
    /// The longest pass so far.
    pub longest_pass: Option<Duration>,
}

impl LoopState {
    fn new() -> Self {
        Self {
            passes: 0,
            restarts: 0,
            failures: 0,
            failing: false,
            last_error: None,
            last_error_at: None,
            artifact_errors: Vec::new(),
            stopped: false,
            standby: false,
            last_pass: None,
            longest_pass: None,
        }
    }

    /// The state as `/api/v1/info` shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let status = if self.stopped {
            "stopped"
        } else if self.standby {
            "standby"
        } else if self.failing {
            "failing"
        } else {
            "ok"
        };
        serde_json::json!({
            "status": status,
            "passes": self.passes,
            "restarts": self.restarts,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.map(|t| {
                vamp_core::time::format_epoch_millis(
                    i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX),
                )
            }),
            "artifact_errors": self.artifact_errors,
            "last_pass_ms": self.last_pass.map(|d| d.as_secs_f64() * 1000.0),
            "longest_pass_ms": self.longest_pass.map(|d| d.as_secs_f64() * 1000.0),
        })
    }
}

/// The supervised loops of a server, by name.
#[derive(Debug, Default)]
pub struct Loops {
    map: parking_lot::Mutex<BTreeMap<&'static str, LoopState>>,
}

impl Loops {
    /// A loop's state.
    pub fn get(&self, name: &str) -> Option<LoopState> {
        self.map.lock().get(name).cloned()
    }

    /// Every loop's state.
    pub fn all(&self) -> BTreeMap<&'static str, LoopState> {
        self.map.lock().clone()
    }

    /// Whether a loop is failing.
    pub fn degraded(&self) -> bool {
        self.map.lock().values().any(|l| l.failing && !l.stopped)
    }

    /// Records that the long-running task `name` (one that is not made of passes, such as the
    /// in-process gateway agent) runs.
    pub fn running(&self, name: &'static str) {
        self.update(name, |_| {});
    }

    /// Records that the long-running task `name` ended: with `error`, it is failing (and the
    /// server degraded); without, it stopped.
    pub fn ended(&self, name: &'static str, error: Option<String>) {
        self.update(name, |l| match error {
            Some(e) => {
                l.failing = true;
                l.failures += 1;
                l.last_error = Some(e);
                l.last_error_at = Some(SystemTime::now());
            }
            None => l.stopped = true,
        });
    }

    fn update(&self, name: &'static str, f: impl FnOnce(&mut LoopState)) {
        f(self.map.lock().entry(name).or_insert_with(LoopState::new));
    }
}

/// What a pass reports: errors for single artifacts (the pass went on), or the error that
/// ended it.
pub type PassResult = Result<Vec<String>, String>;

/// The shortest time between a pass and the next one that `wake` brought forward.
pub const MIN_WAKE_GAP: Duration = Duration::from_millis(50);

/// Runs `pass` every `period` until `stop` turns true, each pass as its own task: a panic is
/// recorded as a restart and followed by a new pass after a backoff; errors are logged and
/// recorded in `loops` under `name`. While `active()` is false (this replica is not the
/// leader) no pass runs and the loop is on standby. A notification on `wake` (a write that
/// changed what the loop acts on) brings the next pass forward: it starts after at least
/// [`MIN_WAKE_GAP`], and at least as long as the last pass took, so that passes woken
/// without pause still leave the process most of its time.
#[allow(clippy::too_many_arguments)]
pub async fn supervise<F, Fut>(
    name: &'static str,
    loops: Arc<Loops>,
    period: Duration,
    wake: Option<Arc<tokio::sync::Notify>>,
    mut stop: watch::Receiver<bool>,
    active: impl Fn() -> bool,
    pass: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = PassResult> + Send + 'static,
{
    loops.update(name, |_| {});
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            break;
        }
        let standby = !active();
        loops.update(name, |l| l.standby = standby);
        if standby {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = tokio::spawn(pass()).await;
        let took = started.elapsed();
        let gap = MIN_WAKE_GAP.max(took);
        if outcome.is_ok() {
            loops.update(name, |l| {
                l.last_pass = Some(took);
                l.longest_pass = Some(l.longest_pass.map_or(took, |m| m.max(took)));
            });
        }
        let wait = match outcome {
            Ok(Ok(artifact_errors)) => {
                for e in &artifact_errors {
                    tracing::warn!(r#loop = name, error = %e, "an artifact failed in a pass");
                }
                loops.update(name, |l| {
                    l.passes += 1;
                    l.failing = false;
                    if let Some(e) = artifact_errors.first() {
                        l.last_error = Some(e.clone());
                        l.last_error_at = Some(SystemTime::now());
                    }
                    l.artifact_errors = artifact_errors;
                });
                backoff = Duration::from_secs(1);
                period
            }
            Ok(Err(e)) => {
                tracing::warn!(r#loop = name, error = %e, "a pass failed; retried next period");
                loops.update(name, |l| {
                    l.passes += 1;
                    l.failures += 1;
                    l.failing = true;
                    l.last_error = Some(e);
                    l.last_error_at = Some(SystemTime::now());
                });
                period
            }
            Err(join) => {
                let what = if join.is_panic() {
                    let payload = join.into_panic();
                    payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned())
                } else {
                    "the pass was cancelled".to_owned()
                };
                tracing::error!(r#loop = name, error = %what, ?backoff, "a pass panicked; restarting after a backoff");
                loops.update(name, |l| {
                    l.restarts += 1;
                    l.failing = true;
                    l.last_error = Some(format!("panicked: {what}"));
                    l.last_error_at = Some(SystemTime::now());
                });
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        let woken = async {
            match &wake {
                Some(w) => {
                    w.notified().await;
                    tokio::time::sleep(gap.min(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = woken => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    loops.update(name, |l| l.stopped = true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_pass_is_restarted_and_recorded_and_errors_are_kept() {
        let loops = Arc::new(Loops::default());
        let (stop, stopped) = watch::channel(false);
        let calls = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn({
            let loops = Arc::clone(&loops);
            let calls = Arc::clone(&calls);
            async move {
                supervise(
                    "test",
                    loops,
                    Duration::from_millis(1),
                    None,
                    stopped,
                    || true,
                    move || {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            match n {
                                0 => panic!("pass zero"),
                                1 => Err("store away".to_owned()),
                                2 => Ok(vec!["workflow 'w': breed 'b' not found".to_owned()]),
                                _ => Ok(Vec::new()),
                            }
                        }
                    },
                )
                .await;
            }
        });
        // The panic's backoff is 1 s; wait on the state, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let l = loops.get("test").unwrap_or_else(LoopState::new);
            if l.passes >= 3 {
                // The panic, the failed pass, the pass with an artifact's error, a clean one.
                assert_eq!((l.restarts, l.failures), (1, 1), "{l:?}");
                assert!(
                    l.last_error
                        .as_deref()
                        .unwrap()
                        .contains("breed 'b' not found"),
                    "{l:?}"
                );
                assert!(
                    l.artifact_errors.is_empty() && !l.failing && !loops.degraded(),
                    "{l:?}"
                );
                // Passes that finished are timed; the longest is at least the last.
                let (last, longest) = (l.last_pass.unwrap(), l.longest_pass.unwrap());
                assert!(longest >= last, "{l:?}");
                assert!(l.to_json()["last_pass_ms"].as_f64().is_some(), "{l:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{l:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(loops.get("test").unwrap().stopped);
    }
}
