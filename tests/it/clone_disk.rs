//! CloneDisk end to end: a template's volume collapsed into a new disk of the chosen format and
//! allocation, on any host; the template never modified.
use std::time::Duration;

use datapath_api::pb;

use crate::{
    disks::{content_sha256, error_of, follow, scheduler, template},
    harness::{sha256, TestCluster},
};

const MIB: u64 = 1 << 20;

async fn clone(
    tc: &TestCluster,
    tpl: &pb::VolumeRef,
    to: &str,
    format: pb::VolumeFormat,
    allocation: pb::VolumeAllocation,
) -> pb::VolumeRef {
    let op = scheduler(tc)
        .await
        .clone_disk(pb::CloneDiskRequest {
            template_volume: Some(tpl.clone()),
            destination_storage_domain_id: to.into(),
            format: format as i32,
            allocation: allocation as i32,
            ..Default::default()
        })
        .await
        .expect("CloneDisk")
        .into_inner()
        .operation
        .unwrap();
    let seen = follow(tc, &op.name, Duration::from_secs(60)).await;
    if seen.is_err() {
        tc.dump_logs();
    }
    let last = seen.unwrap().pop().unwrap();
    assert!(error_of(&last).is_none(), "{last:#?}");
    let disk = match last.result {
        Some(pb::operation::Result::Response(d)) => d,
        other => panic!("no disk in the result: {other:?}"),
    };
    let vol = &last.metadata.unwrap().volumes[0];
    pb::VolumeRef {
        storage_domain_id: disk.storage_domain_id,
        image_id: disk.image_id,
        volume_id: vol.volume_id.clone(),
    }
}

#[tokio::test]
async fn a_template_clones_into_qcow2_sparse_and_raw_preallocated_and_stays_unchanged() {
    let tc = TestCluster::start(3, |_| {}).await.unwrap();
    clone_both_ways(&tc).await;
}

/// The same clones with `--copier native`: a sparse qcow2 gets only the template's data, a
/// preallocated raw keeps every block (its zeroes written with NBD_CMD_FLAG_NO_HOLE).
#[tokio::test]
async fn a_template_clones_both_ways_with_the_native_copier() {
    let tc = TestCluster::start(3, |c| {
        c.host_worker_extra_args
            .extend(["--copier".to_string(), "native".to_string()])
    })
    .await
    .unwrap();
    clone_both_ways(&tc).await;
    assert_eq!(
        tc.log_count("copying natively over NBD"),
        2,
        "one native copy per clone"
    );
}

async fn clone_both_ways(tc: &TestCluster) {
    let (a, b) = (tc.domain().await, tc.domain().await);
    let capacity = 48 * MIB;
    let tpl = template(tc, &a, capacity).await;
    let tpl_path = tc.volume_path(&tpl);
    let tpl_sum = sha256(&tpl_path);
    let tpl_meta = std::fs::read_to_string(tpl_path.with_extension("meta")).unwrap();

    let cow = clone(
        tc,
        &tpl,
        &b,
        pb::VolumeFormat::Cow,
        pb::VolumeAllocation::Sparse,
    )
    .await;
    let raw = clone(
        tc,
        &tpl,
        &b,
        pb::VolumeFormat::Raw,
        pb::VolumeAllocation::Preallocated,
    )
    .await;

    assert_eq!(content_sha256(&tc.volume_path(&cow), "qcow2"), tpl_sum);
    assert_eq!(sha256(&tc.volume_path(&raw)), tpl_sum);
    assert_eq!(tc.meta(&cow, "FORMAT"), "COW");
    assert_eq!(tc.meta(&cow, "TYPE"), "SPARSE");
    assert_eq!(tc.meta(&raw, "FORMAT"), "RAW");
    assert_eq!(tc.meta(&raw, "TYPE"), "PREALLOCATED");
    for v in [&cow, &raw] {
        assert_eq!(tc.meta(v, "LEGALITY"), "LEGAL");
        assert_eq!(
            tc.meta(v, "PUUID"),
            "",
            "a clone is independent of its template"
        );
    }
    // A qcow2 sparse clone holds data only; a preallocated raw one has every block.
    let allocated = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(p).unwrap().blocks() * 512
    };
    assert!(allocated(&tc.volume_path(&raw)) >= capacity);
    assert!(allocated(&tc.volume_path(&cow)) < capacity);

    assert_eq!(sha256(&tpl_path), tpl_sum, "the template's data changed");
    assert_eq!(
        std::fs::read_to_string(tpl_path.with_extension("meta")).unwrap(),
        tpl_meta,
        "the template's metadata changed"
    );
    assert!(tc.keys(&tc.layout().disk_locks()).await.is_empty());
}

#[tokio::test]
async fn a_cancelled_clone_removes_the_new_disk_and_leaves_the_template() {
    let tc = TestCluster::start(2, |c| crate::harness::throttle(c, 4 * MIB))
        .await
        .unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let tpl = template(&tc, &a, 32 * MIB).await;
    let tpl_sum = sha256(&tc.volume_path(&tpl));
    let new_img = uuid::Uuid::new_v4().to_string();
    let op = scheduler(&tc)
        .await
        .clone_disk(pb::CloneDiskRequest {
            template_volume: Some(tpl.clone()),
            destination_storage_domain_id: b.clone(),
            new_image_id: new_img.clone(),
            format: pb::VolumeFormat::Cow as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    crate::harness::wait_for(Duration::from_secs(20), "the clone's copy", || async {
        (!tc.keys(&tc.layout().volume_leases()).await.is_empty()).then_some(())
    })
    .await
    .unwrap();
    scheduler(&tc)
        .await
        .cancel_operation(pb::CancelOperationRequest {
            name: op.name.clone(),
        })
        .await
        .unwrap();
    let last = follow(&tc, &op.name, Duration::from_secs(60))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        error_of(&last).map(|e| e.reason.as_str()),
        Some("CANCELLED"),
        "{last:#?}"
    );
    let new_dir = tc
        .cluster
        .storage_root()
        .join(&b)
        .join("images")
        .join(&new_img);
    assert!(!new_dir.exists(), "the new disk is still there");
    assert_eq!(sha256(&tc.volume_path(&tpl)), tpl_sum);
    assert_eq!(tc.meta(&tpl, "LEGALITY"), "LEGAL");
    assert!(tc.keys(&tc.layout().disk_locks()).await.is_empty());
}
