//! One election loop for every role ([`Role::Spm`] among host-workers, [`Role::Scheduler`] among
//! scheduler replicas): campaign on each valid session lease, act while leading, step down the
//! moment the session's lease is lost or replaced, the leader key goes from etcd (deleted by hand,
//! say: seen on a watch of the key, not a poll), or the work ends; then resign and campaign again
//! on the next valid lease. What leading means is the [`Candidate`]'s.
use std::{future::Future, time::Duration};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    election::{Leadership, Role},
    session::SessionState,
    Coord,
};

/// Pause before campaigning again after a failed campaign call.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Pause before watching the leader key again after its watch failed.
const REWATCH_AFTER: Duration = Duration::from_secs(1);
/// How long a resignation may take; the lease's end resigns anyway.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a leadership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDown {
    /// The session's lease was lost or replaced.
    SessionEnded,
    /// The leader key is gone from etcd.
    KeyGone,
    /// The candidate's work returned.
    WorkEnded,
}

impl StepDown {
    /// Words for a log line.
    pub fn reason(self) -> &'static str {
        match self {
            Self::SessionEnded => "the session lease was lost or replaced",
            Self::KeyGone => "its leader key is gone from etcd",
            Self::WorkEnded => "its work ended",
        }
    }
}

/// A role's holder-to-be: what it campaigns with and what it does while it leads.
pub trait Candidate: Send + Sync {
    /// The role campaigned for.
    fn role(&self) -> Role;
    /// The value the leader key carries (a host id, an address).
    fn value(&self) -> String;
    /// Acts while leading; dropped at the step-down. Returning steps down.
    fn lead(&self, leadership: Leadership) -> impl Future<Output = ()> + Send;
    /// Called once a leadership ended, before the resignation.
    fn stepped_down(&self, leadership: &Leadership, why: StepDown);
}

/// Campaigns for `candidate`'s role on every valid lease of `session`, for as long as `session`'s
/// sender lives. Run it in a task of its own; dropping it withdraws (the lease's end resigns).
pub async fn campaign_forever(
    coord: Coord,
    candidate: impl Candidate,
    mut session: watch::Receiver<SessionState>,
) {
    loop {
        let SessionState::Valid { lease_id } = *session.borrow_and_update() else {
            if session.changed().await.is_err() {
                return;
            }
            continue;
        };
        let won = tokio::select! {
            won = win(&coord, &candidate, lease_id) => won,
            changed = session.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        info!(role = ?candidate.role(), lease_id, "leading");
        let why = tokio::select! {
            () = candidate.lead(won.clone()) => StepDown::WorkEnded,
            () = key_gone(&coord, &won) => StepDown::KeyGone,
            () = session_ended(&mut session, lease_id) => StepDown::SessionEnded,
        };
        warn!(role = ?candidate.role(), lease_id, "stepping down: {}", why.reason());
        candidate.stepped_down(&won, why);
        match tokio::time::timeout(RESIGN_TIMEOUT, coord.resign(&won)).await {
            Ok(Ok(())) => debug!(role = ?candidate.role(), "resigned"),
            other => debug!(?other, "could not resign; the role ends with the lease"),
        }
    }
}

/// Campaigns until the candidate leads on `lease_id` (blocking while another leads).
async fn win(coord: &Coord, candidate: &impl Candidate, lease_id: i64) -> Leadership {
    let value = candidate.value();
    loop {
        debug!(role = ?candidate.role(), lease_id, "campaigning");
        match coord.campaign(candidate.role(), &value, lease_id).await {
            Ok(leadership) => return leadership,
            Err(e) => {
                warn!(role = ?candidate.role(), lease_id, error = %e, "campaign failed; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Returns once `leadership`'s key no longer stands in etcd, on a watch of the key. An unreachable
/// etcd is no loss — the session decides that — so a failed watch or read is only tried again.
async fn key_gone(coord: &Coord, leadership: &Leadership) {
    let mut after = leadership.revision();
    loop {
        if let Err(e) = coord.key_changed_after(leadership.key_name(), after).await {
            debug!(error = %e, "the watch of the leader key failed");
            tokio::time::sleep(REWATCH_AFTER).await;
        }
        match coord.leadership_at(leadership).await {
            // Still ours (the watch broke, or the key was rewritten): watch on from this read.
            Ok((true, read_at)) => after = read_at,
            Ok((false, _)) => return,
            Err(e) => {
                debug!(error = %e, "could not read the leader key");
                tokio::time::sleep(REWATCH_AFTER).await;
            }
        }
    }
}

/// Returns once the session is no longer valid on `lease_id`.
async fn session_ended(session: &mut watch::Receiver<SessionState>, lease_id: i64) {
    loop {
        if *session.borrow_and_update() != (SessionState::Valid { lease_id }) {
            return;
        }
        if session.changed().await.is_err() {
            return;
        }
    }
}
