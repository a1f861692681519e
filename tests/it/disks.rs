//! Helpers for the scheduler's tests: disks with snapshot chains of real random data, templates,
//! following an operation to its end, and reading a disk the way an operator would check it.
use std::{path::Path, time::Duration};

use anyhow::{bail, Context as _};
use datapath_api::pb::{self, scheduler_service_client::SchedulerServiceClient};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::harness::{fill_random, run, sha256, TestCluster};

/// A client of the scheduler.
pub async fn scheduler(tc: &TestCluster) -> SchedulerServiceClient<Channel> {
    SchedulerServiceClient::new(tc.channel(&tc.cluster.scheduler_url()).await)
}

/// Writes 1 MiB of fresh random data at `offset` into a volume (through its chain) with qemu-io.
pub fn write_random(path: &Path, format: &str, offset: u64) -> anyhow::Result<()> {
    use rand::RngCore as _;
    let data = path.with_extension("chunk");
    let mut buf = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut buf);
    std::fs::write(&data, &buf)?;
    let cmd = format!("write -s {} {offset} 1M", data.display());
    run(
        "qemu-io",
        &["-f", format, "-c", &cmd, path.to_str().context("path")?],
    )?;
    std::fs::remove_file(&data)?;
    Ok(())
}

/// Creates a volume through the SPM.
pub async fn create(
    tc: &TestCluster,
    v: &pb::VolumeRef,
    format: pb::VolumeFormat,
    capacity: u64,
    parent: Option<&pb::VolumeRef>,
    role: pb::VolumeRole,
) {
    tc.spm_host()
        .await
        .create_volume(pb::CreateVolumeRequest {
            volume: Some(v.clone()),
            format: format as i32,
            capacity_bytes: capacity,
            parent_volume_id: parent.map(|p| p.volume_id.clone()).unwrap_or_default(),
            role: role as i32,
            ..Default::default()
        })
        .await
        .expect("create volume");
}

fn vref(sd: &str, img: &str) -> pb::VolumeRef {
    pb::VolumeRef {
        storage_domain_id: sd.into(),
        image_id: img.into(),
        volume_id: uuid::Uuid::new_v4().to_string(),
    }
}

/// A disk in `sd`: a raw base and two qcow2 snapshot layers, each holding its own random data (the
/// layers also overwrite part of what is below them). Returns its volumes, base first.
pub async fn chain_disk(tc: &TestCluster, sd: &str, capacity: u64) -> Vec<pb::VolumeRef> {
    let img = uuid::Uuid::new_v4().to_string();
    let (base, mid, top) = (vref(sd, &img), vref(sd, &img), vref(sd, &img));
    use pb::{VolumeFormat::*, VolumeRole::*};
    create(tc, &base, Raw, capacity, None, Internal).await;
    fill_random(&tc.volume_path(&base), "raw", capacity, 4).unwrap();
    create(tc, &mid, Cow, capacity, Some(&base), Internal).await;
    write_random(&tc.volume_path(&mid), "qcow2", 0).unwrap();
    write_random(&tc.volume_path(&mid), "qcow2", capacity / 2 + (1 << 20)).unwrap();
    create(tc, &top, Cow, capacity, Some(&mid), Leaf).await;
    write_random(&tc.volume_path(&top), "qcow2", capacity / 3).unwrap();
    write_random(&tc.volume_path(&top), "qcow2", capacity - (1 << 20)).unwrap();
    vec![base, mid, top]
}

/// A disk of one qcow2 volume holding `mib` MiB of random data spread over `capacity`.
pub async fn qcow2_disk(tc: &TestCluster, sd: &str, capacity: u64, mib: u64) -> pb::VolumeRef {
    let v = vref(sd, &uuid::Uuid::new_v4().to_string());
    create(
        tc,
        &v,
        pb::VolumeFormat::Cow,
        capacity,
        None,
        pb::VolumeRole::Leaf,
    )
    .await;
    fill_random(&tc.volume_path(&v), "qcow2", capacity, mib).unwrap();
    v
}

/// A template: one raw volume with random data, role SHARED.
pub async fn template(tc: &TestCluster, sd: &str, capacity: u64) -> pb::VolumeRef {
    let v = vref(sd, &uuid::Uuid::new_v4().to_string());
    create(
        tc,
        &v,
        pb::VolumeFormat::Raw,
        capacity,
        None,
        pb::VolumeRole::Shared,
    )
    .await;
    fill_random(&tc.volume_path(&v), "raw", capacity, 6).unwrap();
    v
}

/// The same volume in another storage domain.
pub fn moved(v: &pb::VolumeRef, sd: &str) -> pb::VolumeRef {
    pb::VolumeRef {
        storage_domain_id: sd.into(),
        ..v.clone()
    }
}

/// sha256 of what a guest sees through a volume (its chain resolved), by converting it to raw.
pub fn content_sha256(path: &Path, format: &str) -> String {
    let raw = path.with_extension("check.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            format,
            "-O",
            "raw",
            path.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    )
    .unwrap();
    let sum = sha256(&raw);
    std::fs::remove_file(&raw).unwrap();
    sum
}

/// The extents a qcow2 layer itself holds (not its backing): `(start, length)` of its data.
pub fn own_extents(path: &Path) -> Vec<(u64, u64)> {
    let out = run(
        "qemu-img",
        &["map", "--output=json", path.to_str().unwrap()],
    )
    .unwrap();
    let map: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    map.iter()
        .filter(|e| e["depth"] == 0 && e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

/// The backing files of a qcow2 volume's chain, top first, as absolute paths.
pub fn backing_chain(path: &Path) -> Vec<String> {
    let out = run(
        "qemu-img",
        &[
            "info",
            "--backing-chain",
            "--output=json",
            path.to_str().unwrap(),
        ],
    )
    .unwrap();
    let infos: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    infos
        .iter()
        .map(|i| i["filename"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Follows an operation with WatchOperation until it is done; returns every state seen.
pub async fn follow(
    tc: &TestCluster,
    name: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<pb::Operation>> {
    follow_at(
        &tc.cluster.scheduler_url(),
        tc.cluster.client_tls(),
        name,
        deadline,
    )
    .await
}

/// [`follow`] on the scheduler replica at `url`. Like any client, it opens the watch again when the
/// scheduler answers UNAVAILABLE (etcd electing a leader, the scheduler restarting) or the stream
/// breaks, until `deadline`; any other error ends it.
pub async fn follow_at(
    url: &str,
    tls: Option<&datapath_tls::Tls>,
    name: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<pb::Operation>> {
    let until = tokio::time::Instant::now() + deadline;
    let mut seen = Vec::new();
    loop {
        if tokio::time::Instant::now() > until {
            bail!("{name} not done within {deadline:?}: {seen:#?}");
        }
        match watch_until_done(url, tls, name, until, &mut seen).await {
            Ok(true) => return Ok(seen),
            Ok(false) => {}
            Err(s) if s.code() == tonic::Code::Unavailable => {}
            Err(s) => bail!("watch of {name} failed: {s}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One WatchOperation stream; `Ok(true)` once the operation is done, `Ok(false)` if the stream
/// ended before.
async fn watch_until_done(
    url: &str,
    tls: Option<&datapath_tls::Tls>,
    name: &str,
    until: tokio::time::Instant,
    seen: &mut Vec<pb::Operation>,
) -> Result<bool, tonic::Status> {
    let channel = dpctl::client::channel(url, tls)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    let mut client = SchedulerServiceClient::new(channel);
    let mut stream = client
        .watch_operation(pb::WatchOperationRequest { name: name.into() })
        .await?
        .into_inner();
    loop {
        let Ok(next) = tokio::time::timeout_at(until, stream.next()).await else {
            return Ok(false);
        };
        let Some(event) = next else { return Ok(false) };
        let op = event?
            .operation
            .ok_or_else(|| tonic::Status::internal("no operation"))?;
        let done = op.done;
        seen.push(op);
        if done {
            return Ok(true);
        }
    }
}

/// Progress figures seen, in order.
pub fn progress(seen: &[pb::Operation]) -> Vec<u32> {
    seen.iter()
        .map(|o| o.metadata.as_ref().map(|m| m.progress).unwrap_or_default())
        .collect()
}

/// Starts a move; returns the operation's name.
pub async fn start_move(tc: &TestCluster, sd: &str, img: &str, to: &str) -> String {
    scheduler(tc)
        .await
        .move_disk(pb::MoveDiskRequest {
            image: Some(pb::DiskRef {
                storage_domain_id: sd.into(),
                image_id: img.into(),
            }),
            destination_storage_domain_id: to.into(),
            request_id: String::new(),
        })
        .await
        .expect("MoveDisk")
        .into_inner()
        .operation
        .expect("operation")
        .name
}

/// The error of a finished operation, if it failed.
pub fn error_of(op: &pb::Operation) -> Option<&pb::OperationError> {
    match &op.result {
        Some(pb::operation::Result::Error(e)) => Some(e),
        _ => None,
    }
}
