//! Disk locks as flows use them: an operation owns the disks it writes (a move's source and
//! destination, a clone's new disk) and reads a template under a shared hold. A move marks its source
//! `deleting` (no new clone may start from it) and deletes it only once no reader is left, so a clone
//! never loses its template mid-copy. The mark comes first and the wait for the readers after, so new
//! clones cannot keep a move waiting forever.
//!
//! The protocol itself lives in `datapath_coord::disk_locks`; this module holds the scheduler's
//! side of it.
use std::time::Duration;

/// The longest one wait for a lock's readers lasts before the lock is read again (the watch is a
/// wake-up, and a cancel is looked at in between).
pub const LOCK_WAIT: Duration = Duration::from_secs(1);
