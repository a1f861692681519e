//! The job state machine, pure: pending → running → succeeded | failed | aborted; pending may also end
//! failed or aborted (a job aborted or fenced before it got a slot). Nothing moves backwards, progress
//! never decreases, and an ended job never changes again.
use datapath_api::{error::FieldViolation, ids::JobId, pb};
use pb::JobStatus as S;

use crate::error::Error;

/// A validated update.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The new status, if it changes.
    pub status: Option<S>,
    /// Reported progress, 0–100.
    pub progress: Option<u32>,
    /// Why the job failed (required with FAILED).
    pub error: Option<pb::JobError>,
}

impl Update {
    /// Validates the request fields.
    pub fn from_pb(req: &pb::UpdateJobRequest) -> Result<Self, FieldViolation> {
        let status = match req.status {
            0 => None,
            v => Some(S::try_from(v).map_err(|_| {
                FieldViolation::new(
                    "status",
                    "UNKNOWN_ENUM_VALUE",
                    format!("{v} is not a JobStatus"),
                )
            })?),
        };
        if let Some(p) = req.progress.filter(|p| *p > 100) {
            return Err(FieldViolation::new(
                "progress",
                "INVALID_VALUE",
                format!("{p} is above 100"),
            ));
        }
        let error = req.error.clone().filter(|e| !e.code.is_empty());
        if status == Some(S::Failed) && error.is_none() {
            return Err(FieldViolation::new(
                "error.code",
                "MISSING_FIELD",
                "a FAILED job needs an error code",
            ));
        }
        // The proto's rule: an error is set when, and only when, the job is FAILED.
        if error.is_some() && status != Some(S::Failed) {
            return Err(FieldViolation::new(
                "error",
                "INVALID_VALUE",
                "an error goes only with status FAILED",
            ));
        }
        Ok(Self {
            status,
            progress: req.progress,
            error,
        })
    }

    /// Whether only progress changes (the coalescable kind of update).
    pub fn is_progress_only(&self, current: S) -> bool {
        self.error.is_none() && self.status.is_none_or(|s| s == current)
    }
}

/// Whether a status is final.
pub fn is_terminal(status: S) -> bool {
    matches!(status, S::Succeeded | S::Failed | S::Aborted)
}

fn allowed(from: S, to: S) -> bool {
    match (from, to) {
        (a, b) if a == b => true,
        (S::Pending, S::Running | S::Failed | S::Aborted) => true,
        (S::Running, S::Succeeded | S::Failed | S::Aborted) => true,
        _ => false,
    }
}

/// Applies `update` to `job`; `Ok(None)` when nothing changes.
pub fn apply(job_id: JobId, job: &pb::Job, update: &Update) -> Result<Option<pb::Job>, Error> {
    let from = job.status();
    let to = update.status.unwrap_or(from);
    // An ended job never changes again: not its status, its progress, nor its error (a report
    // that repeats it exactly is a no-op). Found by the `transition_props` property test.
    let new_error = update
        .error
        .as_ref()
        .is_some_and(|e| job.error.as_ref() != Some(e));
    if is_terminal(from)
        && (to != from || update.progress.is_some_and(|p| p > job.progress) || new_error)
    {
        return Err(Error::Ended(job_id));
    }
    if !allowed(from, to) {
        return Err(Error::BadTransition {
            job: job_id,
            from: from.as_str_name().to_string(),
            to: to.as_str_name().to_string(),
        });
    }
    let mut next = job.clone();
    next.set_status(to);
    next.progress = next.progress.max(update.progress.unwrap_or(0));
    if to == S::Succeeded {
        next.progress = 100;
    }
    if let Some(error) = &update.error {
        next.error = Some(error.clone());
    }
    if next == *job {
        return Ok(None);
    }
    next.updated_at = Some(datapath_api::time::now());
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: S, progress: u32) -> pb::Job {
        let mut j = pb::Job {
            progress,
            ..Default::default()
        };
        j.set_status(status);
        j
    }

    fn upd(status: Option<S>, progress: Option<u32>) -> Update {
        Update {
            status,
            progress,
            error: status.filter(|s| *s == S::Failed).map(|_| pb::JobError {
                code: "X".into(),
                message: String::new(),
            }),
        }
    }

    #[test]
    fn transitions_table() {
        let id = JobId::random();
        let cases = [
            (S::Pending, S::Running, true),
            (S::Pending, S::Aborted, true),
            (S::Pending, S::Failed, true),
            (S::Pending, S::Succeeded, false),
            (S::Running, S::Succeeded, true),
            (S::Running, S::Pending, false),
            (S::Succeeded, S::Running, false),
            (S::Failed, S::Succeeded, false),
            (S::Aborted, S::Running, false),
        ];
        for (from, to, ok) in cases {
            let r = apply(id, &job(from, 0), &upd(Some(to), None));
            assert_eq!(r.is_ok(), ok, "{from:?} -> {to:?}: {r:?}");
        }
    }

    #[test]
    fn progress_never_decreases_and_success_is_100() {
        let id = JobId::random();
        assert_eq!(
            apply(id, &job(S::Running, 40), &upd(None, Some(30))).unwrap(),
            None
        );
        let j = apply(id, &job(S::Running, 40), &upd(None, Some(55)))
            .unwrap()
            .unwrap();
        assert_eq!(j.progress, 55);
        let j = apply(id, &job(S::Running, 40), &upd(Some(S::Succeeded), None))
            .unwrap()
            .unwrap();
        assert_eq!(j.progress, 100);
    }

    #[test]
    fn failed_needs_an_error_code() {
        let req = pb::UpdateJobRequest {
            status: S::Failed as i32,
            ..Default::default()
        };
        assert_eq!(Update::from_pb(&req).unwrap_err().field, "error.code");
        let req = pb::UpdateJobRequest {
            progress: Some(101),
            ..Default::default()
        };
        assert_eq!(Update::from_pb(&req).unwrap_err().field, "progress");
        for status in [S::Unspecified, S::Running, S::Succeeded, S::Aborted] {
            let req = pb::UpdateJobRequest {
                status: status as i32,
                error: Some(pb::JobError {
                    code: "COPY_FAILED".into(),
                    message: String::new(),
                }),
                ..Default::default()
            };
            let e = Update::from_pb(&req).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.reason),
                ("error", "INVALID_VALUE"),
                "{status:?}"
            );
        }
    }
}
