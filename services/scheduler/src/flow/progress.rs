//! An operation's progress, as oVirt weighs it: creating the structure is the first 10 %, copying the
//! other 90 % split by each volume's size. Shown progress never goes down (a retried copy starts
//! again from 0, the figure waits for it to catch up).
use super::{
    model::{End, Flow, Step},
    volume_state::CopyState,
};

/// The share of the structure step.
const STRUCTURE: f64 = 10.0;

/// The progress of `flow` from its state, 0 to 100.
pub fn compute(flow: &Flow) -> u32 {
    match flow.step {
        Step::CloneStructure => 0,
        Step::Done if matches!(flow.end, Some(End::Succeeded(_))) => 100,
        Step::DeleteSource => 99,
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
                    let p = if v.copy == CopyState::Copied {
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

/// Refreshes the shown progress and the save time from the flow's state (each volume's line of
/// the public view is made from the volume when it is stored: `model.rs`).
pub fn refresh(flow: &mut Flow) {
    flow.progress = flow.progress.max(compute(flow));
    flow.updated_at = Some(datapath_api::time::now());
}

#[cfg(test)]
mod tests {
    use datapath_api::{
        ids::{ImageId, OperationId, StorageDomainId, VolumeId},
        volume::{DiskKey, VolumeKey},
    };

    use super::*;
    use crate::flow::model::{Kind, Volume};

    fn vol(size: u64, progress: u32, copy: CopyState) -> Volume {
        let key = || VolumeKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
            volume: VolumeId::random(),
        };
        let mut v = Volume::pending(key(), key());
        v.size_bytes = size;
        v.progress = progress;
        v.copy = copy;
        v
    }

    fn flow(step: Step, volumes: Vec<Volume>) -> Flow {
        let d = DiskKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
        };
        let mut f = Flow::new(OperationId::time_ordered(), Kind::MoveDisk, "", d);
        f.step = step;
        f.volumes = volumes;
        f
    }

    #[test]
    fn copy_progress_is_weighted_by_size() {
        let volumes = vec![
            vol(300, 0, CopyState::Copied),
            vol(100, 50, CopyState::Pending),
        ];
        let mut f = flow(Step::CopyData, volumes);
        // 10 + 90 * (300 + 50) / 400 = 88.75
        assert_eq!(compute(&f), 88);
        f.step = Step::CloneStructure;
        assert_eq!(compute(&f), 0);
        f.step = Step::Done;
        assert_eq!(compute(&f), 88, "a failed end is not 100");
        f.end = Some(End::Succeeded(f.destination));
        assert_eq!(compute(&f), 100);
    }

    #[test]
    fn shown_progress_never_goes_down() {
        let mut f = flow(Step::CopyData, vec![vol(100, 80, CopyState::Pending)]);
        refresh(&mut f);
        let first = f.progress;
        f.volumes[0].progress = 0; // a retry starts again
        refresh(&mut f);
        assert_eq!(f.progress, first);
        assert_eq!(first, 82);
    }
}
