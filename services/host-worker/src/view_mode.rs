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
    /// [`FIRST_RECHECK`] later, then as [`next_recheck`] says.
    Auto,
}

/// The largest cluster in which `auto` keeps the view: below it the view's watch events cost etcd
/// less than the reads they save; above it, more.
pub const AUTO_MAX_HOSTS: i64 = 32;
/// How often `auto` counts the registered hosts (a count-only read) while it keeps the view.
const RECHECK: Duration = Duration::from_secs(60);
/// The longest pause between counts without the view: 500 hosts counting every [`RECHECK`] were a
/// quarter of an idle etcd's reads (BENCHMARKS.md).
const RECHECK_MAX: Duration = Duration::from_secs(600);
/// When `auto` counts the second time: hosts of a large cluster started together see a small one
/// at first, and must not keep their views for a whole [`RECHECK`].
const FIRST_RECHECK: Duration = Duration::from_secs(10);
/// How soon `auto` counts again after a count failed (etcd not reachable yet).
const RETRY: Duration = Duration::from_secs(2);

/// Starts or stops the view as `mode` says, for as long as the host runs.
pub async fn follow(worker: Arc<Worker>, mode: VolumeViewMode) {
    match mode {
        VolumeViewMode::On => worker.volumes.follow(&worker.coord),
        VolumeViewMode::Off => worker.volumes.unfollow(),
        VolumeViewMode::Auto => {
            let mut previous = None;
            loop {
                let pause = match worker.hosts.count_hosts().await {
                    Ok(hosts) => {
                        let keep = hosts <= AUTO_MAX_HOSTS;
                        apply(&worker, keep, hosts);
                        let pause = next_recheck(previous, keep);
                        previous = Some(pause);
                        pause
                    }
                    Err(e) => {
                        warn!(error = %e, "volume view: cannot count the hosts");
                        RETRY
                    }
                };
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// How long `auto` waits before it counts again, after a pause of `previous` (`None`: this was
/// the first count). With the view the cluster is recounted every [`RECHECK`], since a small
/// cluster that grew makes every view costly; without it the pause doubles up to [`RECHECK_MAX`]:
/// a view missing from a cluster that shrank costs reads only.
fn next_recheck(previous: Option<Duration>, keep: bool) -> Duration {
    match previous {
        None => FIRST_RECHECK,
        Some(_) if keep => RECHECK,
        Some(p) => (p * 2).clamp(RECHECK, RECHECK_MAX),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_cluster_is_counted_ever_less_often_and_a_small_one_every_minute() {
        let mut pauses = vec![next_recheck(None, false)];
        for _ in 0..7 {
            pauses.push(next_recheck(pauses.last().copied(), false));
        }
        let secs: Vec<u64> = pauses.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(next_recheck(Some(RECHECK_MAX), true), RECHECK);
        assert_eq!(next_recheck(None, true), FIRST_RECHECK);
    }
}
