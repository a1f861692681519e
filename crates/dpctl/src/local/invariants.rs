//! The invariants a local cluster holds once every operation has ended, checked by the fault tests
//! and at the end of the benchmarks alike (one checker, so a benchmark at scale is held to what a
//! fault scenario is):
//! - no volume lease and no disk lock is left in etcd;
//! - every operation is done and every job record is terminal (every page of both lists);
//! - no volume on storage is ILLEGAL;
//! - no two holders ever held one volume's lease at once, read from etcd's whole history of
//!   `leases/` (a local cluster's etcd is never compacted).
use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Context as _;
use datapath_api::pb::{
    self, job_tracker_service_client::JobTrackerServiceClient,
    scheduler_service_client::SchedulerServiceClient,
};
use etcd_client::{EventType, GetOptions, WatchOptions};
use prost::Message as _;

use super::Cluster;

/// How long the replay of `leases/` may wait for one watch response.
const REPLAY_STALL: Duration = Duration::from_secs(5);
/// Page size of the list calls.
const PAGE: i32 = 1000;

/// Every violation found, one line each (empty: the cluster holds its invariants). An error is a
/// check that could not be made (a service or etcd unreachable).
pub async fn violations(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let mut etcd = connect(cluster).await?;
    let layout = datapath_coord::Keys::new(cluster.etcd_prefix());
    let mut found = Vec::new();
    for (what, prefix) in [
        ("volume lease", layout.volume_leases()),
        ("read hold", layout.volume_holds()),
        ("disk lock", layout.disk_locks()),
    ] {
        let resp = etcd
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        found.extend(
            resp.kvs()
                .iter()
                .map(|kv| format!("{what} left: {}", String::from_utf8_lossy(kv.key()))),
        );
    }
    found.extend(open_operations(cluster).await?);
    found.extend(open_jobs(cluster).await?);
    found.extend(
        illegal_volumes(&cluster.storage_root())
            .into_iter()
            .map(|p| format!("ILLEGAL volume: {p}")),
    );
    found.extend(lease_overlaps(&mut etcd, &layout.volume_leases()).await?);
    Ok(found)
}

/// A client of the first etcd member that answers (a fault test may have killed one).
async fn connect(cluster: &Cluster) -> anyhow::Result<etcd_client::Client> {
    let mut last = None;
    for endpoint in cluster.etcd_endpoints() {
        match etcd_client::Client::connect([endpoint], cluster.etcd_options()).await {
            Ok(mut client) => match client.status().await {
                Ok(_) => return Ok(client),
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no etcd endpoint"), Into::into))
}

async fn open_operations(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let mut scheduler =
        SchedulerServiceClient::new(cluster.channel(&cluster.scheduler_url()).await?);
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = scheduler
            .list_operations(pb::ListOperationsRequest {
                page_size: PAGE,
                page_token,
                ..Default::default()
            })
            .await
            .context("ListOperations")?
            .into_inner();
        found.extend(
            page.operations
                .iter()
                .filter(|o| !o.done)
                .map(|o| format!("not done: {}", o.name)),
        );
        if page.next_page_token.is_empty() {
            return Ok(found);
        }
        page_token = page.next_page_token;
    }
}

async fn open_jobs(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let mut tracker =
        JobTrackerServiceClient::new(cluster.channel(&cluster.job_tracker_url()).await?);
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = tracker
            .list_jobs(pb::ListJobsRequest {
                page_size: PAGE,
                page_token,
                ..Default::default()
            })
            .await
            .context("ListJobs")?
            .into_inner();
        found.extend(
            page.jobs
                .iter()
                .filter(|j| {
                    !matches!(
                        j.status(),
                        pb::JobStatus::Succeeded | pb::JobStatus::Failed | pb::JobStatus::Aborted
                    )
                })
                .map(|j| format!("job not terminal: {} {:?}", j.job_id, j.status())),
        );
        if page.next_page_token.is_empty() {
            return Ok(found);
        }
        page_token = page.next_page_token;
    }
}

/// Volume metadata files under `root` (`<sd>/images/<img>/<vol>.meta`) that say ILLEGAL.
fn illegal_volumes(root: &Path) -> Vec<String> {
    let entries = |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().flatten();
    let mut found = Vec::new();
    for sd in entries(root) {
        for img in entries(&sd.path().join("images")) {
            for f in entries(&img.path()) {
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
async fn lease_overlaps(
    etcd: &mut etcd_client::Client,
    leases: &str,
) -> anyhow::Result<Vec<String>> {
    let prefix = leases.to_string();
    let now = etcd
        .get(
            prefix.clone(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    let opts = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = etcd.watch(prefix, Some(opts)).await?;
    let mut held: HashMap<Vec<u8>, pb::VolumeLease> = HashMap::new();
    let mut found = Vec::new();
    loop {
        let resp = tokio::time::timeout(REPLAY_STALL, stream.message())
            .await
            .context("etcd's history of leases/ stalled")??
            .context("etcd's history of leases/ ended early")?;
        anyhow::ensure!(
            resp.compact_revision() == 0,
            "etcd's history is compacted (revision {})",
            resp.compact_revision()
        );
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
            return Ok(found);
        }
    }
}
