//! The vocabulary of copy-job errors (`JobError.code`) and of the engine's decisions about an
//! attempt, written once: host-workers put these codes in job records, the job-tracker ends lost
//! hosts' jobs with one of them, and the scheduler reads them to decide what an ended attempt means
//! ([`JobErrorCode::class`]). A code this build does not know is a plain failure — never transient.
use std::fmt;

/// Why a copy job (or an attempt of a flow) ended without a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobErrorCode {
    /// qemu-img failed for a reason not told apart below.
    CopyFailed,
    /// Another process holds the image lock of the destination (or source) file.
    ImageLocked,
    /// The destination's storage domain is out of space.
    NoSpace,
    /// The storage returned an I/O error.
    IoError,
    /// The source volume could not be opened or read.
    SourceUnreadable,
    /// A metadata or directory operation on storage failed.
    StorageError,
    /// The destination's volume lease is held by another job (a lost attempt not yet expired).
    LeaseHeld,
    /// etcd did not answer the worker.
    EtcdUnavailable,
    /// The host held no valid session lease when the job was to start.
    SessionLost,
    /// The destination's generation is not the one the attempt was placed at (it was fenced).
    GenerationMismatch,
    /// The host lost its session lease (or its job) and its copier was killed or may be stopped.
    Fenced,
    /// The host-worker shut down while the job ran.
    HostShutdown,
    /// The copier's watchdog killed it: its worker stopped sending heartbeats.
    WatchdogExpired,
    /// The engine lost the job and fenced its destination (scheduler-side).
    CopyLost,
    /// A job reported success that its destination volume does not show (scheduler-side).
    UnverifiedSuccess,
    /// The chosen host did not take the copy (scheduler-side).
    HostUnreachable,
    /// The destination volume vanished (scheduler-side).
    DestinationMissing,
    /// The destination's generation is at its maximum: no copy can commit it again.
    GenerationExhausted,
    /// A volume's file is not a regular file inside its image directory (a symlink planted in its
    /// place, a device, a directory): nothing is read or written through it.
    UnsafeFile,
    /// A source volume's backing reference is not the sibling volume its metadata names, in its
    /// recorded format (a path outside the image, a `json:` or `nbd:` reference, another image).
    UnsafeBackingFile,
    /// The destination is read by another copy (a read hold): it cannot be written until that
    /// copy ends.
    VolumeInUse,
    /// The image of the source or the destination is being deleted.
    ImageDeleting,
    /// The job stayed PENDING past the job-tracker's expiry (its host may still start it).
    NeverStarted,
}

/// What an ended attempt means to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptClass {
    /// A conflict that passes by itself (a lock or lease still held, a host or etcd not answering):
    /// retried with backoff within a time budget, not counted as an attempt. The destination was
    /// not written by it.
    Transient,
    /// The attempt's writer may outlive its report (its host was lost, fenced or shut down, or it
    /// reported what the destination does not show): the destination decides how it ended, and the
    /// volume is fenced before a retry. Counts as an attempt.
    Lost,
    /// The copy failed for a reason of its own (I/O, space, an unreadable source): counts as an
    /// attempt; the next one waits a growing pause.
    Failure,
}

const ALL: [JobErrorCode; 23] = [
    JobErrorCode::CopyFailed,
    JobErrorCode::ImageLocked,
    JobErrorCode::NoSpace,
    JobErrorCode::IoError,
    JobErrorCode::SourceUnreadable,
    JobErrorCode::StorageError,
    JobErrorCode::LeaseHeld,
    JobErrorCode::EtcdUnavailable,
    JobErrorCode::SessionLost,
    JobErrorCode::GenerationMismatch,
    JobErrorCode::Fenced,
    JobErrorCode::HostShutdown,
    JobErrorCode::WatchdogExpired,
    JobErrorCode::CopyLost,
    JobErrorCode::UnverifiedSuccess,
    JobErrorCode::HostUnreachable,
    JobErrorCode::DestinationMissing,
    JobErrorCode::GenerationExhausted,
    JobErrorCode::UnsafeFile,
    JobErrorCode::UnsafeBackingFile,
    JobErrorCode::VolumeInUse,
    JobErrorCode::ImageDeleting,
    JobErrorCode::NeverStarted,
];

impl JobErrorCode {
    /// The code as it is stored and shown: UPPER_SNAKE_CASE.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::CopyFailed => "COPY_FAILED",
            Self::ImageLocked => "IMAGE_LOCKED",
            Self::NoSpace => "NO_SPACE",
            Self::IoError => "IO_ERROR",
            Self::SourceUnreadable => "SOURCE_UNREADABLE",
            Self::StorageError => "STORAGE_ERROR",
            Self::LeaseHeld => "LEASE_HELD",
            Self::EtcdUnavailable => "ETCD_UNAVAILABLE",
            Self::SessionLost => "SESSION_LOST",
            Self::GenerationMismatch => "GENERATION_MISMATCH",
            Self::Fenced => "FENCED",
            Self::HostShutdown => "HOST_SHUTDOWN",
            Self::WatchdogExpired => "WATCHDOG_EXPIRED",
            Self::CopyLost => "COPY_LOST",
            Self::UnverifiedSuccess => "UNVERIFIED_SUCCESS",
            Self::HostUnreachable => "HOST_UNREACHABLE",
            Self::DestinationMissing => "DESTINATION_MISSING",
            Self::GenerationExhausted => "GENERATION_EXHAUSTED",
            Self::UnsafeFile => "UNSAFE_FILE",
            Self::UnsafeBackingFile => "UNSAFE_BACKING_FILE",
            Self::VolumeInUse => "VOLUME_IN_USE",
            Self::ImageDeleting => "IMAGE_DELETING",
            Self::NeverStarted => "NEVER_STARTED",
        }
    }

    /// The code a stored string names, if this build knows it.
    pub fn parse(code: &str) -> Option<Self> {
        ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// What an attempt that ended with this code means to the engine (see [`AttemptClass`]).
    pub const fn class(self) -> AttemptClass {
        match self {
            Self::ImageLocked
            | Self::LeaseHeld
            | Self::VolumeInUse
            | Self::EtcdUnavailable
            | Self::SessionLost
            | Self::HostUnreachable => AttemptClass::Transient,
            Self::Fenced
            | Self::HostShutdown
            | Self::WatchdogExpired
            | Self::CopyLost
            | Self::UnverifiedSuccess
            | Self::NeverStarted => AttemptClass::Lost,
            Self::CopyFailed
            | Self::NoSpace
            | Self::IoError
            | Self::SourceUnreadable
            | Self::StorageError
            | Self::GenerationMismatch
            | Self::DestinationMissing
            | Self::GenerationExhausted
            | Self::UnsafeFile
            | Self::UnsafeBackingFile
            | Self::ImageDeleting => AttemptClass::Failure,
        }
    }
}

/// The class of a stored code; an unknown code is a [`AttemptClass::Failure`].
pub fn class_of(code: &str) -> AttemptClass {
    JobErrorCode::parse(code).map_or(AttemptClass::Failure, JobErrorCode::class)
}

impl fmt::Display for JobErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_is_upper_snake_case() {
        for code in ALL {
            assert_eq!(JobErrorCode::parse(code.as_str()), Some(code));
            assert!(code
                .as_str()
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_'));
        }
        assert_eq!(JobErrorCode::parse("copy_failed"), None);
    }

    #[test]
    fn attempts_are_classed_as_the_engine_treats_them() {
        let table = [
            ("IMAGE_LOCKED", AttemptClass::Transient),
            ("LEASE_HELD", AttemptClass::Transient),
            ("HOST_UNREACHABLE", AttemptClass::Transient),
            ("FENCED", AttemptClass::Lost),
            ("HOST_SHUTDOWN", AttemptClass::Lost),
            ("UNVERIFIED_SUCCESS", AttemptClass::Lost),
            ("NO_SPACE", AttemptClass::Failure),
            ("IO_ERROR", AttemptClass::Failure),
            ("SOURCE_UNREADABLE", AttemptClass::Failure),
            ("COPY_FAILED", AttemptClass::Failure),
            // Unknown codes never make a retry free.
            ("SOMETHING_NEW", AttemptClass::Failure),
            ("", AttemptClass::Failure),
        ];
        for (code, class) in table {
            assert_eq!(class_of(code), class, "{code}");
        }
    }
}
