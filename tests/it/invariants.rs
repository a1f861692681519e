//! The invariants every fault scenario ends with, checked by one shared checker (issue 4):
//! - every disk is whole in exactly one place: at its source (LEGAL, unlocked, data unchanged) or at
//!   its destination (LEGAL, identical data), never neither, never both half-written
//!   ([`assert_whole`]);
//! - once operations have ended: no ILLEGAL volume and no lease key remains, no disk is locked, every
//!   job record is terminal, every operation is done;
//! - no two holders ever held one volume's lease at once, read from etcd's history of `leases/`.
use std::collections::HashMap;

use datapath_api::pb;
use etcd_client::{EventType, GetOptions, WatchOptions};
use prost::Message as _;

use crate::{
    disks::{content_sha256, error_of, moved, scheduler},
    harness::TestCluster,
};

/// The formats of the volumes of `disks::chain_disk`, base first.
const FORMATS: [&str; 3] = ["raw", "qcow2", "qcow2"];

/// The flow record of an operation, read straight from etcd.
pub(crate) async fn flow(tc: &TestCluster, name: &str) -> Option<pb::Flow> {
    let id = name.trim_start_matches("operations/");
    let key = format!("{}flows/{id}", tc.cluster.etcd_prefix());
    let resp = tc.etcd.clone().get(key, None).await.ok()?;
    let kv = resp.kvs().first()?;
    pb::Flow::decode(kv.value()).ok()
}

/// Checksums of what a guest sees through each volume.
pub(crate) fn sums(tc: &TestCluster, vols: &[pb::VolumeRef]) -> Vec<String> {
    vols.iter()
        .zip(FORMATS)
        .map(|(v, f)| content_sha256(&tc.volume_path(v), f))
        .collect()
}

/// Whether every volume exists and is LEGAL.
fn all_legal(tc: &TestCluster, vols: &[pb::VolumeRef]) -> bool {
    vols.iter()
        .all(|v| tc.volume_path(v).exists() && tc.meta(v, "LEGALITY") == "LEGAL")
}

pub(crate) fn image_dir(tc: &TestCluster, v: &pb::VolumeRef) -> std::path::PathBuf {
    tc.volume_path(v).parent().unwrap().to_path_buf()
}

/// Asserts the move ended whole: moved (and then the source is gone) or rolled back (and then the
/// destination is gone and the source intact); no lock left. Returns whether it moved.
pub(crate) async fn assert_whole(
    tc: &TestCluster,
    src: &[pb::VolumeRef],
    dst_sd: &str,
    before: &[String],
    last: &pb::Operation,
) -> bool {
    let dst: Vec<_> = src.iter().map(|v| moved(v, dst_sd)).collect();
    let moved_ok = error_of(last).is_none();
    let (kept, gone): (&[pb::VolumeRef], &[pb::VolumeRef]) =
        if moved_ok { (&dst, src) } else { (src, &dst) };
    assert!(all_legal(tc, kept), "kept side not LEGAL: {last:#?}");
    assert_eq!(sums(tc, kept), before, "data differs: {last:#?}");
    assert!(
        !image_dir(tc, &gone[0]).exists(),
        "the other side remains: {last:#?}"
    );
    assert!(tc.keys("locks/").await.is_empty(), "locks left");
    moved_ok
}

/// Checks the cluster-wide invariants once every operation has ended; returns the violations found
/// (asserting none in the caller keeps the message whole).
pub(crate) async fn violations(tc: &TestCluster) -> Vec<String> {
    let mut found = Vec::new();
    for (key, _) in tc.keys("leases/").await {
        found.push(format!("lease left: {key}"));
    }
    for (key, _) in tc.keys("locks/").await {
        found.push(format!("lock left: {key}"));
    }
    let ops = scheduler(tc)
        .await
        .list_operations(pb::ListOperationsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().operations)
        .unwrap_or_default();
    found.extend(
        ops.iter()
            .filter(|o| !o.done)
            .map(|o| format!("not done: {}", o.name)),
    );
    let jobs = tc
        .tracker()
        .await
        .list_jobs(pb::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().jobs)
        .unwrap_or_default();
    found.extend(
        jobs.iter()
            .filter(|j| {
                !matches!(
                    j.status(),
                    pb::JobStatus::Succeeded | pb::JobStatus::Failed | pb::JobStatus::Aborted
                )
            })
            .map(|j| format!("job not terminal: {} {:?}", j.job_id, j.status())),
    );
    found.extend(
        illegal_volumes(tc)
            .into_iter()
            .map(|p| format!("ILLEGAL volume: {p}")),
    );
    found.extend(lease_overlaps(tc).await);
    found
}

/// Asserts [`violations`] finds none.
pub(crate) async fn check_invariants(tc: &TestCluster) {
    let v = violations(tc).await;
    assert!(v.is_empty(), "invariants violated:\n{}", v.join("\n"));
}

/// Volume metadata files on storage that say ILLEGAL.
fn illegal_volumes(tc: &TestCluster) -> Vec<String> {
    let mut found = Vec::new();
    let root = tc.cluster.storage_root();
    let domains = std::fs::read_dir(&root).into_iter().flatten().flatten();
    for sd in domains {
        let images = std::fs::read_dir(sd.path().join("images"))
            .into_iter()
            .flatten()
            .flatten();
        for img in images {
            for f in std::fs::read_dir(img.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = f.path();
                if path.extension().is_some_and(|e| e == "meta")
                    && std::fs::read_to_string(&path).is_ok_and(|t| t.contains("LEGALITY=ILLEGAL"))
                {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

/// Replays etcd's history of `leases/` from the first revision: a lease key created while it already
/// existed would mean two holders at once.
async fn lease_overlaps(tc: &TestCluster) -> Vec<String> {
    let prefix = format!("{}leases/", tc.cluster.etcd_prefix());
    let mut etcd = tc.etcd.clone();
    let now = match etcd
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
    {
        Ok(r) => r.header().map(|h| h.revision()).unwrap_or_default(),
        Err(e) => return vec![format!("cannot read etcd: {e}")],
    };
    let opts = WatchOptions::new().with_prefix().with_start_revision(1);
    let Ok(mut stream) = etcd.watch(prefix, Some(opts)).await else {
        return vec!["cannot watch etcd's history".into()];
    };
    let mut held: HashMap<Vec<u8>, pb::VolumeLease> = HashMap::new();
    let mut found = Vec::new();
    loop {
        let Ok(Ok(Some(resp))) =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.message()).await
        else {
            found.push("etcd's history of leases/ could not be read to the end".into());
            return found;
        };
        let mut last = 0;
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            last = kv.mod_revision();
            match e.event_type() {
                EventType::Put => {
                    let holder = pb::VolumeLease::decode(kv.value()).unwrap_or_default();
                    if let Some(before) = held.insert(kv.key().to_vec(), holder.clone()) {
                        found.push(format!(
                            "{} held by job {} and then job {} at once (revision {last})",
                            String::from_utf8_lossy(kv.key()),
                            before.job_id,
                            holder.job_id
                        ));
                    }
                }
                EventType::Delete => {
                    held.remove(kv.key());
                }
            }
        }
        if last >= now
            || resp.events().is_empty() && resp.header().is_some_and(|h| h.revision() >= now)
        {
            return found;
        }
    }
}
