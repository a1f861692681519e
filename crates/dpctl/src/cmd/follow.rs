//! Following one job to its end through the job-tracker's `WatchJobs` (snapshot, then live), resuming
//! after the last revision seen when the stream breaks, with progress on stderr: an indicatif bar on
//! a terminal, else a plain line each time the status or progress changes.
use std::{io::IsTerminal as _, time::Duration};

use anyhow::{anyhow, bail};
use datapath_api::pb;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::Code;

use crate::{client::JobTrackerClient, error::status_line, output};

/// Consecutive broken streams tolerated without an event in between.
const MAX_RETRIES: u32 = 10;
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// Whether a job status is final.
pub fn is_final(status: i32) -> bool {
    matches!(
        pb::JobStatus::try_from(status),
        Ok(pb::JobStatus::Succeeded | pb::JobStatus::Failed | pb::JobStatus::Aborted)
    )
}

/// Follows job `job_id` until it ends and returns it as it ended (whatever its status).
pub async fn follow(jt: &mut JobTrackerClient, job_id: &str) -> anyhow::Result<pb::Job> {
    let mut display = Display::new(job_id);
    let mut revision = 0;
    let mut retries = 0;
    loop {
        let request = pb::WatchJobsRequest {
            job_id: job_id.to_string(),
            start_revision: revision,
            ..Default::default()
        };
        let broken = match jt.watch_jobs(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            retries = 0;
                            revision = revision.max(event.revision);
                            if let Some(job) = on_event(&mut display, job_id, event)? {
                                return Ok(job);
                            }
                        }
                        Ok(None) => break anyhow!("the job-tracker closed the watch stream"),
                        Err(status) => break watch_error(status, &mut revision)?,
                    }
                }
            }
            Err(status) => watch_error(status, &mut revision)?,
        };
        retries += 1;
        if retries > MAX_RETRIES {
            display.clear();
            return Err(broken.context(format!("watch job {job_id}")));
        }
        tracing::debug!("watch of job {job_id} broke ({broken:#}); resuming");
        tokio::time::sleep(RETRY_DELAY * retries).await;
    }
}

/// Handles one event; the job when it has ended.
fn on_event(
    display: &mut Display,
    job_id: &str,
    event: pb::WatchJobsResponse,
) -> anyhow::Result<Option<pb::Job>> {
    if event.r#type == pb::JobEventType::Deleted as i32 {
        display.clear();
        bail!("job {job_id} was deleted before it ended");
    }
    let Some(job) = event.job else {
        return Ok(None);
    };
    display.update(&job);
    if is_final(job.status) {
        display.clear();
        return Ok(Some(job));
    }
    Ok(None)
}

/// A retryable watch error as the error to report if retries run out; others fail at once.
fn watch_error(status: tonic::Status, revision: &mut i64) -> anyhow::Result<anyhow::Error> {
    match status.code() {
        // Compacted: start over with a snapshot.
        Code::OutOfRange => *revision = 0,
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal
        | Code::ResourceExhausted => {}
        _ => return Err(anyhow!(status_line(&status)).context("watch jobs")),
    }
    Ok(anyhow!(status_line(&status)))
}

/// Progress on stderr.
struct Display {
    job_id: String,
    bar: Option<ProgressBar>,
    last: Option<(i32, u32)>,
}

impl Display {
    fn new(job_id: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{prefix} {msg:9} [{wide_bar}] {pos:>3}%")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar.set_prefix(format!("job {job_id}"));
            bar
        });
        Self {
            job_id: job_id.to_string(),
            bar,
            last: None,
        }
    }

    fn update(&mut self, job: &pb::Job) {
        let now = (job.status, job.progress);
        if self.last == Some(now) {
            return;
        }
        self.last = Some(now);
        let status = output::job_status(job.status);
        match &self.bar {
            Some(bar) => {
                bar.set_message(status);
                bar.set_position(u64::from(job.progress.min(100)));
            }
            None => eprintln!("job {}: {status} {}%", self.job_id, job.progress),
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            // Left on screen: the last state (e.g. "succeeded 100%") is the answer.
            bar.finish();
        }
    }
}

/// The one-line error for a job that ended without succeeding; `None` when it succeeded.
pub fn job_failure(job: &pb::Job) -> Option<String> {
    let error = job
        .error
        .as_ref()
        .map(|e| format!(": {}: {}", e.code, e.message))
        .unwrap_or_default();
    match pb::JobStatus::try_from(job.status) {
        Ok(pb::JobStatus::Succeeded) => None,
        Ok(pb::JobStatus::Aborted) => Some(format!("job {} aborted{error}", job.job_id)),
        _ => Some(format!(
            "job {} {}{error}",
            job.job_id,
            output::job_status(job.status)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_error() {
        let mut job = pb::Job {
            job_id: "j".into(),
            status: pb::JobStatus::Failed as i32,
            error: Some(pb::JobError {
                code: "FENCED".into(),
                message: "host lost its session".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            job_failure(&job).unwrap(),
            "job j failed: FENCED: host lost its session"
        );
        job.status = pb::JobStatus::Aborted as i32;
        job.error = None;
        assert_eq!(job_failure(&job).unwrap(), "job j aborted");
        job.status = pb::JobStatus::Succeeded as i32;
        assert_eq!(job_failure(&job), None);
        assert!(is_final(job.status));
        assert!(!is_final(pb::JobStatus::Running as i32));
    }
}

#[cfg(test)]
#[path = "follow_tests.rs"]
mod watch_tests;
