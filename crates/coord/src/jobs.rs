//! Job records, `jobs/<job_id>`: written only by the job-tracker. Every change is a compare-and-swap on
//! the record's mod revision, so two concurrent updates of one job cannot lose each other's effect.
//! Watches resume from any revision that etcd has not compacted.
use datapath_api::{ids::JobId, pb};
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchStream,
};
use prost::Message;

use crate::{error::CoordError, hosts::decode, Coord, Keys, Result};

/// A job record and the etcd revision that last wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionedJob {
    /// The record.
    pub job: pb::Job,
    /// Its mod revision, the compare-and-swap token.
    pub mod_revision: i64,
}

/// The outcome of creating a job record.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// Written now.
    New(VersionedJob),
    /// A record with this id was already there; it is returned unchanged.
    Existing(VersionedJob),
}

/// One change of one job record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobChange {
    /// The etcd revision of the change.
    pub revision: i64,
    /// The job it concerns.
    pub job_id: JobId,
    /// The record after the change; `None` when it was deleted.
    pub job: Option<pb::Job>,
    /// The record before the change, when there was one.
    pub previous: Option<pb::Job>,
}

impl Coord {
    /// Creates `job` unless its id exists.
    pub async fn create_job(&self, job_id: JobId, job: &pb::Job) -> Result<Created> {
        let key = self.keys().job(job_id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), job.encode_to_vec(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self.client().txn(txn).await?;
        if resp.succeeded() {
            let mod_revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(Created::New(VersionedJob {
                job: job.clone(),
                mod_revision,
            }));
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                if let Some(kv) = get.kvs().first() {
                    return Ok(Created::Existing(VersionedJob {
                        job: decode(kv.key(), kv.value())?,
                        mod_revision: kv.mod_revision(),
                    }));
                }
            }
        }
        // Deleted between compare and get: try once more.
        Box::pin(self.create_job(job_id, job)).await
    }

    /// One job record.
    pub async fn get_job(&self, job_id: JobId) -> Result<Option<VersionedJob>> {
        let resp = self.client().get(self.keys().job(job_id), None).await?;
        resp.kvs()
            .first()
            .map(|kv| {
                Ok(VersionedJob {
                    job: decode(kv.key(), kv.value())?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    /// Replaces a job record if it is still at `mod_revision`, optionally binding it to `lease` (the
    /// retention lease of an ended job). Returns the new mod revision, or `None` if the record changed.
    pub async fn put_job_if(
        &self,
        job_id: JobId,
        job: &pb::Job,
        mod_revision: i64,
        lease: Option<i64>,
    ) -> Result<Option<i64>> {
        let key = self.keys().job(job_id);
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(key, job.encode_to_vec(), opts)]);
        let resp = self.client().txn(txn).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or_default()))
    }

    /// Deletes a job record if it is still at `mod_revision`. Returns whether it did.
    pub async fn delete_job_if(&self, job_id: JobId, mod_revision: i64) -> Result<bool> {
        let key = self.keys().job(job_id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.client().txn(txn).await?.succeeded())
    }

    /// Every job record in id order (a record that does not decode is skipped: `quarantine.rs`),
    /// and the revision the listing was read at.
    pub async fn list_jobs(&self) -> Result<(Vec<pb::Job>, i64)> {
        let resp = self
            .client()
            .get(self.keys().jobs(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(listed_jobs(&resp))
    }

    /// Up to `limit` job records in id order, strictly after job id `after` (all from the first
    /// with `None`), the id of the last key read (where the next read starts, even when that
    /// record did not decode), and whether more follow: one bounded etcd range read, for pages
    /// that never read every job.
    pub async fn list_jobs_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<pb::Job>, Option<String>, bool)> {
        let (resp, last, more) = self.range_after(&self.keys().jobs(), after, limit).await?;
        let (jobs, _) = listed_jobs(&resp);
        Ok((jobs, last, more))
    }

    /// Job `job_id` (if it exists and decodes) and the revision it was read at: a one-job listing.
    pub async fn job_snapshot(&self, job_id: JobId) -> Result<(Vec<pb::Job>, i64)> {
        let resp = self.client().get(self.keys().job(job_id), None).await?;
        Ok(listed_jobs(&resp))
    }

    /// Watches every job change after `after_revision`.
    pub async fn watch_jobs(&self, after_revision: i64) -> Result<JobWatch> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after_revision + 1);
        let stream = self.client().watch(self.keys().jobs(), Some(opts)).await?;
        Ok(JobWatch {
            stream,
            keys: self.keys().clone(),
            requested: after_revision + 1,
        })
    }
}

/// The jobs a range read found (those that do not decode skipped: `quarantine.rs`) and the
/// revision it was read at.
fn listed_jobs(resp: &etcd_client::GetResponse) -> (Vec<pb::Job>, i64) {
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    let jobs = resp
        .kvs()
        .iter()
        .filter_map(|kv| crate::quarantine::listed("jobs", kv))
        .collect();
    (jobs, revision)
}

/// A live stream of job changes.
pub struct JobWatch {
    stream: WatchStream,
    keys: Keys,
    requested: i64,
}

impl JobWatch {
    /// The next batch of changes; `None` when etcd closed the watch.
    pub async fn next(&mut self) -> Result<Option<Vec<JobChange>>> {
        loop {
            let Some(resp) = self.stream.message().await? else {
                return Ok(None);
            };
            if resp.compact_revision() > 0 {
                return Err(CoordError::Compacted {
                    requested: self.requested,
                    compacted: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Ok(None);
            }
            let mut changes = Vec::new();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(job_id) = self.keys.parse_job(kv.key()) else {
                    continue;
                };
                // A put that does not decode is skipped (`quarantine.rs`), as a listing skips it.
                let job = match event.event_type() {
                    EventType::Put => match crate::quarantine::listed("jobs", kv) {
                        Some(job) => Some(job),
                        None => continue,
                    },
                    EventType::Delete => None,
                };
                let previous = event
                    .prev_kv()
                    .and_then(|p| pb::Job::decode(p.value()).ok());
                changes.push(JobChange {
                    revision: kv.mod_revision(),
                    job_id,
                    job,
                    previous,
                });
            }
            if !changes.is_empty() {
                return Ok(Some(changes));
            }
        }
    }
}
