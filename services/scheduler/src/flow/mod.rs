//! Flows: the persisted state machines behind operations. A flow's every step is written to
//! `flows/<operation_id>` before it acts, so a scheduler killed at any point and restarted (or a
//! standby that wins the election) resumes it and ends it moved or rolled back, never half.
pub mod admission;
mod conclude;
pub mod copy;
pub mod executor;
pub mod failpoint;
mod follow;
pub mod locks;
pub mod machine;
pub mod model;
pub mod placement;
pub mod plan;
pub mod progress;
pub mod retry;
pub mod runner;
mod spans;
pub mod state;
pub mod volume_state;

/// Why a flow runner stopped before its flow ended.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// This scheduler no longer leads: another will resume the flow.
    #[error("scheduler leadership lost")]
    LeadershipLost,
    /// The flow record vanished (deleted by an operator).
    #[error("flow record deleted")]
    Gone,
    /// etcd could not be reached for too long; the runner is restarted.
    #[error(transparent)]
    Coord(#[from] datapath_coord::CoordError),
}
