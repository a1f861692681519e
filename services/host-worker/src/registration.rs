//! Follows the session lease: while it is valid the host is registered at `hosts/<host_id>` (with its
//! domains and load); the moment it is lost, every copy is killed (self-fencing). Each registration
//! publishes the lease it was written under, from which [`crate::health`] derives SERVING. Fencing and
//! registration are separate tasks so that a registration stuck on a dead etcd cannot delay fencing.
use std::{sync::Arc, time::Duration};

use datapath_api::{ids::HostId, pb};
use datapath_coord::{hosts::HostRegistry, session::SessionState};
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
/// within a second), and again whenever a read every 30 s
/// finds it gone or changed (deleted or edited by hand: the key otherwise lives as long as the
/// session lease). Every successful write publishes its lease on `registered`; the first one starts
/// the reconciliation of the host's jobs.
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
            let mut written: Option<(pb::Host, Instant)> = None;
            loop {
                let changed = r.changed.notified();
                let host = describe(lease_id, registered_at);
                let mut checked = false;
                let due = match &written {
                    None => true,
                    Some((last, _)) if *last != host => true,
                    // Unchanged: the key lives as long as the session lease, so it is only read
                    // back (a read, not a write: 500 idle hosts must not keep etcd writing) and
                    // written again if it is gone or differs (deleted or edited by hand).
                    Some((last, at)) if at.elapsed() >= REFRESH => {
                        checked = true;
                        registration_lost(r.hosts, r.host_id, last).await
                    }
                    Some(_) => false,
                };
                if let (true, Some((_, at))) = (checked, written.as_mut()) {
                    *at = Instant::now();
                }
                if due {
                    match r.hosts.register_host(r.host_id, &host, lease_id).await {
                        Ok(()) if *session.borrow() == state => {
                            written = Some((host, Instant::now()));
                            registered.send_if_modified(|r| r.replace(lease_id) != Some(lease_id));
                            if let Some(first) = first_written.take() {
                                first();
                            }
                        }
                        Ok(()) => {}
                        Err(e) => warn!(error = %e, "could not register the host; retrying"),
                    }
                }
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
/// Whether the registration in etcd is gone or differs from `last`, the one written (an etcd
/// error says neither).
async fn registration_lost(hosts: &dyn HostRegistry, host_id: HostId, last: &pb::Host) -> bool {
    matches!(hosts.get_host(host_id).await, Ok(h) if h.as_ref() != Some(last))
}

/// How often the record is read back when nothing changed. 30 s: 500 idle hosts reading every 5 s
/// took 5 % of a core of etcd (BENCHMARKS.md).
const REFRESH: Duration = Duration::from_secs(30);

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
