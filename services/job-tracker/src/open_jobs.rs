//! How many unended (PENDING or RUNNING) jobs each host has, so that CreateJob cannot fill etcd: a
//! host's own queue is bounded (`--max-queued-jobs`), but a host that lies about it, or a bug that
//! loops, must be stopped here too. The counts come from the lost-host sweeper's listing of every
//! job (once a second, read anyway) plus the jobs this process admitted since that listing began,
//! so the bound holds to within the creates of one listing's round trip, without a read per create.
use std::{collections::HashMap, sync::Mutex};

use datapath_api::pb;

use crate::transition::is_terminal;

/// The per-host count of unended jobs and its limit.
#[derive(Debug)]
pub struct OpenJobs {
    limit: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Unended jobs per host in the last listing.
    listed: HashMap<String, usize>,
    /// Admitted since the current listing began.
    added: HashMap<String, usize>,
    /// Admitted before the current listing began and after the previous one did (the listing in
    /// flight counts them once its result is in).
    added_before: HashMap<String, usize>,
}

impl OpenJobs {
    /// At most `limit` unended jobs per host (0: no limit).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Mutex::default(),
        }
    }

    /// The limit (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a place for one more job of `host`; false when the host has its limit already.
    pub fn admit(&self, host: &str) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut c = self.counts.lock().expect("open jobs lock");
        let count = |m: &HashMap<String, usize>| m.get(host).copied().unwrap_or(0);
        let open = count(&c.listed) + count(&c.added_before) + count(&c.added);
        if open >= self.limit {
            return false;
        }
        *c.added.entry(host.to_string()).or_default() += 1;
        true
    }

    /// Gives back a place taken by [`OpenJobs::admit`] for a job that was not created.
    pub fn release(&self, host: &str) {
        let mut c = self.counts.lock().expect("open jobs lock");
        if let Some(n) = c.added.get_mut(host) {
            *n = n.saturating_sub(1);
        }
    }

    /// Call just before listing every job: what was admitted until now will be in that listing.
    pub fn listing_begins(&self) {
        let mut c = self.counts.lock().expect("open jobs lock");
        // Merged, not replaced: a listing that failed left its share uncounted.
        for (host, n) in std::mem::take(&mut c.added) {
            *c.added_before.entry(host).or_default() += n;
        }
    }

    /// Replaces the counts with those of `jobs`, listed after [`OpenJobs::listing_begins`].
    pub fn listed(&self, jobs: &[pb::Job]) {
        let mut listed: HashMap<String, usize> = HashMap::new();
        for job in jobs.iter().filter(|j| !is_terminal(j.status())) {
            *listed.entry(job.host_id.clone()).or_default() += 1;
        }
        let mut c = self.counts.lock().expect("open jobs lock");
        c.listed = listed;
        c.added_before.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(host: &str, status: pb::JobStatus) -> pb::Job {
        let mut j = pb::Job {
            host_id: host.into(),
            ..Default::default()
        };
        j.set_status(status);
        j
    }

    #[test]
    fn a_host_gets_its_limit_and_no_more_and_others_are_not_counted() {
        let open = OpenJobs::new(2);
        assert!(open.admit("a") && open.admit("a"));
        assert!(!open.admit("a"));
        assert!(open.admit("b"));
        open.release("a");
        assert!(open.admit("a"));
    }

    #[test]
    fn a_listing_replaces_what_it_saw_and_keeps_what_came_after() {
        let open = OpenJobs::new(3);
        assert!(open.admit("a"));
        open.listing_begins();
        assert!(open.admit("a"));
        // The listing saw the first job and an older one, plus one ended job that does not count.
        open.listed(&[
            job("a", pb::JobStatus::Pending),
            job("a", pb::JobStatus::Running),
            job("a", pb::JobStatus::Succeeded),
        ]);
        // 2 listed + 1 admitted during the listing.
        assert!(!open.admit("a"));
        open.listing_begins();
        open.listed(&[job("a", pb::JobStatus::Failed)]);
        assert!(open.admit("a") && open.admit("a") && open.admit("a"));
        assert!(!open.admit("a"));
    }

    #[test]
    fn a_failed_listing_loses_no_admission() {
        let open = OpenJobs::new(2);
        assert!(open.admit("a"));
        open.listing_begins();
        // That listing failed: no `listed`. The next one begins.
        assert!(open.admit("a"));
        open.listing_begins();
        assert!(!open.admit("a"));
    }

    #[test]
    fn zero_is_no_limit() {
        let open = OpenJobs::new(0);
        assert!((0..10_000).all(|_| open.admit("a")));
    }
}
