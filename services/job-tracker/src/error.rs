//! The job-tracker's errors and their one mapping to gRPC statuses.
use datapath_api::{error::status, error::FieldViolation, ids::JobId};
use datapath_coord::CoordError;
use tonic::{Code, Status};

/// Why a Job API call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request field.
    #[error(transparent)]
    Invalid(#[from] FieldViolation),
    /// No such job.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// The id is taken by a job with other parameters.
    #[error("job {0} already exists with other parameters")]
    Exists(JobId),
    /// The job has ended; it cannot be changed or aborted.
    #[error("job {0} has already ended")]
    Ended(JobId),
    /// The job is still running; it cannot be deleted.
    #[error("job {0} has not ended")]
    NotEnded(JobId),
    /// The caller is not the host that owns the job.
    #[error("job {job} belongs to host {owner}, not {caller}")]
    NotOwner {
        /// The job.
        job: JobId,
        /// Its host.
        owner: String,
        /// Who asked.
        caller: String,
    },
    /// A status change that the job's state machine forbids.
    #[error("job {job} cannot go from {from} to {to}")]
    BadTransition {
        /// The job.
        job: JobId,
        /// Its status now.
        from: String,
        /// The status asked for.
        to: String,
    },
    /// The host has as many unended jobs as the job-tracker registers for one host.
    #[error(
        "host {host} has {limit} unended jobs already, the job-tracker's --max-open-jobs-per-host"
    )]
    HostJobsFull {
        /// The host.
        host: String,
        /// The limit.
        limit: usize,
    },
    /// Concurrent writers kept changing the record.
    #[error("job {0} changed concurrently; try again")]
    Contended(JobId),
    /// etcd failed.
    #[error(transparent)]
    Coord(#[from] CoordError),
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::Invalid(v) => v.into(),
            Error::NotFound(_) => status(Code::NotFound, "JOB_NOT_FOUND", msg, Some("job_id")),
            Error::Exists(_) => status(Code::AlreadyExists, "JOB_EXISTS", msg, Some("job_id")),
            Error::Ended(_) => status(Code::FailedPrecondition, "JOB_ENDED", msg, Some("job_id")),
            Error::NotEnded(_) => status(
                Code::FailedPrecondition,
                "JOB_NOT_ENDED",
                msg,
                Some("job_id"),
            ),
            Error::NotOwner { .. } => status(
                Code::PermissionDenied,
                "NOT_JOB_OWNER",
                msg,
                Some("host_id"),
            ),
            Error::BadTransition { .. } => status(
                Code::FailedPrecondition,
                "INVALID_TRANSITION",
                msg,
                Some("status"),
            ),
            Error::HostJobsFull { .. } => status(
                Code::ResourceExhausted,
                "HOST_JOBS_FULL",
                msg,
                Some("job.host_id"),
            ),
            Error::Contended(_) => status(Code::Aborted, "CONTENDED", msg, None),
            Error::Coord(CoordError::Compacted { .. }) => status(
                Code::OutOfRange,
                "REVISION_COMPACTED",
                msg,
                Some("start_revision"),
            ),
            Error::Coord(CoordError::Decode { .. } | CoordError::BadRecord { .. }) => {
                status(Code::DataLoss, "BAD_RECORD", msg, None)
            }
            Error::Coord(CoordError::GenerationNotRaised { .. }) => {
                status(Code::Internal, "GENERATION_NOT_RAISED", msg, None)
            }
            Error::Coord(_) => status(Code::Unavailable, "ETCD_UNAVAILABLE", msg, None),
        }
    }
}
