//! Disk locks as flows use them: an operation owns the disks it writes (a move's source and
//! destination, a clone's new disk) and reads a template under a shared hold. A move marks its source
//! `deleting` (no new clone may start from it) and deletes it only once no reader is left, so a clone
//! never loses its template mid-copy. The mark comes first and the wait for the readers after, so new
//! clones cannot keep a move waiting forever.
//!
//! The protocol itself lives in `datapath_coord::disk_locks`; this module holds the scheduler's
//! side of it.
use std::time::Duration;

use datapath_api::volume::DiskKey;
use datapath_coord::{disk_locks::DiskLocks, CoordError};
use tracing::warn;

/// The longest one wait for a lock's readers lasts before the lock is read again (the watch is a
/// wake-up, and a cancel is looked at in between).
pub const LOCK_WAIT: Duration = Duration::from_secs(1);

/// How a wait for a source's readers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadersWait {
    /// No reader holds the source any more: it may be deleted.
    Gone,
    /// `stopped` said stop first (a cancel, the scheduler stopping); the mark stays, and the
    /// flow's end releases it with the lock.
    Stopped,
}

/// Marks `source` (owned by `op_name`) as being deleted, then waits until no reader holds it, on a
/// watch of its lock; `stopped` is asked before each wait, at least every [`LOCK_WAIT`].
pub async fn mark_and_wait_for_readers<Fut>(
    locks: &dyn DiskLocks,
    source: &DiskKey,
    op_name: &str,
    mut stopped: impl FnMut() -> Fut,
) -> Result<ReadersWait, CoordError>
where
    Fut: std::future::Future<Output = bool>,
{
    while let Some(revision) = locks.mark_disk_deleting(source, op_name).await? {
        if stopped().await {
            return Ok(ReadersWait::Stopped);
        }
        let changed = locks.disk_lock_changed(source, revision);
        if let Ok(Err(e)) = tokio::time::timeout(LOCK_WAIT, changed).await {
            warn!(%source, error = %e, "cannot watch the source's lock; reading it again");
            tokio::time::sleep(LOCK_WAIT).await;
        }
    }
    Ok(ReadersWait::Gone)
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::{
            atomic::{AtomicBool, AtomicUsize, Ordering},
            Arc, Mutex,
        },
    };

    use async_trait::async_trait;
    use datapath_api::{
        ids::{ImageId, OperationId, StorageDomainId},
        pb,
    };
    use datapath_coord::{
        disk_locks::{self, Claim, LockEdit, LockRefusal},
        flows::{FlowStart, Versioned},
    };
    use tokio::sync::watch;

    use super::*;

    /// Disk locks in memory, with etcd's rules: every write raises the revision, a wait wakes on
    /// the first change after the revision given; `failing_watches` watches fail at once.
    /// The revision, and each disk's lock with the revision it last changed at (a deletion too).
    type Locks = (i64, HashMap<DiskKey, (Versioned<pb::DiskLock>, i64)>);

    #[derive(Default)]
    struct MemLocks {
        state: Mutex<Locks>,
        changed: watch::Sender<()>,
        failing_watches: AtomicUsize,
        marks: AtomicUsize,
    }

    impl MemLocks {
        fn lock(&self, disk: &DiskKey) -> Versioned<pb::DiskLock> {
            let s = self.state.lock().unwrap();
            s.1.get(disk).map(|(v, _)| v.clone()).unwrap_or(Versioned {
                value: Default::default(),
                mod_revision: 0,
            })
        }

        /// Writes `lock` if the stored one is at `expected`; an empty lock is deleted.
        fn write_if(&self, disk: &DiskKey, lock: pb::DiskLock, expected: i64) -> bool {
            let mut s = self.state.lock().unwrap();
            let current = s.1.get(disk).map_or(0, |(v, _)| v.mod_revision);
            if current != expected {
                return false;
            }
            s.0 += 1;
            let rev = s.0;
            if lock.owner.is_empty() && lock.readers.is_empty() {
                let gone = Versioned {
                    value: Default::default(),
                    mod_revision: 0,
                };
                s.1.insert(*disk, (gone, rev));
            } else {
                let kept = Versioned {
                    value: lock,
                    mod_revision: rev,
                };
                s.1.insert(*disk, (kept, rev));
            }
            drop(s);
            self.changed.send_replace(());
            true
        }
    }

    #[async_trait]
    impl DiskLocks for MemLocks {
        async fn disk_locks(
            &self,
            disks: &[DiskKey],
        ) -> datapath_coord::Result<Vec<Versioned<pb::DiskLock>>> {
            Ok(disks.iter().map(|d| self.lock(d)).collect())
        }

        async fn disk_lock_changed(
            &self,
            disk: &DiskKey,
            revision: i64,
        ) -> datapath_coord::Result<()> {
            let failing =
                self.failing_watches
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return Err(CoordError::WatchCanceled("etcd away".into()));
            }
            let mut changes = self.changed.subscribe();
            loop {
                let changed_at = self.state.lock().unwrap().1.get(disk).map_or(0, |e| e.1);
                if changed_at > revision {
                    return Ok(());
                }
                changes.changed().await.unwrap();
            }
        }

        async fn start_flow_locked(
            &self,
            op: OperationId,
            _: &pb::Flow,
            claims: &[(DiskKey, Claim)],
            _: Option<Vec<Versioned<pb::DiskLock>>>,
        ) -> datapath_coord::Result<Result<FlowStart, LockRefusal>> {
            let disks: Vec<DiskKey> = claims.iter().map(|(d, _)| *d).collect();
            let read = self.disk_locks(&disks).await?;
            match disk_locks::claim(claims, read, &op.name()) {
                Ok(changes) => {
                    for c in changes {
                        assert!(self.write_if(&c.disk, c.lock, c.expected_revision));
                    }
                    Ok(Ok(FlowStart::Started(self.state.lock().unwrap().0)))
                }
                Err(refusal) => Ok(Err(refusal)),
            }
        }

        async fn mark_disk_deleting(
            &self,
            disk: &DiskKey,
            op_name: &str,
        ) -> datapath_coord::Result<Option<i64>> {
            self.marks.fetch_add(1, Ordering::SeqCst);
            let current = self.lock(disk);
            match disk_locks::mark_deleting(&current, op_name) {
                LockEdit::Keep(answer) => Ok(answer),
                LockEdit::Write(lock, answer) => {
                    assert!(self.write_if(disk, lock, current.mod_revision));
                    Ok(answer)
                }
            }
        }

        async fn release_disk_locks(
            &self,
            disks: &[DiskKey],
            op_name: &str,
        ) -> datapath_coord::Result<()> {
            for disk in disks {
                let current = self.lock(disk);
                if let Some(lock) = disk_locks::release(&current.value, op_name) {
                    assert!(self.write_if(disk, lock, current.mod_revision));
                }
            }
            Ok(())
        }
    }

    fn disk() -> DiskKey {
        DiskKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
        }
    }

    /// A move owning `source` and a clone reading it.
    async fn owned_and_read(locks: &MemLocks, source: DiskKey) -> (OperationId, OperationId) {
        let (mover, reader) = (OperationId::time_ordered(), OperationId::time_ordered());
        let flow = pb::Flow::default();
        let own = [(source, Claim::Own)];
        assert!(locks
            .start_flow_locked(mover, &flow, &own, None)
            .await
            .unwrap()
            .is_ok());
        let read = [(source, Claim::Read)];
        assert!(locks
            .start_flow_locked(reader, &flow, &read, None)
            .await
            .unwrap()
            .is_ok());
        (mover, reader)
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_source_nobody_reads_is_marked_and_free_at_once() {
        let (locks, source) = (MemLocks::default(), disk());
        let mover = OperationId::time_ordered();
        let own = [(source, Claim::Own)];
        let flow = pb::Flow::default();
        assert!(locks
            .start_flow_locked(mover, &flow, &own, None)
            .await
            .unwrap()
            .is_ok());

        let name = mover.name();
        let waited = mark_and_wait_for_readers(&locks, &source, &name, || async { false });
        assert_eq!(waited.await.unwrap(), ReadersWait::Gone);
        let lock = locks.lock(&source).value;
        assert!(lock.deleting && lock.owner == mover.name());
    }

    #[tokio::test(start_paused = true)]
    async fn a_move_waits_for_its_sources_reader_and_no_new_reader_may_join_meanwhile() {
        let locks = Arc::new(MemLocks::default());
        let source = disk();
        let (mover, reader) = owned_and_read(&locks, source).await;
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let locks: &dyn DiskLocks = &*locks;
                mark_and_wait_for_readers(locks, &source, &mover.name(), || async { false }).await
            })
        };
        tokio::time::sleep(MINUTE).await;
        assert!(
            !waiting.is_finished(),
            "went on while a reader held the source"
        );
        assert!(locks.lock(&source).value.deleting, "marked before waiting");
        let late = OperationId::time_ordered();
        let refused = locks
            .start_flow_locked(late, &pb::Flow::default(), &[(source, Claim::Read)], None)
            .await
            .unwrap();
        assert!(matches!(refused, Err(LockRefusal::Deleting { .. })));
        let looks = locks.marks.load(Ordering::SeqCst);
        assert!(
            looks <= 62,
            "looked {looks} times in a minute: more than once per LOCK_WAIT"
        );

        // The release wakes the wait on its watch, long before the next look.
        locks
            .release_disk_locks(&[source], &reader.name())
            .await
            .unwrap();
        let waited = tokio::time::timeout(LOCK_WAIT / 10, waiting).await;
        assert_eq!(waited.unwrap().unwrap().unwrap(), ReadersWait::Gone);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_ends_the_wait_and_leaves_the_mark_to_the_flows_end() {
        let locks = MemLocks::default();
        let source = disk();
        let (mover, _reader) = owned_and_read(&locks, source).await;
        let cancelled = AtomicBool::new(false);
        let stopped = || async {
            // Cancelled while the first wait runs out.
            cancelled.swap(true, Ordering::SeqCst)
        };
        let name = mover.name();
        let waited = mark_and_wait_for_readers(&locks, &source, &name, stopped);
        let waited = tokio::time::timeout(MINUTE, waited).await.unwrap();
        assert_eq!(waited.unwrap(), ReadersWait::Stopped);
        assert!(locks.lock(&source).value.deleting);
        locks
            .release_disk_locks(&[source], &mover.name())
            .await
            .unwrap();
        assert!(
            !locks.lock(&source).value.deleting,
            "released with the lock"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_watch_reads_the_lock_again() {
        let locks = Arc::new(MemLocks::default());
        let source = disk();
        let (mover, reader) = owned_and_read(&locks, source).await;
        locks.failing_watches.store(usize::MAX, Ordering::SeqCst);
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let locks: &dyn DiskLocks = &*locks;
                mark_and_wait_for_readers(locks, &source, &mover.name(), || async { false }).await
            })
        };
        tokio::time::sleep(LOCK_WAIT / 2).await;
        locks
            .release_disk_locks(&[source], &reader.name())
            .await
            .unwrap();
        let waited = tokio::time::timeout(LOCK_WAIT * 3, waiting).await;
        assert_eq!(waited.unwrap().unwrap().unwrap(), ReadersWait::Gone);
    }
}
