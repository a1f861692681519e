//! Only one scheduler acts at a time: replicas campaign for `scheduler` on their own session lease;
//! the winner runs the flows until its session is lost (then it stops at once, before etcd expires the
//! lease and a standby takes over). Every replica serves the API: it only reads and creates records.
use std::{sync::Arc, time::Duration};

use datapath_coord::{election::Role, session::SessionState};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{engine::Engine, flow::executor};

/// Campaigns and, while leading, runs the flows. Runs until dropped.
pub async fn lead(engine: Arc<Engine>, mut state: watch::Receiver<SessionState>, address: String) {
    loop {
        let SessionState::Valid { lease_id } = *state.borrow_and_update() else {
            if state.changed().await.is_err() {
                return;
            }
            continue;
        };
        let leadership = tokio::select! {
            r = engine.coord.campaign(Role::Scheduler, &address, lease_id) => r,
            _ = state.changed() => continue,
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "scheduler campaign failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        info!(lease_id, "this scheduler is now the acting one");
        crate::metrics::set_leader(true);
        tokio::select! {
            _ = executor::run(engine.clone(), leadership.clone()) => {}
            _ = lost(&mut state, lease_id) => {}
        }
        crate::metrics::set_leader(false);
        warn!("this scheduler no longer acts");
        let _ = engine.coord.resign(&leadership).await;
    }
}

async fn lost(state: &mut watch::Receiver<SessionState>, lease_id: i64) {
    loop {
        if *state.borrow_and_update() != (SessionState::Valid { lease_id }) {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}
