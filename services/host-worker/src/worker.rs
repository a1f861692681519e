//! The host's shared state: storage, etcd, its session, its SPM role, its jobs and their slots.
use std::sync::Arc;

use datapath_api::{ids::HostId, pb::VolumeLease, volume::VolumeKey};
use datapath_coord::{
    session::SessionState,
    volume_reads::{VolumeRecords, Wanted},
    volume_view::VolumeView,
    Coord,
};
use tokio::sync::{watch, Semaphore};

use crate::{error::Error, jobs::HostJobs, reporter::Reporter, spm::Spm, storage::Storage};

/// A question about one volume, for [`Worker::volume_records`].
#[derive(Debug, Clone, Copy)]
pub struct VolumeAsk {
    /// The volume.
    pub volume: VolumeKey,
    /// Its generation in its metadata file (what a recorded generation must be above to count).
    pub on_file: u64,
    /// What is asked.
    pub wanted: Wanted,
}

/// What a reader must know of one volume besides its metadata file; a part not asked is empty.
#[derive(Debug, Clone, Default)]
pub struct VolumeSeen {
    /// A generation recorded in etcd above the file's.
    pub generation_above: Option<u64>,
    /// Its lease.
    pub lease: Option<VolumeLease>,
    /// A read hold on it (a copy reading it), if any.
    pub hold: Option<VolumeLease>,
}

/// Everything a request handler or a job needs.
pub struct Worker {
    /// This host.
    pub host_id: HostId,
    /// The shared storage root.
    pub storage: Storage,
    /// etcd.
    pub coord: Coord,
    /// Host registrations (etcd: the same connection).
    pub hosts: Arc<dyn datapath_coord::hosts::HostRegistry>,
    /// Volume leases and generations (etcd: the same connection), as copies and fences take,
    /// check and raise them.
    pub leases: Arc<dyn datapath_coord::lease_store::VolumeLeases>,
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
    /// What copies a volume's bytes (`--copier`).
    pub copier: crate::native_copier::CopierKind,
    /// Where the native copier's per-job socket directories go (`<state dir>/nbd`).
    pub nbd_dir: std::path::PathBuf,
    /// The native copier's budget for the whole host (`--host-bandwidth-limit`), shared by its
    /// running copies; `None`: unlimited.
    pub host_bandwidth: Option<Arc<datapath_copier::TokenBucket>>,
    /// The native copier's limit of one copy (`--copy-bandwidth-limit`), 0 for none.
    pub per_copy_limit: u64,
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

    /// What etcd holds about each volume, as asked: for each, its generation record when above
    /// `on_file` (its metadata file's: a commit or fence whose file write was lost), its lease, its
    /// first read hold. The volume view answers "none" and "not above"; what it shows, or a volume it
    /// does not know, is read from etcd — so nothing is ever refused or reported held on a lagging
    /// view (PROTOCOLS.md, "Reads from the volume view"); commit and fence write etcd first, so a view
    /// behind etcd only shows what the file already does. Whatever is left to read, for every
    /// volume, is one etcd transaction.
    pub async fn volume_records(&self, asks: &[VolumeAsk]) -> Result<Vec<VolumeSeen>, Error> {
        let in_step = self.view_in_step();
        let to_read: Vec<(VolumeKey, Wanted)> = asks
            .iter()
            .map(|a| {
                let viewed = |free: bool| in_step && free;
                let wanted = Wanted {
                    generation: a.wanted.generation
                        && !viewed(self.volumes.generation_not_above(&a.volume, a.on_file)),
                    lease: a.wanted.lease && !viewed(self.volumes.lease_free(&a.volume)),
                    holds: a.wanted.holds && !viewed(self.volumes.hold_free(&a.volume)),
                };
                (a.volume, wanted)
            })
            .collect();
        let read = if to_read.iter().any(|(_, w)| *w != Wanted::default()) {
            self.coord.volume_records(&to_read).await?
        } else {
            vec![VolumeRecords::default(); asks.len()]
        };
        Ok(asks
            .iter()
            .zip(read)
            .map(|(a, r)| VolumeSeen {
                generation_above: r.generation.map(|(g, _)| g).filter(|g| *g > a.on_file),
                lease: r.lease,
                hold: r.holds.into_iter().next(),
            })
            .collect())
    }

    /// The view is trusted only while this host's session stands: a host cut off from etcd loses
    /// its session within a TTL, and its reads then go to etcd (and fail) rather than to a view that
    /// may have stopped hearing changes.
    fn view_in_step(&self) -> bool {
        self.lease_id().is_ok()
    }
}
