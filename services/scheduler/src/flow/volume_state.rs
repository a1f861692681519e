//! One volume's copy as the scheduler reasons about it: a typed state, and for a copy in progress
//! its typed attempt (job, host, the destination's generation before it). `pb::FlowVolume` is only
//! how it is stored: the runner reads it through [`CopyState::of`] and writes it through
//! [`CopyState::store`]. A stored volume that does not convert (a state from another version, an id
//! edited by hand) parks its flow at load (`model.rs`), so nothing is run from a default.
use datapath_api::{
    ids::{HostId, JobId},
    pb::{self, FlowVolumeState},
};

/// The attempt a volume is being copied by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Its job, at the job-tracker and on its host.
    pub job: JobId,
    /// The host that runs it.
    pub host: HostId,
    /// The destination's generation before it began: the copy commits `expected_generation + 1`.
    pub expected_generation: u64,
}

/// Where one volume's copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// No attempt running; one is placed next (a first one, or a retry).
    Pending,
    /// An attempt is persisted; its job may not exist yet (the scheduler persists before it
    /// sends), so a resumed flow sends CopyData again under the same job id.
    Copying(Attempt),
    /// The destination is LEGAL at its new generation.
    Copied,
    /// Every attempt failed; the flow rolls back.
    Failed,
}

/// Why a stored volume cannot be reasoned about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCopyState {
    /// A state this scheduler does not know.
    #[error("state {0} is not one this scheduler knows")]
    UnknownState(i32),
    /// A copy in progress whose job id does not parse.
    #[error("it is copying under job id {0:?}, which is not a job id")]
    JobId(String),
    /// A copy in progress whose host id does not parse.
    #[error("it is copying on host id {0:?}, which is not a host id")]
    HostId(String),
}

impl CopyState {
    /// The state of a stored volume. An unset state is `Pending` (a volume no attempt touched).
    pub fn of(v: &pb::FlowVolume) -> Result<Self, BadCopyState> {
        Ok(
            match FlowVolumeState::try_from(v.state)
                .map_err(|_| BadCopyState::UnknownState(v.state))?
            {
                FlowVolumeState::Unspecified | FlowVolumeState::Pending => Self::Pending,
                FlowVolumeState::Copied => Self::Copied,
                FlowVolumeState::Failed => Self::Failed,
                FlowVolumeState::Copying => Self::Copying(Attempt {
                    job: v
                        .job_id
                        .parse()
                        .map_err(|_| BadCopyState::JobId(v.job_id.clone()))?,
                    host: v
                        .host_id
                        .parse()
                        .map_err(|_| BadCopyState::HostId(v.host_id.clone()))?,
                    expected_generation: v.expected_generation,
                }),
            },
        )
    }

    /// Writes this state into `v`. Leaving `Copying` keeps the last attempt's job and host in the
    /// record (the attempt's history: which job to show, which host failed).
    pub fn store(self, v: &mut pb::FlowVolume) {
        v.state = match self {
            Self::Pending => FlowVolumeState::Pending,
            Self::Copied => FlowVolumeState::Copied,
            Self::Failed => FlowVolumeState::Failed,
            Self::Copying(a) => {
                v.job_id = a.job.to_string();
                v.host_id = a.host.to_string();
                v.expected_generation = a.expected_generation;
                FlowVolumeState::Copying
            }
        } as i32;
    }

    /// The attempt in progress, if any.
    pub fn attempt(self) -> Option<Attempt> {
        match self {
            Self::Copying(a) => Some(a),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_stored_form() {
        let attempt = Attempt {
            job: JobId::random(),
            host: HostId::random(),
            expected_generation: 7,
        };
        for state in [
            CopyState::Pending,
            CopyState::Copying(attempt),
            CopyState::Copied,
            CopyState::Failed,
        ] {
            let mut v = pb::FlowVolume::default();
            state.store(&mut v);
            assert_eq!(CopyState::of(&v), Ok(state));
        }
    }

    #[test]
    fn leaving_an_attempt_keeps_its_job_and_host_on_record() {
        let attempt = Attempt {
            job: JobId::random(),
            host: HostId::random(),
            expected_generation: 3,
        };
        let mut v = pb::FlowVolume::default();
        CopyState::Copying(attempt).store(&mut v);
        CopyState::Pending.store(&mut v);
        assert_eq!(CopyState::of(&v), Ok(CopyState::Pending));
        assert_eq!(v.job_id, attempt.job.to_string());
        assert_eq!(v.host_id, attempt.host.to_string());
    }

    #[test]
    fn an_unknown_state_or_a_copy_without_valid_ids_is_an_error() {
        let copying = |job: &str, host: &str| pb::FlowVolume {
            state: FlowVolumeState::Copying as i32,
            job_id: job.into(),
            host_id: host.into(),
            ..Default::default()
        };
        let (job, host) = (JobId::random().to_string(), HostId::random().to_string());
        assert!(CopyState::of(&copying(&job, &host)).is_ok());
        assert_eq!(
            CopyState::of(&copying("", &host)),
            Err(BadCopyState::JobId(String::new()))
        );
        assert_eq!(
            CopyState::of(&copying(&job, "h1")),
            Err(BadCopyState::HostId("h1".into()))
        );
        let unknown = pb::FlowVolume {
            state: 17,
            ..Default::default()
        };
        assert_eq!(CopyState::of(&unknown), Err(BadCopyState::UnknownState(17)));
        // A volume no attempt touched.
        assert_eq!(
            CopyState::of(&pb::FlowVolume::default()),
            Ok(CopyState::Pending)
        );
    }
}
