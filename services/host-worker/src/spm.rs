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
    candidacy::{self, Candidate, StepDown},
    election::{Elections as _, Leader, Leadership, Role},
    session::SessionState,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{error::Error, worker::Worker};

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

/// The host as a candidate for the SPM role: leading, it records the win in [`Spm`] (which the
/// structural verbs read); stepping down, it forgets it.
struct SpmCandidate(Arc<Worker>);

impl Candidate for SpmCandidate {
    fn role(&self) -> Role {
        Role::Spm
    }

    fn value(&self) -> String {
        self.0.host_id.to_string()
    }

    fn lead(&self, leadership: Leadership) -> impl std::future::Future<Output = ()> + Send {
        self.0.spm.take(leadership);
        std::future::pending()
    }

    fn stepped_down(&self, _: &Leadership, why: StepDown) {
        self.0.spm.drop_role(why.reason());
    }
}

/// Campaigns for the SPM role on every valid session lease for as long as the host runs; steps down
/// the moment the session is lost or replaced, or the leader key goes from etcd, and campaigns
/// again (`datapath_coord::candidacy`, the loop the scheduler's election runs too).
pub async fn campaign(worker: Arc<Worker>) {
    let session = worker.session.clone();
    candidacy::campaign_forever(worker.coord.clone(), SpmCandidate(worker), session).await;
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
    match worker.hosts.get_host(host_id).await {
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
