//! Reports this host's jobs to the job-tracker. Progress is sent best effort (the newest value wins);
//! a job's end is retried until the job-tracker has it, because the scheduler waits on it.
use std::time::Duration;

use datapath_api::{
    ids::{HostId, JobId},
    pb::{self, job_tracker_service_client::JobTrackerServiceClient, JobStatus},
};
use datapath_telemetry::TracedChannel;
use tonic::{Code, Status};
use tracing::{debug, warn};

use crate::error::Error;

/// A job-tracker client for one host.
#[derive(Clone)]
pub struct Reporter {
    client: JobTrackerServiceClient<TracedChannel>,
    host_id: HostId,
}

/// How long a job's end is retried before the worker gives up (the scheduler's fallback then reads
/// the volume's lease and generation instead).
pub const FINAL_REPORT_DEADLINE: Duration = Duration::from_secs(600);

impl Reporter {
    /// A reporter talking to the job-tracker at `url` (connected lazily), over mutual TLS when
    /// `tls` is given, verifying the server as the job-tracker.
    pub fn new(
        url: &str,
        host_id: HostId,
        tls: Option<&datapath_tls::Tls>,
    ) -> anyhow::Result<Self> {
        let channel = datapath_tls::endpoint(url, tls, Some(&datapath_tls::Identity::JobTracker))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            client: JobTrackerServiceClient::new(datapath_telemetry::traced_to(channel, url)),
            host_id,
        })
    }

    /// The raw client.
    pub fn client(&self) -> JobTrackerServiceClient<TracedChannel> {
        self.client.clone()
    }

    /// Registers a job; returns it and whether it is new.
    pub async fn create(&self, job: pb::Job) -> Result<(pb::Job, bool), Error> {
        let resp = self
            .client
            .clone()
            .create_job(pb::CreateJobRequest { job: Some(job) })
            .await
            .map_err(Error::Tracker)?
            .into_inner();
        Ok((resp.job.unwrap_or_default(), resp.created))
    }

    /// A job as the job-tracker has it.
    pub async fn get(&self, job_id: JobId) -> Result<Option<pb::Job>, Error> {
        match self
            .client
            .clone()
            .get_job(pb::GetJobRequest {
                job_id: job_id.to_string(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().job),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(Error::Tracker(s)),
        }
    }

    /// This host's jobs that the job-tracker shows as pending or running.
    pub async fn unfinished_jobs(&self) -> Result<Vec<pb::Job>, Status> {
        let mut jobs = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = pb::ListJobsRequest {
                host_id: self.host_id.to_string(),
                page_size: 1000,
                page_token,
                ..Default::default()
            };
            let resp = self.client.clone().list_jobs(req).await?.into_inner();
            jobs.extend(
                resp.jobs
                    .into_iter()
                    .filter(|j| matches!(j.status(), JobStatus::Pending | JobStatus::Running)),
            );
            if resp.next_page_token.is_empty() {
                return Ok(jobs);
            }
            page_token = resp.next_page_token;
        }
    }

    /// Sends one update.
    pub async fn update(
        &self,
        job_id: JobId,
        status: Option<JobStatus>,
        progress: Option<u32>,
        error: Option<pb::JobError>,
    ) -> Result<pb::Job, Status> {
        let req = pb::UpdateJobRequest {
            job_id: job_id.to_string(),
            host_id: self.host_id.to_string(),
            status: status.map(|s| s as i32).unwrap_or(0),
            progress,
            error,
        };
        Ok(self
            .client
            .clone()
            .update_job(req)
            .await?
            .into_inner()
            .job
            .unwrap_or_default())
    }

    /// Sends progress; failures are only logged.
    pub async fn progress(&self, job_id: JobId, progress: u32) {
        if let Err(s) = self.update(job_id, None, Some(progress), None).await {
            debug!(%job_id, progress, status = %s, "progress not reported");
        }
    }

    /// Sends a status change, retrying transient failures until `deadline` has passed.
    pub async fn status(
        &self,
        job_id: JobId,
        status: JobStatus,
        error: Option<pb::JobError>,
        deadline: Duration,
    ) {
        let start = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.update(job_id, Some(status), None, error.clone()).await {
                Ok(_) => return,
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Aborted
                            | Code::Unknown
                            | Code::Cancelled
                    ) =>
                {
                    if start.elapsed() > deadline {
                        warn!(%job_id, ?status, error = %s, "gave up reporting the job's status");
                        return;
                    }
                    debug!(%job_id, ?status, error = %s, "job-tracker unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(s) => {
                    warn!(%job_id, ?status, error = %s, "job-tracker refused the job's status");
                    return;
                }
            }
        }
    }
}
