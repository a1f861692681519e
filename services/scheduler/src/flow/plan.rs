//! The initial flow of a new operation: one entry per volume to create and copy. A move keeps every
//! id (same image and volume ids, format, capacity and parent in the destination domain); a clone
//! creates one volume in a new image and collapses the template into it. Built typed, from what a
//! host reported of the source: a volume it reports that does not read (an id or a format this
//! scheduler does not know) refuses the operation here, before anything is written.
use datapath_api::{
    ids::{OperationId, VolumeId},
    pb,
    volume::{DiskKey, VolumeKey},
};

use super::model::{Flow, Kind, Volume};

fn weight(info: &pb::VolumeInfo) -> u64 {
    info.allocated_bytes.max(1)
}

/// A reported volume's key.
fn key_of(info: &pb::VolumeInfo) -> Result<VolumeKey, String> {
    VolumeKey::from_pb("volume", info.volume.as_ref())
        .map_err(|e| format!("a host reported a volume that does not read: {e}"))
}

/// A known value of a reported enum, or what is wrong.
fn known<T: TryFrom<i32> + Default + PartialEq>(what: &str, raw: i32) -> Result<T, String> {
    match T::try_from(raw) {
        Ok(v) if v != T::default() => Ok(v),
        _ => Err(format!(
            "a host reported a volume {what} {raw} this scheduler does not know"
        )),
    }
}

/// A move of `source` (its chain, base first, as a host reported it) to `destination`.
pub fn move_flow(
    op: OperationId,
    request_id: &str,
    source: &DiskKey,
    destination: &DiskKey,
    chain: &[pb::VolumeInfo],
) -> Result<Flow, String> {
    let mut f = Flow::new(op, Kind::MoveDisk, request_id, *source);
    f.destination = *destination;
    f.exclusive_locks = vec![*source, *destination];
    for info in chain {
        let meta = info.metadata.clone().unwrap_or_default();
        let src = key_of(info)?;
        let dst = VolumeKey {
            storage_domain: destination.storage_domain,
            ..src
        };
        let mut v = Volume::pending(src, dst);
        v.format = known("format", meta.format)?;
        v.allocation = known("allocation", meta.allocation)?;
        v.role = known("role", meta.role)?;
        v.capacity_bytes = meta.capacity_bytes;
        v.parent = match meta.parent_volume_id.as_str() {
            "" => None,
            id => Some(VolumeId::parse("parent_volume_id", id).map_err(|e| e.to_string())?),
        };
        v.size_bytes = weight(info);
        f.volumes.push(v);
    }
    Ok(f)
}

/// A clone of the template volume `template` (as a host reported it) into the new volume `new`.
pub fn clone_flow(
    op: OperationId,
    request_id: &str,
    template: &pb::VolumeInfo,
    new: &VolumeKey,
    format: pb::VolumeFormat,
    allocation: pb::VolumeAllocation,
) -> Result<Flow, String> {
    let meta = template.metadata.clone().unwrap_or_default();
    let source = key_of(template)?;
    let mut f = Flow::new(op, Kind::CloneDisk, request_id, new.disk());
    f.exclusive_locks = vec![new.disk()];
    f.shared_locks = vec![source.disk()];
    let mut v = Volume::pending(source, *new);
    v.format = format;
    v.allocation = allocation;
    v.role = pb::VolumeRole::Leaf;
    v.capacity_bytes = meta.capacity_bytes;
    v.size_bytes = weight(template);
    f.volumes.push(v);
    Ok(f)
}

#[cfg(test)]
mod tests {
    use datapath_api::ids::{ImageId, StorageDomainId};

    use super::*;

    fn info(v: VolumeKey, parent: Option<VolumeId>, format: pb::VolumeFormat) -> pb::VolumeInfo {
        pb::VolumeInfo {
            volume: Some(v.to_pb()),
            metadata: Some(pb::VolumeMetadata {
                format: format as i32,
                allocation: pb::VolumeAllocation::Sparse as i32,
                role: pb::VolumeRole::Leaf as i32,
                capacity_bytes: 1 << 30,
                parent_volume_id: parent.map(|p| p.to_string()).unwrap_or_default(),
                ..Default::default()
            }),
            allocated_bytes: 5,
            ..Default::default()
        }
    }

    fn disk() -> DiskKey {
        DiskKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
        }
    }

    #[test]
    fn a_move_keeps_every_id_in_the_destination_domain_and_locks_both_disks() {
        let (src, dst) = (
            disk(),
            DiskKey {
                storage_domain: StorageDomainId::random(),
                ..disk()
            },
        );
        let src = DiskKey {
            image: dst.image,
            ..src
        };
        let base = VolumeKey {
            storage_domain: src.storage_domain,
            image: src.image,
            volume: VolumeId::random(),
        };
        let top = VolumeKey {
            volume: VolumeId::random(),
            ..base
        };
        let chain = [
            info(base, None, pb::VolumeFormat::Raw),
            info(top, Some(base.volume), pb::VolumeFormat::Cow),
        ];
        let f = move_flow(OperationId::time_ordered(), "r", &src, &dst, &chain).unwrap();
        assert_eq!(f.exclusive_locks, [src, dst]);
        assert_eq!(f.volumes[1].destination.volume, top.volume);
        assert_eq!(f.volumes[1].destination.storage_domain, dst.storage_domain);
        assert_eq!(f.volumes[1].parent, Some(base.volume));
        assert_eq!(f.volumes[1].format, pb::VolumeFormat::Cow);
        // What is planned is what is stored and run.
        assert_eq!(Flow::from_pb(f.op, &f.to_pb()), Ok(f));
    }

    #[test]
    fn a_reported_volume_that_does_not_read_refuses_the_plan() {
        let (src, dst) = (disk(), disk());
        let v = VolumeKey {
            storage_domain: src.storage_domain,
            image: src.image,
            volume: VolumeId::random(),
        };
        let mut bad = info(v, None, pb::VolumeFormat::Raw);
        bad.metadata.as_mut().unwrap().format = 77;
        let op = OperationId::time_ordered();
        assert!(move_flow(op, "", &src, &dst, &[bad])
            .unwrap_err()
            .contains("format 77"));
        let mut bad = info(v, None, pb::VolumeFormat::Raw);
        bad.volume.as_mut().unwrap().volume_id = "x".into();
        assert!(move_flow(op, "", &src, &dst, &[bad.clone()]).is_err());
        let new = VolumeKey {
            storage_domain: dst.storage_domain,
            image: dst.image,
            volume: VolumeId::random(),
        };
        let clone = clone_flow(
            op,
            "",
            &bad,
            &new,
            pb::VolumeFormat::Raw,
            pb::VolumeAllocation::Sparse,
        );
        assert!(clone.is_err());
    }
}
