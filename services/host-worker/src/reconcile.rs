//! A host that comes back — restarted, or cut off long enough to lose its session — reconciles its job
//! records: every job the job-tracker still shows as pending or running on this host, but that this
//! process does not run, is marked failed with cause FENCED (as VDSM 4.4 does). Its copier died with
//! the old process or was killed by self-fencing; it is never resumed.
use std::{sync::Arc, time::Duration};

use datapath_api::{
    ids::JobId,
    job_error::JobErrorCode,
    pb::{self, JobStatus},
};
use tracing::{info, warn, Instrument as _};

use crate::worker::Worker;

/// Marks this host's orphaned job records FENCED; retries listing for up to a minute.
pub async fn reconcile(worker: Arc<Worker>) {
    let mut delay = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        match worker.reporter.unfinished_jobs().await {
            Ok(jobs) => break jobs,
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(error = %e, "cannot list this host's jobs yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                warn!(error = %e, "gave up reconciling this host's jobs");
                return;
            }
        }
    };
    for job in jobs {
        let Ok(id) = JobId::parse("job_id", &job.job_id) else {
            continue;
        };
        if worker.jobs.get(id).is_some() {
            continue;
        }
        let error = pb::JobError {
            code: JobErrorCode::Fenced.to_string(),
            message: "the host lost the job (restart or expired session lease); its copy was stopped and is not resumed".into(),
        };
        // A decision about the job's copy: it belongs in the job's trace.
        let span = tracing::info_span!("job.reconcile", otel.name = "ReconcileLostJob", datapath.job.id = %id);
        datapath_telemetry::continue_from(&span, &job.trace_context);
        async {
            worker
                .reporter
                .status(id, JobStatus::Failed, Some(error), Duration::from_secs(30))
                .await;
            info!(job_id = %id, was = ?job.status(), "job this host no longer runs marked FAILED (FENCED)");
        }
        .instrument(span)
        .await;
    }
}
