//! The scheduler killed at every exact flow step through its failpoints (`--failpoint`), then
//! restarted without it: every move ends moved, or (when it was rolling back) rolled back — never half.
use std::time::{Duration, Instant};

use datapath_api::pb;

use crate::{
    disks::{chain_disk, follow, scheduler, start_move},
    harness::{throttle, TestCluster},
    invariants::{assert_whole, check_invariants, sums},
};

const MIB: u64 = 1 << 20;

/// Restarts the scheduler with `point` armed (or with none).
async fn arm(tc: &mut TestCluster, point: Option<&str>) {
    let spec = tc.cluster.scheduler_mut().spec_mut();
    spec.env.retain(|(k, _)| k != "DATAPATH_FAILPOINT");
    if let Some(p) = point {
        spec.env.push(("DATAPATH_FAILPOINT".into(), p.into()));
    }
    tc.cluster.restart_scheduler().await.unwrap();
}

/// Waits until the scheduler process has exited (killed by its failpoint).
async fn died(tc: &mut TestCluster, point: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    while tc.cluster.scheduler_mut().is_running() {
        if Instant::now() > until {
            tc.dump_logs();
            panic!("the scheduler never reached failpoint {point}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = tc.cluster.scheduler_mut().log_tail(20);
    assert!(log.contains(point), "died elsewhere:\n{log}");
}

/// Moves a chain with the scheduler dying at `point` (after a cancel when `cancel`), then resumes.
async fn crash_at(point: &str, cancel: bool) {
    let mut tc = TestCluster::start(3, |c| throttle(c, 16 * MIB))
        .await
        .unwrap();
    arm(&mut tc, Some(point)).await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    if cancel {
        scheduler(&tc)
            .await
            .cancel_operation(pb::CancelOperationRequest { name: name.clone() })
            .await
            .unwrap();
    }
    died(&mut tc, point).await;
    arm(&mut tc, None).await;
    let seen = follow(&tc, &name, Duration::from_secs(90)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let last = seen.unwrap().pop().unwrap();
    let moved = assert_whole(&tc, &src, &b, &before, &last).await;
    assert_eq!(moved, !cancel, "{point}: {last:#?}");
    check_invariants(&tc).await;
}

#[tokio::test]
async fn failpoint_before_structure() {
    crash_at("before-structure", false).await;
}

#[tokio::test]
async fn failpoint_after_structure() {
    crash_at("after-structure", false).await;
}

#[tokio::test]
async fn failpoint_after_copy_persisted() {
    crash_at("after-copy-persisted", false).await;
}

#[tokio::test]
async fn failpoint_after_copy_sent() {
    crash_at("after-copy-sent", false).await;
}

#[tokio::test]
async fn failpoint_before_delete_source() {
    crash_at("before-delete-source", false).await;
}

#[tokio::test]
async fn failpoint_after_delete_source() {
    crash_at("after-delete-source", false).await;
}

#[tokio::test]
async fn failpoint_before_finish() {
    crash_at("before-finish", false).await;
}

#[tokio::test]
async fn failpoint_before_rollback_delete() {
    crash_at("before-rollback-delete", true).await;
}
