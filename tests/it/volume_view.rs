//! The host-worker's volume view: GetVolumeInfo and CopyData's checks read leases and generation
//! records from a watched copy of etcd instead of etcd itself, and nothing is ever refused or
//! reported on a view that lags — a lease or a raised generation the view shows is confirmed against
//! etcd first. Records are written here behind the hosts' backs, straight into etcd.
use std::time::Duration;

use datapath_api::{pb, volume::VolumeKey};
use datapath_coord::Keys;
use prost::Message as _;
use tonic::Code;

use crate::{
    harness::{copy_request, wait_for, TestCluster},
    metrics::scrape_text,
};

const MIB: u64 = 1 << 20;

fn keys(tc: &TestCluster) -> Keys {
    tc.layout()
}

fn volume_key(v: &pb::VolumeRef) -> VolumeKey {
    VolumeKey::from_pb("volume", Some(v)).unwrap()
}

/// The etcd requests host `i` made that can read a volume: gets, and transactions (a host reads a
/// volume's records in one transaction of reads: `volume_reads.rs`; an idle host makes no other),
/// so far, from its `/metrics`.
async fn etcd_reads(tc: &TestCluster, i: usize) -> u64 {
    let text = scrape_text(tc.cluster.host_metrics(i)).await;
    text.lines()
        .filter(|l| {
            l.starts_with("datapath_etcd_request_duration_seconds_count{")
                && (l.contains("operation=\"get\"") || l.contains("operation=\"txn\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn resyncs(tc: &TestCluster, i: usize) -> u64 {
    let text = scrape_text(tc.cluster.host_metrics(i)).await;
    text.lines()
        .find_map(|l| l.strip_prefix("datapath_volume_view_resyncs_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until ten reads of `v` through host `i` cost it no etcd read: its view is in step.
async fn reads_without_etcd(tc: &TestCluster, i: usize, v: &pb::VolumeRef) {
    wait_for(
        Duration::from_secs(10),
        "reads served by the view",
        || async {
            let before = etcd_reads(tc, i).await;
            for _ in 0..10 {
                tc.info(i, v).await;
            }
            (etcd_reads(tc, i).await == before).then_some(())
        },
    )
    .await
    .unwrap();
}

/// A lease record for a made-up job on a made-up host, bound to a fresh etcd lease.
async fn foreign_lease(tc: &TestCluster, v: &pb::VolumeRef) -> String {
    let mut etcd = tc.etcd.clone();
    let ttl = etcd.lease_grant(60, None).await.unwrap().id();
    let job_id = uuid::Uuid::new_v4().to_string();
    let record = pb::VolumeLease {
        host_id: uuid::Uuid::new_v4().to_string(),
        job_id: job_id.clone(),
        revision: 0,
    };
    etcd.put(
        keys(tc).volume_lease(&volume_key(v)),
        record.encode_to_vec(),
        Some(etcd_client::PutOptions::new().with_lease(ttl)),
    )
    .await
    .unwrap();
    job_id
}

async fn try_copy(
    tc: &TestCluster,
    i: usize,
    src: &pb::VolumeRef,
    dst: &pb::VolumeRef,
) -> Result<String, tonic::Status> {
    let job_id = uuid::Uuid::new_v4().to_string();
    tc.host(i)
        .await
        .copy_data(copy_request(&job_id, src, dst, None))
        .await?;
    Ok(job_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_reads_follow_etcd_and_a_lagging_view_never_refuses_or_misreports() {
    let tc = TestCluster::start(2, |_| {}).await.unwrap();
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 4 * MIB, 1)
        .await;
    let dst_key = volume_key(&dst);

    // Served from the view: a hundred reads of an unleased volume cost this host no etcd read.
    reads_without_etcd(&tc, 1, &dst).await;
    let before = etcd_reads(&tc, 1).await;
    for _ in 0..100 {
        let info = tc.info(1, &dst).await;
        assert!(info.lease.is_none());
        assert_eq!(info.metadata.unwrap().generation, 0);
    }
    assert_eq!(etcd_reads(&tc, 1).await, before, "GetVolumeInfo read etcd");

    // A lease taken behind the host's back shows on every host, and CopyData is refused for it.
    let holder = foreign_lease(&tc, &dst).await;
    for i in 0..2 {
        wait_for(Duration::from_secs(5), "the lease in the view", || async {
            (tc.info(i, &dst).await.lease.map(|l| l.job_id) == Some(holder.clone())).then_some(())
        })
        .await
        .unwrap();
    }
    let refused = try_copy(&tc, 0, &src, &dst).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(&holder), "{refused:?}");

    // Released: at once — before the view may have heard of it — no host reports it and a copy
    // is accepted, since a lease the view shows is confirmed against etcd.
    let mut etcd = tc.etcd.clone();
    etcd.delete(keys(&tc).volume_lease(&dst_key), None)
        .await
        .unwrap();
    for i in 0..2 {
        assert_eq!(tc.info(i, &dst).await.lease, None, "host {i}");
    }

    // A generation raised in etcd above the file (a fence that died before its file) shows as
    // ILLEGAL at that generation; removed, the file's generation is back at once.
    etcd.put(keys(&tc).generation(&dst_key), "7", None)
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "generation 7 in the view",
        || async {
            let meta = tc.info(1, &dst).await.metadata.unwrap();
            (meta.generation == 7 && meta.legality() == pb::Legality::Illegal).then_some(())
        },
    )
    .await
    .unwrap();
    etcd.delete(keys(&tc).generation(&dst_key), None)
        .await
        .unwrap();
    assert_eq!(tc.info(1, &dst).await.metadata.unwrap().generation, 0);

    let job = try_copy(&tc, 0, &src, &dst).await.unwrap();
    let ended = wait_for(Duration::from_secs(30), "the copy to end", || async {
        let job = tc.job(&job).await;
        matches!(
            job.status(),
            pb::JobStatus::Succeeded | pb::JobStatus::Failed | pb::JobStatus::Aborted
        )
        .then_some(job)
    })
    .await
    .unwrap();
    assert_eq!(ended.status(), pb::JobStatus::Succeeded, "{ended:?}");
    let meta = tc.info(1, &dst).await.metadata.unwrap();
    assert_eq!((meta.generation, meta.legality()), (1, pb::Legality::Legal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_etcd_restarts_the_view_reads_everything_again_and_follows_on() {
    let mut tc = TestCluster::start(1, |_| {}).await.unwrap();
    let (_, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 4 * MIB, 1)
        .await;
    let dst_key = volume_key(&dst);
    assert_eq!(resyncs(&tc, 0).await, 0);
    tc.cluster.restart_etcd().await.unwrap();
    // Written right after the restart: either the full read or the new watch must bring it.
    tc.etcd
        .clone()
        .put(keys(&tc).generation(&dst_key), "5", None)
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        "generation 5 through host 0",
        || async {
            let mut host = tc.host(0).await;
            let info = host
                .get_volume_info(pb::GetVolumeInfoRequest {
                    volume: Some(dst.clone()),
                })
                .await
                .ok()?
                .into_inner();
            (info.volume?.metadata?.generation == 5).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(resyncs(&tc, 0).await >= 1, "the view never read again");
    // Back in step: with the record gone (a raised generation is always confirmed), reads are
    // served from the view again.
    tc.etcd
        .clone()
        .delete(keys(&tc).generation(&dst_key), None)
        .await
        .unwrap();
    reads_without_etcd(&tc, 0, &dst).await;
}

/// Hosts started `--volume-view off` (what `auto` picks in a large cluster) read every volume from
/// etcd: each GetVolumeInfo costs the host etcd reads, and a lease taken behind their backs is
/// reported and refused at once, with no watch to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_the_view_reads_every_volume_from_etcd() {
    let tc = TestCluster::start(2, |c| {
        c.env.push(("DATAPATH_VOLUME_VIEW".into(), "off".into()));
    })
    .await
    .unwrap();
    let (src, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 4 * MIB, 1)
        .await;
    let before = etcd_reads(&tc, 1).await;
    for _ in 0..10 {
        assert!(tc.info(1, &dst).await.lease.is_none());
    }
    let read = etcd_reads(&tc, 1).await - before;
    assert!(read >= 10, "ten GetVolumeInfo read etcd {read} times");

    let holder = foreign_lease(&tc, &dst).await;
    for i in 0..2 {
        assert_eq!(
            tc.info(i, &dst).await.lease.map(|l| l.job_id),
            Some(holder.clone()),
            "host {i}"
        );
    }
    let refused = try_copy(&tc, 0, &src, &dst).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(&holder), "{refused:?}");
    assert_eq!(resyncs(&tc, 0).await, 0, "a view was followed");
}

/// A view told to stop following forgets what it knew and answers "ask etcd" for everything; told
/// to follow again, it reads everything afresh. (`auto` does this as the cluster grows past and
/// shrinks below its size.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_stopped_knows_nothing_and_started_again_reads_everything_afresh() {
    use datapath_coord::volume_view::Known;

    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let (_, dst) = tc
        .source_and_destination(pb::VolumeFormat::Raw, 4 * MIB, 1)
        .await;
    let dst_key = volume_key(&dst);
    let coord = datapath_coord::Coord::connect_with(
        &tc.cluster.etcd_endpoints(),
        tc.cluster.etcd_prefix(),
        tc.cluster.client_tls().map(|t| t.client(None)),
    )
    .await
    .unwrap();
    let view = coord.volume_view();
    assert!(view.following());
    let holder = foreign_lease(&tc, &dst).await;
    wait_for(Duration::from_secs(5), "the lease in the view", || async {
        matches!(view.lease(&dst_key), Known::Present(l) if l.job_id == holder).then_some(())
    })
    .await
    .unwrap();

    view.unfollow();
    assert!(!view.following());
    assert_eq!(view.lease(&dst_key), Known::Unknown);
    assert!(!view.synced().0);
    assert!(!view.lease_free(&dst_key) && !view.hold_free(&dst_key));

    tc.etcd
        .clone()
        .delete(keys(&tc).volume_lease(&dst_key), None)
        .await
        .unwrap();
    view.follow(&coord);
    wait_for(Duration::from_secs(5), "the view in step again", || async {
        view.synced().0.then_some(())
    })
    .await
    .unwrap();
    assert_eq!(view.lease(&dst_key), Known::Absent);
}
