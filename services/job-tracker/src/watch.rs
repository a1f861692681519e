//! WatchJobs: an etcd watch on `jobs/` turned into a filtered gRPC stream. A stream opened at revision
//! 0 starts with a snapshot read at revision R and continues from R + 1, so no change falls between the
//! two; a stream opened at revision N resumes right after N.
use datapath_api::pb::{self, JobEventType, WatchJobsResponse};
use datapath_coord::Coord;
use datapath_server::streams::{Permitted, StreamPermit};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::debug;

use crate::{error::Error, tracker::matches};

/// The stream type served by WatchJobs: it holds its stream permits until the client drops it.
pub type JobStream = Permitted<ReceiverStream<Result<WatchJobsResponse, Status>>>;

/// Opens a watch for `req`.
pub async fn watch_jobs(
    coord: Coord,
    req: pb::WatchJobsRequest,
    permit: StreamPermit,
) -> Result<JobStream, Error> {
    if req.start_revision < 0 {
        return Err(datapath_api::error::FieldViolation::new(
            "start_revision",
            "INVALID_VALUE",
            "must not be negative",
        )
        .into());
    }
    let one_job = pb_job_id(&req.job_id)?;
    let filter = move |job: &pb::Job| {
        (req.job_id.is_empty() || job.job_id == req.job_id)
            && matches(job, &req.host_id, None, &req.entity)
    };
    let (tx, rx) = mpsc::channel(256);
    let mut snapshot = Vec::new();
    if req.start_revision > 0 {
        // A revision etcd has not reached yet is refused (and i64::MAX cannot overflow below).
        let current = coord.revision().await?;
        if req.start_revision > current {
            return Err(datapath_api::error::FieldViolation::new(
                "start_revision",
                "OUT_OF_RANGE",
                format!("is beyond etcd's current revision {current}"),
            )
            .into());
        }
    }
    let after = if req.start_revision == 0 {
        // One job asked for: read that one, not every job.
        let (jobs, revision) = match one_job {
            Some(id) => coord.job_snapshot(id).await?,
            None => coord.list_jobs().await?,
        };
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
            // A client that went away ends the etcd watch at once, not at the next job change.
            let next = tokio::select! {
                () = tx.closed() => {
                    debug!("job watcher went away");
                    return;
                }
                next = watch.next() => next,
            };
            let batch = match next {
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
    Ok(Permitted::new(ReceiverStream::new(rx), permit))
}

fn pb_job_id(text: &str) -> Result<Option<datapath_api::ids::JobId>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(datapath_api::ids::JobId::parse("job_id", text)?))
}
