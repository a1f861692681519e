//! Disk locks (`locks/<sd>/<img>`): the one protocol every flow follows, in one place.
//! - A flow starts by owning the disks it writes (a move's source and destination, a clone's new
//!   disk) and reading the template it clones, in the very transaction that creates it
//!   ([`Coord::start_flow_locked`]): a disk another operation owns, or a template being deleted,
//!   refuses the start.
//! - A move marks its source `deleting` before deleting it ([`Coord::mark_disk_deleting`]): from
//!   then on no clone may start reading it, and the move waits for the readers there were (on a
//!   watch: [`Coord::disk_lock_changed`]). Marking first and waiting after means a steady stream of
//!   clones cannot postpone a move forever.
//! - A flow's end releases what it held, every disk in one transaction
//!   ([`Coord::release_disk_locks`]); an empty lock is deleted.
//!
//! Every change is a read, an edit and a compare-and-swap on the revision read, tried again while
//! the lock changes under it — at most [`LOCK_RETRIES`] times, then [`CoordError::LockBusy`].
//!
//! What a claim or a mark makes of a lock is decided by pure functions ([`claim`], [`mark_deleting`],
//! [`release`]) tested here; the scheduler asks for no more than [`DiskLocks`], so its waits are
//! unit-tested on in-memory locks, and [`Coord`] is the etcd one.
use async_trait::async_trait;
use datapath_api::{pb, volume::DiskKey};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use prost::Message;

use crate::{
    error::CoordError,
    flows::{FlowStart, Versioned},
    hosts::decode,
    Coord, Result,
};
use datapath_api::ids::OperationId;

/// How many times one lock change is tried while the lock keeps changing under it.
pub const LOCK_RETRIES: usize = 8;

/// A disk lock to write when a flow starts, valid only if the lock is still at `expected_revision`.
#[derive(Debug, Clone)]
pub struct LockChange {
    /// The disk.
    pub disk: DiskKey,
    /// The lock as it will be.
    pub lock: pb::DiskLock,
    /// The lock's mod revision when it was read (0: it did not exist).
    pub expected_revision: i64,
}

/// What an edit of a lock decided.
pub enum LockEdit<T> {
    /// Leave the lock as it is, and answer this.
    Keep(T),
    /// Write this lock (if it is still as read), and answer this.
    Write(pb::DiskLock, T),
}

/// What a starting flow claims of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It writes the disk: no other operation may own it.
    Own,
    /// It reads the disk (a template): it must not be being deleted.
    Read,
}

/// Why a flow may not take a disk's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRefusal {
    /// Another operation owns the disk.
    Owned {
        /// The disk.
        disk: DiskKey,
        /// The owning operation's name.
        owner: String,
    },
    /// The disk is being deleted (by its owner, a move).
    Deleting {
        /// The disk.
        disk: DiskKey,
        /// The deleting operation's name.
        owner: String,
    },
}

/// A transaction condition: the lock is still at `expected` (0: still absent).
pub(crate) fn lock_compare(key: &str, expected: i64) -> Compare {
    if expected == 0 {
        Compare::create_revision(key, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, expected)
    }
}

/// The locks `claims` make of `locks` (the claimed disks' locks as read, in `claims`' order) for
/// the operation `name`, or why a lock refuses its claim.
pub fn claim(
    claims: &[(DiskKey, Claim)],
    locks: Vec<Versioned<pb::DiskLock>>,
    name: &str,
) -> std::result::Result<Vec<LockChange>, LockRefusal> {
    let mut changes = Vec::with_capacity(claims.len());
    for ((disk, claim), current) in claims.iter().zip(locks) {
        let mut lock = current.value;
        match claim {
            Claim::Own if !lock.owner.is_empty() => {
                return Err(LockRefusal::Owned {
                    disk: *disk,
                    owner: lock.owner,
                })
            }
            Claim::Read if lock.deleting => {
                return Err(LockRefusal::Deleting {
                    disk: *disk,
                    owner: lock.owner,
                })
            }
            Claim::Own => lock.owner = name.to_string(),
            Claim::Read => lock.readers.push(name.to_string()),
        }
        changes.push(LockChange {
            disk: *disk,
            lock,
            expected_revision: current.mod_revision,
        });
    }
    Ok(changes)
}

/// The deleting mark of `current` by its owner `name`: answers the lock's revision while readers
/// are left (`None` once none is), and writes the mark unless it stands.
pub fn mark_deleting(current: &Versioned<pb::DiskLock>, name: &str) -> LockEdit<Option<i64>> {
    let readers_left = (!current.value.readers.is_empty()).then_some(current.mod_revision);
    if current.value.deleting && current.value.owner == name {
        return LockEdit::Keep(readers_left);
    }
    let lock = pb::DiskLock {
        owner: name.to_string(),
        readers: current.value.readers.clone(),
        deleting: true,
    };
    // With readers left, the wait after the revision read wakes at once on this very write, and
    // the next call answers with the mark's own revision.
    LockEdit::Write(lock, readers_left)
}

/// `lock` without `name`, as owner (with its deleting mark) or reader; `None` when `name` was not
/// in it. An empty lock is deleted by whoever writes it.
pub fn release(lock: &pb::DiskLock, name: &str) -> Option<pb::DiskLock> {
    let mut left = lock.clone();
    if left.owner == name {
        left.owner.clear();
        left.deleting = false;
    }
    left.readers.retain(|r| r != name);
    (left != *lock).then_some(left)
}

/// The disk-lock protocol as flows use it; see the module's text.
#[async_trait]
pub trait DiskLocks: Send + Sync {
    /// The locks of `disks`, in their order (an empty one at revision 0 where there is none).
    async fn disk_locks(&self, disks: &[DiskKey]) -> Result<Vec<Versioned<pb::DiskLock>>>;

    /// Returns at the first change of `disk`'s lock after `revision`, or at once if it changed
    /// since; an error when the watch ends (the caller reads the lock again).
    async fn disk_lock_changed(&self, disk: &DiskKey, revision: i64) -> Result<()>;

    /// Creates flow `op` and takes its disks' locks as `claims` says, in one write (see
    /// [`Coord::start_flow_locked`]).
    async fn start_flow_locked(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        claims: &[(DiskKey, Claim)],
        as_read: Option<Vec<Versioned<pb::DiskLock>>>,
    ) -> Result<std::result::Result<FlowStart, LockRefusal>>;

    /// Marks `disk`, owned by `op_name`, as being deleted; `None` once no reader holds it, else
    /// the lock's revision to wait for a change after ([`DiskLocks::disk_lock_changed`]).
    async fn mark_disk_deleting(&self, disk: &DiskKey, op_name: &str) -> Result<Option<i64>>;

    /// Removes `op_name` from the locks of `disks`, in one write. Idempotent.
    async fn release_disk_locks(&self, disks: &[DiskKey], op_name: &str) -> Result<()>;
}

#[async_trait]
impl DiskLocks for Coord {
    async fn disk_locks(&self, disks: &[DiskKey]) -> Result<Vec<Versioned<pb::DiskLock>>> {
        Coord::disk_locks(self, disks).await
    }

    async fn disk_lock_changed(&self, disk: &DiskKey, revision: i64) -> Result<()> {
        Coord::disk_lock_changed(self, disk, revision).await
    }

    async fn start_flow_locked(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        claims: &[(DiskKey, Claim)],
        as_read: Option<Vec<Versioned<pb::DiskLock>>>,
    ) -> Result<std::result::Result<FlowStart, LockRefusal>> {
        Coord::start_flow_locked(self, op, flow, claims, as_read).await
    }

    async fn mark_disk_deleting(&self, disk: &DiskKey, op_name: &str) -> Result<Option<i64>> {
        Coord::mark_disk_deleting(self, disk, op_name).await
    }

    async fn release_disk_locks(&self, disks: &[DiskKey], op_name: &str) -> Result<()> {
        Coord::release_disk_locks(self, disks, op_name).await
    }
}

impl Coord {
    /// A disk's lock (an empty one at revision 0 when there is none).
    pub async fn disk_lock(&self, disk: &DiskKey) -> Result<Versioned<pb::DiskLock>> {
        let resp = self.client().get(self.keys().disk_lock(disk), None).await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Versioned {
                value: decode(kv.key(), kv.value())?,
                mod_revision: kv.mod_revision(),
            }),
            None => Ok(Versioned {
                value: pb::DiskLock::default(),
                mod_revision: 0,
            }),
        }
    }

    /// The locks of `disks`, in their order, read at once: one round trip's wait, not one per disk.
    pub async fn disk_locks(&self, disks: &[DiskKey]) -> Result<Vec<Versioned<pb::DiskLock>>> {
        futures::future::try_join_all(disks.iter().map(|d| self.disk_lock(d))).await
    }

    /// Returns at the first change of `disk`'s lock after `revision` (a reader gone, say), or at
    /// once if it changed since: what a step waiting for readers wakes on.
    pub async fn disk_lock_changed(&self, disk: &DiskKey, revision: i64) -> Result<()> {
        self.key_changed_after(self.keys().disk_lock(disk), revision)
            .await
    }

    /// Replaces a disk lock if it is still at `expected_revision`; an empty lock (no owner, no
    /// readers) deletes the key. Returns whether it did.
    async fn put_disk_lock_if(
        &self,
        disk: &DiskKey,
        lock: &pb::DiskLock,
        expected_revision: i64,
    ) -> Result<bool> {
        let key = self.keys().disk_lock(disk);
        let write = if lock.owner.is_empty() && lock.readers.is_empty() {
            TxnOp::delete(key.clone(), None)
        } else {
            TxnOp::put(key.clone(), lock.encode_to_vec(), None)
        };
        let txn = Txn::new()
            .when([lock_compare(&key, expected_revision)])
            .and_then([write]);
        Ok(self.client().txn(txn).await?.succeeded())
    }

    /// Reads `disk`'s lock, lets `edit` decide, and writes what it decided if the lock is still as
    /// read; tried again while it is not, at most [`LOCK_RETRIES`] times.
    pub async fn edit_disk_lock<T>(
        &self,
        disk: &DiskKey,
        mut edit: impl FnMut(&Versioned<pb::DiskLock>) -> LockEdit<T>,
    ) -> Result<T> {
        for _ in 0..LOCK_RETRIES {
            let current = self.disk_lock(disk).await?;
            match edit(&current) {
                LockEdit::Keep(answer) => return Ok(answer),
                LockEdit::Write(lock, answer) => {
                    if self
                        .put_disk_lock_if(disk, &lock, current.mod_revision)
                        .await?
                    {
                        return Ok(answer);
                    }
                }
            }
        }
        Err(CoordError::LockBusy(disk.to_string()))
    }

    /// Removes `op_name` from the locks of `disks`, as owner or reader, in one transaction (a
    /// move's end is one etcd write, not one per disk). Idempotent.
    pub async fn release_disk_locks(&self, disks: &[DiskKey], op_name: &str) -> Result<()> {
        for _ in 0..LOCK_RETRIES {
            let (when, then) = self.lock_releases(disks, op_name).await?;
            if then.is_empty() {
                return Ok(());
            }
            let txn = Txn::new().when(when).and_then(then);
            if self.client().txn(txn).await?.succeeded() {
                return Ok(());
            }
        }
        Err(CoordError::LockBusy(
            disks.first().map(|d| d.to_string()).unwrap_or_default(),
        ))
    }

    /// What removing `op_name` from the locks of `disks` writes, as read now: the compares that
    /// pin each lock to the revision read and the writes (nothing for a lock it is not in).
    pub(crate) async fn lock_releases(
        &self,
        disks: &[DiskKey],
        op_name: &str,
    ) -> Result<(Vec<Compare>, Vec<TxnOp>)> {
        let (mut when, mut then) = (Vec::new(), Vec::new());
        for (disk, current) in disks.iter().zip(self.disk_locks(disks).await?) {
            let Some(lock) = release(&current.value, op_name) else {
                continue;
            };
            let key = self.keys().disk_lock(disk);
            when.push(lock_compare(&key, current.mod_revision));
            then.push(if lock.owner.is_empty() && lock.readers.is_empty() {
                TxnOp::delete(key, None)
            } else {
                TxnOp::put(key, lock.encode_to_vec(), None)
            });
        }
        Ok((when, then))
    }

    /// Marks `disk` (owned by `op_name`) as being deleted: from then on no new clone may read it.
    /// Returns `None` when no reader holds it any more, else the lock's revision as read: the
    /// caller waits for a change after it ([`Coord::disk_lock_changed`]) and asks again.
    pub async fn mark_disk_deleting(&self, disk: &DiskKey, op_name: &str) -> Result<Option<i64>> {
        self.edit_disk_lock(disk, |current| mark_deleting(current, op_name))
            .await
    }

    /// Creates flow `op` (with its request key) and takes its disks' locks as `claims` says, in one
    /// transaction; the locks are read again and the start tried again while one changes under
    /// it, at most [`LOCK_RETRIES`] times. `as_read` are the claimed disks' locks as the caller
    /// read them ([`Coord::disk_locks`], in `claims`' order), used for the first try: the
    /// transaction's compares make an outdated read a retry, never a wrong start. A lock that
    /// refuses the claim refuses the start, with nothing written.
    pub async fn start_flow_locked(
        &self,
        op: OperationId,
        flow: &pb::Flow,
        claims: &[(DiskKey, Claim)],
        as_read: Option<Vec<Versioned<pb::DiskLock>>>,
    ) -> Result<Result<FlowStart, LockRefusal>> {
        let name = op.name();
        let disks: Vec<DiskKey> = claims.iter().map(|(d, _)| *d).collect();
        let mut read = as_read.filter(|r| r.len() == claims.len());
        for _ in 0..LOCK_RETRIES {
            let locks = match read.take() {
                Some(locks) => locks,
                None => self.disk_locks(&disks).await?,
            };
            let changes = match claim(claims, locks, &name) {
                Ok(changes) => changes,
                Err(refusal) => return Ok(Err(refusal)),
            };
            match self.start_flow(op, flow, &changes).await? {
                FlowStart::LockChanged => continue,
                started => return Ok(Ok(started)),
            }
        }
        Err(CoordError::LockBusy(
            claims
                .first()
                .map(|(d, _)| d.to_string())
                .unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use datapath_api::ids::{ImageId, StorageDomainId};

    use super::*;

    fn disk() -> DiskKey {
        DiskKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
        }
    }

    fn at(owner: &str, readers: &[&str], deleting: bool, rev: i64) -> Versioned<pb::DiskLock> {
        Versioned {
            value: pb::DiskLock {
                owner: owner.into(),
                readers: readers.iter().map(|r| r.to_string()).collect(),
                deleting,
            },
            mod_revision: rev,
        }
    }

    #[test]
    fn a_claim_takes_free_disks_as_read_and_refuses_an_owned_one_or_a_template_being_deleted() {
        let (src, dst, tpl) = (disk(), disk(), disk());
        let changes = claim(
            &[(src, Claim::Own), (dst, Claim::Own), (tpl, Claim::Read)],
            vec![
                at("", &["operations/r"], false, 4),
                at("", &[], false, 0),
                at("operations/o", &["operations/r"], false, 9),
            ],
            "operations/me",
        )
        .unwrap();
        let owners: Vec<_> = changes.iter().map(|c| c.lock.owner.as_str()).collect();
        assert_eq!(owners, ["operations/me", "operations/me", "operations/o"]);
        assert_eq!(changes[0].lock.readers, ["operations/r"], "readers kept");
        assert_eq!(changes[2].lock.readers, ["operations/r", "operations/me"]);
        let revisions: Vec<_> = changes.iter().map(|c| c.expected_revision).collect();
        assert_eq!(revisions, [4, 0, 9], "each compared as read");

        let owned = claim(
            &[(src, Claim::Own), (dst, Claim::Own)],
            vec![at("", &[], false, 0), at("operations/o", &[], false, 3)],
            "operations/me",
        );
        assert_eq!(
            owned.unwrap_err(),
            LockRefusal::Owned {
                disk: dst,
                owner: "operations/o".into()
            }
        );
        let deleting = claim(
            &[(tpl, Claim::Read)],
            vec![at("operations/o", &[], true, 3)],
            "operations/me",
        );
        assert_eq!(
            deleting.unwrap_err(),
            LockRefusal::Deleting {
                disk: tpl,
                owner: "operations/o".into()
            }
        );
    }

    #[test]
    fn a_mark_is_written_once_and_answers_the_revision_while_readers_are_left() {
        let me = "operations/me";
        match mark_deleting(&at(me, &["operations/r"], false, 5), me) {
            LockEdit::Write(lock, Some(5)) => {
                assert!(lock.deleting);
                assert_eq!(lock.owner, me);
                assert_eq!(
                    lock.readers,
                    ["operations/r"],
                    "readers are waited for, not evicted"
                );
            }
            _ => panic!("not marked"),
        }
        assert!(matches!(
            mark_deleting(&at(me, &[], false, 5), me),
            LockEdit::Write(_, None)
        ));
        assert!(matches!(
            mark_deleting(&at(me, &["operations/r"], true, 6), me),
            LockEdit::Keep(Some(6))
        ));
        assert!(matches!(
            mark_deleting(&at(me, &[], true, 7), me),
            LockEdit::Keep(None)
        ));
    }

    #[test]
    fn a_release_takes_the_operation_out_as_owner_or_reader_and_nothing_else() {
        let me = "operations/me";
        let owned = release(&at(me, &["operations/r"], true, 1).value, me).unwrap();
        assert_eq!(
            owned,
            pb::DiskLock {
                owner: String::new(),
                readers: vec!["operations/r".into()],
                deleting: false,
            }
        );
        let read = release(
            &at("operations/o", &[me, "operations/r"], false, 1).value,
            me,
        )
        .unwrap();
        assert_eq!(read.owner, "operations/o");
        assert_eq!(read.readers, ["operations/r"]);
        assert_eq!(
            release(&at("operations/o", &["operations/r"], true, 1).value, me),
            None
        );
    }
}
