//! A copy holds its source for reading: while it runs, the source's image cannot be deleted and
//! the source cannot be copied into or fenced — each refused with its reason and nothing changed —
//! and once the copy ends, all of that is allowed again. The hold lives under the host's session
//! lease, so a host that dies drops it.
use std::time::Duration;

use datapath_api::{error::reason, pb};
use etcd_client::GetOptions;
use tonic::Code;

use crate::harness::{copy_request, follow_job, sha256, throttle, wait_for, TestCluster};

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_source_read_by_a_copy_cannot_be_deleted_written_or_fenced_until_the_copy_ends() {
    let tc = TestCluster::start(1, |c| throttle(c, 4 * MIB))
        .await
        .unwrap();
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 16 * MIB, 8)
        .await;
    let src_sum = sha256(&tc.volume_path(&src));
    let job = tc.start_copy(0, &src, &dst).await;
    let holds = tc.layout().volume_holds();
    let hold = wait_for(Duration::from_secs(20), "the copy's read hold", || {
        let (mut etcd, holds) = (tc.etcd.clone(), holds.clone());
        async move {
            let resp = etcd
                .get(holds, Some(GetOptions::new().with_prefix()))
                .await
                .ok()?;
            resp.kvs().first().cloned()
        }
    })
    .await
    .unwrap();
    let key = String::from_utf8_lossy(hold.key()).into_owned();
    assert!(key.contains(&src.volume_id) && key.ends_with(&job), "{key}");
    // Bound to the host's session lease: it goes with the host.
    let host = tc.keys(&tc.layout().hosts()).await;
    let host_key = &host.first().expect("the host is registered").0;
    let session = tc.etcd.clone().get(host_key.as_str(), None).await.unwrap();
    assert_eq!(hold.lease(), session.kvs()[0].lease());
    assert_ne!(hold.lease(), 0);
    // An operator sees it in `dpctl debug etcd`, with the reading job.
    let text = crate::dpctl_debug::debug_etcd(&tc, &[]);
    // Only the section itself: the raw key under OTHER KEYS would name the job too.
    let holds = text
        .split("READ HOLDS")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_else(|| panic!("no READ HOLDS section:\n{text}"));
    assert!(
        holds.contains(&job) && holds.contains(&src.volume_id),
        "{text}"
    );

    // DeleteImage of the source: refused, naming the reading job; nothing deleted.
    let err = tc
        .spm_host()
        .await
        .delete_image(pb::DeleteImageRequest {
            storage_domain_id: src.storage_domain_id.clone(),
            image_id: src.image_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("IMAGE_IN_USE"));
    assert!(err.message().contains(&job), "{}", err.message());
    assert!(tc.volume_path(&src).exists());
    assert!(tc.keys(&tc.layout().deletions()).await.is_empty());

    // CopyData into the source: refused at once.
    let (other, _) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 16 * MIB, 1)
        .await;
    let err = tc
        .host(0)
        .await
        .copy_data(copy_request(
            &uuid::Uuid::new_v4().to_string(),
            &other,
            &src,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("VOLUME_IN_USE"));

    // FenceVolume of the source: refused too (fencing replaces the file under a reader).
    let err = tc
        .spm_host()
        .await
        .fence_volume(pb::FenceVolumeRequest {
            volume: Some(src.clone()),
            generation: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("VOLUME_IN_USE"));
    assert_eq!(sha256(&tc.volume_path(&src)), src_sum);

    // The copy ends; its hold goes, and the source can be deleted.
    let seen = follow_job(tc.tracker().await, job)
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.last().unwrap().0, pb::JobStatus::Succeeded, "{seen:?}");
    wait_for(Duration::from_secs(10), "the hold released", || async {
        tc.keys(&tc.layout().volume_holds())
            .await
            .is_empty()
            .then_some(())
    })
    .await
    .unwrap();
    tc.spm_host()
        .await
        .delete_image(pb::DeleteImageRequest {
            storage_domain_id: src.storage_domain_id.clone(),
            image_id: src.image_id.clone(),
        })
        .await
        .expect("deleted once the copy ended");
    assert!(!tc.volume_path(&src).exists());
    assert!(
        tc.keys(&tc.layout().deletions()).await.is_empty(),
        "the deletion mark is gone"
    );
}
