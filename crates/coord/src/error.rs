//! Errors of the coordination layer.
use datapath_api::pb::VolumeLease;

/// A coordination failure.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// etcd could not be reached or refused the request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A value under our prefix is not the message its key promises.
    #[error("corrupt record at {key}: {source}")]
    Decode {
        /// The key holding the bad value.
        key: String,
        /// What prost said.
        source: prost::DecodeError,
    },
    /// A value under our prefix that is not text of the form its key promises.
    #[error("corrupt record at {key}: {why}")]
    BadRecord {
        /// The key holding the bad value.
        key: String,
        /// What the value should have been.
        why: String,
    },
    /// A generation would not rise: a bug of the caller, refused before it reaches etcd.
    #[error("generation {to} is not above {from}")]
    GenerationNotRaised {
        /// The recorded generation.
        from: u64,
        /// The generation asked for.
        to: u64,
    },
    /// Another job holds the volume lease.
    #[error("volume lease held by host {} for job {}", .0.host_id, .0.job_id)]
    LeaseHeld(VolumeLease),
    /// A copy reads the volume (a read hold): it cannot be written now.
    #[error("volume is read by job {} on host {}", .0.job_id, .0.host_id)]
    VolumeHeld(VolumeLease),
    /// The volume's image is being deleted by the SPM (its host id).
    #[error("the image is being deleted by host {0}")]
    ImageDeleting(String),
    /// A watch asked for history that etcd has compacted away.
    #[error("revision {requested} is compacted (oldest kept is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The compaction revision.
        compacted: i64,
    },
    /// etcd cancelled a watch (its reason).
    #[error("etcd cancelled the watch: {0}")]
    WatchCanceled(String),
    /// A disk's lock kept changing under a change of it, past the bounded retry.
    #[error("the lock of disk {0} kept changing; try again")]
    LockBusy(String),
    /// The session lease has been lost; the caller must not act as its holder.
    #[error("session lease lost")]
    SessionLost,
}

/// Result of a coordination call.
pub type Result<T, E = CoordError> = std::result::Result<T, E>;
