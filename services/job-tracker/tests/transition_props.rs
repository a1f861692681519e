//! Properties of the job state machine (`transition.rs`), checked over generated jobs and updates
//! rather than a hand-picked table: its module doc promises pending → running → succeeded | failed |
//! aborted (pending may also end failed or aborted), that nothing moves backwards, that progress
//! never decreases and that an ended job never changes again; `apply` promises `Ok(None)` when
//! nothing changes, and `Update::from_pb` the request's limits.
use datapath_api::{ids::JobId, pb};
use datapath_job_tracker::{
    error::Error,
    transition::{apply, is_terminal, Update},
};
use pb::JobStatus as S;
use proptest::prelude::*;

/// Every status, the unset one included: a record may hold it.
const ALL: [S; 6] = [
    S::Unspecified,
    S::Pending,
    S::Running,
    S::Succeeded,
    S::Failed,
    S::Aborted,
];

/// The edges the module doc names; staying put is always allowed.
const EDGES: [(S, S); 6] = [
    (S::Pending, S::Running),
    (S::Pending, S::Failed),
    (S::Pending, S::Aborted),
    (S::Running, S::Succeeded),
    (S::Running, S::Failed),
    (S::Running, S::Aborted),
];

fn documented(from: S, to: S) -> bool {
    from == to || EDGES.contains(&(from, to))
}

/// Place along the only direction a job may move.
fn rank(s: S) -> u8 {
    match s {
        S::Unspecified => 0,
        S::Pending => 1,
        S::Running => 2,
        S::Succeeded | S::Failed | S::Aborted => 3,
    }
}

fn status() -> impl Strategy<Value = S> {
    proptest::sample::select(ALL.to_vec())
}

fn job_error() -> impl Strategy<Value = Option<pb::JobError>> {
    proptest::option::of(
        (
            prop_oneof!["", "COPY_FAILED", "FENCED", "[A-Z_]{1,8}"],
            ".{0,8}",
        )
            .prop_map(|(code, message)| pb::JobError { code, message }),
    )
}

/// Progress as a host may send it, now and then out of range.
fn progress() -> impl Strategy<Value = Option<u32>> {
    proptest::option::of(prop_oneof![8 => 0u32..=100, 1 => 101u32..=u32::MAX])
}

/// Any request a host could send, valid or not.
fn request() -> impl Strategy<Value = pb::UpdateJobRequest> {
    (
        prop_oneof![8 => 0i32..=5, 1 => any::<i32>()],
        progress(),
        job_error(),
    )
        .prop_map(|(status, progress, error)| pb::UpdateJobRequest {
            job_id: String::new(),
            host_id: String::new(),
            status,
            progress,
            error,
        })
}

/// Updates as the service builds them: requests that pass validation.
fn update() -> impl Strategy<Value = Update> {
    request().prop_filter_map("rejected by validation", |r| Update::from_pb(&r).ok())
}

/// Any stored record, reachable or not (an unknown status value reads as unset).
fn any_job() -> impl Strategy<Value = pb::Job> {
    (
        prop_oneof![8 => 0i32..=5, 1 => any::<i32>()],
        0u32..=100,
        job_error(),
        any::<bool>(),
    )
        .prop_map(|(status, progress, error, abort_requested)| pb::Job {
            job_id: "j".into(),
            host_id: "h".into(),
            status,
            progress,
            error,
            entities: vec!["sd/img/vol".into()],
            description: "copy".into(),
            abort_requested,
            size_bytes: 1 << 30,
            ..Default::default()
        })
}

/// A job as it is created (PENDING, 0 %), then moved by whichever updates the machine accepts.
fn reachable_job() -> impl Strategy<Value = pb::Job> {
    proptest::collection::vec(update(), 0..8).prop_map(|updates| {
        let id = JobId::random();
        let mut job = pb::Job {
            job_id: id.to_string(),
            host_id: "h".into(),
            ..Default::default()
        };
        job.set_status(S::Pending);
        for u in &updates {
            if let Ok(Some(next)) = apply(id, &job, u) {
                job = next;
            }
        }
        job
    })
}

/// A reachable job that has ended.
fn ended_job() -> impl Strategy<Value = pb::Job> {
    reachable_job().prop_filter("still running", |j| is_terminal(j.status()))
}

/// The record without its write time, which `apply` stamps on every change.
fn content(job: &pb::Job) -> pb::Job {
    pb::Job {
        updated_at: None,
        ..job.clone()
    }
}

proptest! {
    // No regressions file: a failure prints its shrunk input, and the tests leave the tree alone.
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever `apply` lets through is one of the documented edges, and never a step back.
    #[test]
    fn allowed_transitions_are_documented_edges(job in any_job(), update in update()) {
        let from = job.status();
        if let Ok(Some(next)) = apply(JobId::random(), &job, &update) {
            prop_assert!(documented(from, next.status()), "{from:?} -> {:?}", next.status());
            prop_assert!(rank(next.status()) >= rank(from));
        }
    }

    /// Every documented edge is taken when asked for, from any progress.
    #[test]
    fn documented_edges_are_allowed(
        edge in proptest::sample::select(EDGES.to_vec()),
        progress in 0u32..=100,
        error in job_error(),
    ) {
        let (from, to) = edge;
        let mut job = pb::Job { progress, ..Default::default() };
        job.set_status(from);
        let error = error
            .filter(|e| !e.code.is_empty())
            .or_else(|| (to == S::Failed).then(|| pb::JobError { code: "X".into(), message: String::new() }));
        let update = Update { status: Some(to), progress: None, error };
        let next = apply(JobId::random(), &job, &update);
        prop_assert!(matches!(&next, Ok(Some(n)) if n.status() == to), "{from:?} -> {to:?}: {next:?}");
    }

    /// A status change off the documented edges is refused, with the error for its kind.
    #[test]
    fn undocumented_transitions_are_refused(
        (job, to) in (any_job(), status()).prop_filter("documented", |(j, to)| !documented(j.status(), *to)),
        progress in progress(),
    ) {
        let from = job.status();
        let update = Update { status: Some(to), progress, error: None };
        match apply(JobId::random(), &job, &update) {
            Err(Error::Ended(_)) => prop_assert!(is_terminal(from)),
            Err(Error::BadTransition { .. }) => prop_assert!(!is_terminal(from)),
            other => prop_assert!(false, "{from:?} -> {to:?} gave {other:?}"),
        }
    }

    /// Progress never goes down through an accepted update, and a success is at 100.
    #[test]
    fn progress_never_decreases(job in any_job(), update in update()) {
        if let Ok(Some(next)) = apply(JobId::random(), &job, &update) {
            prop_assert!(next.progress >= job.progress, "{} -> {}", job.progress, next.progress);
            prop_assert!(next.progress <= 100);
            if next.status() == S::Succeeded {
                prop_assert_eq!(next.progress, 100);
            }
        }
    }

    /// An ended job keeps its status and progress: a change is refused or is no change.
    #[test]
    fn ended_jobs_keep_status_and_progress(job in ended_job(), update in update()) {
        match apply(JobId::random(), &job, &update) {
            Err(Error::Ended(_)) | Ok(None) => {}
            Ok(Some(next)) => {
                prop_assert_eq!(next.status(), job.status());
                prop_assert_eq!(next.progress, job.progress);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// The module doc's "an ended job never changes again", for the whole record.
    #[test]
    fn ended_jobs_never_change(job in ended_job(), update in update()) {
        let r = apply(JobId::random(), &job, &update);
        prop_assert!(matches!(r, Err(Error::Ended(_)) | Ok(None)), "{job:?} + {update:?} gave {r:?}");
    }

    /// The same report applied twice changes the job once.
    #[test]
    fn applying_a_report_twice_is_idempotent(job in any_job(), update in update()) {
        let id = JobId::random();
        if let Ok(Some(next)) = apply(id, &job, &update) {
            let again = apply(id, &next, &update);
            prop_assert!(matches!(again, Ok(None)), "second apply gave {again:?}");
        }
    }

    /// `Ok(None)` exactly when nothing changes; a change is stamped and touches only what an update
    /// carries.
    #[test]
    fn a_change_is_reported_only_when_there_is_one(job in any_job(), update in update()) {
        match apply(JobId::random(), &job, &update) {
            Ok(Some(next)) => {
                prop_assert_ne!(content(&next), content(&job));
                prop_assert!(next.updated_at.is_some());
                let untouched = pb::Job {
                    status: job.status,
                    progress: job.progress,
                    error: job.error.clone(),
                    updated_at: job.updated_at,
                    ..next.clone()
                };
                prop_assert_eq!(untouched, job);
            }
            Ok(None) => {
                prop_assert_eq!(update.status.unwrap_or(job.status()), job.status());
                prop_assert!(update.progress.unwrap_or(0) <= job.progress);
                prop_assert!(job.status() != S::Succeeded || job.progress == 100);
                prop_assert!(update.error.is_none() || update.error == job.error);
            }
            Err(_) => {}
        }
    }

    /// A progress-only update (as the tracker coalesces them) never changes status or error.
    #[test]
    fn progress_only_updates_change_only_progress(
        (job, update) in (any_job(), update()).prop_filter("not progress-only", |(j, u)| u.is_progress_only(j.status())),
    ) {
        if let Ok(Some(next)) = apply(JobId::random(), &job, &update) {
            prop_assert_eq!(next.status(), job.status());
            prop_assert_eq!(next.error, job.error);
        }
    }

    /// A job moved by any sequence of accepted updates walks the documented graph forwards, its
    /// progress only rising, and stops moving once it has ended.
    #[test]
    fn sequences_walk_the_graph_forwards(updates in proptest::collection::vec(update(), 0..16)) {
        let id = JobId::random();
        let mut job = pb::Job::default();
        job.set_status(S::Pending);
        for u in &updates {
            if let Ok(Some(next)) = apply(id, &job, u) {
                prop_assert!(documented(job.status(), next.status()));
                prop_assert!(next.progress >= job.progress);
                if is_terminal(job.status()) {
                    prop_assert_eq!(next.status(), job.status());
                    prop_assert_eq!(next.progress, job.progress);
                }
                job = next;
            }
        }
    }

    /// Validation: unknown statuses, progress above 100, FAILED without an error code and an error
    /// without FAILED are refused, naming their field; everything else is carried over as sent.
    #[test]
    fn from_pb_enforces_the_request_limits(req in request()) {
        let r = Update::from_pb(&req);
        let code = req.error.as_ref().filter(|e| !e.code.is_empty());
        if S::try_from(req.status).is_err() {
            prop_assert_eq!(r.unwrap_err().field, "status");
        } else if req.progress.is_some_and(|p| p > 100) {
            prop_assert_eq!(r.unwrap_err().field, "progress");
        } else if req.status == S::Failed as i32 && code.is_none() {
            prop_assert_eq!(r.unwrap_err().field, "error.code");
        } else if code.is_some() && req.status != S::Failed as i32 {
            prop_assert_eq!(r.unwrap_err().field, "error");
        } else {
            let u = r.unwrap();
            prop_assert_eq!(u.status, (req.status != 0).then(|| S::try_from(req.status).unwrap()));
            prop_assert_eq!(u.progress, req.progress);
            prop_assert_eq!(u.error.as_ref(), code);
        }
    }
}
