//! One volume's copy within a flow (`CopyImageGroupVolumesData` for one volume): place it on a host,
//! persist the attempt (job id, host, the destination's generation G), send CopyData, follow the job
//! (`follow.rs`), check its end against the destination (`conclude::settle`), and decide what comes
//! next by the end's class (`datapath_api::job_error`):
//! - a transient conflict (an image lock or volume lease still held, a host that did not take the
//!   copy) is retried after a growing pause, not counted, until the retry budget is spent;
//! - a lost attempt or a failure of the copy counts; a failure also waits a growing pause before
//!   the next attempt, so attempts never burn out in a second; after the last one the flow fails
//!   with the last cause.
//!
//! Those rules are decided in `retry.rs`; the volume's state is read and written as a typed
//! [`CopyState`] (`volume_state.rs`).
use std::time::Duration;

use datapath_api::{
    ids::{HostId, JobId},
    job_error::{class_of, AttemptClass, JobErrorCode},
    pb::{self, JobStatus},
};
use tonic::Code;
use tracing::{info, warn, Instrument as _, Span};

use super::{
    super::metrics,
    conclude::settle,
    failpoint::Failpoint,
    follow::{follow, JobEnd},
    model::Volume,
    placement::{place, unplace, Placement},
    retry::Verdict,
    runner::Run,
    spans,
    volume_state::{Attempt, CopyState},
    Stop,
};

/// How a volume's copy ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The destination is LEGAL at its new generation.
    Copied,
    /// Every attempt failed, or the step could not be placed.
    Failed(pb::OperationError),
    /// The flow was cancelled (or another volume failed) before this copy ended.
    Cancelled,
}

/// Copies volume `idx` of the flow, resuming wherever its persisted state says.
pub async fn copy_volume(run: &Run, idx: usize) -> Result<Outcome, Stop> {
    // The attempt placed in this run, whose span the following continues; a resumed attempt gets a
    // new one.
    let mut placed: Option<Span> = None;
    loop {
        let v = run.record.get().await.volumes[idx].clone();
        match v.copy {
            CopyState::Copied => return Ok(Outcome::Copied),
            CopyState::Failed => return Ok(Outcome::Failed(failed(&v))),
            CopyState::Copying(a) => {
                let span = placed.take().unwrap_or_else(|| spans::attempt(&v, &a));
                let ended = follow(run, idx, &v, &a).instrument(span.clone()).await?;
                let end = settle(run, &v, &a, ended).instrument(span.clone()).await?;
                span.record("datapath.copy.outcome", end.name());
                unplace(run, &a.host.to_string(), v.size_bytes).await;
                let outcome = end_attempt(run, idx, &v, &a, end).instrument(span).await?;
                if let Some(outcome) = outcome {
                    return Ok(outcome);
                }
            }
            CopyState::Pending => {
                if run.stopping() {
                    return Ok(Outcome::Cancelled);
                }
                match place(run, &v).await? {
                    Placement::Host(host) => placed = start_attempt(run, idx, &v, host).await?,
                    Placement::Stopped => return Ok(Outcome::Cancelled),
                    Placement::NoHost(message) => {
                        run.record
                            .update(|f| f.volumes[idx].set_copy(CopyState::Failed))
                            .await?;
                        return Ok(Outcome::Failed(pb::OperationError {
                            code: Code::FailedPrecondition as i32,
                            message,
                            reason: "NO_HOST".into(),
                        }));
                    }
                }
            }
        }
    }
}

/// The flow's error when volume `v`'s copy gave up: its reason is the last attempt's code, its
/// message says how many attempts were made and why the last one ended.
fn failed(v: &Volume) -> pb::OperationError {
    let tries = match v.transient_retries {
        0 => format!("{} attempts", v.attempts),
        n => format!("{} attempts and {n} transient retries", v.attempts),
    };
    let last = v.last_error.clone().unwrap_or_else(|| pb::JobError {
        code: JobErrorCode::CopyFailed.to_string(),
        message: "every attempt failed".into(),
    });
    pb::OperationError {
        code: Code::Aborted as i32,
        message: format!(
            "copy of volume {} failed after {tries}: {}: {}",
            v.source.volume, last.code, last.message
        ),
        reason: last.code,
    }
}

/// Reads the destination's generation, persists the attempt, then sends CopyData; returns the
/// attempt's span when it was persisted.
async fn start_attempt(
    run: &Run,
    idx: usize,
    v: &Volume,
    host: pb::Host,
) -> Result<Option<Span>, Stop> {
    let Ok(host_id) = HostId::parse("host_id", &host.host_id) else {
        // A registration edited by hand: that host is tried no more for this volume.
        unplace(run, &host.host_id, v.size_bytes).await;
        let error = pb::JobError {
            code: JobErrorCode::HostUnreachable.to_string(),
            message: format!("host id {:?} is not a host id", host.host_id),
        };
        transient(run, idx, v, &host.host_id, error, false).await?;
        return Ok(None);
    };
    let client = match run.engine.clients.host(&host) {
        Ok(c) => c,
        Err(_) => {
            unplace(run, &host.host_id, v.size_bytes).await;
            return Ok(None);
        }
    };
    let info = client
        .clone()
        .get_volume_info(pb::GetVolumeInfoRequest {
            volume: Some(v.destination.to_pb()),
        })
        .await;
    let generation = match info {
        Ok(r) => r
            .into_inner()
            .volume
            .and_then(|i| i.metadata)
            .map(|m| m.generation),
        Err(s) => {
            warn!(op = %run.record.op, host = %host.host_id, error = %s, "could not read the destination's generation; trying another host");
            unplace(run, &host.host_id, v.size_bytes).await;
            let error = pb::JobError {
                code: JobErrorCode::HostUnreachable.to_string(),
                message: format!("host {} did not answer: {}", host.host_id, s.message()),
            };
            transient(run, idx, v, &host.host_id, error, false).await?;
            return Ok(None);
        }
    };
    let attempt = Attempt {
        job: JobId::random(),
        host: host_id,
        expected_generation: generation.unwrap_or_default(),
    };
    let flow = run
        .record
        .update(|f| {
            let v = &mut f.volumes[idx];
            v.set_copy(CopyState::Copying(attempt));
            v.attempts += 1;
            v.progress = 0;
            v.job_status = JobStatus::Pending;
        })
        .await?;
    let v = &flow.volumes[idx];
    let span = spans::attempt(v, &attempt);
    async {
        info!(op = %run.record.op, job_id = %attempt.job, host = %host.host_id, attempt = v.attempts, "copy placed");
        run.engine.failpoint(Failpoint::AfterCopyPersisted);
        if let Err(s) = send_copy(run, v, &attempt).await {
            // follow() sees the job missing and decides: send again, or ask the destination.
            warn!(op = %run.record.op, job_id = %attempt.job, error = %s, "CopyData was not accepted");
        }
        run.engine.failpoint(Failpoint::AfterCopySent);
        run.started();
    }
    .instrument(span.clone())
    .await;
    Ok(Some(span))
}

/// Sends attempt `a`'s CopyData to its host (idempotent by job id).
pub(super) async fn send_copy(run: &Run, v: &Volume, a: &Attempt) -> Result<(), tonic::Status> {
    let host = run
        .engine
        .host(&a.host.to_string())
        .await
        .map_err(tonic::Status::from)?
        .ok_or_else(|| tonic::Status::unavailable(format!("host {} is not live", a.host)))?;
    let req = pb::CopyDataRequest {
        job_id: a.job.to_string(),
        source: Some(pb::CopyDataEndpoint {
            volume: Some(v.source.to_pb()),
            generation: None,
        }),
        destination: Some(pb::CopyDataEndpoint {
            volume: Some(v.destination.to_pb()),
            generation: Some(a.expected_generation),
        }),
    };
    run.engine.clients.host(&host)?.copy_data(req).await?;
    Ok(())
}

/// Records how attempt `a` ended and waits the pause its class asks for; returns the volume's
/// outcome when it is final.
async fn end_attempt(
    run: &Run,
    idx: usize,
    v: &Volume,
    a: &Attempt,
    end: JobEnd,
) -> Result<Option<Outcome>, Stop> {
    let (code, message) = match end {
        JobEnd::Succeeded => {
            metrics::attempt_ended("succeeded");
            // Saved with the flow's next step (one write less per volume): nothing acts between,
            // and a run resumed before that save follows the ended job and verifies it again.
            run.record
                .stage(|f| {
                    let v = &mut f.volumes[idx];
                    v.set_copy(CopyState::Copied);
                    v.progress = 100;
                    v.job_status = JobStatus::Succeeded;
                    v.transient_since = None;
                })
                .await;
            return Ok(Some(Outcome::Copied));
        }
        JobEnd::Aborted if run.stopping() => return Ok(Some(Outcome::Cancelled)),
        JobEnd::Aborted => (
            JobErrorCode::CopyFailed.to_string(),
            "the job was aborted".to_string(),
        ),
        JobEnd::Failed { code, message } => (code, message),
    };
    let error = pb::JobError { code, message };
    match class_of(&error.code) {
        AttemptClass::Transient => transient(run, idx, v, &a.host.to_string(), error, true).await,
        class => {
            metrics::attempt_ended(match class {
                AttemptClass::Lost => "lost",
                _ => "failed",
            });
            counted(run, idx, v, a, class, error).await
        }
    }
}

/// A try on `host` that met a transient conflict: not counted (`counted_at_start`: the attempt it
/// began as is taken back); retried after a pause while the run of such tries is younger than the
/// budget.
async fn transient(
    run: &Run,
    idx: usize,
    v: &Volume,
    host: &str,
    mut error: pb::JobError,
    counted_at_start: bool,
) -> Result<Option<Outcome>, Stop> {
    let since = v.transient_since.unwrap_or_else(datapath_api::time::now);
    let spent = std::time::SystemTime::try_from(since)
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    let verdict = run
        .engine
        .settings
        .retry_policy()
        .after_transient(v.transient_retries + 1, spent);
    let give_up = verdict == Verdict::GiveUp;
    let job = v.last_attempt.filter(|_| counted_at_start).map(|a| a.job);
    warn!(op = %run.record.op, job_id = ?job, host, code = %error.code, message = %error.message, ?spent, give_up, "copy met a transient conflict");
    metrics::attempt_ended("transient");
    if give_up {
        error.message = format!(
            "{} (still so after {}s of retries; the budget is {}s)",
            error.message,
            spent.as_secs(),
            run.engine.settings.copy_retry_budget.as_secs()
        );
    }
    let by_host = error.code == JobErrorCode::HostUnreachable.as_str();
    let flow = run
        .record
        .update(|f| {
            let v = &mut f.volumes[idx];
            if counted_at_start {
                v.attempts = v.attempts.saturating_sub(1);
            }
            v.transient_retries += 1;
            v.transient_since = Some(since);
            if by_host {
                v.failed_hosts.push(host.to_string());
            }
            not_copied(v, error, give_up);
        })
        .await?;
    match verdict {
        Verdict::GiveUp => Ok(Some(Outcome::Failed(failed(&flow.volumes[idx])))),
        Verdict::Retry(p) => {
            pause(run, p).await;
            Ok(None)
        }
    }
}

/// An attempt that counts: lost (its destination was fenced) or failed for a reason of its own.
async fn counted(
    run: &Run,
    idx: usize,
    v: &Volume,
    a: &Attempt,
    class: AttemptClass,
    error: pb::JobError,
) -> Result<Option<Outcome>, Stop> {
    let verdict = run
        .engine
        .settings
        .retry_policy()
        .after_counted(v.attempts, class);
    let last = verdict == Verdict::GiveUp;
    warn!(op = %run.record.op, job_id = %a.job, host = %a.host, code = %error.code, message = %error.message, ?class, last, "copy attempt failed");
    let flow = run
        .record
        .update(|f| {
            let v = &mut f.volumes[idx];
            v.failed_hosts.push(a.host.to_string());
            v.transient_since = None;
            not_copied(v, error, last);
        })
        .await?;
    match verdict {
        Verdict::GiveUp => Ok(Some(Outcome::Failed(failed(&flow.volumes[idx])))),
        Verdict::Retry(p) => {
            if !p.is_zero() {
                pause(run, p).await;
            }
            Ok(None)
        }
    }
}

/// Records an attempt that ended without a copy: its error, and the volume pending another attempt,
/// or failed when `final_`.
fn not_copied(v: &mut Volume, error: pb::JobError, final_: bool) {
    v.job_status = JobStatus::Failed;
    v.last_error = Some(error);
    v.set_copy(if final_ {
        CopyState::Failed
    } else {
        CopyState::Pending
    });
}

/// Waits `d`, or less if the flow starts stopping.
async fn pause(run: &Run, d: Duration) {
    if run.stopping() {
        return;
    }
    let mut stop = run.stop_signal();
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
