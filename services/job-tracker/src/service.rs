//! The gRPC face of the Job API: converts requests, calls the tracker, maps errors once.
use std::{sync::Arc, time::Duration};

use datapath_api::{
    ids::JobId,
    pb::{
        self, host_worker_service_client::HostWorkerServiceClient,
        job_tracker_service_server::JobTrackerService,
    },
};
use datapath_coord::Coord;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{
    error::Error,
    tracker::Tracker,
    watch::{watch_jobs, JobStream},
};

/// The JobTrackerService implementation.
pub struct JobTrackerApi {
    tracker: Arc<Tracker>,
    /// For what is not the Job API's store: host registrations, job watches.
    coord: Coord,
    /// For the calls it makes to hosts (forwarded aborts).
    tls: Option<datapath_tls::Tls>,
    streams: datapath_server::streams::StreamLimits,
}

impl JobTrackerApi {
    /// Serves `tracker` with at most `streams` WatchJobs streams open; calls hosts over mutual TLS
    /// when `tls` is given.
    pub fn new(
        tracker: Arc<Tracker>,
        coord: Coord,
        tls: Option<datapath_tls::Tls>,
        streams: datapath_server::streams::StreamLimits,
    ) -> Self {
        Self {
            tracker,
            coord,
            tls,
            streams,
        }
    }

    /// Tells the job's host to abort it. Best effort: the request is already recorded in the job.
    async fn forward_abort(&self, job: &pb::Job) {
        let Ok(host_id) = job.host_id.parse() else {
            return;
        };
        let host = match self.coord.get_host(host_id).await {
            Ok(Some(host)) => host,
            Ok(None) => {
                warn!(job_id = %job.job_id, host_id = %job.host_id, "abort recorded; the job's host is not live");
                return;
            }
            Err(e) => {
                warn!(job_id = %job.job_id, error = %e, "abort recorded; could not look up its host");
                return;
            }
        };
        let call = async {
            let server = datapath_tls::Identity::Host(host_id);
            let channel = datapath_tls::endpoint(&host.address, self.tls.as_ref(), Some(&server))
                .map_err(|e| Status::internal(e.to_string()))?
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            HostWorkerServiceClient::new(datapath_telemetry::traced_to(channel, &host.address))
                .abort_host_job(pb::AbortHostJobRequest {
                    job_id: job.job_id.clone(),
                })
                .await
        };
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) => {
                info!(job_id = %job.job_id, host_id = %job.host_id, "abort forwarded to host")
            }
            other => warn!(job_id = %job.job_id, ?other, "abort recorded; host did not confirm"),
        }
    }
}

fn job_id(text: &str) -> Result<JobId, Status> {
    Ok(JobId::parse("job_id", text)?)
}

/// With mutual TLS a host creates and updates only its own jobs: the request's `host_id` must be
/// the host its certificate names (the layer has already let only hosts through; an empty one is
/// refused as malformed by the tracker). The refusal names the caller and the method, never the
/// job's owner.
fn own_host<T>(req: &Request<T>, host_id: &str, method: &str) -> Result<(), Status> {
    match datapath_server::authz::caller(req) {
        Some(caller @ datapath_tls::Identity::Host(id))
            if !host_id.is_empty() && id.to_string() != host_id =>
        {
            Err(datapath_server::authz::deny(method, Ok(caller.clone())))
        }
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl JobTrackerService for JobTrackerApi {
    async fn create_job(
        &self,
        req: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::CreateJobResponse>, Status> {
        let host_id = req
            .get_ref()
            .job
            .as_ref()
            .map_or("", |j| j.host_id.as_str());
        own_host(&req, host_id, "/datapath.v1.JobTrackerService/CreateJob")?;
        let (job, created) = self.tracker.create(req.get_ref().job.as_ref()).await?;
        if created {
            info!(job_id = %job.job_id, host_id = %job.host_id, "job created");
        }
        Ok(Response::new(pb::CreateJobResponse {
            job: Some(job),
            created,
        }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let job = self.tracker.get(job_id(&req.get_ref().job_id)?).await?;
        Ok(Response::new(pb::GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let (jobs, next_page_token) = self.tracker.list(req.get_ref()).await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn update_job(
        &self,
        req: Request<pb::UpdateJobRequest>,
    ) -> Result<Response<pb::UpdateJobResponse>, Status> {
        own_host(
            &req,
            &req.get_ref().host_id,
            "/datapath.v1.JobTrackerService/UpdateJob",
        )?;
        let job = self.tracker.update(req.get_ref()).await?;
        Ok(Response::new(pb::UpdateJobResponse { job: Some(job) }))
    }

    async fn abort_job(
        &self,
        req: Request<pb::AbortJobRequest>,
    ) -> Result<Response<pb::AbortJobResponse>, Status> {
        let job = self
            .tracker
            .request_abort(job_id(&req.get_ref().job_id)?)
            .await?;
        self.forward_abort(&job).await;
        let job = self.tracker.get(job_id(&job.job_id)?).await.unwrap_or(job);
        Ok(Response::new(pb::AbortJobResponse { job: Some(job) }))
    }

    async fn delete_job(
        &self,
        req: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        self.tracker.delete(job_id(&req.get_ref().job_id)?).await?;
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    type WatchJobsStream = JobStream;

    async fn watch_jobs(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let permit = self.streams.acquire(&req)?;
        Ok(Response::new(
            watch_jobs(self.coord.clone(), req.into_inner(), permit).await?,
        ))
    }

    async fn list_registered_hosts(
        &self,
        _req: Request<pb::ListRegisteredHostsRequest>,
    ) -> Result<Response<pb::ListRegisteredHostsResponse>, Status> {
        let hosts = self.coord.list_hosts().await.map_err(Error::from)?;
        Ok(Response::new(pb::ListRegisteredHostsResponse { hosts }))
    }
}
