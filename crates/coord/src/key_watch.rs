//! Waiting for one key to change, on a watch instead of a poll: what a step that waits for a lock's
//! readers or a lease's release wakes on. A wake-up only — callers read the key again afterwards.
use etcd_client::WatchOptions;

use crate::{Coord, CoordError, Result};

impl Coord {
    /// Returns at the first change (put or delete) of `key` after `revision`, or at once if it
    /// changed since. An error when the watch ends or that revision is compacted (the caller reads
    /// the key again, as after a change).
    pub(crate) async fn key_changed_after(&self, key: String, revision: i64) -> Result<()> {
        let from = WatchOptions::new().with_start_revision(revision + 1);
        let mut stream = self.client().watch(key, Some(from)).await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Err(CoordError::WatchCanceled(format!(
                    "the watch of one key ended: {}",
                    resp.cancel_reason()
                )));
            }
            if !resp.events().is_empty() {
                return Ok(());
            }
        }
        Err(CoordError::WatchCanceled(
            "the watch of one key closed".into(),
        ))
    }
}
