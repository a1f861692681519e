//! The host-worker's health: SERVING exactly while it holds a valid session lease *and* has registered
//! `hosts/<host_id>` under that lease, NOT_SERVING otherwise — a host without a lease holds nothing and
//! may copy nothing, and one not registered under its lease is invisible to the scheduler.
//!
//! One task owns the status and computes it from two facts only (the session state and the lease of
//! the last registration), so a registration landing just as the session is lost can never leave the
//! host SERVING. Neither fact involves a peer: the job-tracker, the scheduler and other hosts may all
//! be down and a host with its lease stays SERVING.
use datapath_coord::session::SessionState;
use datapath_server::health::ServerHealth;
use tokio::sync::watch;
use tracing::info;

/// The status the two facts give: SERVING iff registered under the session's valid lease.
pub fn serving(session: SessionState, registered_under: Option<i64>) -> bool {
    matches!(session, SessionState::Valid { lease_id } if registered_under == Some(lease_id))
}

/// Follows the session and the registrations until either sender is gone, keeping `health` equal to
/// [`serving`].
pub async fn follow(
    health: ServerHealth,
    mut session: watch::Receiver<SessionState>,
    mut registered: watch::Receiver<Option<i64>>,
) {
    loop {
        let state = *session.borrow_and_update();
        let lease = *registered.borrow_and_update();
        let now = serving(state, lease);
        if health.set(now).await {
            info!(serving = now, ?state, "health changed");
        }
        tokio::select! {
            changed = session.changed() => if changed.is_err() { return },
            changed = registered.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_needs_a_registration_under_the_current_lease() {
        let valid = SessionState::Valid { lease_id: 7 };
        assert!(serving(valid, Some(7)));
        assert!(!serving(valid, None), "not yet registered");
        assert!(!serving(valid, Some(6)), "registered under the lost lease");
        assert!(!serving(SessionState::Lost, Some(7)), "lease lost");
        assert!(!serving(SessionState::Lost, None));
    }
}
