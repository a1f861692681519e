//! Placing one copy: the candidates are the live hosts that reach both domains with a free slot; the
//! configured policy picks one, or the SPM-only policy while `data_operations_by_hsm` is false (read
//! at every placement, so a change applies to the next step). With no candidate the step waits for
//! a change of the cluster view or a freed placement; with no host reaching both domains for too
//! long it fails.
use std::time::{Duration, Instant};

use datapath_api::pb;
use tracing::debug;

use super::{model::Volume, runner::Run, Stop};
use crate::selection::{self, HostSelector as _, SpmOnly, Step};

/// Where a copy goes.
pub enum Placement {
    /// This host.
    Host(pb::Host),
    /// The flow is stopping.
    Stopped,
    /// No live host reaches both domains.
    NoHost(String),
}

/// The longest a waiting step sleeps without a change before it looks again (a safety net: the
/// cluster view's changes and this scheduler's freed placements wake it).
const WAIT: Duration = Duration::from_secs(1);

/// Chooses the host for `v`'s next attempt and counts it as placed. Steps between the same two
/// domains queue (`Engine::placement_queue`): the first looks for a host, waking on every change
/// of the cluster view and every placement freed; the others wait their turn without a cost.
pub async fn place(run: &Run, v: &Volume) -> Result<Placement, Stop> {
    let src = v.source.storage_domain.to_string();
    let dst = v.destination.storage_domain.to_string();
    let since = Instant::now();
    let queue = run.engine.placement_queue(&src, &dst);
    let mut stop = run.stop_signal();
    let _turn = loop {
        if run.stopping() {
            return Ok(Placement::Stopped);
        }
        tokio::select! {
            turn = queue.lock() => break turn,
            _ = stop.changed() => {}
        }
    };
    let mut changes = run.engine.view.changes();
    loop {
        if run.stopping() {
            return Ok(Placement::Stopped);
        }
        changes.borrow_and_update();
        let unplaced = run.engine.unplaced.notified();
        if let Some(host) = try_place(run, v, &src, &dst).await {
            return Ok(Placement::Host(host));
        }
        let hosts = run.engine.live_hosts().await.unwrap_or_default();
        let reachable = hosts
            .iter()
            .any(|h| selection::reaches(h, &src) && selection::reaches(h, &dst));
        if !reachable && since.elapsed() > run.engine.settings.no_host_timeout {
            return Ok(Placement::NoHost(format!(
                "no live host reaches both storage domain {src} and {dst}"
            )));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = unplaced => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep(WAIT) => {}
        }
    }
}

/// How often a choice is made again when the chosen host filled up while the policy decided.
const CHOICES: usize = 3;

/// The policy's choice for `v`, counted as placed. The placements are not held locked while the
/// policy decides (an external policy is a gRPC call): the choice is checked against them again
/// afterwards, and made again if the chosen host filled up meanwhile.
async fn try_place(run: &Run, v: &Volume, src: &str, dst: &str) -> Option<pb::Host> {
    let engine = &run.engine;
    let hosts = engine.live_hosts().await.ok()?;
    let spm = engine.spm_id().await.ok()?;
    let by_hsm = engine.data_operations_by_hsm().await.ok()?;
    for _ in 0..CHOICES {
        let step = step(run, v, &hosts, spm.clone(), src, dst).await;
        let chosen = if by_hsm {
            engine.selector.select(&step).await
        } else {
            SpmOnly.select(&step).await
        }?;
        // Only a host the policy was offered (an external policy may answer anything).
        if !step.candidates.iter().any(|c| c.host.host_id == chosen) {
            return None;
        }
        let mut placed = engine.placed.lock().await;
        let still_free = selection::candidates(&hosts, &placed, src, dst);
        let Some(c) = still_free.into_iter().find(|c| c.host.host_id == chosen) else {
            continue;
        };
        let entry = placed.entry(chosen.clone()).or_default();
        entry.0 += 1;
        entry.1 += v.size_bytes;
        debug!(host = %chosen, policy = if by_hsm { engine.selector.name() } else { "spm-only" }, "copy placed");
        return Some(c.host);
    }
    None
}

/// What the policy decides on: the candidates as the placements stand now.
async fn step(
    run: &Run,
    v: &Volume,
    hosts: &[pb::Host],
    spm: Option<String>,
    src: &str,
    dst: &str,
) -> Step {
    let placed = run.engine.placed.lock().await;
    let mut candidates = selection::candidates(hosts, &placed, src, dst);
    drop(placed);
    // A retry prefers a host that has not failed this volume, when there is one.
    if candidates
        .iter()
        .any(|c| !v.failed_hosts.contains(&c.host.host_id))
    {
        candidates.retain(|c| !v.failed_hosts.contains(&c.host.host_id));
    }
    Step {
        candidates,
        spm,
        params: pb::CopyDataParams {
            source: Some(pb::CopyDataEndpoint {
                volume: Some(v.source.to_pb()),
                generation: None,
            }),
            destination: Some(pb::CopyDataEndpoint {
                volume: Some(v.destination.to_pb()),
                generation: None,
            }),
        },
        size_bytes: v.size_bytes,
    }
}

/// Forgets a placement of `size_bytes` on `host` once its attempt ended (or never started).
pub async fn unplace(run: &Run, host: &str, size_bytes: u64) {
    let mut placed = run.engine.placed.lock().await;
    if let Some(entry) = placed.get_mut(host) {
        entry.0 = entry.0.saturating_sub(1);
        entry.1 = entry.1.saturating_sub(size_bytes);
        if entry.0 == 0 {
            placed.remove(host);
        }
    }
    drop(placed);
    run.engine.unplaced.notify_waiters();
}
