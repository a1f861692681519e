//! Hostile files on shared storage: whatever another host (or a guest, through a qcow2 header)
//! plants, a host-worker reads and writes only regular files inside their image directory, and
//! follows only the backing chain the metadata names. Each refusal names its reason; no byte
//! outside the domain is read or written, and the destination is left as it was.
use std::{os::unix::fs::symlink, path::Path};

use datapath_api::{error::reason, pb};
use tonic::Code;

use crate::harness::{copy_request, follow_job, run, sha256, TestCluster};

const MIB: u64 = 1 << 20;

/// A file outside every domain, with known content, and its checksum.
fn outside_file(dir: &Path) -> (std::path::PathBuf, String) {
    let path = dir.join("host-secret");
    std::fs::write(&path, "root:secret:0:0\n".repeat(64)).unwrap();
    let sum = sha256(&path);
    (path, sum)
}

/// Runs CopyData `src` → `dst` on host 0 and returns the job's error code once it ended FAILED.
async fn copy_fails(tc: &TestCluster, src: &pb::VolumeRef, dst: &pb::VolumeRef) -> pb::JobError {
    let job_id = uuid::Uuid::new_v4().to_string();
    tc.host(0)
        .await
        .copy_data(copy_request(&job_id, src, dst, None))
        .await
        .expect("CopyData is accepted; its checks run in the job");
    let seen = follow_job(tc.tracker().await, job_id.clone())
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.last().unwrap().0, pb::JobStatus::Failed, "{seen:?}");
    let error = tc
        .job(&job_id)
        .await
        .error
        .expect("a failed job names its error");
    assert!(
        !error.message.contains(tc.cluster.dir().to_str().unwrap()),
        "no storage path in the job: {error:?}"
    );
    error
}

/// Rewrites the backing reference in `path`'s qcow2 header without opening it (`rebase -u`).
fn plant_backing(path: &Path, backing: &str, format: &str) {
    run(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            format,
            path.to_str().unwrap(),
        ],
    )
    .unwrap();
}

#[tokio::test]
async fn symlinks_planted_as_source_or_destination_are_refused_and_nothing_outside_is_touched() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (secret, secret_sum) = outside_file(outside.path());

    // The source's data file replaced by a symlink to a host file.
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 4 * MIB, 1)
        .await;
    let dst_sum = sha256(&tc.volume_path(&dst));
    std::fs::remove_file(tc.volume_path(&src)).unwrap();
    symlink(&secret, tc.volume_path(&src)).unwrap();
    let error = copy_fails(&tc, &src, &dst).await;
    assert_eq!(error.code, "UNSAFE_FILE", "{error:?}");
    assert!(error.message.contains(&src.volume_id), "{error:?}");
    assert_eq!(
        sha256(&tc.volume_path(&dst)),
        dst_sum,
        "the destination is untouched"
    );

    // The destination's data file replaced by a symlink to a host file: never written.
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 4 * MIB, 1)
        .await;
    std::fs::remove_file(tc.volume_path(&dst)).unwrap();
    symlink(&secret, tc.volume_path(&dst)).unwrap();
    let error = copy_fails(&tc, &src, &dst).await;
    assert_eq!(error.code, "UNSAFE_FILE", "{error:?}");
    assert!(error.message.contains(&dst.volume_id), "{error:?}");
    assert_eq!(sha256(&secret), secret_sum, "the host file is untouched");
    assert!(tc.keys(&tc.layout().volume_leases()).await.is_empty());

    // A volume's metadata replaced by a symlink, or by a FIFO (which would hang a blocking open):
    // refused at once with its reason.
    let meta = tc.volume_path(&src).with_extension("meta");
    std::fs::remove_file(&meta).unwrap();
    symlink(&secret, &meta).unwrap();
    let host = tc.host(0).await;
    let info = |v: pb::VolumeRef| {
        let mut host = host.clone();
        async move {
            host.get_volume_info(pb::GetVolumeInfoRequest { volume: Some(v) })
                .await
        }
    };
    let err = info(src.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("UNSAFE_FILE"));
    assert!(!err.message().contains(tc.cluster.dir().to_str().unwrap()));
    std::fs::remove_file(&meta).unwrap();
    run("mkfifo", &[meta.to_str().unwrap()]).unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), info(src.clone()))
        .await
        .expect("a FIFO does not hang the host")
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("UNSAFE_FILE"), "{err:?}");

    // CreateVolume where a symlink was planted under the new volume's name: refused, the host
    // file untouched, and no metadata left behind.
    let planted = pb::VolumeRef {
        volume_id: uuid::Uuid::new_v4().to_string(),
        ..dst.clone()
    };
    symlink(&secret, tc.volume_path(&planted)).unwrap();
    let err = tc
        .spm_host()
        .await
        .create_volume(pb::CreateVolumeRequest {
            volume: Some(planted.clone()),
            format: pb::VolumeFormat::Raw as i32,
            capacity_bytes: 4 * MIB,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("UNSAFE_FILE"), "{err:?}");
    assert_eq!(sha256(&secret), secret_sum);
    assert!(!tc.volume_path(&planted).with_extension("meta").exists());
}

#[tokio::test]
async fn a_source_whose_header_names_any_other_backing_file_is_refused() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (secret, _) = outside_file(outside.path());
    let sd = tc.domain().await;
    let other_img = uuid::Uuid::new_v4().to_string();
    let other = tc
        .volume(
            &sd,
            &other_img,
            pb::VolumeFormat::Raw,
            4 * MIB,
            pb::Legality::Legal,
        )
        .await;
    let secret_json = format!(
        r#"json:{{"driver":"raw","file":{{"driver":"file","filename":"{}"}}}}"#,
        secret.display()
    );
    let another_image = format!("../{other_img}/{}", other.volume_id);
    for (backing, format) in [
        (secret.to_str().unwrap(), "raw"),
        ("/etc/passwd", "raw"),
        (secret_json.as_str(), "raw"),
        ("nbd://127.0.0.1:1/export", "raw"),
        (another_image.as_str(), "raw"),
    ] {
        let img = uuid::Uuid::new_v4().to_string();
        let src = tc
            .volume(
                &sd,
                &img,
                pb::VolumeFormat::Cow,
                4 * MIB,
                pb::Legality::Legal,
            )
            .await;
        plant_backing(&tc.volume_path(&src), backing, format);
        let dst_domain = tc.domain().await;
        let dst = tc
            .volume(
                &dst_domain,
                &img,
                pb::VolumeFormat::Cow,
                4 * MIB,
                pb::Legality::Illegal,
            )
            .await;
        let dst_sum = sha256(&tc.volume_path(&dst));
        let error = copy_fails(&tc, &src, &dst).await;
        assert_eq!(error.code, "UNSAFE_BACKING_FILE", "{backing}: {error:?}");
        assert!(error.message.contains(&src.volume_id), "{error:?}");
        assert!(!error.message.contains("secret"), "{error:?}");
        assert_eq!(
            sha256(&tc.volume_path(&dst)),
            dst_sum,
            "{backing}: untouched"
        );
    }

    // The chain the metadata names, with the format it records, is copied.
    let img = uuid::Uuid::new_v4().to_string();
    let base = tc
        .volume(
            &sd,
            &img,
            pb::VolumeFormat::Raw,
            4 * MIB,
            pb::Legality::Legal,
        )
        .await;
    let top = pb::VolumeRef {
        volume_id: uuid::Uuid::new_v4().to_string(),
        ..base.clone()
    };
    tc.spm_host()
        .await
        .create_volume(pb::CreateVolumeRequest {
            volume: Some(top.clone()),
            format: pb::VolumeFormat::Cow as i32,
            parent_volume_id: base.volume_id.clone(),
            legality: pb::Legality::Legal as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    // The same header with the wrong backing format is refused too.
    plant_backing(&tc.volume_path(&top), &base.volume_id, "qcow2");
    let dst_domain = tc.domain().await;
    let dst = tc
        .volume(
            &dst_domain,
            &img,
            pb::VolumeFormat::Cow,
            4 * MIB,
            pb::Legality::Illegal,
        )
        .await;
    let error = copy_fails(&tc, &top, &dst).await;
    assert_eq!(error.code, "UNSAFE_BACKING_FILE", "{error:?}");
    plant_backing(&tc.volume_path(&top), &base.volume_id, "raw");
    let job_id = uuid::Uuid::new_v4().to_string();
    tc.host(0)
        .await
        .copy_data(copy_request(&job_id, &top, &dst, None))
        .await
        .unwrap();
    let seen = follow_job(tc.tracker().await, job_id)
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.last().unwrap().0, pb::JobStatus::Succeeded, "{seen:?}");
}

/// Rewrites the qcow2 `path` as an image whose data lives in the external file `data_file`
/// (`data_file_raw`: the file holds the guest's bytes as they are).
fn plant_data_file(path: &Path, data_file: &Path, size: u64) {
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!(
                "compat=1.1,data_file={},data_file_raw=on",
                data_file.display()
            ),
            path.to_str().unwrap(),
            &size.to_string(),
        ],
    )
    .unwrap();
}

#[tokio::test]
async fn an_external_data_file_named_by_a_source_or_a_destination_is_never_opened() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let outside = tempfile::tempdir().unwrap();
    let sd = tc.domain().await;
    let dst_domain = tc.domain().await;
    let volume = |sd: String, img: String, format, legality| {
        let tc = &tc;
        async move { tc.volume(&sd, &img, format, 4 * MIB, legality).await }
    };

    // A source whose data would be read from a host file: its content must not reach a volume.
    let img = uuid::Uuid::new_v4().to_string();
    let src = volume(
        sd.clone(),
        img.clone(),
        pb::VolumeFormat::Cow,
        pb::Legality::Legal,
    )
    .await;
    let secret = outside.path().join("source-data");
    plant_data_file(&tc.volume_path(&src), &secret, 4 * MIB);
    std::fs::write(&secret, "root:secret:0:0\n".repeat(4 * MIB as usize / 16)).unwrap();
    let dst = volume(
        dst_domain.clone(),
        img,
        pb::VolumeFormat::Cow,
        pb::Legality::Illegal,
    )
    .await;
    let dst_sum = sha256(&tc.volume_path(&dst));
    let error = copy_fails(&tc, &src, &dst).await;
    assert_eq!(error.code, "UNSAFE_BACKING_FILE", "{error:?}");
    assert!(error.message.contains("data file"), "{error:?}");
    assert_eq!(sha256(&tc.volume_path(&dst)), dst_sum, "untouched");

    // A destination whose writes would land in a host file: that file must not change.
    let img = uuid::Uuid::new_v4().to_string();
    let src = volume(
        sd.clone(),
        img.clone(),
        pb::VolumeFormat::Raw,
        pb::Legality::Legal,
    )
    .await;
    std::fs::write(tc.volume_path(&src), vec![0x5a; 4 * MIB as usize]).unwrap();
    let dst = volume(
        dst_domain,
        img,
        pb::VolumeFormat::Cow,
        pb::Legality::Illegal,
    )
    .await;
    let target = outside.path().join("destination-data");
    plant_data_file(&tc.volume_path(&dst), &target, 4 * MIB);
    let target_sum = sha256(&target);
    let error = copy_fails(&tc, &src, &dst).await;
    assert_eq!(error.code, "UNSAFE_BACKING_FILE", "{error:?}");
    assert!(error.message.contains(&dst.volume_id), "{error:?}");
    assert_eq!(sha256(&target), target_sum, "not a byte written outside");
}
