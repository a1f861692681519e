//! The fallback of DESIGN's "Monitoring and recovery": when a copy's job record is missing or its
//! host has gone, the destination volume decides how the attempt (started at generation G) ended. A
//! held lease means the copy may still run: wait. A free lease with generation G + 1 and LEGAL means it
//! committed. A generation above G + 1 means it was fenced already: failed. Anything else is
//! undetermined — an attempt queued on a partitioned host could still start — so the SPM fences the
//! volume (raises its generation past G + 1 under its lease) and then it failed.
use std::time::Duration;

use datapath_api::pb;
use tonic::Code;
use tracing::{info, warn, Instrument as _, Span};

use super::{copy::JobEnd, runner::Run, spans, Stop};

/// Decides a lost attempt from the destination volume (see the module header); fences it through the
/// SPM when its state is undetermined.
pub(super) async fn conclude(run: &Run, v: &pb::FlowVolume) -> Result<JobEnd, Stop> {
    let span = spans::conclude(v);
    decide_from_destination(run, v, &span)
        .instrument(span.clone())
        .await
}

async fn decide_from_destination(
    run: &Run,
    v: &pb::FlowVolume,
    span: &Span,
) -> Result<JobEnd, Stop> {
    let dst = v.destination.clone().unwrap_or_default();
    let g = v.expected_generation;
    loop {
        let info = match read_volume(run, &dst).await {
            Ok(info) => info,
            Err(s) if s.code() == Code::NotFound => {
                span.record("datapath.recovery.decision", "destination_missing");
                return Ok(JobEnd::Failed {
                    code: "DESTINATION_MISSING".into(),
                    message: s.message().to_string(),
                });
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if info.lease.is_some() {
            tokio::time::sleep(Duration::from_secs(1)).await;
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
                return Ok(lost(v, meta.generation));
            }
            Decision::Fence => match fence(run, &dst, g).await {
                Ok(true) => {
                    span.record("datapath.recovery.decision", "fenced");
                    return Ok(lost(v, g + 2));
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
    if meta.generation == g + 1 && meta.legality == pb::Legality::Legal as i32 {
        Decision::Succeeded
    } else if meta.generation > g + 1 {
        Decision::Failed
    } else {
        Decision::Fence
    }
}

fn lost(v: &pb::FlowVolume, generation: u64) -> JobEnd {
    JobEnd::Failed {
        code: "COPY_LOST".into(),
        message: format!(
            "job {} was lost; the destination is fenced at generation {generation}",
            v.job_id
        ),
    }
}

async fn read_volume(run: &Run, dst: &pb::VolumeRef) -> Result<pb::VolumeInfo, tonic::Status> {
    let mut client = run
        .engine
        .host_reaching(&dst.storage_domain_id, "destination")
        .await
        .map_err(tonic::Status::from)?;
    let resp = client
        .get_volume_info(pb::GetVolumeInfoRequest {
            volume: Some(dst.clone()),
        })
        .await?;
    Ok(resp.into_inner().volume.unwrap_or_default())
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
    }
}
