//! Disk locks as flows use them: an operation owns the disks it writes (a move's source and
//! destination, a clone's new disk) and reads a template under a shared hold. A move deletes its source
//! only after marking the lock `deleting` at a moment without readers, so a clone never loses its
//! template mid-copy and no clone starts from a template being deleted.
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

/// Marks `disk` (owned by `op_name`) as being deleted once no reader holds it. Returns false while
/// readers remain; the caller waits and asks again.
pub async fn mark_deleting(
    coord: &Coord,
    disk: &DiskKey,
    op_name: &str,
) -> Result<bool, CoordError> {
    loop {
        let current = coord.disk_lock(disk).await?;
        if current.value.deleting && current.value.owner == op_name {
            return Ok(true);
        }
        if !current.value.readers.is_empty() {
            return Ok(false);
        }
        let lock = pb::DiskLock {
            owner: op_name.to_string(),
            readers: Vec::new(),
            deleting: true,
        };
        if coord
            .put_disk_lock_if(disk, &lock, current.mod_revision)
            .await?
        {
            return Ok(true);
        }
    }
}

/// How often a waiting step looks at a lock again.
pub const LOCK_POLL: Duration = Duration::from_millis(250);
