//! Disk locks as flows use them: an operation owns the disks it writes (a move's source and
//! destination, a clone's new disk) and reads a template under a shared hold. A move marks its source
//! `deleting` (no new clone may start from it) and deletes it only once no reader is left, so a clone
//! never loses its template mid-copy. The mark comes first and the wait for the readers after, so new
//! clones cannot keep a move waiting forever.
use std::time::Duration;

use datapath_api::{pb, volume::DiskKey};
use datapath_coord::{Coord, CoordError};

/// Removes `op_name` from the lock of `disk` (as owner or reader). Idempotent.
pub async fn release(coord: &Coord, disk: &DiskKey, op_name: &str) -> Result<(), CoordError> {
    loop {
        let current = coord.disk_lock(disk).await?;
        let mut lock = current.value.clone();
        if lock.owner == op_name {
            lock.owner.clear();
            lock.deleting = false;
        }
        lock.readers.retain(|r| r != op_name);
        if lock == current.value {
            return Ok(());
        }
        if coord
            .put_disk_lock_if(disk, &lock, current.mod_revision)
            .await?
        {
            return Ok(());
        }
    }
}

/// Marks `disk` (owned by `op_name`) as being deleted: from then on no new clone may read it. Returns
/// `None` when no reader holds it any more, else the lock's revision as read: the caller waits for
/// a change after it ([`Coord::disk_lock_changed`]) and asks again. (Marking first and waiting after
/// means a steady stream of clones cannot postpone a move forever.)
pub async fn mark_deleting(
    coord: &Coord,
    disk: &DiskKey,
    op_name: &str,
) -> Result<Option<i64>, CoordError> {
    loop {
        let current = coord.disk_lock(disk).await?;
        if current.value.deleting && current.value.owner == op_name {
            return Ok((!current.value.readers.is_empty()).then_some(current.mod_revision));
        }
        let lock = pb::DiskLock {
            owner: op_name.to_string(),
            readers: current.value.readers.clone(),
            deleting: true,
        };
        if coord
            .put_disk_lock_if(disk, &lock, current.mod_revision)
            .await?
        {
            // Readers left: the wait after the revision read wakes at once on this very write,
            // and the next call answers with the mark's own revision.
            return Ok((!lock.readers.is_empty()).then_some(current.mod_revision));
        }
    }
}

/// The longest one wait for a lock's readers lasts before the lock is read again (the watch is a
/// wake-up, and a cancel is looked at in between).
pub const LOCK_WAIT: Duration = Duration::from_secs(1);
