//! The job-tracker's metrics: jobs in etcd by status, and every status change it writes. A FAILED job
//! whose error code is `FENCED` (its host lost its session lease) counts as `FENCED`, not `FAILED`:
//! an operator tells a fencing storm from failing copies at a glance.
use std::sync::LazyLock;

use datapath_api::pb::{self, JobStatus};
use datapath_telemetry::metrics::{register, CounterFamily, GaugeFamily};
use prometheus_client::encoding::EncodeLabelSet;

/// Every value of the `status` label.
pub const STATUSES: [&str; 6] = [
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "ABORTED",
    "FENCED",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

struct JobTrackerMetrics {
    jobs: GaugeFamily<StatusLabel>,
    transitions: CounterFamily<StatusLabel>,
}

fn metrics() -> &'static JobTrackerMetrics {
    static METRICS: LazyLock<JobTrackerMetrics> = LazyLock::new(|| {
        let m = JobTrackerMetrics {
            jobs: Default::default(),
            transitions: Default::default(),
        };
        register(
            "datapath_jobs",
            "Job records in etcd by status (FENCED: failed because the host lost its session)",
            m.jobs.clone(),
        );
        register(
            "datapath_job_transitions",
            "Job status changes written by the job-tracker, by the status entered",
            m.transitions.clone(),
        );
        for status in STATUSES {
            let label = StatusLabel { status };
            drop(m.jobs.get_or_create(&label));
            drop(m.transitions.get_or_create(&label));
        }
        m
    });
    &METRICS
}

/// Registers the families (etcd's too), every status at zero, so they show from the first scrape.
pub fn init() {
    metrics();
    datapath_coord::metrics::metrics();
}

/// The `status` label of a job.
pub fn status_label(job: &pb::Job) -> Option<&'static str> {
    Some(match job.status() {
        JobStatus::Unspecified => return None,
        JobStatus::Pending => "PENDING",
        JobStatus::Running => "RUNNING",
        JobStatus::Succeeded => "SUCCEEDED",
        JobStatus::Failed if job.error.as_ref().is_some_and(|e| e.code == "FENCED") => "FENCED",
        JobStatus::Failed => "FAILED",
        JobStatus::Aborted => "ABORTED",
    })
}

/// A job entered `job`'s status.
pub fn transition(job: &pb::Job) {
    if let Some(status) = status_label(job) {
        metrics()
            .transitions
            .get_or_create(&StatusLabel { status })
            .inc();
    }
}

/// Sets the jobs gauge from a full listing of the jobs in etcd.
pub fn count_jobs(jobs: &[pb::Job]) {
    let mut counts = std::collections::HashMap::new();
    for label in jobs.iter().filter_map(status_label) {
        *counts.entry(label).or_default() += 1;
    }
    set_job_counts(&counts);
}

/// Sets the jobs gauge from the number of jobs with each status label.
pub fn set_job_counts(counts: &std::collections::HashMap<&'static str, usize>) {
    let m = metrics();
    for status in STATUSES {
        let n = counts.get(status).copied().unwrap_or(0);
        m.jobs
            .get_or_create(&StatusLabel { status })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use datapath_telemetry::metrics::{encode, text::parse};

    use super::*;

    fn job(status: JobStatus, code: &str) -> pb::Job {
        let mut j = pb::Job {
            error: (!code.is_empty()).then(|| pb::JobError {
                code: code.into(),
                message: String::new(),
            }),
            ..Default::default()
        };
        j.set_status(status);
        j
    }

    #[test]
    fn fenced_failures_count_apart() {
        init();
        count_jobs(&[
            job(JobStatus::Failed, "FENCED"),
            job(JobStatus::Failed, "COPY_FAILED"),
            job(JobStatus::Succeeded, ""),
            job(JobStatus::Succeeded, ""),
        ]);
        transition(&job(JobStatus::Failed, "FENCED"));
        let s = parse(&encode()).unwrap();
        let jobs = |status| s.sum("datapath_jobs", &[("status", status)]);
        assert_eq!(
            (
                jobs("FENCED"),
                jobs("FAILED"),
                jobs("SUCCEEDED"),
                jobs("RUNNING")
            ),
            (1.0, 1.0, 2.0, 0.0)
        );
        let t = |status| s.sum("datapath_job_transitions_total", &[("status", status)]);
        assert_eq!((t("FENCED"), t("FAILED"), t("PENDING")), (1.0, 0.0, 0.0));
    }
}
