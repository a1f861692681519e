//! MoveDisk and CloneDisk: validate the request, refuse a locked disk, check what live hosts report,
//! then create the flow, its request key and its disk locks in one etcd transaction. Nothing is
//! written unless every check passes, and the acting scheduler picks the flow up from its watch. A
//! request id names one operation however its retries race (AIP-155).
use std::sync::Arc;

use datapath_api::{
    error::FieldViolation,
    ids::{ImageId, OperationId, StorageDomainId, VolumeId},
    pb,
    volume::{Allocation, DiskKey, Format, VolumeKey},
};
use datapath_coord::{
    disk_locks::{Claim, LockRefusal},
    flows::{FlowStart, Versioned},
    CoordError,
};
use tonic::Code;

use crate::{clients::HostClient, engine::Engine, error::Error, flow::plan};

/// The operation an earlier request with this id started, if any (AIP-155).
async fn replay(engine: &Engine, request_id: &str) -> Result<Option<pb::Operation>, Error> {
    if request_id.is_empty() {
        return Ok(None);
    }
    let Some(op) = engine.coord.request_operation(request_id).await? else {
        return Ok(None);
    };
    Ok(engine
        .coord
        .get_flow(op)
        .await?
        .and_then(|f| f.value.operation))
}

/// Every volume of `disk`, base first; `None` when the host does not have the image.
async fn chain(
    host: &mut HostClient,
    disk: &DiskKey,
) -> Result<Option<Vec<pb::VolumeInfo>>, tonic::Status> {
    let mut volumes = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = host
            .list_volumes(pb::ListVolumesRequest {
                storage_domain_id: disk.storage_domain.to_string(),
                image_id: disk.image.to_string(),
                page_size: 1000,
                page_token,
            })
            .await;
        let resp = match resp {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(s),
        };
        volumes.extend(resp.volumes);
        if resp.next_page_token.is_empty() {
            return Ok((!volumes.is_empty()).then_some(volumes));
        }
        page_token = resp.next_page_token;
    }
}

fn host_error(status: tonic::Status) -> Error {
    Error::Host {
        host: "host-worker".into(),
        status,
    }
}

/// A request that failed while a concurrent retry of it (the same request id) started its
/// operation answers that operation: retries racing each other all get the one operation (AIP-155),
/// where the losers would otherwise see the winner's disk lock (or its half-created destination).
/// A malformed request stays refused, as it is before its id is looked at.
async fn settle(
    engine: &Engine,
    request_id: &str,
    result: Result<pb::Operation, Error>,
) -> Result<pb::Operation, Error> {
    match result {
        Err(e) if !request_id.is_empty() && !matches!(e, Error::Invalid(_)) => {
            match replay(engine, request_id).await {
                Ok(Some(op)) => Ok(op),
                _ => Err(e),
            }
        }
        other => other,
    }
}

/// Starts a move of a disk to another storage domain.
pub async fn move_disk(
    engine: &Arc<Engine>,
    req: &pb::MoveDiskRequest,
) -> Result<pb::Operation, Error> {
    datapath_api::limits::request_id("request_id", &req.request_id)?;
    let result = try_move_disk(engine, req).await;
    settle(engine, &req.request_id, result).await
}

/// Starts a clone of a template volume into a new disk.
pub async fn clone_disk(
    engine: &Arc<Engine>,
    req: &pb::CloneDiskRequest,
) -> Result<pb::Operation, Error> {
    datapath_api::limits::request_id("request_id", &req.request_id)?;
    let result = try_clone_disk(engine, req).await;
    settle(engine, &req.request_id, result).await
}

async fn try_move_disk(
    engine: &Arc<Engine>,
    req: &pb::MoveDiskRequest,
) -> Result<pb::Operation, Error> {
    let source = DiskKey::from_pb("image", req.image.as_ref())?;
    let dst_sd = StorageDomainId::parse(
        "destination_storage_domain_id",
        &req.destination_storage_domain_id,
    )?;
    if dst_sd == source.storage_domain {
        return Err(FieldViolation::new(
            "destination_storage_domain_id",
            "SAME_STORAGE_DOMAIN",
            "the disk is already in this storage domain",
        )
        .into());
    }
    if let Some(op) = replay(engine, &req.request_id).await? {
        return Ok(op);
    }
    let destination = DiskKey {
        storage_domain: dst_sd,
        image: source.image,
    };
    let owned = [
        (source, "image"),
        (destination, "destination_storage_domain_id"),
    ];
    let mut src_host = engine
        .host_reaching(
            &source.storage_domain.to_string(),
            "image.storage_domain_id",
        )
        .await?;
    let mut dst_host = engine
        .host_reaching(&dst_sd.to_string(), "destination_storage_domain_id")
        .await?;
    // The locks and both hosts' views are read at once; they are judged in this order.
    let disks = [source, destination];
    let (locks, src_chain, dst_chain) = tokio::join!(
        engine.locks.disk_locks(&disks),
        chain(&mut src_host, &source),
        chain(&mut dst_host, &destination),
    );
    let locks = locks?;
    refuse_locked(&locks, &owned, None)?;
    let volumes = src_chain
        .map_err(host_error)?
        .ok_or_else(|| Error::NotFound {
            what: format!("disk {source}"),
            field: "image.image_id".into(),
            reason: "DISK_NOT_FOUND",
        })?;
    if let Some(v) = volumes
        .iter()
        .find(|v| v.metadata.as_ref().map(|m| m.legality) != Some(pb::Legality::Legal as i32))
    {
        let id = v
            .volume
            .as_ref()
            .map(|r| r.volume_id.clone())
            .unwrap_or_default();
        return Err(Error::precondition(
            "DISK_ILLEGAL",
            "image",
            format!("volume {id} of disk {source} is ILLEGAL: it cannot be moved"),
        ));
    }
    if dst_chain.map_err(host_error)?.is_some() {
        return Err(Error::Exists {
            what: format!("image {} in storage domain {dst_sd}", source.image),
            field: "destination_storage_domain_id".into(),
        });
    }
    let op = OperationId::time_ordered();
    let flow = plan::move_flow(op, &req.request_id, &source, &destination, &volumes)
        .map_err(|why| host_error(tonic::Status::data_loss(why)))?;
    start(engine, op, flow.to_pb(), &owned, None, locks).await
}

async fn try_clone_disk(
    engine: &Arc<Engine>,
    req: &pb::CloneDiskRequest,
) -> Result<pb::Operation, Error> {
    let template = VolumeKey::from_pb("template_volume", req.template_volume.as_ref())?;
    let dst_sd = StorageDomainId::parse(
        "destination_storage_domain_id",
        &req.destination_storage_domain_id,
    )?;
    let new = VolumeKey {
        storage_domain: dst_sd,
        image: optional_id(&req.new_image_id, "new_image_id")?
            .map_or_else(ImageId::random, ImageId::from),
        volume: optional_id(&req.new_volume_id, "new_volume_id")?
            .map_or_else(VolumeId::random, VolumeId::from),
    };
    let format = (req.format != 0)
        .then(|| Format::from_pb("format", req.format))
        .transpose()?;
    let allocation = Allocation::from_pb_or("allocation", req.allocation, Allocation::Sparse)?;
    if new.image == template.image {
        return Err(FieldViolation::new(
            "new_image_id",
            "INVALID_VALUE",
            "the new disk needs an image id of its own",
        )
        .into());
    }
    if let Some(op) = replay(engine, &req.request_id).await? {
        return Ok(op);
    }
    let owned = [(new.disk(), "new_image_id")];
    let mut src_host = engine
        .host_reaching(
            &template.storage_domain.to_string(),
            "template_volume.storage_domain_id",
        )
        .await?;
    let mut dst_host = engine
        .host_reaching(&dst_sd.to_string(), "destination_storage_domain_id")
        .await?;
    // The locks and both hosts' views are read at once; they are judged in this order.
    let (disks, new_disk) = ([new.disk(), template.disk()], new.disk());
    let (locks, info, dst_chain) = tokio::join!(
        engine.locks.disk_locks(&disks),
        src_host.get_volume_info(pb::GetVolumeInfoRequest {
            volume: Some(template.to_pb()),
        }),
        chain(&mut dst_host, &new_disk),
    );
    let locks = locks?;
    refuse_locked(&locks, &owned, Some(template.disk()))?;
    let info = info
        .map_err(|s| match s.code() {
            Code::NotFound => Error::NotFound {
                what: format!("template volume {template}"),
                field: "template_volume".into(),
                reason: "VOLUME_NOT_FOUND",
            },
            _ => host_error(s),
        })?
        .into_inner()
        .volume
        .unwrap_or_default();
    let meta = info.metadata.clone().unwrap_or_default();
    if meta.legality != pb::Legality::Legal as i32 {
        return Err(Error::precondition(
            "TEMPLATE_ILLEGAL",
            "template_volume",
            format!("template volume {template} is ILLEGAL"),
        ));
    }
    if dst_chain.map_err(host_error)?.is_some() {
        return Err(Error::Exists {
            what: format!("image {} in storage domain {dst_sd}", new.image),
            field: "new_image_id".into(),
        });
    }
    let format = format.map(Format::to_pb).unwrap_or_else(|| {
        pb::VolumeFormat::try_from(meta.format).unwrap_or(pb::VolumeFormat::Cow)
    });
    let op = OperationId::time_ordered();
    let flow = plan::clone_flow(op, &req.request_id, &info, &new, format, allocation.to_pb())
        .map_err(|why| host_error(tonic::Status::data_loss(why)))?;
    start(
        engine,
        op,
        flow.to_pb(),
        &owned,
        Some(template.disk()),
        locks,
    )
    .await
}

fn optional_id(text: &str, field: &str) -> Result<Option<uuid::Uuid>, FieldViolation> {
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(ImageId::parse(field, text)?.uuid()))
}

/// Refuses a request whose disks are locked (`locks`: the owned disks' locks, then the read
/// one's, as read) before anything hosts say is looked at: a disk another operation owns is LOCKED
/// whatever its volumes look like meanwhile (half created in a destination, half deleted in a
/// source), and [`start`] checks again in its transaction.
fn refuse_locked(
    locks: &[Versioned<pb::DiskLock>],
    owned: &[(DiskKey, &str)],
    read: Option<DiskKey>,
) -> Result<(), Error> {
    for ((disk, field), lock) in owned.iter().zip(locks) {
        if !lock.value.owner.is_empty() {
            return Err(Error::Locked {
                disk: *disk,
                owner: lock.value.owner.clone(),
                field: field.to_string(),
            });
        }
    }
    if let (Some(disk), Some(lock)) = (read, locks.get(owned.len())) {
        if lock.value.deleting {
            return Err(being_deleted(&disk, &lock.value.owner));
        }
    }
    Ok(())
}

fn being_deleted(disk: &DiskKey, owner: &str) -> Error {
    Error::precondition(
        "DISK_BEING_DELETED",
        "template_volume",
        format!("disk {disk} is being deleted by {owner}"),
    )
}

/// Takes the locks and writes the flow in one transaction (`datapath_coord::disk_locks`, which
/// re-reads the locks while one changes, a bounded number of times); `locks` as read before.
async fn start(
    engine: &Engine,
    op: OperationId,
    flow: pb::Flow,
    owned: &[(DiskKey, &str)],
    read: Option<DiskKey>,
    locks: Vec<Versioned<pb::DiskLock>>,
) -> Result<pb::Operation, Error> {
    let claims: Vec<(DiskKey, Claim)> = owned
        .iter()
        .map(|(disk, _)| (*disk, Claim::Own))
        .chain(read.map(|disk| (disk, Claim::Read)))
        .collect();
    let started = match engine
        .locks
        .start_flow_locked(op, &flow, &claims, Some(locks))
        .await
    {
        Err(CoordError::LockBusy(_)) => {
            return Err(Error::precondition(
                "DISK_BUSY",
                "image",
                "the disk's lock kept changing; try again",
            ))
        }
        other => other?,
    };
    match started {
        Ok(FlowStart::RequestExists(existing)) => {
            let op = engine.coord.get_flow(existing).await?;
            op.and_then(|f| f.value.operation)
                .ok_or(Error::OperationNotFound(existing))
        }
        Ok(_) => Ok(flow.operation.clone().unwrap_or_default()),
        Err(LockRefusal::Owned { disk, owner }) => Err(Error::Locked {
            disk,
            owner,
            field: owned
                .iter()
                .find(|(d, _)| *d == disk)
                .map_or("image", |(_, f)| *f)
                .to_string(),
        }),
        Err(LockRefusal::Deleting { disk, owner }) => Err(being_deleted(&disk, &owner)),
    }
}
