//! The tracker's update rules on an in-memory store: how many reads and writes an update costs,
//! what it does with a watched record that is behind, who may report, coalesced progress, and
//! which write binds the record to its retention.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use datapath_api::{
    ids::{HostId, JobId},
    pb::{self, JobStatus},
};
use datapath_coord::{
    job_store::JobStore,
    jobs::{Created, VersionedJob},
    Result,
};

use super::{Tracker, MIN_PROGRESS_INTERVAL};
use crate::error::Error;

/// One job store in memory, with what was asked of it.
#[derive(Default)]
struct MemJobs(Mutex<Mem>);

#[derive(Default)]
struct Mem {
    revision: i64,
    records: HashMap<JobId, VersionedJob>,
    /// What `watched` answers, set by each test (a view that lags, or is current).
    watched: HashMap<JobId, VersionedJob>,
    gets: usize,
    /// Every compare-and-swap tried: the status written, whether it ended the job, whether it
    /// was written.
    puts: Vec<(JobStatus, bool, bool)>,
    /// Every put first sees another writer change the record (a job nobody can write).
    contended: bool,
}

impl MemJobs {
    fn with(&self, f: impl FnOnce(&mut Mem)) {
        f(&mut self.0.lock().unwrap())
    }

    fn gets(&self) -> usize {
        self.0.lock().unwrap().gets
    }

    fn puts(&self) -> Vec<(JobStatus, bool, bool)> {
        self.0.lock().unwrap().puts.clone()
    }

    fn stored(&self, id: JobId) -> VersionedJob {
        self.0.lock().unwrap().records[&id].clone()
    }

    /// The view catches up with the store.
    fn watch_now(&self, id: JobId) {
        let mut m = self.0.lock().unwrap();
        let v = m.records[&id].clone();
        m.watched.insert(id, v);
    }
}

#[async_trait]
impl JobStore for MemJobs {
    fn watched(&self, job_id: JobId) -> Option<VersionedJob> {
        self.0.lock().unwrap().watched.get(&job_id).cloned()
    }

    async fn get_job(&self, job_id: JobId) -> Result<Option<VersionedJob>> {
        let mut m = self.0.lock().unwrap();
        m.gets += 1;
        Ok(m.records.get(&job_id).cloned())
    }

    async fn create_job(&self, job_id: JobId, job: &pb::Job) -> Result<Created> {
        let mut m = self.0.lock().unwrap();
        if let Some(v) = m.records.get(&job_id) {
            return Ok(Created::Existing(v.clone()));
        }
        m.revision += 1;
        let v = VersionedJob {
            job: job.clone(),
            mod_revision: m.revision,
        };
        m.records.insert(job_id, v.clone());
        Ok(Created::New(v))
    }

    async fn put_job_if(
        &self,
        job_id: JobId,
        job: &pb::Job,
        mod_revision: i64,
        ends: bool,
    ) -> Result<Option<i64>> {
        let mut m = self.0.lock().unwrap();
        if m.contended {
            m.revision += 1;
            let revision = m.revision;
            if let Some(v) = m.records.get_mut(&job_id) {
                v.mod_revision = revision;
            }
        }
        let current = m.records.get(&job_id).map(|v| v.mod_revision);
        let written = current == Some(mod_revision);
        m.puts.push((job.status(), ends, written));
        if !written {
            return Ok(None);
        }
        m.revision += 1;
        let revision = m.revision;
        m.records.insert(
            job_id,
            VersionedJob {
                job: job.clone(),
                mod_revision: revision,
            },
        );
        Ok(Some(revision))
    }

    async fn delete_job_if(&self, job_id: JobId, mod_revision: i64) -> Result<bool> {
        let mut m = self.0.lock().unwrap();
        let found = m.records.get(&job_id).map(|v| v.mod_revision) == Some(mod_revision);
        if found {
            m.records.remove(&job_id);
        }
        Ok(found)
    }

    async fn list_jobs_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<pb::Job>, Option<String>, bool)> {
        // A range read in id order, as etcd's over `jobs/<id>`.
        let m = self.0.lock().unwrap();
        let mut ids: Vec<String> = m.records.keys().map(JobId::to_string).collect();
        ids.sort();
        ids.retain(|id| after.is_none_or(|a| id.as_str() > a));
        let more = ids.len() > limit;
        ids.truncate(limit);
        let jobs = ids
            .iter()
            .map(|id| m.records[&id.parse::<JobId>().unwrap()].job.clone())
            .collect();
        Ok((jobs, ids.last().cloned(), more))
    }
}

fn new_job(id: JobId, host: HostId) -> pb::Job {
    pb::Job {
        job_id: id.to_string(),
        host_id: host.to_string(),
        params: Some(pb::job::Params::CopyData(Default::default())),
        ..Default::default()
    }
}

fn report(
    id: JobId,
    host: HostId,
    status: JobStatus,
    progress: Option<u32>,
) -> pb::UpdateJobRequest {
    pb::UpdateJobRequest {
        job_id: id.to_string(),
        host_id: host.to_string(),
        status: status as i32,
        progress,
        ..Default::default()
    }
}

/// A tracker over a fresh store, and one PENDING job of `host` in it.
async fn one_job() -> (Arc<MemJobs>, Arc<Tracker>, JobId, HostId) {
    let store = Arc::new(MemJobs::default());
    let tracker = Tracker::new(store.clone(), 0);
    let (id, host) = (JobId::random(), HostId::random());
    let (job, created) = tracker.create(Some(&new_job(id, host))).await.unwrap();
    assert!(created);
    assert_eq!(job.status(), JobStatus::Pending);
    (store, tracker, id, host)
}

#[tokio::test]
async fn an_update_on_a_current_watched_record_is_its_one_write_and_no_read() {
    let (store, tracker, id, host) = one_job().await;
    store.watch_now(id);
    let job = tracker
        .update(&report(id, host, JobStatus::Running, None))
        .await
        .unwrap();
    assert_eq!(job.status(), JobStatus::Running);
    assert_eq!(store.gets(), 0);
    assert_eq!(store.puts(), vec![(JobStatus::Running, false, true)]);
    assert_eq!(store.stored(id).job.status(), JobStatus::Running);
}

#[tokio::test]
async fn with_no_watched_record_an_update_reads_once_and_writes_once() {
    let (store, tracker, id, host) = one_job().await;
    tracker
        .update(&report(id, host, JobStatus::Running, None))
        .await
        .unwrap();
    assert_eq!(store.gets(), 1);
    assert_eq!(store.puts().len(), 1);
}

#[tokio::test]
async fn a_refusal_judged_on_a_watched_record_behind_the_store_is_judged_again_on_a_read() {
    let (store, tracker, id, host) = one_job().await;
    // The view still shows the job PENDING; the store has it RUNNING. PENDING → SUCCEEDED is no
    // transition, RUNNING → SUCCEEDED is.
    store.watch_now(id);
    tracker
        .update(&report(id, host, JobStatus::Running, None))
        .await
        .unwrap();
    assert_eq!(
        store.watched(id).unwrap().job.status(),
        JobStatus::Pending,
        "the view lags"
    );
    let job = tracker
        .update(&report(id, host, JobStatus::Succeeded, None))
        .await
        .unwrap();
    assert_eq!(job.status(), JobStatus::Succeeded);
    assert_eq!(store.stored(id).job.status(), JobStatus::Succeeded);
    assert_eq!(
        store.gets(),
        1,
        "one read, after the lagging view's refusal"
    );
}

#[tokio::test]
async fn a_write_allowed_on_a_lagging_watched_record_fails_its_compare_and_is_retried_on_a_read() {
    let (store, tracker, id, host) = one_job().await;
    store.watch_now(id);
    tracker
        .update(&report(id, host, JobStatus::Running, None))
        .await
        .unwrap();
    // RUNNING → FAILED is allowed on the view's PENDING too: the compare refutes it.
    let mut failed = report(id, host, JobStatus::Failed, None);
    failed.error = Some(pb::JobError {
        code: "COPY_FAILED".into(),
        message: "x".into(),
    });
    let job = tracker.update(&failed).await.unwrap();
    assert_eq!(job.status(), JobStatus::Failed);
    let puts = store.puts();
    assert_eq!(
        puts[1..],
        [
            (JobStatus::Failed, true, false),
            (JobStatus::Failed, true, true)
        ]
    );
    assert_eq!(store.gets(), 1);
}

#[tokio::test]
async fn another_host_is_refused_on_the_stored_record_and_nothing_is_written() {
    let (store, tracker, id, _host) = one_job().await;
    let intruder = HostId::random();
    // Even a watched record that names the intruder (a stale or forged guess) is not believed:
    // the stored record decides.
    store.with(|m| {
        let mut v = m.records[&id].clone();
        v.job.host_id = intruder.to_string();
        v.mod_revision -= 1;
        m.watched.insert(id, v);
    });
    let err = tracker
        .update(&report(id, intruder, JobStatus::Running, None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotOwner { .. }), "{err:?}");
    assert!(store.puts().iter().all(|(_, _, written)| !written));
    assert_eq!(store.stored(id).job.status(), JobStatus::Pending);
}

#[tokio::test]
async fn only_the_write_that_ends_a_job_binds_it_to_its_retention() {
    let (store, tracker, id, host) = one_job().await;
    for status in [JobStatus::Running, JobStatus::Succeeded] {
        tracker
            .update(&report(id, host, status, None))
            .await
            .unwrap();
    }
    // A repeated end changes nothing and writes nothing.
    tracker
        .update(&report(id, host, JobStatus::Succeeded, None))
        .await
        .unwrap();
    assert_eq!(
        store.puts(),
        vec![
            (JobStatus::Running, false, true),
            (JobStatus::Succeeded, true, true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn progress_within_the_interval_is_kept_shown_and_written_once_later() {
    let (store, tracker, id, host) = one_job().await;
    tracker
        .update(&report(id, host, JobStatus::Running, Some(5)))
        .await
        .unwrap();
    // Progress never goes back: a lower report shows the highest kept.
    for (reported, shown) in [(10, 10), (30, 30), (20, 30)] {
        let job = tracker
            .update(&report(id, host, JobStatus::Unspecified, Some(reported)))
            .await
            .unwrap();
        assert_eq!(job.progress, shown);
    }
    assert_eq!(store.puts().len(), 1, "kept, not written");
    assert_eq!(tracker.get(id).await.unwrap().progress, 30);
    tracker.flush_due().await;
    assert_eq!(store.puts().len(), 1, "not due yet");
    tokio::time::advance(MIN_PROGRESS_INTERVAL + Duration::from_millis(1)).await;
    tracker.flush_due().await;
    assert_eq!(store.puts().len(), 2);
    assert_eq!(store.stored(id).job.progress, 30);
    tracker.flush_due().await;
    assert_eq!(store.puts().len(), 2, "written once");
}

#[tokio::test]
async fn a_record_that_changes_at_every_try_ends_contended() {
    let (store, tracker, id, host) = one_job().await;
    store.with(|m| m.contended = true);
    let err = tracker
        .update(&report(id, host, JobStatus::Running, None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Contended(_)), "{err:?}");
    assert_eq!(store.puts().len(), super::CAS_ATTEMPTS);
}

#[tokio::test]
async fn a_repeated_create_returns_the_job_and_another_hosts_create_of_its_id_is_refused() {
    let (store, tracker, id, host) = one_job().await;
    let (again, created) = tracker.create(Some(&new_job(id, host))).await.unwrap();
    assert!(!created);
    assert_eq!(again.host_id, host.to_string());
    let err = tracker
        .create(Some(&new_job(id, HostId::random())))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err:?}");
    assert_eq!(store.stored(id).job.host_id, host.to_string());
}

#[tokio::test(start_paused = true)]
async fn a_listing_pages_through_the_store_filters_by_host_and_shows_progress_not_yet_written() {
    let store = Arc::new(MemJobs::default());
    let tracker = Tracker::new(store.clone(), 0);
    let (mine, theirs) = (HostId::random(), HostId::random());
    let mut my_jobs = Vec::new();
    for i in 0..5 {
        let (id, host) = (JobId::random(), if i % 2 == 0 { mine } else { theirs });
        tracker.create(Some(&new_job(id, host))).await.unwrap();
        if host == mine {
            my_jobs.push(id);
        }
    }
    // Progress kept within the coalescing window is shown by a listing too.
    let kept = my_jobs[0];
    tracker
        .update(&report(kept, mine, JobStatus::Running, None))
        .await
        .unwrap();
    tracker
        .update(&report(kept, mine, JobStatus::Unspecified, Some(40)))
        .await
        .unwrap();
    assert_eq!(store.stored(kept).job.progress, 0, "not written yet");

    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = tracker
            .list(&pb::ListJobsRequest {
                host_id: mine.to_string(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.len() <= 2);
        listed.extend(page);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let mut ids: Vec<String> = listed.iter().map(|j| j.job_id.clone()).collect();
    let mut want: Vec<String> = my_jobs.iter().map(JobId::to_string).collect();
    want.sort();
    assert_eq!(ids, want, "every job of the host, once, in id order");
    ids.dedup();
    assert_eq!(ids.len(), my_jobs.len());
    let shown = listed
        .iter()
        .find(|j| j.job_id == kept.to_string())
        .unwrap();
    assert_eq!(shown.progress, 40);
}
