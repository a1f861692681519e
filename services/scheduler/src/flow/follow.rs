//! Following one copy attempt: its job through the job-tracker's watch until the record ends, or —
//! when the job is missing, its host has gone, or its lease was released without an end — the
//! destination volume's verdict (`conclude.rs`). What the job record says is returned as reported,
//! unchecked: `conclude::settle` checks it against the destination.
use std::time::{Duration, Instant};

use datapath_api::{
    job_error::JobErrorCode,
    pb::{self, JobStatus},
};
use tonic::Code;
use tracing::warn;

use super::{conclude::conclude, model::Volume, runner::Run, volume_state::Attempt, Stop};
use crate::engine::is_transient;

/// How one attempt's job ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum JobEnd {
    Succeeded,
    Failed { code: String, message: String },
    Aborted,
}

impl JobEnd {
    pub(super) fn failed(code: JobErrorCode, message: impl Into<String>) -> Self {
        Self::Failed {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The attempt's outcome as a span attribute.
    pub(super) fn name(&self) -> &'static str {
        match self {
            JobEnd::Succeeded => "succeeded",
            JobEnd::Failed { .. } => "failed",
            JobEnd::Aborted => "aborted",
        }
    }
}

/// Where an attempt's end came from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ended {
    /// The job record ended: what the host (or the job-tracker for a lost host) reported.
    Reported(JobEnd),
    /// The destination volume decided (the job or its host was lost, or never took the copy).
    Concluded(JobEnd),
}

/// How often a followed job's host is checked for liveness.
const HOST_CHECK: Duration = Duration::from_secs(2);
/// Pause before repeating a call that failed transiently.
const RETRY: Duration = Duration::from_millis(500);
/// How long a live host may fail to take a copy (CopyData not answered) before the destination
/// decides and the copy goes elsewhere.
const UNREACHABLE: Duration = Duration::from_secs(20);

/// Follows the attempt's job until it ends, or concludes from the destination when it is lost.
pub(super) async fn follow(run: &Run, idx: usize, v: &Volume, a: &Attempt) -> Result<Ended, Stop> {
    let (job_id, host_id) = (a.job.to_string(), a.host.to_string());
    let mut sent_here = false;
    let mut abort_sent = false;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        if run.stopping() && !abort_sent {
            abort_sent = abort(run, &job_id).await;
        }
        // Subscribed before the read: a change after it is not missed.
        let news = run.engine.jobs.subscribe(&job_id);
        let got = run
            .engine
            .clients
            .tracker()
            .get_job(pb::GetJobRequest {
                job_id: job_id.clone(),
            })
            .await;
        match got {
            Ok(resp) => {
                let job = resp.into_inner().job.unwrap_or_default();
                if let Some(end) = ended(&job) {
                    note(run, idx, &job).await?;
                    return Ok(Ended::Reported(end));
                }
                if let Some(end) = watch_job(run, idx, v, a, &job, news, &mut abort_sent).await? {
                    return Ok(end);
                }
            }
            Err(s) if s.code() == Code::NotFound => {
                if sent_here || !host_live(run, &host_id).await {
                    return conclude(run, v, a).await.map(Ended::Concluded);
                }
                match super::copy::send_copy(run, v, a).await {
                    Ok(()) => sent_here = true,
                    Err(s) if is_transient(&s) => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() < UNREACHABLE {
                            tokio::time::sleep(RETRY).await;
                            continue;
                        }
                        warn!(op = %run.record.op, host = %host_id, error = %s, "the host does not take the copy; asking the destination");
                        return not_taken(run, v, a, JobErrorCode::HostUnreachable, &s).await;
                    }
                    Err(s)
                        if datapath_api::error::reason(&s).as_deref()
                            == Some(JobErrorCode::LeaseHeld.as_str()) =>
                    {
                        // Refused before any job existed: a lost attempt's lease not yet expired.
                        return Ok(Ended::Concluded(JobEnd::failed(
                            JobErrorCode::LeaseHeld,
                            s.message(),
                        )));
                    }
                    Err(_) => return conclude(run, v, a).await.map(Ended::Concluded),
                }
            }
            Err(s) => {
                warn!(op = %run.record.op, error = %s, "job-tracker unavailable; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// A copy its host never took: the destination decides (CopyData may have arrived after all); if
/// it was not committed, the try was a transient `code`.
async fn not_taken(
    run: &Run,
    v: &Volume,
    a: &Attempt,
    code: JobErrorCode,
    status: &tonic::Status,
) -> Result<Ended, Stop> {
    Ok(Ended::Concluded(match conclude(run, v, a).await? {
        JobEnd::Succeeded => JobEnd::Succeeded,
        _ => JobEnd::failed(
            code,
            format!(
                "host {} did not take the copy: {}",
                a.host,
                status.message()
            ),
        ),
    }))
}

/// Follows the job's changes (the scheduler's one job stream: `job_watch.rs`); `None` when they
/// may have been missed or the job was deleted (the caller reads the job again). The job's host is
/// looked up in the cluster view whenever a host goes (at once, not at the next check) and every
/// [`HOST_CHECK`]; then too — when the job said nothing since the last check — its destination
/// lease in etcd.
async fn watch_job(
    run: &Run,
    idx: usize,
    v: &Volume,
    a: &Attempt,
    read: &pb::Job,
    mut news: crate::job_watch::Subscription,
    abort_sent: &mut bool,
) -> Result<Option<Ended>, Stop> {
    use crate::job_watch::JobNews;
    let mut stop = run.stop_signal();
    let mut host_check = tokio::time::interval(HOST_CHECK);
    let mut departures = run.engine.view.departures();
    let mut lease = LeaseSeen::default();
    lease.note(read);
    let mut heard = false;
    loop {
        tokio::select! {
            word = news.next() => match word {
                JobNews::Changed(job) => {
                    heard = true;
                    lease.note(&job);
                    note(run, idx, &job).await?;
                    if let Some(end) = ended(&job) {
                        return Ok(Some(Ended::Reported(end)));
                    }
                }
                JobNews::Nothing => {}
                JobNews::Deleted | JobNews::Resync => return Ok(None),
            },
            _ = stop.changed() => {
                if !*abort_sent && run.stopping() {
                    *abort_sent = abort(run, &a.job.to_string()).await;
                }
            }
            Ok(()) = departures.changed() => {
                if let Some(end) = host_gone(run, v, a).await? {
                    return Ok(Some(end));
                }
            }
            _ = host_check.tick() => {
                if let Some(end) = host_gone(run, v, a).await? {
                    return Ok(Some(end));
                }
                if !std::mem::take(&mut heard) && lease.released(run, v, a).await {
                    warn!(op = %run.record.op, job_id = %a.job, "the copy released its lease but its job never ended; asking the destination");
                    return conclude(run, v, a).await.map(|e| Some(Ended::Concluded(e)));
                }
            }
        }
    }
}

/// When the copy's host is gone: the attempt concluded from the destination.
async fn host_gone(run: &Run, v: &Volume, a: &Attempt) -> Result<Option<Ended>, Stop> {
    if host_live(run, &a.host.to_string()).await {
        return Ok(None);
    }
    warn!(op = %run.record.op, host = %a.host, "the copy's host is gone; asking the destination");
    conclude(run, v, a).await.map(|e| Some(Ended::Concluded(e)))
}

/// Whether an attempt's destination lease was seen held by its job and is free now: the worker
/// committed or gave up, yet its job's end never reached the job-tracker (a worker that reaches etcd
/// but not the job-tracker). Only a lease known to have been taken counts — seen held, or implied by
/// progress (qemu-img runs only under the lease): a job is RUNNING a moment before it takes its
/// lease, and concluding then would fence a copy about to start.
#[derive(Default)]
struct LeaseSeen(bool);

impl LeaseSeen {
    /// Takes what the job says: progress means its copier ran, under the lease.
    fn note(&mut self, job: &pb::Job) {
        self.0 |= job.progress > 0;
    }

    async fn released(&mut self, run: &Run, v: &Volume, a: &Attempt) -> bool {
        match run.engine.coord.volume_lease(&v.destination).await {
            Ok(Some(l)) => {
                self.0 |= l.job_id == a.job.to_string();
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
            v.job_status = JobStatus::try_from(status).unwrap_or_default();
        })
        .await
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
    run.engine.host_live(host_id).await
}
