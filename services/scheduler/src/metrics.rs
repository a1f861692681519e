//! The scheduler's metrics: how long each flow step takes and how it ends, operations ended and
//! running by kind, copy attempts by how they ended, and whether this replica is the acting one. Steps are timed by wrapping the step's
//! future ([`step`]), so the runner's code stays free of timing.
use std::{future::Future, sync::LazyLock, time::Instant};

use datapath_api::pb::{self, OperationKind};
use datapath_telemetry::metrics::{
    long_histogram, register, CounterFamily, GaugeFamily, HistogramFamily,
};
use prometheus_client::{encoding::EncodeLabelSet, metrics::gauge::Gauge};

use crate::flow::{copy::Outcome, Stop};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The `result` of a copy attempt, as [`attempt_ended`] counts it.
pub const ATTEMPT_RESULTS: [&str; 4] = ["succeeded", "transient", "lost", "failed"];

struct SchedulerMetrics {
    step_duration: HistogramFamily<StepLabels>,
    operations: CounterFamily<OperationLabels>,
    attempts: CounterFamily<ResultLabel>,
    running: GaugeFamily<KindLabel>,
    is_leader: Gauge,
    followed_jobs: Gauge,
    waiting_for_turn: Gauge,
    job_watch_opens: prometheus_client::metrics::counter::Counter,
}

const KINDS: [&str; 2] = ["move_disk", "clone_disk"];

fn metrics() -> &'static SchedulerMetrics {
    static METRICS: LazyLock<SchedulerMetrics> = LazyLock::new(|| {
        let m = SchedulerMetrics {
            step_duration: HistogramFamily::new_with_constructor(long_histogram),
            operations: Default::default(),
            attempts: Default::default(),
            running: Default::default(),
            is_leader: Gauge::default(),
            followed_jobs: Gauge::default(),
            waiting_for_turn: Gauge::default(),
            job_watch_opens: Default::default(),
        };
        register(
            "datapath_flow_step_duration_seconds",
            "Time one run of a flow step took, by step and how it ended (interrupted: this \
             scheduler stopped running the flow, which resumes elsewhere or later)",
            m.step_duration.clone(),
        );
        register(
            "datapath_operations",
            "Operations ended by this scheduler, by kind and result",
            m.operations.clone(),
        );
        register(
            "datapath_copy_attempts",
            "Copy attempts ended, by how the engine took them: succeeded (the destination shows \
             the copy), transient (a lock or lease still held, a host not taking the copy: \
             retried, not counted), lost (the host or job lost: concluded and fenced) or failed",
            m.attempts.clone(),
        );
        register(
            "datapath_operations_running",
            "Operations whose flow this scheduler is running now, by kind",
            m.running.clone(),
        );
        register(
            "datapath_scheduler_is_leader",
            "1 while this replica is the acting scheduler",
            m.is_leader.clone(),
        );
        register(
            "datapath_scheduler_followed_jobs",
            "Copy jobs this scheduler follows now, all through its one job stream",
            m.followed_jobs.clone(),
        );
        register(
            "datapath_scheduler_flows_waiting_to_start",
            "Accepted operations whose flow waits for a turn to start (--max-starting-flows)",
            m.waiting_for_turn.clone(),
        );
        register(
            "datapath_scheduler_job_watch_opens",
            "Times this scheduler opened its one job stream (WatchJobs): once, plus once per break",
            m.job_watch_opens.clone(),
        );
        for result in ATTEMPT_RESULTS {
            drop(m.attempts.get_or_create(&ResultLabel { result }));
        }
        for kind in KINDS {
            drop(m.running.get_or_create(&KindLabel { kind }));
            for result in ["succeeded", "failed", "cancelled", "parked"] {
                drop(
                    m.operations
                        .get_or_create(&OperationLabels { kind, result }),
                );
            }
        }
        m
    });
    &METRICS
}

/// Registers the families (etcd's too), so they show from the first scrape.
pub fn init() {
    metrics();
    datapath_coord::metrics::metrics();
}

/// How a step's output reads as the `result` label.
pub trait StepResult {
    /// `succeeded`, `failed`, `cancelled` or `interrupted`.
    fn result(&self) -> &'static str;
}

impl StepResult for Result<Result<(), pb::OperationError>, Stop> {
    fn result(&self) -> &'static str {
        match self {
            Ok(Ok(())) => "succeeded",
            Ok(Err(_)) => "failed",
            Err(_) => "interrupted",
        }
    }
}

impl StepResult for Result<Outcome, Stop> {
    fn result(&self) -> &'static str {
        match self {
            Ok(Outcome::Copied) => "succeeded",
            Ok(Outcome::Failed(_)) => "failed",
            Ok(Outcome::Cancelled) => "cancelled",
            Err(_) => "interrupted",
        }
    }
}

/// A step that answers whether it went ahead (false: cancelled first).
impl StepResult for Result<bool, Stop> {
    fn result(&self) -> &'static str {
        match self {
            Ok(true) => "succeeded",
            Ok(false) => "cancelled",
            Err(_) => "interrupted",
        }
    }
}

impl StepResult for Result<(), Stop> {
    fn result(&self) -> &'static str {
        match self {
            Ok(()) => "succeeded",
            Err(_) => "interrupted",
        }
    }
}

/// Runs step `name` and records its duration by result.
pub async fn step<T: StepResult>(name: &'static str, f: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    metrics()
        .step_duration
        .get_or_create(&StepLabels {
            step: name,
            result: out.result(),
        })
        .observe(started.elapsed().as_secs_f64());
    out
}

fn kind_label(kind: i32) -> &'static str {
    match OperationKind::try_from(kind) {
        Ok(OperationKind::MoveDisk) => "move_disk",
        Ok(OperationKind::CloneDisk) => "clone_disk",
        _ => "unknown",
    }
}

/// An operation of `kind` (`OperationMetadata::kind`) ended, with `failure` if it did not succeed.
pub fn operation_ended(kind: i32, failure: Option<&pb::OperationError>) {
    let result = match failure {
        None => "succeeded",
        Some(e) if e.reason == "CANCELLED" => "cancelled",
        Some(e) if e.reason == "NEEDS_OPERATOR" => "parked",
        Some(_) => "failed",
    };
    metrics()
        .operations
        .get_or_create(&OperationLabels {
            kind: kind_label(kind),
            result,
        })
        .inc();
}

/// A copy attempt ended with `result`, one of [`ATTEMPT_RESULTS`].
pub fn attempt_ended(result: &'static str) {
    metrics()
        .attempts
        .get_or_create(&ResultLabel { result })
        .inc();
}

/// Counts one flow in `datapath_operations_running` while it lives.
pub struct Running(&'static str);

impl Running {
    /// A flow of `kind` starts running here.
    pub fn new(kind: i32) -> Self {
        let kind = kind_label(kind);
        metrics().running.get_or_create(&KindLabel { kind }).inc();
        Self(kind)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics()
            .running
            .get_or_create(&KindLabel { kind: self.0 })
            .dec();
    }
}

/// Whether this replica acts.
pub fn set_leader(leading: bool) {
    metrics().is_leader.set(i64::from(leading));
}

/// Sets how many copy jobs are followed now.
pub fn set_followed_jobs(n: usize) {
    metrics()
        .followed_jobs
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// Counts one opening of the job stream.
pub fn job_watch_opened() {
    metrics().job_watch_opens.inc();
}

/// Counts one flow in `datapath_scheduler_flows_waiting_to_start` while it waits.
pub struct WaitingForTurn;

impl WaitingForTurn {
    /// A flow starts waiting for its turn.
    pub fn start() -> Self {
        metrics().waiting_for_turn.inc();
        Self
    }
}

impl Drop for WaitingForTurn {
    fn drop(&mut self) {
        metrics().waiting_for_turn.dec();
    }
}
