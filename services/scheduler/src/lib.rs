//! The scheduler: the engine. It runs disk operations (move a disk, clone a disk from a template) as
//! flows persisted in etcd, creating structure on the SPM and spreading the data copies over every
//! host through a pluggable placement policy. Every replica serves the API; one, elected, runs the
//! flows, and a standby resumes them from etcd when it takes over.
#![warn(missing_docs)]

pub mod api;
pub mod clients;
pub mod engine;
pub mod error;
pub mod flow;
pub mod job_watch;
pub mod leader;
pub mod metrics;
pub mod selection;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use datapath_api::pb::scheduler_service_server::SchedulerServiceServer;
use datapath_coord::{session::Session, EtcdOptions};
use datapath_server::{
    health::{probe_forever, ProbeTiming, ServerHealth},
    ServerOptions,
};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tracing::info;

/// Configuration: flags, each with an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "scheduler", about = "The datapath scheduler (the engine)")]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "DATAPATH_LISTEN", default_value = "127.0.0.1:7302")]
    pub listen: SocketAddr,
    /// host:port others use to reach this replica (default: the listen address).
    #[arg(long, env = "DATAPATH_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// etcd.
    #[command(flatten)]
    pub etcd: EtcdOptions,
    /// The job-tracker's URL.
    #[arg(
        long,
        env = "DATAPATH_JOB_TRACKER",
        default_value = "http://127.0.0.1:7300"
    )]
    pub job_tracker: String,
    /// How a data step's host is chosen.
    #[arg(
        long,
        env = "DATAPATH_HOST_SELECTION",
        value_enum,
        default_value = "least-loaded"
    )]
    pub host_selection: selection::Policy,
    /// The external HostSelectorService, for `--host-selection external`.
    #[arg(long, env = "DATAPATH_HOST_SELECTOR_URL")]
    pub host_selector_url: Option<String>,
    /// Volumes of one chain copied at once (1: one by one, as the seed did).
    #[arg(long, env = "DATAPATH_PARALLEL_COPIES", default_value_t = 1)]
    pub parallel_copies: usize,
    /// Flows in their start at once (structure on the SPM, placement, first CopyData); other
    /// accepted operations wait in accept order. Flows past their start never wait.
    #[arg(long, env = "DATAPATH_MAX_STARTING_FLOWS", default_value_t = 16)]
    pub max_starting_flows: usize,
    /// Copy attempts per volume, each on another host when one can, before the operation rolls back.
    #[arg(long, env = "DATAPATH_COPY_ATTEMPTS", default_value_t = 3)]
    pub copy_attempts: u32,
    /// How long a volume's copy keeps retrying transient conflicts (an image lock or a volume lease
    /// still held, a host that does not take the copy) before the operation rolls back; such tries
    /// do not count as attempts.
    #[arg(long, env = "DATAPATH_COPY_RETRY_BUDGET", default_value = "2m", value_parser = humantime::parse_duration)]
    pub copy_retry_budget: Duration,
    /// How long an ended operation stays visible.
    #[arg(long, env = "DATAPATH_OPERATION_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub operation_retention: Duration,
    /// How long a step waits for a live host reaching both domains before the operation fails.
    #[arg(long, env = "DATAPATH_NO_HOST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub no_host_timeout: Duration,
    /// Fault tests only: kill this scheduler (SIGKILL) when a flow reaches this point.
    #[arg(long, env = "DATAPATH_FAILPOINT", hide = true, value_enum)]
    pub failpoint: Option<flow::failpoint::Failpoint>,
    /// TTL of the session lease the scheduler election is bound to; a standby takes over within it.
    #[arg(long, env = "DATAPATH_SESSION_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// Address to serve Prometheus metrics on, at `/metrics` (plain HTTP).
    #[arg(
        long,
        env = "DATAPATH_METRICS_LISTEN",
        default_value = "127.0.0.1:9302"
    )]
    pub metrics_listen: SocketAddr,
    /// Server-wide settings.
    #[command(flatten)]
    pub server: ServerOptions,
}

/// Serves the scheduler on `listener` until `shutdown` resolves, campaigning to run the flows.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let address = config
        .advertise_address
        .clone()
        .unwrap_or(listener.local_addr()?.to_string());
    let _metrics = datapath_server::MetricsEndpoint::start("scheduler", config.metrics_listen)
        .await
        .with_context(|| format!("bind the metrics listener {}", config.metrics_listen))?;
    metrics::init();
    let tls = datapath_server::load_tls(&config.server).context("TLS settings")?;
    let coord = config
        .etcd
        .connect_tls(tls.as_ref().map(|t| t.client(None)))
        .await
        .context("connect to etcd")?;
    let clients = clients::Clients::new(&config.job_tracker, tls.clone())?;
    let engine = Arc::new(engine::Engine {
        coord: coord.clone(),
        view: coord.cluster_view(),
        jobs: job_watch::JobWatch::start(clients.tracker(), coord.clone()),
        unplaced: Default::default(),
        placement_queues: Default::default(),
        clients,
        selector: selection::build(
            config.host_selection,
            config.host_selector_url.as_deref(),
            tls.as_ref(),
        )?,
        settings: engine::Settings {
            parallel_copies: config.parallel_copies.max(1),
            copy_attempts: config.copy_attempts.max(1),
            copy_retry_budget: config.copy_retry_budget,
            retention: config.operation_retention,
            no_host_timeout: config.no_host_timeout,
            failpoint: config.failpoint,
        },
        admission: flow::admission::Admission::new(config.max_starting_flows),
        locks: Arc::new(coord.clone()),
        flows: Arc::new(datapath_coord::flow_store::EtcdFlows::new(
            coord.clone(),
            config.operation_retention,
        )),
        placed: Default::default(),
        read_turn: Default::default(),
        unanswered: Default::default(),
    });
    let session = Session::start(&coord, config.session_ttl);
    let leader = tokio::spawn({
        let (engine, address) = (engine.clone(), address.clone());
        let state = session.subscribe();
        async move { leader::lead(engine, state, address).await }
    });
    // Its liveness is its store's: every API call reads etcd (a standby serves too).
    let (health, health_server) = ServerHealth::new(&["datapath.v1.SchedulerService"]).await;
    let prober = tokio::spawn(probe_forever(health, ProbeTiming::default(), move || {
        let coord = coord.clone();
        async move { coord.probe().await }
    }));
    let routes = Routes::new(health_server).add_service(SchedulerServiceServer::new(
        api::SchedulerApi::new(engine, config.server.stream_limits()),
    ));
    info!(%address, policy = ?config.host_selection, "scheduler listening");
    let served = datapath_server::serve(
        listener,
        &config.server,
        tls.as_ref(),
        &["datapath.v1.SchedulerService"],
        routes,
        shutdown,
    )
    .await;
    leader.abort();
    prober.abort();
    session.close().await;
    served.context("serve gRPC")
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::Config;

    #[test]
    fn the_example_environment_file_parses() {
        let text = include_str!("../../../deploy/systemd/scheduler.env.example");
        let args = datapath_server::env_file_args(&Config::command(), text).unwrap();
        let config = Config::try_parse_from(args).unwrap();
        assert_eq!(config.parallel_copies, 2);
        assert_eq!(config.metrics_listen.to_string(), "0.0.0.0:9302");
        assert_eq!(config.host_selection, crate::selection::Policy::LeastLoaded);
        assert_eq!(
            config.operation_retention,
            std::time::Duration::from_secs(24 * 3600)
        );
    }
}
