//! A running flow's record: the in-memory copy the runner works on and the etcd record it is saved to
//! by compare-and-swap under the leadership guard. The only other writer is CancelOperation, which
//! sets `cancel_requested`; a save that meets it merges the flag and tries again.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use datapath_api::{ids::OperationId, pb};
use datapath_coord::election::Leadership;
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
        Ok(Some(Self {
            op,
            engine,
            leader,
            inner: Mutex::new(Inner {
                flow: v.value,
                mod_revision: v.mod_revision,
                last_save: Instant::now(),
            }),
        }))
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
        self.save(&mut inner, false).await?;
        Ok(inner.flow.clone())
    }

    /// Applies a progress-only change; it is saved if the last save is old enough (losing one is
    /// harmless: the next state change saves it).
    pub async fn update_progress(&self, change: impl FnOnce(&mut pb::Flow)) -> Result<(), Stop> {
        let mut inner = self.inner.lock().await;
        change(&mut inner.flow);
        if inner.last_save.elapsed() >= PROGRESS_SAVE_INTERVAL {
            self.save(&mut inner, false).await?;
        }
        Ok(())
    }

    /// Saves the final state, bound to the retention lease.
    pub async fn finish(&self, change: impl FnOnce(&mut pb::Flow)) -> Result<(), Stop> {
        let mut inner = self.inner.lock().await;
        change(&mut inner.flow);
        self.save(&mut inner, true).await
    }

    async fn save(&self, inner: &mut Inner, finish: bool) -> Result<(), Stop> {
        progress::refresh(&mut inner.flow);
        let coord = &self.engine.coord;
        let retention = self.engine.settings.retention.as_secs().max(1) as i64;
        let mut failures = 0;
        loop {
            let written = if finish {
                coord
                    .finish_flow_if(
                        self.op,
                        &inner.flow,
                        inner.mod_revision,
                        Some(&self.leader),
                        retention,
                    )
                    .await
            } else {
                coord
                    .put_flow_if(self.op, &inner.flow, inner.mod_revision, Some(&self.leader))
                    .await
            };
            match written {
                Ok(Some(rev)) => {
                    inner.mod_revision = rev;
                    inner.last_save = Instant::now();
                    return Ok(());
                }
                Ok(None) => self.merge_remote(inner).await?,
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

    /// After a failed compare: either someone else wrote (merge their cancel flag), or the record is
    /// unchanged and so the leadership guard failed.
    async fn merge_remote(&self, inner: &mut Inner) -> Result<(), Stop> {
        let remote = self
            .engine
            .coord
            .get_flow(self.op)
            .await?
            .ok_or(Stop::Gone)?;
        if remote.mod_revision == inner.mod_revision {
            return Err(Stop::LeadershipLost);
        }
        if meta(&remote.value).cancel_requested {
            meta_mut(&mut inner.flow).cancel_requested = true;
        }
        inner.mod_revision = remote.mod_revision;
        Ok(())
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
