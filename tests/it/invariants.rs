//! The invariants every fault scenario ends with, checked by one shared checker (issue 4):
//! - every disk is whole in exactly one place: at its source (LEGAL, unlocked, data unchanged) or at
//!   its destination (LEGAL, identical data), never neither, never both half-written
//!   ([`assert_whole`]);
//! - once operations have ended: no ILLEGAL volume and no lease key remains, no disk is locked, every
//!   job record is terminal, every operation is done;
//! - no two holders ever held one volume's lease at once, read from etcd's history of `leases/`.
//!
//! The cluster-wide part lives in `dpctl::local::invariants`, shared with the benchmarks.
use datapath_api::pb;
use prost::Message as _;

use crate::{
    disks::{content_sha256, error_of, moved},
    harness::TestCluster,
};

/// The formats of the volumes of `disks::chain_disk`, base first.
const FORMATS: [&str; 3] = ["raw", "qcow2", "qcow2"];

/// The flow record of an operation, read straight from etcd.
pub(crate) async fn flow(tc: &TestCluster, name: &str) -> Option<pb::Flow> {
    let op = datapath_api::ids::OperationId::parse_name("name", name).ok()?;
    let key = tc.layout().flow(op);
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
    assert!(
        tc.keys(&tc.layout().disk_locks()).await.is_empty(),
        "locks left"
    );
    moved_ok
}

/// Checks the cluster-wide invariants once every operation has ended (`dpctl::local::invariants`,
/// the checker the benchmarks end with too); returns the violations found (asserting none in the
/// caller keeps the message whole).
pub(crate) async fn violations(tc: &TestCluster) -> Vec<String> {
    dpctl::local::invariants::violations(&tc.cluster)
        .await
        .unwrap_or_else(|e| vec![format!("the invariants could not be checked: {e:#}")])
}

/// Asserts [`violations`] finds none.
pub(crate) async fn check_invariants(tc: &TestCluster) {
    let v = violations(tc).await;
    assert!(v.is_empty(), "invariants violated:\n{}", v.join("\n"));
}
