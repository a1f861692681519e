//! The scheduler's errors and their one mapping to gRPC statuses.
use datapath_api::{
    error::{status, FieldViolation},
    ids::OperationId,
    volume::DiskKey,
};
use datapath_coord::CoordError;
use tonic::{Code, Status};

/// Why a scheduler call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request field.
    #[error(transparent)]
    Invalid(#[from] FieldViolation),
    /// No live host reaches the storage domain, so for the engine it does not exist.
    #[error("storage domain {sd} not found on any live host")]
    DomainNotFound {
        /// The domain.
        sd: String,
        /// The request field that named it.
        field: String,
    },
    /// No such disk or volume.
    #[error("{what} not found")]
    NotFound {
        /// What is missing, named.
        what: String,
        /// The request field that named it.
        field: String,
        /// Stable reason.
        reason: &'static str,
    },
    /// The disk (or volume) already exists where the operation would create it.
    #[error("{what} already exists")]
    Exists {
        /// What exists.
        what: String,
        /// The request field concerned.
        field: String,
    },
    /// Another operation owns the disk.
    #[error("disk {disk} is LOCKED by {owner}")]
    Locked {
        /// The disk.
        disk: DiskKey,
        /// The owner's operation name.
        owner: String,
        /// The request field that named the disk.
        field: String,
    },
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
    /// No such operation.
    #[error("operation {0} not found")]
    OperationNotFound(OperationId),
    /// etcd failed.
    #[error(transparent)]
    Coord(#[from] CoordError),
    /// A host-worker refused or could not be reached; its status passes through.
    #[error("host {host}: {status}")]
    Host {
        /// The host's address.
        host: String,
        /// Its answer.
        status: Status,
    },
}

impl Error {
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
            Error::NotFound { field, reason, .. } => {
                status(Code::NotFound, reason, msg, Some(&field))
            }
            Error::Exists { field, .. } => {
                status(Code::AlreadyExists, "DISK_EXISTS", msg, Some(&field))
            }
            Error::Locked { field, .. } => {
                status(Code::FailedPrecondition, "DISK_LOCKED", msg, Some(&field))
            }
            Error::Precondition { reason, field, .. } => {
                status(Code::FailedPrecondition, reason, msg, Some(field))
            }
            Error::OperationNotFound(_) => {
                status(Code::NotFound, "OPERATION_NOT_FOUND", msg, Some("name"))
            }
            Error::Coord(CoordError::Decode { .. } | CoordError::BadRecord { .. }) => {
                status(Code::DataLoss, "BAD_RECORD", msg, None)
            }
            Error::Coord(CoordError::GenerationNotRaised { .. }) => {
                status(Code::Internal, "GENERATION_NOT_RAISED", msg, None)
            }
            Error::Coord(_) => status(Code::Unavailable, "ETCD_UNAVAILABLE", msg, None),
            Error::Host { status: s, host } => Status::with_details(
                s.code(),
                format!("host {host}: {}", s.message()),
                s.details().to_vec().into(),
            ),
        }
    }
}
