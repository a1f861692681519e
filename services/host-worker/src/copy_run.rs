//! An accepted copy, steps 3–6 of `copy.rs`: wait for a job slot, check the source's chain and hold
//! it for reading, take the destination's lease, and under it copy through the job's attempt name (`storage/fresh.rs`), flush, and commit the new
//! generation in one etcd transaction on the lease's fencing token.
//!
//! Every write this worker makes to the volume's name — the attempt link, the ILLEGAL mark — comes
//! right after a fresh read of its lease, and qemu-img writes only the file opened through the
//! attempt name (by its descriptor: `image_files.rs`), which the lease read proved to be the
//! volume's file while the lease stood. A worker stopped anywhere in here and
//! woken after its lease expired (and the volume was fenced with a fresh file) therefore writes only
//! into the unlinked old file, and its commit is refused by etcd.
use std::{sync::Arc, time::Duration};

use datapath_api::{
    job_error::JobErrorCode,
    volume::{CopyDataSpec, Legality, VolumeKey},
};
use datapath_coord::{
    generations::Refused as CommitRefused,
    volume_holds::{Busy, HoldGuard},
    CoordError,
};
use tracing::{info, warn, Instrument as _};

use crate::{
    copier,
    copy::Failure,
    copy_failure::{storage_failure, CopyEnds},
    error::Error,
    image_files::OpenChain,
    jobs::{JobControl, StopReason},
    metrics::CopyMeter,
    qemu, spans,
    worker::Worker,
};

/// Runs an accepted job: slot, lease, copy, commit; the lease is released whatever happens.
pub(crate) async fn execute(
    worker: &Arc<Worker>,
    spec: &CopyDataSpec,
    control: &JobControl,
    meter: &CopyMeter,
) -> Result<(), Failure> {
    let id = spec.job_id;
    let _permit = tokio::select! {
        permit = worker.slots.clone().acquire_owned() => permit.map_err(|_| Failure::Stopped(StopReason::Shutdown))?,
        reason = control.stopped() => return Err(Failure::Stopped(reason)),
    };
    if let Some(reason) = control.reason() {
        return Err(Failure::Stopped(reason));
    }
    let lease_id = worker
        .lease_id()
        .map_err(|_| Failure::Stopped(StopReason::Fenced))?;
    worker
        .jobs
        .update(id, |j| j.set_status(datapath_api::pb::JobStatus::Running));
    worker
        .reporter
        .status(
            id,
            datapath_api::pb::JobStatus::Running,
            None,
            Duration::from_secs(30),
        )
        .await;
    let dst = spec.destination.volume;
    let (src_files, holds) = hold_source(worker, spec, lease_id).await?;
    let token = take_destination_lease(worker, spec, lease_id).await?;
    info!(%id, volume = %dst, token, "destination lease taken");
    let result = copy_under_lease(worker, spec, control, token, meter, &src_files).await;
    // The destination's lease and the source's read holds go in one transaction. Unfinished in
    // time, the holds are released by their guard's drop; the lease expires with the session.
    let released = tokio::time::timeout(
        Duration::from_secs(3),
        holds.release_with_lease(&dst, token),
    )
    .await;
    match released {
        Ok(Ok(true)) => {
            info!(%id, volume = %dst, "destination lease and source read holds released")
        }
        other => {
            warn!(%id, volume = %dst, ?other, "destination lease not released; it expires with the session")
        }
    }
    result
}

/// Checks the source's files and backing chain, then takes the job's read hold on every volume of
/// it (`volume_holds.rs`): from here until the job ends, the source cannot be deleted or written.
/// Both happen before the destination is touched.
async fn hold_source(
    worker: &Worker,
    spec: &CopyDataSpec,
    lease_id: i64,
) -> Result<(OpenChain, HoldGuard), Failure> {
    let src = spec.source.volume;
    let chain = crate::backing::check_chain(&worker.storage, &src, "source.volume")
        .await
        .map_err(|e| storage_failed("read", &src, &e))?;
    match worker
        .coord
        .hold_volumes(&chain.volumes, worker.host_id, spec.job_id, lease_id)
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(Busy::Deleting(_))) => {
            return Err(Failure::failed(
                JobErrorCode::ImageDeleting,
                format!("the image of source volume {src} is being deleted"),
            ))
        }
        Ok(Err(Busy::Leased(h) | Busy::Held(h))) => {
            return Err(Failure::failed(
                JobErrorCode::LeaseHeld,
                format!(
                    "a volume of the chain of source volume {src} is written by job {} on host {}",
                    h.job_id, h.host_id
                ),
            ))
        }
        Err(e) => return Err(etcd_failed(&e)),
    }
    let holds = HoldGuard::new(&worker.coord, chain.volumes, spec.job_id);
    Ok((chain.files, holds))
}

/// Takes the destination's volume lease (its fencing token).
async fn take_destination_lease(
    worker: &Worker,
    spec: &CopyDataSpec,
    lease_id: i64,
) -> Result<i64, Failure> {
    let dst = spec.destination.volume;
    match worker
        .leases
        .acquire_volume_lease(&dst, worker.host_id, spec.job_id, lease_id)
        .await
    {
        Ok(token) => Ok(token),
        Err(CoordError::LeaseHeld(h)) => Err(Failure::failed(
            JobErrorCode::LeaseHeld,
            format!(
                "volume {dst} is leased by job {} on host {}",
                h.job_id, h.host_id
            ),
        )),
        Err(CoordError::VolumeHeld(h)) => Err(Failure::failed(
            JobErrorCode::VolumeInUse,
            format!(
                "volume {dst} is read by job {} on host {}",
                h.job_id, h.host_id
            ),
        )),
        Err(CoordError::ImageDeleting(_)) => Err(Failure::failed(
            JobErrorCode::ImageDeleting,
            format!("the image of destination volume {dst} is being deleted"),
        )),
        Err(e) => Err(etcd_failed(&e)),
    }
}

fn etcd_failed(e: &CoordError) -> Failure {
    Failure::failed(JobErrorCode::EtcdUnavailable, format!("etcd: {e}"))
}

fn storage_failed(what: &str, volume: &VolumeKey, e: &Error) -> Failure {
    warn!(%volume, error = %e, "storage operation of a copy failed");
    let (code, message) = storage_failure(what, volume, e);
    Failure::failed(code, message)
}

/// Confirms with a fresh etcd read that the lease taken at `token` still stands: nothing fenced
/// the volume since it was taken.
async fn confirm_lease(worker: &Worker, volume: &VolumeKey, token: i64) -> Result<(), Failure> {
    match worker.leases.holds_volume_lease(volume, token).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::Stopped(StopReason::Fenced)),
        Err(e) => Err(etcd_failed(&e)),
    }
}

async fn copy_under_lease(
    worker: &Arc<Worker>,
    spec: &CopyDataSpec,
    control: &JobControl,
    token: i64,
    meter: &CopyMeter,
    src_files: &OpenChain,
) -> Result<(), Failure> {
    let storage = &worker.storage;
    let (src, dst) = (spec.source.volume, spec.destination.volume);
    let on_disk = storage
        .read_meta(&dst, "destination.volume")
        .map_err(|e| storage_failed("read the metadata of", &dst, &e))?;
    let mut dmeta = on_disk.clone();
    // A commit or fence recorded in etcd whose metadata write was lost (a crash in between) counts:
    // the volume is at the recorded generation, and not LEGAL.
    match worker.leases.generation(&dst).await {
        Ok(Some((recorded, _))) if recorded > dmeta.generation => {
            dmeta.generation = recorded;
            dmeta.legality = Legality::Illegal;
        }
        Ok(_) => {}
        Err(e) => return Err(etcd_failed(&e)),
    }
    if let Some(g) = spec
        .destination
        .generation
        .filter(|g| *g != dmeta.generation)
    {
        return Err(Failure::failed(
            JobErrorCode::GenerationMismatch,
            format!(
                "destination volume {dst} is at generation {}, not {g}",
                dmeta.generation
            ),
        ));
    }
    let generation = dmeta.generation;
    // Checked before a byte is copied: a volume at the highest generation can never commit.
    let Some(committed) = generation.checked_add(1) else {
        return Err(Failure::failed(
            JobErrorCode::GenerationExhausted,
            format!(
                "destination volume {dst} is at the highest generation: it cannot be committed"
            ),
        ));
    };
    let attempt = storage
        .link_attempt(&dst, spec.job_id)
        .map_err(|e| storage_failed("link", &dst, &e))?;
    // What qemu-img writes: the attempt's file on its backing chain, every header checked.
    let dst_files = crate::backing::destination_chain(storage, &dst, &dmeta, attempt.file())
        .await
        .map_err(|e| storage_failed("open", &dst, &e))?;
    confirm_lease(worker, &dst, token).await?;
    dmeta.legality = Legality::Illegal;
    if on_disk.legality != Legality::Illegal || on_disk.generation != generation {
        storage
            .write_meta(&dst, &dmeta)
            .map_err(|e| storage_failed("mark ILLEGAL", &dst, &e))?;
    }
    let convert = qemu::Convert {
        src: src_files,
        dst: &dst_files,
        dst_backing: dmeta
            .parent
            .zip(dst_files.backing_format())
            .map(|(p, f)| (p.to_string(), f)),
        rate_limit: worker.copy_bandwidth_limit,
        preallocated: dmeta.allocation == datapath_api::volume::Allocation::Preallocated,
        watchdog: Some(crate::watchdog::timing(worker.session_ttl).0),
    };
    let (src_names, dst_names) = (src_files.names(), dst_files.names());
    let ends = CopyEnds {
        src,
        dst,
        src_names: &src_names,
        dst_names: &dst_names,
        root: storage.root(),
    };
    copier::run_copier(worker, spec.job_id, control, &convert, &ends, meter)
        .instrument(spans::copier(
            &convert,
            worker.copier == crate::native_copier::CopierKind::Native,
        ))
        .await?;

    // Flushed through the attempt's descriptor: the file this copy wrote, whatever the volume's
    // name points at now.
    let written = attempt
        .file()
        .try_clone()
        .map_err(|e| storage_failed("flush", &dst, &Error::io("sync", attempt.path(), e)))?;
    let synced = tokio::task::spawn_blocking(move || written.sync_all()).await;
    match synced {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(storage_failed(
                "flush",
                &dst,
                &Error::io("sync", attempt.path(), e),
            ))
        }
        Err(e) => {
            return Err(Failure::failed(
                JobErrorCode::StorageError,
                format!("cannot flush volume {dst}: {e}"),
            ))
        }
    }
    if let Some(reason) = control.reason() {
        return Err(Failure::Stopped(reason));
    }
    let mut now = storage
        .read_meta(&dst, "destination.volume")
        .map_err(|e| storage_failed("read the metadata of", &dst, &e))?;
    if now.generation != generation {
        return Err(Failure::failed(
            JobErrorCode::GenerationMismatch,
            format!(
                "destination volume {dst} moved from generation {generation} to {}",
                now.generation
            ),
        ));
    }
    // The fencing check, in one etcd transaction: only the holder of this very lease, and only from
    // the generation the copy started at, may commit it.
    match worker
        .leases
        .commit_generation(&dst, token, generation)
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(CommitRefused::LeaseLost)) => return Err(Failure::Stopped(StopReason::Fenced)),
        Ok(Err(CommitRefused::GenerationMoved { found })) => {
            return Err(Failure::failed(
                JobErrorCode::GenerationMismatch,
                format!(
                "destination volume {dst} moved from generation {generation} to {found} (fenced)"
            ),
            ))
        }
        Ok(Err(CommitRefused::Exhausted)) => {
            return Err(Failure::failed(
                JobErrorCode::GenerationExhausted,
                format!("destination volume {dst} is at the highest generation"),
            ))
        }
        Err(e) => return Err(etcd_failed(&e)),
    }
    now.generation = committed;
    now.legality = Legality::Legal;
    storage
        .write_meta(&dst, &now)
        .map_err(|e| storage_failed("mark LEGAL", &dst, &e))?;
    info!(job_id = %spec.job_id, volume = %dst, generation = now.generation, "destination LEGAL");
    Ok(())
}
