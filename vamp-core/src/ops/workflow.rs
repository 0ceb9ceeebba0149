//! Workflows (`model.md` §1.11, §8.3): a breed run on a schedule through the container
//! scheduler, with Vamp's environment variables. Runtime-agnostic; the time comes from a
//! [`Clock`], so a test drives it pass by pass.
//!
//! * `daemon`: a scheduler service (`workflows/<name>/<breed>`, one instance) that the
//!   scheduler restarts when it dies.
//! * `time` (`period`, `repeat`, `start`): one run ([`ContainerScheduler::run_once`](crate::scheduler::ContainerScheduler::run_once)) at
//!   `start` (or when the workflow starts) and every `period` after, `repeat` times (or
//!   forever). Runs that fell due while the control plane was down are not made up: after a
//!   restart the next run is the next multiple of the period.
//! * `event` (`tags`): one run per event carrying all the tags (published after the
//!   workflow started), with the event as JSON in `VAMP_WORKFLOW_EVENT`.
//!
//! Every run gets `VAMP_URL`, `VAMP_NAMESPACE`, `VAMP_WORKFLOW_NAME`,
//! `VAMP_WORKFLOW_EXECUTION_PERIOD` (seconds; 0 for a daemon or an event run) and
//! `VAMP_WORKFLOW_EXECUTION_TIMEOUT`, then [`WorkflowOptions::environment`] (the key-value
//! store's settings, as Vamp passed them), then the breed's and the workflow's own variables.
//!
//! Statuses (`PUT /api/v1/workflows/<name>/status`): `starting` → `running` (event
//! `workflows:<name>`, `scheduled`); `suspending` → the service is undeployed → `suspended`
//! (`unscheduled`); `stopping` → undeployed and the workflow deleted (`unscheduled`);
//! `restarting` → undeployed → `restarting/starting` → deployed → `running`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::Result;
use crate::metrics::DynEventStore;
use crate::model::*;
use crate::node::Node;
use crate::ops::controller::{Clock, SystemClock};
use crate::persistence::{DynPersistenceStore, ListOptions, PersistenceExt};
use crate::scheduler::{DeployOptions, DynContainerScheduler, ServiceId, ServiceSpec};

/// What every run is told.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkflowOptions {
    /// The API's URL (`VAMP_URL`).
    pub vamp_url: String,
    /// The namespace (`VAMP_NAMESPACE`).
    pub namespace: String,
    /// How long a run may take (`VAMP_WORKFLOW_EXECUTION_TIMEOUT`, seconds).
    pub execution_timeout_s: u64,
    /// More variables every run gets (the key-value store's and the metrics store's
    /// settings, as Vamp passed them), before the breed's and the workflow's own.
    pub environment: BTreeMap<String, String>,
    /// The most runs alive at once, over every workflow (default 16): a run that falls due
    /// beyond it is skipped (a time run) or waits (an event run).
    pub max_runs: usize,
}

impl Default for WorkflowOptions {
    fn default() -> Self {
        Self {
            vamp_url: "http://127.0.0.1:8080".into(),
            namespace: "default".into(),
            execution_timeout_s: 60,
            environment: BTreeMap::new(),
            max_runs: 16,
        }
    }
}

/// The period of a time schedule in milliseconds (calendar parts as 365/30/1 days; an empty
/// period is Vamp's `PT1S`).
pub fn period_ms(p: &RepeatPeriod) -> i64 {
    let days = p.period.map_or(0, |(y, m, d)| {
        y.saturating_mul(365) + m.saturating_mul(30) + d
    });
    let seconds = days
        .saturating_mul(86_400)
        .saturating_add(p.duration.unwrap_or(0));
    if seconds <= 0 {
        1000
    } else {
        seconds.saturating_mul(1000)
    }
}

/// The scope (the deployment part of a [`ServiceId`]) of every workflow's services and runs:
/// they are the workflow loop's, which the reconciler leaves alone, and no deployment may have
/// this name.
pub const SCOPE: &str = "workflows";

/// `w` with its breed inline: a reference is read from `persistence` (`None` when that breed
/// is not stored).
///
/// # Errors
/// The store's.
pub async fn with_stored_breed(
    persistence: &DynPersistenceStore,
    mut w: Workflow,
) -> Result<Option<Workflow>> {
    if let Ref::Reference(name) = &w.breed {
        match persistence.get::<DefaultBreed>(name).await? {
            Some(b) => w.breed = Ref::Inline(b.value),
            None => return Ok(None),
        }
    }
    Ok(Some(w))
}

/// The service id of a workflow's runs.
pub fn service_id(w: &Workflow) -> ServiceId {
    ServiceId::new(SCOPE, w.name.as_str(), w.breed.name())
}

/// What a run of `w` is given to the scheduler as.
pub fn spec(w: &Workflow, options: &WorkflowOptions, period_s: i64) -> Option<ServiceSpec> {
    let Ref::Inline(breed) = &w.breed else {
        return None;
    };
    let mut spec = ServiceSpec::new(service_id(w), breed.deployable.clone()).with_instances(1);
    for (k, v) in [
        ("VAMP_URL", options.vamp_url.clone()),
        ("VAMP_NAMESPACE", options.namespace.clone()),
        ("VAMP_WORKFLOW_NAME", w.name.clone()),
        ("VAMP_WORKFLOW_EXECUTION_PERIOD", period_s.to_string()),
        (
            "VAMP_WORKFLOW_EXECUTION_TIMEOUT",
            options.execution_timeout_s.to_string(),
        ),
    ] {
        spec = spec.with_env(k, v);
    }
    for (k, v) in &options.environment {
        spec = spec.with_env(k.clone(), v.clone());
    }
    for e in breed
        .environment_variables
        .iter()
        .chain(w.environment_variables.iter())
    {
        if let Some(v) = &e.value {
            spec = spec.with_env(e.name.clone(), v.clone());
        }
    }
    let scale = match &w.scale {
        Some(Ref::Inline(s)) => Some(s.clone()),
        _ => None,
    };
    spec.cpu = scale.as_ref().map_or(0.1, |s| s.cpu.0);
    spec.memory_mb = scale.as_ref().map_or(64.0, |s| s.memory.0);
    Some(spec)
}

fn event(name: &str, what: &str, now: i64) -> Event {
    Event::system(
        vec![format!("workflows:{name}"), what.into()],
        Node::Null,
        "event",
        now,
    )
}

/// What one pass did for one workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowOutcome {
    /// The workflow.
    pub workflow: String,
    /// Runs started (`run_once`).
    pub runs: usize,
    /// Time runs that fell due and were not started: the workflow's previous run was still
    /// alive (runs of one workflow never overlap), or [`WorkflowOptions::max_runs`] were.
    pub skipped: usize,
    /// Runs killed for outliving [`WorkflowOptions::execution_timeout_s`] (each with an
    /// event tagged `workflows:<name>` and `timeout`).
    pub killed: usize,
    /// The status after the pass.
    pub status: WorkflowStatus,
    /// An error (retried next pass).
    pub error: Option<String>,
}

#[derive(Default)]
struct Timing {
    /// Time runs made since the workflow started (this control plane's count).
    runs: i64,
    /// When the next time run is due.
    next_ms: Option<i64>,
    /// Where event runs have read events up to.
    events_since: Option<i64>,
    /// The last error reported (an event is published when it changes).
    last_error: Option<String>,
}

/// The workflow loop.
pub struct WorkflowController {
    persistence: Arc<DynPersistenceStore>,
    scheduler: Arc<DynContainerScheduler>,
    events: Arc<DynEventStore>,
    clock: Arc<dyn Clock>,
    options: WorkflowOptions,
    timing: Mutex<BTreeMap<String, Timing>>,
}

impl fmt::Debug for WorkflowController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowController")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl WorkflowController {
    /// A loop over the workflows in `persistence`, run on `scheduler`, triggered by and
    /// reporting to `events`.
    pub fn new(
        persistence: Arc<DynPersistenceStore>,
        scheduler: Arc<DynContainerScheduler>,
        events: Arc<DynEventStore>,
        options: WorkflowOptions,
    ) -> Self {
        Self {
            persistence,
            scheduler,
            events,
            clock: Arc::new(SystemClock),
            options,
            timing: Mutex::new(BTreeMap::new()),
        }
    }

    /// Uses `clock` for now.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    async fn set_status(
        &self,
        w: &Workflow,
        version: crate::kv::Version,
        status: WorkflowStatus,
    ) -> Result<()> {
        let mut updated = w.clone();
        updated.status = status;
        self.persistence.update(&updated, version).await.map(drop)
    }

    /// Kills the runs of `w` older than the execution timeout (an event for each); how many
    /// are alive after, and how many were killed.
    async fn enforce_timeout(&self, w: &Workflow, now: i64) -> Result<(usize, usize)> {
        let id = service_id(w);
        let limit = i64::try_from(self.options.execution_timeout_s)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let mut alive = 0;
        let mut killed = 0;
        for run in self.scheduler.runs(&id).await? {
            if now.saturating_sub(run.started_ms) < limit {
                alive += 1;
                continue;
            }
            if self.scheduler.stop_run(&id, &run.name).await? {
                killed += 1;
                let mut e = Event::system(
                    vec![format!("workflows:{}", w.name), "timeout".into()],
                    Node::Str(format!(
                        "run {} killed after the execution timeout of {} s",
                        run.name, self.options.execution_timeout_s
                    )),
                    "event",
                    now,
                );
                e.version = Some("1.0".into());
                self.events.publish(e).await?;
            }
        }
        Ok((alive, killed))
    }

    async fn running(
        &self,
        w: &Workflow,
        now: i64,
        budget: &mut Budget,
        stored: &mut Stored,
    ) -> Result<(usize, usize)> {
        let mut runs = 0;
        let mut skipped = 0;
        match &w.schedule {
            Schedule::Daemon => {
                let spec = spec(w, &self.options, 0).ok_or_else(|| unresolved(w))?;
                self.scheduler
                    .deploy(spec, DeployOptions::default())
                    .await?;
            }
            Schedule::Time {
                period,
                repeat,
                start,
            } => {
                let every = period_ms(period);
                let start = start
                    .as_deref()
                    .and_then(crate::time::parse_millis)
                    .unwrap_or(now);
                let due = {
                    let mut timing = self.timing.lock();
                    let t = timing.entry(w.name.clone()).or_insert_with(|| Timing {
                        // Runs made before a restart count.
                        runs: match w.metadata.get(RUNS_KEY) {
                            Some(Node::Int(n)) => *n,
                            _ => 0,
                        },
                        ..Timing::default()
                    });
                    let next = *t.next_ms.get_or_insert_with(|| {
                        // The first run at the start, or the next multiple after it.
                        if now <= start {
                            start
                        } else {
                            let periods =
                                now.saturating_sub(start).saturating_add(every - 1) / every;
                            start.saturating_add(periods.saturating_mul(every))
                        }
                    });
                    let left = match repeat {
                        Repeat::Forever => true,
                        Repeat::Count(n) => t.runs < *n,
                    };
                    left && now >= next
                };
                if due {
                    // Runs of one workflow never overlap, and all together stay within the
                    // budget: a run that cannot start now is skipped, not made up.
                    let start_now = budget.alive_of == 0 && budget.left > 0;
                    if start_now {
                        let s =
                            spec(w, &self.options, every / 1000).ok_or_else(|| unresolved(w))?;
                        // The count is stored before the run starts: a run is never made twice
                        // for one count (a restart in between skips it rather than repeat it).
                        let done = self.timing.lock().get(&w.name).map_or(0, |t| t.runs);
                        stored
                            .workflow
                            .metadata
                            .insert(RUNS_KEY.into(), Node::Int(done.saturating_add(1)));
                        stored.workflow.metadata.insert(
                            LAST_RUN_KEY.into(),
                            Node::Str(crate::time::format_epoch_millis(now)),
                        );
                        stored.version = self
                            .persistence
                            .update(&stored.workflow, stored.version)
                            .await?;
                        self.scheduler.run_once(s).await?;
                        runs += 1;
                        budget.left -= 1;
                    } else {
                        skipped += 1;
                    }
                    let mut timing = self.timing.lock();
                    let t = timing.entry(w.name.clone()).or_default();
                    if start_now {
                        t.runs += 1;
                    }
                    // The next run after now (a late pass does not run twice).
                    let next = t.next_ms.unwrap_or(now);
                    let periods = (now.saturating_sub(next) / every).saturating_add(1);
                    t.next_ms = Some(next.saturating_add(periods.saturating_mul(every)));
                }
            }
            Schedule::Event { tags } => {
                let since = {
                    let mut timing = self.timing.lock();
                    let t = timing.entry(w.name.clone()).or_default();
                    *t.events_since.get_or_insert(now)
                };
                let q = EventQuery {
                    tags: tags.clone(),
                    event_type: None,
                    timestamp: Some(TimeRange {
                        lt: None,
                        lte: Some(crate::time::format_epoch_millis(now)),
                        gt: Some(crate::time::format_epoch_millis(since)),
                        gte: None,
                    }),
                    aggregator: None,
                };
                let mut found = self.events.query(&q, ListOptions::all()).await?;
                found.reverse(); // oldest first
                // Read up to now, or (out of budget) up to the last event run: the rest wait
                // for the next pass.
                let mut read_to = now;
                for e in &found {
                    if budget.left == 0 {
                        read_to = runs_until(&found, e).unwrap_or(since);
                        break;
                    }
                    let json = crate::dsl::to_node(&crate::dsl::AnyArtifact::Event(e.clone()))
                        .to_json()
                        .to_string();
                    let s = spec(w, &self.options, 0)
                        .ok_or_else(|| unresolved(w))?
                        .with_env("VAMP_WORKFLOW_EVENT", json);
                    self.scheduler.run_once(s).await?;
                    runs += 1;
                    budget.left -= 1;
                }
                self.timing
                    .lock()
                    .entry(w.name.clone())
                    .or_default()
                    .events_since = Some(read_to);
            }
        }
        Ok((runs, skipped))
    }

    /// The workflow with its breed inline: a reference is read from persistence.
    async fn resolved(&self, w: Workflow) -> Result<Workflow> {
        let name = w.name.clone();
        let breed = w.breed.name().to_owned();
        with_stored_breed(&*self.persistence, w)
            .await?
            .ok_or_else(|| crate::error::Error::Invalid {
                what: "workflow",
                value: name,
                reason: format!("its breed '{breed}' is not stored"),
            })
    }

    async fn step(
        &self,
        stored: crate::kv::Versioned<Workflow>,
        now: i64,
        budget: &mut Budget,
        killed: usize,
    ) -> WorkflowOutcome {
        let name = stored.value.name.clone();
        let recorded = recorded_error(&stored.value).map(str::to_owned);
        let outcome = self.step_resolved(stored, now, budget, killed).await;
        if recorded != outcome.error {
            self.record_error(&name, outcome.error.as_deref()).await;
        }
        // A new error (or a different one) is an event; the same one again is not.
        let changed = {
            let mut timing = self.timing.lock();
            let t = timing.entry(outcome.workflow.clone()).or_default();
            let changed = t.last_error != outcome.error;
            t.last_error.clone_from(&outcome.error);
            changed
        };
        if changed && let Some(e) = &outcome.error {
            let mut event = Event::system(
                vec![format!("workflows:{}", outcome.workflow), "error".into()],
                Node::Str(e.clone()),
                "event",
                now,
            );
            event.version = Some("1.0".into());
            let _ = self.events.publish(event).await;
        }
        outcome
    }

    /// Records `error` on the workflow as stored now (or clears it); a workflow removed in
    /// between has nothing to record.
    async fn record_error(&self, name: &str, error: Option<&str>) {
        let Ok(Some(current)) = self.persistence.get::<Workflow>(name).await else {
            return;
        };
        let mut updated = current.value;
        match error {
            Some(e) => {
                // Bounded: a backend's message is not stored whole.
                let e: String = e.chars().take(1000).collect();
                updated.metadata.insert(ERROR_KEY.into(), Node::Str(e));
            }
            None => {
                updated.metadata.shift_remove(ERROR_KEY);
            }
        }
        // A failed write is retried on the next pass: the stored error still differs.
        let _ = self.persistence.update(&updated, current.version).await;
    }

    async fn step_resolved(
        &self,
        stored: crate::kv::Versioned<Workflow>,
        now: i64,
        budget: &mut Budget,
        killed: usize,
    ) -> WorkflowOutcome {
        let version = stored.version;
        let stored_value = stored.value;
        let name = stored_value.name.clone();
        let status = stored_value.status;
        // State is written on the workflow as stored (a breed reference stays one).
        let mut record = Stored {
            workflow: stored_value.clone(),
            version,
        };
        let w = match self.resolved(stored_value).await {
            Ok(w) => w,
            Err(e) => {
                return WorkflowOutcome {
                    workflow: name,
                    runs: 0,
                    skipped: 0,
                    killed,
                    status,
                    error: Some(e.to_string()),
                };
            }
        };
        let stored = crate::kv::Versioned { value: w, version };
        let w = stored.value;
        let mut outcome = WorkflowOutcome {
            workflow: w.name.clone(),
            runs: 0,
            skipped: 0,
            killed,
            status: w.status,
            error: None,
        };
        let result: Result<()> = async {
            match &w.status {
                WorkflowStatus::Starting
                | WorkflowStatus::Running
                | WorkflowStatus::Restarting(Some(RestartingPhase::Starting)) => {
                    (outcome.runs, outcome.skipped) =
                        self.running(&w, now, budget, &mut record).await?;
                    if w.status != WorkflowStatus::Running {
                        self.set_status(&record.workflow, record.version, WorkflowStatus::Running)
                            .await?;
                        self.events
                            .publish(event(&w.name, "scheduled", now))
                            .await?;
                        outcome.status = WorkflowStatus::Running;
                    }
                }
                WorkflowStatus::Suspending => {
                    self.scheduler.undeploy(&service_id(&w)).await?;
                    self.timing.lock().remove(&w.name);
                    self.set_status(&record.workflow, record.version, WorkflowStatus::Suspended)
                        .await?;
                    self.events
                        .publish(event(&w.name, "unscheduled", now))
                        .await?;
                    outcome.status = WorkflowStatus::Suspended;
                }
                WorkflowStatus::Stopping => {
                    self.scheduler.undeploy(&service_id(&w)).await?;
                    self.timing.lock().remove(&w.name);
                    self.persistence
                        .remove::<Workflow>(&w.name, Some(stored.version))
                        .await?;
                    self.events
                        .publish(event(&w.name, "unscheduled", now))
                        .await?;
                }
                WorkflowStatus::Restarting(None)
                | WorkflowStatus::Restarting(Some(RestartingPhase::Stopping)) => {
                    self.scheduler.undeploy(&service_id(&w)).await?;
                    self.timing.lock().remove(&w.name);
                    let next = WorkflowStatus::Restarting(Some(RestartingPhase::Starting));
                    self.set_status(&record.workflow, record.version, next)
                        .await?;
                    outcome.status = next;
                }
                WorkflowStatus::Suspended => {}
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            outcome.error = Some(e.to_string());
        }
        outcome
    }

    /// One pass over every workflow.
    ///
    /// # Errors
    /// The workflows could not be read.
    pub async fn tick(&self) -> Result<Vec<WorkflowOutcome>> {
        let now = self.clock.now_millis();
        let workflows = self.persistence.list_all::<Workflow>().await?;
        // Runs past their timeout are killed first; what is left alive counts against the
        // budget.
        let mut alive = Vec::with_capacity(workflows.len());
        let mut errors = Vec::with_capacity(workflows.len());
        for stored in &workflows {
            match self.enforce_timeout(&stored.value, now).await {
                Ok(counts) => {
                    alive.push(counts);
                    errors.push(None);
                }
                Err(e) => {
                    alive.push((0, 0));
                    errors.push(Some(e.to_string()));
                }
            }
        }
        let total: usize = alive.iter().map(|(a, _)| a).sum();
        let mut budget = Budget {
            left: self.options.max_runs.saturating_sub(total),
            alive_of: 0,
        };
        let mut out = Vec::with_capacity(workflows.len());
        for ((stored, (alive_of, killed)), error) in workflows.into_iter().zip(alive).zip(errors) {
            budget.alive_of = alive_of;
            let mut outcome = self.step(stored, now, &mut budget, killed).await;
            if outcome.error.is_none() {
                outcome.error = error;
            }
            out.push(outcome);
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

/// The workflow as stored and its version: what the loop writes its state on (a time run's
/// count and time, the status), the version following each write.
struct Stored {
    workflow: Workflow,
    version: crate::kv::Version,
}

/// The metadata key of a time workflow's run count (kept across restarts: `repeat` holds).
pub const RUNS_KEY: &str = "vamp.workflow.runs";
/// The metadata key of a time workflow's last run (ISO-8601).
pub const LAST_RUN_KEY: &str = "vamp.workflow.last-run";
/// The metadata key of the error that keeps a workflow from running (its breed not stored,
/// the scheduler refusing it, ...), absent while it runs as it should. Shared by every
/// replica and shown with the workflow and its status.
pub const ERROR_KEY: &str = "vamp.workflow.error";

/// The error recorded on a workflow ([`ERROR_KEY`]), if any.
pub fn recorded_error(w: &Workflow) -> Option<&str> {
    match w.metadata.get(ERROR_KEY) {
        Some(Node::Str(e)) => Some(e),
        _ => None,
    }
}

/// What runs may still start in this pass.
struct Budget {
    /// Runs that may start, over every workflow.
    left: usize,
    /// Runs of the workflow at hand alive now.
    alive_of: usize,
}

/// The timestamp of the event before `e` in `found` (where an event reader stopped).
fn runs_until(found: &[Event], e: &Event) -> Option<i64> {
    let i = found.iter().position(|x| std::ptr::eq(x, e))?;
    let before = found.get(i.checked_sub(1)?)?;
    crate::time::parse_millis(&before.timestamp)
}

fn unresolved(w: &Workflow) -> crate::error::Error {
    crate::error::Error::Invalid {
        what: "workflow",
        value: w.name.clone(),
        reason: format!(
            "its breed '{}' was not resolved to a stored breed",
            w.breed.name()
        ),
    }
}
