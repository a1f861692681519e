//! What every watched copy of part of etcd shares (the cluster view, the job view): one range read
//! of each of its prefixes at one revision, then one watch of each from the next revision, every
//! event applied in order; a watch that ends, breaks or is compacted sends it back to the full
//! read, with a growing pause, and until that read is done the copy says it is out of step.
use std::{sync::Arc, time::Duration};

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions, WatchResponse};
use futures::StreamExt as _;
use tracing::{info, warn};

use crate::{Coord, CoordError, Result};

/// The longest pause between two attempts to read and watch again.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// A watched copy of some prefixes, kept by [`follow_forever`].
pub(crate) trait Watched: Send + Sync + 'static {
    /// What it is, for the log.
    const NAME: &'static str;
    /// The prefixes it follows.
    fn prefixes(&self, coord: &Coord) -> Vec<String>;
    /// Replaces everything with `kvs`, read at `revision`; the copy is in step from here.
    fn reset(&self, coord: &Coord, revision: i64, kvs: &[KeyValue]);
    /// Applies one change (a put, or a deletion).
    fn change(&self, coord: &Coord, put: bool, kv: &KeyValue);
    /// The copy is out of step until the next [`Watched::reset`].
    fn out_of_step(&self);
    /// The revision it reflects (to name in a compaction error).
    fn revision(&self) -> i64;
    /// Called after every reset and every batch of changes.
    fn changed(&self) {}
}

/// Keeps `copy` in step with etcd until the task is aborted.
pub(crate) async fn follow_forever<C: Watched>(coord: Coord, copy: Arc<C>) {
    let mut pause = Duration::from_millis(50);
    loop {
        let outcome = follow(&coord, copy.as_ref()).await;
        copy.out_of_step();
        copy.changed();
        match outcome {
            Ok(()) => info!(view = C::NAME, "a watch ended; reading everything again"),
            Err(e) => {
                warn!(view = C::NAME, error = %e, "out of step with etcd; reading everything again")
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

async fn follow<C: Watched>(coord: &Coord, copy: &C) -> Result<()> {
    let prefixes = copy.prefixes(coord);
    let mut client = coord.client();
    let mut revision = None;
    let mut kvs = Vec::new();
    for prefix in &prefixes {
        let mut options = GetOptions::new().with_prefix();
        if let Some(r) = revision {
            options = options.with_revision(r);
        }
        let resp = client.get(prefix.clone(), Some(options)).await?;
        if revision.is_none() {
            revision = Some(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        kvs.extend(resp.kvs().iter().cloned());
    }
    let revision = revision.unwrap_or_default();
    let from = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watches = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        watches.push(client.watch(prefix, Some(from.clone())).await?);
    }
    copy.reset(coord, revision, &kvs);
    copy.changed();
    let mut events = futures::stream::select_all(watches);
    while let Some(resp) = events.next().await {
        apply(coord, copy, &resp?)?;
        copy.changed();
    }
    Ok(())
}

fn apply<C: Watched>(coord: &Coord, copy: &C, resp: &WatchResponse) -> Result<()> {
    if resp.compact_revision() > 0 {
        return Err(CoordError::Compacted {
            requested: copy.revision() + 1,
            compacted: resp.compact_revision(),
        });
    }
    if resp.canceled() {
        return Err(CoordError::WatchCanceled(resp.cancel_reason().to_string()));
    }
    for event in resp.events() {
        if let Some(kv) = event.kv() {
            copy.change(coord, event.event_type() == EventType::Put, kv);
        }
    }
    Ok(())
}

/// Aborts a view's task when the last handle on the view is dropped.
pub(crate) struct TaskGuard(pub(crate) tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts `copy`'s task; the guard stops it.
pub(crate) fn start<C: Watched>(coord: &Coord, copy: Arc<C>) -> Arc<TaskGuard> {
    let task = tokio::spawn(follow_forever(coord.clone(), copy));
    Arc::new(TaskGuard(task.abort_handle()))
}
