//! `dpctl copy-data`: starts a CopyData job on the chosen host, prints its id, then (unless
//! `--no-wait`) follows it and exits non-zero when it did not succeed.
use anyhow::{bail, Context as _};
use datapath_api::pb;

use super::{
    follow::{follow, job_failure},
    Context,
};
use crate::{
    output::{self, Output},
    parse::{uuid_arg, VolumePath},
};

/// `copy-data` flags.
#[derive(Debug, clap::Args)]
pub struct CopyDataArgs {
    /// The source volume, SD/IMG/VOL.
    #[arg(long, env = "DATAPATH_COPY_SRC")]
    src: VolumePath,
    /// The destination volume, SD/IMG/VOL.
    #[arg(long, env = "DATAPATH_COPY_DST")]
    dst: VolumePath,
    /// Fail unless the destination has this generation.
    #[arg(long, env = "DATAPATH_COPY_DST_GENERATION")]
    dst_generation: Option<u64>,
    /// The job id (the idempotency key); a new one when absent.
    #[arg(long, env = "DATAPATH_COPY_JOB_ID", value_parser = uuid_arg)]
    job_id: Option<String>,
    /// Print the job id and return at once.
    #[arg(long, env = "DATAPATH_COPY_NO_WAIT")]
    no_wait: bool,
}

impl CopyDataArgs {
    /// Runs it.
    pub async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let job_id = self
            .job_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let endpoint = |path: &VolumePath, generation| pb::CopyDataEndpoint {
            volume: Some(path.to_ref()),
            generation,
        };
        let mut host = ctx.host_worker().await?;
        let response = host
            .copy_data(pb::CopyDataRequest {
                job_id: job_id.clone(),
                source: Some(endpoint(&self.src, None)),
                destination: Some(endpoint(&self.dst, self.dst_generation)),
            })
            .await
            .with_context(|| format!("copy {} to {}", self.src, self.dst))?
            .into_inner();
        match ctx.output() {
            Output::Json => output::print_json_line(&response)?,
            Output::Text => println!("{job_id}"),
        }
        if self.no_wait {
            return Ok(());
        }
        let mut jt = ctx.job_tracker().await?;
        let job = follow(&mut jt, &job_id).await?;
        if ctx.output() == Output::Json {
            output::print_json_line(&job)?;
        }
        if let Some(failure) = job_failure(&job) {
            bail!(failure);
        }
        Ok(())
    }
}
