//! The SPM election. While its session lease is valid the host campaigns for `spm` on that lease; once
//! it leads, it is the Storage Pool Manager, the one host that makes structural changes (creates
//! volumes, deletes images). VDSM's SPM does the same with sanlock's cluster lock.
//!
//! Invariant: the role counts only on the lease it was won with, and only while the session holds that
//! lease. The moment the session is declared lost — before etcd can expire the lease and let another
//! host win — [`Spm::current`] stops answering, without waiting for the election task to notice. A
//! structural verb also confirms the leader key in etcd ([`require`]), so a host woken from a long pause
//! cannot act on a role that passed to another host meanwhile.
use std::{sync::Arc, time::Duration};

use datapath_api::ids::HostId;
use datapath_coord::{
    election::{Leader, Leadership, Role},
    session::SessionState,
};
use tokio::{sync::watch, time::sleep};
use tracing::{debug, info, warn};

use crate::{error::Error, worker::Worker};

/// How often the SPM checks that its leader key still stands (someone may delete it by hand).
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Pause before campaigning again after a failed campaign call.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How long a resignation at shutdown may take; the session's revocation follows anyway.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(2);

/// This host's standing in the SPM election, shared by the election task (which sets it) and the
/// request handlers (which read it).
#[derive(Debug)]
pub struct Spm {
    leading: watch::Sender<Option<Leadership>>,
}

impl Default for Spm {
    fn default() -> Self {
        Self {
            leading: watch::channel(None).0,
        }
    }
}

impl Spm {
    /// Follows the leadership this host won (`None` while it does not lead), for components that act
    /// on the role.
    pub fn subscribe(&self) -> watch::Receiver<Option<Leadership>> {
        self.leading.subscribe()
    }

    /// The leadership this host may act on under `session`: only one won on the session's current,
    /// valid lease.
    pub fn current(&self, session: SessionState) -> Option<Leadership> {
        self.leading
            .borrow()
            .as_ref()
            .filter(|l| counts(session, l.lease()))
            .cloned()
    }

    /// Whether this host is the SPM under `session` (as far as it knows without asking etcd).
    pub fn is_spm(&self, session: SessionState) -> bool {
        self.current(session).is_some()
    }

    /// Records a won leadership; logs the change.
    fn take(&self, leadership: Leadership) {
        let lease_id = leadership.lease();
        self.leading.send_replace(Some(leadership));
        info!(lease_id, "this host is now the SPM");
    }

    /// Forgets the leadership, if any; logs the change. Returns what it held.
    fn drop_role(&self, why: &str) -> Option<Leadership> {
        let held = self.leading.send_replace(None);
        if let Some(l) = &held {
            warn!(
                lease_id = l.lease(),
                "this host is no longer the SPM: {why}"
            );
        }
        held
    }
}

/// Whether a role won on `lease` counts under `session`.
fn counts(session: SessionState, lease: i64) -> bool {
    session == SessionState::Valid { lease_id: lease }
}

/// Campaigns for the SPM role on every valid session lease for as long as the host runs; steps down
/// the moment the session is lost or replaced and campaigns again on the next lease.
pub async fn campaign(worker: Arc<Worker>) {
    let mut session = worker.session.clone();
    loop {
        let state = *session.borrow_and_update();
        let changed = match state {
            SessionState::Valid { lease_id } => tokio::select! {
                changed = session.changed() => changed,
                never = lead(&worker, lease_id) => match never {},
            },
            SessionState::Lost => session.changed().await,
        };
        worker
            .spm
            .drop_role("the session lease was lost or replaced");
        if changed.is_err() {
            return;
        }
    }
}

/// Wins the role on `lease_id`, holds it while the leader key stands, and campaigns again when it
/// goes. Never returns: the caller drops it when the lease is no longer the session's.
async fn lead(worker: &Worker, lease_id: i64) -> std::convert::Infallible {
    loop {
        let leadership = win(worker, lease_id).await;
        worker.spm.take(leadership.clone());
        hold(worker, &leadership).await;
        worker
            .spm
            .drop_role("its leader key is gone from etcd; campaigning again");
    }
}

/// Campaigns until this host leads on `lease_id` (blocking while another host leads).
async fn win(worker: &Worker, lease_id: i64) -> Leadership {
    let value = worker.host_id.to_string();
    loop {
        debug!(lease_id, "campaigning for the SPM role");
        match worker.coord.campaign(Role::Spm, &value, lease_id).await {
            Ok(leadership) => return leadership,
            Err(e) => {
                warn!(lease_id, error = %e, "SPM campaign failed; retrying");
                sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Returns when `leadership` no longer stands in etcd. An unreachable etcd is not a loss: the session
/// decides that, and the caller drops this future when it does.
async fn hold(worker: &Worker, leadership: &Leadership) {
    loop {
        sleep(CHECK_EVERY).await;
        match worker.coord.still_leads(leadership).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => debug!(error = %e, "could not check the SPM leader key"),
        }
    }
}

/// Gives the role up at shutdown, so another host takes it now instead of after the TTL.
pub async fn resign(worker: &Worker) {
    let Some(leadership) = worker.spm.drop_role("the host is shutting down") else {
        return;
    };
    match tokio::time::timeout(RESIGN_TIMEOUT, worker.coord.resign(&leadership)).await {
        Ok(Ok(())) => info!("resigned the SPM role"),
        other => warn!(
            ?other,
            "could not resign the SPM role; it ends with the session"
        ),
    }
}

/// Refuses a structural verb unless this host is the SPM. It is when it leads on its current session
/// lease and its leader key still stands in etcd — or when etcd already names it the leader on that
/// lease and the election task has yet to record the win.
pub async fn require(worker: &Worker) -> Result<(), Error> {
    let session = *worker.session.borrow();
    if let Some(leadership) = worker.spm.current(session) {
        if worker.coord.still_leads(&leadership).await? {
            return Ok(());
        }
    }
    let leader = worker.coord.leader(Role::Spm).await?;
    if leader
        .as_ref()
        .is_some_and(|l| is_self(l, worker.host_id, session))
    {
        return Ok(());
    }
    Err(refusal(worker, leader).await)
}

/// Whether `leader` is this host on its current session lease.
fn is_self(leader: &Leader, host_id: HostId, session: SessionState) -> bool {
    leader.value == host_id.to_string() && counts(session, leader.lease)
}

/// Why this host may not make structural changes: who is the SPM instead, and where it listens.
async fn refusal(worker: &Worker, leader: Option<Leader>) -> Error {
    let Some(leader) = leader else {
        return Error::NoSpm("no host is elected SPM yet".into());
    };
    if leader.value == worker.host_id.to_string() {
        return Error::NoSpm(
            "the SPM role is passing from an old session of this host; retry shortly".into(),
        );
    }
    let Ok(host_id) = HostId::parse("spm", &leader.value) else {
        return Error::NoSpm(format!(
            "the SPM campaigned as {:?}, which is not a host id",
            leader.value
        ));
    };
    match worker.coord.get_host(host_id).await {
        Ok(Some(host)) if !host.address.is_empty() => Error::NotSpm {
            host_id,
            address: host.address,
        },
        Ok(_) => Error::NoSpm(format!(
            "the SPM is host {host_id}, which has not registered its address yet; retry shortly"
        )),
        Err(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_counts_only_on_the_lease_it_was_won_with() {
        assert!(counts(SessionState::Valid { lease_id: 7 }, 7));
        assert!(!counts(SessionState::Valid { lease_id: 8 }, 7), "replaced");
        assert!(!counts(SessionState::Lost, 7), "lost");
    }

    #[test]
    fn etcd_names_this_host_only_with_its_current_lease() {
        let me = HostId::random();
        let leader = |value: String, lease| Leader { value, lease };
        let valid = SessionState::Valid { lease_id: 3 };
        assert!(is_self(&leader(me.to_string(), 3), me, valid));
        assert!(!is_self(&leader(me.to_string(), 2), me, valid), "old lease");
        assert!(!is_self(&leader(me.to_string(), 3), me, SessionState::Lost));
        let other = HostId::random().to_string();
        assert!(!is_self(&leader(other, 3), me, valid), "another host");
    }

    #[test]
    fn a_host_without_a_won_lease_is_not_spm() {
        let spm = Spm::default();
        assert!(!spm.is_spm(SessionState::Valid { lease_id: 1 }));
        assert!(spm.subscribe().borrow().is_none());
        assert!(spm.drop_role("test").is_none());
    }
}
