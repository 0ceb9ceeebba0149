//! Canary releases that decide for themselves ([`CanaryPolicy`], an extension of Vamp): a
//! pure planner ([`decide`]: the policy, what was measured and the time in, the new status,
//! the weight changes and an event with the figures out) and a runtime-agnostic loop
//! ([`CanaryController`]) that measures, decides and applies.
//!
//! # Checks
//!
//! A check runs once per `interval` while the release progresses, over the traffic since the
//! current step began or the previous check (whichever is later). It needs `minimum_requests`
//! on the canary route (and on the stable route when a relative gate is set); with fewer it
//! **waits** (counts neither as a pass nor as a failure), so a quiet interval neither
//! promotes nor kills a canary. Then every gate is judged with a one-sided test at the
//! policy's confidence, so that noise does not fail a healthy canary:
//!
//! * absolute error rate `q`: the canary's 5xx share `p̂` fails when
//!   `(p̂ − q) / √(q(1−q)/n)` exceeds the normal quantile `z` (with `q = 0`, any error fails);
//! * absolute response time (`percentile P`, `maximum t`): under "no worse", at most
//!   `1 − P/100` of the canary's requests are slower than `t`; the share `k/n` slower fails
//!   the same binomial test;
//! * relative error rate (margin `m`): fails when
//!   `(p̂c − p̂s − m) / √(p̂c(1−p̂c)/nc + p̂s(1−p̂s)/ns)` exceeds `z` (a zero variance fails only
//!   when the difference is above the margin);
//! * relative response time (`percentile P`, margin `m`): the threshold is the stable route's
//!   `P`th percentile × (1 + m), then as the absolute one.
//!
//! A check that passes every gate advances to the next step; after the last step, or when
//! the next one is 100% (the stable route would have no traffic left to compare with), it
//! promotes: the canary gets all traffic (a last step below 100% is a maximum, as in
//! Flagger);
//! one that fails counts; `failures` failed checks in a row roll back (the canary's weight
//! goes to 0). Every decision is published as an event tagged `canary-policies:<name>`,
//! `canary:<verdict>` and `gateways:<gateway>` (type `canary`), with the figures it was based
//! on as its value.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::kv::Versioned;
use crate::metrics::{DynEventStore, DynMetricsStore};
use crate::model::*;
use crate::node::{Map, Node};
use crate::ops::controller::{Clock, SystemClock};
use crate::persistence::{DynPersistenceStore, PersistenceExt};

/// What one route did over a check's window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteSample {
    /// Requests.
    pub requests: u64,
    /// Of which answered with 5xx.
    pub errors: u64,
    /// Their total times (ms); empty when the metrics store keeps none.
    pub times_ms: Vec<u64>,
}

/// What a check measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Check {
    /// The stable route.
    pub stable: RouteSample,
    /// The canary route.
    pub canary: RouteSample,
}

/// What to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Give the canary route this weight (percent) and the stable route the rest.
    SetWeight(u8),
    /// Turn the gateway's cookie stickiness on or off.
    SetSticky(bool),
    /// Slice the stable route's service out of its deployment.
    SliceStable,
}

/// What a decision was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do now (paused, over, or no check due).
    Idle,
    /// The release began at its first step.
    Started,
    /// Too few requests (or no response times) to judge: no step, no failure.
    Waiting,
    /// Every gate passed: the next step.
    Advanced,
    /// A gate failed, fewer than `failures` times in a row.
    Held,
    /// `failures` failed checks in a row: the stable route has all traffic again.
    RolledBack,
    /// The last step passed.
    Promoted,
    /// Aborted through the API: the stable route has all traffic again.
    Aborted,
}

impl Verdict {
    /// The word in the event's `canary:<verdict>` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Started => "started",
            Self::Waiting => "waiting",
            Self::Advanced => "advanced",
            Self::Held => "held",
            Self::RolledBack => "rolled_back",
            Self::Promoted => "promoted",
            Self::Aborted => "aborted",
        }
    }
}

/// One gate's judgement.
#[derive(Clone, Debug, PartialEq)]
pub struct GateResult {
    /// The gate (`error_rate`, `response_time`, `relative.error_rate`, …).
    pub gate: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// The figures, in words.
    pub detail: String,
}

/// What [`decide`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// The status to persist.
    pub status: CanaryStatus,
    /// The changes to apply, in order.
    pub actions: Vec<Action>,
    /// The gates' judgements (empty without a check).
    pub gates: Vec<GateResult>,
}

/// The standard normal quantile `Φ⁻¹(p)` for `0 < p < 1` (Acklam's rational approximation,
/// relative error below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// The `p`th percentile (nearest rank) of `times`.
fn percentile(times: &[u64], p: f64) -> Option<f64> {
    if times.is_empty() {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1] as f64)
}

/// Whether `k` of `n` above a share `q` is significantly more than `q` at quantile `z`.
fn exceeds(k: u64, n: u64, q: f64, z: f64) -> (bool, f64) {
    let share = k as f64 / n as f64;
    if q <= 0.0 {
        return (k > 0, share);
    }
    if q >= 1.0 {
        return (false, share);
    }
    let stat = (share - q) / (q * (1.0 - q) / n as f64).sqrt();
    (stat > z, share)
}

fn rate(s: &RouteSample) -> f64 {
    if s.requests == 0 {
        0.0
    } else {
        s.errors as f64 / s.requests as f64
    }
}

/// Judges every gate; an error when the check cannot judge (too few requests, no times).
/// With `stable_idle` (the canary has all traffic) the relative gates are not judged.
fn judge(
    policy: &CanaryPolicy,
    check: &Check,
    stable_idle: bool,
) -> std::result::Result<Vec<GateResult>, String> {
    let mut gates = policy.gates.clone();
    if stable_idle {
        gates.relative_error_rate = None;
        gates.relative_response_time = None;
    }
    let g = &gates;
    let min = policy.minimum_requests;
    let (c, s) = (&check.canary, &check.stable);
    let relative = g.relative_error_rate.is_some() || g.relative_response_time.is_some();
    if c.requests < min || (relative && s.requests < min) {
        return Err(format!(
            "too few requests to judge: canary {}, stable {} (at least {min} each)",
            c.requests, s.requests
        ));
    }
    let latency = g.max_response_time.is_some() || g.relative_response_time.is_some();
    if latency
        && (c.times_ms.is_empty() || (g.relative_response_time.is_some() && s.times_ms.is_empty()))
    {
        return Err("the metrics store reports no response times to judge latency by".into());
    }
    let z = normal_quantile(g.confidence);
    let mut out = Vec::new();
    let pc = rate(c);
    if let Some(q) = g.max_error_rate {
        let (fail, share) = exceeds(c.errors, c.requests, q, z);
        out.push(GateResult {
            gate: "error_rate",
            passed: !fail,
            detail: format!(
                "canary error rate {:.2}% ({} of {}) against at most {:.2}%",
                share * 100.0,
                c.errors,
                c.requests,
                q * 100.0
            ),
        });
    }
    if let Some((p, max)) = g.max_response_time {
        let k = c.times_ms.iter().filter(|t| **t as f64 > max).count() as u64;
        let n = c.times_ms.len() as u64;
        let (fail, share) = exceeds(k, n, 1.0 - p / 100.0, z);
        out.push(GateResult {
            gate: "response_time",
            passed: !fail,
            detail: format!(
                "canary p{p} {} ms; {:.1}% of its requests slower than {max} ms (at most {:.1}%)",
                percentile(&c.times_ms, p).unwrap_or(0.0),
                share * 100.0,
                100.0 - p
            ),
        });
    }
    if let Some(margin) = g.relative_error_rate {
        let ps = rate(s);
        let diff = pc - ps - margin;
        let se = (pc * (1.0 - pc) / c.requests as f64 + ps * (1.0 - ps) / s.requests as f64).sqrt();
        let fail = if se == 0.0 { diff > 0.0 } else { diff / se > z };
        out.push(GateResult {
            gate: "relative.error_rate",
            passed: !fail,
            detail: format!(
                "canary error rate {:.2}% against stable {:.2}% + {:.2}%",
                pc * 100.0,
                ps * 100.0,
                margin * 100.0
            ),
        });
    }
    if let Some((p, margin)) = g.relative_response_time {
        let stable_p = percentile(&s.times_ms, p).unwrap_or(0.0);
        let threshold = stable_p * (1.0 + margin);
        let k = c.times_ms.iter().filter(|t| **t as f64 > threshold).count() as u64;
        let n = c.times_ms.len() as u64;
        let (fail, share) = exceeds(k, n, 1.0 - p / 100.0, z);
        out.push(GateResult {
            gate: "relative.response_time",
            passed: !fail,
            detail: format!(
                "canary p{p} {} ms against stable {stable_p} ms + {:.0}%: {:.1}% of the canary's requests slower than {threshold:.0} ms (at most {:.1}%)",
                percentile(&c.times_ms, p).unwrap_or(0.0),
                margin * 100.0,
                share * 100.0,
                100.0 - p
            ),
        });
    }
    Ok(out)
}

/// Whether a check is due at `now` (the loop measures only then).
pub fn check_due(policy: &CanaryPolicy, now: i64) -> bool {
    let s = &policy.status;
    s.phase == CanaryPhase::Progressing
        && s.step.is_some()
        && now - window_start(s).unwrap_or(now) >= policy.interval_ms
}

fn window_start(s: &CanaryStatus) -> Option<i64> {
    match (s.since_ms, s.last_check_ms) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The window a check at `now` measures.
pub fn check_window(policy: &CanaryPolicy, now: i64) -> Duration {
    let start = window_start(&policy.status).unwrap_or(now - policy.interval_ms);
    Duration::from_millis(u64::try_from(now - start).unwrap_or(0))
}

/// Decides what the release does at `now`, given what a due check measured (`None` when no
/// check ran).
pub fn decide(policy: &CanaryPolicy, check: Option<&Check>, now: i64) -> Decision {
    let mut status = policy.status.clone();
    let idle = |status: CanaryStatus| Decision {
        verdict: Verdict::Idle,
        status,
        actions: Vec::new(),
        gates: Vec::new(),
    };
    match status.phase {
        CanaryPhase::Paused | CanaryPhase::Promoted | CanaryPhase::RolledBack => {
            return idle(status);
        }
        CanaryPhase::Aborted => {
            // Aborted through the API: the stable route gets everything back, once.
            if status.step.is_none() {
                return idle(status);
            }
            status.step = None;
            status.reason = Some("aborted through the API".into());
            let mut actions = vec![Action::SetWeight(0)];
            if policy.sticky {
                actions.push(Action::SetSticky(false));
            }
            return Decision {
                verdict: Verdict::Aborted,
                status,
                actions,
                gates: Vec::new(),
            };
        }
        CanaryPhase::Pending => {
            status.phase = CanaryPhase::Progressing;
            status.step = Some(0);
            status.failed_checks = 0;
            status.since_ms = Some(now);
            status.last_check_ms = None;
            status.reason = Some(format!("started at {}%", policy.steps[0]));
            let mut actions = Vec::new();
            if policy.sticky {
                actions.push(Action::SetSticky(true));
            }
            actions.push(Action::SetWeight(policy.steps[0]));
            return Decision {
                verdict: Verdict::Started,
                status,
                actions,
                gates: Vec::new(),
            };
        }
        CanaryPhase::Progressing => {}
    }
    let (Some(step), Some(check)) = (status.step, check) else {
        return idle(status);
    };
    if !check_due(policy, now) {
        return idle(status);
    }
    let gates = match judge(policy, check, policy.steps[step] >= 100) {
        Err(why) => {
            // Waiting accumulates traffic: the window keeps its start.
            status.reason = Some(why);
            return Decision {
                verdict: Verdict::Waiting,
                status,
                actions: Vec::new(),
                gates: Vec::new(),
            };
        }
        Ok(g) => g,
    };
    status.last_check_ms = Some(now);
    let failed: Vec<&GateResult> = gates.iter().filter(|g| !g.passed).collect();
    if !failed.is_empty() {
        status.failed_checks = status.failed_checks.saturating_add(1);
        let why = failed
            .iter()
            .map(|g| g.detail.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if status.failed_checks >= policy.failures {
            status.phase = CanaryPhase::RolledBack;
            status.step = None;
            status.reason = Some(format!(
                "rolled back after {} failed checks: {why}",
                status.failed_checks
            ));
            let mut actions = vec![Action::SetWeight(0)];
            if policy.sticky {
                actions.push(Action::SetSticky(false));
            }
            return Decision {
                verdict: Verdict::RolledBack,
                status,
                actions,
                gates,
            };
        }
        status.reason = Some(format!(
            "check failed ({} of {}): {why}",
            status.failed_checks, policy.failures
        ));
        return Decision {
            verdict: Verdict::Held,
            status,
            actions: Vec::new(),
            gates,
        };
    }
    status.failed_checks = 0;
    let passed = gates
        .iter()
        .map(|g| g.detail.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    // The last step, or a next step of 100% (where the stable route has no traffic to
    // compare with): promotion, the canary gets all traffic.
    if step + 1 >= policy.steps.len() || policy.steps[step + 1] >= 100 {
        status.phase = CanaryPhase::Promoted;
        status.step = Some(policy.steps.len() - 1);
        status.since_ms = Some(now);
        status.reason = Some(format!("promoted after {}%: {passed}", policy.steps[step]));
        let mut actions = vec![Action::SetWeight(100)];
        if policy.sticky {
            actions.push(Action::SetSticky(false));
        }
        if policy.slice_stable {
            actions.push(Action::SliceStable);
        }
        return Decision {
            verdict: Verdict::Promoted,
            status,
            actions,
            gates,
        };
    }
    let next = policy.steps[step + 1];
    status.step = Some(step + 1);
    status.since_ms = Some(now);
    status.reason = Some(format!("advanced to {next}%: {passed}"));
    Decision {
        verdict: Verdict::Advanced,
        status,
        actions: vec![Action::SetWeight(next)],
        gates,
    }
}

/// The event a decision publishes: tags `canary-policies:<name>`, `canary:<verdict>`,
/// `gateways:<gateway>`; the figures as its value.
pub fn decision_event(policy: &CanaryPolicy, decision: &Decision, check: Option<&Check>) -> Event {
    let mut value = Map::new();
    value.insert(
        "verdict".into(),
        Node::Str(decision.verdict.as_str().into()),
    );
    value.insert(
        "phase".into(),
        Node::Str(decision.status.phase.as_str().into()),
    );
    if let Some(step) = decision.status.step {
        value.insert("weight".into(), Node::Int(i64::from(policy.steps[step])));
    }
    if let Some(r) = &decision.status.reason {
        value.insert("reason".into(), Node::Str(r.clone()));
    }
    if let Some(c) = check {
        for (name, s) in [("stable", &c.stable), ("canary", &c.canary)] {
            let mut m = Map::new();
            m.insert("requests".into(), Node::Int(s.requests as i64));
            m.insert("errors".into(), Node::Int(s.errors as i64));
            m.insert("error_rate".into(), Node::Float(rate(s)));
            if let Some(p) = percentile(&s.times_ms, 95.0) {
                m.insert("p95_ms".into(), Node::Float(p));
            }
            value.insert(name.into(), Node::Map(m));
        }
    }
    if !decision.gates.is_empty() {
        value.insert(
            "gates".into(),
            Node::Seq(
                decision
                    .gates
                    .iter()
                    .map(|g| {
                        let mut m = Map::new();
                        m.insert("gate".into(), Node::Str(g.gate.into()));
                        m.insert("passed".into(), Node::Bool(g.passed));
                        m.insert("detail".into(), Node::Str(g.detail.clone()));
                        Node::Map(m)
                    })
                    .collect(),
            ),
        );
    }
    let mut e = Event::new(
        vec![
            format!("canary-policies:{}", policy.name),
            format!("canary:{}", decision.verdict.as_str()),
            format!("gateways:{}", policy.gateway),
        ],
        Node::Map(value),
        "canary",
    );
    e.version = Some("1.0".into());
    e
}

/// Sets the canary route's weight to `canary` and the stable route's to the rest, leaving
/// the other routes as they are.
///
/// # Errors
/// [`Error::Invalid`] when a route is missing or the other routes leave too little.
pub fn set_weights(gateway: &mut Gateway, policy: &CanaryPolicy, canary: u8) -> Result<()> {
    let invalid = |reason: String| Error::Invalid {
        what: "canary policy",
        value: policy.name.clone(),
        reason,
    };
    let path = |r: &Route| r.path().normalized();
    let (stable_path, canary_path) = (
        GatewayPath::new(policy.stable.as_str()).normalized(),
        GatewayPath::new(policy.canary.as_str()).normalized(),
    );
    let others: u32 = gateway
        .routes
        .iter()
        .filter(|r| path(r) != stable_path && path(r) != canary_path)
        .filter_map(|r| match r {
            Route::Default(d) => d.weight.map(|w| u32::from(w.0)),
            Route::Reference { .. } => None,
        })
        .sum();
    let stable = 100u32
        .checked_sub(others + u32::from(canary))
        .ok_or_else(|| invalid(format!("the gateway's other routes take {others}%")))?;
    let mut found = (false, false);
    for r in &mut gateway.routes {
        let p = path(r);
        let Route::Default(d) = r else { continue };
        if p == stable_path {
            d.weight = Some(crate::units::Percentage(stable as u8));
            found.0 = true;
        } else if p == canary_path {
            d.weight = Some(crate::units::Percentage(canary));
            found.1 = true;
        }
    }
    match found {
        (true, true) => Ok(()),
        (false, _) => Err(invalid(format!(
            "gateway '{}' has no route '{}'",
            gateway.name, policy.stable
        ))),
        (_, false) => Err(invalid(format!(
            "gateway '{}' has no route '{}'",
            gateway.name, policy.canary
        ))),
    }
}

/// The loop: for every stored canary policy, measures when a check is due, decides, applies
/// the weight changes to the gateway (a deployment's cluster gateway or a stored one), stores
/// the new status (at the version read) and publishes the decision. Runtime-agnostic.
pub struct CanaryController {
    persistence: Arc<DynPersistenceStore>,
    metrics: Arc<DynMetricsStore>,
    events: Option<Arc<DynEventStore>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for CanaryController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanaryController")
            .field("persistence", &self.persistence.to_string())
            .field("metrics", &self.metrics.to_string())
            .finish_non_exhaustive()
    }
}

/// What one pass did for one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryOutcome {
    /// The policy.
    pub policy: String,
    /// The verdict (`Idle` when nothing was due).
    pub verdict: Verdict,
    /// An error that kept the decision from being applied (retried next pass).
    pub error: Option<String>,
}

impl CanaryController {
    /// A loop over the policies in `persistence`, measured in `metrics`.
    pub fn new(persistence: Arc<DynPersistenceStore>, metrics: Arc<DynMetricsStore>) -> Self {
        Self {
            persistence,
            metrics,
            events: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Publishes the decisions to `events`.
    #[must_use]
    pub fn with_events(mut self, events: Arc<DynEventStore>) -> Self {
        self.events = Some(events);
        self
    }

    /// Uses `clock` for now.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    async fn sample(&self, gateway: &str, route: &str, window: Duration) -> Result<RouteSample> {
        let segments = GatewayPath::new(route).segments;
        let frontend = crate::lookup::route_lookup_name(gateway, &segments);
        let m = self.metrics.request_metrics(&frontend, window).await?;
        let times_ms = match self.metrics.response_times(&frontend, window).await {
            Ok(t) => t,
            Err(Error::NotSupported { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(RouteSample {
            requests: m.requests,
            errors: m.status.server_error,
            times_ms,
        })
    }

    /// Measures what a due check of `policy` needs.
    pub async fn measure(&self, policy: &CanaryPolicy, now: i64) -> Result<Check> {
        let window = check_window(policy, now);
        Ok(Check {
            stable: self.sample(&policy.gateway, &policy.stable, window).await?,
            canary: self.sample(&policy.gateway, &policy.canary, window).await?,
        })
    }

    /// Applies `actions` to the gateway of `policy` (and its deployment).
    async fn apply(&self, policy: &CanaryPolicy, actions: &[Action], now: i64) -> Result<()> {
        if actions.is_empty() {
            return Ok(());
        }
        let path = GatewayPath::new(policy.gateway.as_str());
        let change = |g: &mut Gateway| -> Result<()> {
            for a in actions {
                match a {
                    Action::SetWeight(w) => set_weights(g, policy, *w)?,
                    Action::SetSticky(on) => g.sticky = on.then_some(Sticky::Route),
                    Action::SliceStable => {}
                }
            }
            Ok(())
        };
        if path.segments.len() == 3 {
            let Some(stored) = self
                .persistence
                .get::<Deployment>(&path.segments[0])
                .await?
            else {
                return Err(Error::NotFound {
                    backend: self.persistence.to_string(),
                    kind: "deployments".into(),
                    name: path.segments[0].clone(),
                });
            };
            let mut d = stored.value.clone();
            crate::ops::deploy::normalize(&mut d);
            let gateway = d
                .clusters
                .iter_mut()
                .find(|c| c.name == path.segments[1])
                .and_then(|c| c.gateways.iter_mut().find(|g| g.name == policy.gateway))
                .ok_or_else(|| Error::NotFound {
                    backend: self.persistence.to_string(),
                    kind: "gateways".into(),
                    name: policy.gateway.clone(),
                })?;
            change(gateway)?;
            if actions.contains(&Action::SliceStable) {
                d = slice_stable(&d, policy, now)?;
            }
            self.persistence.update(&d, stored.version).await?;
        } else {
            let Some(stored) = self.persistence.get::<Gateway>(&policy.gateway).await? else {
                return Err(Error::NotFound {
                    backend: self.persistence.to_string(),
                    kind: "gateways".into(),
                    name: policy.gateway.clone(),
                });
            };
            let mut g = stored.value.clone();
            change(&mut g)?;
            self.persistence.update(&g, stored.version).await?;
        }
        Ok(())
    }

    /// Decides and applies one policy.
    async fn step(&self, stored: Versioned<CanaryPolicy>, now: i64) -> CanaryOutcome {
        let policy = stored.value;
        let mut outcome = CanaryOutcome {
            policy: policy.name.clone(),
            verdict: Verdict::Idle,
            error: None,
        };
        let check = if check_due(&policy, now) {
            match self.measure(&policy, now).await {
                Ok(c) => Some(c),
                Err(e) => {
                    outcome.error = Some(format!("measuring: {e}"));
                    return outcome;
                }
            }
        } else {
            None
        };
        let decision = decide(&policy, check.as_ref(), now);
        outcome.verdict = decision.verdict;
        if decision.verdict == Verdict::Idle {
            return outcome;
        }
        // The gateway first: a status stored before its weights would skip the change after
        // a failure. A failed store of the status repeats the decision next pass, which
        // applies the same weights again.
        if let Err(e) = self.apply(&policy, &decision.actions, now).await {
            outcome.error = Some(format!("applying: {e}"));
            return outcome;
        }
        let mut updated = policy.clone();
        updated.status = decision.status.clone();
        if let Err(e) = self.persistence.update(&updated, stored.version).await {
            outcome.error = Some(format!("storing the status: {e}"));
            return outcome;
        }
        if let Some(events) = &self.events
            && let Err(e) = events
                .publish(decision_event(&policy, &decision, check.as_ref()))
                .await
        {
            outcome.error = Some(format!("publishing: {e}"));
        }
        outcome
    }

    /// One pass over every policy.
    ///
    /// # Errors
    /// The policies could not be read.
    pub async fn tick(&self) -> Result<Vec<CanaryOutcome>> {
        let now = self.clock.now_millis();
        let mut out = Vec::new();
        for stored in self.persistence.list_all::<CanaryPolicy>().await? {
            out.push(self.step(stored, now).await);
        }
        Ok(out)
    }

    /// Runs passes every `period` until `shutdown` completes.
    pub async fn run(&self, period: Duration, shutdown: impl std::future::Future<Output = ()>) {
        crate::rt::every(period, shutdown, || async {
            let _ = self.tick().await;
        })
        .await;
    }
}

/// The deployment without the stable route's service (its breed is the route's third
/// segment).
fn slice_stable(d: &Deployment, policy: &CanaryPolicy, now: i64) -> Result<Deployment> {
    let route = GatewayPath::new(policy.stable.as_str());
    let gateway = GatewayPath::new(policy.gateway.as_str());
    let (Some(cluster), Some(breed)) = (gateway.segments.get(1), route.segments.get(2)) else {
        return Err(Error::Invalid {
            what: "canary policy",
            value: policy.name.clone(),
            reason: format!("'{}' names no service to slice", policy.stable),
        });
    };
    let yaml = format!(
        "name: {}\nclusters:\n  {cluster}:\n    breed: {breed}\n",
        d.name
    );
    let blueprint = match crate::dsl::read_str(&yaml, Some(ArtifactKind::Blueprint))?.remove(0) {
        crate::dsl::AnyArtifact::Blueprint(b) => b,
        _ => unreachable!("read as a blueprint"),
    };
    Ok(crate::ops::deploy::slice(d, &blueprint, now)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles() {
        for (p, z) in [
            (0.95, 1.644_853_6),
            (0.975, 1.959_964),
            (0.99, 2.326_348),
            (0.5, 0.0),
            (0.01, -2.326_348),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-6,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let t: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&t, 95.0), Some(95.0));
        assert_eq!(percentile(&t, 50.0), Some(50.0));
        assert_eq!(percentile(&[7], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 99.0), None);
    }
}
