//! The Job API's logic over its store (`JobStore`; etcd in service): validated creates,
//! compare-and-swap updates through the state machine, and coalescing of progress writes so a fast
//! copy costs at most about two etcd writes per second per job. An update is first tried on the
//! record as last watched: when that is current (nearly always) the write is the update's only
//! etcd round trip; when it is behind, the compare fails or the judgement it gave is not trusted,
//! and the record is read afresh.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use datapath_api::{
    error::FieldViolation,
    ids::{HostId, JobId},
    page::PageRequest,
    pb::{self, JobStatus},
};
use datapath_coord::{
    job_store::JobStore,
    jobs::{Created, VersionedJob},
};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{
    error::Error,
    open_jobs::OpenJobs,
    transition::{apply, is_terminal, Update},
};

/// The shortest time between two progress-only writes of one job.
pub const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
const CAS_ATTEMPTS: usize = 16;

#[derive(Debug)]
struct Slot {
    last_write: Instant,
    pending: Option<u32>,
}

/// Where a compare-and-swap starts from.
enum Start {
    /// Nothing known: take the watched record, else read.
    Unknown,
    /// The watched record: a write it allows is compared against the store, any other judgement
    /// (no change, a refusal) is made again on a fresh read.
    Watched(VersionedJob),
    /// A record read from the store now: its judgement stands.
    Read(VersionedJob),
}

/// The job-tracker's state: its store plus the progress not yet written.
pub struct Tracker {
    jobs: Arc<dyn JobStore>,
    slots: Mutex<HashMap<JobId, Slot>>,
    open: OpenJobs,
}

impl Tracker {
    /// A tracker over `jobs` that registers at most `max_open_per_host` unended jobs per host
    /// (zero: no limit).
    pub fn new(jobs: Arc<dyn JobStore>, max_open_per_host: usize) -> Arc<Self> {
        Arc::new(Self {
            jobs,
            slots: Mutex::new(HashMap::new()),
            open: OpenJobs::new(max_open_per_host),
        })
    }

    /// The per-host count of unended jobs, which the sweeper's listing refreshes.
    pub fn open_jobs(&self) -> &OpenJobs {
        &self.open
    }

    /// Registers a job, PENDING; returns it and whether it was created now.
    pub async fn create(&self, job: Option<&pb::Job>) -> Result<(pb::Job, bool), Error> {
        let job = job.ok_or_else(|| FieldViolation::missing("job"))?;
        let job_id = JobId::parse("job.job_id", &job.job_id)?;
        HostId::parse("job.host_id", &job.host_id)?;
        datapath_api::limits::description("job.description", &job.description)?;
        if job.params.is_none() {
            return Err(FieldViolation::missing("job.params").into());
        }
        if !matches!(job.status(), JobStatus::Unspecified | JobStatus::Pending) {
            return Err(
                FieldViolation::new("job.status", "INVALID_VALUE", "a new job is PENDING").into(),
            );
        }
        let now = datapath_api::time::now();
        let mut record = job.clone();
        record.set_status(JobStatus::Pending);
        record.progress = 0;
        record.error = None;
        record.abort_requested = false;
        record.created_at = Some(now);
        record.updated_at = Some(now);
        if !self.open.admit(&record.host_id) {
            // A retried create of a job that exists is still answered as such.
            return match self.jobs.get_job(job_id).await? {
                Some(v) if v.job.host_id == record.host_id && v.job.params == record.params => {
                    Ok((self.with_pending(job_id, v.job), false))
                }
                _ => Err(Error::HostJobsFull {
                    host: record.host_id,
                    limit: self.open.limit(),
                }),
            };
        }
        let created = self.jobs.create_job(job_id, &record).await;
        if !matches!(created, Ok(Created::New(_))) {
            self.open.release(&record.host_id);
        }
        match created? {
            Created::New(v) => {
                crate::metrics::transition(&v.job);
                Ok((v.job, true))
            }
            Created::Existing(v)
                if v.job.host_id == record.host_id && v.job.params == record.params =>
            {
                Ok((self.with_pending(job_id, v.job), false))
            }
            Created::Existing(_) => Err(Error::Exists(job_id)),
        }
    }

    /// One job, with any progress not yet written.
    pub async fn get(&self, job_id: JobId) -> Result<pb::Job, Error> {
        let v = self.read(job_id).await?;
        Ok(self.with_pending(job_id, v.job))
    }

    /// One page of the jobs matching the filters.
    pub async fn list(&self, req: &pb::ListJobsRequest) -> Result<(Vec<pb::Job>, String), Error> {
        let page = PageRequest::parse(req.page_size, &req.page_token)?;
        let status = match req.status {
            0 => None,
            v => Some(JobStatus::try_from(v).map_err(|_| {
                FieldViolation::new(
                    "status",
                    "UNKNOWN_ENUM_VALUE",
                    format!("{v} is not a JobStatus"),
                )
            })?),
        };
        let store = &self.jobs;
        let matched = page
            .gather(
                |after, limit| async move { store.list_jobs_after(after.as_deref(), limit).await },
                |j| matches(j, &req.host_id, status, &req.entity),
            )
            .await?;
        let (jobs, next) = page.paginate(matched, |j| j.job_id.clone());
        let jobs = jobs
            .into_iter()
            .map(|j| match JobId::parse("job_id", &j.job_id) {
                Ok(id) => self.with_pending(id, j),
                Err(_) => j,
            })
            .collect();
        Ok((jobs, next))
    }

    /// Applies a host's report on its job.
    pub async fn update(&self, req: &pb::UpdateJobRequest) -> Result<pb::Job, Error> {
        let job_id = JobId::parse("job_id", &req.job_id)?;
        HostId::parse("host_id", &req.host_id)?;
        let update = Update::from_pb(req)?;
        // A watched record that names the caller as the job's host is a good start (the write's
        // compare confirms it); one that names another host, or none, is read afresh before the
        // caller is refused.
        let start = match self.jobs.watched(job_id) {
            Some(v) if v.job.host_id == req.host_id => Start::Watched(v),
            _ => Start::Read(self.read(job_id).await?),
        };
        let current = start.record().expect("a record was just chosen");
        owned_by(job_id, &current.job, &req.host_id)?;
        let status = current.job.status();
        if update.is_progress_only(status) && !is_terminal(status) {
            if let Some(progress) = update.progress {
                if self.defer_progress(job_id, progress) {
                    // Validated against the state machine, but written later.
                    let shown = apply(job_id, &current.job, &update)?
                        .unwrap_or_else(|| current.job.clone());
                    return Ok(self.with_pending(job_id, shown));
                }
            }
        }
        let mut update = update;
        update.progress = update.progress.max(self.take_pending(job_id));
        // The owner is checked again on whatever record the write is judged on.
        self.write(job_id, start, |job| {
            owned_by(job_id, job, &req.host_id)?;
            apply(job_id, job, &update)
        })
        .await
    }

    /// Applies an update decided by the job-tracker itself (a lost host's job), unless the job has
    /// ended meanwhile.
    pub async fn write_as_tracker(
        &self,
        job_id: JobId,
        update: &crate::transition::Update,
    ) -> Result<pb::Job, Error> {
        self.write(job_id, Start::Unknown, |job| {
            crate::lost::unless_ended(job_id, job, update)
        })
        .await
    }

    /// Marks a job as asked to abort; the caller forwards the request to its host.
    pub async fn request_abort(&self, job_id: JobId) -> Result<pb::Job, Error> {
        self.write(job_id, Start::Unknown, |job| {
            if is_terminal(job.status()) {
                return Err(Error::Ended(job_id));
            }
            Ok((!job.abort_requested).then(|| pb::Job {
                abort_requested: true,
                updated_at: Some(datapath_api::time::now()),
                ..job.clone()
            }))
        })
        .await
    }

    /// Deletes an ended job.
    pub async fn delete(&self, job_id: JobId) -> Result<(), Error> {
        for _ in 0..CAS_ATTEMPTS {
            let v = self.read(job_id).await?;
            if !is_terminal(v.job.status()) {
                return Err(Error::NotEnded(job_id));
            }
            if self.jobs.delete_job_if(job_id, v.mod_revision).await? {
                self.slots.lock().expect("slots lock").remove(&job_id);
                return Ok(());
            }
        }
        Err(Error::Contended(job_id))
    }

    /// Writes due coalesced progress; called periodically.
    pub async fn flush_due(&self) {
        let due: Vec<(JobId, u32)> = {
            let mut slots = self.slots.lock().expect("slots lock");
            slots
                .iter_mut()
                .filter(|(_, s)| {
                    s.pending.is_some() && s.last_write.elapsed() >= MIN_PROGRESS_INTERVAL
                })
                .filter_map(|(id, s)| s.pending.take().map(|p| (*id, p)))
                .collect()
        };
        for (job_id, progress) in due {
            let update = Update {
                status: None,
                progress: Some(progress),
                error: None,
            };
            match self
                .write(job_id, Start::Unknown, |job| apply(job_id, job, &update))
                .await
            {
                Ok(_) => {}
                Err(Error::Ended(_) | Error::NotFound(_)) => {
                    self.slots.lock().expect("slots lock").remove(&job_id);
                }
                Err(e) => {
                    warn!(%job_id, error = %e, "could not write coalesced progress; keeping it");
                    let mut slots = self.slots.lock().expect("slots lock");
                    if let Some(slot) = slots.get_mut(&job_id) {
                        slot.pending = Some(slot.pending.unwrap_or(0).max(progress));
                    }
                }
            }
        }
    }

    /// Returns true when the progress was kept for later instead of written now.
    fn defer_progress(&self, job_id: JobId, progress: u32) -> bool {
        let mut slots = self.slots.lock().expect("slots lock");
        match slots.get_mut(&job_id) {
            Some(slot) if slot.last_write.elapsed() < MIN_PROGRESS_INTERVAL => {
                slot.pending = Some(slot.pending.unwrap_or(0).max(progress));
                true
            }
            _ => false,
        }
    }

    fn take_pending(&self, job_id: JobId) -> Option<u32> {
        let mut slots = self.slots.lock().expect("slots lock");
        slots.get_mut(&job_id).and_then(|s| s.pending.take())
    }

    fn with_pending(&self, job_id: JobId, mut job: pb::Job) -> pb::Job {
        let slots = self.slots.lock().expect("slots lock");
        if let Some(p) = slots.get(&job_id).and_then(|s| s.pending) {
            if !is_terminal(job.status()) {
                job.progress = job.progress.max(p);
            }
        }
        job
    }

    /// The record read from the store now.
    async fn read(&self, job_id: JobId) -> Result<VersionedJob, Error> {
        self.jobs
            .get_job(job_id)
            .await?
            .ok_or(Error::NotFound(job_id))
    }

    /// A compare-and-swap loop: change the record with `f`, write if unchanged meanwhile, else
    /// read it again and retry.
    async fn write(
        &self,
        job_id: JobId,
        start: Start,
        f: impl Fn(&pb::Job) -> Result<Option<pb::Job>, Error>,
    ) -> Result<pb::Job, Error> {
        let mut start = match start {
            Start::Unknown => self
                .jobs
                .watched(job_id)
                .map_or(Start::Unknown, Start::Watched),
            known => known,
        };
        for _ in 0..CAS_ATTEMPTS {
            let (current, watched) = match std::mem::replace(&mut start, Start::Unknown) {
                Start::Watched(v) => (v, true),
                Start::Read(v) => (v, false),
                Start::Unknown => (self.read(job_id).await?, false),
            };
            let next = match f(&current.job) {
                Ok(Some(next)) => next,
                // A watched record may be behind: only a write it allows is tried on it.
                Ok(None) | Err(_) if watched => continue,
                Ok(None) => return Ok(current.job),
                Err(e) => return Err(e),
            };
            let ends = is_terminal(next.status()) && !is_terminal(current.job.status());
            let written = self
                .jobs
                .put_job_if(job_id, &next, current.mod_revision, ends)
                .await?;
            if written.is_some() {
                if next.status() != current.job.status() {
                    crate::metrics::transition(&next);
                }
                let mut slots = self.slots.lock().expect("slots lock");
                if is_terminal(next.status()) {
                    slots.remove(&job_id);
                } else {
                    let slot = slots.entry(job_id).or_insert(Slot {
                        last_write: Instant::now(),
                        pending: None,
                    });
                    slot.last_write = Instant::now();
                }
                return Ok(next);
            }
            debug!(%job_id, watched, "job record changed concurrently; retrying");
        }
        Err(Error::Contended(job_id))
    }
}

impl Start {
    fn record(&self) -> Option<&VersionedJob> {
        match self {
            Start::Watched(v) | Start::Read(v) => Some(v),
            Start::Unknown => None,
        }
    }
}

/// Refuses a report on `job` from a host that does not run it.
fn owned_by(job_id: JobId, job: &pb::Job, caller: &str) -> Result<(), Error> {
    if job.host_id != caller {
        return Err(Error::NotOwner {
            job: job_id,
            owner: job.host_id.clone(),
            caller: caller.to_string(),
        });
    }
    Ok(())
}

/// Whether a job passes ListJobs / WatchJobs filters (empty filters match all).
pub fn matches(job: &pb::Job, host_id: &str, status: Option<JobStatus>, entity: &str) -> bool {
    (host_id.is_empty() || job.host_id == host_id)
        && status.is_none_or(|s| job.status() == s)
        && (entity.is_empty() || job.entities.iter().any(|e| e == entity))
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
