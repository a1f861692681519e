//! The scheduler under faults: a cancel mid-move, the scheduler killed at each flow step and
//! restarted, the SPM killed mid-move. Every move must end moved or rolled back, never half.
use std::time::Duration;

use datapath_api::pb::{self, FlowVolumeState, OperationStep};
use nix::sys::signal::Signal;
use prost::Message as _;

use crate::{
    disks::{chain_disk, error_of, follow, moved, scheduler, start_move},
    harness::{throttle, wait_for, TestCluster},
    invariants::{assert_whole, check_invariants, flow, image_dir, sums},
};

const MIB: u64 = 1 << 20;

fn step(f: &pb::Flow) -> OperationStep {
    f.operation
        .as_ref()
        .and_then(|o| o.metadata.as_ref())
        .map(|m| m.step())
        .unwrap_or_default()
}

#[tokio::test]
async fn cancel_mid_move_rolls_back_and_aborts_the_job() {
    let tc = TestCluster::start(3, |c| throttle(c, 4 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 32 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let job = wait_for(Duration::from_secs(20), "a running copy", || async {
        let f = flow(&tc, &name).await?;
        let v = f
            .volumes
            .iter()
            .find(|v| v.state() == FlowVolumeState::Copying)?;
        (v.job_status() == pb::JobStatus::Running).then(|| v.job_id.clone())
    })
    .await
    .unwrap();
    // While it runs the disk is LOCKED by it, with its progress from the job index.
    let disk = pb::DiskRef {
        storage_domain_id: a.clone(),
        image_id: src[0].image_id.clone(),
    };
    let locked = scheduler(&tc)
        .await
        .get_disk_status(pb::GetDiskStatusRequest {
            disk: Some(disk.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(locked.status(), pb::DiskStatus::Locked);
    assert_eq!(locked.operation_name, name);
    assert!((10..100).contains(&locked.progress), "{locked:?}");
    let answer = scheduler(&tc)
        .await
        .cancel_operation(pb::CancelOperationRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert!(answer.metadata.unwrap().cancel_requested);
    let seen = follow(&tc, &name, Duration::from_secs(60)).await.unwrap();
    let last = seen.last().unwrap();
    let err = error_of(last).expect("a cancelled move ends with an error");
    assert_eq!(err.code, tonic::Code::Cancelled as i32, "{err:?}");
    assert!(!assert_whole(&tc, &src, &b, &before, last).await);
    let job = tc
        .tracker()
        .await
        .get_job(pb::GetJobRequest { job_id: job })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.status(), pb::JobStatus::Aborted);
    // Still visible, and the disk is unlocked: it can be moved again.
    let again = scheduler(&tc)
        .await
        .get_operation(pb::GetOperationRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert!(again.done);
    let status = scheduler(&tc)
        .await
        .get_disk_status(pb::GetDiskStatusRequest { disk: Some(disk) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), pb::DiskStatus::Ok);
}

/// Where the scheduler is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    AfterStructure,
    MidCopy,
    BeforeSourceDeletion,
}

/// Adds (or removes) a reader to a disk's lock, as a clone of it holds the disk: the move's source
/// deletion then waits, which makes "before source deletion" a point a test can stop at.
async fn hold_as_reader(tc: &TestCluster, sd: &str, img: &str, reader: &str, hold: bool) {
    let disk = datapath_api::volume::DiskKey::from_pb(
        "disk",
        Some(&pb::DiskRef {
            storage_domain_id: sd.into(),
            image_id: img.into(),
        }),
    )
    .unwrap();
    let key = tc.layout().disk_lock(&disk);
    let mut etcd = tc.etcd.clone();
    let resp = etcd.get(key.clone(), None).await.unwrap();
    let mut lock = resp
        .kvs()
        .first()
        .map(|kv| pb::DiskLock::decode(kv.value()).unwrap())
        .unwrap_or_default();
    lock.readers.retain(|r| r != reader);
    if hold {
        lock.readers.push(reader.to_string());
    }
    etcd.put(key, lock.encode_to_vec(), None).await.unwrap();
}

async fn kill_scheduler_at(point: KillPoint) {
    let mut tc = TestCluster::start(3, |c| throttle(c, 8 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let img = src[0].image_id.clone();
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &img, &b).await;
    let reader = format!("operations/{}", uuid::Uuid::new_v4());
    if matches!(point, KillPoint::BeforeSourceDeletion) {
        hold_as_reader(&tc, &a, &img, &reader, true).await;
    }
    let what = format!("{point:?}");
    wait_for(Duration::from_secs(60), &what, || async {
        let f = flow(&tc, &name).await?;
        let copying = f.volumes.iter().any(|v| {
            v.state() == FlowVolumeState::Copying && v.job_status() == pb::JobStatus::Running
        });
        let hit = match point {
            KillPoint::AfterStructure => step(&f) == OperationStep::CopyData,
            KillPoint::MidCopy => copying,
            // The move waits in its last step for the reader; the source is still there.
            KillPoint::BeforeSourceDeletion => step(&f) == OperationStep::DeleteSource,
        };
        hit.then_some(())
    })
    .await
    .unwrap();
    tc.cluster.scheduler_mut().signal(Signal::SIGKILL).unwrap();
    if matches!(point, KillPoint::BeforeSourceDeletion) {
        assert!(image_dir(&tc, &src[0]).exists(), "deleted under a reader");
        hold_as_reader(&tc, &a, &img, &reader, false).await;
    }
    tc.cluster.restart_scheduler().await.unwrap();
    let seen = follow(&tc, &name, Duration::from_secs(120)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let last = seen.unwrap().pop().unwrap();
    assert!(last.done);
    let moved = assert_whole(&tc, &src, &b, &before, &last).await;
    assert!(
        moved,
        "a resumed move with healthy hosts should finish: {last:#?}"
    );
    check_invariants(&tc).await;
}

#[tokio::test]
async fn scheduler_killed_after_structure_resumes_the_move() {
    kill_scheduler_at(KillPoint::AfterStructure).await;
}

#[tokio::test]
async fn scheduler_killed_mid_copy_resumes_the_move() {
    kill_scheduler_at(KillPoint::MidCopy).await;
}

#[tokio::test]
async fn scheduler_killed_before_source_deletion_resumes_the_move() {
    kill_scheduler_at(KillPoint::BeforeSourceDeletion).await;
}

#[tokio::test]
async fn spm_killed_mid_move_a_new_spm_finishes_it() {
    let mut tc = TestCluster::start(3, |c| throttle(c, 8 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let old_spm = tc.spm().await;
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    wait_for(Duration::from_secs(30), "a running copy", || async {
        let f = flow(&tc, &name).await?;
        f.volumes
            .iter()
            .any(|v| v.job_status() == pb::JobStatus::Running)
            .then_some(())
    })
    .await
    .unwrap();
    tc.cluster
        .host_mut(old_spm)
        .signal(Signal::SIGKILL)
        .unwrap();
    let seen = follow(&tc, &name, Duration::from_secs(120)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let last = seen.unwrap().pop().unwrap();
    let new_spm = tc.cluster.wait_spm().await.unwrap();
    assert_ne!(new_spm, old_spm);
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "the move should finish on the new SPM: {last:#?}"
    );
    check_invariants(&tc).await;
}

#[tokio::test]
async fn a_host_killed_mid_copy_the_copy_is_retried_on_another_and_the_move_finishes() {
    let mut tc = TestCluster::start(3, |c| throttle(c, 4 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let spm = tc.spm().await;
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    // The first copy runs on a host that is not the SPM (least-loaded prefers those).
    let (victim, job) = wait_for(Duration::from_secs(20), "a running copy", || async {
        let f = flow(&tc, &name).await?;
        let v = f
            .volumes
            .iter()
            .find(|v| v.state() == FlowVolumeState::Copying)?;
        (v.job_status() == pb::JobStatus::Running).then(|| (v.host_id.clone(), v.job_id.clone()))
    })
    .await
    .unwrap();
    let i = tc.cluster.host_index(&victim).unwrap();
    assert_ne!(i, spm, "least-loaded put the copy on the SPM");
    tc.cluster.host_mut(i).signal(Signal::SIGKILL).unwrap();

    // Its job never ends (the host is gone for good); the scheduler concludes from the destination
    // once the host's leases expire, and copies again elsewhere.
    let seen = follow(&tc, &name, Duration::from_secs(90)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let last = seen.unwrap().pop().unwrap();
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    let volumes = last.metadata.unwrap().volumes;
    let retried = volumes
        .iter()
        .find(|v| v.attempts == 2)
        .expect("a second attempt");
    assert_ne!(retried.host_id, victim);
    assert_ne!(retried.job_id, job);
    check_invariants(&tc).await;
}

#[tokio::test]
async fn a_copy_that_ended_while_the_scheduler_was_down_and_whose_job_expired_is_concluded() {
    // Ended jobs are kept one second: by the time the scheduler is back, the job record is gone.
    let mut tc = TestCluster::start(3, |c| {
        throttle(c, 8 * MIB);
        c.job_retention = Duration::from_secs(1);
    })
    .await
    .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let (idx, job_id, generation) = wait_for(Duration::from_secs(20), "a running copy", || async {
        let f = flow(&tc, &name).await?;
        let (i, v) = f
            .volumes
            .iter()
            .enumerate()
            .find(|(_, v)| v.state() == FlowVolumeState::Copying)?;
        (v.job_status() == pb::JobStatus::Running)
            .then(|| (i, v.job_id.clone(), v.expected_generation))
    })
    .await
    .unwrap();
    tc.cluster.scheduler_mut().signal(Signal::SIGKILL).unwrap();
    // The copy ends on its own, and retention removes its record.
    let tracker = tc.tracker().await;
    wait_for(Duration::from_secs(30), "the job record to expire", || {
        let mut t = tracker.clone();
        let id = job_id.clone();
        async move {
            let r = t.get_job(pb::GetJobRequest { job_id: id }).await;
            matches!(r, Err(s) if s.code() == tonic::Code::NotFound).then_some(())
        }
    })
    .await
    .unwrap();
    tc.cluster.restart_scheduler().await.unwrap();
    let back = std::time::Instant::now();
    let seen = follow(&tc, &name, Duration::from_secs(90)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let last = seen.unwrap().pop().unwrap();
    eprintln!(
        "FIGURE scenario 5 (job expired while the scheduler was down): restart to done {:?}",
        back.elapsed()
    );
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    // Concluded from the volume (LEGAL at generation + 1), not copied again.
    let v = last
        .metadata
        .unwrap()
        .volumes
        .into_iter()
        .find(|v| v.job_id == job_id)
        .expect("the first attempt's job stands as the volume's copy");
    assert_eq!(v.attempts, 1);
    let dst = moved(&src[idx], &b);
    assert_eq!(tc.meta(&dst, "GEN"), (generation + 1).to_string());
    check_invariants(&tc).await;
}

#[tokio::test]
async fn etcd_restarted_mid_move_the_move_ends_whole() {
    let mut tc = TestCluster::start(3, |c| throttle(c, 8 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    wait_for(Duration::from_secs(20), "a running copy", || async {
        let f = flow(&tc, &name).await?;
        f.volumes
            .iter()
            .any(|v| v.job_status() == pb::JobStatus::Running)
            .then_some(())
    })
    .await
    .unwrap();
    let killed = std::time::Instant::now();
    tc.cluster.etcd_mut().signal(Signal::SIGKILL).unwrap();
    tc.cluster.restart_etcd().await.unwrap();
    let seen = follow(&tc, &name, Duration::from_secs(120)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let last = seen.unwrap().pop().unwrap();
    eprintln!(
        "FIGURE scenario 6 (etcd killed and restarted): done {:?} after the kill, {}",
        killed.elapsed(),
        if error_of(&last).is_none() {
            "moved"
        } else {
            "rolled back"
        }
    );
    assert!(last.done);
    assert_whole(&tc, &src, &b, &before, &last).await;
    // No lease outlives its owner, and every job ended.
    wait_for(Duration::from_secs(10), "no lease left", || async {
        tc.keys(&tc.layout().volume_leases())
            .await
            .is_empty()
            .then_some(())
    })
    .await
    .unwrap();
    let jobs = tc
        .tracker()
        .await
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(
        jobs.iter().all(|j| matches!(
            j.status(),
            pb::JobStatus::Succeeded | pb::JobStatus::Failed | pb::JobStatus::Aborted
        )),
        "{jobs:#?}"
    );
    check_invariants(&tc).await;
}

/// With the leader of a three-member etcd killed, the cluster keeps quorum: the services move their
/// calls to a live member and no session is lost, so no copy fails.
#[tokio::test]
async fn the_etcd_leader_killed_mid_move_the_move_completes_without_a_failure() {
    // A TTL long enough to ride out an etcd election (about 1–2 s here) from any point of the
    // renewal cycle, as the 10 s default does; the 4 s of the other tests leaves as little as 1.7 s.
    let mut tc = TestCluster::start(3, |c| {
        throttle(c, 8 * MIB);
        c.etcd_members = 3;
        c.session_ttl = Duration::from_secs(8);
    })
    .await
    .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    wait_for(Duration::from_secs(20), "a running copy", || async {
        let f = flow(&tc, &name).await?;
        f.volumes
            .iter()
            .any(|v| v.job_status() == pb::JobStatus::Running)
            .then_some(())
    })
    .await
    .unwrap();
    let leader = wait_for(Duration::from_secs(10), "an etcd leader", || async {
        tc.cluster.etcd_leader().await
    })
    .await
    .unwrap();
    let killed = std::time::Instant::now();
    tc.cluster
        .etcd_member_mut(leader)
        .signal(Signal::SIGKILL)
        .unwrap();
    // The test's own reads of etcd go to the members still alive.
    let mut live = tc.cluster.etcd_endpoints();
    live.remove(leader);
    tc.etcd = etcd_client::Client::connect(live, tc.cluster.etcd_options())
        .await
        .unwrap();
    let seen = follow(&tc, &name, Duration::from_secs(120)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let last = seen.unwrap().pop().unwrap();
    eprintln!(
        "FIGURE scenario 6b (etcd leader killed, 3 members): done {:?} after the kill",
        killed.elapsed()
    );
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    let volumes = last.metadata.unwrap().volumes;
    assert!(
        volumes.iter().all(|v| v.attempts == 1),
        "a copy failed: {volumes:#?}"
    );
    check_invariants(&tc).await;
}
