//! The initial record of a new flow: the operation's public view and one entry per volume to create
//! and copy. A move keeps every id (same image and volume ids, format, capacity and parent in the
//! destination domain); a clone creates one volume in a new image and collapses the template into it.
use datapath_api::{
    ids::OperationId,
    pb::{self, FlowVolumeState, OperationKind, OperationStep},
    volume::{DiskKey, VolumeKey},
};

fn operation(op: OperationId, kind: OperationKind, disk: &DiskKey) -> pb::Operation {
    let now = datapath_api::time::now();
    pb::Operation {
        name: op.name(),
        metadata: Some(pb::OperationMetadata {
            kind: kind as i32,
            step: OperationStep::CloneStructure as i32,
            progress: 0,
            disk: Some(disk.to_pb()),
            volumes: Vec::new(),
            created_at: Some(now),
            updated_at: Some(now),
            cancel_requested: false,
            trace_id: datapath_telemetry::current_trace_id().unwrap_or_default(),
        }),
        done: false,
        result: None,
    }
}

fn weight(info: &pb::VolumeInfo) -> u64 {
    info.allocated_bytes.max(1)
}

/// A move of `source` (its chain, base first) to `destination_sd`.
pub fn move_flow(
    op: OperationId,
    request_id: &str,
    source: &DiskKey,
    destination: &DiskKey,
    chain: &[pb::VolumeInfo],
) -> pb::Flow {
    let volumes = chain
        .iter()
        .map(|info| {
            let meta = info.metadata.clone().unwrap_or_default();
            let src = info.volume.clone().unwrap_or_default();
            pb::FlowVolume {
                destination: Some(pb::VolumeRef {
                    storage_domain_id: destination.storage_domain.to_string(),
                    ..src.clone()
                }),
                source: Some(src),
                format: meta.format,
                allocation: meta.allocation,
                capacity_bytes: meta.capacity_bytes,
                parent_volume_id: meta.parent_volume_id,
                role: meta.role,
                size_bytes: weight(info),
                state: FlowVolumeState::Pending as i32,
                ..Default::default()
            }
        })
        .collect();
    pb::Flow {
        operation: Some(operation(op, OperationKind::MoveDisk, source)),
        request_id: request_id.to_string(),
        volumes,
        destination: Some(destination.to_pb()),
        failure: None,
        exclusive_locks: vec![source.to_pb(), destination.to_pb()],
        shared_locks: Vec::new(),
        trace_context: datapath_telemetry::current_carrier(),
        runs: 0,
    }
}

/// A clone of the template volume `template` into the new volume `new`.
pub fn clone_flow(
    op: OperationId,
    request_id: &str,
    template: &pb::VolumeInfo,
    new: &VolumeKey,
    format: pb::VolumeFormat,
    allocation: pb::VolumeAllocation,
) -> pb::Flow {
    let meta = template.metadata.clone().unwrap_or_default();
    let template_ref = template.volume.clone().unwrap_or_default();
    let template_disk = pb::DiskRef {
        storage_domain_id: template_ref.storage_domain_id.clone(),
        image_id: template_ref.image_id.clone(),
    };
    let volume = pb::FlowVolume {
        source: Some(template_ref),
        destination: Some(new.to_pb()),
        format: format as i32,
        allocation: allocation as i32,
        capacity_bytes: meta.capacity_bytes,
        parent_volume_id: String::new(),
        role: pb::VolumeRole::Leaf as i32,
        size_bytes: weight(template),
        state: FlowVolumeState::Pending as i32,
        ..Default::default()
    };
    pb::Flow {
        operation: Some(operation(op, OperationKind::CloneDisk, &new.disk())),
        request_id: request_id.to_string(),
        volumes: vec![volume],
        destination: Some(new.disk().to_pb()),
        failure: None,
        exclusive_locks: vec![new.disk().to_pb()],
        shared_locks: vec![template_disk],
        trace_context: datapath_telemetry::current_carrier(),
        runs: 0,
    }
}
