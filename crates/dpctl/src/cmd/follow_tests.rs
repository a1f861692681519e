//! `follow` against an in-process job-tracker whose watch stream breaks once mid-job: the follower
//! must resume after the last revision it saw and return the job as it ended.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use datapath_api::pb::{
    self,
    job_tracker_service_server::{JobTrackerService, JobTrackerServiceServer},
};
use tokio::net::TcpListener;
use tonic::{transport::server::TcpIncoming, Request, Response, Status};

use super::*;

type Stream = Pin<Box<dyn futures::Stream<Item = Result<pb::WatchJobsResponse, Status>> + Send>>;

/// Answers `WatchJobs` from a script of streams, one per call, and records the start revisions.
#[derive(Default, Clone)]
struct FakeTracker {
    script: Arc<Mutex<Vec<Vec<pb::WatchJobsResponse>>>>,
    start_revisions: Arc<Mutex<Vec<i64>>>,
}

fn event(
    kind: pb::JobEventType,
    status: pb::JobStatus,
    progress: u32,
    rev: i64,
) -> pb::WatchJobsResponse {
    pb::WatchJobsResponse {
        r#type: kind as i32,
        job: Some(pb::Job {
            job_id: "j".into(),
            status: status as i32,
            progress,
            ..Default::default()
        }),
        revision: rev,
    }
}

#[tonic::async_trait]
impl JobTrackerService for FakeTracker {
    type WatchJobsStream = Stream;

    async fn watch_jobs(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Stream>, Status> {
        self.start_revisions
            .lock()
            .unwrap()
            .push(request.into_inner().start_revision);
        let mut script = self.script.lock().unwrap();
        if script.is_empty() {
            return Err(Status::unavailable("script exhausted"));
        }
        let events = script.remove(0);
        Ok(Response::new(Box::pin(futures::stream::iter(
            events.into_iter().map(Ok),
        ))))
    }

    async fn create_job(
        &self,
        _: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::CreateJobResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_job(
        &self,
        _: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_jobs(
        &self,
        _: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn update_job(
        &self,
        _: Request<pb::UpdateJobRequest>,
    ) -> Result<Response<pb::UpdateJobResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn abort_job(
        &self,
        _: Request<pb::AbortJobRequest>,
    ) -> Result<Response<pb::AbortJobResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete_job(
        &self,
        _: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_registered_hosts(
        &self,
        _: Request<pb::ListRegisteredHostsRequest>,
    ) -> Result<Response<pb::ListRegisteredHostsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn serve(tracker: FakeTracker) -> JobTrackerClient {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(JobTrackerServiceServer::new(tracker))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    crate::client::job_tracker(&url, None).await.unwrap()
}

#[tokio::test]
async fn a_broken_watch_resumes_after_the_last_revision() {
    use pb::{JobEventType as E, JobStatus as S};
    let tracker = FakeTracker::default();
    *tracker.script.lock().unwrap() = vec![
        vec![
            event(E::Snapshot, S::Pending, 0, 3),
            event(E::Put, S::Running, 42, 5),
        ],
        vec![
            event(E::Put, S::Running, 90, 6),
            event(E::Put, S::Succeeded, 100, 7),
        ],
    ];
    let mut client = serve(tracker.clone()).await;
    let job = follow(&mut client, "j").await.unwrap();
    assert_eq!(job.status, S::Succeeded as i32);
    assert_eq!(*tracker.start_revisions.lock().unwrap(), vec![0, 5]);
}

#[tokio::test]
async fn a_failed_job_is_returned_and_a_deleted_one_is_an_error() {
    use pb::{JobEventType as E, JobStatus as S};
    let tracker = FakeTracker::default();
    *tracker.script.lock().unwrap() = vec![
        vec![event(E::Snapshot, S::Failed, 10, 3)],
        vec![
            event(E::Snapshot, S::Running, 10, 3),
            event(E::Deleted, S::Unspecified, 0, 4),
        ],
    ];
    let mut client = serve(tracker.clone()).await;
    let job = follow(&mut client, "j").await.unwrap();
    assert_eq!(job_failure(&job).unwrap(), "job j failed");
    let err = follow(&mut client, "j").await.unwrap_err();
    assert!(err.to_string().contains("deleted"), "{err:#}");
}
