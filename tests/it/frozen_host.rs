//! A copying host frozen whole (issue 10): its host-worker, its copier watchdog and its qemu-img
//! stopped together by the cgroup freezer, as a paused VM or a hung kernel stops a real host, and
//! kept frozen past its lease. The stopped qemu-img still holds its descriptor and its image lock on
//! the destination; the engine must fence the attempt with a fresh file, copy elsewhere, and nothing
//! the thawed writer does may reach the volume.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use datapath_api::pb::{self, FlowVolumeState, JobStatus};

use crate::{
    disks::{chain_disk, error_of, follow, moved, qcow2_disk, start_move},
    harness::{alive, descendants_named, run, throttle, wait_for, TestCluster},
    invariants::{assert_whole, check_invariants, flow, sums},
    network::running_copy,
};

const MIB: u64 = 1 << 20;
/// The hosts' session TTL; a frozen host's lease expires this long after its last renewal.
const TTL: Duration = Duration::from_secs(4);

async fn cluster() -> TestCluster {
    TestCluster::start(3, |c| {
        c.session_ttl = TTL;
        throttle(c, 4 * MIB);
    })
    .await
    .unwrap()
}

/// A copy of an image's files, kept as the reference the moved disk is compared with (the move
/// deletes the source).
fn keep_reference(tc: &TestCluster, v: &pb::VolumeRef) -> tempfile::TempDir {
    let reference = tempfile::tempdir().unwrap();
    let dir = tc.volume_path(v).parent().unwrap().to_path_buf();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        std::fs::copy(entry.path(), reference.path().join(entry.file_name())).unwrap();
    }
    reference
}

/// `qemu-img compare` of what a guest sees through two qcow2 tops (their chains resolved).
fn assert_same_content(a: &Path, b: &Path) {
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|e| panic!("{} and {} differ: {e:#}", a.display(), b.display()));
}

/// `qemu-img check` finds no error in a qcow2 volume.
fn assert_clean(path: &Path) {
    let out = run(
        "qemu-img",
        &["check", "-f", "qcow2", path.to_str().unwrap()],
    )
    .unwrap_or_else(|e| panic!("qemu-img check {}: {e:#}", path.display()));
    assert!(out.contains("No errors were found"), "{out}");
}

/// The files the frozen qemu-img `pid` holds open on `volume`'s data: (inode, link count) of each.
fn held_inodes(pid: u32, volume: &pb::VolumeRef) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                let t = target.to_string_lossy();
                t.contains(&volume.storage_domain_id)
                    && t.contains(&volume.volume_id)
                    && !t.contains(".meta")
            })
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| (m.ino(), m.nlink()))
        .collect()
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).unwrap().ino()
}

/// Only each volume's data and metadata remain in an image directory: no fresh or attempt file.
fn assert_only_volumes(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        let stem = name.strip_suffix(".meta").unwrap_or(name);
        assert!(
            uuid::Uuid::parse_str(stem).is_ok(),
            "stray file {name} in {}: {names:?}",
            dir.display()
        );
    }
}

/// Freezes the host running the move's copy once its qemu-img has written a while; returns the
/// host's index, the frozen qemu-img's pid, the volume being copied and when it froze.
async fn freeze_the_copying_host(
    tc: &mut TestCluster,
    name: &str,
) -> (usize, u32, pb::VolumeRef, Instant) {
    let spm = tc.spm().await;
    let (i, _) = running_copy(tc, name).await;
    assert_ne!(i, spm, "least-loaded put the copy on the SPM");
    let worker = tc.cluster.host_mut(i).pid().unwrap();
    let qemu = wait_for(Duration::from_secs(10), "qemu-img to run", || async {
        descendants_named(worker, "qemu-img").first().copied()
    })
    .await
    .unwrap();
    let copying = wait_for(
        Duration::from_secs(20),
        "the copy to be well under way",
        || async {
            let f = flow(tc, name).await?;
            let v = f
                .volumes
                .iter()
                .find(|v| v.state() == FlowVolumeState::Copying && v.progress >= 10)?;
            v.destination.clone()
        },
    )
    .await
    .unwrap();
    let frozen = tc.cluster.freeze_host(i).unwrap();
    assert!(frozen.contains(&qemu), "qemu-img not frozen: {frozen:?}");
    (i, qemu, copying, Instant::now())
}

/// Waits until the volume's copy was retried on another host, and until that retry is writing;
/// returns both times since the freeze.
async fn wait_for_the_retry(
    tc: &TestCluster,
    name: &str,
    frozen_host: usize,
    volume: &pb::VolumeRef,
    frozen: Instant,
) -> (Duration, Duration) {
    let lost = tc.cluster.host_id(frozen_host).to_string();
    let retry = || async {
        let f = flow(tc, name).await?;
        f.volumes
            .into_iter()
            .find(|v| v.destination.as_ref() == Some(volume))
            .filter(|v| v.state() == FlowVolumeState::Copying && v.host_id != lost)
    };
    let placed = wait_for(
        TTL * 6,
        "the retry to be placed on another host",
        || async { retry().await.map(|_| frozen.elapsed()) },
    )
    .await
    .unwrap();
    let writing = wait_for(TTL * 6, "the retry to write", || async {
        let v = retry().await?;
        (v.job_status() == JobStatus::Running && v.progress >= 5).then(|| frozen.elapsed())
    })
    .await
    .unwrap();
    (placed, writing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_frozen_mid_copy_and_thawed_while_the_retry_writes_the_move_completes_elsewhere() {
    let mut tc = cluster().await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = qcow2_disk(&tc, &a, 64 * MIB, 24).await;
    let reference = keep_reference(&tc, &src);
    let name = start_move(&tc, &a, &src.image_id, &b).await;
    let (i, qemu, volume, frozen) = freeze_the_copying_host(&mut tc, &name).await;
    let dst_path = tc.volume_path(&volume);

    let (placed, writing) = wait_for_the_retry(&tc, &name, i, &volume, frozen).await;
    // The fence gave the volume a fresh file: what the frozen qemu-img holds is an unlinked inode,
    // not the one the retry writes.
    let held = held_inodes(qemu, &volume);
    assert!(
        !held.is_empty(),
        "the frozen qemu-img holds no destination file"
    );
    let current = inode(&dst_path);
    for (ino, links) in &held {
        assert_ne!(*ino, current, "the retry writes the frozen writer's file");
        assert_eq!(*links, 0, "the frozen writer's file is still linked");
    }
    let thawed = Instant::now();
    tc.cluster.thaw_host(i).unwrap();
    wait_for(TTL, "the thawed qemu-img to be killed", || async {
        (!alive(qemu)).then_some(())
    })
    .await
    .unwrap();
    let killed = thawed.elapsed();

    let last = follow(&tc, &name, Duration::from_secs(120))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let done = frozen.elapsed();
    eprintln!(
        "FIGURE frozen host, thawed while the retry writes: retry placed {placed:?}, writing \
         {writing:?}, done {done:?} after the freeze; the thawed qemu-img killed {killed:?} after \
         the thaw"
    );
    assert!(error_of(&last).is_none(), "{last:#?}");
    let lost = tc.cluster.host_id(i).to_string();
    let volumes = last.metadata.unwrap().volumes;
    assert!(volumes.iter().all(|v| v.host_id != lost), "{volumes:#?}");
    let dst = moved(&src, &b);
    assert_clean(&tc.volume_path(&dst));
    assert_same_content(
        &reference.path().join(&src.volume_id),
        &tc.volume_path(&dst),
    );
    assert_eq!(tc.meta(&dst, "LEGALITY"), "LEGAL");
    assert!(!tc.volume_path(&src).exists(), "the source remains");
    assert_only_volumes(tc.volume_path(&dst).parent().unwrap());
    check_invariants(&tc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_whose_copying_host_is_thawed_after_the_move_completed_is_not_touched_by_it() {
    let mut tc = cluster().await;
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = chain_disk(&tc, &a, 16 * MIB).await;
    let before = sums(&tc, &src);
    let reference = keep_reference(&tc, &src[2]);
    let name = start_move(&tc, &a, &src[0].image_id, &b).await;
    let (i, qemu, volume, frozen) = freeze_the_copying_host(&mut tc, &name).await;
    let (placed, writing) = wait_for_the_retry(&tc, &name, i, &volume, frozen).await;

    let last = follow(&tc, &name, Duration::from_secs(120))
        .await
        .unwrap()
        .pop()
        .unwrap();
    let done = frozen.elapsed();
    eprintln!(
        "FIGURE frozen host, thawed after the move: retry placed {placed:?}, writing {writing:?}, \
         done {done:?} after the freeze"
    );
    assert!(
        assert_whole(&tc, &src, &b, &before, &last).await,
        "{last:#?}"
    );
    let dst: Vec<pb::VolumeRef> = src.iter().map(|v| moved(v, &b)).collect();
    let files: Vec<PathBuf> = dst.iter().map(|v| tc.volume_path(v)).collect();
    let sums_before_thaw: Vec<String> = files.iter().map(|f| crate::harness::sha256(f)).collect();

    tc.cluster.thaw_host(i).unwrap();
    wait_for(TTL, "the thawed qemu-img to be killed", || async {
        (!alive(qemu)).then_some(())
    })
    .await
    .unwrap();
    // The thawed host fences itself and registers again; by then it has done all it will.
    tc.cluster.wait_host(i).await.unwrap();
    let sums_after: Vec<String> = files.iter().map(|f| crate::harness::sha256(f)).collect();
    assert_eq!(
        sums_after, sums_before_thaw,
        "the thawed host changed the disk"
    );
    for f in &files[1..] {
        assert_clean(f);
    }
    assert_same_content(&reference.path().join(&src[2].volume_id), &files[2]);
    assert_only_volumes(files[0].parent().unwrap());
    check_invariants(&tc).await;
}
