//! The fallback of DESIGN's "Monitoring and recovery": when a copy's job record is missing or its
//! host has gone, the destination volume decides how the attempt (started at generation G) ended. A
//! held lease means the copy may still run: wait (woken by a watch of the lease's key). A free lease
//! with generation G + 1 and LEGAL means it committed. A generation above G + 1 means it was fenced
//! already: failed. Anything else is undetermined — an attempt queued on a partitioned host could
//! still start — so the SPM fences the volume (gives it a fresh file and raises its generation past
//! G + 1, under its lease) and then it failed.
//!
//! [`settle`] applies the same rule to what job records report: a SUCCEEDED counts only when the
//! destination shows it (a forged record or a buggy worker must never let the source be deleted),
//! and the end of an attempt whose writer may outlive its report (a FENCED host, say) is decided by
//! the destination, which fences it before any retry.
use std::time::Duration;

use datapath_api::{
    job_error::{class_of, AttemptClass, JobErrorCode},
    pb,
    volume::VolumeKey,
};
use tonic::Code;
use tracing::{info, warn, Instrument as _, Span};

use super::{
    follow::{Ended, JobEnd},
    model::Volume,
    runner::Run,
    spans,
    volume_state::Attempt,
    Stop,
};

/// What an attempt's end means once checked against the destination (see the module header).
pub(super) async fn settle(
    run: &Run,
    v: &Volume,
    a: &Attempt,
    ended: Ended,
) -> Result<JobEnd, Stop> {
    let reported = match ended {
        Ended::Concluded(end) => return Ok(end),
        Ended::Reported(end) => end,
    };
    match &reported {
        JobEnd::Succeeded => match decide_in(run, v, a, spans::verify(a)).await? {
            JobEnd::Succeeded => Ok(JobEnd::Succeeded),
            JobEnd::Failed { message, .. } => {
                warn!(op = %run.record.op, job_id = %a.job, %message, "a job reported success that its destination does not show");
                Ok(JobEnd::failed(
                    JobErrorCode::UnverifiedSuccess,
                    format!(
                        "job {} reported success, but destination volume {} does not show it ({message})",
                        a.job, v.destination.volume
                    ),
                ))
            }
            JobEnd::Aborted => Ok(JobEnd::Aborted),
        },
        JobEnd::Failed { code, .. } if class_of(code) == AttemptClass::Lost => {
            match conclude(run, v, a).await? {
                // It had committed before its host was lost.
                JobEnd::Succeeded => Ok(JobEnd::Succeeded),
                _ => Ok(reported),
            }
        }
        _ => Ok(reported),
    }
}

/// Checks again, right before the source is deleted, that a copied volume's destination shows its
/// copy: generation G + 1, LEGAL, no lease held. `Err` says what it shows instead.
pub(super) async fn still_copied(run: &Run, v: &Volume) -> Result<(), String> {
    let dst = v.destination.to_pb();
    let Some(a) = v.last_attempt else {
        return Err(format!("volume {} has no copy on record", dst.volume_id));
    };
    let info = loop {
        match read_volume(run, &dst).await {
            Ok(info) => break info,
            Err(s) if s.code() == Code::NotFound => {
                return Err(format!("destination volume {} is gone", dst.volume_id))
            }
            Err(s) => {
                warn!(op = %run.record.op, volume = %dst.volume_id, error = %s, "cannot read the destination yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let meta = info.metadata.unwrap_or_default();
    let g = a.expected_generation.saturating_add(1);
    if info.lease.is_some() {
        return Err(format!("destination volume {} is leased", dst.volume_id));
    }
    if decide(&meta, a.expected_generation) != Decision::Succeeded {
        return Err(format!(
            "destination volume {} is at generation {} and {}, not {g} and LEGAL",
            dst.volume_id,
            meta.generation,
            pb::Legality::try_from(meta.legality)
                .unwrap_or_default()
                .as_str_name()
        ));
    }
    Ok(())
}

/// Decides a lost attempt from the destination volume (see the module header); fences it through the
/// SPM when its state is undetermined.
pub(super) async fn conclude(run: &Run, v: &Volume, a: &Attempt) -> Result<JobEnd, Stop> {
    decide_in(run, v, a, spans::conclude(a)).await
}

async fn decide_in(run: &Run, v: &Volume, a: &Attempt, span: Span) -> Result<JobEnd, Stop> {
    decide_from_destination(run, v, a, &span)
        .instrument(span.clone())
        .await
}

async fn decide_from_destination(
    run: &Run,
    v: &Volume,
    a: &Attempt,
    span: &Span,
) -> Result<JobEnd, Stop> {
    let dst = v.destination.to_pb();
    let g = a.expected_generation;
    loop {
        let info = match read_volume(run, &dst).await {
            Ok(info) => info,
            Err(s) if s.code() == Code::NotFound => {
                span.record("datapath.recovery.decision", "destination_missing");
                return Ok(JobEnd::failed(
                    JobErrorCode::DestinationMissing,
                    format!("destination volume {} is gone", dst.volume_id),
                ));
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if info.lease.is_some() {
            wait_lease_released(run, &dst).await;
            continue;
        }
        let meta = info.metadata.unwrap_or_default();
        let decision = decide(&meta, g);
        info!(op = %run.record.op, volume = %dst.volume_id, generation = meta.generation, ?decision, "the destination decides the lost attempt");
        match decision {
            Decision::Succeeded => {
                span.record("datapath.recovery.decision", "committed");
                return Ok(JobEnd::Succeeded);
            }
            Decision::Failed => {
                span.record("datapath.recovery.decision", "already_fenced");
                return Ok(lost(v, a, meta.generation));
            }
            Decision::Fence => match fence(run, &dst, g).await {
                Ok(true) => {
                    span.record("datapath.recovery.decision", "fenced");
                    return Ok(lost(v, a, g + 2));
                }
                Ok(false) => {
                    span.record("datapath.recovery.decision", "committed_before_fence");
                    return Ok(JobEnd::Succeeded);
                }
                Err(s) => {
                    warn!(op = %run.record.op, volume = %dst.volume_id, error = %s, "could not fence the destination yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
}

/// The longest one wait for a destination's lease lasts before the volume is read again (the
/// watch is a wake-up, not a source of truth).
const LEASE_WAIT: Duration = Duration::from_secs(5);

/// Waits (at most [`LEASE_WAIT`]) for the destination's lease to be released or to expire with
/// its holder's session, on a watch of its key; a second when etcd cannot be watched.
async fn wait_lease_released(run: &Run, dst: &pb::VolumeRef) {
    let Ok(volume) = VolumeKey::from_pb("destination", Some(dst)) else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    let released = run.engine.coord.volume_lease_released(&volume);
    match tokio::time::timeout(LEASE_WAIT, released).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => {
            warn!(op = %run.record.op, volume = %dst.volume_id, error = %e, "cannot watch the destination's lease");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// What a free destination says about an attempt that started at generation `g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Generation g + 1 and LEGAL: the copy committed.
    Succeeded,
    /// Generation above g + 1: fenced (or superseded) already.
    Failed,
    /// Anything else: a stale attempt could still commit; fence first.
    Fence,
}

fn decide(meta: &pb::VolumeMetadata, g: u64) -> Decision {
    // A copy placed at the highest generation cannot have committed, and no fence can raise it.
    let Some(committed) = g.checked_add(1) else {
        return Decision::Failed;
    };
    if meta.generation == committed && meta.legality == pb::Legality::Legal as i32 {
        Decision::Succeeded
    } else if meta.generation > committed {
        Decision::Failed
    } else {
        Decision::Fence
    }
}

fn lost(v: &Volume, a: &Attempt, generation: u64) -> JobEnd {
    JobEnd::failed(
        JobErrorCode::CopyLost,
        format!(
            "job {} was lost; destination volume {} is fenced at generation {generation}",
            a.job, v.destination.volume
        ),
    )
}

async fn read_volume(run: &Run, dst: &pb::VolumeRef) -> Result<pb::VolumeInfo, tonic::Status> {
    run.engine.volume_info(dst, "destination").await
}

/// Asks the SPM to fence the destination; returns whether it did (false: the copy had committed).
async fn fence(run: &Run, dst: &pb::VolumeRef, g: u64) -> Result<bool, tonic::Status> {
    let req = pb::FenceVolumeRequest {
        volume: Some(dst.clone()),
        generation: g,
    };
    let resp = super::runner::spm_call(run, "FenceVolume", |mut c| {
        let req = req.clone();
        async move { c.fence_volume(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    info!(op = %run.record.op, volume = %dst.volume_id, fenced = resp.fenced, "destination fenced");
    Ok(resp.fenced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_destination_decides_the_attempt() {
        let meta = |generation, legal: bool| pb::VolumeMetadata {
            generation,
            legality: if legal {
                pb::Legality::Legal
            } else {
                pb::Legality::Illegal
            } as i32,
            ..Default::default()
        };
        assert_eq!(decide(&meta(4, true), 3), Decision::Succeeded);
        assert_eq!(decide(&meta(4, false), 3), Decision::Fence);
        assert_eq!(decide(&meta(3, false), 3), Decision::Fence);
        assert_eq!(decide(&meta(3, true), 3), Decision::Fence);
        assert_eq!(decide(&meta(5, false), 3), Decision::Failed);
        assert_eq!(
            decide(&meta(u64::MAX, true), u64::MAX),
            Decision::Failed,
            "nothing commits past the highest generation"
        );
    }
}
