//! WatchJobs: an etcd watch on `jobs/` turned into a filtered gRPC stream. A stream opened at revision
//! 0 starts with a snapshot read at revision R and continues from R + 1, so no change falls between the
//! two; a stream opened at revision N resumes right after N.
use std::sync::Arc;

use datapath_api::pb::{self, JobEventType, WatchJobsResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::debug;

use crate::{error::Error, tracker::matches, tracker::Tracker};

/// The stream type served by WatchJobs.
pub type JobStream = ReceiverStream<Result<WatchJobsResponse, Status>>;

/// Opens a watch for `req`.
pub async fn watch_jobs(
    tracker: Arc<Tracker>,
    req: pb::WatchJobsRequest,
) -> Result<JobStream, Error> {
    if req.start_revision < 0 {
        return Err(datapath_api::error::FieldViolation::new(
            "start_revision",
            "INVALID_VALUE",
            "must not be negative",
        )
        .into());
    }
    let coord = tracker.coord().clone();
    let filter = move |job: &pb::Job| {
        (req.job_id.is_empty() || job.job_id == req.job_id)
            && matches(job, &req.host_id, None, &req.entity)
    };
    let (tx, rx) = mpsc::channel(256);
    let mut snapshot = Vec::new();
    let after = if req.start_revision == 0 {
        let (jobs, revision) = coord.list_jobs().await?;
        snapshot.extend(
            jobs.into_iter()
                .filter(|j| filter(j))
                .map(|job| WatchJobsResponse {
                    r#type: JobEventType::Snapshot as i32,
                    job: Some(job),
                    revision,
                }),
        );
        revision
    } else {
        req.start_revision
    };
    let mut watch = coord.watch_jobs(after).await?;
    tokio::spawn(async move {
        for event in snapshot {
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        loop {
            let batch = match watch.next().await {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "etcd closed the job watch; resume from the last revision",
                        )))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Error::from(e).into())).await;
                    return;
                }
            };
            for change in batch {
                let event = match (change.job, change.previous) {
                    (Some(job), _) if filter(&job) => WatchJobsResponse {
                        r#type: JobEventType::Put as i32,
                        job: Some(job),
                        revision: change.revision,
                    },
                    (None, previous) if previous.as_ref().is_none_or(&filter) => {
                        WatchJobsResponse {
                            r#type: JobEventType::Deleted as i32,
                            job: Some(pb::Job {
                                job_id: change.job_id.to_string(),
                                ..Default::default()
                            }),
                            revision: change.revision,
                        }
                    }
                    _ => continue,
                };
                if tx.send(Ok(event)).await.is_err() {
                    debug!("job watcher went away");
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
