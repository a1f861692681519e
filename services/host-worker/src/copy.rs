//! The CopyData verb, DESIGN.md's copy protocol:
//! 1. validate (ids, volumes exist, distinct, capacity, expected generation, lease free) — bad input
//!    changes nothing; the same job id with the same request is idempotent;
//! 2. register the job PENDING and answer; the copy waits for a job slot;
//! 3. take the destination's volume lease; 4. check its generation, link the destination under the
//!    job's attempt name and confirm the lease, mark it ILLEGAL;
//! 5. `qemu-img convert` through the attempt name, progress reported, abortable;
//! 6. flush, generation + 1 and LEGAL, **then** release the lease, **then** end the job. On failure or
//!    abort it stays ILLEGAL with its generation, the lease is released and the job fails with a code
//!    from the shared vocabulary (`JobErrorCode`) and a message that names volumes, not paths.
//!
//! Steps 3–6 are in `copy_run.rs`.
use std::sync::Arc;

use datapath_api::{
    job_error::JobErrorCode,
    pb::{self, JobStatus},
    volume::{CopyDataSpec, Legality, VolumeKey},
};
use datapath_coord::volume_reads::Wanted;
use tracing::{info, warn, Instrument as _};

use crate::{
    copy_run,
    error::Error,
    jobs::{JobControl, Refused, StopReason},
    metrics::{CopyMeter, CopyResult},
    reporter::FINAL_REPORT_DEADLINE,
    spans,
    worker::{VolumeAsk, Worker},
};

/// How a job ended, when not well.
#[derive(Debug)]
pub(crate) enum Failure {
    Stopped(StopReason),
    Failed { code: JobErrorCode, message: String },
}

impl Failure {
    pub(crate) fn failed(code: JobErrorCode, message: impl Into<String>) -> Self {
        Self::Failed {
            code,
            message: message.into(),
        }
    }
}

/// Validates and accepts a copy; the copy itself runs in the background.
pub async fn copy_data(worker: &Arc<Worker>, req: &pb::CopyDataRequest) -> Result<pb::Job, Error> {
    let spec = CopyDataSpec::from_pb(req)?;
    if let Some(job) = worker.jobs.get(spec.job_id) {
        return same_job(worker, &spec, job);
    }
    // A repeated request is answered with its job even when the volumes have moved on since (its
    // copy committed): the job-tracker is asked only then, or by the create-if-absent below.
    let size = match validate(worker, &spec).await {
        Ok(size) => size,
        Err(refused) => {
            return match existing(worker, &spec).await {
                Ok(Some(job)) => Ok(job),
                Err(Error::JobExists(id)) => Err(Error::JobExists(id)),
                _ => Err(refused),
            }
        }
    };
    worker.lease_id()?;
    // The job's span, a child of this call's; its context is stored in the job record so reports
    // made later (after a reconnect or a restart) join the same trace.
    let span = spans::job(&spec, size);
    let job = pb::Job {
        job_id: spec.job_id.to_string(),
        host_id: worker.host_id.to_string(),
        entities: vec![
            spec.destination.volume.to_string(),
            spec.source.volume.to_string(),
        ],
        description: format!(
            "copy_data {} -> {}",
            spec.source.volume, spec.destination.volume
        ),
        params: Some(pb::job::Params::CopyData(spec.params())),
        size_bytes: size,
        trace_context: datapath_telemetry::carrier_of(&span),
        ..Default::default()
    };
    let control = match worker
        .jobs
        .insert(spec.job_id, job.clone(), spec.destination.volume)
    {
        Ok(control) => control,
        Err(Refused::SameId) => {
            return existing(worker, &spec)
                .await?
                .ok_or(Error::JobExists(spec.job_id))
        }
        Err(Refused::QueueFull(max)) => return Err(Error::QueueFull(max)),
        Err(Refused::DestinationBusy(other)) => {
            return Err(Error::precondition(
                JobErrorCode::LeaseHeld.as_str(),
                "destination.volume",
                format!(
                    "volume {} is the destination of job {other} on this host",
                    spec.destination.volume
                ),
            ))
        }
    };
    // From the insert on, the job is this host's: it is registered and run by a task of its own,
    // so a caller that goes away mid-call (a scheduler killed while it waited for this answer)
    // cannot leave a job that is known everywhere and runs nowhere.
    let registration = register_and_start(worker.clone(), spec, job, control, span);
    tokio::spawn(registration.in_current_span())
        .await
        .map_err(|e| Error::Tracker(tonic::Status::internal(format!("job registration: {e}"))))?
}

/// Registers an inserted job with the job-tracker and starts it; on a refusal, forgets it here.
async fn register_and_start(
    worker: Arc<Worker>,
    spec: CopyDataSpec,
    job: pb::Job,
    control: Arc<JobControl>,
    span: tracing::Span,
) -> Result<pb::Job, Error> {
    let (job, created) = match worker.reporter.create(job).await {
        Ok(r) => r,
        Err(e) => {
            worker.jobs.remove(spec.job_id);
            return Err(e);
        }
    };
    if !created {
        worker.jobs.remove(spec.job_id);
        return Ok(job);
    }
    worker.jobs.update(spec.job_id, |j| *j = job.clone());
    tokio::spawn(run(worker.clone(), spec, control).instrument(span));
    Ok(job)
}

/// The job already registered under this id: returned if it is the same request on this host,
/// `ALREADY_EXISTS` otherwise.
async fn existing(worker: &Worker, spec: &CopyDataSpec) -> Result<Option<pb::Job>, Error> {
    let job = match worker.jobs.get(spec.job_id) {
        Some(job) => Some(job),
        None => worker.reporter.get(spec.job_id).await?,
    };
    job.map(|job| same_job(worker, spec, job)).transpose()
}

/// `job` if it is the one `spec` asks for on this host, `ALREADY_EXISTS` otherwise.
fn same_job(worker: &Worker, spec: &CopyDataSpec, job: pb::Job) -> Result<pb::Job, Error> {
    let same = job.host_id == worker.host_id.to_string()
        && job.params == Some(pb::job::Params::CopyData(spec.params()));
    if same {
        Ok(job)
    } else {
        Err(Error::JobExists(spec.job_id))
    }
}

/// Checks the request against storage and leases; returns the bytes to copy.
async fn validate(worker: &Worker, spec: &CopyDataSpec) -> Result<u64, Error> {
    let src = worker
        .storage
        .read_meta(&spec.source.volume, "source.volume")?;
    let dst = worker
        .storage
        .read_meta(&spec.destination.volume, "destination.volume")?;
    if src.legality != Legality::Legal {
        return Err(Error::precondition(
            "SOURCE_ILLEGAL",
            "source.volume",
            format!("source volume {} is ILLEGAL", spec.source.volume),
        ));
    }
    if dst.capacity < src.capacity {
        return Err(Error::precondition(
            "DESTINATION_TOO_SMALL",
            "destination.volume",
            format!(
                "destination capacity {} is below the source's {}",
                dst.capacity, src.capacity
            ),
        ));
    }
    if let Some(g) = spec.source.generation.filter(|g| *g != src.generation) {
        return Err(Error::precondition(
            "GENERATION_MISMATCH",
            "source.generation",
            format!("source generation is {}, not {g}", src.generation),
        ));
    }
    if let Some(g) = spec.destination.generation.filter(|g| *g != dst.generation) {
        return Err(Error::precondition(
            "GENERATION_MISMATCH",
            "destination.generation",
            format!("destination generation is {}, not {g}", dst.generation),
        ));
    }
    // Both volumes' leases and the destination's read holds, in one etcd round trip.
    let ask = |volume: VolumeKey, holds: bool| VolumeAsk {
        volume,
        on_file: 0,
        wanted: Wanted {
            generation: false,
            lease: true,
            holds,
        },
    };
    let seen = worker
        .volume_records(&[
            ask(spec.destination.volume, true),
            ask(spec.source.volume, false),
        ])
        .await?;
    for ((volume, field), seen) in [
        (&spec.destination.volume, "destination.volume"),
        (&spec.source.volume, "source.volume"),
    ]
    .into_iter()
    .zip(seen)
    {
        if let Some(holder) = seen.lease {
            return Err(Error::precondition(
                JobErrorCode::LeaseHeld.as_str(),
                field,
                format!(
                    "volume {volume} is leased by job {} on host {}",
                    holder.job_id, holder.host_id
                ),
            ));
        }
        if let Some(reader) = seen.hold {
            return Err(Error::precondition(
                JobErrorCode::VolumeInUse.as_str(),
                field,
                format!(
                    "volume {volume} is read by job {} on host {}: it cannot be written until that copy ends",
                    reader.job_id, reader.host_id
                ),
            ));
        }
        if let Some(job) = worker.jobs.writing(volume) {
            return Err(Error::precondition(
                JobErrorCode::LeaseHeld.as_str(),
                field,
                format!("volume {volume} is the destination of queued job {job}"),
            ));
        }
    }
    Ok(worker
        .storage
        .allocated_bytes(&spec.source.volume)
        .max(1)
        .min(src.capacity))
}

/// Runs an accepted job to its end and reports it.
async fn run(worker: Arc<Worker>, spec: CopyDataSpec, control: Arc<JobControl>) {
    let id = spec.job_id;
    let meter = CopyMeter::default();
    let outcome = copy_run::execute(&worker, &spec, &control, &meter).await;
    meter.finish(match &outcome {
        Ok(()) => CopyResult::Succeeded,
        Err(Failure::Stopped(StopReason::Aborted)) => CopyResult::Aborted,
        Err(Failure::Stopped(StopReason::Fenced)) => CopyResult::Fenced,
        Err(_) => CopyResult::Failed,
    });
    let (status, error) = match outcome {
        Ok(()) => (JobStatus::Succeeded, None),
        Err(Failure::Stopped(StopReason::Aborted)) => (JobStatus::Aborted, None),
        Err(Failure::Stopped(reason)) => {
            let (code, message) = match reason {
                StopReason::Fenced => (
                    JobErrorCode::Fenced,
                    "the host lost its etcd session lease; the copy was killed",
                ),
                _ => (
                    JobErrorCode::HostShutdown,
                    "the host-worker shut down; the copy was killed",
                ),
            };
            (
                JobStatus::Failed,
                Some(pb::JobError {
                    code: code.to_string(),
                    message: message.into(),
                }),
            )
        }
        Err(Failure::Failed { code, message }) => (
            JobStatus::Failed,
            Some(pb::JobError {
                code: code.to_string(),
                message,
            }),
        ),
    };
    match &error {
        None => info!(%id, ?status, "job ended"),
        Some(e) => warn!(%id, ?status, code = %e.code, message = %e.message, "job ended"),
    }
    worker.jobs.update(id, |j| {
        j.set_status(status);
        j.error = error.clone();
    });
    worker
        .reporter
        .status(id, status, error, FINAL_REPORT_DEADLINE)
        .await;
    worker.jobs.remove(id);
}
