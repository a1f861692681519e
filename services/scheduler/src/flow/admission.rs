//! Flow admission: at most `--max-starting-flows` flows are in their start at once (the structure
//! made on the SPM, a host placed, the first CopyData sent); the others wait their turn in the
//! order they were accepted. A flow past its start (following its copies, concluding, deleting its
//! source, rolling back) needs no turn, so the work that ends operations never queues behind the
//! work that begins them, and a burst of accepted operations does not crowd etcd and the SPM with
//! thousands of starts at once: MoveDisk answers and job ends keep their latency under any backlog
//! (BENCHMARKS.md, "The control plane with many hosts"). An accepted operation waits in etcd, so
//! the backlog survives a scheduler failover, and a cancel of a waiting flow runs at once.
use std::sync::{Arc, Mutex};

use datapath_api::pb::{self, OperationStep};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::{state::meta, volume_state::CopyState};
use crate::metrics;

/// The turns for starting flows, shared by every runner of this scheduler.
pub struct Admission {
    turns: Arc<Semaphore>,
}

/// A flow's turn, held while it starts; given back on [`Turn::release`] or when dropped.
#[derive(Default)]
pub struct Turn(Mutex<Option<OwnedSemaphorePermit>>);

impl Turn {
    /// The flow has started (or will not): the next waiting flow may start.
    pub fn release(&self) {
        drop(self.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Admission {
    /// At most `max_starting` flows start at once (0 counts as 1).
    pub fn new(max_starting: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(max_starting.max(1))),
        }
    }

    /// Waits for a turn for a flow about to start; a cancel request ends the wait without one (the
    /// rollback of a flow that has not started is cheap and must not wait behind the backlog).
    pub async fn turn(&self, cancel: &mut watch::Receiver<bool>) -> Turn {
        let _waiting = metrics::WaitingForTurn::start();
        let turns = self.turns.clone();
        tokio::select! {
            permit = turns.acquire_owned() => Turn(Mutex::new(permit.ok())),
            () = cancelled(cancel) => Turn::default(),
        }
    }
}

async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether `flow` has not started yet: its structure is still to make, or no copy of it has been
/// sent. Only such a flow waits for a turn; one resumed mid-way never does.
pub fn not_started(flow: &pb::Flow) -> bool {
    let m = meta(flow);
    if m.cancel_requested {
        return false;
    }
    match OperationStep::try_from(m.step) {
        Ok(OperationStep::CloneStructure) => true,
        Ok(OperationStep::CopyData) => flow
            .volumes
            .iter()
            .all(|v| CopyState::of(v) == Ok(CopyState::Pending) && v.attempts == 0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use datapath_api::pb::FlowVolumeState;
    use std::time::Duration;

    use super::*;

    fn flow(step: OperationStep, states: &[FlowVolumeState]) -> pb::Flow {
        pb::Flow {
            operation: Some(pb::Operation {
                metadata: Some(pb::OperationMetadata {
                    step: step as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: states
                .iter()
                .map(|s| pb::FlowVolume {
                    state: *s as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_flow_before_its_first_copy_waits() {
        use FlowVolumeState::*;
        assert!(not_started(&flow(
            OperationStep::CloneStructure,
            &[Pending]
        )));
        assert!(not_started(&flow(
            OperationStep::CopyData,
            &[Pending, Pending]
        )));
        assert!(!not_started(&flow(
            OperationStep::CopyData,
            &[Copied, Pending]
        )));
        assert!(!not_started(&flow(OperationStep::CopyData, &[Copying])));
        assert!(!not_started(&flow(OperationStep::DeleteSource, &[Copied])));
        assert!(!not_started(&flow(OperationStep::Rollback, &[Pending])));
        let mut retried = flow(OperationStep::CopyData, &[Pending]);
        retried.volumes[0].attempts = 1;
        assert!(!not_started(&retried));
        let mut cancelled = flow(OperationStep::CloneStructure, &[Pending]);
        if let Some(m) = cancelled
            .operation
            .as_mut()
            .and_then(|o| o.metadata.as_mut())
        {
            m.cancel_requested = true;
        }
        assert!(!not_started(&cancelled));
    }

    #[tokio::test]
    async fn turns_are_bounded_given_back_and_skipped_by_a_cancel() {
        let admission = Admission::new(1);
        let (_tx, mut never) = watch::channel(false);
        let first = admission.turn(&mut never).await;
        let second = tokio::time::timeout(Duration::from_millis(50), admission.turn(&mut never));
        assert!(
            second.await.is_err(),
            "a second turn while the first is held"
        );

        let (cancel_tx, mut cancel) = watch::channel(false);
        let waiting = tokio::spawn(async move {
            let (_tx, mut never) = watch::channel(false);
            let a = Admission::new(1);
            let _held = a.turn(&mut never).await;
            a.turn(&mut cancel).await.0.into_inner().unwrap().is_none()
        });
        cancel_tx.send_replace(true);
        assert!(
            waiting.await.unwrap(),
            "a cancelled wait ends without a turn"
        );

        first.release();
        let third = tokio::time::timeout(Duration::from_secs(5), admission.turn(&mut never)).await;
        assert!(third.is_ok(), "a released turn is given to the next flow");
    }
}
