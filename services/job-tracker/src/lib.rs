//! The job-tracker: the Job API. The only writer of `jobs/` in etcd; hosts report through it, and the
//! scheduler, dpctl and operators read and watch jobs through it. It keeps no state that matters in
//! memory except progress not yet written (at most half a second of it), so it can be killed at any time.
#![warn(missing_docs)]

pub mod error;
pub mod lost;
pub mod metrics;
pub mod open_jobs;
pub mod service;
pub mod tracker;
pub mod transition;
pub mod watch;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use datapath_api::pb::job_tracker_service_server::JobTrackerServiceServer;
use datapath_coord::{job_store::EtcdJobs, EtcdOptions};
use datapath_server::{
    health::{probe_forever, ProbeTiming, ServerHealth},
    ServerOptions,
};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tracing::info;

/// Configuration: flags, each with an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "job-tracker", about = "The datapath Job API over etcd")]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "DATAPATH_LISTEN", default_value = "127.0.0.1:7300")]
    pub listen: SocketAddr,
    /// etcd.
    #[command(flatten)]
    pub etcd: EtcdOptions,
    /// How long an ended job is kept before etcd deletes it (0s keeps it forever).
    #[arg(long, env = "DATAPATH_JOB_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub job_retention: Duration,
    /// How long a host's registration must have been gone before its unfinished jobs are ended
    /// FAILED (FENCED): it expired with the host's session lease, so the host fenced itself already.
    #[arg(long, env = "DATAPATH_LOST_HOST_GRACE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub lost_host_grace: Duration,
    /// A job still PENDING this long after it was created is ended FAILED (NEVER_STARTED): a
    /// host's queue is bounded, and CreateJob must not fill etcd with jobs that never run.
    #[arg(long, env = "DATAPATH_PENDING_JOB_EXPIRY", default_value = "24h", value_parser = humantime::parse_duration)]
    pub pending_job_expiry: Duration,
    /// Unended (PENDING or RUNNING) jobs one host may have; CreateJob beyond it is refused
    /// RESOURCE_EXHAUSTED (HOST_JOBS_FULL). Above a host's --max-queued-jobs plus its slots, so it
    /// stops only a host that lies about its queue. 0: no limit.
    #[arg(long, env = "DATAPATH_MAX_OPEN_JOBS_PER_HOST", default_value_t = 1024)]
    pub max_open_jobs_per_host: usize,
    /// Address to serve Prometheus metrics on, at `/metrics` (plain HTTP).
    #[arg(
        long,
        env = "DATAPATH_METRICS_LISTEN",
        default_value = "127.0.0.1:9300"
    )]
    pub metrics_listen: SocketAddr,
    /// Server-wide settings.
    #[command(flatten)]
    pub server: ServerOptions,
}

/// Serves the Job API on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let _metrics = datapath_server::MetricsEndpoint::start("job-tracker", config.metrics_listen)
        .await
        .with_context(|| format!("bind the metrics listener {}", config.metrics_listen))?;
    metrics::init();
    let tls = datapath_server::load_tls(&config.server).context("TLS settings")?;
    let coord = config
        .etcd
        .connect_tls(tls.as_ref().map(|t| t.client(None)))
        .await
        .context("connect to etcd")?;
    let jobs = Arc::new(EtcdJobs::new(coord.clone(), config.job_retention));
    let jobs_view = jobs.view().clone();
    let tracker = tracker::Tracker::new(jobs, config.max_open_jobs_per_host);
    let (health, health_server) = ServerHealth::new(&["datapath.v1.JobTrackerService"]).await;
    let flusher = tokio::spawn({
        let tracker = tracker.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                tracker.flush_due().await;
            }
        }
    });
    let sweeper = tokio::spawn(lost::sweep(
        tracker.clone(),
        coord.cluster_view(),
        jobs_view,
        config.lost_host_grace,
        config.pending_job_expiry,
    ));
    // Its liveness is its store's: every call reads or writes etcd.
    let prober = tokio::spawn(probe_forever(health, ProbeTiming::default(), {
        let coord = coord.clone();
        move || {
            let coord = coord.clone();
            async move { coord.probe().await }
        }
    }));
    let routes = Routes::new(health_server).add_service(JobTrackerServiceServer::new(
        service::JobTrackerApi::new(
            tracker.clone(),
            coord,
            tls.clone(),
            config.server.stream_limits(),
        ),
    ));
    info!(address = %listener.local_addr()?, "job-tracker listening");
    let served = datapath_server::serve(
        listener,
        &config.server,
        tls.as_ref(),
        &["datapath.v1.JobTrackerService"],
        routes,
        shutdown,
    )
    .await;
    prober.abort();
    sweeper.abort();
    flusher.abort();
    tracker.flush_due().await;
    served.context("serve gRPC")
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::Config;

    #[test]
    fn the_example_environment_file_parses() {
        let text = include_str!("../../../deploy/systemd/job-tracker.env.example");
        let args = datapath_server::env_file_args(&Config::command(), text).unwrap();
        let config = Config::try_parse_from(args).unwrap();
        assert_eq!(config.job_retention, std::time::Duration::from_secs(3600));
        assert_eq!(config.metrics_listen.to_string(), "0.0.0.0:9300");
        assert!(datapath_server::env_file_args(&Config::command(), "DATAPATH_NO_SUCH=1").is_err());
    }
}
