//! Bad input: each request is refused with the right code and an error naming the field, and nothing
//! changes on disk or in etcd.
use std::{collections::BTreeMap, path::Path};

use datapath_api::pb::{self, JobStatus, Legality, VolumeFormat};
use tonic::Code;

use crate::harness::*;

const MIB: u64 = 1 << 20;

/// Every file under the storage root with its size, mtime and (for metadata) text, plus every job
/// and lease key in etcd with its revision.
async fn snapshot(tc: &TestCluster) -> (BTreeMap<String, String>, Vec<(String, i64)>) {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(p.display().to_string(), "dir".into());
                walk(&p, out);
            } else {
                let state = format!("{:?}", file_state(&p));
                let text = if p.extension().is_some_and(|x| x == "meta") {
                    std::fs::read_to_string(&p).unwrap()
                } else {
                    String::new()
                };
                out.insert(p.display().to_string(), format!("{state} {text}"));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(&tc.cluster.storage_root(), &mut files);
    let mut keys = tc.keys(&tc.layout().jobs()).await;
    keys.extend(tc.keys(&tc.layout().volume_leases()).await);
    (files, keys)
}

fn assert_refused(err: &tonic::Status, code: Code, field: &str) {
    assert_eq!(err.code(), code, "{err:?}");
    assert_eq!(
        datapath_api::error::field(err).as_deref(),
        Some(field),
        "{err:?}"
    );
    assert!(
        datapath_api::error::reason(err).is_some_and(|r| !r.is_empty() && r == r.to_uppercase()),
        "{err:?}"
    );
    assert!(
        err.message()
            .contains(field.split('.').next_back().unwrap()),
        "message does not name the field: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let img = uuid::Uuid::new_v4().to_string();
    let (a, b) = (tc.domain().await, tc.domain().await);
    let src = tc
        .volume(&a, &img, VolumeFormat::Cow, 64 * MIB, Legality::Legal)
        .await;
    fill_random(&tc.volume_path(&src), "qcow2", 64 * MIB, 8).unwrap();
    let dst = tc
        .volume(&b, &img, VolumeFormat::Cow, 64 * MIB, Legality::Illegal)
        .await;
    let small = tc
        .volume(
            &b,
            &uuid::Uuid::new_v4().to_string(),
            VolumeFormat::Raw,
            32 * MIB,
            Legality::Illegal,
        )
        .await;
    let job = || uuid::Uuid::new_v4().to_string();
    let with = |f: &dyn Fn(&mut pb::VolumeRef)| {
        let mut v = src.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, pb::CopyDataRequest, Code, &str)> = vec![
        (
            "malformed job id",
            copy_request("not-a-uuid", &src, &dst, None),
            Code::InvalidArgument,
            "job_id",
        ),
        (
            "id shaped like a path",
            copy_request(
                &job(),
                &with(&|v| v.image_id = "../../etc".into()),
                &dst,
                None,
            ),
            Code::InvalidArgument,
            "source.volume.image_id",
        ),
        (
            "unknown volume",
            copy_request(
                &job(),
                &with(&|v| v.volume_id = uuid::Uuid::new_v4().to_string()),
                &dst,
                None,
            ),
            Code::NotFound,
            "source.volume",
        ),
        (
            "unknown domain",
            copy_request(
                &job(),
                &src,
                &pb::VolumeRef {
                    storage_domain_id: uuid::Uuid::new_v4().to_string(),
                    ..dst.clone()
                },
                None,
            ),
            Code::NotFound,
            "destination.volume.storage_domain_id",
        ),
        (
            "source is destination",
            copy_request(&job(), &src, &src, None),
            Code::InvalidArgument,
            "destination.volume",
        ),
        (
            "destination too small",
            copy_request(&job(), &src, &small, None),
            Code::FailedPrecondition,
            "destination.volume",
        ),
        (
            "wrong generation",
            copy_request(&job(), &src, &dst, Some(7)),
            Code::FailedPrecondition,
            "destination.generation",
        ),
        (
            "missing destination",
            pb::CopyDataRequest {
                destination: None,
                ..copy_request(&job(), &src, &dst, None)
            },
            Code::InvalidArgument,
            "destination",
        ),
    ];
    let before = snapshot(&tc).await;
    for (what, req, code, field) in cases {
        let err = tc.host(0).await.copy_data(req).await.expect_err(what);
        assert_refused(&err, code, field);
    }
    // An unknown enum value.
    let err = tc
        .spm_host()
        .await
        .create_volume(pb::CreateVolumeRequest {
            volume: Some(pb::VolumeRef {
                volume_id: uuid::Uuid::new_v4().to_string(),
                ..dst.clone()
            }),
            format: 7,
            capacity_bytes: MIB,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused(&err, Code::InvalidArgument, "format");
    assert_eq!(
        snapshot(&tc).await,
        before,
        "a refused request changed storage or etcd"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_leased_by_another_job_is_refused() {
    let tc = TestCluster::start(2, |c| throttle(c, 8 * MIB))
        .await
        .unwrap();
    let (src, dst) = tc
        .source_and_destination(VolumeFormat::Cow, 64 * MIB, 16)
        .await;
    let first = tc.start_copy(0, &src, &dst).await;
    tc.wait_for_lease().await;
    let lease_keys = tc.keys(&tc.layout().volume_leases()).await;

    // On the same host and on another one.
    for host in [0, 1] {
        let second = uuid::Uuid::new_v4().to_string();
        let err = tc
            .host(host)
            .await
            .copy_data(copy_request(&second, &src, &dst, None))
            .await
            .unwrap_err();
        assert_refused(&err, Code::FailedPrecondition, "destination.volume");
        assert_eq!(
            datapath_api::error::reason(&err).as_deref(),
            Some("LEASE_HELD")
        );
        let found = tc
            .tracker()
            .await
            .get_job(pb::GetJobRequest { job_id: second })
            .await;
        assert_eq!(
            found.unwrap_err().code(),
            Code::NotFound,
            "the refused job was recorded"
        );
    }
    assert_eq!(
        tc.keys(&tc.layout().volume_leases()).await,
        lease_keys,
        "the lease changed hands"
    );
    let job = tc
        .tracker()
        .await
        .get_job(pb::GetJobRequest {
            job_id: first.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.status(), JobStatus::Running);
    tc.tracker()
        .await
        .abort_job(pb::AbortJobRequest { job_id: first })
        .await
        .unwrap();
}
