//! The service status machine (Vamp's `DeploymentService.Status`):
//!
//! ```text
//! Deployment/Initiated ──▶ Deployment/Updating ──▶ Deployment/Done
//! Undeployment/Initiated ──▶ Undeployment/Updating ──▶ Undeployment/Done (the service is removed)
//! any phase but Done older than the timeout ──▶ <intention>/Failed
//! ```
//!
//! Times are milliseconds since the Unix epoch, written as ISO-8601 in the model.

use crate::model::{Intention, Phase, ServiceStatus};
use crate::time::{format_epoch_millis, parse_millis};

/// Vamp's default timeout of a phase (`ready-for-deployment`, `ready-for-undeployment`).
pub const DEFAULT_TIMEOUT_MS: i64 = 600_000;

/// A status with `intention` in `phase` since `now`.
pub fn status(intention: Intention, phase: PhaseKind, now: i64) -> ServiceStatus {
    let since = format_epoch_millis(now);
    ServiceStatus {
        intention,
        since: since.clone(),
        phase: phase.at(since),
    }
}

/// A phase without its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    /// Just started.
    Initiated,
    /// Being applied.
    Updating,
    /// Done.
    Done,
}

impl PhaseKind {
    fn at(self, since: String) -> Phase {
        match self {
            Self::Initiated => Phase::Initiated { since },
            Self::Updating => Phase::Updating { since },
            Self::Done => Phase::Done { since },
        }
    }
}

/// The phase's kind; `None` when failed.
pub fn kind(phase: &Phase) -> Option<PhaseKind> {
    match phase {
        Phase::Initiated { .. } => Some(PhaseKind::Initiated),
        Phase::Updating { .. } => Some(PhaseKind::Updating),
        Phase::Done { .. } => Some(PhaseKind::Done),
        Phase::Failed { .. } => None,
    }
}

/// When the phase started (milliseconds), if the time is readable.
pub fn phase_since(phase: &Phase) -> Option<i64> {
    let since = match phase {
        Phase::Initiated { since }
        | Phase::Updating { since }
        | Phase::Done { since }
        | Phase::Failed { since, .. } => since,
    };
    parse_millis(since)
}

/// The same intention in another phase, since `now`; a status already in that phase is kept
/// as it is (its time included).
pub fn moved(current: &ServiceStatus, phase: PhaseKind, now: i64) -> ServiceStatus {
    if kind(&current.phase) == Some(phase) {
        return current.clone();
    }
    ServiceStatus {
        intention: current.intention,
        since: current.since.clone(),
        phase: phase.at(format_epoch_millis(now)),
    }
}

/// The same intention, failed with `notification` since `now`.
pub fn failed(current: &ServiceStatus, notification: String, now: i64) -> ServiceStatus {
    ServiceStatus {
        intention: current.intention,
        since: current.since.clone(),
        phase: Phase::Failed {
            since: format_epoch_millis(now),
            notification,
        },
    }
}

/// Whether a status that is neither Done nor Failed was set (its intention's `since`: a merge,
/// a scale, or a deployed service losing readiness) longer than `timeout_ms` before `now`. A
/// time that cannot be read counts as timed out (it cannot be waited on).
pub fn timed_out(status: &ServiceStatus, now: i64, timeout_ms: i64) -> bool {
    match kind(&status.phase) {
        Some(PhaseKind::Initiated | PhaseKind::Updating) => {
            parse_millis(&status.since).is_none_or(|since| now.saturating_sub(since) > timeout_ms)
        }
        _ => false,
    }
}

/// The same intention `Updating`: a fresh status (intention time `now`) when it was Done (work
/// starts again), else the phase moved.
pub fn updating(current: &ServiceStatus, now: i64) -> ServiceStatus {
    if kind(&current.phase) == Some(PhaseKind::Done) {
        status(current.intention, PhaseKind::Updating, now)
    } else {
        moved(current, PhaseKind::Updating, now)
    }
}

/// Deployed and done.
pub fn is_deployed(status: &ServiceStatus) -> bool {
    status.intention == Intention::Deployment && kind(&status.phase) == Some(PhaseKind::Done)
}

/// Undeployed and done: the service is to be removed.
pub fn is_undeployed(status: &ServiceStatus) -> bool {
    status.intention == Intention::Undeployment && kind(&status.phase) == Some(PhaseKind::Done)
}

/// Failed (skipped by synchronisation until a merge or scale resets it).
pub fn is_failed(status: &ServiceStatus) -> bool {
    matches!(status.phase, Phase::Failed { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn phases_move_and_time_out() {
        let s = status(Intention::Deployment, PhaseKind::Initiated, T0);
        assert_eq!(phase_since(&s.phase), Some(T0));
        assert!(!timed_out(&s, T0 + DEFAULT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS));
        assert!(timed_out(
            &s,
            T0 + DEFAULT_TIMEOUT_MS + 1,
            DEFAULT_TIMEOUT_MS
        ));
        let u = moved(&s, PhaseKind::Updating, T0 + 5);
        assert_eq!(phase_since(&u.phase), Some(T0 + 5));
        assert!(
            timed_out(&u, T0 + DEFAULT_TIMEOUT_MS + 1, DEFAULT_TIMEOUT_MS),
            "counted from the intention"
        );
        assert_eq!(
            moved(&u, PhaseKind::Updating, T0 + 9),
            u,
            "same phase keeps its time"
        );
        let d = moved(&u, PhaseKind::Done, T0 + 10);
        assert!(is_deployed(&d));
        let again = updating(&d, T0 + 20 * DEFAULT_TIMEOUT_MS);
        assert!(!timed_out(
            &again,
            T0 + 20 * DEFAULT_TIMEOUT_MS + 1,
            DEFAULT_TIMEOUT_MS
        ));
        assert!(!timed_out(
            &d,
            T0 + 10 * DEFAULT_TIMEOUT_MS,
            DEFAULT_TIMEOUT_MS
        ));
        let f = failed(&u, "x".into(), T0 + 11);
        assert!(is_failed(&f) && !timed_out(&f, i64::MAX, DEFAULT_TIMEOUT_MS));
        let gone = moved(
            &status(Intention::Undeployment, PhaseKind::Updating, T0),
            PhaseKind::Done,
            T0,
        );
        assert!(is_undeployed(&gone));
    }
}
