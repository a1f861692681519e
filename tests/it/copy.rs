//! Copies that work: through grpcurl with reflection only, through dpctl; idempotent job ids; abort.
use std::time::Duration;

use datapath_api::pb::{self, JobStatus, Legality, VolumeFormat};
use tonic::Code;

use crate::harness::*;

const MIB: u64 = 1 << 20;

/// A 256 MiB qcow2 with 64 MiB of random data in domain `a`, and an empty ILLEGAL destination of the
/// same image in each of `dests`.
async fn source_and_destinations(
    tc: &TestCluster,
    dests: usize,
) -> (pb::VolumeRef, Vec<pb::VolumeRef>) {
    let img = uuid::Uuid::new_v4().to_string();
    let a = tc.domain().await;
    let src = tc
        .volume(&a, &img, VolumeFormat::Cow, 256 * MIB, Legality::Legal)
        .await;
    fill_random(&tc.volume_path(&src), "qcow2", 256 * MIB, 64).unwrap();
    let mut out = Vec::new();
    for _ in 0..dests {
        let b = tc.domain().await;
        out.push(
            tc.volume(&b, &img, VolumeFormat::Cow, 256 * MIB, Legality::Illegal)
                .await,
        );
    }
    (src, out)
}

fn assert_progress_rose_to_100(seen: &[(JobStatus, u32)]) {
    assert_eq!(
        seen.last().map(|s| s.0),
        Some(JobStatus::Succeeded),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(|s| s.1), Some(100), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "progress decreased: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.0 == JobStatus::Running),
        "never seen running: {seen:?}"
    );
}

async fn assert_copied(
    tc: &TestCluster,
    src: &pb::VolumeRef,
    dst: &pb::VolumeRef,
    host: usize,
    job_id: &str,
) {
    assert!(
        identical(&tc.volume_path(src), &tc.volume_path(dst)),
        "qemu-img compare differs"
    );
    let info = tc.info(host, dst).await;
    let meta = info.metadata.unwrap();
    assert_eq!(meta.legality(), Legality::Legal);
    assert_eq!(meta.generation, 1);
    assert!(info.lease.is_none(), "lease left: {:?}", info.lease);
    assert!(tc.keys(&tc.layout().volume_leases()).await.is_empty());
    let job = tc
        .tracker()
        .await
        .get_job(pb::GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.status(), JobStatus::Succeeded);
    assert_eq!(
        job.host_id,
        tc.cluster.host_id(host),
        "the job ran on the host asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_on_the_second_host_through_grpcurl_and_dpctl() {
    let tc = TestCluster::start(2, |c| throttle(c, 128 * MIB))
        .await
        .unwrap();
    let (src, dsts) = source_and_destinations(&tc, 2).await;

    // grpcurl, with nothing but server reflection.
    let job_id = uuid::Uuid::new_v4().to_string();
    let follow = follow_job(tc.tracker().await, job_id.clone()).await;
    let body = serde_json::json!({
        "job_id": job_id,
        "source": {"volume": {"storage_domain_id": src.storage_domain_id, "image_id": src.image_id, "volume_id": src.volume_id}},
        "destination": {"volume": {"storage_domain_id": dsts[0].storage_domain_id, "image_id": dsts[0].image_id, "volume_id": dsts[0].volume_id}, "generation": 0},
    });
    let addr = tc
        .cluster
        .host_url(1)
        .split_once("://")
        .map_or(String::new(), |(_, a)| a.to_string());
    let out = tc
        .grpcurl(&[
            "-d",
            &body.to_string(),
            &addr,
            "datapath.v1.HostWorkerService/CopyData",
        ])
        .unwrap();
    assert!(out.contains("JOB_STATUS_PENDING"), "{out}");
    let seen = follow.await.unwrap().unwrap();
    assert_progress_rose_to_100(&seen);
    assert_copied(&tc, &src, &dsts[0], 1, &job_id).await;

    // dpctl, which follows the job with its own progress display.
    let job_id = uuid::Uuid::new_v4().to_string();
    let follow = follow_job(tc.tracker().await, job_id.clone()).await;
    let vol = |v: &pb::VolumeRef| format!("{}/{}/{}", v.storage_domain_id, v.image_id, v.volume_id);
    let dpctl = dpctl::local::find_binary("dpctl", &dpctl::local::search_dirs(None)).unwrap();
    let out = std::process::Command::new(dpctl)
        .envs(tc.dpctl_env())
        .args([
            "--job-tracker",
            &tc.cluster.job_tracker_url(),
            "--host",
            &tc.cluster.host_url(1),
        ])
        .args([
            "copy-data",
            "--src",
            &vol(&src),
            "--dst",
            &vol(&dsts[1]),
            "--job-id",
            &job_id,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dpctl failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&job_id), "{stdout}");
    assert_progress_rose_to_100(&follow.await.unwrap().unwrap());
    assert_copied(&tc, &src, &dsts[1], 1, &job_id).await;

    // An operator reads the same records straight from etcd.
    let etcd_json = tc
        .etcdctl(&["get", "--prefix", tc.cluster.etcd_prefix(), "-w", "json"])
        .unwrap();
    let mut decode = std::process::Command::new(
        dpctl::local::find_binary("dpctl", &dpctl::local::search_dirs(None)).unwrap(),
    )
    .args(["decode", "--etcd-prefix", tc.cluster.etcd_prefix()])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    use std::io::Write as _;
    decode
        .stdin
        .take()
        .unwrap()
        .write_all(etcd_json.as_bytes())
        .unwrap();
    let out = decode.wait_with_output().unwrap();
    assert!(out.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let job = records
        .iter()
        .find(|r| r["key"].as_str().is_some_and(|k| k.ends_with(&job_id)))
        .expect("the job record");
    assert_eq!(job["value"]["status"], "JOB_STATUS_SUCCEEDED");
    let hosts = records
        .iter()
        .filter(|r| r["key"].as_str().is_some_and(|k| k.contains("/hosts/")))
        .count();
    assert_eq!(hosts, 2, "{records:?}");

    // dpctl's read commands in JSON.
    let dpctl_json = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(
            dpctl::local::find_binary("dpctl", &dpctl::local::search_dirs(None)).unwrap(),
        )
        .envs(tc.dpctl_env())
        .args([
            "--job-tracker",
            &tc.cluster.job_tracker_url(),
            "--host",
            &tc.cluster.host_url(0),
            "-o",
            "json",
        ])
        .args(args)
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "dpctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let jobs = dpctl_json(&["jobs", "list", "--host-id", tc.cluster.host_id(1)]);
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jobId"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&job_id.as_str()), "{jobs}");
    let volumes = dpctl_json(&[
        "volume",
        "list",
        &dsts[1].storage_domain_id,
        &dsts[1].image_id,
    ]);
    assert_eq!(
        volumes["volumes"][0]["metadata"]["legality"], "LEGALITY_LEGAL",
        "{volumes}"
    );
    assert_eq!(
        volumes["volumes"][0]["metadata"]["generation"], "1",
        "{volumes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_id_never_copies_twice() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let (src, dsts) = source_and_destinations(&tc, 2).await;
    let job_id = uuid::Uuid::new_v4().to_string();
    let follow = follow_job(tc.tracker().await, job_id.clone()).await;
    let req = copy_request(&job_id, &src, &dsts[0], Some(0));
    let first = tc
        .host(0)
        .await
        .copy_data(req.clone())
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let again = tc
        .host(0)
        .await
        .copy_data(req.clone())
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(again.job_id, first.job_id);
    assert_progress_rose_to_100(&follow.await.unwrap().unwrap());

    // Sent again after it ended: the same job comes back and the volume is not copied again.
    let after = tc
        .host(0)
        .await
        .copy_data(req)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(after.status(), JobStatus::Succeeded);
    assert_eq!(
        tc.info(0, &dsts[0]).await.metadata.unwrap().generation,
        1,
        "a second copy ran"
    );

    // The same id for another copy is refused, and nothing starts.
    let other = copy_request(&job_id, &src, &dsts[1], None);
    let err = tc.host(0).await.copy_data(other).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(
        datapath_api::error::reason(&err).as_deref(),
        Some("JOB_EXISTS")
    );
    assert_eq!(tc.meta(&dsts[1], "GEN"), "0");
    assert!(tc
        .host(0)
        .await
        .list_host_jobs(pb::ListHostJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_copy_leaves_the_destination_illegal_and_the_source_untouched() {
    let tc = TestCluster::start(1, |c| throttle(c, 16 * MIB))
        .await
        .unwrap();
    let (src, dsts) = source_and_destinations(&tc, 1).await;
    let before = sha256(&tc.volume_path(&src));
    let job_id = uuid::Uuid::new_v4().to_string();
    let follow = follow_job(tc.tracker().await, job_id.clone()).await;
    tc.host(0)
        .await
        .copy_data(copy_request(&job_id, &src, &dsts[0], None))
        .await
        .unwrap();
    let mut tracker = tc.tracker().await;
    wait_for(Duration::from_secs(30), "the copy to make progress", || {
        let mut t = tracker.clone();
        let id = job_id.clone();
        async move {
            let job = t
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .ok()?
                .into_inner()
                .job?;
            (job.status() == JobStatus::Running && job.progress >= 2).then_some(())
        }
    })
    .await
    .unwrap();
    tracker
        .abort_job(pb::AbortJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap();
    let seen = follow.await.unwrap().unwrap();
    assert_eq!(seen.last().unwrap().0, JobStatus::Aborted, "{seen:?}");
    assert!(seen.last().unwrap().1 < 100, "{seen:?}");
    assert_eq!(tc.meta(&dsts[0], "LEGALITY"), "ILLEGAL");
    assert_eq!(tc.meta(&dsts[0], "GEN"), "0");
    wait_for(
        Duration::from_secs(5),
        "the lease to be released",
        || async {
            tc.keys(&tc.layout().volume_leases())
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(sha256(&tc.volume_path(&src)), before, "the source changed");
    assert_eq!(tc.meta(&src, "LEGALITY"), "LEGAL");
}
