//! A watched copy of every job record (`jobs/`), for the job-tracker: its lost-host sweeper, its
//! per-host count of unended jobs and its jobs-by-status gauge read it once a second, where they
//! used to list every job from etcd once a second — a cost that grew with the jobs retained. Kept
//! as every watched copy is (`watched.rs`); a record that does not decode is left out and counted
//! (`quarantine.rs`). Out of step, it answers `None` and its readers skip their round.
//!
//! It also answers the job-tracker's writes with a first guess: the record and its mod revision as
//! last watched, which a compare-and-swap either confirms or refutes (`job_store.rs`).
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use datapath_api::{ids::JobId, pb};
use etcd_client::KeyValue;

use crate::{
    jobs::VersionedJob,
    watched::{self, TaskGuard, Watched},
    Coord,
};

#[derive(Default)]
struct State {
    synced: bool,
    revision: i64,
    jobs: HashMap<JobId, VersionedJob>,
}

/// The watched jobs; cheap to clone. The watch stops when the last clone is dropped.
#[derive(Clone)]
pub struct JobView {
    shared: Arc<Shared>,
    _task: Option<Arc<TaskGuard>>,
}

struct Shared(RwLock<State>);

impl JobView {
    /// The jobs `keep` selects, cloned; `None` while the view is out of step.
    pub fn jobs_where(&self, keep: impl Fn(&pb::Job) -> bool) -> Option<Vec<pb::Job>> {
        let s = self.shared.0.read().expect("job view lock");
        s.synced.then(|| {
            s.jobs
                .values()
                .map(|v| &v.job)
                .filter(|j| keep(j))
                .cloned()
                .collect()
        })
    }

    /// Job `job_id` and its mod revision as last watched (`None` when unknown or out of step): it
    /// may be behind etcd, so it is a guess to compare against, never an answer on its own.
    pub fn job(&self, job_id: JobId) -> Option<VersionedJob> {
        let s = self.shared.0.read().expect("job view lock");
        s.synced.then(|| s.jobs.get(&job_id).cloned()).flatten()
    }

    /// How many jobs carry each label `label` gives (jobs it gives none are not counted); `None`
    /// while the view is out of step.
    pub fn count_by(
        &self,
        label: impl Fn(&pb::Job) -> Option<&'static str>,
    ) -> Option<HashMap<&'static str, usize>> {
        let s = self.shared.0.read().expect("job view lock");
        s.synced.then(|| {
            let mut counts = HashMap::new();
            for l in s.jobs.values().filter_map(|v| label(&v.job)) {
                *counts.entry(l).or_default() += 1;
            }
            counts
        })
    }
}

impl Coord {
    /// Starts the job view: `None` from its readers until its first full read is done.
    pub fn job_view(&self) -> JobView {
        let shared = Arc::new(Shared(RwLock::default()));
        JobView {
            _task: Some(watched::start(self, shared.clone())),
            shared,
        }
    }
}

impl Watched for Shared {
    const NAME: &'static str = "jobs";

    fn prefixes(&self, coord: &Coord) -> Vec<String> {
        vec![coord.keys().jobs()]
    }

    fn reset(&self, coord: &Coord, revision: i64, kvs: &[KeyValue]) {
        let jobs = kvs.iter().filter_map(|kv| entry(coord, kv)).collect();
        *self.0.write().expect("job view lock") = State {
            synced: true,
            revision,
            jobs,
        };
    }

    fn change(&self, coord: &Coord, put: bool, kv: &KeyValue) {
        let Some(job_id) = coord.keys().parse_job(kv.key()) else {
            return;
        };
        let job = put.then(|| entry(coord, kv)).flatten();
        let mut s = self.0.write().expect("job view lock");
        match job {
            Some((_, job)) => s.jobs.insert(job_id, job),
            None => s.jobs.remove(&job_id),
        };
        s.revision = s.revision.max(kv.mod_revision());
    }

    fn out_of_step(&self) {
        self.0.write().expect("job view lock").synced = false;
    }

    fn revision(&self) -> i64 {
        self.0.read().expect("job view lock").revision
    }
}

/// A job key's id and record; `None` for a key that is not a job's or a record that does not decode.
fn entry(coord: &Coord, kv: &KeyValue) -> Option<(JobId, VersionedJob)> {
    let job_id = coord.keys().parse_job(kv.key())?;
    let job = crate::quarantine::listed("jobs", kv)?;
    Some((
        job_id,
        VersionedJob {
            job,
            mod_revision: kv.mod_revision(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: State) -> JobView {
        JobView {
            shared: Arc::new(Shared(RwLock::new(state))),
            _task: None,
        }
    }

    #[test]
    fn out_of_step_the_view_answers_nothing_and_in_step_it_counts() {
        assert!(view(State::default()).jobs_where(|_| true).is_none());
        let job = |host: &str, status: pb::JobStatus| {
            let mut j = pb::Job {
                host_id: host.into(),
                ..Default::default()
            };
            j.set_status(status);
            j
        };
        let ids: Vec<JobId> = (0..3).map(|_| JobId::random()).collect();
        let versioned = |job| VersionedJob {
            job,
            mod_revision: 2,
        };
        let v = view(State {
            synced: true,
            revision: 3,
            jobs: HashMap::from([
                (ids[0], versioned(job("h", pb::JobStatus::Running))),
                (ids[1], versioned(job("h", pb::JobStatus::Succeeded))),
                (ids[2], versioned(job("g", pb::JobStatus::Running))),
            ]),
        });
        assert_eq!(
            v.job(ids[1]).unwrap().job.status(),
            pb::JobStatus::Succeeded
        );
        assert!(v.job(JobId::random()).is_none());
        let running = v
            .jobs_where(|j| j.status() == pb::JobStatus::Running)
            .unwrap();
        assert_eq!(running.len(), 2);
        let counts = v.count_by(|j| (j.host_id == "h").then_some("h")).unwrap();
        assert_eq!(counts.get("h"), Some(&2));
    }
}
