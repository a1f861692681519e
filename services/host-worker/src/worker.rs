//! The host's shared state: storage, etcd, its session, its SPM role, its jobs and their slots.
use std::sync::Arc;

use datapath_api::ids::HostId;
use datapath_coord::{session::SessionState, Coord};
use tokio::sync::{watch, Semaphore};

use crate::{error::Error, jobs::HostJobs, reporter::Reporter, spm::Spm, storage::Storage};

/// Everything a request handler or a job needs.
pub struct Worker {
    /// This host.
    pub host_id: HostId,
    /// The shared storage root.
    pub storage: Storage,
    /// etcd.
    pub coord: Coord,
    /// The session lease state.
    pub session: watch::Receiver<SessionState>,
    /// This host's standing in the SPM election (only the SPM makes structural changes).
    pub spm: Spm,
    /// The job-tracker.
    pub reporter: Reporter,
    /// This host's jobs.
    pub jobs: HostJobs,
    /// Job slots: at most this many copies run at once; the rest wait PENDING.
    pub slots: Arc<Semaphore>,
    /// The configured number of slots.
    pub job_slots: u32,
    /// Bytes per second one copy may move; 0 is unlimited.
    pub copy_bandwidth_limit: u64,
    /// The session lease's TTL, which the copier watchdog's deadline is derived from.
    pub session_ttl: std::time::Duration,
}

impl Worker {
    /// The session lease, or `SessionLost`.
    pub fn lease_id(&self) -> Result<i64, Error> {
        match *self.session.borrow() {
            SessionState::Valid { lease_id } => Ok(lease_id),
            SessionState::Lost => Err(Error::SessionLost),
        }
    }
}
