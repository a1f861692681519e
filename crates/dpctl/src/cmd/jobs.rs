//! `dpctl jobs list|get|watch|abort`: jobs through the job-tracker.
use anyhow::{bail, Context as _};
use clap::{Subcommand, ValueEnum};
use datapath_api::pb;

use super::{all_pages, Context, PAGE_SIZE};
use crate::{
    output::{self, Output},
    parse::uuid_arg,
};

/// Job commands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs (all pages), filtered by host, status and entity.
    List {
        /// Only the jobs of this host.
        #[arg(long, env = "DATAPATH_JOBS_HOST_ID", value_parser = uuid_arg)]
        host_id: Option<String>,
        /// Only the jobs with this status.
        #[arg(long, env = "DATAPATH_JOBS_STATUS", value_enum)]
        status: Option<Status>,
        /// Only the jobs on this entity, e.g. SD/IMG/VOL.
        #[arg(long, env = "DATAPATH_JOBS_ENTITY")]
        entity: Option<String>,
    },
    /// Show one job.
    Get {
        /// The job id.
        #[arg(value_parser = uuid_arg)]
        id: String,
    },
    /// Print job changes as they happen, one line per event (current jobs first).
    Watch {
        /// Only this job.
        #[arg(long, env = "DATAPATH_JOBS_JOB_ID", value_parser = uuid_arg)]
        job_id: Option<String>,
        /// Only the jobs of this host.
        #[arg(long, env = "DATAPATH_JOBS_HOST_ID", value_parser = uuid_arg)]
        host_id: Option<String>,
        /// Only the jobs on this entity, e.g. SD/IMG/VOL.
        #[arg(long, env = "DATAPATH_JOBS_ENTITY")]
        entity: Option<String>,
        /// Resume after this etcd revision instead of starting with the current jobs.
        #[arg(long, env = "DATAPATH_JOBS_START_REVISION", default_value_t = 0)]
        start_revision: i64,
    },
    /// Ask the owning host to abort a job.
    Abort {
        /// The job id.
        #[arg(value_parser = uuid_arg)]
        id: String,
    },
}

/// A job status filter.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    /// Waiting for a job slot.
    Pending,
    /// Running.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Aborted.
    Aborted,
}

impl From<Status> for pb::JobStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Pending => Self::Pending,
            Status::Running => Self::Running,
            Status::Succeeded => Self::Succeeded,
            Status::Failed => Self::Failed,
            Status::Aborted => Self::Aborted,
        }
    }
}

impl JobsCommand {
    /// Runs it.
    pub async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let mut jt = ctx.job_tracker().await?;
        match self {
            Self::List {
                host_id,
                status,
                entity,
            } => {
                let request = pb::ListJobsRequest {
                    host_id: host_id.unwrap_or_default(),
                    status: status.map_or(0, |s| pb::JobStatus::from(s) as i32),
                    entity: entity.unwrap_or_default(),
                    page_size: PAGE_SIZE,
                    page_token: String::new(),
                };
                let jobs = all_pages(|page_token| {
                    let (mut jt, req) = (
                        jt.clone(),
                        pb::ListJobsRequest {
                            page_token,
                            ..request.clone()
                        },
                    );
                    async move {
                        let page = jt.list_jobs(req).await.context("list jobs")?.into_inner();
                        Ok((page.jobs, page.next_page_token))
                    }
                })
                .await?;
                let all = pb::ListJobsResponse {
                    jobs,
                    next_page_token: String::new(),
                };
                if ctx.output() == Output::Json {
                    return output::print_json(&all);
                }
                let rows: Vec<Vec<String>> = all.jobs.iter().map(job_row).collect();
                let headers = ["JOB_ID", "HOST_ID", "STATUS", "PROGRESS", "DETAIL"];
                println!("{}", output::table(&headers, &rows));
            }
            Self::Get { id } => {
                let response = jt
                    .get_job(pb::GetJobRequest { job_id: id.clone() })
                    .await
                    .with_context(|| format!("get job {id}"))?
                    .into_inner();
                match ctx.output() {
                    Output::Json => output::print_json(&response)?,
                    Output::Text => print_job(&response.job.unwrap_or_default()),
                }
            }
            Self::Watch {
                job_id,
                host_id,
                entity,
                start_revision,
            } => {
                let request = pb::WatchJobsRequest {
                    host_id: host_id.unwrap_or_default(),
                    job_id: job_id.unwrap_or_default(),
                    entity: entity.unwrap_or_default(),
                    start_revision,
                };
                let mut stream = jt
                    .watch_jobs(request)
                    .await
                    .context("watch jobs")?
                    .into_inner();
                while let Some(event) = stream.message().await.context("watch jobs")? {
                    match ctx.output() {
                        Output::Json => output::print_json_line(&event)?,
                        Output::Text => println!("{}", event_line(&event)),
                    }
                }
                bail!("the job-tracker closed the watch stream");
            }
            Self::Abort { id } => {
                let response = jt
                    .abort_job(pb::AbortJobRequest { job_id: id.clone() })
                    .await
                    .with_context(|| format!("abort job {id}"))?
                    .into_inner();
                match ctx.output() {
                    Output::Json => output::print_json(&response)?,
                    Output::Text => {
                        let job = response.job.unwrap_or_default();
                        println!(
                            "abort requested: job {id} is {}",
                            output::job_status(job.status)
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// The error of a failed job, else its entities.
fn detail(job: &pb::Job) -> String {
    match &job.error {
        Some(e) if !e.code.is_empty() || !e.message.is_empty() => {
            format!("{}: {}", e.code, e.message)
        }
        _ => output::or_dash(&job.entities.join(",")).to_string(),
    }
}

fn job_row(job: &pb::Job) -> Vec<String> {
    vec![
        job.job_id.clone(),
        job.host_id.clone(),
        output::job_status(job.status),
        format!("{}%", job.progress),
        detail(job),
    ]
}

/// One line per watch event: `<revision> <type> <job> <status> <progress>% host=<id> [<detail>]`.
pub fn event_line(event: &pb::WatchJobsResponse) -> String {
    let kind = output::event_type(event.r#type);
    let job = event.job.clone().unwrap_or_default();
    if event.r#type == pb::JobEventType::Deleted as i32 {
        return format!("{} {kind} {}", event.revision, job.job_id);
    }
    let abort = if job.abort_requested {
        " abort-requested"
    } else {
        ""
    };
    format!(
        "{} {kind} {} {} {}% host={}{abort} {}",
        event.revision,
        job.job_id,
        output::job_status(job.status),
        job.progress,
        output::or_dash(&job.host_id),
        detail(&job)
    )
}

fn print_job(job: &pb::Job) {
    let error = job
        .error
        .as_ref()
        .map_or_else(|| "-".to_string(), |e| format!("{}: {}", e.code, e.message));
    let copy = match &job.params {
        Some(pb::job::Params::CopyData(p)) => {
            let end = |e: &Option<pb::CopyDataEndpoint>| {
                let e = e.clone().unwrap_or_default();
                let v = e.volume.unwrap_or_default();
                let generation = e.generation.map(|g| format!(" (generation {g})"));
                format!(
                    "{}/{}/{}{}",
                    v.storage_domain_id,
                    v.image_id,
                    v.volume_id,
                    generation.unwrap_or_default()
                )
            };
            format!("{} -> {}", end(&p.source), end(&p.destination))
        }
        None => "-".to_string(),
    };
    let lines = [
        ("job", job.job_id.clone()),
        ("host", output::or_dash(&job.host_id).to_string()),
        ("status", output::job_status(job.status)),
        ("progress", format!("{}%", job.progress)),
        (
            "abort",
            if job.abort_requested {
                "requested"
            } else {
                "-"
            }
            .to_string(),
        ),
        ("error", error),
        ("copy", copy),
        (
            "entities",
            output::or_dash(&job.entities.join(",")).to_string(),
        ),
        ("size", output::bytes(job.size_bytes)),
        ("created", output::timestamp(job.created_at.as_ref())),
        ("updated", output::timestamp(job.updated_at.as_ref())),
        ("description", output::or_dash(&job.description).to_string()),
    ];
    for (key, value) in lines {
        println!("{key:<12}{value}");
    }
}
