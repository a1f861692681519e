//! An operation's progress, as oVirt weighs it: creating the structure is the first 10 %, copying the
//! other 90 % split by each volume's size. Shown progress never goes down (a retried copy starts
//! again from 0, the figure waits for it to catch up).
use datapath_api::pb::{self, OperationStep};

use super::{state::meta_mut, volume_state::CopyState};

/// The share of the structure step.
const STRUCTURE: f64 = 10.0;

/// The progress of `flow` from its state, 0 to 100.
pub fn compute(flow: &pb::Flow, step: OperationStep, succeeded: bool) -> u32 {
    match step {
        OperationStep::Unspecified | OperationStep::CloneStructure => 0,
        OperationStep::Done if succeeded => 100,
        OperationStep::DeleteSource => 99,
        _ => {
            let total: f64 = flow
                .volumes
                .iter()
                .map(|v| v.size_bytes.max(1) as f64)
                .sum();
            let done: f64 = flow
                .volumes
                .iter()
                .map(|v| {
                    let p = if CopyState::of(v) == Ok(CopyState::Copied) {
                        100.0
                    } else {
                        f64::from(v.progress.min(100))
                    };
                    v.size_bytes.max(1) as f64 * p / 100.0
                })
                .sum();
            let share = if total > 0.0 { done / total } else { 0.0 };
            // Stays below 100 until the operation is done.
            ((STRUCTURE + (100.0 - STRUCTURE) * share).floor() as u32).min(99)
        }
    }
}

/// Refreshes the public view (progress, per-volume progress, updated_at) from the flow's state.
pub fn refresh(flow: &mut pb::Flow) {
    let succeeded = matches!(
        flow.operation.as_ref().and_then(|o| o.result.as_ref()),
        Some(pb::operation::Result::Response(_))
    );
    let volumes: Vec<pb::VolumeProgress> = flow
        .volumes
        .iter()
        .map(|v| pb::VolumeProgress {
            volume_id: v
                .destination
                .as_ref()
                .map(|d| d.volume_id.clone())
                .unwrap_or_default(),
            job_id: v.job_id.clone(),
            host_id: v.host_id.clone(),
            progress: if CopyState::of(v) == Ok(CopyState::Copied) {
                100
            } else {
                v.progress
            },
            size_bytes: v.size_bytes,
            status: v.job_status,
            attempts: v.attempts,
            transient_retries: v.transient_retries,
        })
        .collect();
    let snapshot = flow.clone();
    let meta = meta_mut(flow);
    let step = OperationStep::try_from(meta.step).unwrap_or_default();
    meta.progress = meta.progress.max(compute(&snapshot, step, succeeded));
    meta.volumes = volumes;
    meta.updated_at = Some(datapath_api::time::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use datapath_api::pb::FlowVolumeState;

    fn vol(size: u64, progress: u32, state: FlowVolumeState) -> pb::FlowVolume {
        pb::FlowVolume {
            size_bytes: size,
            progress,
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn copy_progress_is_weighted_by_size() {
        let flow = pb::Flow {
            volumes: vec![
                vol(300, 0, FlowVolumeState::Copied),
                vol(100, 50, FlowVolumeState::Copying),
            ],
            ..Default::default()
        };
        // 10 + 90 * (300 + 50) / 400 = 88.75
        assert_eq!(compute(&flow, OperationStep::CopyData, false), 88);
        assert_eq!(compute(&flow, OperationStep::CloneStructure, false), 0);
        assert_eq!(compute(&flow, OperationStep::Done, true), 100);
    }

    #[test]
    fn shown_progress_never_goes_down() {
        let mut flow = pb::Flow {
            volumes: vec![vol(100, 80, FlowVolumeState::Copying)],
            ..Default::default()
        };
        meta_mut(&mut flow).step = OperationStep::CopyData as i32;
        refresh(&mut flow);
        let first = meta_mut(&mut flow).progress;
        flow.volumes[0].progress = 0; // a retry starts again
        refresh(&mut flow);
        assert_eq!(meta_mut(&mut flow).progress, first);
        assert_eq!(first, 82);
    }
}
