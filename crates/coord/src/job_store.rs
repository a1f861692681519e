//! What the job-tracker's Job API asks of the store, as one narrow trait: read a job, create it if
//! absent, replace it by compare-and-swap (an ended one bound to a retention lease), delete an
//! ended one, read a page. The job-tracker holds a `dyn JobStore`, so its update rules (the
//! compare-and-swap loop, a watched record taken only as a guess, coalesced progress) are
//! unit-tested on an in-memory store, and run on etcd through [`EtcdJobs`].
use std::time::Duration;

use async_trait::async_trait;
use datapath_api::{ids::JobId, pb};

use crate::{
    job_view::JobView,
    jobs::{Created, VersionedJob},
    retention::RetentionLeases,
    Coord, Result,
};

/// Job records' store, for the Job API.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// The record as last watched, which may be behind the store: a first guess for a
    /// compare-and-swap (saving a read when it is current), never an answer on its own.
    fn watched(&self, job_id: JobId) -> Option<VersionedJob>;

    /// The record read now; `None` when it does not exist.
    async fn get_job(&self, job_id: JobId) -> Result<Option<VersionedJob>>;

    /// Creates `job` unless its id exists (then the existing record is returned unchanged).
    async fn create_job(&self, job_id: JobId, job: &pb::Job) -> Result<Created>;

    /// Replaces the record if it is still at `mod_revision`; `ends`: the job ends with this write,
    /// so the record is kept only for the retention time. The new revision, or `None` when the
    /// record changed meanwhile.
    async fn put_job_if(
        &self,
        job_id: JobId,
        job: &pb::Job,
        mod_revision: i64,
        ends: bool,
    ) -> Result<Option<i64>>;

    /// Deletes the record if it is still at `mod_revision`; whether it did.
    async fn delete_job_if(&self, job_id: JobId, mod_revision: i64) -> Result<bool>;

    /// Up to `limit` records in id order after job id `after`, where the next read starts, and
    /// whether more follow (as [`Coord::list_jobs_after`]).
    async fn list_jobs_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<pb::Job>, Option<String>, bool)>;
}

/// Job records in etcd, watched into a [`JobView`]; ended ones bound to shared retention leases
/// (`retention.rs`), or kept forever.
pub struct EtcdJobs {
    coord: Coord,
    retention: Option<RetentionLeases>,
    view: JobView,
}

impl EtcdJobs {
    /// Ended jobs are kept `retention` (zero: forever).
    pub fn new(coord: Coord, retention: Duration) -> Self {
        Self {
            retention: (!retention.is_zero())
                .then(|| RetentionLeases::new(coord.clone(), retention)),
            view: coord.job_view(),
            coord,
        }
    }

    /// The watched jobs, for the readers that want all of them (the lost-host sweeper, gauges).
    pub fn view(&self) -> &JobView {
        &self.view
    }
}

#[async_trait]
impl JobStore for EtcdJobs {
    fn watched(&self, job_id: JobId) -> Option<VersionedJob> {
        self.view.job(job_id)
    }

    async fn get_job(&self, job_id: JobId) -> Result<Option<VersionedJob>> {
        self.coord.get_job(job_id).await
    }

    async fn create_job(&self, job_id: JobId, job: &pb::Job) -> Result<Created> {
        self.coord.create_job(job_id, job).await
    }

    async fn put_job_if(
        &self,
        job_id: JobId,
        job: &pb::Job,
        mod_revision: i64,
        ends: bool,
    ) -> Result<Option<i64>> {
        let lease = match (&self.retention, ends) {
            (Some(leases), true) => Some(leases.lease().await?),
            _ => None,
        };
        let written = self
            .coord
            .put_job_if(job_id, job, mod_revision, lease)
            .await;
        if let (Err(_), Some(leases), Some(lease)) = (&written, &self.retention, lease) {
            // It may have been revoked: the next end is granted a fresh one.
            leases.forget(lease).await;
        }
        written
    }

    async fn delete_job_if(&self, job_id: JobId, mod_revision: i64) -> Result<bool> {
        self.coord.delete_job_if(job_id, mod_revision).await
    }

    async fn list_jobs_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<pb::Job>, Option<String>, bool)> {
        self.coord.list_jobs_after(after, limit).await
    }
}
