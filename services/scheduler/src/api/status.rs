//! Disk status, hosts and runtime settings.
//!
//! A disk's progress comes from the job-tracker's entity → job index (the jobs writing its volumes),
//! weighted by volume size, as the seed's progress indication on the disk.
use datapath_api::{error::FieldViolation, pb, volume::DiskKey};

use crate::{
    engine::{Engine, DATA_OPERATIONS_BY_HSM},
    error::Error,
    flow::{model::Flow, progress, state::meta},
};

/// GetDiskStatus.
pub async fn disk_status(
    engine: &Engine,
    req: &pb::GetDiskStatusRequest,
) -> Result<pb::GetDiskStatusResponse, Error> {
    let disk = DiskKey::from_pb("disk", req.disk.as_ref())?;
    let lock = engine.locks.disk_locks(&[disk]).await?;
    let lock = lock.into_iter().next().map(|l| l.value).unwrap_or_default();
    if !lock.owner.is_empty() {
        return locked(engine, &lock.owner).await;
    }
    let mut host = engine
        .host_reaching(&disk.storage_domain.to_string(), "disk.storage_domain_id")
        .await?;
    let volumes = host
        .list_volumes(pb::ListVolumesRequest {
            storage_domain_id: disk.storage_domain.to_string(),
            image_id: disk.image.to_string(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::NotFound => Error::NotFound {
                what: format!("disk {disk}"),
                field: "disk.image_id".into(),
                reason: "DISK_NOT_FOUND",
            },
            _ => Error::Host {
                host: "host-worker".into(),
                status: s,
            },
        })?
        .into_inner()
        .volumes;
    let illegal = volumes
        .iter()
        .any(|v| v.metadata.as_ref().map(|m| m.legality) != Some(pb::Legality::Legal as i32));
    Ok(pb::GetDiskStatusResponse {
        status: if illegal {
            pb::DiskStatus::Illegal
        } else {
            pb::DiskStatus::Ok
        } as i32,
        progress: 0,
        operation_name: String::new(),
    })
}

/// A locked disk's progress: each volume's job progress as the job-tracker has it, by entity.
async fn locked(engine: &Engine, owner: &str) -> Result<pb::GetDiskStatusResponse, Error> {
    let op = datapath_api::ids::OperationId::parse_name("name", owner)?;
    let mut progress_now = 0;
    if let Some(stored) = engine.coord.get_flow(op).await? {
        progress_now = meta(&stored.value).progress;
        // A record that does not read (a parked flow) shows its stored figure.
        if let Ok(mut flow) = Flow::from_pb(op, &stored.value) {
            for v in &mut flow.volumes {
                let Some(attempt) = v.last_attempt else {
                    continue;
                };
                let d = v.destination;
                let jobs = engine
                    .clients
                    .tracker()
                    .list_jobs(pb::ListJobsRequest {
                        entity: format!("{}/{}/{}", d.storage_domain, d.image, d.volume),
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().jobs)
                    .unwrap_or_default();
                let job_id = attempt.job.to_string();
                if let Some(job) = jobs.iter().find(|j| j.job_id == job_id) {
                    v.progress = job.progress;
                }
            }
            progress_now = progress::compute(&flow).max(progress_now);
        }
    }
    Ok(pb::GetDiskStatusResponse {
        status: pb::DiskStatus::Locked as i32,
        progress: progress_now,
        operation_name: owner.to_string(),
    })
}

/// ListHosts.
pub async fn hosts(engine: &Engine) -> Result<pb::ListHostsResponse, Error> {
    // The one answer to "which host is the SPM" (the cluster view, or etcd while it is out of step).
    let spm = engine.spm_id().await?;
    let hosts = engine
        .live_hosts()
        .await?
        .into_iter()
        .map(|h| pb::HostStatus {
            is_spm: Some(&h.host_id) == spm.as_ref(),
            host: Some(h),
        })
        .collect();
    Ok(pb::ListHostsResponse {
        hosts,
        spm_host_id: spm.unwrap_or_default(),
    })
}

/// The settings there are, with their defaults.
const SETTINGS: &[(&str, &str)] = &[(DATA_OPERATIONS_BY_HSM, "true")];

fn known(key: &str) -> Result<&'static str, FieldViolation> {
    if key.is_empty() {
        return Err(FieldViolation::missing("key"));
    }
    SETTINGS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, default)| *default)
        .ok_or_else(|| {
            FieldViolation::new(
                "key",
                "UNKNOWN_SETTING",
                format!("{key:?} is not a setting; known: {DATA_OPERATIONS_BY_HSM}"),
            )
        })
}

/// GetConfig.
pub async fn get_config(engine: &Engine, key: &str) -> Result<pb::GetConfigResponse, Error> {
    let default = known(key)?;
    let value = engine
        .coord
        .get_config(key)
        .await?
        .unwrap_or_else(|| default.to_string());
    Ok(pb::GetConfigResponse {
        key: key.to_string(),
        value,
    })
}

/// SetConfig: booleans are stored as `true` or `false`.
pub async fn set_config(
    engine: &Engine,
    req: &pb::SetConfigRequest,
) -> Result<pb::SetConfigResponse, Error> {
    known(&req.key)?;
    let value = match req.value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => "true",
        "false" | "0" | "no" | "off" => "false",
        _ => {
            return Err(FieldViolation::new(
                "value",
                "INVALID_VALUE",
                format!("{:?} is not a boolean (true or false)", req.value),
            )
            .into())
        }
    };
    engine.coord.put_config(&req.key, value).await?;
    Ok(pb::SetConfigResponse {
        key: req.key.clone(),
        value: value.to_string(),
    })
}
