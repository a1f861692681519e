//! A flow's state machine, apart from what its steps do: which step runs for the step a record is
//! at (a cancel rolls back any step but the source's deletion, which has passed the point of no
//! return), and where each step's outcome leads. The runner (`runner.rs`) persists every move and
//! does the work; this module decides, and is unit-tested on its own.
//!
//! ```text
//! CloneStructure ──ok──▶ CopyData ──copied, move──▶ DeleteSource ──ok──▶ Done
//!       │                   │ └──copied, clone──────────────────────────▶ Done
//!       └─failed─▶ Rollback ◀┴─failed / cancelled        DeleteSource ─failed─▶ Rollback ─▶ Done (error)
//! ```
use datapath_api::pb;

use super::{copy::Outcome, model::Step};

/// What the runner does for a flow at a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `CloneImageGroupVolumesStructure`: create the destination volumes on the SPM.
    Structure,
    /// `CopyImageGroupVolumesData`: copy every volume.
    Copy,
    /// `RemoveSourceImage` (moves only).
    DeleteSource,
    /// Go on rolling back (the record is at `Rollback` already).
    Rollback,
    /// Start rolling back because the operation was cancelled.
    RollBackCancelled,
    /// End the operation (the record is at `Done`, its end not yet written).
    Finish,
}

/// Where a flow goes when a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Persist this step and run it.
    Step(Step),
    /// End the operation successfully.
    Finish,
    /// Roll back with this error.
    Rollback(pb::OperationError),
}

/// The action for a flow whose record is at `step` (a stored step this scheduler does not know
/// never gets here: such a flow is parked at load, `model.rs`); `cancelled`: a cancel was asked.
pub fn action(step: Step, cancelled: bool) -> Action {
    match step {
        Step::Rollback => Action::Rollback,
        Step::Done => Action::Finish,
        // The source's deletion is past the point of no return: the destination is complete.
        Step::DeleteSource => Action::DeleteSource,
        _ if cancelled => Action::RollBackCancelled,
        Step::CloneStructure => Action::Structure,
        Step::CopyData => Action::Copy,
    }
}

/// After the structure step.
pub fn after_structure(result: Result<(), pb::OperationError>) -> Next {
    match result {
        Ok(()) => Next::Step(Step::CopyData),
        Err(e) => Next::Rollback(e),
    }
}

/// After the copy step; a move then deletes its source, a clone is done.
pub fn after_copy(outcome: Outcome, is_move: bool) -> Next {
    match outcome {
        Outcome::Copied if is_move => Next::Step(Step::DeleteSource),
        Outcome::Copied => Next::Finish,
        Outcome::Cancelled => Next::Rollback(cancelled_error()),
        Outcome::Failed(e) => Next::Rollback(e),
    }
}

/// After the source's deletion (an error: a destination found not to show its copy, the source
/// kept; or a cancel while waiting for the source's readers).
pub fn after_delete_source(result: Result<(), pb::OperationError>) -> Next {
    match result {
        Ok(()) => Next::Finish,
        Err(e) => Next::Rollback(e),
    }
}

/// The error of a cancelled operation.
pub fn cancelled_error() -> pb::OperationError {
    pb::OperationError {
        code: tonic::Code::Cancelled as i32,
        message: "the operation was cancelled".into(),
        reason: "CANCELLED".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> pb::OperationError {
        pb::OperationError {
            code: tonic::Code::Aborted as i32,
            message: "x".into(),
            reason: "COPY_FAILED".into(),
        }
    }

    #[test]
    fn each_step_runs_its_action_and_a_cancel_rolls_back_all_but_the_source_deletion() {
        use Step as S;
        let cases = [
            (S::CloneStructure, false, Action::Structure),
            (S::CopyData, false, Action::Copy),
            (S::DeleteSource, false, Action::DeleteSource),
            (S::Rollback, false, Action::Rollback),
            (S::Done, false, Action::Finish),
            (S::CloneStructure, true, Action::RollBackCancelled),
            (S::CopyData, true, Action::RollBackCancelled),
            (S::DeleteSource, true, Action::DeleteSource),
            (S::Rollback, true, Action::Rollback),
            (S::Done, true, Action::Finish),
        ];
        for (step, cancelled, want) in cases {
            assert_eq!(
                action(step, cancelled),
                want,
                "{step:?} cancelled={cancelled}"
            );
        }
    }

    #[test]
    fn outcomes_lead_where_the_diagram_says() {
        assert_eq!(after_structure(Ok(())), Next::Step(Step::CopyData));
        assert_eq!(after_structure(Err(failure())), Next::Rollback(failure()));
        assert_eq!(
            after_copy(Outcome::Copied, true),
            Next::Step(Step::DeleteSource)
        );
        assert_eq!(after_copy(Outcome::Copied, false), Next::Finish);
        assert_eq!(
            after_copy(Outcome::Cancelled, true),
            Next::Rollback(cancelled_error())
        );
        assert_eq!(
            after_copy(Outcome::Failed(failure()), false),
            Next::Rollback(failure())
        );
        assert_eq!(after_delete_source(Ok(())), Next::Finish);
        assert_eq!(
            after_delete_source(Err(failure())),
            Next::Rollback(failure())
        );
    }

    /// Walks a flow through the machine from its first step, as the runner does, and returns the
    /// steps it persisted and how it ended.
    fn walk(
        is_move: bool,
        copy: Outcome,
        delete: Result<(), pb::OperationError>,
    ) -> (Vec<Step>, Next) {
        let mut step = Step::CloneStructure;
        let mut steps = vec![step];
        loop {
            let next = match action(step, false) {
                Action::Structure => after_structure(Ok(())),
                Action::Copy => after_copy(copy.clone(), is_move),
                Action::DeleteSource => after_delete_source(delete.clone()),
                other => panic!("unexpected {other:?}"),
            };
            match next {
                Next::Step(s) => {
                    steps.push(s);
                    step = s;
                }
                end => return (steps, end),
            }
        }
    }

    #[test]
    fn a_move_ends_after_its_source_is_deleted_and_a_clone_after_its_copy() {
        use Step as S;
        assert_eq!(
            walk(true, Outcome::Copied, Ok(())),
            (
                vec![S::CloneStructure, S::CopyData, S::DeleteSource],
                Next::Finish
            )
        );
        assert_eq!(
            walk(false, Outcome::Copied, Ok(())),
            (vec![S::CloneStructure, S::CopyData], Next::Finish)
        );
        assert_eq!(
            walk(true, Outcome::Failed(failure()), Ok(())),
            (
                vec![S::CloneStructure, S::CopyData],
                Next::Rollback(failure())
            )
        );
        assert_eq!(
            walk(true, Outcome::Copied, Err(failure())),
            (
                vec![S::CloneStructure, S::CopyData, S::DeleteSource],
                Next::Rollback(failure())
            )
        );
    }
}
