//! The coordination layer's waits and its one-transaction releases, on a real etcd: a wait for a
//! lease's release or a lock's change returns at once when there is nothing to wait for, stays
//! pending while nothing changes, and wakes on the change itself (a watch, not a poll); a flow's
//! disk locks are released in one etcd revision, and with its end in one transaction; the ends of
//! one window share a retention lease.
use std::time::Duration;

use datapath_api::{
    ids::OperationId,
    pb,
    volume::{DiskKey, VolumeKey},
};
use datapath_coord::{disk_locks::Claim, flows::FlowStart, retention::RetentionLeases, Coord};
use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use prost::Message as _;

use crate::harness::TestCluster;

/// A wait that has nothing to wait for must be over well within this.
const AT_ONCE: Duration = Duration::from_millis(500);
/// How long a wait is watched to stay pending while nothing changes.
const QUIET: Duration = Duration::from_millis(700);

async fn coord(tc: &TestCluster) -> Coord {
    Coord::connect_with(
        &tc.cluster.etcd_endpoints(),
        tc.cluster.etcd_prefix(),
        tc.cluster.client_tls().map(|t| t.client(None)),
    )
    .await
    .unwrap()
}

fn volume() -> VolumeKey {
    VolumeKey {
        storage_domain: uuid::Uuid::new_v4().into(),
        image: uuid::Uuid::new_v4().into(),
        volume: uuid::Uuid::new_v4().into(),
    }
}

fn disk() -> DiskKey {
    volume().disk()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_lease_returns_at_once_without_one_and_wakes_on_its_release() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let coord = coord(&tc).await;
    let v = volume();
    tokio::time::timeout(AT_ONCE, coord.volume_lease_released(&v))
        .await
        .expect("no lease: no wait")
        .unwrap();

    let mut etcd = tc.etcd.clone();
    let key = tc.layout().volume_lease(&v);
    let record = pb::VolumeLease {
        host_id: uuid::Uuid::new_v4().to_string(),
        job_id: uuid::Uuid::new_v4().to_string(),
        revision: 0,
    };
    etcd.put(key.clone(), record.encode_to_vec(), None)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let coord = coord.clone();
        async move { coord.volume_lease_released(&v).await }
    });
    tokio::time::sleep(QUIET).await;
    assert!(!waiting.is_finished(), "returned while the lease was held");
    etcd.delete(key, None).await.unwrap();
    tokio::time::timeout(AT_ONCE, waiting)
        .await
        .expect("woken by the release")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expiring_with_its_session_wakes_the_wait() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let coord = coord(&tc).await;
    let v = volume();
    let mut etcd = tc.etcd.clone();
    let session = etcd.lease_grant(2, None).await.unwrap().id();
    etcd.put(
        tc.layout().volume_lease(&v),
        pb::VolumeLease::default().encode_to_vec(),
        Some(PutOptions::new().with_lease(session)),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(6), coord.volume_lease_released(&v))
        .await
        .expect("woken when the session's lease expired")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "returned after {:?}, before the lease could expire",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_lock_change_returns_at_once_if_it_changed_and_wakes_on_the_next() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let coord = coord(&tc).await;
    let (source, template) = (disk(), disk());
    let op = OperationId::time_ordered();
    let flow = pb::Flow {
        operation: Some(pb::Operation {
            name: op.name(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let started = coord
        .start_flow_locked(
            op,
            &flow,
            &[(source, Claim::Own), (template, Claim::Read)],
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(started, FlowStart::Started(_)), "{started:?}");
    let taken = coord.disk_lock(&source).await.unwrap();
    assert_eq!(taken.value.owner, op.name());
    assert_eq!(
        coord.disk_lock(&template).await.unwrap().value.readers,
        [op.name()]
    );

    // Changed since the revision read: no wait.
    let before = taken.mod_revision;
    assert_eq!(
        coord.mark_disk_deleting(&source, &op.name()).await.unwrap(),
        None,
        "no reader of the source"
    );
    tokio::time::timeout(AT_ONCE, coord.disk_lock_changed(&source, before))
        .await
        .expect("changed since: no wait")
        .unwrap();

    // Nothing changes: pending; the next change wakes it.
    let now = coord.disk_lock(&source).await.unwrap().mod_revision;
    let waiting = tokio::spawn({
        let coord = coord.clone();
        async move { coord.disk_lock_changed(&source, now).await }
    });
    tokio::time::sleep(QUIET).await;
    assert!(!waiting.is_finished(), "returned with no change");

    // The flow's end releases both disks in one transaction: one revision, both keys gone.
    coord
        .release_disk_locks(&[source, template], &op.name())
        .await
        .unwrap();
    tokio::time::timeout(AT_ONCE, waiting)
        .await
        .expect("woken by the release")
        .unwrap()
        .unwrap();
    let mut etcd = tc.etcd.clone();
    let locks = tc.layout().disk_locks();
    let left = etcd
        .get(locks.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(left.kvs().is_empty(), "locks left: {:?}", left.kvs());
    let mut history = etcd
        .watch(
            locks.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(now + 1),
            ),
        )
        .await
        .unwrap();
    let deletes = loop {
        let resp = tokio::time::timeout(AT_ONCE, history.message())
            .await
            .expect("the release in etcd's history")
            .unwrap()
            .unwrap();
        if !resp.events().is_empty() {
            break resp
                .events()
                .iter()
                .map(|e| (e.event_type(), e.kv().map(|kv| kv.mod_revision())))
                .collect::<Vec<_>>();
        }
    };
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    assert!(
        deletes
            .iter()
            .all(|(t, r)| *t == EventType::Delete && *r == deletes[0].1),
        "both locks released in one revision: {deletes:?}"
    );
    // Idempotent: nothing left to release, nothing to fail.
    coord
        .release_disk_locks(&[source, template], &op.name())
        .await
        .unwrap();
    let left = etcd
        .get(locks, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(left.kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_of_one_window_share_a_retention_lease_that_outlives_the_retention() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let coord = coord(&tc).await;
    let leases = RetentionLeases::new(coord.clone(), Duration::from_secs(20));
    let first = leases.lease().await.unwrap();
    assert_eq!(
        leases.lease().await.unwrap(),
        first,
        "one lease in a window"
    );
    let mut etcd = tc.etcd.clone();
    let ttl = etcd.lease_time_to_live(first, None).await.unwrap().ttl();
    assert!(ttl >= 20, "the lease outlives the retention: ttl {ttl} s");
    leases.forget(first).await;
    let fresh = leases.lease().await.unwrap();
    assert_ne!(fresh, first, "a forgotten lease is not used again");

    // A window is a tenth of the retention: after it, a new lease.
    let short = RetentionLeases::new(coord, Duration::from_secs(1));
    let a = short.lease().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_ne!(
        short.lease().await.unwrap(),
        a,
        "a new lease after the window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_ends_and_releases_its_locks_in_one_transaction_or_not_at_all() {
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    // Under a prefix of its own: the cluster's scheduler would park this flow of no kind.
    let prefix = format!("{}coord-test/", tc.cluster.etcd_prefix());
    let coord = Coord::connect_with(
        &tc.cluster.etcd_endpoints(),
        &prefix,
        tc.cluster.client_tls().map(|t| t.client(None)),
    )
    .await
    .unwrap();
    let (source, template) = (disk(), disk());
    let op = OperationId::time_ordered();
    let mut flow = pb::Flow {
        operation: Some(pb::Operation {
            name: op.name(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let claims = [(source, Claim::Own), (template, Claim::Read)];
    coord
        .start_flow_locked(op, &flow, &claims, None)
        .await
        .unwrap()
        .unwrap();
    let started = coord.get_flow(op).await.unwrap().unwrap();
    flow.operation.as_mut().unwrap().done = true;
    let lease = RetentionLeases::new(coord.clone(), Duration::from_secs(60))
        .lease()
        .await
        .unwrap();
    let disks = [source, template];

    // On an outdated flow revision nothing is written: the flow and both locks stay.
    let stale = coord
        .finish_flow_releasing(op, &flow, started.mod_revision - 1, None, lease, &disks)
        .await
        .unwrap();
    assert_eq!(stale, None);
    assert_eq!(
        coord.disk_lock(&source).await.unwrap().value.owner,
        op.name()
    );
    assert!(
        !coord
            .get_flow(op)
            .await
            .unwrap()
            .unwrap()
            .value
            .operation
            .unwrap()
            .done
    );

    let revision = coord
        .finish_flow_releasing(op, &flow, started.mod_revision, None, lease, &disks)
        .await
        .unwrap()
        .expect("ended");
    let mut etcd = tc.etcd.clone();
    let ended = etcd.get(coord.keys().flow(op), None).await.unwrap();
    let kv = &ended.kvs()[0];
    assert_eq!((kv.mod_revision(), kv.lease()), (revision, lease));
    let locks = coord.keys().disk_locks();
    let left = etcd
        .get(locks, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(left.kvs().is_empty(), "locks left: {:?}", left.kvs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_records_read_in_transactions_answer_as_key_by_key_reads() {
    use datapath_coord::volume_reads::Wanted;
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let coord = coord(&tc).await;
    let mut etcd = tc.etcd.clone();
    let layout = tc.layout();
    let record = |job: &str| pb::VolumeLease {
        host_id: uuid::Uuid::new_v4().to_string(),
        job_id: job.to_string(),
        ..Default::default()
    };
    // 60 volumes, everything asked of each: 180 reads, more than one transaction may hold (128).
    let volumes: Vec<VolumeKey> = (0..60).map(|_| volume()).collect();
    for (i, v) in volumes.iter().enumerate() {
        if i % 2 == 0 {
            etcd.put(layout.generation(v), (i as u64 + 3).to_string(), None)
                .await
                .unwrap();
        }
        if i % 3 == 0 {
            let job = uuid::Uuid::new_v4().to_string();
            etcd.put(layout.volume_lease(v), record(&job).encode_to_vec(), None)
                .await
                .unwrap();
        }
        for _ in 0..(i % 4) {
            let job = datapath_api::ids::JobId::random();
            etcd.put(
                layout.volume_hold(v, job),
                record(&job.to_string()).encode_to_vec(),
                None,
            )
            .await
            .unwrap();
        }
    }
    let all = Wanted {
        generation: true,
        lease: true,
        holds: true,
    };
    let asks: Vec<_> = volumes.iter().map(|v| (*v, all)).collect();
    let read = coord.volume_records(&asks).await.unwrap();
    assert_eq!(read.len(), volumes.len());
    for (i, (v, r)) in volumes.iter().zip(&read).enumerate() {
        assert_eq!(
            r.generation,
            coord.generation(v).await.unwrap(),
            "volume {i}"
        );
        assert_eq!(r.lease, coord.volume_lease(v).await.unwrap(), "volume {i}");
        let mut holds = coord.volume_holds(v).await.unwrap();
        let mut got = r.holds.clone();
        holds.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        got.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        assert_eq!(got, holds, "volume {i}");
        assert_eq!(r.holds.len(), i % 4, "volume {i}");
        assert_eq!(r.generation.is_some(), i % 2 == 0, "volume {i}");
        assert_eq!(r.lease.is_some(), i % 3 == 0, "volume {i}");
    }
    // What is not asked is not answered.
    let only_lease = Wanted {
        lease: true,
        ..Wanted::default()
    };
    let read = coord
        .volume_records(&[(volumes[0], only_lease), (volumes[6], Wanted::default())])
        .await
        .unwrap();
    assert!(read[0].lease.is_some());
    assert_eq!((read[0].generation, read[0].holds.len()), (None, 0));
    assert_eq!(read[1], Default::default());
}
