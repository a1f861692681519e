//! MoveDisk end to end: real scheduler, job-tracker and three host-workers, real qemu-img.
use std::time::Duration;

use datapath_api::pb;

use crate::{
    disks::{
        backing_chain, chain_disk, content_sha256, error_of, follow, moved, own_extents, progress,
        scheduler, start_move,
    },
    harness::{identical, TestCluster},
};

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_snapshot_chain_moves_layer_by_layer_and_the_source_goes() {
    let tc = TestCluster::start(3, |_| {}).await.unwrap();
    move_a_chain(&tc).await;
}

/// The same move with `--copier native` on every host: each layer copied over NBD (a raw base
/// whole, each qcow2 layer on its own over its new backing), the same checks passing.
#[tokio::test]
async fn a_snapshot_chain_moves_with_the_native_copier() {
    let tc = TestCluster::start(3, |c| {
        c.host_worker_extra_args
            .extend(["--copier".to_string(), "native".to_string()])
    })
    .await
    .unwrap();
    move_a_chain(&tc).await;
    assert_eq!(
        tc.log_count("copying natively over NBD"),
        3,
        "one native copy per layer"
    );
}

async fn move_a_chain(tc: &TestCluster) {
    let (a, b) = (tc.domain().await, tc.domain().await);
    let chain = chain_disk(tc, &a, 64 * MIB).await;
    let img = chain[0].image_id.clone();
    let formats = ["raw", "qcow2", "qcow2"];
    let before: Vec<String> = chain
        .iter()
        .zip(formats)
        .map(|(v, f)| content_sha256(&tc.volume_path(v), f))
        .collect();
    let extents: Vec<_> = chain[1..]
        .iter()
        .map(|v| own_extents(&tc.volume_path(v)))
        .collect();
    let src_dir = tc.volume_path(&chain[0]).parent().unwrap().to_path_buf();
    let keep = tempfile::tempdir().unwrap();
    let saved_leaf = keep.path().join("leaf.raw");
    crate::harness::run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            tc.volume_path(&chain[2]).to_str().unwrap(),
            saved_leaf.to_str().unwrap(),
        ],
    )
    .unwrap();

    let name = start_move(tc, &a, &img, &b).await;
    let seen = follow(tc, &name, Duration::from_secs(120)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let seen = seen.unwrap();
    let last = seen.last().unwrap();
    assert!(error_of(last).is_none(), "{last:#?}");
    let p = progress(&seen);
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "progress went down: {p:?}"
    );
    assert_eq!(*p.last().unwrap(), 100, "{p:?}");

    // Every layer is in the new domain, its own data in its own layer, its chain resolved there.
    let new: Vec<_> = chain.iter().map(|v| moved(v, &b)).collect();
    for (i, v) in new.iter().enumerate() {
        assert_eq!(
            content_sha256(&tc.volume_path(v), formats[i]),
            before[i],
            "layer {i}"
        );
        assert_eq!(tc.meta(v, "LEGALITY"), "LEGAL", "layer {i}");
    }
    for (i, v) in new[1..].iter().enumerate() {
        assert_eq!(
            own_extents(&tc.volume_path(v)),
            extents[i],
            "layer {}",
            i + 1
        );
    }
    let leaf_chain = backing_chain(&tc.volume_path(&new[2]));
    assert_eq!(leaf_chain.len(), 3, "{leaf_chain:?}");
    let new_dir = tc.volume_path(&new[0]).parent().unwrap().to_path_buf();
    for f in &leaf_chain {
        let path = new_dir.join(f);
        assert!(
            path.starts_with(&new_dir) && path.exists(),
            "{f} not in {}",
            new_dir.display()
        );
    }
    assert!(identical(&saved_leaf, &tc.volume_path(&new[2])));
    assert!(!src_dir.exists(), "the source image is still there");

    let status = scheduler(tc)
        .await
        .get_disk_status(pb::GetDiskStatusRequest {
            disk: Some(pb::DiskRef {
                storage_domain_id: b.clone(),
                image_id: img.clone(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status(), pb::DiskStatus::Ok);
    assert!(
        tc.keys(&tc.layout().disk_locks()).await.is_empty(),
        "{:?}",
        tc.keys(&tc.layout().disk_locks()).await
    );
}

/// `--simulated-copy-rate` (the scale benchmark's hollow hosts): the move runs every step for real
/// — lease, ILLEGAL mark, commit, job reports, source deletion — but no data byte is copied.
#[tokio::test]
async fn a_simulated_copy_commits_and_reports_but_copies_no_byte() {
    let tc = TestCluster::start(1, |c| {
        c.env
            .push(("DATAPATH_SIMULATED_COPY_RATE".into(), (8 * MIB).to_string()));
    })
    .await
    .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let disk = crate::disks::qcow2_disk(&tc, &a, 8 * MIB, 4).await;
    let name = start_move(&tc, &a, &disk.image_id, &b).await;
    let last = follow(&tc, &name, Duration::from_secs(60))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(error_of(&last).is_none(), "{last:#?}");
    let dst = moved(&disk, &b);
    assert_eq!(tc.meta(&dst, "LEGALITY"), "LEGAL");
    assert_eq!(tc.meta(&dst, "GEN"), "1", "committed once");
    let job_id = &last.metadata.unwrap().volumes[0].job_id;
    let job = tc.job(job_id).await;
    assert_eq!(job.status(), pb::JobStatus::Succeeded);
    assert_eq!(job.progress, 100);
    use std::os::unix::fs::MetadataExt as _;
    let allocated = std::fs::metadata(tc.volume_path(&dst)).unwrap().blocks() * 512;
    assert!(
        allocated < MIB,
        "{allocated} bytes allocated: the 4 MiB of data were copied"
    );
    assert!(!tc.volume_path(&disk).exists(), "the source was deleted");
}
