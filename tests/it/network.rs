//! Network faults (issue 4's scenarios 1–3): every host-worker in its own network namespace; the
//! copying host's link is cut mid-move — briefly, past its lease, or for good — and every move still
//! ends whole, once.
use std::time::{Duration, Instant};

use datapath_api::pb::{FlowVolumeState, JobStatus};

use crate::{
    disks::{chain_disk, follow, start_move},
    harness::{alive, descendants_named, throttle, wait_for, TestCluster},
    invariants::{assert_whole, check_invariants, flow, sums},
};

const MIB: u64 = 1 << 20;
/// The hosts' session TTL in these tests; they fence themselves 1 s before it.
const TTL: Duration = Duration::from_secs(4);

async fn isolated() -> TestCluster {
    TestCluster::start(3, |c| {
        c.isolate_hosts = true;
        c.session_ttl = TTL;
        throttle(c, 4 * MIB);
    })
    .await
    .unwrap()
}

/// The running copy of a move: (host index, job id).
pub(crate) async fn running_copy(tc: &TestCluster, name: &str) -> (usize, String) {
    let (host, job) = wait_for(Duration::from_secs(20), "a running copy", || async {
        let f = flow(tc, name).await?;
        let v = f
            .volumes
            .iter()
            .find(|v| v.state() == FlowVolumeState::Copying)?;
        (v.job_status() == JobStatus::Running).then(|| (v.host_id.clone(), v.job_id.clone()))
    })
    .await
    .unwrap();
    let i = tc.cluster.host_index(&host).unwrap();
    (i, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_shorter_than_the_fencing_deadline_changes_nothing() {
    let tc = isolated().await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let (i, job_id) = running_copy(&tc, &name).await;
    let lab = tc.cluster.network().unwrap();
    lab.cut(i).unwrap();
    // The fault lasts one second, well inside the 3 s before the host would fence itself.
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.restore(i).unwrap();
    let restored = Instant::now();
    let last = follow(&tc, &name, Duration::from_secs(90))
        .await
        .unwrap()
        .pop()
        .unwrap();
    eprintln!(
        "FIGURE scenario 1 (1 s cut): restore to done {:?}",
        restored.elapsed()
    );
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    let volumes = last.metadata.unwrap().volumes;
    assert!(
        volumes.iter().all(|v| v.attempts == 1),
        "copied more than once: {volumes:#?}"
    );
    assert_eq!(tc.job(&job_id).await.status(), JobStatus::Succeeded);
    check_invariants(&tc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_past_the_lease_fences_the_host_and_the_copy_is_redone_elsewhere() {
    let mut tc = isolated().await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let spm = tc.spm().await;
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let (i, job_id) = running_copy(&tc, &name).await;
    assert_ne!(i, spm, "least-loaded put the copy on the SPM");
    let worker = tc.cluster.host_mut(i).pid().unwrap();
    let copier = descendants_named(worker, "qemu-img")[0];
    let leases = tc.keys(&tc.layout().volume_leases()).await;
    let lab = tc.cluster.network().unwrap();
    let cut = Instant::now();
    lab.cut(i).unwrap();
    // The host stops writing before etcd can expire its lease (at the TTL after its last renewal).
    wait_for(TTL, "the cut-off host to kill its copier", || async {
        (!alive(copier)).then_some(())
    })
    .await
    .unwrap();
    let killed = cut.elapsed();
    let lease_gone = wait_for(TTL * 2, "the old lease to expire", || async {
        let now = tc.keys(&tc.layout().volume_leases()).await;
        (!now.iter().any(|k| leases.contains(k))).then(|| cut.elapsed())
    })
    .await
    .unwrap();
    assert!(
        killed < lease_gone,
        "copier killed after {killed:?}, lease gone after {lease_gone:?}"
    );
    // The engine concluded the attempt failed, fenced the volume and copies elsewhere; then the
    // host comes back and marks the job it lost FENCED.
    wait_for(Duration::from_secs(30), "a second attempt", || async {
        let f = flow(&tc, &name).await?;
        f.volumes.iter().any(|v| v.attempts >= 2).then_some(())
    })
    .await
    .unwrap();
    let decided = cut.elapsed();
    lab.restore(i).unwrap();
    let last = follow(&tc, &name, Duration::from_secs(90))
        .await
        .unwrap()
        .pop()
        .unwrap();
    eprintln!(
        "FIGURE scenario 2 (cut past the TTL): copier killed {killed:?}, lease expired \
         {lease_gone:?}, retry placed {decided:?}, done {:?} after the cut",
        cut.elapsed()
    );
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    let stale = wait_for(
        Duration::from_secs(30),
        "the stale job to be marked",
        || async {
            let j = tc.job(&job_id).await;
            (j.status() != JobStatus::Running).then_some(j)
        },
    )
    .await
    .unwrap();
    assert_eq!(stale.status(), JobStatus::Failed, "{stale:?}");
    assert_eq!(stale.error.unwrap().code, "FENCED");
    check_invariants(&tc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_for_good_the_move_completes_on_another() {
    let tc = isolated().await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let spm = tc.spm().await;
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let (i, _) = running_copy(&tc, &name).await;
    assert_ne!(i, spm, "least-loaded put the copy on the SPM");
    let cut = Instant::now();
    tc.cluster.network().unwrap().cut(i).unwrap();
    let decided = wait_for(Duration::from_secs(30), "a second attempt", || async {
        let f = flow(&tc, &name).await?;
        f.volumes
            .iter()
            .any(|v| v.attempts >= 2)
            .then(|| cut.elapsed())
    })
    .await
    .unwrap();
    let last = follow(&tc, &name, Duration::from_secs(90))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let took = cut.elapsed();
    eprintln!(
        "FIGURE scenario 3 (cut for good): retry placed {decided:?}, done {took:?} after the cut"
    );
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    let lost = tc.cluster.host_id(i).to_string();
    let volumes = last.metadata.unwrap().volumes;
    assert!(volumes.iter().all(|v| v.host_id != lost), "{volumes:#?}");
    // TTL, then at most one full copy of the chain (16 MiB layers at 4 MiB/s), plus slack.
    assert!(took < TTL + Duration::from_secs(4 * 3 + 6), "took {took:?}");
    check_invariants(&tc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_from_the_engine_but_not_from_etcd_finishes_its_copy_once() {
    let tc = isolated().await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let (i, job_id) = running_copy(&tc, &name).await;
    // Neither the scheduler nor the job-tracker reach the host any more; etcd still does, so it
    // keeps its session and its lease, and its copy runs on.
    let tracker: std::net::SocketAddr = tc
        .cluster
        .job_tracker_url()
        .split_once("://")
        .map(|(_, a)| a.to_string())
        .unwrap()
        .parse()
        .unwrap();
    let serving: u16 = tc
        .cluster
        .host_url(i)
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let lab = tc.cluster.network().unwrap();
    lab.block(i, tracker, serving).unwrap();
    let blocked = Instant::now();

    // The engine waits while the lease is held, then learns the outcome from the volume itself:
    // lease free, LEGAL, generation + 1. No second copy starts.
    let last = follow(&tc, &name, Duration::from_secs(90))
        .await
        .unwrap()
        .pop()
        .unwrap();
    eprintln!(
        "FIGURE scenario 4 (engine and job-tracker cut off, etcd not): done {:?} after the block",
        blocked.elapsed()
    );
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    let volumes = last.metadata.unwrap().volumes;
    assert!(
        volumes.iter().all(|v| v.attempts == 1),
        "copied twice: {volumes:#?}"
    );
    assert_eq!(
        tc.job(&job_id).await.status(),
        JobStatus::Running,
        "the job's end should not have reached the job-tracker yet"
    );
    // Healed, the host's report lands.
    lab.heal(i).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the job's end to be reported",
        || async { (tc.job(&job_id).await.status() == JobStatus::Succeeded).then_some(()) },
    )
    .await
    .unwrap();
    check_invariants(&tc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_link_on_the_copying_host_the_move_still_ends_whole() {
    let tc = isolated().await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let (i, _) = running_copy(&tc, &name).await;
    // A fifth of its packets lost both ways, for the rest of the move.
    tc.cluster.network().unwrap().lossy(i, 20, false).unwrap();
    let last = follow(&tc, &name, Duration::from_secs(120))
        .await
        .unwrap()
        .pop()
        .unwrap();
    tc.cluster.network().unwrap().heal(i).unwrap();
    assert_whole(&tc, &src, &b, &before, &last).await;
    check_invariants(&tc).await;
}
