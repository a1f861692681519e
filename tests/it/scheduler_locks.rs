//! Disk locks and idempotency end to end: a locked disk refuses a second operation, one request id
//! starts one operation however its retries race, and a template may be moved while a clone reads it
//! (its source is deleted only after the clone, and no new clone starts meanwhile).
use std::{collections::BTreeSet, time::Duration};

use datapath_api::{
    error::{field, reason},
    pb::{self, OperationStep},
};
use futures::future::join_all;
use nix::sys::signal::Signal;
use tonic::{Code, Status};

use crate::{
    disks::{content_sha256, moved, scheduler, template},
    harness::{descendants_named, throttle, wait_for, TestCluster},
    placement::{single_disk, succeeded, wait_hosts_reach},
    scheduler_bad_input::{assert_status, clone_req, disk, move_req, new_id, refused, snapshot},
};

const MIB: u64 = 1 << 20;

/// The names of the keys under `prefix` (from the layout).
async fn key_names(tc: &TestCluster, prefix: String) -> Vec<String> {
    tc.keys(&prefix).await.into_iter().map(|(k, _)| k).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_disk_refuses_another_move_and_one_request_id_starts_one_operation() {
    // 6 MiB at 2 MiB/s: the move runs about three seconds.
    let tc = TestCluster::start(2, |c| throttle(c, 2 * MIB))
        .await
        .unwrap();
    let (a, b, c) = (tc.domain().await, tc.domain().await, tc.domain().await);
    wait_hosts_reach(&tc, &[&a, &b, &c]).await;
    let d = single_disk(&tc, &a, 6 * MIB, 6).await;
    let img = d.image_id.as_str();
    let mut s = scheduler(&tc).await;
    let request_id = new_id();

    let first = s
        .move_disk(move_req(&a, img, &b, &request_id))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let flows = key_names(&tc, tc.layout().flows()).await;
    let locks = key_names(&tc, tc.layout().disk_locks()).await;
    let requests = key_names(&tc, tc.layout().requests()).await;
    assert_eq!((flows.len(), locks.len(), requests.len()), (1, 2, 1));

    // Another move of the locked disk, to the same or another domain: refused, nothing added.
    for to in [&b, &c] {
        let err = s.move_disk(move_req(&a, img, to, "")).await.unwrap_err();
        assert_status(
            "a second move",
            &err,
            Code::FailedPrecondition,
            "DISK_LOCKED",
            "image",
        );
        assert!(err.message().contains(&first.name), "{err:?}");
    }
    let status = s
        .get_disk_status(pb::GetDiskStatusRequest {
            disk: disk(&a, img),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), pb::DiskStatus::Locked);
    assert_eq!(status.operation_name, first.name);

    // The same request again, once and then several times at once: the same operation (AIP-155).
    let again = s
        .move_disk(move_req(&a, img, &b, &request_id))
        .await
        .unwrap();
    assert_eq!(again.into_inner().operation.unwrap().name, first.name);
    let retries = join_all((0..4).map(|_| {
        let mut s = s.clone();
        let req = move_req(&a, img, &b, &request_id);
        async move { s.move_disk(req).await }
    }))
    .await;
    for r in retries {
        let op = r
            .expect("a concurrent retry of the same request")
            .into_inner();
        assert_eq!(op.operation.unwrap().name, first.name);
    }
    assert_eq!(key_names(&tc, tc.layout().flows()).await, flows);
    assert_eq!(key_names(&tc, tc.layout().disk_locks()).await, locks);
    assert_eq!(key_names(&tc, tc.layout().requests()).await, requests);

    let done = succeeded(&tc, &first.name).await;
    // One copy job only: the retries started nothing.
    let jobs = crate::placement::copy_jobs(&tc, &done).await;
    assert_eq!(jobs.len(), 1);
    assert!(tc.keys(&tc.layout().disk_locks()).await.is_empty());

    // After the end: the request id still answers the same (done) operation and starts nothing;
    // cancelling it is refused.
    let before = snapshot(&tc).await;
    let replay = s
        .move_disk(move_req(&a, img, &b, &request_id))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(replay.name, first.name);
    assert!(replay.done);
    assert_eq!(snapshot(&tc).await, before, "a replay changed something");
    let cancel = s
        .cancel_operation(pb::CancelOperationRequest {
            name: first.name.clone(),
        })
        .await;
    let want = (Code::FailedPrecondition, "OPERATION_DONE", "name");
    refused(&tc, &before, "cancel of a done operation", cancel, want).await;
}

/// Sends `n` copies of `req` at once.
async fn at_once(
    tc: &TestCluster,
    n: usize,
    req: pb::MoveDiskRequest,
) -> Vec<Result<tonic::Response<pb::MoveDiskResponse>, Status>> {
    let s = scheduler(tc).await;
    join_all((0..n).map(|_| {
        let (mut s, req) = (s.clone(), req.clone());
        async move { s.move_disk(req).await }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_moves_of_one_disk_start_one_operation() {
    let tc = TestCluster::start(1, |c| throttle(c, 2 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    wait_hosts_reach(&tc, &[&a, &b]).await;
    let (d1, d2) = (
        single_disk(&tc, &a, 2 * MIB, 2).await,
        single_disk(&tc, &a, 2 * MIB, 2).await,
    );

    // Different requests racing for one disk: one wins, the others find it LOCKED (by its source
    // or its destination, whichever lock they read first after the winner took both).
    let results = at_once(&tc, 4, move_req(&a, &d1.image_id, &b, "")).await;
    let (started, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(started.len(), 1, "{started:?} {lost:?}");
    for err in lost.into_iter().map(Result::unwrap_err) {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(reason(&err).as_deref(), Some("DISK_LOCKED"), "{err:?}");
        let f = field(&err).unwrap_or_default();
        assert!(
            ["image", "destination_storage_domain_id"].contains(&f.as_str()),
            "{err:?}"
        );
    }
    assert_eq!(key_names(&tc, tc.layout().flows()).await.len(), 1);
    let first = started[0].as_ref().unwrap().get_ref().operation.clone();
    succeeded(&tc, &first.unwrap().name).await;

    // Retries of one request racing each other (a client that timed out and sent it again while
    // the first was still being answered): every one answers the same operation (AIP-155).
    let request_id = new_id();
    let results = at_once(&tc, 4, move_req(&a, &d2.image_id, &b, &request_id)).await;
    let names: BTreeSet<String> = results
        .into_iter()
        .map(|r| {
            r.expect("a retry of the same request")
                .into_inner()
                .operation
                .unwrap()
                .name
        })
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(key_names(&tc, tc.layout().flows()).await.len(), 2);
    succeeded(&tc, names.first().unwrap()).await;
}

/// The operation `name` now.
async fn operation(tc: &TestCluster, name: &str) -> pb::Operation {
    scheduler(tc)
        .await
        .get_operation(pb::GetOperationRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap()
}

fn step(op: &pb::Operation) -> OperationStep {
    op.metadata.as_ref().map(|m| m.step()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_moves_while_a_clone_of_it_runs() {
    // 8 MiB at 2 MiB/s: each copy of the template takes about four seconds.
    let mut tc = TestCluster::start(2, |c| throttle(c, 2 * MIB))
        .await
        .unwrap();
    let (a, b, c) = (tc.domain().await, tc.domain().await, tc.domain().await);
    wait_hosts_reach(&tc, &[&a, &b, &c]).await;
    let tpl = template(&tc, &a, 8 * MIB).await;
    let tpl_path = tc.volume_path(&tpl);
    let original = content_sha256(&tpl_path, "raw");
    let mut s = scheduler(&tc).await;

    let clone = s
        .clone_disk(clone_req(&tpl, &b))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    // Hold the clone's copy still, so that the move's copy ends first and the move must wait.
    let host = wait_for(
        Duration::from_secs(20),
        "the clone's copy to run",
        || async {
            let op = operation(&tc, &clone.name).await;
            let v = op.metadata?.volumes.first().cloned()?;
            (v.status() == pb::JobStatus::Running).then_some(v.host_id)
        },
    )
    .await
    .unwrap();
    let i = tc.cluster.host_index(&host).unwrap();
    let worker = tc.cluster.host_mut(i).pid().unwrap();
    let copier = wait_for(Duration::from_secs(10), "the clone's qemu-img", || async {
        descendants_named(worker, "qemu-img").first().copied()
    })
    .await
    .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(copier as i32), Signal::SIGSTOP).unwrap();

    let moving = s
        .move_disk(move_req(&a, &tpl.image_id, &c, ""))
        .await
        .expect("a template is moved while a clone reads it")
        .into_inner()
        .operation
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the move to reach its source deletion",
        || async {
            (step(&operation(&tc, &moving.name).await) == OperationStep::DeleteSource).then_some(())
        },
    )
    .await
    .unwrap();
    // It waits there, the source intact, as long as the clone reads it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (m, cl) = (
        operation(&tc, &moving.name).await,
        operation(&tc, &clone.name).await,
    );
    assert!(!m.done && step(&m) == OperationStep::DeleteSource, "{m:#?}");
    assert!(!cl.done, "{cl:#?}");
    assert_eq!(content_sha256(&tpl_path, "raw"), original);
    let status = s
        .get_disk_status(pb::GetDiskStatusRequest {
            disk: disk(&a, &tpl.image_id),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), pb::DiskStatus::Locked);
    assert_eq!(status.operation_name, moving.name);
    // No new clone may start from a template that waits to be deleted (else a stream of clones could
    // keep the move waiting forever).
    let late = s.clone_disk(clone_req(&tpl, &b)).await.unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");
    assert_eq!(
        reason(&late).as_deref(),
        Some("DISK_BEING_DELETED"),
        "{late:?}"
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(copier as i32), Signal::SIGCONT).unwrap();
    let cl = succeeded(&tc, &clone.name).await;
    let m = succeeded(&tc, &moving.name).await;
    let at = |op: &pb::Operation| {
        let t = op.metadata.as_ref().unwrap().updated_at.unwrap();
        (t.seconds, t.nanos)
    };
    assert!(
        at(&cl) <= at(&m),
        "the move ended before the clone it waited for"
    );

    // The clone holds the template's data; the template is whole in its new domain, and gone
    // from the old one.
    let Some(pb::operation::Result::Response(new)) = &cl.result else {
        panic!("{cl:#?}")
    };
    let new = pb::VolumeRef {
        storage_domain_id: new.storage_domain_id.clone(),
        image_id: new.image_id.clone(),
        volume_id: cl.metadata.as_ref().unwrap().volumes[0].volume_id.clone(),
    };
    let format = if tc.meta(&new, "FORMAT") == "COW" {
        "qcow2"
    } else {
        "raw"
    };
    assert_eq!(content_sha256(&tc.volume_path(&new), format), original);
    let there = moved(&tpl, &c);
    assert_eq!(content_sha256(&tc.volume_path(&there), "raw"), original);
    assert_eq!(tc.meta(&there, "LEGALITY"), "LEGAL");
    assert_eq!(tc.meta(&there, "VOLTYPE"), "SHARED");
    assert_eq!(tc.meta(&new, "VOLTYPE"), "LEAF");
    assert!(
        !tpl_path.parent().unwrap().exists(),
        "the template's source is still there"
    );
    assert!(
        tc.keys(&tc.layout().disk_locks()).await.is_empty(),
        "{:?}",
        tc.keys(&tc.layout().disk_locks()).await
    );
}
