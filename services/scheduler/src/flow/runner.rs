//! Runs one flow from wherever its record says it is: clone the structure on the SPM, copy every
//! volume on selected hosts, delete the source on the SPM (a move), and end; on a failure or a cancel,
//! roll back (abort the copies, delete the destination on the SPM) and end with the error. Each step
//! is persisted before it acts and each action is idempotent, so running a step twice is harmless.
use std::{sync::Arc, time::Duration};

use datapath_api::{ids::OperationId, pb, volume::DiskKey};
use datapath_coord::{election::Leadership, flows::Versioned};
use futures::{stream, StreamExt as _};
use tokio::sync::watch;
use tonic::Code;
use tracing::{error, info, warn, Instrument as _};

use super::{
    conclude,
    copy::{copy_volume, Outcome},
    failpoint::Failpoint,
    locks,
    machine::{self, Action, Next},
    model::{End, Flow, Kind, Step},
    spans,
    state::{meta, Begin, FlowRecord, StoredFlow},
    volume_state::CopyState,
    Stop,
};
use crate::{
    engine::{is_transient, Engine},
    metrics,
};

/// A flow being run.
pub struct Run {
    /// The shared context.
    pub engine: Arc<Engine>,
    /// The flow's record.
    pub record: FlowRecord,
    cancel: watch::Receiver<bool>,
    abandon: watch::Sender<bool>,
    /// The flow's turn to start, while it starts (`admission.rs`).
    turn: super::admission::Turn,
}

impl Run {
    /// The flow is past its start: the next waiting flow may start.
    pub fn started(&self) {
        self.turn.release();
    }

    /// Whether the flow's copies must stop: cancelled, or another volume failed.
    pub fn stopping(&self) -> bool {
        *self.cancel.borrow() || *self.abandon.borrow()
    }

    /// Changes whenever [`Run::stopping`] may have become true.
    pub fn stop_signal(&self) -> StopSignal {
        StopSignal {
            cancel: self.cancel.clone(),
            abandon: self.abandon.subscribe(),
        }
    }
}

/// See [`Run::stop_signal`].
pub struct StopSignal {
    cancel: watch::Receiver<bool>,
    abandon: watch::Receiver<bool>,
}

impl StopSignal {
    /// Resolves on the next change (or never, once both senders are gone).
    pub async fn changed(&mut self) {
        tokio::select! {
            Ok(()) = self.cancel.changed() => {}
            Ok(()) = self.abandon.changed() => {}
            else => std::future::pending().await,
        }
    }
}

/// Pause before a structural call is tried again (the SPM may be moving).
const SPM_RETRY: Duration = Duration::from_secs(1);

/// How a runner begins: on the record the executor last saw, if any (else it reads it), and
/// whether the flow had not started then, so that it waits for a turn (`admission.rs`).
#[derive(Default)]
pub struct Start {
    /// The flow as listed or watched.
    pub known: Option<Versioned<pb::Flow>>,
    /// See [`super::admission::not_started`].
    pub not_started: bool,
}

/// Runs flow `op` until it ends (Ok) or this runner must stop (Err).
pub async fn run(
    engine: Arc<Engine>,
    leader: Leadership,
    op: OperationId,
    mut cancel: watch::Receiver<bool>,
    start: Start,
) -> Result<(), Stop> {
    let turn = match start.not_started {
        true => engine.admission.turn(&mut cancel).await,
        false => Default::default(),
    };
    // Boxed: thousands of flows may wait for a turn, each as small as its record, not as large
    // as a running flow's state.
    Box::pin(run_admitted(engine, leader, op, cancel, start.known, turn)).await
}

async fn run_admitted(
    engine: Arc<Engine>,
    leader: Leadership,
    op: OperationId,
    cancel: watch::Receiver<bool>,
    known: Option<Versioned<pb::Flow>>,
    turn: super::admission::Turn,
) -> Result<(), Stop> {
    let stored = match known {
        Some(flow) => StoredFlow::new(engine.flows.clone(), leader, op, flow),
        None => match StoredFlow::load(engine.flows.clone(), leader, op).await? {
            Some(stored) => stored,
            None => return Ok(()),
        },
    };
    let record = match stored.begin_run().await? {
        Begin::Running(record) => record,
        // Ended; its record is bound to its retention lease and must not be rewritten.
        Begin::Ended => return Ok(()),
        Begin::Unreadable(stored, why) => return park(stored, &why).await,
    };
    let flow = record.get().await;
    let _running = metrics::Running::new(flow.kind.to_pb() as i32);
    let (abandon, _) = watch::channel(false);
    let span = spans::flow(&op.name(), &flow);
    let run = Run {
        engine,
        record,
        cancel,
        abandon,
        turn,
    };
    drive(&run).instrument(span).await
}

/// The flow's steps, from wherever its record says it is: the state machine (`machine.rs`)
/// decides, this persists each move and runs each step.
async fn drive(run: &Run) -> Result<(), Stop> {
    loop {
        let flow = run.record.get().await;
        if flow.end.is_some() {
            return Ok(());
        }
        let cancelled = *run.cancel.borrow() || flow.cancel_requested;
        let action = machine::action(flow.step, cancelled);
        if !matches!(action, Action::Structure | Action::Copy) {
            run.started();
        }
        let next = match action {
            Action::Rollback => {
                let rollback = rollback(run).instrument(spans::step("Rollback"));
                return metrics::step("rollback", rollback).await;
            }
            Action::Finish => return finish(run, None).await,
            Action::RollBackCancelled => Next::Rollback(machine::cancelled_error()),
            Action::Structure => {
                run.engine.failpoint(Failpoint::BeforeStructure);
                let structure = clone_structure(run, &flow)
                    .instrument(spans::step("CloneImageGroupVolumesStructure"));
                let result = metrics::step("clone_structure", structure).await?;
                if result.is_ok() {
                    run.engine.failpoint(Failpoint::AfterStructure);
                }
                machine::after_structure(result)
            }
            Action::Copy => {
                let copied =
                    copy_all(run, &flow).instrument(spans::step("CopyImageGroupVolumesData"));
                let is_move = flow.kind == Kind::MoveDisk;
                machine::after_copy(metrics::step("copy_data", copied).await?, is_move)
            }
            Action::DeleteSource => {
                let deleted =
                    delete_source(run, &flow).instrument(spans::step("RemoveSourceImage"));
                machine::after_delete_source(metrics::step("delete_source", deleted).await?)
            }
        };
        match next {
            Next::Step(step) => set_step(run, step).await?,
            Next::Finish => return finish(run, None).await,
            Next::Rollback(e) => return start_rollback(run, e).await,
        }
    }
}

/// Parks a flow that cannot be run safely (`model.rs`): its operation ends with `NEEDS_OPERATOR`,
/// nothing of it runs, its locks are kept, and its record is kept too (no retention lease), so
/// the disks stay untouched until an operator has looked.
async fn park(stored: StoredFlow, why: &str) -> Result<(), Stop> {
    warn!(op = %stored.op, why, "flow parked: it cannot be run safely; an operator must look at it");
    let error = pb::OperationError {
        code: Code::FailedPrecondition as i32,
        message: format!(
            "the flow cannot be run safely ({why}): nothing of it was run and its disks stay locked; \
             inspect it with `dpctl debug etcd`"
        ),
        reason: "NEEDS_OPERATOR".into(),
    };
    let kind = meta(stored.stored()).kind;
    stored.park(error.clone()).await?;
    metrics::operation_ended(kind, Some(&error));
    Ok(())
}

async fn set_step(run: &Run, step: Step) -> Result<(), Stop> {
    info!(op = %run.record.op, ?step, "flow step");
    run.record.update(|f| f.step = step).await.map(drop)
}

/// `CloneImageGroupVolumesStructure`: every destination volume created on the SPM, ILLEGAL, base
/// first (a layer needs its parent). A volume that already exists was created by an earlier run of
/// this step: the destination disk is locked by this operation.
async fn clone_structure(run: &Run, flow: &Flow) -> Result<Result<(), pb::OperationError>, Stop> {
    for v in &flow.volumes {
        let req = pb::CreateVolumeRequest {
            volume: Some(v.destination.to_pb()),
            format: v.format as i32,
            allocation: v.allocation as i32,
            capacity_bytes: v.capacity_bytes,
            parent_volume_id: v.parent.map(|p| p.to_string()).unwrap_or_default(),
            role: v.role as i32,
            legality: pb::Legality::Illegal as i32,
            description: format!("created by {}", run.record.op.name()),
        };
        let created = spm_call(run, "CreateVolume", |mut c| {
            let req = req.clone();
            async move { c.create_volume(req).await.map(drop) }
        })
        .await;
        match created {
            Ok(()) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Ok(Err(status_error(&s))),
        }
    }
    Ok(Ok(()))
}

/// `CopyImageGroupVolumesData`: every volume, up to `parallel_copies` at once, in chain order. The
/// first failure stops the others (they abort their jobs) and is the flow's outcome.
async fn copy_all(run: &Run, flow: &Flow) -> Result<Outcome, Stop> {
    let parallel = run.engine.settings.parallel_copies.max(1);
    let mut copies = stream::iter(0..flow.volumes.len())
        .map(|i| copy_volume(run, i).instrument(spans::volume(&flow.volumes[i])))
        .buffered(parallel);
    let mut outcome = Outcome::Copied;
    while let Some(result) = copies.next().await {
        match result? {
            Outcome::Copied => {}
            Outcome::Failed(e) => {
                run.abandon.send_replace(true);
                if !matches!(outcome, Outcome::Failed(_)) {
                    outcome = Outcome::Failed(e);
                }
            }
            Outcome::Cancelled if outcome == Outcome::Copied => outcome = Outcome::Cancelled,
            Outcome::Cancelled => {}
        }
    }
    Ok(outcome)
}

/// Deletes the source image on the SPM once every destination volume shows its copy and no clone
/// reads the source. Returns why it did not (the source is still intact then): cancelled while
/// waiting for readers, or a destination volume that does not show its copy.
async fn delete_source(run: &Run, flow: &Flow) -> Result<Result<(), pb::OperationError>, Stop> {
    let source = flow.disk;
    let name = run.record.op.name();
    run.engine.failpoint(Failpoint::BeforeDeleteSource);
    for v in &flow.volumes {
        if let Err(why) = conclude::still_copied(run, v).await {
            error!(op = %run.record.op, %why, "a destination does not show its copy; the source is kept");
            return Ok(Err(pb::OperationError {
                code: Code::Aborted as i32,
                message: format!("the source is kept: {why}"),
                reason: "DESTINATION_NOT_COPIED".into(),
            }));
        }
    }
    let stopped = || async { run.stopping() || run.record.cancel_requested().await };
    let locks = &*run.engine.locks;
    if locks::mark_and_wait_for_readers(locks, &source, &name, stopped).await?
        == locks::ReadersWait::Stopped
    {
        return Ok(Err(machine::cancelled_error()));
    }
    delete_image(run, &source).await;
    run.engine.failpoint(Failpoint::AfterDeleteSource);
    Ok(Ok(()))
}

/// Deletes an image on the SPM, waiting out leases still held by ending copies; NOT_FOUND is done.
async fn delete_image(run: &Run, disk: &DiskKey) {
    let req = pb::DeleteImageRequest {
        storage_domain_id: disk.storage_domain.to_string(),
        image_id: disk.image.to_string(),
    };
    loop {
        let r = spm_call(run, "DeleteImage", |mut c| {
            let req = req.clone();
            async move { c.delete_image(req).await.map(drop) }
        })
        .await;
        match r {
            Ok(()) => return,
            Err(s) if s.code() == Code::NotFound => return,
            Err(s) => {
                warn!(op = %run.record.op, %disk, error = %s, "could not delete the image yet; retrying");
                tokio::time::sleep(SPM_RETRY).await;
            }
        }
    }
}

async fn start_rollback(run: &Run, failure: pb::OperationError) -> Result<(), Stop> {
    warn!(op = %run.record.op, reason = %failure.reason, message = %failure.message, "rolling back");
    run.record
        .update(|f| {
            f.failure = Some(failure);
            f.step = Step::Rollback;
        })
        .await?;
    metrics::step(
        "rollback",
        rollback(run).instrument(spans::step("Rollback")),
    )
    .await
}

/// Aborts the copies still running, deletes the destination (never the source) and ends the flow
/// with its failure.
async fn rollback(run: &Run) -> Result<(), Stop> {
    run.abandon.send_replace(true);
    let flow = run.record.get().await;
    for v in &flow.volumes {
        if let CopyState::Copying(attempt) = v.copy {
            let _ = run
                .engine
                .clients
                .tracker()
                .abort_job(pb::AbortJobRequest {
                    job_id: attempt.job.to_string(),
                })
                .await;
        }
    }
    run.engine.failpoint(Failpoint::BeforeRollbackDelete);
    delete_image(run, &flow.destination).await;
    let failure = flow
        .failure
        .clone()
        .unwrap_or_else(machine::cancelled_error);
    finish(run, Some(failure)).await
}

/// Marks the flow done and releases its locks, in one transaction.
async fn finish(run: &Run, failure: Option<pb::OperationError>) -> Result<(), Stop> {
    end_operation(run, failure)
        .instrument(spans::step("EndOperation"))
        .await
}

async fn end_operation(run: &Run, failure: Option<pb::OperationError>) -> Result<(), Stop> {
    let flow = run.record.get().await;
    let failure = failure.or_else(|| {
        (flow.step == Step::Rollback).then(|| {
            flow.failure
                .clone()
                .unwrap_or_else(machine::cancelled_error)
        })
    });
    run.engine.failpoint(Failpoint::BeforeFinish);
    let end = match &failure {
        Some(e) => End::Failed(e.clone()),
        None => End::Succeeded(flow.destination),
    };
    run.record
        .finish(&flow.locked_disks(), end, |f| f.step = Step::Done)
        .await?;
    metrics::operation_ended(flow.kind.to_pb() as i32, failure.as_ref());
    match failure {
        None => info!(op = %run.record.op, "operation succeeded"),
        Some(e) => info!(op = %run.record.op, reason = %e.reason, "operation ended with an error"),
    }
    Ok(())
}

/// Calls the SPM, following the role when it moves; gives up on a verdict (non-transient status) or
/// after two minutes without an SPM.
pub(super) async fn spm_call<T, F, Fut>(run: &Run, what: &str, call: F) -> Result<T, tonic::Status>
where
    F: Fn(crate::clients::HostClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let result = match run.engine.spm_client().await {
            Ok((_, client)) => call(client).await,
            Err(s) => Err(s),
        };
        match result {
            Err(s) if is_transient(&s) && tokio::time::Instant::now() < deadline => {
                warn!(op = %run.record.op, what, error = %s, "SPM call failed; retrying");
                tokio::time::sleep(SPM_RETRY).await;
            }
            Err(s) if is_transient(&s) => {
                error!(op = %run.record.op, what, error = %s, "no SPM answered in time");
                return Err(s);
            }
            other => return other,
        }
    }
}

fn status_error(s: &tonic::Status) -> pb::OperationError {
    pb::OperationError {
        code: s.code() as i32,
        message: s.message().to_string(),
        reason: datapath_api::error::reason(s).unwrap_or_else(|| "STRUCTURE_FAILED".into()),
    }
}
