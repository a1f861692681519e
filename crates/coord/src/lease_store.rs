//! What a host asks of a volume's lease and generation, as one narrow trait: take and release the
//! lease (its fencing token), check it still stands, read the recorded generation, and raise it by
//! a commit or a fence under the lease. The host-worker's fence holds a `dyn VolumeLeases`, so its
//! ordering rules (file first, then the generation, and nothing on a lost lease) are unit-tested on
//! in-memory leases over real files; [`Coord`] is the etcd one (`volume_leases.rs`,
//! `generations.rs`).
use async_trait::async_trait;
use datapath_api::{
    ids::{HostId, JobId},
    volume::VolumeKey,
};

use crate::{generations::Refused, Coord, Result};

/// A volume's lease and generation.
#[async_trait]
pub trait VolumeLeases: Send + Sync {
    /// Takes `volume`'s lease for `job` on `host`, bound to `session_lease`; its fencing token, or
    /// `LeaseHeld` / `VolumeHeld` / `ImageDeleting` naming why not.
    async fn acquire_volume_lease(
        &self,
        volume: &VolumeKey,
        host: HostId,
        job: JobId,
        session_lease: i64,
    ) -> Result<i64>;

    /// Releases the lease if it is still the one taken at `token`; whether it was.
    async fn release_volume_lease(&self, volume: &VolumeKey, token: i64) -> Result<bool>;

    /// Whether the lease is still the one taken at `token`.
    async fn holds_volume_lease(&self, volume: &VolumeKey, token: i64) -> Result<bool>;

    /// The recorded generation with its mod revision; `None` if never recorded.
    async fn generation(&self, volume: &VolumeKey) -> Result<Option<(u64, i64)>>;

    /// Commits a copy: the generation goes from `from` to `from + 1` under the lease at `token`.
    async fn commit_generation(
        &self,
        volume: &VolumeKey,
        token: i64,
        from: u64,
    ) -> Result<std::result::Result<(), Refused>>;

    /// Fences: records `to` under the lease at `token` if the record is still `seen`.
    async fn fence_generation(
        &self,
        volume: &VolumeKey,
        token: i64,
        seen: Option<(u64, i64)>,
        to: u64,
    ) -> Result<std::result::Result<(), Refused>>;
}

#[async_trait]
impl VolumeLeases for Coord {
    async fn acquire_volume_lease(
        &self,
        volume: &VolumeKey,
        host: HostId,
        job: JobId,
        session_lease: i64,
    ) -> Result<i64> {
        Coord::acquire_volume_lease(self, volume, host, job, session_lease).await
    }

    async fn release_volume_lease(&self, volume: &VolumeKey, token: i64) -> Result<bool> {
        Coord::release_volume_lease(self, volume, token).await
    }

    async fn holds_volume_lease(&self, volume: &VolumeKey, token: i64) -> Result<bool> {
        Coord::holds_volume_lease(self, volume, token).await
    }

    async fn generation(&self, volume: &VolumeKey) -> Result<Option<(u64, i64)>> {
        Coord::generation(self, volume).await
    }

    async fn commit_generation(
        &self,
        volume: &VolumeKey,
        token: i64,
        from: u64,
    ) -> Result<std::result::Result<(), Refused>> {
        Coord::commit_generation(self, volume, token, from).await
    }

    async fn fence_generation(
        &self,
        volume: &VolumeKey,
        token: i64,
        seen: Option<(u64, i64)>,
        to: u64,
    ) -> Result<std::result::Result<(), Refused>> {
        Coord::fence_generation(self, volume, token, seen, to).await
    }
}
