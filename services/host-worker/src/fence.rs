//! FenceVolume: the SPM's half of the engine's fallback. When a copy's job or host is lost and the
//! destination's lease is free but its generation undecided, the engine asks the SPM to fence the
//! volume. Under the volume's lease:
//! 1. the volume gets a fresh data file (`storage/fresh.rs`), so a writer that is stopped but alive
//!    (a frozen host's qemu-img) keeps only an unlinked file and its image lock on it;
//! 2. the generation is raised past every attempt that may still be out there (a job queued on a
//!    partitioned host, say), first in etcd — in one transaction with the lease — then in the
//!    metadata, and the volume stays ILLEGAL. Any such attempt then fails its generation check
//!    instead of committing over a retry.
//!
//! The file comes first: a fencer that dies after it leaves a volume at its old generation with an
//! empty file, which the engine fences again; the other order could leave a raised generation —
//! read as "already fenced" — over the stale writer's file.
//!
//! Generation arithmetic is checked: at `u64::MAX` the fence is refused (GENERATION_EXHAUSTED)
//! before anything changes, and the fencer's lease is released on every path (a guard).
#![deny(clippy::arithmetic_side_effects)]
use std::sync::Arc;

use datapath_api::{
    ids::JobId,
    job_error::JobErrorCode,
    pb,
    volume::{Legality, VolumeKey},
};
use datapath_coord::{
    generations::Refused, lease_store::VolumeLeases, volume_leases::LeaseGuard, CoordError,
};
use tracing::{info, warn};

use crate::{error::Error, spm, storage::Storage, worker::Worker};

/// Fences `req.volume` if its copy from `req.generation` did not commit; returns whether it did.
pub async fn fence_volume(
    worker: &Arc<Worker>,
    req: &pb::FenceVolumeRequest,
) -> Result<bool, Error> {
    let volume = VolumeKey::from_pb("volume", req.volume.as_ref())?;
    worker.storage.read_meta(&volume, "volume")?;
    spm::require(worker).await?;
    let lease_id = worker.lease_id()?;
    if worker.jobs.writing(&volume).is_some() {
        return Err(lease_held(&volume, "a job of this host"));
    }
    let fencer = JobId::random();
    let token = match worker
        .leases
        .acquire_volume_lease(&volume, worker.host_id, fencer, lease_id)
        .await
    {
        Ok(token) => token,
        Err(CoordError::LeaseHeld(h)) => {
            return Err(lease_held(
                &volume,
                &format!("job {} on host {}", h.job_id, h.host_id),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let lease = LeaseGuard::new(&worker.leases, volume, token);
    let (storage, leases) = (&worker.storage, &*worker.leases);
    let result = fence_under_lease(storage, leases, &volume, lease.token(), req.generation).await;
    if !matches!(lease.release().await, Ok(true)) {
        warn!(%volume, "fence lease not released; it expires with the session");
    }
    result
}

fn lease_held(volume: &VolumeKey, holder: &str) -> Error {
    Error::precondition(
        JobErrorCode::LeaseHeld.as_str(),
        "volume",
        format!("volume {volume} is leased by {holder}: its copy may still run"),
    )
}

/// No generation is left above the volume's.
#[derive(Debug, PartialEq, Eq)]
pub struct Exhausted;

/// The generation a fence records, from the metadata file's generation and legality, the one etcd
/// records, and the generation `from` the lost copy started at: `None` when that copy did commit
/// (the file and etcd both at `from + 1`, LEGAL); otherwise one above everything any attempt may
/// hold — above the file, the record and `from + 1` — or [`Exhausted`].
pub fn fence_target(
    on_file: u64,
    recorded: Option<u64>,
    from: u64,
    legal: bool,
) -> Result<Option<u64>, Exhausted> {
    let current = on_file.max(recorded.unwrap_or(0));
    let committed = from.checked_add(1).ok_or(Exhausted)?;
    if current == committed && on_file == committed && legal {
        return Ok(None);
    }
    current
        .max(committed)
        .checked_add(1)
        .map(Some)
        .ok_or(Exhausted)
}

fn exhausted(volume: &VolumeKey) -> Error {
    Error::precondition(
        JobErrorCode::GenerationExhausted.as_str(),
        "volume",
        format!("volume {volume} is at the highest generation: it cannot be fenced again"),
    )
}

/// The fence itself, under the lease taken at `token`; whether it fenced (see the module's text).
async fn fence_under_lease(
    storage: &Storage,
    leases: &dyn VolumeLeases,
    volume: &VolumeKey,
    token: i64,
    from: u64,
) -> Result<bool, Error> {
    let mut meta = storage.read_meta(volume, "volume")?;
    let recorded = leases.generation(volume).await?;
    let legal = meta.legality == Legality::Legal;
    let fenced = match fence_target(meta.generation, recorded.map(|(g, _)| g), from, legal) {
        Ok(Some(fenced)) => fenced,
        Ok(None) => {
            info!(%volume, generation = meta.generation, "not fenced: the copy did commit");
            return Ok(false);
        }
        Err(Exhausted) => return Err(exhausted(volume)),
    };
    let fresh = storage.prepare_fresh_file(volume, &meta).await?;
    if !leases.holds_volume_lease(volume, token).await? {
        return Err(Error::SessionLost);
    }
    fresh.install()?;
    info!(%volume, "fresh data file installed");
    match leases
        .fence_generation(volume, token, recorded, fenced)
        .await?
    {
        Ok(()) => {}
        Err(Refused::LeaseLost) => return Err(Error::SessionLost),
        Err(Refused::Exhausted) => return Err(exhausted(volume)),
        Err(Refused::GenerationMoved { found }) => {
            return Err(Error::precondition(
                "GENERATION_MOVED",
                "generation",
                format!("the recorded generation moved to {found} while fencing; retry"),
            ))
        }
    }
    meta.generation = fenced;
    meta.legality = Legality::Illegal;
    storage.write_meta(volume, &meta)?;
    info!(%volume, from, fenced, "volume fenced");
    Ok(true)
}

#[cfg(test)]
mod under_lease_tests;

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // the properties compare in u128, where nothing wraps
mod tests {
    use proptest::prelude::*;

    use super::{fence_target, Exhausted};

    proptest! {
        /// A fence always lands above every generation any attempt may hold, or says there is
        /// none left; it never wraps and never panics, at any value.
        #[test]
        fn a_fence_lands_above_everything_or_is_refused(
            on_file in prop_oneof![any::<u64>(), (u64::MAX - 3)..=u64::MAX, 0u64..8],
            recorded in proptest::option::of(prop_oneof![any::<u64>(), (u64::MAX - 3)..=u64::MAX, 0u64..8]),
            from in prop_oneof![any::<u64>(), (u64::MAX - 3)..=u64::MAX, 0u64..8],
            legal in any::<bool>(),
        ) {
            let highest = on_file.max(recorded.unwrap_or(0));
            match fence_target(on_file, recorded, from, legal) {
                Ok(Some(g)) => {
                    prop_assert!(g > highest);
                    prop_assert!(u128::from(g) > u128::from(from) + 1);
                }
                Ok(None) => {
                    prop_assert!(legal);
                    prop_assert_eq!(u128::from(on_file), u128::from(from) + 1);
                    prop_assert_eq!(highest, on_file);
                }
                Err(Exhausted) => {
                    prop_assert!(from == u64::MAX || highest.max(from + 1) == u64::MAX);
                }
            }
        }
    }

    #[test]
    fn a_committed_copy_is_not_fenced_and_the_top_is_refused() {
        assert_eq!(fence_target(4, Some(4), 3, true), Ok(None));
        assert_eq!(fence_target(4, Some(4), 3, false), Ok(Some(5)));
        assert_eq!(fence_target(3, None, 3, false), Ok(Some(5)));
        assert_eq!(fence_target(0, Some(u64::MAX), 0, false), Err(Exhausted));
        assert_eq!(fence_target(0, None, u64::MAX, false), Err(Exhausted));
    }
}
