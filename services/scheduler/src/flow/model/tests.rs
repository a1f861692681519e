use datapath_api::ids::{HostId, ImageId, JobId, StorageDomainId};

use super::*;

fn disk() -> DiskKey {
    DiskKey {
        storage_domain: StorageDomainId::random(),
        image: ImageId::random(),
    }
}

fn volume_in(d: DiskKey) -> VolumeKey {
    VolumeKey {
        storage_domain: d.storage_domain,
        image: d.image,
        volume: VolumeId::random(),
    }
}

fn attempt() -> Attempt {
    Attempt {
        job: JobId::random(),
        host: HostId::random(),
        expected_generation: 4,
    }
}

/// A move of a two-volume chain, its base copied and its top being copied.
fn flow() -> Flow {
    let (src, dst) = (disk(), disk());
    let mut base = Volume::pending(volume_in(src), volume_in(dst));
    base.set_copy(CopyState::Copying(attempt()));
    base.set_copy(CopyState::Copied);
    base.attempts = 2;
    base.failed_hosts = vec!["h-old".into()];
    base.last_error = Some(pb::JobError {
        code: "COPY_FAILED".into(),
        message: "x".into(),
    });
    let mut top = Volume::pending(volume_in(src), volume_in(dst));
    top.parent = Some(base.destination.volume);
    top.format = pb::VolumeFormat::Cow;
    top.set_copy(CopyState::Copying(attempt()));
    top.progress = 40;
    top.job_status = pb::JobStatus::Running;
    top.transient_since = Some(datapath_api::time::now());
    Flow {
        op: OperationId::time_ordered(),
        kind: Kind::MoveDisk,
        step: Step::CopyData,
        disk: src,
        destination: dst,
        request_id: "r1".into(),
        volumes: vec![base, top],
        failure: None,
        exclusive_locks: vec![src, dst],
        shared_locks: Vec::new(),
        trace_context: HashMap::from([("traceparent".into(), "00-x".into())]),
        runs: 2,
        cancel_requested: true,
        progress: 55,
        created_at: Some(datapath_api::time::now()),
        updated_at: None,
        trace_id: "abc".into(),
        end: None,
    }
}

#[test]
fn a_flow_round_trips_through_its_stored_form() {
    let f = flow();
    assert_eq!(Flow::from_pb(f.op, &f.to_pb()), Ok(f.clone()));
    let mut ended = f;
    ended.end = Some(End::Failed(pb::OperationError {
        code: 10,
        message: "m".into(),
        reason: "R".into(),
    }));
    assert_eq!(Flow::from_pb(ended.op, &ended.to_pb()), Ok(ended.clone()));
    ended.end = Some(End::Succeeded(ended.destination));
    assert_eq!(Flow::from_pb(ended.op, &ended.to_pb()), Ok(ended));
}

#[test]
fn the_public_view_shows_each_volumes_latest_attempt() {
    let f = flow();
    let stored = f.to_pb();
    let view = stored.operation.unwrap().metadata.unwrap();
    assert_eq!(view.step, OperationStep::CopyData as i32);
    assert!(view.cancel_requested);
    let base = f.volumes[0].last_attempt.unwrap();
    assert_eq!(
        view.volumes[0].job_id,
        base.job.to_string(),
        "a copied volume keeps its job"
    );
    assert_eq!(view.volumes[0].progress, 100);
    assert_eq!(view.volumes[1].progress, 40);
    assert_eq!(
        stored.volumes[1].parent_volume_id,
        f.volumes[0].destination.volume.to_string()
    );
}

#[test]
fn a_flow_is_run_only_when_every_part_of_it_is_known() {
    let good = flow();
    type Breaks = fn(&mut pb::Flow);
    fn m(f: &mut pb::Flow) -> &mut pb::OperationMetadata {
        f.operation.as_mut().unwrap().metadata.as_mut().unwrap()
    }
    let broken: [(&str, Breaks); 14] = [
        ("step", |f| m(f).step = 99),
        ("step", |f| m(f).step = 0),
        ("kind", |f| m(f).kind = 42),
        ("state", |f| f.volumes[1].state = 17),
        ("job id", |f| f.volumes[1].job_id.clear()),
        ("host id", |f| f.volumes[1].host_id = "h1".into()),
        ("source", |f| {
            f.volumes[0].source.as_mut().unwrap().volume_id = "x".into()
        }),
        ("destination", |f| f.destination = None),
        ("exclusive_locks", |f| f.exclusive_locks[1].image_id.clear()),
        ("format", |f| f.volumes[0].format = 0),
        ("role", |f| f.volumes[0].role = 33),
        ("parent_volume_id", |f| {
            f.volumes[1].parent_volume_id = "p".into()
        }),
        ("disk", |f| m(f).disk = None),
        ("result", |f| f.operation.as_mut().unwrap().done = true),
    ];
    for (what, breaks) in broken {
        let mut f = good.to_pb();
        breaks(&mut f);
        let why = Flow::from_pb(good.op, &f).expect_err(what);
        assert!(why.contains(what), "{what}: {why}");
    }
    let mut no_op = good.to_pb();
    no_op.operation = None;
    assert!(Flow::from_pb(good.op, &no_op).is_err());
}

#[test]
fn a_past_attempts_ids_that_do_not_parse_are_dropped_not_fatal() {
    let good = flow();
    let mut f = good.to_pb();
    // Volume 0 is copied: its ids are history only.
    f.volumes[0].host_id = "edited".into();
    let read = Flow::from_pb(good.op, &f).unwrap();
    assert_eq!(read.volumes[0].copy, CopyState::Copied);
    assert_eq!(read.volumes[0].last_attempt, None);
}
