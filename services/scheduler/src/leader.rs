//! Only one scheduler acts at a time: replicas campaign for `scheduler` on their own session lease;
//! the winner runs the flows until its session is lost (then it stops at once, before etcd expires the
//! lease and a standby takes over). Every replica serves the API: it only reads and creates records.
use std::sync::Arc;

use datapath_coord::{
    candidacy::{self, Candidate, StepDown},
    election::{Leadership, Role},
    session::SessionState,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{engine::Engine, flow::executor};

/// A scheduler replica as a candidate: leading, it runs the flows (until its step-down drops them).
struct SchedulerCandidate {
    engine: Arc<Engine>,
    address: String,
}

impl Candidate for SchedulerCandidate {
    fn role(&self) -> Role {
        Role::Scheduler
    }

    fn value(&self) -> String {
        self.address.clone()
    }

    fn lead(&self, leadership: Leadership) -> impl std::future::Future<Output = ()> + Send {
        info!(
            lease_id = leadership.lease(),
            "this scheduler is now the acting one"
        );
        crate::metrics::set_leader(true);
        executor::run(self.engine.clone(), leadership)
    }

    fn stepped_down(&self, _: &Leadership, why: StepDown) {
        crate::metrics::set_leader(false);
        warn!("this scheduler no longer acts: {}", why.reason());
    }
}

/// Campaigns and, while leading, runs the flows (`datapath_coord::candidacy`, the loop the SPM
/// election runs too). Runs until dropped.
pub async fn lead(engine: Arc<Engine>, state: watch::Receiver<SessionState>, address: String) {
    let coord = engine.coord.clone();
    candidacy::campaign_forever(coord, SchedulerCandidate { engine, address }, state).await;
}
