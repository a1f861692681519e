//! What an attempt's end means (issue 10): a SUCCEEDED job record is not taken at its word — the
//! source goes only once the destination shows the copy — and a copy that fails for a real reason
//! ends the move rolled back with that reason, after attempts that do not burn out at once.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use datapath_api::{ids::JobId, pb};
use prost::Message as _;

use crate::{
    disks::{chain_disk, error_of, follow, moved, qcow2_disk, start_move},
    harness::{run, throttle, wait_for, TestCluster},
    invariants::{assert_whole, check_invariants, flow, sums},
    network::running_copy,
};

const MIB: u64 = 1 << 20;

/// How a test forges the end of a running job.
#[derive(Clone, Copy, Debug)]
enum Forge {
    /// An `UpdateJob` call to the job-tracker in the job's host's name, with that host's
    /// certificate: a buggy or compromised worker.
    UpdateJob,
    /// The job record rewritten in etcd, past the job-tracker.
    EtcdRecord,
}

async fn forge_success(tc: &TestCluster, job_id: &str, how: Forge) {
    let job = tc.job(job_id).await;
    match how {
        Forge::UpdateJob => {
            tc.tracker_as_host(&job.host_id)
                .await
                .update_job(pb::UpdateJobRequest {
                    job_id: job_id.into(),
                    host_id: job.host_id.clone(),
                    status: pb::JobStatus::Succeeded as i32,
                    progress: Some(100),
                    error: None,
                })
                .await
                .expect("the forged UpdateJob is accepted");
        }
        Forge::EtcdRecord => {
            let keys = datapath_coord::keys::Keys::new(tc.cluster.etcd_prefix());
            let key = keys.job(JobId::parse("job_id", job_id).unwrap());
            let mut forged = job;
            forged.set_status(pb::JobStatus::Succeeded);
            forged.progress = 100;
            tc.etcd
                .clone()
                .put(key, forged.encode_to_vec(), None)
                .await
                .unwrap();
        }
    }
}

/// Samples storage every few milliseconds until stopped: records any moment the source image was
/// gone while a destination volume was not LEGAL.
fn watch_source_and_destination(
    tc: &TestCluster,
    src: &[pb::VolumeRef],
    dst_sd: &str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let source_dir = tc.volume_path(&src[0]).parent().unwrap().to_path_buf();
    let metas: Vec<_> = src
        .iter()
        .map(|v| tc.volume_path(&moved(v, dst_sd)).with_extension("meta"))
        .collect();
    let flag = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut bad = Vec::new();
        while !flag.load(Ordering::SeqCst) {
            let legal: Vec<bool> = metas
                .iter()
                .map(|m| std::fs::read_to_string(m).is_ok_and(|t| t.contains("LEGALITY=LEGAL")))
                .collect();
            if !source_dir.exists() && legal.iter().any(|l| !l) {
                bad.push(format!(
                    "source gone while destination legality was {legal:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bad
    });
    (stop, sampler)
}

async fn a_forged_success_does_not_delete_the_source(how: Forge) {
    let tc = TestCluster::start(3, |c| throttle(c, 4 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let (_, job_id) = running_copy(&tc, &name).await;
    // The copy holds its lease: it is truly writing when its success is forged.
    wait_for(Duration::from_secs(10), "the copy's lease", || async {
        (!tc.keys(&tc.layout().volume_leases()).await.is_empty()).then_some(())
    })
    .await
    .unwrap();
    let (stop, sampler) = watch_source_and_destination(&tc, &src, &b);
    forge_success(&tc, &job_id, how).await;
    let forged = Instant::now();
    let last = follow(&tc, &name, Duration::from_secs(120))
        .await
        .unwrap()
        .pop()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let bad = sampler.join().unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    eprintln!(
        "FIGURE forged SUCCEEDED ({how:?}): done {:?} after the forgery",
        forged.elapsed()
    );
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    // The real copy committed; nothing had to be copied twice.
    let volumes = last.metadata.unwrap().volumes;
    assert!(volumes.iter().all(|v| v.attempts == 1), "{volumes:#?}");
    check_invariants(&tc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_forged_through_update_job_waits_for_the_destination() {
    a_forged_success_does_not_delete_the_source(Forge::UpdateJob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_forged_in_etcd_waits_for_the_destination() {
    a_forged_success_does_not_delete_the_source(Forge::EtcdRecord).await;
}

/// Moves disk `img` from `a` to `b` and follows it to its end, which must be a failure; returns the
/// error and how long the move took.
async fn failed_move(
    tc: &TestCluster,
    a: &str,
    img: &str,
    b: &str,
) -> (pb::OperationError, pb::Operation, Duration) {
    let started = Instant::now();
    let name = start_move(tc, a, img, b).await;
    let last = follow(tc, &name, Duration::from_secs(120))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let took = started.elapsed();
    let error = error_of(&last).expect("the move failed").clone();
    (error, last, took)
}

/// A small tmpfs mounted over a directory; unmounted when dropped.
struct SmallFilesystem(std::path::PathBuf);

impl SmallFilesystem {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ],
        )
        .unwrap();
        Self(dir.to_path_buf())
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.0.to_str().unwrap()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_out_of_space_rolls_the_move_back_and_says_so() {
    let tc = TestCluster::start(3, |_| {}).await.unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let images = tc.cluster.storage_root().join(&b).join("images");
    let _full = SmallFilesystem::mount(&images, "8m");
    let src = qcow2_disk(&tc, &a, 64 * MIB, 24).await;
    let before = crate::harness::sha256(&tc.volume_path(&src));
    let (error, last, took) = failed_move(&tc, &a, &src.image_id, &b).await;
    let name = last.name.clone();
    eprintln!("FIGURE destination out of space: rolled back after {took:?}: {error:?}");
    assert_eq!(error.reason, "NO_SPACE", "{error:?}");
    assert!(
        error
            .message
            .contains(&format!("no space left in storage domain {b}")),
        "{error:?}"
    );
    let root = tc.cluster.storage_root().display().to_string();
    assert!(!error.message.contains(&root), "a path in {error:?}");
    let volumes = last.metadata.clone().unwrap().volumes;
    assert_eq!(volumes[0].attempts, 3, "{volumes:#?}");
    // Two pauses (1 s, then 2 s) lie between the three attempts.
    assert!(took >= Duration::from_secs(3), "attempts burnt in {took:?}");
    // The source is intact and usable, the destination gone.
    assert_eq!(crate::harness::sha256(&tc.volume_path(&src)), before);
    assert_eq!(tc.meta(&src, "LEGALITY"), "LEGAL");
    assert!(!tc.volume_path(&moved(&src, &b)).exists());
    // Every job record tells the cause without a path or a debug dump.
    let jobs = tc
        .tracker()
        .await
        .list_jobs(pb::ListJobsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let failed: Vec<_> = jobs.iter().filter_map(|j| j.error.clone()).collect();
    assert_eq!(failed.len(), 3, "{jobs:#?}");
    for e in &failed {
        assert_eq!(e.code, "NO_SPACE", "{e:?}");
        assert!(!e.message.contains(&root), "a path in {e:?}");
        assert!(!e.message.contains("ExitStatus"), "debug output in {e:?}");
    }
    let f = flow(&tc, &name).await.unwrap();
    assert_eq!(f.volumes[0].last_error.as_ref().unwrap().code, "NO_SPACE");
    check_invariants(&tc).await;
}

/// A process that holds an image's write lock (an operator's `qemu-io`, say) until dropped.
struct ImageLockHolder(std::process::Child);

impl ImageLockHolder {
    fn hold(path: &std::path::Path) -> Self {
        let child = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run qemu-io");
        Self(child)
    }
}

impl Drop for ImageLockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Another process holds the source's image lock: every try meets IMAGE_LOCKED, a transient
/// conflict, retried after growing pauses and not counted as an attempt. Released, the copy goes
/// on; held past the retry budget, the move rolls back and says what held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_image_lock_is_retried_within_the_budget_and_not_counted() {
    let budget = Duration::from_secs(6);
    let tc = TestCluster::start(2, |c| {
        c.env
            .push(("DATAPATH_COPY_RETRY_BUDGET".into(), "6s".into()))
    })
    .await
    .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);

    let src = qcow2_disk(&tc, &a, 16 * MIB, 4).await;
    let holder = ImageLockHolder::hold(&tc.volume_path(&src));
    let name = start_move(&tc, &a, &src.image_id, &b).await;
    wait_for(Duration::from_secs(20), "two transient retries", || async {
        let f = flow(&tc, &name).await?;
        (f.volumes[0].transient_retries >= 2).then_some(())
    })
    .await
    .unwrap();
    drop(holder);
    let last = follow(&tc, &name, Duration::from_secs(60))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(error_of(&last).is_none(), "{last:#?}");
    let v = &last.metadata.unwrap().volumes[0];
    assert_eq!(v.attempts, 1, "{v:#?}");
    assert!(v.transient_retries >= 2, "{v:#?}");

    let src = qcow2_disk(&tc, &a, 16 * MIB, 4).await;
    let _held = ImageLockHolder::hold(&tc.volume_path(&src));
    let (error, last, took) = failed_move(&tc, &a, &src.image_id, &b).await;
    eprintln!("FIGURE image lock held for good: rolled back after {took:?}: {error:?}");
    assert_eq!(error.reason, "IMAGE_LOCKED", "{error:?}");
    assert!(
        error.message.contains(&format!(
            "the image of source volume {} is locked by another process",
            src.volume_id
        )),
        "{error:?}"
    );
    assert!(took >= budget, "gave up after {took:?}");
    let v = &last.metadata.unwrap().volumes[0];
    assert_eq!(v.attempts, 0, "a transient conflict was counted: {v:#?}");
    assert!(tc.volume_path(&src).exists(), "the source is gone");
    check_invariants(&tc).await;
}
