//! Whether this host keeps the volume view (`--volume-view`). The view saves GetVolumeInfo and
//! CopyData's checks their etcd reads, but every host that keeps it turns each lease, hold and
//! generation write into one more watch event for etcd to send: in a cluster of hundreds of hosts
//! the fan-out costs etcd far more than the reads it saves (BENCHMARKS.md, "The control plane with
//! many hosts": at 500 hosts, 99 ms of etcd CPU per move with the view, 22 ms without). `auto`
//! keeps it while the cluster is small.
use std::{sync::Arc, time::Duration};

use tracing::{info, warn};

use crate::worker::Worker;

/// How the host decides to keep the volume view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VolumeViewMode {
    /// Always keep it.
    On,
    /// Never: every volume read goes to etcd.
    Off,
    /// Keep it while at most [`AUTO_MAX_HOSTS`] hosts are registered: counted at the start,
    /// [`FIRST_RECHECK`] later, then every [`RECHECK`].
    Auto,
}

/// The largest cluster in which `auto` keeps the view: below it the view's watch events cost etcd
/// less than the reads they save; above it, more.
pub const AUTO_MAX_HOSTS: i64 = 32;
/// How often `auto` counts the registered hosts (a count-only read).
const RECHECK: Duration = Duration::from_secs(60);
/// When `auto` counts the second time: hosts of a large cluster started together see a small one
/// at first, and must not keep their views for a whole [`RECHECK`].
const FIRST_RECHECK: Duration = Duration::from_secs(10);
/// How soon `auto` counts again after a count failed (etcd not reachable yet).
const RETRY: Duration = Duration::from_secs(2);

/// Starts or stops the view as `mode` says, for as long as the host runs.
pub async fn follow(worker: Arc<Worker>, mode: VolumeViewMode) {
    let mut counted = false;
    match mode {
        VolumeViewMode::On => worker.volumes.follow(&worker.coord),
        VolumeViewMode::Off => worker.volumes.unfollow(),
        VolumeViewMode::Auto => loop {
            let pause = match worker.hosts.count_hosts().await {
                Ok(hosts) => {
                    let first = !counted;
                    counted = true;
                    apply(&worker, hosts <= AUTO_MAX_HOSTS, hosts);
                    if first {
                        FIRST_RECHECK
                    } else {
                        RECHECK
                    }
                }
                Err(e) => {
                    warn!(error = %e, "volume view: cannot count the hosts");
                    RETRY
                }
            };
            tokio::time::sleep(pause).await;
        },
    }
}

fn apply(worker: &Worker, keep: bool, hosts: i64) {
    if keep == worker.volumes.following() {
        return;
    }
    if keep {
        info!(hosts, "volume view: following etcd (a small cluster)");
        worker.volumes.follow(&worker.coord);
    } else {
        info!(
            hosts,
            max = AUTO_MAX_HOSTS,
            "volume view: stopped (a large cluster: volume reads go to etcd)"
        );
        worker.volumes.unfollow();
    }
}
