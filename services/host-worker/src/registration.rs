//! Follows the session lease: while it is valid the host is registered at `hosts/<host_id>` (with its
//! domains and load); the moment it is lost, every copy is killed (self-fencing). Each registration
//! publishes the lease it was written under, from which [`crate::health`] derives SERVING. Fencing and
//! registration are separate tasks so that a registration stuck on a dead etcd cannot delay fencing.
use std::{sync::Arc, time::Duration};

use datapath_api::{ids::HostId, pb};
use datapath_coord::{
    hosts::{HostRegistry, RegistrationChange, RegistrationChanges},
    session::SessionState,
};
use futures::StreamExt;
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};
use tracing::{error, info, warn};

use crate::{jobs::StopReason, worker::Worker};

/// Kills every copy the moment the session is lost. It does no I/O of its own, so a stalled etcd
/// call elsewhere can never delay it.
pub async fn fence_on_loss(worker: Arc<Worker>) {
    let mut session = worker.session.clone();
    loop {
        if *session.borrow_and_update() == SessionState::Lost {
            let stopped = worker.jobs.stop_all(StopReason::Fenced);
            if stopped > 0 {
                error!(
                    stopped,
                    "session lease lost: self-fencing, killed every running copy"
                );
            }
        }
        if session.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps `hosts/<host_id>` current while the session is valid: written at each new lease, when the
/// jobs change (the changes of 100 ms folded into one write), when the storage domains it reaches
/// change (looked at every second, so a domain created through another host becomes usable here
/// within a second), and again at once when its watch sees it deleted or changed by anyone else
/// (by hand: the key otherwise lives as long as the session lease). Every successful write
/// publishes its lease on `registered`; the first one starts the reconciliation of the host's jobs.
pub async fn register(
    worker: Arc<Worker>,
    address: String,
    registered: watch::Sender<Option<i64>>,
) {
    let registrant = Registrant {
        hosts: &*worker.hosts,
        host_id: worker.host_id,
        session: worker.session.clone(),
        changed: &worker.jobs.changed,
    };
    let describe = |lease_id, at| record(&worker, &address, lease_id, at);
    let reconcile = || drop(tokio::spawn(crate::reconcile::reconcile(worker.clone())));
    keep_registered(registrant, describe, &registered, reconcile).await;
}

/// What keeping one host's registration needs.
pub(crate) struct Registrant<'a> {
    pub hosts: &'a dyn HostRegistry,
    pub host_id: HostId,
    pub session: watch::Receiver<SessionState>,
    /// Notified when the host's jobs change.
    pub changed: &'a Notify,
}

/// [`register`]'s loop: `describe` makes the record for a lease and a registration time;
/// `first_written` runs once, after the first write.
pub(crate) async fn keep_registered(
    r: Registrant<'_>,
    describe: impl Fn(i64, Option<prost_types::Timestamp>) -> pb::Host,
    registered: &watch::Sender<Option<i64>>,
    first_written: impl FnOnce(),
) {
    let mut first_written = Some(first_written);
    let mut session = r.session;
    loop {
        let state = *session.borrow_and_update();
        if let SessionState::Valid { lease_id } = state {
            let registered_at = Some(datapath_api::time::now());
            info!(lease_id, "registering the host");
            let mut kept = Kept::default();
            loop {
                let changed = r.changed.notified();
                let host = describe(lease_id, registered_at);
                let due = match &kept.written {
                    None => true,
                    Some((last, _)) if *last != host || kept.lost => true,
                    Some((last, _)) if kept.read_at.is_some_and(|at| Instant::now() >= at) => {
                        kept.read_at = None;
                        registration_lost(r.hosts, r.host_id, last).await
                    }
                    Some(_) => false,
                };
                if due {
                    match r.hosts.register_host(r.host_id, &host, lease_id).await {
                        Ok(revision) if *session.borrow() == state => {
                            kept.written(host, revision);
                            registered.send_if_modified(|r| r.replace(lease_id) != Some(lease_id));
                            if let Some(first) = first_written.take() {
                                first();
                            }
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "could not register the host; retrying"),
                    }
                }
                kept.watch(r.hosts, r.host_id).await;
                tokio::select! {
                    _ = session.changed() => break,
                    _ = changed => {
                        // Let the changes of a moment fold into one write (a job queued, started
                        // and sized; a short copy's start and end), unless the session goes.
                        tokio::select! {
                            _ = session.changed() => break,
                            _ = tokio::time::sleep(COALESCE) => {}
                        }
                    }
                    change = next_change(&mut kept.changes) => kept.judge(change),
                    _ = tokio::time::sleep(LOOK_AGAIN) => {}
                }
            }
        } else if session.changed().await.is_err() {
            return;
        }
    }
}

/// How long a change of the host's jobs waits for the next ones before the registration is
/// written: one write for a job's queueing, start and size instead of three. The scheduler counts
/// its own placements meanwhile, so a new copy is never hidden; a freed slot shows this much later.
const COALESCE: Duration = Duration::from_millis(100);
/// How often the host looks at its storage domains.
const LOOK_AGAIN: Duration = Duration::from_secs(1);
/// How often the record is read back while its watch cannot be kept (etcd away): 500 idle hosts
/// reading every 5 s took 5 % of a core of etcd (BENCHMARKS.md). With the watch, an idle host
/// neither reads nor writes.
const REFRESH: Duration = Duration::from_secs(30);

/// One lease's registration as kept: what was written, and the watch that says when it is gone.
#[derive(Default)]
struct Kept {
    /// The record last written and its revision.
    written: Option<(pb::Host, i64)>,
    /// The watch of the key, from `watch_after`.
    changes: Option<RegistrationChanges>,
    /// The revision after which the next watch starts: the last write's, or a compaction's.
    watch_after: i64,
    /// The record is known to be gone or changed by someone else: write it again.
    lost: bool,
    /// When the record is to be read back: after a compaction (at once), or while no watch can be
    /// kept (every [`REFRESH`]).
    read_at: Option<Instant>,
}

impl Kept {
    fn written(&mut self, host: pb::Host, revision: i64) {
        self.written = Some((host, revision));
        self.watch_after = self.watch_after.max(revision);
        self.lost = false;
        self.read_at = None;
    }

    /// Starts the watch if none runs and no read is pending; a watch that cannot start is
    /// replaced by reads every [`REFRESH`] until one can.
    async fn watch(&mut self, hosts: &dyn HostRegistry, host_id: HostId) {
        if self.changes.is_some() || self.read_at.is_some() || self.written.is_none() {
            return;
        }
        match hosts.watch_registration(host_id, self.watch_after).await {
            Ok(changes) => self.changes = Some(changes),
            Err(e) => {
                warn!(error = %e, "cannot watch the host's registration; reading it back instead");
                self.read_at = Some(Instant::now() + REFRESH);
            }
        }
    }

    /// What a change seen by the watch (`None`: the watch ended) means for the record.
    fn judge(&mut self, change: Option<datapath_coord::Result<RegistrationChange>>) {
        let Some((last, revision)) = &self.written else {
            return;
        };
        match change {
            // Anything up to the last write was overwritten by it.
            Some(Ok(
                RegistrationChange::Put { revision: at, .. }
                | RegistrationChange::Deleted { revision: at },
            )) if at <= *revision => {}
            Some(Ok(RegistrationChange::Put { host: Some(h), .. })) if h == *last => {}
            Some(Ok(RegistrationChange::Put { .. } | RegistrationChange::Deleted { .. })) => {
                warn!("the host's registration was deleted or changed in etcd; writing it again");
                self.lost = true;
            }
            Some(Ok(RegistrationChange::Compacted { revision: at })) => {
                self.changes = None;
                self.watch_after = self.watch_after.max(at);
                self.read_at = Some(Instant::now());
            }
            Some(Err(_)) | None => {
                self.changes = None;
                self.read_at = Some(Instant::now() + REFRESH);
            }
        }
    }
}

/// The watch's next change; never, without a watch.
async fn next_change(
    changes: &mut Option<RegistrationChanges>,
) -> Option<datapath_coord::Result<RegistrationChange>> {
    match changes {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Whether the registration in etcd is gone or differs from `last`, the one written (an etcd
/// error says neither).
async fn registration_lost(hosts: &dyn HostRegistry, host_id: HostId, last: &pb::Host) -> bool {
    matches!(hosts.get_host(host_id).await, Ok(h) if h.as_ref() != Some(last))
}

fn record(
    worker: &Worker,
    address: &str,
    lease_id: i64,
    registered_at: Option<prost_types::Timestamp>,
) -> pb::Host {
    let (running_jobs, bytes_in_flight) = worker.jobs.load();
    let storage_domain_ids = worker
        .storage
        .domains()
        .map(|ds| ds.into_iter().map(|d| d.storage_domain_id).collect())
        .unwrap_or_default();
    pb::Host {
        host_id: worker.host_id.to_string(),
        address: address.to_string(),
        storage_domain_ids,
        job_slots: worker.job_slots,
        running_jobs,
        bytes_in_flight,
        session_lease_id: lease_id,
        registered_at,
    }
}

#[cfg(test)]
mod tests;
