//! Fencing by generation: the SPM's FenceVolume raises a volume's generation past a lost copy under
//! the volume's lease, in etcd and in its metadata; a copy that started from the old generation can
//! then never commit, and a volume whose copy did commit is left alone.
use std::time::Duration;

use datapath_api::{error::reason, pb};
use tonic::Code;

use crate::harness::{copy_request, follow_job, throttle, wait_for, TestCluster};

const MIB: u64 = 1 << 20;

fn fence_req(v: &pb::VolumeRef, generation: u64) -> pb::FenceVolumeRequest {
    pb::FenceVolumeRequest {
        volume: Some(v.clone()),
        generation,
    }
}

/// The generation etcd records for a volume, if any.
async fn recorded(tc: &TestCluster, v: &pb::VolumeRef) -> Option<String> {
    let key = tc
        .layout()
        .generation(&datapath_api::volume::VolumeKey::from_pb("volume", Some(v)).unwrap());
    let resp = tc.etcd.clone().get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

#[tokio::test]
async fn a_fenced_volume_refuses_the_old_generation_and_a_committed_one_is_left_alone() {
    let tc = TestCluster::start(2, |c| throttle(c, 4 * MIB))
        .await
        .unwrap();
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 16 * MIB, 4)
        .await;
    let spm = tc.spm().await;
    let other = 1 - spm;

    // Only the SPM fences; another host refuses and changes nothing.
    let err = tc
        .host(other)
        .await
        .fence_volume(fence_req(&dst, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("NOT_SPM"));
    assert_eq!(tc.meta(&dst, "GEN"), "0");
    assert_eq!(recorded(&tc, &dst).await, None);

    // While a copy holds the lease, the volume cannot be fenced: the copy may still commit.
    let job = tc.start_copy(other, &src, &dst).await;
    tc.wait_for_lease().await;
    let err = tc
        .spm_host()
        .await
        .fence_volume(fence_req(&dst, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("LEASE_HELD"));
    let seen = follow_job(tc.tracker().await, job)
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.last().unwrap().0, pb::JobStatus::Succeeded);
    assert_eq!(tc.meta(&dst, "GEN"), "1");
    assert_eq!(recorded(&tc, &dst).await.as_deref(), Some("1"));

    // The copy from generation 0 did commit (1, LEGAL): fencing it changes nothing.
    let resp = tc
        .spm_host()
        .await
        .fence_volume(fence_req(&dst, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.fenced);
    assert_eq!(tc.meta(&dst, "LEGALITY"), "LEGAL");

    // A lost copy from generation 1: fenced to 3, ILLEGAL, recorded in etcd, no lease left.
    let resp = tc
        .spm_host()
        .await
        .fence_volume(fence_req(&dst, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.fenced);
    let meta = resp.volume.unwrap().metadata.unwrap();
    assert_eq!(
        (meta.generation, meta.legality()),
        (3, pb::Legality::Illegal)
    );
    assert_eq!(tc.meta(&dst, "GEN"), "3");
    assert_eq!(recorded(&tc, &dst).await.as_deref(), Some("3"));
    assert!(tc.keys(&tc.layout().volume_leases()).await.is_empty());

    // An attempt that still expects generation 1 is refused and changes nothing.
    let job_id = uuid::Uuid::new_v4().to_string();
    let err = tc
        .host(other)
        .await
        .copy_data(copy_request(&job_id, &src, &dst, Some(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("GENERATION_MISMATCH"));
    assert_eq!(tc.meta(&dst, "GEN"), "3");

    // A copy from the fenced generation commits at 4.
    let job_id = uuid::Uuid::new_v4().to_string();
    let follow = follow_job(tc.tracker().await, job_id.clone()).await;
    tc.host(other)
        .await
        .copy_data(copy_request(&job_id, &src, &dst, Some(3)))
        .await
        .unwrap();
    let seen = follow.await.unwrap().unwrap();
    assert_eq!(seen.last().unwrap().0, pb::JobStatus::Succeeded);
    wait_for(Duration::from_secs(5), "generation 4", || async {
        (recorded(&tc, &dst).await.as_deref() == Some("4")).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(tc.meta(&dst, "GEN"), "4");
    assert_eq!(tc.meta(&dst, "LEGALITY"), "LEGAL");
}

/// Puts `value` as the generation record of `v`, behind the hosts' backs.
async fn put_recorded(tc: &TestCluster, v: &pb::VolumeRef, value: &str) {
    let key = tc
        .layout()
        .generation(&datapath_api::volume::VolumeKey::from_pb("volume", Some(v)).unwrap());
    tc.etcd.clone().put(key, value, None).await.unwrap();
}

#[tokio::test]
async fn a_volume_at_the_highest_generation_is_refused_cleanly_and_its_lease_released() {
    use std::os::unix::fs::MetadataExt as _;
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 16 * MIB, 2)
        .await;
    let max = u64::MAX.to_string();
    put_recorded(&tc, &dst, &max).await;
    let inode = std::fs::metadata(tc.volume_path(&dst)).unwrap().ino();

    for from in [0, u64::MAX] {
        let err = tc
            .spm_host()
            .await
            .fence_volume(fence_req(&dst, from))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(reason(&err).as_deref(), Some("GENERATION_EXHAUSTED"));
        // Refused before anything changed, and the fencer's lease is gone with the answer.
        assert!(tc.keys(&tc.layout().volume_leases()).await.is_empty());
        assert_eq!(recorded(&tc, &dst).await.as_deref(), Some(max.as_str()));
        assert_eq!(tc.meta(&dst, "GEN"), "0");
        let now = std::fs::metadata(tc.volume_path(&dst)).unwrap().ino();
        assert_eq!(now, inode, "no fresh file was installed");
    }

    // A copy into it fails before a byte is copied, its lease released.
    let job = tc.start_copy(0, &src, &dst).await;
    let seen = follow_job(tc.tracker().await, job.clone())
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.last().unwrap().0, pb::JobStatus::Failed);
    let error = tc.job(&job).await.error.unwrap();
    assert_eq!(error.code, "GENERATION_EXHAUSTED", "{error:?}");
    wait_for(
        Duration::from_secs(10),
        "the copy's lease released",
        || async {
            tc.keys(&tc.layout().volume_leases())
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(recorded(&tc, &dst).await.as_deref(), Some(max.as_str()));
    assert_eq!(
        std::fs::metadata(tc.volume_path(&dst)).unwrap().size(),
        16 * MIB
    );

    // A garbled record is an error naming its key, never generation 0; other volumes are served.
    put_recorded(&tc, &dst, "not-a-number").await;
    let err = tc
        .spm_host()
        .await
        .get_volume_info(pb::GetVolumeInfoRequest {
            volume: Some(dst.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("BAD_RECORD"));
    assert!(err.message().contains(&dst.volume_id), "{}", err.message());
    let err = tc
        .spm_host()
        .await
        .fence_volume(fence_req(&dst, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(tc.keys(&tc.layout().volume_leases()).await.is_empty());
    assert_eq!(tc.info(0, &src).await.metadata.unwrap().generation, 0);
}
