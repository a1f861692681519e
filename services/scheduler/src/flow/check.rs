//! A persisted flow is read before it is run. A record written by another version or edited by
//! hand may name a step or a volume state this scheduler does not know, or ids that do not parse.
//! Running such a flow from a default would be wrong in the worst way — an unknown step read as the
//! first one re-runs the structure step over a half-moved disk, a corrupt disk reference becomes the
//! nil id — so the flow is **parked** instead (`runner::park`): nothing of it runs, its disks stay
//! locked, and its operation ends with `NEEDS_OPERATOR` naming what is wrong, visible in
//! `dpctl ops list` and kept (no retention lease) until an operator deletes it. A volume is read
//! as the runner reads it (`volume_state.rs`): a copy in progress must name a valid job and host.
use datapath_api::{
    pb::{self, OperationKind, OperationStep},
    volume::{DiskKey, VolumeKey},
};

use super::{state::meta, volume_state::CopyState};

/// Why `flow` cannot be run safely, if it cannot.
pub fn unreadable(flow: &pb::Flow) -> Option<String> {
    let Some(operation) = &flow.operation else {
        return Some("the flow has no operation".into());
    };
    let Some(m) = &operation.metadata else {
        return Some("the operation has no metadata".into());
    };
    if !matches!(
        OperationStep::try_from(m.step),
        Ok(s) if s != OperationStep::Unspecified
    ) {
        return Some(format!("step {} is not one this scheduler knows", m.step));
    }
    if !matches!(
        OperationKind::try_from(meta(flow).kind),
        Ok(k) if k != OperationKind::Unspecified
    ) {
        return Some(format!("kind {} is not one this scheduler knows", m.kind));
    }
    for (i, v) in flow.volumes.iter().enumerate() {
        if let Err(bad) = CopyState::of(v) {
            return Some(format!("volume {i}: {bad}"));
        }
        for (field, r) in [("source", &v.source), ("destination", &v.destination)] {
            if VolumeKey::from_pb(field, r.as_ref()).is_err() {
                return Some(format!("volume {i} has no valid {field}"));
            }
        }
    }
    let disks = std::iter::once(("destination", flow.destination.as_ref()))
        .chain(
            flow.exclusive_locks
                .iter()
                .map(|d| ("exclusive_locks", Some(d))),
        )
        .chain(flow.shared_locks.iter().map(|d| ("shared_locks", Some(d))));
    for (field, d) in disks {
        if DiskKey::from_pb(field, d).is_err() {
            return Some(format!("its {field} names no valid disk"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use datapath_api::{
        ids::{HostId, JobId},
        pb::FlowVolumeState,
    };

    use super::*;

    fn disk() -> pb::DiskRef {
        pb::DiskRef {
            storage_domain_id: uuid::Uuid::new_v4().to_string(),
            image_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn volume(d: &pb::DiskRef) -> pb::VolumeRef {
        pb::VolumeRef {
            storage_domain_id: d.storage_domain_id.clone(),
            image_id: d.image_id.clone(),
            volume_id: uuid::Uuid::new_v4().to_string(),
        }
    }

    fn flow() -> pb::Flow {
        let (src, dst) = (disk(), disk());
        pb::Flow {
            operation: Some(pb::Operation {
                metadata: Some(pb::OperationMetadata {
                    kind: OperationKind::MoveDisk as i32,
                    step: OperationStep::CopyData as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: vec![pb::FlowVolume {
                source: Some(volume(&src)),
                destination: Some(volume(&dst)),
                state: FlowVolumeState::Copying as i32,
                job_id: JobId::random().to_string(),
                host_id: HostId::random().to_string(),
                ..Default::default()
            }],
            destination: Some(dst.clone()),
            exclusive_locks: vec![src, dst],
            ..Default::default()
        }
    }

    #[test]
    fn a_flow_is_run_only_when_every_part_of_it_is_known() {
        assert_eq!(unreadable(&flow()), None);
        type Breaks = fn(&mut pb::Flow);
        let broken: [(&str, Breaks); 9] = [
            ("step", |f| {
                f.operation
                    .as_mut()
                    .unwrap()
                    .metadata
                    .as_mut()
                    .unwrap()
                    .step = 99
            }),
            ("step", |f| {
                f.operation
                    .as_mut()
                    .unwrap()
                    .metadata
                    .as_mut()
                    .unwrap()
                    .step = 0
            }),
            ("kind", |f| {
                f.operation
                    .as_mut()
                    .unwrap()
                    .metadata
                    .as_mut()
                    .unwrap()
                    .kind = 42
            }),
            ("state", |f| f.volumes[0].state = 17),
            ("job id", |f| f.volumes[0].job_id.clear()),
            ("host id", |f| f.volumes[0].host_id = "h1".into()),
            ("source", |f| {
                f.volumes[0].source.as_mut().unwrap().volume_id = "x".into()
            }),
            ("destination", |f| f.destination = None),
            ("exclusive_locks", |f| f.exclusive_locks[1].image_id.clear()),
        ];
        for (what, breaks) in broken {
            let mut f = flow();
            breaks(&mut f);
            let why = unreadable(&f).unwrap_or_else(|| panic!("{what} went unnoticed"));
            assert!(why.contains(what), "{what}: {why}");
        }
        let mut no_op = flow();
        no_op.operation = None;
        assert!(unreadable(&no_op).is_some());
    }
}
