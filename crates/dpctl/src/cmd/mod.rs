//! The subcommands, one file per group, and the [`Context`] they share: the global flags and how to
//! reach the scheduler, the job-tracker and the chosen host-worker.
use anyhow::{bail, Context as _};
use clap::Args;
use datapath_api::pb;

use crate::{
    client::{self, HostWorkerClient, JobTrackerClient, SchedulerClient},
    output::Output,
};

pub mod certs;
pub mod config;
pub mod copy;
pub mod debug;
mod debug_text;
pub mod decode;
pub mod disk;
pub mod domain;
#[cfg(test)]
pub(crate) mod fake_scheduler;
pub mod follow;
pub mod hosts;
pub mod image;
pub mod jobs;
pub mod local;
pub mod op_follow;
pub mod op_view;
pub mod ops;
pub mod volume;

/// Page size asked of paginated list calls (the servers' maximum).
pub const PAGE_SIZE: i32 = 1000;

/// Flags every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The job-tracker's URL.
    #[arg(
        long,
        global = true,
        env = "DATAPATH_JOB_TRACKER",
        default_value = "http://127.0.0.1:7300"
    )]
    pub job_tracker: String,
    /// The scheduler's URL (disk operations, hosts as it sees them, runtime configuration).
    #[arg(
        long,
        global = true,
        env = "DATAPATH_SCHEDULER",
        default_value = "http://127.0.0.1:7302"
    )]
    pub scheduler: String,
    /// The host-worker to talk to: its URL or host:port, or a host id looked up among the hosts
    /// registered with the job-tracker. Default: the first registered host.
    #[arg(long, global = true, env = "DATAPATH_HOST")]
    pub host: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        env = "DATAPATH_OUTPUT",
        value_enum,
        default_value_t = Output::Text
    )]
    pub output: Output,
    /// Mutual TLS with the services (the paths `dpctl local up` writes into `cluster.env`), or
    /// `--insecure` for a cluster started with it.
    #[command(flatten)]
    pub tls: datapath_tls::TlsOptions,
}

/// What every subcommand runs with.
#[derive(Debug)]
pub struct Context {
    global: GlobalArgs,
    tls: std::sync::OnceLock<Option<datapath_tls::Tls>>,
}

impl Context {
    /// A context from the global flags.
    pub fn new(global: GlobalArgs) -> Self {
        Self {
            global,
            tls: std::sync::OnceLock::new(),
        }
    }

    /// The TLS settings, read on first use (commands that reach no service need none).
    pub fn tls(&self) -> anyhow::Result<Option<&datapath_tls::Tls>> {
        if let Some(tls) = self.tls.get() {
            return Ok(tls.as_ref());
        }
        let loaded = self.global.tls.load().context("TLS settings")?;
        Ok(self.tls.get_or_init(|| loaded).as_ref())
    }

    /// The output format.
    pub fn output(&self) -> Output {
        self.global.output
    }

    /// The job-tracker's URL.
    pub fn job_tracker_url(&self) -> String {
        client::normalize_url(&self.global.job_tracker)
    }

    /// A client of the job-tracker.
    pub async fn job_tracker(&self) -> anyhow::Result<JobTrackerClient> {
        client::job_tracker(&self.job_tracker_url(), self.tls()?).await
    }

    /// The scheduler's URL.
    pub fn scheduler_url(&self) -> String {
        client::normalize_url(&self.global.scheduler)
    }

    /// A client of the scheduler.
    pub async fn scheduler(&self) -> anyhow::Result<SchedulerClient> {
        client::scheduler(&self.scheduler_url(), self.tls()?).await
    }

    /// A client of the chosen host-worker.
    pub async fn host_worker(&self) -> anyhow::Result<HostWorkerClient> {
        let url = self.host_url().await?;
        client::host_worker(&url, self.tls()?).await
    }

    /// The chosen host-worker's URL: `--host` as given, or resolved through the job-tracker when it
    /// is a host id or absent.
    pub async fn host_url(&self) -> anyhow::Result<String> {
        let host = self.global.host.as_deref().map(str::trim);
        let wanted = match host.filter(|h| !h.is_empty()) {
            Some(h) => match uuid::Uuid::try_parse(h) {
                Ok(id) => Some(id.hyphenated().to_string()),
                Err(_) => return Ok(client::normalize_url(h)),
            },
            None => None,
        };
        let hosts = self.registered_hosts().await?;
        let found = match &wanted {
            Some(id) => hosts.into_iter().find(|h| &h.host_id == id),
            None => hosts.into_iter().next(),
        };
        match (found, wanted) {
            (Some(host), _) => Ok(client::normalize_url(&host.address)),
            (None, Some(id)) => bail!(
                "host {id} is not registered with the job-tracker at {}",
                self.job_tracker_url()
            ),
            (None, None) => bail!(
                "no host-worker is registered with the job-tracker at {}; start one or pass --host",
                self.job_tracker_url()
            ),
        }
    }

    /// The live hosts, from the job-tracker.
    pub async fn registered_hosts(&self) -> anyhow::Result<Vec<pb::Host>> {
        let mut jt = self.job_tracker().await?;
        Ok(jt
            .list_registered_hosts(pb::ListRegisteredHostsRequest {})
            .await
            .context("list registered hosts")?
            .into_inner()
            .hosts)
    }
}

/// Fetches every page of a paginated list: `fetch(page_token)` answers one page's items and its
/// `next_page_token`. Fails when the server answers the same token twice, which would loop forever.
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token.clone()).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        if next == token {
            bail!("the server answered the same page token twice: {next:?}");
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn all_pages_follows_tokens_and_stops_on_a_repeated_one() {
        let pages = all_pages(|token| async move {
            Ok(match token.as_str() {
                "" => (vec![1, 2], "a".to_string()),
                "a" => (vec![3], "b".to_string()),
                _ => (vec![4], String::new()),
            })
        })
        .await
        .unwrap();
        assert_eq!(pages, [1, 2, 3, 4]);
        let stuck = all_pages(|_| async { Ok((vec![0], "same".to_string())) }).await;
        assert!(stuck.unwrap_err().to_string().contains("same page token"));
    }
}
