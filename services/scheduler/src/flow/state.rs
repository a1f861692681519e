//! A running flow's record: the in-memory copy the runner works on and the etcd record it is saved to
//! by compare-and-swap under the leadership guard. The only other writer is CancelOperation, which
//! sets `cancel_requested`; a save that meets it merges the flag and tries again.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use datapath_api::volume::DiskKey;
use datapath_api::{ids::OperationId, pb};
use datapath_coord::{disk_locks::LOCK_RETRIES, election::Leadership, flows::Versioned};
use tokio::sync::Mutex;
use tracing::warn;

use super::{progress, Stop};
use crate::engine::Engine;

/// Progress-only saves happen at most this often per flow.
const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_millis(500);

struct Inner {
    flow: pb::Flow,
    mod_revision: i64,
    last_save: Instant,
}

/// How a run of a flow begins ([`FlowRecord::begin_run`]).
pub enum Begin {
    /// Counted; the flow as saved.
    Running(Box<pb::Flow>),
    /// The flow has ended.
    Ended,
    /// It cannot be run safely, for this reason: it is parked.
    Unreadable(String),
}

/// A flow being run by this scheduler.
pub struct FlowRecord {
    /// The operation.
    pub op: OperationId,
    engine: Arc<Engine>,
    leader: Leadership,
    inner: Mutex<Inner>,
}

impl FlowRecord {
    /// Loads the flow; `None` if it does not exist.
    pub async fn load(
        engine: Arc<Engine>,
        leader: Leadership,
        op: OperationId,
    ) -> Result<Option<Self>, Stop> {
        let Some(v) = engine.coord.get_flow(op).await? else {
            return Ok(None);
        };
        Ok(Some(Self::new(engine, leader, op, v)))
    }

    /// The flow as read elsewhere (listed or watched). Only this runner writes it besides a cancel
    /// request, and every save compares the mod revision: a record changed since it was read fails
    /// the first save, whose merge adopts the cancel; one deleted stops the runner (`Gone`).
    pub fn new(
        engine: Arc<Engine>,
        leader: Leadership,
        op: OperationId,
        v: Versioned<pb::Flow>,
    ) -> Self {
        Self {
            op,
            engine,
            leader,
            inner: Mutex::new(Inner {
                flow: v.value,
                mod_revision: v.mod_revision,
                last_save: Instant::now(),
            }),
        }
    }

    /// Counts this run (`runs`) on the record as known, unless the flow has ended or cannot be
    /// run safely (`check.rs`: then nothing is written). When the record changed since it was
    /// read (listed or watched before a later write reached this scheduler), nothing has been
    /// acted on yet: it is read again and judged afresh, never merged into an outdated copy.
    pub async fn begin_run(&self) -> Result<Begin, Stop> {
        let mut inner = self.inner.lock().await;
        let coord = &self.engine.coord;
        loop {
            if inner.flow.operation.as_ref().is_some_and(|o| o.done) {
                return Ok(Begin::Ended);
            }
            if let Some(why) = super::check::unreadable(&inner.flow) {
                return Ok(Begin::Unreadable(why));
            }
            let mut counted = inner.flow.clone();
            counted.runs += 1;
            progress::refresh(&mut counted);
            let written = coord
                .put_flow_if(self.op, &counted, inner.mod_revision, Some(&self.leader))
                .await?;
            if let Some(rev) = written {
                inner.flow = counted;
                inner.mod_revision = rev;
                inner.last_save = Instant::now();
                return Ok(Begin::Running(Box::new(inner.flow.clone())));
            }
            let remote = coord.get_flow(self.op).await?.ok_or(Stop::Gone)?;
            if remote.mod_revision == inner.mod_revision {
                return Err(Stop::LeadershipLost);
            }
            inner.flow = remote.value;
            inner.mod_revision = remote.mod_revision;
        }
    }

    /// The flow as the runner last left it.
    pub async fn get(&self) -> pb::Flow {
        self.inner.lock().await.flow.clone()
    }

    /// Whether a cancel has been requested (as last seen).
    pub async fn cancel_requested(&self) -> bool {
        let inner = self.inner.lock().await;
        meta(&inner.flow).cancel_requested
    }

    /// Notes a cancel request seen on the watch.
    pub async fn note_cancel(&self) {
        let mut inner = self.inner.lock().await;
        meta_mut(&mut inner.flow).cancel_requested = true;
    }

    /// Applies `change` and saves it before returning: the caller may act on it afterwards.
    pub async fn update(&self, change: impl FnOnce(&mut pb::Flow)) -> Result<pb::Flow, Stop> {
        let mut inner = self.inner.lock().await;
        change(&mut inner.flow);
        self.save(&mut inner, None).await?;
        Ok(inner.flow.clone())
    }

    /// Applies a progress-only change; it is saved if the last save is old enough (losing one is
    /// harmless: the next state change saves it).
    pub async fn update_progress(&self, change: impl FnOnce(&mut pb::Flow)) -> Result<(), Stop> {
        let mut inner = self.inner.lock().await;
        change(&mut inner.flow);
        if inner.last_save.elapsed() >= PROGRESS_SAVE_INTERVAL {
            self.save(&mut inner, None).await?;
        }
        Ok(())
    }

    /// Saves the final state, bound to a retention lease, and releases the flow's locks on
    /// `disks` in the same transaction: a flow is never seen done while it holds a lock.
    pub async fn finish(
        &self,
        disks: &[DiskKey],
        change: impl FnOnce(&mut pb::Flow),
    ) -> Result<(), Stop> {
        let mut inner = self.inner.lock().await;
        change(&mut inner.flow);
        self.save(&mut inner, Some(disks)).await
    }

    /// Saves the record by compare-and-swap; `ending`: with its end (`finish`).
    async fn save(&self, inner: &mut Inner, ending: Option<&[DiskKey]>) -> Result<(), Stop> {
        progress::refresh(&mut inner.flow);
        let coord = &self.engine.coord;
        let (mut failures, mut lock_changes) = (0, 0);
        loop {
            let written = match ending {
                Some(disks) => self.write_end(inner, disks).await,
                None => {
                    coord
                        .put_flow_if(self.op, &inner.flow, inner.mod_revision, Some(&self.leader))
                        .await
                }
            };
            match written {
                Ok(Some(rev)) => {
                    inner.mod_revision = rev;
                    inner.last_save = Instant::now();
                    return Ok(());
                }
                Ok(None) if self.merge_remote(inner).await? => {}
                // The record is as read: the leadership guard failed, or one of the locks changed.
                Ok(None) => {
                    lock_changes += 1;
                    let locks_may_have_moved = ending.is_some() && lock_changes < LOCK_RETRIES;
                    if !locks_may_have_moved || !coord.still_leads(&self.leader).await? {
                        return Err(Stop::LeadershipLost);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures >= 10 {
                        return Err(e.into());
                    }
                    warn!(op = %self.op, error = %e, "could not save the flow; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One try at the end's transaction, on the shared retention lease (forgotten if the write
    /// fails: it may have been revoked).
    async fn write_end(
        &self,
        inner: &Inner,
        disks: &[DiskKey],
    ) -> Result<Option<i64>, datapath_coord::CoordError> {
        let lease = self.engine.retention.lease().await?;
        let written = self
            .engine
            .coord
            .finish_flow_releasing(
                self.op,
                &inner.flow,
                inner.mod_revision,
                Some(&self.leader),
                lease,
                disks,
            )
            .await;
        if written.is_err() {
            self.engine.retention.forget(lease).await;
        }
        written
    }

    /// After a failed compare: whether someone else wrote the record (their cancel flag is
    /// merged, and the next save compares against their revision).
    async fn merge_remote(&self, inner: &mut Inner) -> Result<bool, Stop> {
        let remote = self
            .engine
            .coord
            .get_flow(self.op)
            .await?
            .ok_or(Stop::Gone)?;
        if remote.mod_revision == inner.mod_revision {
            return Ok(false);
        }
        if meta(&remote.value).cancel_requested {
            meta_mut(&mut inner.flow).cancel_requested = true;
        }
        inner.mod_revision = remote.mod_revision;
        Ok(true)
    }
}

/// The operation metadata of a flow (always present in a flow this scheduler wrote).
pub fn meta(flow: &pb::Flow) -> &pb::OperationMetadata {
    static EMPTY: std::sync::OnceLock<pb::OperationMetadata> = std::sync::OnceLock::new();
    flow.operation
        .as_ref()
        .and_then(|o| o.metadata.as_ref())
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

/// The operation metadata, created if missing.
pub fn meta_mut(flow: &mut pb::Flow) -> &mut pb::OperationMetadata {
    flow.operation
        .get_or_insert_with(Default::default)
        .metadata
        .get_or_insert_with(Default::default)
}
