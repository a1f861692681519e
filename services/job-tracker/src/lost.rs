//! Jobs of hosts that are gone. A host's registration (`hosts/<id>`) is bound to its session lease;
//! once it has expired the host can no longer commit anything — it fenced itself (killed its copies)
//! before its lease could expire, or a stalled worker's copier was killed by its watchdog, or the
//! host is stopped whole and its copier with it (then it may write again when it wakes, which is why
//! the engine never takes FENCED at its word: it concludes the attempt from the destination and
//! fences the volume with a fresh file). So its jobs still PENDING or RUNNING are ended FAILED with
//! cause FENCED, as oVirt's engine ends the jobs of a non-responsive host. Without this, the job of a
//! host that never comes back would stay RUNNING forever. A host that does come back finds them
//! ended already.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use datapath_api::{ids::JobId, job_error::JobErrorCode, pb};
use datapath_coord::{cluster_view::ClusterView, job_view::JobView};
use tracing::{info, warn, Instrument as _};

use crate::{
    tracker::Tracker,
    transition::{apply, is_terminal, Update},
};

/// How often registrations and jobs are compared.
const EVERY: Duration = Duration::from_secs(1);

/// Ends the jobs of hosts whose registration has been gone for `grace`, and jobs still PENDING
/// `pending_expiry` after they were created (CreateJob cannot fill etcd with jobs that never run).
/// Runs until dropped.
pub async fn sweep(
    tracker: Arc<Tracker>,
    hosts_view: ClusterView,
    jobs_view: JobView,
    grace: Duration,
    pending_expiry: Duration,
) {
    let mut missing: HashMap<String, Instant> = HashMap::new();
    // Hosts and jobs are read from watched views (no etcd read per round): the cost of a round
    // grows with the jobs not yet ended, not with every job retained.
    loop {
        tokio::time::sleep(EVERY).await;
        // A view out of step is no evidence that a host is gone: skip the round.
        tracker.open_jobs().listing_begins();
        let (Some(hosts), Some(jobs), Some(counts)) = (
            hosts_view.hosts(),
            jobs_view.jobs_where(|j| !is_terminal(j.status())),
            jobs_view.count_by(crate::metrics::status_label),
        ) else {
            continue;
        };
        crate::metrics::set_job_counts(&counts);
        tracker.open_jobs().listed(&jobs);
        let live: std::collections::HashSet<&str> =
            hosts.iter().map(|h| h.host_id.as_str()).collect();
        missing.retain(|h, _| !live.contains(h.as_str()));
        let now = datapath_api::time::now().seconds;
        for job in &jobs {
            if live.contains(job.host_id.as_str()) {
                let age = job
                    .created_at
                    .as_ref()
                    .map_or(0, |t| now.saturating_sub(t.seconds));
                if job.status() == pb::JobStatus::Pending
                    && u64::try_from(age).unwrap_or(0) >= pending_expiry.as_secs()
                {
                    expire(&tracker, job).await;
                }
                continue;
            }
            let since = *missing
                .entry(job.host_id.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                end(&tracker, job).await;
            }
        }
    }
}

/// Ends the job of a lost host FAILED (FENCED).
async fn end(tracker: &Tracker, job: &pb::Job) {
    let message = format!(
        "host {} lost its session lease: its copy was killed, or is stopped and will be killed \
         when it wakes; the job is not resumed",
        job.host_id
    );
    fail(tracker, job, JobErrorCode::Fenced, message).await;
}

/// Ends a job that stayed PENDING past the expiry. Its host may still hold it queued and start it
/// later, so the code is of the "lost" class: the engine concludes the copy from the destination.
async fn expire(tracker: &Tracker, job: &pb::Job) {
    let message = format!(
        "the job waited on host {} without starting for longer than the job-tracker's \
         --pending-job-expiry",
        job.host_id
    );
    fail(tracker, job, JobErrorCode::NeverStarted, message).await;
}

/// Ends `job` FAILED with `code`, as the job-tracker's own decision (in the job's trace).
async fn fail(tracker: &Tracker, job: &pb::Job, code: JobErrorCode, message: String) {
    let Ok(job_id) = JobId::parse("job_id", &job.job_id) else {
        return;
    };
    let update = Update {
        status: Some(pb::JobStatus::Failed),
        progress: None,
        error: Some(pb::JobError {
            code: code.to_string(),
            message,
        }),
    };
    // A decision about the job's copy: it belongs in the job's trace.
    let span = tracing::info_span!(
        "job.end_lost",
        otel.name = "EndJobOfLostHost",
        datapath.job.id = %job_id,
        datapath.host.id = %job.host_id,
    );
    datapath_telemetry::continue_from(&span, &job.trace_context);
    match tracker
        .write_as_tracker(job_id, &update)
        .instrument(span)
        .await
    {
        Ok(_) => info!(%job_id, host = %job.host_id, %code, "job ended by the job-tracker"),
        Err(e) => warn!(%job_id, error = %e, %code, "could not end the job"),
    }
}

/// For [`Tracker::write_as_tracker`]: the update, unless the job has ended meanwhile.
pub(crate) fn unless_ended(
    job_id: JobId,
    job: &pb::Job,
    update: &Update,
) -> Result<Option<pb::Job>, crate::error::Error> {
    if is_terminal(job.status()) {
        return Ok(None);
    }
    apply(job_id, job, update)
}
