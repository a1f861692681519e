//! The host's shared state: storage, etcd, its session, its SPM role, its jobs and their slots.
use std::sync::Arc;

use datapath_api::{ids::HostId, pb::VolumeLease, volume::VolumeKey};
use datapath_coord::{session::SessionState, volume_view::VolumeView, Coord};
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
    /// Every volume's generation record and lease, watched: what volume reads consult first.
    pub volumes: VolumeView,
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
    /// Benchmarks only: copies are simulated at this many bytes per second (`--simulated-copy-rate`;
    /// 0: real copies).
    pub simulated_copy_rate: u64,
    /// The largest volume CreateVolume makes.
    pub max_volume_capacity: u64,
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

    /// The lease of `volume`. The volume view answers "none"; a lease it shows, or a volume it does
    /// not know, is read from etcd — so nothing is ever refused or reported held on a lagging view
    /// (PROTOCOLS.md, "Reads from the volume view").
    pub async fn volume_lease(&self, volume: &VolumeKey) -> Result<Option<VolumeLease>, Error> {
        if self.view_in_step() && self.volumes.lease_free(volume) {
            return Ok(None);
        }
        Ok(self.coord.volume_lease(volume).await?)
    }

    /// A read hold on `volume` (a copy reading it), if any. The view answers "none"; a hold it shows
    /// is confirmed against etcd.
    pub async fn volume_hold(&self, volume: &VolumeKey) -> Result<Option<VolumeLease>, Error> {
        if self.view_in_step() && self.volumes.hold_free(volume) {
            return Ok(None);
        }
        Ok(self.coord.volume_holds(volume).await?.into_iter().next())
    }

    /// The generation etcd records for `volume` when it is above `on_file`, the metadata file's: a
    /// fence that raised etcd and died before the file. The view answers "not above"; a record it
    /// shows above the file is confirmed against etcd (commit and fence write etcd first, so a view
    /// behind etcd only shows what the file already does).
    pub async fn generation_above(
        &self,
        volume: &VolumeKey,
        on_file: u64,
    ) -> Result<Option<u64>, Error> {
        if self.view_in_step() && self.volumes.generation_not_above(volume, on_file) {
            return Ok(None);
        }
        let recorded = self.coord.generation(volume).await?;
        Ok(recorded.map(|(g, _)| g).filter(|g| *g > on_file))
    }

    /// The view is trusted only while this host's session stands: a host cut off from etcd loses
    /// its session within a TTL, and its reads then go to etcd (and fail) rather than to a view that
    /// may have stopped hearing changes.
    fn view_in_step(&self) -> bool {
        self.lease_id().is_ok()
    }
}
