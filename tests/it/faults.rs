//! Faults: a host-worker killed mid-copy, a host-worker cut off from etcd mid-copy, restarts.
use std::time::{Duration, Instant};

use datapath_api::pb::{self, JobStatus, Legality, VolumeFormat};
use nix::sys::signal::Signal;

use crate::harness::*;

const MIB: u64 = 1 << 20;
const TTL: Duration = Duration::from_secs(4);

/// Starts a slow copy on host 0 and waits until its qemu-img runs and has written something.
async fn slow_copy(tc: &mut TestCluster) -> (pb::VolumeRef, pb::VolumeRef, String, u32) {
    slow_copy_by(tc, |worker| {
        descendants_named(worker, "qemu-img").first().copied()
    })
    .await
}

/// The native copier's writer under `worker`: the `qemu-nbd` its copier watchdog runs (the
/// source's `qemu-nbd` is the worker's own child).
fn native_writer(worker: u32) -> Option<u32> {
    children(worker)
        .into_iter()
        .filter(|(_, name)| name == "host-worker")
        .flat_map(|(watchdog, _)| children(watchdog))
        .find(|(_, name)| name == "qemu-nbd")
        .map(|(pid, _)| pid)
}

/// [`slow_copy`] with the writer found by `writer`.
async fn slow_copy_by(
    tc: &mut TestCluster,
    writer: impl Fn(u32) -> Option<u32>,
) -> (pb::VolumeRef, pb::VolumeRef, String, u32) {
    let (src, dst) = tc
        .source_and_destination(VolumeFormat::Raw, 128 * MIB, 64)
        .await;
    let job_id = tc.start_copy(0, &src, &dst).await;
    let worker = tc.cluster.host_mut(0).pid().unwrap();
    let qemu = wait_for(Duration::from_secs(20), "the copier to run", || async {
        writer(worker)
    })
    .await
    .unwrap();
    let dst_path = tc.volume_path(&dst);
    let start = file_state(&dst_path);
    wait_for(
        Duration::from_secs(20),
        "the destination to be written",
        || {
            let p = dst_path.clone();
            async move { (file_state(&p) != start).then_some(()) }
        },
    )
    .await
    .unwrap();
    (src, dst, job_id, qemu)
}

fn with_slow_copies(c: &mut dpctl::local::ClusterConfig) {
    c.session_ttl = TTL;
    throttle(c, 8 * MIB);
}

/// [`with_slow_copies`] with `--copier native` (the limit paid from the copy's own bucket).
fn with_slow_native_copies(c: &mut dpctl::local::ClusterConfig) {
    with_slow_copies(c);
    c.host_worker_extra_args
        .extend(["--copier".to_string(), "native".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_worker_killed_mid_copy_takes_its_copier_with_it() {
    let mut tc = TestCluster::start(1, with_slow_copies).await.unwrap();
    let copy = slow_copy(&mut tc).await;
    the_killed_worker_s_writer_dies_with_it(&mut tc, copy).await;
}

/// The same with `--copier native`: the destination's `qemu-nbd` dies with its watchdog, which
/// dies with the worker (and the source's `qemu-nbd` with the worker directly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_worker_killed_mid_copy_takes_its_native_writer_with_it() {
    let mut tc = TestCluster::start(1, with_slow_native_copies)
        .await
        .unwrap();
    let copy = slow_copy_by(&mut tc, native_writer).await;
    the_killed_worker_s_writer_dies_with_it(&mut tc, copy).await;
}

async fn the_killed_worker_s_writer_dies_with_it(
    tc: &mut TestCluster,
    (src, dst, job_id, qemu): (pb::VolumeRef, pb::VolumeRef, String, u32),
) {
    let before = sha256(&tc.volume_path(&src));
    let host_key = tc
        .layout()
        .host(datapath_api::ids::HostId::parse("host_id", tc.cluster.host_id(0)).unwrap());
    assert_eq!(tc.keys(&tc.layout().volume_leases()).await.len(), 1);

    let killed = Instant::now();
    tc.cluster.host_mut(0).signal(Signal::SIGKILL).unwrap();
    wait_for(
        Duration::from_secs(2),
        "the copier to die with its worker",
        || async { (!alive(qemu)).then_some(()) },
    )
    .await
    .unwrap();
    // It stops changing at once: quiet for a second, starting within half a second of the kill.
    let quiet_since = wait_quiet(
        &tc.volume_path(&dst),
        Duration::from_secs(1),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(
        quiet_since.duration_since(killed) < Duration::from_millis(500),
        "still written {:?} after the kill",
        quiet_since - killed
    );
    wait_for(
        TTL + Duration::from_secs(3),
        "the host key and the volume lease to expire",
        || async {
            (tc.keys(&host_key).await.is_empty()
                && tc.keys(&tc.layout().volume_leases()).await.is_empty())
            .then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(tc.meta(&dst, "LEGALITY"), "ILLEGAL");
    assert_eq!(sha256(&tc.volume_path(&src)), before);

    // The job ends FENCED — by the job-tracker once the host's registration has expired, or by the
    // host itself when it is back — and the host never resumes writing.
    tc.cluster.restart_host(0).await.unwrap();
    let ended = wait_for(
        Duration::from_secs(20),
        "the lost job to be marked",
        || async {
            let j = tc.job(&job_id).await;
            (j.status() != JobStatus::Running).then_some(j)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (ended.status(), ended.error.unwrap().code.as_str()),
        (JobStatus::Failed, "FENCED")
    );
    let quiet = file_state(&tc.volume_path(&dst));
    assert_eq!(tc.meta(&dst, "LEGALITY"), "ILLEGAL");
    assert!(
        tc.keys(&tc.layout().volume_leases()).await.is_empty(),
        "the restarted host took the lease again"
    );
    assert_eq!(file_state(&tc.volume_path(&dst)), quiet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_worker_cut_off_from_etcd_fences_itself_before_its_lease_expires() {
    let mut tc = TestCluster::start(1, with_slow_copies).await.unwrap();
    let (src, dst, job_id, qemu) = slow_copy(&mut tc).await;
    let before = sha256(&tc.volume_path(&src));

    let health = health_watch(&tc, &tc.cluster.host_url(0)).await;
    let cut = Instant::now();
    tc.cluster.etcd_mut().signal(Signal::SIGSTOP).unwrap();
    let quiet_since = wait_quiet(&tc.volume_path(&dst), Duration::from_millis(700), TTL * 2).await;
    let serving_while_cut =
        dpctl::local::check_serving(&tc.cluster.host_url(0), tc.cluster.client_tls()).await;
    tc.cluster.etcd_mut().signal(Signal::SIGCONT).unwrap();
    assert!(
        !serving_while_cut.unwrap(),
        "a host without a session lease said SERVING"
    );
    let quiet_since = quiet_since.unwrap();
    assert!(
        quiet_since.duration_since(cut) < TTL,
        "still written {:?} after the cut (TTL {TTL:?})",
        quiet_since - cut
    );
    assert!(!alive(qemu), "qemu-img survived the fencing");
    let log = std::fs::read_to_string(tc.cluster.host_mut(0).log_path()).unwrap();
    assert!(
        log.contains("self-fencing"),
        "the worker did not say it fenced itself"
    );

    // Once etcd is back: a new session, the job failed as FENCED, the lease gone, nothing LEGAL.
    let mut tracker = tc.tracker().await;
    let job = wait_for(Duration::from_secs(30), "the job to end", || {
        let mut t = tracker.clone();
        let id = job_id.clone();
        async move {
            let job = t
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .ok()?
                .into_inner()
                .job?;
            (job.status() != JobStatus::Running && job.status() != JobStatus::Pending)
                .then_some(job)
        }
    })
    .await
    .unwrap();
    assert_eq!(job.status(), JobStatus::Failed);
    assert_eq!(job.error.unwrap().code, "FENCED");
    assert_eq!(tc.meta(&dst, "LEGALITY"), "ILLEGAL");
    assert_eq!(sha256(&tc.volume_path(&src)), before);
    wait_for(TTL * 2, "the lease to go", || async {
        tc.keys(&tc.layout().volume_leases())
            .await
            .is_empty()
            .then_some(())
    })
    .await
    .unwrap();
    let hosts = tracker
        .list_registered_hosts(pb::ListRegisteredHostsRequest {})
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 1, "the host registered again");
    wait_for(Duration::from_secs(10), "SERVING again", || async {
        dpctl::local::check_serving(&tc.cluster.host_url(0), tc.cluster.client_tls())
            .await
            .ok()?
            .then_some(())
    })
    .await
    .unwrap();
    // Health/Watch told its watchers both changes, in order.
    let seen = health.await.unwrap();
    assert_eq!(
        seen,
        ["SERVING", "NOT_SERVING", "SERVING"],
        "Health/Watch sequence"
    );
}

/// Follows `grpc.health.v1.Health/Watch` of the whole server until it has seen SERVING,
/// NOT_SERVING and SERVING again (or 30 s pass); returns the statuses seen, repeats folded.
async fn health_watch(tc: &TestCluster, url: &str) -> tokio::task::JoinHandle<Vec<String>> {
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let channel = tc.channel(url).await;
    let mut client = HealthClient::new(channel);
    let mut stream = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        let mut seen: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < 3 {
            let Ok(Some(Ok(resp))) = tokio::time::timeout_at(deadline, stream.next()).await else {
                break;
            };
            let status = resp.status().as_str_name().to_string();
            if seen.last() != Some(&status) {
                seen.push(status);
            }
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_while_idle_lose_nothing() {
    let mut tc = TestCluster::start(2, |c| c.session_ttl = TTL)
        .await
        .unwrap();
    let img = uuid::Uuid::new_v4().to_string();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = tc
        .volume(&a, &img, VolumeFormat::Cow, 64 * MIB, Legality::Legal)
        .await;
    fill_random(&tc.volume_path(&src), "qcow2", 64 * MIB, 8).unwrap();
    let dst = tc
        .volume(&b, &img, VolumeFormat::Cow, 64 * MIB, Legality::Illegal)
        .await;
    let job_id = uuid::Uuid::new_v4().to_string();
    let follow = follow_job(tc.tracker().await, job_id.clone()).await;
    tc.host(1)
        .await
        .copy_data(copy_request(&job_id, &src, &dst, None))
        .await
        .unwrap();
    assert_eq!(
        follow.await.unwrap().unwrap().last().unwrap().0,
        JobStatus::Succeeded
    );

    let (job_before, a_before, b_before) = (
        tc.job(&job_id).await,
        images(&tc, &a).await,
        images(&tc, &b).await,
    );
    let (src_info, dst_info) = (tc.info(0, &src).await, tc.info(0, &dst).await);
    let ids: Vec<String> = tc.cluster.host_ids();

    tc.cluster.restart_host(0).await.unwrap();
    tc.cluster.restart_host(1).await.unwrap();
    tc.cluster.restart_job_tracker().await.unwrap();

    assert_eq!(
        tc.cluster.host_ids(),
        ids,
        "a restarted host changed its id"
    );
    let mut registered: Vec<String> =
        wait_for(Duration::from_secs(10), "both hosts registered", || async {
            let hosts = tc
                .tracker()
                .await
                .list_registered_hosts(pb::ListRegisteredHostsRequest {})
                .await
                .ok()?
                .into_inner()
                .hosts;
            (hosts.len() == 2).then(|| hosts.into_iter().map(|h| h.host_id).collect())
        })
        .await
        .unwrap();
    registered.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(registered, expected);
    assert_eq!(tc.job(&job_id).await, job_before);
    assert_eq!(images(&tc, &a).await, a_before);
    assert_eq!(images(&tc, &b).await, b_before);
    assert_eq!(tc.info(1, &src).await, src_info);
    assert_eq!(tc.info(1, &dst).await, dst_info);
}

async fn images(tc: &TestCluster, sd: &str) -> Vec<pb::Image> {
    let req = pb::ListImagesRequest {
        storage_domain_id: sd.into(),
        ..Default::default()
    };
    tc.host(0)
        .await
        .list_images(req)
        .await
        .unwrap()
        .into_inner()
        .images
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_stuck_on_a_stalled_etcd_ends_at_the_request_timeout() {
    let mut tc = TestCluster::start(1, |c| {
        c.env.push(("DATAPATH_REQUEST_TIMEOUT".into(), "1s".into()))
    })
    .await
    .unwrap();
    let (src, _) = tc.source_and_destination(VolumeFormat::Raw, MIB, 1).await;
    // A lease on the volume: the host's volume view shows it, and a lease shown is always confirmed
    // from etcd before it is reported (an unleased volume would be answered from the view alone).
    let key = datapath_api::volume::VolumeKey::from_pb("volume", Some(&src)).unwrap();
    let mut etcd = tc.etcd.clone();
    let holder = pb::VolumeLease {
        host_id: uuid::Uuid::new_v4().to_string(),
        job_id: uuid::Uuid::new_v4().to_string(),
        revision: 0,
    };
    etcd.put(
        datapath_coord::Keys::new(tc.cluster.etcd_prefix()).volume_lease(&key),
        prost::Message::encode_to_vec(&holder),
        None,
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(5), "the lease shown", || async {
        tc.info(0, &src).await.lease.map(|_| ())
    })
    .await
    .unwrap();
    tc.cluster.etcd_mut().signal(Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    // Volume info confirms the lease holder from etcd, which no longer answers.
    let result = tc
        .host(0)
        .await
        .get_volume_info(pb::GetVolumeInfoRequest { volume: Some(src) })
        .await;
    let took = started.elapsed();
    tc.cluster.etcd_mut().signal(Signal::SIGCONT).unwrap();
    let err = result.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{err:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}, not at the 1 s timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_host_worker_has_its_copier_killed_before_its_lease_expires() {
    // A stopped worker cannot fence itself; its copier's watchdog kills the copier when the
    // heartbeats stop, before etcd can hand the volume to anyone else.
    let mut tc = TestCluster::start(1, with_slow_copies).await.unwrap();
    let copy = slow_copy(&mut tc).await;
    the_stopped_worker_s_writer_dies_before_its_lease(&mut tc, copy).await;
}

/// The same with `--copier native`: the writer is the destination's `qemu-nbd`, run under the
/// copier watchdog (the per-copy limit slows it, paid from the native copier's own bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_host_worker_has_its_native_writer_killed_before_its_lease_expires() {
    let mut tc = TestCluster::start(1, with_slow_native_copies)
        .await
        .unwrap();
    let copy = slow_copy_by(&mut tc, native_writer).await;
    the_stopped_worker_s_writer_dies_before_its_lease(&mut tc, copy).await;
}

async fn the_stopped_worker_s_writer_dies_before_its_lease(
    tc: &mut TestCluster,
    (_src, dst, job_id, qemu): (pb::VolumeRef, pb::VolumeRef, String, u32),
) {
    let stopped = Instant::now();
    tc.cluster.host_mut(0).signal(Signal::SIGSTOP).unwrap();
    wait_for(TTL, "the copier to be killed", || async {
        (!alive(qemu)).then_some(())
    })
    .await
    .unwrap();
    let quiet_since = wait_quiet(&tc.volume_path(&dst), Duration::from_secs(1), TTL * 2)
        .await
        .unwrap();
    let lease_gone = wait_for(TTL * 2, "the volume lease to expire", || async {
        tc.keys(&tc.layout().volume_leases())
            .await
            .is_empty()
            .then(Instant::now)
    })
    .await
    .unwrap();
    assert!(
        quiet_since < lease_gone,
        "written until {:?} after the stop, lease gone after {:?}",
        quiet_since - stopped,
        lease_gone - stopped
    );
    assert!(
        quiet_since - stopped < TTL * 2 / 3,
        "{:?}",
        quiet_since - stopped
    );

    // Woken up, the worker finds its session lost and never resumes the copy.
    tc.cluster.host_mut(0).signal(Signal::SIGCONT).unwrap();
    let ended = wait_for(Duration::from_secs(20), "the job to end", || async {
        let j = tc.job(&job_id).await;
        (j.status() != JobStatus::Running && j.status() != JobStatus::Pending).then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(ended.status(), JobStatus::Failed, "{ended:?}");
    assert_eq!(tc.meta(&dst, "LEGALITY"), "ILLEGAL");
}
