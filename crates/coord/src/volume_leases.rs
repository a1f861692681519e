//! Volume leases: `leases/volumes/<sd>/<img>/<vol>` names the one job allowed to write a volume. Taken
//! with a create-if-absent transaction and bound to the holder's session lease, so a host that dies or
//! is cut off loses all its volume leases after the TTL. The key's create revision is the lease's
//! fencing token: a holder checks it is still the same lease before it commits a result.
use datapath_api::{
    ids::{HostId, JobId},
    pb::VolumeLease,
    volume::VolumeKey,
};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use prost::Message;

use std::sync::Arc;

use crate::{
    error::CoordError,
    hosts::decode,
    lease_store::VolumeLeases,
    volume_holds::{absent, none_under, Busy},
    Coord, Result,
};

impl Coord {
    /// Takes the lease of `volume` for `job` on `host`, bound to `session_lease`, if no one leases
    /// it, no copy reads it (holds: `volume_holds.rs`) and its image is not being deleted. Returns
    /// its fencing token, or `LeaseHeld` / `VolumeHeld` / `ImageDeleting` naming why not.
    pub async fn acquire_volume_lease(
        &self,
        volume: &VolumeKey,
        host: HostId,
        job: JobId,
        session_lease: i64,
    ) -> Result<i64> {
        let keys = self.keys();
        let key = keys.volume_lease(volume);
        let value = VolumeLease {
            host_id: host.to_string(),
            job_id: job.to_string(),
            revision: 0,
        };
        let deleting = keys.image_deleting(&volume.disk());
        let holds = keys.holds_of(volume);
        let txn = Txn::new()
            .when([
                absent(key.clone()),
                none_under(holds.clone()),
                absent(deleting.clone()),
            ])
            .and_then([TxnOp::put(
                key.clone(),
                value.encode_to_vec(),
                Some(PutOptions::new().with_lease(session_lease)),
            )])
            .or_else([
                TxnOp::get(key.clone(), None),
                TxnOp::get(holds, Some(GetOptions::new().with_prefix().with_limit(1))),
                TxnOp::get(deleting, None),
            ]);
        let resp = self.client().txn(txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        Err(match self.busy(resp.op_responses())? {
            Some(Busy::Leased(holder)) => CoordError::LeaseHeld(holder),
            Some(Busy::Held(reader)) => CoordError::VolumeHeld(reader),
            Some(Busy::Deleting(spm)) => CoordError::ImageDeleting(spm),
            // The holder vanished between compare and get; the caller may simply try again.
            None => CoordError::LeaseHeld(VolumeLease::default()),
        })
    }

    /// Releases the lease of `volume` if it is still the one taken at `token`. Returns whether it was.
    pub async fn release_volume_lease(&self, volume: &VolumeKey, token: i64) -> Result<bool> {
        let key = self.keys().volume_lease(volume);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                token,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.client().txn(txn).await?.succeeded())
    }

    /// Whether the lease of `volume` is still the one taken at `token`.
    pub async fn holds_volume_lease(&self, volume: &VolumeKey, token: i64) -> Result<bool> {
        Ok(self
            .volume_lease(volume)
            .await?
            .is_some_and(|l| l.revision == token))
    }

    /// Who holds the lease of `volume`, with its fencing token in `revision`.
    pub async fn volume_lease(&self, volume: &VolumeKey) -> Result<Option<VolumeLease>> {
        let resp = self
            .client()
            .get(self.keys().volume_lease(volume), None)
            .await?;
        resp.kvs()
            .first()
            .map(|kv| {
                decode::<VolumeLease>(kv.key(), kv.value()).map(|mut l| {
                    l.revision = kv.create_revision();
                    l
                })
            })
            .transpose()
    }

    /// Returns once `volume`'s lease has changed — at once if it has none, else when its key is
    /// deleted (released, or expired with its holder's session) or written. Waiting for a lost
    /// writer's lease is what recovery does most; a watch wakes it at the expiry, where a poll
    /// would add up to its period. Callers read the volume again afterwards and bound the wait
    /// with their own timeout.
    pub async fn volume_lease_released(&self, volume: &VolumeKey) -> Result<()> {
        let key = self.keys().volume_lease(volume);
        let resp = self.client().get(key.clone(), None).await?;
        if resp.kvs().is_empty() {
            return Ok(());
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.key_changed_after(key, revision).await
    }
}

/// A volume lease taken for one operation, released on every path: by [`LeaseGuard::release`], or
/// — when the operation returned early, panicked or its future was dropped (a cancelled call) — by
/// a task spawned on drop. Without it, a lease left behind would block the volume until the
/// holder's session ends.
pub struct LeaseGuard {
    leases: Arc<dyn VolumeLeases>,
    volume: VolumeKey,
    token: i64,
    released: bool,
}

impl LeaseGuard {
    /// Guards the lease of `volume` taken at `token`.
    pub fn new(leases: &Arc<dyn VolumeLeases>, volume: VolumeKey, token: i64) -> Self {
        Self {
            leases: leases.clone(),
            volume,
            token,
            released: false,
        }
    }

    /// The lease's fencing token.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// Releases the lease now; whether it was still the one taken at the token.
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.leases
            .release_volume_lease(&self.volume, self.token)
            .await
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (leases, volume, token) = (self.leases.clone(), self.volume, self.token);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if !matches!(leases.release_volume_lease(&volume, token).await, Ok(true)) {
                    tracing::warn!(%volume, "lease not released; it expires with the session");
                }
            });
        }
    }
}
