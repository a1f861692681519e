//! Read holds: a copy's claim on the volumes it reads. A copy reads its source's whole chain for the
//! job's life; deleting that image, or copying into one of those volumes, would hand it freed or
//! changing data. So a copy takes a **hold** on every volume of the source chain
//! (`holds/volumes/<sd>/<img>/<vol>/<job_id>`, bound to its host's session lease, so a host that
//! dies drops its holds with its lease), and the writers check for holds in the same etcd
//! transaction that lets them write:
//!
//! - a hold is taken only while no volume of the chain is leased (being written) and the image is
//!   not being deleted;
//! - a volume lease (a copy into the volume, a fence) is taken only while the volume has no hold and
//!   its image is not being deleted ([`Coord::acquire_volume_lease`]);
//! - the SPM deletes an image only after marking it `deleting/<sd>/<img>` in a transaction that
//!   requires no lease and no hold on any of its volumes ([`Coord::begin_image_deletion`]).
//!
//! Every rule is one etcd comparison in the writer's own transaction, so no check-then-act window is
//! left between two hosts. Many readers may hold one volume at once.
use datapath_api::{
    ids::{HostId, JobId},
    pb::VolumeLease,
    volume::{DiskKey, VolumeKey},
};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use prost::Message;

use crate::{hosts::decode, Coord, Result};

/// Why a hold or an image deletion was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Busy {
    /// A volume is leased: a job writes it.
    Leased(VolumeLease),
    /// A volume is held: a job reads it.
    Held(VolumeLease),
    /// The image is being deleted (by the SPM named).
    Deleting(String),
}

/// The comparison "no key under `prefix`" (etcd compares every key of a range; none is vacuously
/// true).
pub(crate) fn none_under(prefix: String) -> Compare {
    Compare::create_revision(prefix, CompareOp::Equal, 0).with_prefix()
}

/// The comparison "`key` is absent".
pub(crate) fn absent(key: String) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

impl Coord {
    /// Takes job `job`'s read hold on every volume of `chain` (one image), bound to
    /// `session_lease`, in one transaction that requires none of them leased and the image not
    /// being deleted.
    pub async fn hold_volumes(
        &self,
        chain: &[VolumeKey],
        host: HostId,
        job: JobId,
        session_lease: i64,
    ) -> Result<std::result::Result<(), Busy>> {
        let Some(first) = chain.first() else {
            return Ok(Ok(()));
        };
        let keys = self.keys();
        let holder = VolumeLease {
            host_id: host.to_string(),
            job_id: job.to_string(),
            revision: 0,
        }
        .encode_to_vec();
        let deleting = keys.image_deleting(&first.disk());
        let mut when = vec![absent(deleting.clone())];
        when.extend(chain.iter().map(|v| absent(keys.volume_lease(v))));
        let puts = chain.iter().map(|v| {
            TxnOp::put(
                keys.volume_hold(v, job),
                holder.clone(),
                Some(PutOptions::new().with_lease(session_lease)),
            )
        });
        let mut otherwise = vec![TxnOp::get(deleting, None)];
        otherwise.extend(chain.iter().map(|v| TxnOp::get(keys.volume_lease(v), None)));
        let txn = Txn::new()
            .when(when)
            .and_then(puts.collect::<Vec<_>>())
            .or_else(otherwise);
        let resp = self.client().txn(txn).await?;
        if resp.succeeded() {
            return Ok(Ok(()));
        }
        Ok(Err(self.busy(resp.op_responses())?.unwrap_or_else(|| {
            // Gone between the comparison and the reads: the caller may simply try again.
            Busy::Leased(VolumeLease::default())
        })))
    }

    /// Releases job `job`'s holds on `chain`.
    pub async fn release_holds(&self, chain: &[VolumeKey], job: JobId) -> Result<()> {
        let ops: Vec<TxnOp> = chain
            .iter()
            .map(|v| TxnOp::delete(self.keys().volume_hold(v, job), None))
            .collect();
        self.client().txn(Txn::new().and_then(ops)).await?;
        Ok(())
    }

    /// Deletes job `job`'s holds on `chain` and, in the same transaction, the lease of `volume`
    /// if it is still the one taken at `token`: a copy's end is one etcd write, not two. Returns
    /// whether the lease was released (the holds are deleted either way).
    pub(crate) async fn release_lease_and_holds(
        &self,
        volume: &VolumeKey,
        token: i64,
        chain: &[VolumeKey],
        job: JobId,
    ) -> Result<bool> {
        let lease = self.keys().volume_lease(volume);
        let holds: Vec<TxnOp> = chain
            .iter()
            .map(|v| TxnOp::delete(self.keys().volume_hold(v, job), None))
            .collect();
        let mut then = vec![TxnOp::delete(lease.clone(), None)];
        then.extend(holds.iter().cloned());
        let txn = Txn::new()
            .when([Compare::create_revision(lease, CompareOp::Equal, token)])
            .and_then(then)
            .or_else(holds);
        Ok(self.client().txn(txn).await?.succeeded())
    }

    /// The read holds on `volume`, oldest first.
    pub async fn volume_holds(&self, volume: &VolumeKey) -> Result<Vec<VolumeLease>> {
        let resp = self
            .client()
            .get(
                self.keys().holds_of(volume),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| decode(kv.key(), kv.value()))
            .collect()
    }

    /// Marks `disk` as being deleted by `spm`, bound to `session_lease`, if no volume of it is
    /// leased or held; nothing can lease or hold its volumes until [`Coord::end_image_deletion`] or
    /// the SPM's session ends.
    pub async fn begin_image_deletion(
        &self,
        disk: &DiskKey,
        spm: HostId,
        session_lease: i64,
    ) -> Result<std::result::Result<(), Busy>> {
        let keys = self.keys();
        let (leases, holds) = (keys.image_leases(disk), keys.image_holds(disk));
        let first = GetOptions::new().with_prefix().with_limit(1);
        let txn = Txn::new()
            .when([none_under(leases.clone()), none_under(holds.clone())])
            .and_then([TxnOp::put(
                keys.image_deleting(disk),
                spm.to_string(),
                Some(PutOptions::new().with_lease(session_lease)),
            )])
            .or_else([
                TxnOp::get(leases, Some(first.clone())),
                TxnOp::get(holds, Some(first)),
            ]);
        let resp = self.client().txn(txn).await?;
        if resp.succeeded() {
            return Ok(Ok(()));
        }
        let busy = self.busy(resp.op_responses())?;
        Ok(Err(busy.unwrap_or(Busy::Leased(VolumeLease::default()))))
    }

    /// Removes `disk`'s deletion mark.
    pub async fn end_image_deletion(&self, disk: &DiskKey) -> Result<()> {
        self.client()
            .delete(self.keys().image_deleting(disk), None)
            .await?;
        Ok(())
    }

    /// What the failed branch of a hold, lease or deletion transaction read: the first lease, hold
    /// or deletion mark found.
    pub(crate) fn busy(&self, ops: Vec<TxnOpResponse>) -> Result<Option<Busy>> {
        let keys = self.keys();
        for op in ops {
            let TxnOpResponse::Get(get) = op else {
                continue;
            };
            let Some(kv) = get.kvs().first() else {
                continue;
            };
            let key = String::from_utf8_lossy(kv.key());
            if key.starts_with(&keys.volume_holds()) {
                return Ok(Some(Busy::Held(decode(kv.key(), kv.value())?)));
            }
            if key.starts_with(&keys.volume_leases()) {
                let mut holder: VolumeLease = decode(kv.key(), kv.value())?;
                holder.revision = kv.create_revision();
                return Ok(Some(Busy::Leased(holder)));
            }
            return Ok(Some(Busy::Deleting(
                String::from_utf8_lossy(kv.value()).into_owned(),
            )));
        }
        Ok(None)
    }
}

/// Job `job`'s holds on a chain, released on every path: with the job's destination lease by
/// [`HoldGuard::release_with_lease`], or by a task spawned on drop (an early return, a panic, a
/// dropped future). The holds are bound to the host's session lease besides, so a host that dies
/// drops them with it.
pub struct HoldGuard {
    coord: Coord,
    chain: Vec<VolumeKey>,
    job: JobId,
    released: bool,
}

impl HoldGuard {
    /// Guards holds already taken with [`Coord::hold_volumes`].
    pub fn new(coord: &Coord, chain: Vec<VolumeKey>, job: JobId) -> Self {
        Self {
            coord: coord.clone(),
            chain,
            job,
            released: false,
        }
    }

    /// Releases the holds and, in the same transaction, the lease of `volume` taken at `token` if
    /// it is still that lease (a copy's end: its destination's lease and its source's holds).
    /// Returns whether the lease was released. If this fails or is dropped unfinished, the holds
    /// are released by the drop as on any other path.
    pub async fn release_with_lease(mut self, volume: &VolumeKey, token: i64) -> Result<bool> {
        let released = self
            .coord
            .release_lease_and_holds(volume, token, &self.chain, self.job)
            .await;
        self.released = released.is_ok();
        released
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (coord, chain, job) = (
            self.coord.clone(),
            std::mem::take(&mut self.chain),
            self.job,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = coord.release_holds(&chain, job).await {
                    tracing::warn!(%job, error = %e, "read holds not released; they expire with the session");
                }
            });
        }
    }
}
