//! The host-worker's errors and their one mapping to gRPC statuses.
use std::path::Path;

use datapath_api::{
    error::{status, status_with_metadata, FieldViolation},
    ids::{HostId, ImageId, JobId, StorageDomainId},
    volume::VolumeKey,
};
use datapath_coord::CoordError;
use tonic::{Code, Status};

/// Why a host-worker call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request field.
    #[error(transparent)]
    Invalid(#[from] FieldViolation),
    /// The storage domain is not under this host's storage root.
    #[error("storage domain {sd} not found")]
    DomainNotFound {
        /// The domain.
        sd: StorageDomainId,
        /// The request field that named it.
        field: String,
    },
    /// The storage domain id is taken.
    #[error("storage domain {0} already exists")]
    DomainExists(StorageDomainId),
    /// No such image.
    #[error("image {img} not found in storage domain {sd}")]
    ImageNotFound {
        /// Its domain.
        sd: StorageDomainId,
        /// The image.
        img: ImageId,
    },
    /// No such volume.
    #[error("volume {volume} not found")]
    VolumeNotFound {
        /// The volume.
        volume: VolumeKey,
        /// The request field that named it.
        field: String,
    },
    /// The volume id is taken.
    #[error("volume {0} already exists")]
    VolumeExists(VolumeKey),
    /// The system is not in the state the request needs.
    #[error("{message}")]
    Precondition {
        /// Stable reason.
        reason: &'static str,
        /// The request field concerned.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The job id is taken by a job with other parameters or another host.
    #[error("job {0} already exists with other parameters")]
    JobExists(JobId),
    /// This host does not run that job.
    #[error("job {0} is not running on this host")]
    JobNotFound(JobId),
    /// As many copies as allowed already wait for a slot on this host.
    #[error("{0} copies already wait for a slot on this host; try again later or another host")]
    QueueFull(usize),
    /// The host holds no valid session lease: it must not start work.
    #[error("this host holds no valid etcd session lease")]
    SessionLost,
    /// A structural verb sent to a host that is not the SPM; the caller should send it to `address`.
    #[error("this host is not the SPM; the SPM is host {host_id} at {address}")]
    NotSpm {
        /// The current SPM.
        host_id: HostId,
        /// Where the SPM serves gRPC.
        address: String,
    },
    /// A structural verb while no host can act as SPM (none elected yet, or the role is changing
    /// hands): the caller should retry shortly.
    #[error("no SPM to make structural changes: {0}")]
    NoSpm(String),
    /// A filesystem call failed. The message names the volume, image or domain, never the path
    /// (which the host logs when the error is made).
    #[error("cannot {what} {subject}: {source}")]
    Io {
        /// The action.
        what: &'static str,
        /// What the path is, by id (`storage::subject`).
        subject: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file on the storage is not what it must be: a symlink at some step of its path, or not a
    /// regular file. Nothing was read or written through it.
    #[error("{subject} refused: {why}")]
    UnsafeFile {
        /// What the path is, by id.
        subject: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// qemu-img failed.
    #[error("qemu-img: {0}")]
    Qemu(String),
    /// etcd failed.
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// The job-tracker refused or could not be reached.
    #[error("job-tracker: {0}")]
    Tracker(Status),
}

impl Error {
    /// An I/O failure on `path`, logged here with the path; the error itself names ids only.
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        let subject = crate::storage::subject(path);
        if crate::storage::beneath::is_unsafe(&source) {
            tracing::warn!(path = %path.display(), what, error = %source, "unsafe file on the storage refused");
            return Self::UnsafeFile {
                subject,
                why: "a symlink on its path, or not a regular file",
            };
        }
        tracing::warn!(path = %path.display(), what, error = %source, "storage operation failed");
        Self::Io {
            what,
            subject,
            source,
        }
    }

    /// A precondition failure.
    pub fn precondition(
        reason: &'static str,
        field: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::Precondition {
            reason,
            field,
            message: message.into(),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid(v) => v.into(),
            Error::DomainNotFound { field, .. } => status(
                Code::NotFound,
                "STORAGE_DOMAIN_NOT_FOUND",
                msg,
                Some(&field),
            ),
            Error::DomainExists(_) => status(
                Code::AlreadyExists,
                "STORAGE_DOMAIN_EXISTS",
                msg,
                Some("storage_domain_id"),
            ),
            Error::ImageNotFound { .. } => {
                status(Code::NotFound, "IMAGE_NOT_FOUND", msg, Some("image_id"))
            }
            Error::VolumeNotFound { field, .. } => {
                status(Code::NotFound, "VOLUME_NOT_FOUND", msg, Some(&field))
            }
            Error::VolumeExists(_) => {
                status(Code::AlreadyExists, "VOLUME_EXISTS", msg, Some("volume"))
            }
            Error::Precondition { reason, field, .. } => {
                status(Code::FailedPrecondition, reason, msg, Some(field))
            }
            Error::JobExists(_) => status(Code::AlreadyExists, "JOB_EXISTS", msg, Some("job_id")),
            Error::JobNotFound(_) => status(Code::NotFound, "JOB_NOT_FOUND", msg, Some("job_id")),
            Error::SessionLost => status(Code::Unavailable, "SESSION_LOST", msg, None),
            Error::NotSpm { host_id, address } => status_with_metadata(
                Code::FailedPrecondition,
                "NOT_SPM",
                msg,
                &[
                    ("spm_host_id", host_id.to_string()),
                    ("spm_address", address),
                ],
            ),
            Error::NoSpm(_) => status(Code::Unavailable, "NO_SPM", msg, None),
            Error::Io { .. } => status(Code::Internal, "STORAGE_IO_ERROR", msg, None),
            Error::QueueFull(_) => status(Code::ResourceExhausted, "HOST_QUEUE_FULL", msg, None),
            Error::UnsafeFile { .. } => status(Code::FailedPrecondition, "UNSAFE_FILE", msg, None),
            Error::Qemu(_) => status(Code::Internal, "QEMU_IMG_FAILED", msg, None),
            Error::Coord(CoordError::Decode { .. } | CoordError::BadRecord { .. }) => {
                status(Code::DataLoss, "BAD_RECORD", msg, None)
            }
            Error::Coord(CoordError::VolumeHeld(_)) => status(
                Code::FailedPrecondition,
                "VOLUME_IN_USE",
                msg,
                Some("volume"),
            ),
            Error::Coord(CoordError::ImageDeleting(_)) => status(
                Code::FailedPrecondition,
                "IMAGE_DELETING",
                msg,
                Some("volume"),
            ),
            Error::Coord(CoordError::GenerationNotRaised { .. }) => {
                status(Code::Internal, "GENERATION_NOT_RAISED", msg, None)
            }
            Error::Coord(_) => status(Code::Unavailable, "ETCD_UNAVAILABLE", msg, None),
            Error::Tracker(s) => {
                // Pass the job-tracker's verdict through with its own details.
                Status::with_details(
                    s.code(),
                    format!("job-tracker: {}", s.message()),
                    s.details().to_vec().into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use datapath_api::error::{metadata, reason};

    use super::*;

    #[test]
    fn not_spm_names_the_spm_and_where_to_find_it() {
        let host_id = HostId::random();
        let status = Status::from(Error::NotSpm {
            host_id,
            address: "10.0.0.7:7301".into(),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason(&status).as_deref(), Some("NOT_SPM"));
        assert_eq!(metadata(&status, "spm_host_id"), Some(host_id.to_string()));
        assert_eq!(
            metadata(&status, "spm_address").as_deref(),
            Some("10.0.0.7:7301")
        );
        assert!(
            status.message().contains(&host_id.to_string()),
            "{status:?}"
        );
        assert!(status.message().contains("10.0.0.7:7301"), "{status:?}");
    }

    #[test]
    fn no_spm_is_unavailable_so_callers_retry() {
        let status = Status::from(Error::NoSpm("no host is elected SPM yet".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(reason(&status).as_deref(), Some("NO_SPM"));
        assert_eq!(metadata(&status, "spm_address"), None);
    }
}
