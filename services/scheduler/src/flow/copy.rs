//! One volume's copy within a flow (`CopyImageGroupVolumesData` for one volume): place it on a host,
//! persist the attempt (job id, host, the destination's generation G), send CopyData, follow the job
//! through the job-tracker's watch, and retry a failed copy on another host (bounded).
//!
//! When the job is missing or its host has gone, the destination volume decides (`conclude.rs`).
use std::time::Duration;

use datapath_api::{
    pb::{self, FlowVolumeState, JobStatus},
    volume::VolumeKey,
};
use tonic::Code;
use tracing::{info, warn, Instrument as _, Span};

use super::{
    conclude::conclude,
    placement::{place, unplace, Placement},
    runner::Run,
    spans, Stop,
};
use crate::engine::is_transient;

/// How a volume's copy ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The destination is LEGAL at its new generation.
    Copied,
    /// Every attempt failed, or the step could not be placed.
    Failed(pb::OperationError),
    /// The flow was cancelled (or another volume failed) before this copy ended.
    Cancelled,
}

/// How one attempt's job ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum JobEnd {
    Succeeded,
    Failed { code: String, message: String },
    Aborted,
}

/// How often a followed job's host is checked for liveness.
const HOST_CHECK: Duration = Duration::from_secs(2);
/// Pause before repeating a call that failed transiently.
const RETRY: Duration = Duration::from_millis(500);

/// Copies volume `idx` of the flow, resuming wherever its persisted state says.
pub async fn copy_volume(run: &Run, idx: usize) -> Result<Outcome, Stop> {
    // The attempt placed in this run, whose span the following continues; a resumed attempt gets a
    // new one.
    let mut placed: Option<Span> = None;
    loop {
        let flow = run.record.get().await;
        let v = flow.volumes[idx].clone();
        match FlowVolumeState::try_from(v.state).unwrap_or_default() {
            FlowVolumeState::Copied => return Ok(Outcome::Copied),
            FlowVolumeState::Failed => {
                return Ok(Outcome::Failed(failed(&v, "every attempt failed")))
            }
            FlowVolumeState::Copying => {
                let span = placed.take().unwrap_or_else(|| spans::attempt(&v));
                let end = follow(run, idx, &v).instrument(span.clone()).await?;
                span.record("datapath.copy.outcome", end.name());
                unplace(run, &v).await;
                let outcome = end_attempt(run, idx, &v, end).instrument(span).await?;
                if let Some(outcome) = outcome {
                    return Ok(outcome);
                }
            }
            FlowVolumeState::Pending | FlowVolumeState::Unspecified => {
                if run.stopping() {
                    return Ok(Outcome::Cancelled);
                }
                match place(run, &v).await? {
                    Placement::Host(host) => placed = start_attempt(run, idx, &v, host).await?,
                    Placement::Stopped => return Ok(Outcome::Cancelled),
                    Placement::NoHost(message) => {
                        run.record
                            .update(|f| f.volumes[idx].state = FlowVolumeState::Failed as i32)
                            .await?;
                        return Ok(Outcome::Failed(pb::OperationError {
                            code: Code::FailedPrecondition as i32,
                            message,
                            reason: "NO_HOST".into(),
                        }));
                    }
                }
            }
        }
    }
}

fn failed(v: &pb::FlowVolume, why: &str) -> pb::OperationError {
    let vol = v
        .source
        .as_ref()
        .map(|s| s.volume_id.as_str())
        .unwrap_or("?");
    pb::OperationError {
        code: Code::Aborted as i32,
        message: format!(
            "copy of volume {vol} failed after {} attempts: {why}",
            v.attempts
        ),
        reason: "COPY_FAILED".into(),
    }
}

/// Reads the destination's generation, persists the attempt, then sends CopyData; returns the
/// attempt's span when it was persisted.
async fn start_attempt(
    run: &Run,
    idx: usize,
    v: &pb::FlowVolume,
    host: pb::Host,
) -> Result<Option<Span>, Stop> {
    let attempt = pb::FlowVolume {
        host_id: host.host_id.clone(),
        ..v.clone()
    };
    let client = match run.engine.clients.host(&host.address) {
        Ok(c) => c,
        Err(_) => {
            unplace(run, &attempt).await;
            return Ok(None);
        }
    };
    let info = client
        .clone()
        .get_volume_info(pb::GetVolumeInfoRequest {
            volume: v.destination.clone(),
        })
        .await;
    let generation = match info {
        Ok(r) => r
            .into_inner()
            .volume
            .and_then(|i| i.metadata)
            .map(|m| m.generation),
        Err(s) => {
            warn!(op = %run.record.op, host = %host.host_id, error = %s, "could not read the destination's generation; trying another host");
            unplace(run, &attempt).await;
            let failed = host.host_id.clone();
            run.record
                .update(|f| f.volumes[idx].failed_hosts.push(failed))
                .await?;
            tokio::time::sleep(RETRY).await;
            return Ok(None);
        }
    };
    let job_id = datapath_api::ids::JobId::random().to_string();
    let flow = run
        .record
        .update(|f| {
            let v = &mut f.volumes[idx];
            v.state = FlowVolumeState::Copying as i32;
            v.job_id = job_id.clone();
            v.host_id = host.host_id.clone();
            v.expected_generation = generation.unwrap_or_default();
            v.attempts += 1;
            v.progress = 0;
            v.job_status = JobStatus::Pending as i32;
        })
        .await?;
    let span = spans::attempt(&flow.volumes[idx]);
    async {
        info!(op = %run.record.op, %job_id, host = %host.host_id, attempt = flow.volumes[idx].attempts, "copy placed");
        run.engine.failpoint("after-copy-persisted");
        if let Err(s) = send_copy(run, &flow.volumes[idx]).await {
            // follow() sees the job missing and decides: send again, or ask the destination.
            warn!(op = %run.record.op, %job_id, error = %s, "CopyData was not accepted");
        }
        run.engine.failpoint("after-copy-sent");
    }
    .instrument(span.clone())
    .await;
    Ok(Some(span))
}

async fn send_copy(run: &Run, v: &pb::FlowVolume) -> Result<(), tonic::Status> {
    let host = run
        .engine
        .coord
        .get_host(datapath_api::ids::HostId::parse("host_id", &v.host_id)?)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .ok_or_else(|| tonic::Status::unavailable(format!("host {} is not live", v.host_id)))?;
    let req = pb::CopyDataRequest {
        job_id: v.job_id.clone(),
        source: Some(pb::CopyDataEndpoint {
            volume: v.source.clone(),
            generation: None,
        }),
        destination: Some(pb::CopyDataEndpoint {
            volume: v.destination.clone(),
            generation: Some(v.expected_generation),
        }),
    };
    run.engine
        .clients
        .host(&host.address)?
        .copy_data(req)
        .await?;
    Ok(())
}

/// Follows the attempt's job until it ends, or concludes from the destination when it is lost.
async fn follow(run: &Run, idx: usize, v: &pb::FlowVolume) -> Result<JobEnd, Stop> {
    let mut sent_here = false;
    let mut abort_sent = false;
    loop {
        if run.stopping() && !abort_sent {
            abort_sent = abort(run, &v.job_id).await;
        }
        let got = run
            .engine
            .clients
            .tracker()
            .get_job(pb::GetJobRequest {
                job_id: v.job_id.clone(),
            })
            .await;
        match got {
            Ok(resp) => {
                let job = resp.into_inner().job.unwrap_or_default();
                if let Some(end) = ended(&job) {
                    note(run, idx, &job).await?;
                    return Ok(end);
                }
                if let Some(end) = watch_job(run, idx, v, &mut abort_sent).await? {
                    return Ok(end);
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                if !sent_here && host_live(run, &v.host_id).await {
                    match send_copy(run, v).await {
                        Ok(()) => sent_here = true,
                        Err(s) if is_transient(&s) => tokio::time::sleep(RETRY).await,
                        Err(_) => return conclude(run, v).await,
                    }
                } else {
                    return conclude(run, v).await;
                }
            }
            Err(s) => {
                warn!(op = %run.record.op, error = %s, "job-tracker unavailable; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Streams the job's changes; `None` when the stream broke (the caller reads the job again).
async fn watch_job(
    run: &Run,
    idx: usize,
    v: &pb::FlowVolume,
    abort_sent: &mut bool,
) -> Result<Option<JobEnd>, Stop> {
    let stream = run
        .engine
        .clients
        .tracker()
        .watch_jobs(pb::WatchJobsRequest {
            job_id: v.job_id.clone(),
            ..Default::default()
        })
        .await;
    let mut stream = match stream {
        Ok(s) => s.into_inner(),
        Err(_) => {
            tokio::time::sleep(RETRY).await;
            return Ok(None);
        }
    };
    let mut stop = run.stop_signal();
    let mut host_check = tokio::time::interval(HOST_CHECK);
    let mut lease = LeaseSeen::default();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Ok(Some(event)) = msg else { return Ok(None) };
                let Some(job) = event.job else { continue };
                if event.r#type == pb::JobEventType::Deleted as i32 {
                    return Ok(None);
                }
                note(run, idx, &job).await?;
                if let Some(end) = ended(&job) {
                    return Ok(Some(end));
                }
            }
            _ = stop.changed() => {
                if !*abort_sent && run.stopping() {
                    *abort_sent = abort(run, &v.job_id).await;
                }
            }
            _ = host_check.tick() => {
                if !host_live(run, &v.host_id).await {
                    warn!(op = %run.record.op, host = %v.host_id, "the copy's host is gone; asking the destination");
                    return conclude(run, v).await.map(Some);
                }
                if lease.released(run, v).await {
                    warn!(op = %run.record.op, job_id = %v.job_id, "the copy released its lease but its job never ended; asking the destination");
                    return conclude(run, v).await.map(Some);
                }
            }
        }
    }
}

/// Whether an attempt's destination lease was seen held by its job and is free now: the worker
/// committed or gave up, yet its job's end never reached the job-tracker (a worker that reaches etcd
/// but not the job-tracker). Only a lease seen held counts: a job is RUNNING a moment before it takes
/// its lease, and concluding then would fence a copy about to start.
#[derive(Default)]
struct LeaseSeen(bool);

impl LeaseSeen {
    async fn released(&mut self, run: &Run, v: &pb::FlowVolume) -> bool {
        let Ok(key) = VolumeKey::from_pb("destination", v.destination.as_ref()) else {
            return false;
        };
        match run.engine.coord.volume_lease(&key).await {
            Ok(Some(l)) => {
                self.0 |= l.job_id == v.job_id;
                false
            }
            Ok(None) => self.0,
            Err(_) => false,
        }
    }
}

/// Records a job's progress and status in the flow.
async fn note(run: &Run, idx: usize, job: &pb::Job) -> Result<(), Stop> {
    let (progress, status) = (job.progress, job.status);
    run.record
        .update_progress(|f| {
            let v = &mut f.volumes[idx];
            v.progress = v.progress.max(progress);
            v.job_status = status;
        })
        .await
}

impl JobEnd {
    /// The attempt's outcome as a span attribute.
    fn name(&self) -> &'static str {
        match self {
            JobEnd::Succeeded => "succeeded",
            JobEnd::Failed { .. } => "failed",
            JobEnd::Aborted => "aborted",
        }
    }
}

fn ended(job: &pb::Job) -> Option<JobEnd> {
    match JobStatus::try_from(job.status).unwrap_or_default() {
        JobStatus::Succeeded => Some(JobEnd::Succeeded),
        JobStatus::Aborted => Some(JobEnd::Aborted),
        JobStatus::Failed => {
            let e = job.error.clone().unwrap_or_default();
            Some(JobEnd::Failed {
                code: e.code,
                message: e.message,
            })
        }
        _ => None,
    }
}

async fn abort(run: &Run, job_id: &str) -> bool {
    let r = run
        .engine
        .clients
        .tracker()
        .abort_job(pb::AbortJobRequest {
            job_id: job_id.to_string(),
        })
        .await;
    match r {
        Ok(_) => true,
        Err(s) => !is_transient(&s),
    }
}

async fn host_live(run: &Run, host_id: &str) -> bool {
    let Ok(id) = datapath_api::ids::HostId::parse("host_id", host_id) else {
        return false;
    };
    // An etcd error is not evidence that the host is gone.
    run.engine
        .coord
        .get_host(id)
        .await
        .map_or(true, |h| h.is_some())
}

/// Records how the attempt ended; returns the volume's outcome when it is final.
async fn end_attempt(
    run: &Run,
    idx: usize,
    v: &pb::FlowVolume,
    end: JobEnd,
) -> Result<Option<Outcome>, Stop> {
    let max = run.engine.settings.copy_attempts.max(1);
    match end {
        JobEnd::Succeeded => {
            run.record
                .update(|f| {
                    let v = &mut f.volumes[idx];
                    v.state = FlowVolumeState::Copied as i32;
                    v.progress = 100;
                    v.job_status = JobStatus::Succeeded as i32;
                })
                .await?;
            Ok(Some(Outcome::Copied))
        }
        JobEnd::Aborted if run.stopping() => Ok(Some(Outcome::Cancelled)),
        end => {
            let why = match &end {
                JobEnd::Failed { code, message } => format!("{code}: {message}"),
                _ => "the job was aborted".to_string(),
            };
            let last = v.attempts >= max;
            warn!(op = %run.record.op, job_id = %v.job_id, host = %v.host_id, %why, last, "copy attempt failed");
            let flow = run
                .record
                .update(|f| {
                    let v = &mut f.volumes[idx];
                    v.job_status = JobStatus::Failed as i32;
                    v.failed_hosts.push(v.host_id.clone());
                    v.state = if last {
                        FlowVolumeState::Failed
                    } else {
                        FlowVolumeState::Pending
                    } as i32;
                })
                .await?;
            Ok(last.then(|| Outcome::Failed(failed(&flow.volumes[idx], &why))))
        }
    }
}
