//! Every copy job the scheduler follows, through **one** WatchJobs stream: a stream per copy cost
//! the job-tracker a stream and an etcd watch each, so n copies in flight cost n of both. The stream
//! starts at etcd's current revision (no snapshot: a follower reads its job with GetJob after it
//! subscribes, so nothing between the two is missed) and resumes after the last revision it saw
//! when it breaks. When it cannot resume (the revision was compacted) it starts again from the
//! current revision and tells every follower to read its job again ([`JobNews::Resync`]).
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use datapath_api::pb::{self, JobEventType};
use datapath_coord::Coord;
use tokio::sync::watch;
use tonic::Code;
use tracing::{debug, warn};

use crate::clients::TrackerClient;

/// The latest word on one job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobNews {
    /// Nothing yet since the subscription.
    Nothing,
    /// The job's record as it changed.
    Changed(Box<pb::Job>),
    /// The job's record was deleted.
    Deleted,
    /// Changes may have been missed: read the job again.
    Resync,
}

/// Pause before the stream is opened again after a failure.
const RETRY: Duration = Duration::from_millis(500);

type Subscribers = Mutex<HashMap<String, (u64, watch::Sender<JobNews>)>>;

/// The one job stream of this scheduler and its subscribers; cheap to clone.
#[derive(Clone)]
pub struct JobWatch {
    subscribers: Arc<Subscribers>,
    next: Arc<AtomicU64>,
    _task: Arc<TaskGuard>,
}

struct TaskGuard(tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One follower's view of its job; unsubscribes when dropped.
pub struct Subscription {
    news: watch::Receiver<JobNews>,
    job_id: String,
    token: u64,
    subscribers: Arc<Subscribers>,
}

impl Subscription {
    /// The next word on the job (waits for one).
    pub async fn next(&mut self) -> JobNews {
        if self.news.changed().await.is_err() {
            return JobNews::Resync;
        }
        self.news.borrow_and_update().clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if subs
            .get(&self.job_id)
            .is_some_and(|(t, _)| *t == self.token)
        {
            subs.remove(&self.job_id);
        }
        crate::metrics::set_followed_jobs(subs.len());
    }
}

impl JobWatch {
    /// Starts the stream (it runs until the last clone is dropped).
    pub fn start(tracker: TrackerClient, coord: Coord) -> Self {
        let subscribers: Arc<Subscribers> = Arc::default();
        let task = tokio::spawn(follow_forever(tracker, coord, subscribers.clone()));
        Self {
            subscribers,
            next: Arc::default(),
            _task: Arc::new(TaskGuard(task.abort_handle())),
        }
    }

    /// Subscribes to job `job_id`'s changes from now on. Read the job after subscribing.
    pub fn subscribe(&self, job_id: &str) -> Subscription {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(JobNews::Nothing);
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.insert(job_id.to_string(), (token, tx));
        crate::metrics::set_followed_jobs(subs.len());
        drop(subs);
        Subscription {
            news: rx,
            job_id: job_id.to_string(),
            token,
            subscribers: self.subscribers.clone(),
        }
    }
}

async fn follow_forever(tracker: TrackerClient, coord: Coord, subscribers: Arc<Subscribers>) {
    // The revision to resume after; `None`: start from the current one and resync everyone.
    let mut after: Option<i64> = None;
    loop {
        let fresh = after.is_none();
        let start = match after {
            Some(r) => r,
            None => match coord.revision().await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "job watch: cannot read etcd's revision; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        let opened = tracker
            .clone()
            .watch_jobs(pb::WatchJobsRequest {
                start_revision: start,
                ..Default::default()
            })
            .await;
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(s) => {
                if s.code() == Code::OutOfRange {
                    after = None;
                }
                warn!(error = %s, "job watch: cannot open the stream; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        after = Some(start);
        crate::metrics::job_watch_opened();
        if fresh {
            broadcast(&subscribers, JobNews::Resync);
        }
        debug!(start, "job watch open");
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    after = Some(event.revision.max(after.unwrap_or_default()));
                    deliver(&subscribers, &event);
                }
                Ok(None) => break,
                Err(s) => {
                    if s.code() == Code::OutOfRange {
                        after = None;
                    }
                    warn!(error = %s, "job watch: the stream broke; opening it again");
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn deliver(subscribers: &Subscribers, event: &pb::WatchJobsResponse) {
    let Some(job) = &event.job else { return };
    let subs = subscribers.lock().unwrap_or_else(|p| p.into_inner());
    let Some((_, tx)) = subs.get(&job.job_id) else {
        return;
    };
    let news = if event.r#type == JobEventType::Deleted as i32 {
        JobNews::Deleted
    } else {
        JobNews::Changed(Box::new(job.clone()))
    };
    tx.send_replace(news);
}

fn broadcast(subscribers: &Subscribers, news: JobNews) {
    for (_, tx) in subscribers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
    {
        tx.send_replace(news.clone());
    }
}
