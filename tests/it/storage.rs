//! Storage verbs: chains, listings, volume info, deleting images, and copying a chain layer by layer
//! (each destination layer backed by the copied layer below, as a disk move does it).
use std::time::Duration;

use datapath_api::pb::{self, JobStatus, Legality, VolumeFormat, VolumeRole};
use tonic::Code;

use crate::harness::*;

const MIB: u64 = 1 << 20;

async fn child(tc: &TestCluster, parent: &pb::VolumeRef, legality: Legality) -> pb::VolumeRef {
    let volume = pb::VolumeRef {
        volume_id: uuid::Uuid::new_v4().to_string(),
        ..parent.clone()
    };
    tc.spm_host()
        .await
        .create_volume(pb::CreateVolumeRequest {
            volume: Some(volume.clone()),
            format: VolumeFormat::Cow as i32,
            parent_volume_id: parent.volume_id.clone(),
            legality: legality as i32,
            ..Default::default()
        })
        .await
        .expect("create child volume");
    volume
}

/// Writes distinct random data into `layer` through qemu-io, leaving what is below visible elsewhere.
fn write_layer(tc: &TestCluster, layer: &pb::VolumeRef, offset_mib: u64) {
    let path = tc.volume_path(layer);
    let pattern = format!(
        "write -P 0x{:02x} {}M 4M",
        (offset_mib % 200) + 17,
        offset_mib
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", &pattern, path.to_str().unwrap()],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_is_listed_base_first_and_copied_layer_by_layer() {
    let tc = TestCluster::start(2, |_| {}).await.unwrap();
    let img = uuid::Uuid::new_v4().to_string();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let base = tc
        .volume(&a, &img, VolumeFormat::Raw, 128 * MIB, Legality::Legal)
        .await;
    fill_random(&tc.volume_path(&base), "raw", 128 * MIB, 16).unwrap();
    let mid = child(&tc, &base, Legality::Legal).await;
    write_layer(&tc, &mid, 8);
    let top = child(&tc, &mid, Legality::Legal).await;
    write_layer(&tc, &top, 40);

    // Listed base first, across pages of one.
    let (mut order, mut token) = (Vec::new(), String::new());
    loop {
        let req = pb::ListVolumesRequest {
            storage_domain_id: a.clone(),
            image_id: img.clone(),
            page_size: 1,
            page_token: token,
        };
        let resp = tc
            .host(1)
            .await
            .list_volumes(req)
            .await
            .unwrap()
            .into_inner();
        order.extend(
            resp.volumes
                .into_iter()
                .map(|v| v.volume.unwrap().volume_id),
        );
        if resp.next_page_token.is_empty() {
            break;
        }
        token = resp.next_page_token;
    }
    assert_eq!(
        order,
        [
            base.volume_id.clone(),
            mid.volume_id.clone(),
            top.volume_id.clone()
        ]
    );
    let info = tc.info(1, &top).await.metadata.unwrap();
    assert_eq!(
        (
            info.format(),
            info.role(),
            info.parent_volume_id.as_str(),
            info.capacity_bytes
        ),
        (
            VolumeFormat::Cow,
            VolumeRole::Leaf,
            mid.volume_id.as_str(),
            128 * MIB
        )
    );

    // The same structure in domain b, ILLEGAL, then one copy per layer on alternating hosts.
    let dst_base = pb::VolumeRef {
        storage_domain_id: b.clone(),
        ..base.clone()
    };
    tc.spm_host()
        .await
        .create_volume(pb::CreateVolumeRequest {
            volume: Some(dst_base.clone()),
            format: VolumeFormat::Raw as i32,
            capacity_bytes: 128 * MIB,
            legality: Legality::Illegal as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let dst_mid = pb::VolumeRef {
        storage_domain_id: b.clone(),
        ..mid.clone()
    };
    let dst_top = pb::VolumeRef {
        storage_domain_id: b.clone(),
        ..top.clone()
    };
    for (parent, v) in [(&dst_base, &dst_mid), (&dst_mid, &dst_top)] {
        tc.spm_host()
            .await
            .create_volume(pb::CreateVolumeRequest {
                volume: Some(v.clone()),
                format: VolumeFormat::Cow as i32,
                parent_volume_id: parent.volume_id.clone(),
                legality: Legality::Illegal as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for (i, (src, dst)) in [(&base, &dst_base), (&mid, &dst_mid), (&top, &dst_top)]
        .into_iter()
        .enumerate()
    {
        let job_id = uuid::Uuid::new_v4().to_string();
        let follow = follow_job(tc.tracker().await, job_id.clone()).await;
        tc.host(i % 2)
            .await
            .copy_data(copy_request(&job_id, src, dst, Some(0)))
            .await
            .unwrap();
        assert_eq!(
            follow.await.unwrap().unwrap().last().unwrap().0,
            JobStatus::Succeeded
        );
    }
    // Every layer identical with its chain resolved, and each destination layer holds only its own
    // data (its allocation is its source's, not the whole disk's).
    for (src, dst) in [(&base, &dst_base), (&mid, &dst_mid), (&top, &dst_top)] {
        assert!(
            identical(&tc.volume_path(src), &tc.volume_path(dst)),
            "layer {} differs",
            src.volume_id
        );
        assert_eq!(tc.meta(dst, "LEGALITY"), "LEGAL");
    }
    let top_alloc = tc.info(0, &dst_top).await.allocated_bytes;
    assert!(
        top_alloc < 16 * MIB,
        "the top layer holds {top_alloc} bytes: its backing chain was collapsed into it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_deleted_only_when_no_job_writes_it() {
    let tc = TestCluster::start(1, |c| throttle(c, 4 * MIB))
        .await
        .unwrap();
    let (src, dst) = tc
        .source_and_destination(VolumeFormat::Raw, 64 * MIB, 32)
        .await;
    let (b, img) = (dst.storage_domain_id.clone(), dst.image_id.clone());
    let job_id = tc.start_copy(0, &src, &dst).await;
    tc.wait_for_lease().await;
    let delete = |sd: &str| pb::DeleteImageRequest {
        storage_domain_id: sd.into(),
        image_id: img.clone(),
    };
    let err = tc
        .spm_host()
        .await
        .delete_image(delete(&b))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), datapath_api::error::reason(&err).as_deref()),
        (Code::FailedPrecondition, Some("IMAGE_IN_USE"))
    );
    assert!(tc.volume_path(&dst).exists());

    tc.tracker()
        .await
        .abort_job(pb::AbortJobRequest {
            job_id: job_id.clone(),
        })
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the job to end and its lease to go",
        || async {
            let req = pb::GetJobRequest {
                job_id: job_id.clone(),
            };
            let job = tc
                .tracker()
                .await
                .get_job(req)
                .await
                .ok()?
                .into_inner()
                .job?;
            (job.status() == JobStatus::Aborted
                && tc.keys(&tc.layout().volume_leases()).await.is_empty())
            .then_some(())
        },
    )
    .await
    .unwrap();
    tc.spm_host().await.delete_image(delete(&b)).await.unwrap();
    assert!(!tc.volume_path(&dst).exists());
    let images = tc
        .host(0)
        .await
        .list_images(pb::ListImagesRequest {
            storage_domain_id: b.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
    let err = tc
        .host(0)
        .await
        .get_volume_info(pb::GetVolumeInfoRequest {
            volume: Some(dst.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = tc
        .spm_host()
        .await
        .delete_image(delete(&b))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        tc.meta(&src, "LEGALITY"),
        "LEGAL",
        "the source image was touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preallocated_volumes_own_their_space_and_sparse_ones_do_not() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let sd = tc.domain().await;
    for (format, allocation) in [
        (VolumeFormat::Raw, pb::VolumeAllocation::Preallocated),
        (VolumeFormat::Cow, pb::VolumeAllocation::Preallocated),
        (VolumeFormat::Raw, pb::VolumeAllocation::Sparse),
        (VolumeFormat::Cow, pb::VolumeAllocation::Sparse),
    ] {
        let volume = pb::VolumeRef {
            storage_domain_id: sd.clone(),
            image_id: uuid::Uuid::new_v4().to_string(),
            volume_id: uuid::Uuid::new_v4().to_string(),
        };
        let req = pb::CreateVolumeRequest {
            volume: Some(volume.clone()),
            format: format as i32,
            allocation: allocation as i32,
            capacity_bytes: 64 * MIB,
            ..Default::default()
        };
        let info = tc
            .spm_host()
            .await
            .create_volume(req)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let meta = info.metadata.unwrap();
        assert_eq!(
            (meta.format(), meta.allocation(), meta.legality()),
            (format, allocation, Legality::Legal)
        );
        let preallocated = allocation == pb::VolumeAllocation::Preallocated;
        assert_eq!(
            info.allocated_bytes >= 64 * MIB,
            preallocated,
            "{format:?} {allocation:?}: {} bytes allocated",
            info.allocated_bytes
        );
        let qemu = run(
            "qemu-img",
            &[
                "info",
                "--output=json",
                tc.volume_path(&volume).to_str().unwrap(),
            ],
        )
        .unwrap();
        let qemu: serde_json::Value = serde_json::from_str(&qemu).unwrap();
        assert_eq!(qemu["virtual-size"], 64 * MIB);
        assert_eq!(
            qemu["format"],
            if format == VolumeFormat::Cow {
                "qcow2"
            } else {
                "raw"
            }
        );
    }
}

/// ListImages cuts its page from the directory listing and reads only that page's metadata: pages
/// cover every image once in id order, and an image past the page whose metadata cannot be read
/// does not fail the pages before it.
#[tokio::test]
async fn images_are_paged_in_id_order_reading_only_the_page() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let sd = tc.domain().await;
    let mut made = Vec::new();
    for _ in 0..4 {
        let img = uuid::Uuid::new_v4().to_string();
        let v = tc
            .volume(&sd, &img, pb::VolumeFormat::Raw, MIB, pb::Legality::Legal)
            .await;
        made.push((img, v.volume_id));
    }
    made.sort();
    // An image whose id sorts last, with a volume whose metadata is garbage.
    let broken = "ffffffff-ffff-4fff-bfff-ffffffffffff";
    let dir = tc
        .volume_path(&pb::VolumeRef {
            storage_domain_id: sd.clone(),
            image_id: broken.into(),
            volume_id: broken.into(),
        })
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(broken), b"").unwrap();
    std::fs::write(dir.join(format!("{broken}.meta")), b"\xff garbage").unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..2 {
        let page = tc
            .host(0)
            .await
            .list_images(pb::ListImagesRequest {
                storage_domain_id: sd.clone(),
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("a page before the broken image is served")
            .into_inner();
        assert_eq!(page.images.len(), 2, "{page:?}");
        seen.extend(
            page.images
                .into_iter()
                .map(|i| (i.image_id, i.volume_ids.concat())),
        );
        token = page.next_page_token;
    }
    assert_eq!(seen, made);
    assert!(!token.is_empty(), "the broken image is on a next page");
}
