//! The host-worker: VDSM's role on one host. It serves storage verbs on the shared storage root, runs
//! CopyData jobs within its job slots, holds volume leases under its etcd session lease, and fences
//! itself (kills every copy) when it cannot renew that lease in time.
#![warn(missing_docs)]

pub mod backing;
mod copier;
pub mod copy;
pub mod copy_failure;
mod copy_run;
pub mod error;
pub mod fence;
pub mod health;
pub mod identity;
pub mod image_files;
pub mod jobs;
pub mod metrics;
pub mod native_copier;
pub mod qemu;
pub mod reconcile;
pub mod registration;
pub mod reporter;
pub mod service;
pub mod spans;
pub mod spm;
pub mod storage;
pub mod view_mode;
pub mod watchdog;
pub mod worker;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use datapath_api::{ids::HostId, pb::host_worker_service_server::HostWorkerServiceServer};
use datapath_coord::{session::Session, EtcdOptions};
use datapath_server::{health::ServerHealth, ServerOptions};
use tokio::{net::TcpListener, sync::Semaphore};
use tonic::service::Routes;
use tracing::{info, warn};

/// Configuration: flags, each with an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "host-worker",
    about = "The datapath host-worker (VDSM's role on one host)"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "DATAPATH_LISTEN", default_value = "127.0.0.1:7301")]
    pub listen: SocketAddr,
    /// host:port that others use to reach this host (default: the listen address).
    #[arg(long, env = "DATAPATH_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// This host's id; by default the one persisted in the state directory, or a new one.
    #[arg(long, env = "DATAPATH_HOST_ID")]
    pub host_id: Option<HostId>,
    /// Where the host id is persisted.
    #[arg(
        long,
        env = "DATAPATH_STATE_DIR",
        default_value = "./datapath-data/host"
    )]
    pub state_dir: PathBuf,
    /// etcd.
    #[command(flatten)]
    pub etcd: EtcdOptions,
    /// The shared storage root holding the storage domains.
    #[arg(
        long,
        env = "DATAPATH_STORAGE_ROOT",
        default_value = "./datapath-data/storage"
    )]
    pub storage_root: PathBuf,
    /// Copies run at once; more wait PENDING.
    #[arg(long, env = "DATAPATH_JOB_SLOTS", default_value_t = 2)]
    pub job_slots: u32,
    /// Copies that may wait PENDING for a slot; CopyData beyond them is refused
    /// (RESOURCE_EXHAUSTED), so a flood of requests cannot grow the host's queue without bound.
    #[arg(long, env = "DATAPATH_MAX_QUEUED_JOBS", default_value_t = 256)]
    pub max_queued_jobs: usize,
    /// The largest volume CreateVolume makes, in bytes (16 TiB): a preallocated volume or a clone
    /// cannot fill a storage domain by one request.
    #[arg(long, env = "DATAPATH_MAX_VOLUME_CAPACITY", default_value_t = datapath_api::limits::DEFAULT_MAX_VOLUME_CAPACITY)]
    pub max_volume_capacity: u64,
    /// TTL of the etcd session lease; copies are killed before it can expire unrenewed.
    #[arg(long, env = "DATAPATH_SESSION_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// Bandwidth limit of one copy in bytes per second (qemu-img's `-r`), like Cinder's
    /// `volume_copy_bps_limit`; 0 is unlimited.
    #[arg(long, env = "DATAPATH_COPY_BANDWIDTH_LIMIT", default_value_t = 0)]
    pub copy_bandwidth_limit: u64,
    /// FOR BENCHMARKS ONLY (the control plane's scale benchmark, as kubemark's hollow nodes): bytes
    /// per second at which a copy is *simulated* — no qemu-img runs and no data byte is read or
    /// written; the job's progress advances at this rate — while everything else (the source
    /// check and read holds, the lease, the ILLEGAL mark, the generation commit, the job's
    /// reports) is real. A destination then holds what it was created with. 0 (the default): off.
    #[arg(long, env = "DATAPATH_SIMULATED_COPY_RATE", default_value_t = 0)]
    pub simulated_copy_rate: u64,
    /// What copies a volume's bytes: `qemu-img` (`qemu-img convert`, its `-r` the per-copy limit
    /// or the host limit split per slot), or `native` (the copier over NBD: `qemu-nbd` at both
    /// ends, only the source's data read, the host limit one budget shared by the running copies;
    /// being built, issue 14).
    #[arg(long, env = "DATAPATH_COPIER", value_enum, default_value = "qemu-img")]
    pub copier: native_copier::CopierKind,
    /// Keep a watched copy of every volume's lease, read holds and generation record, so that
    /// GetVolumeInfo and CopyData's checks cost no etcd round trip. Each host's watch makes every
    /// such write a message from etcd to every host, so `auto` keeps it only while the cluster
    /// has at most 32 hosts (`view_mode.rs`).
    #[arg(long, env = "DATAPATH_VOLUME_VIEW", value_enum, default_value_t = view_mode::VolumeViewMode::Auto)]
    pub volume_view: view_mode::VolumeViewMode,
    /// Bandwidth limit of the whole host in bytes per second (its storage link), like Proxmox's
    /// `bwlimit`: each of the job slots gets an equal share, so the host's copies together never
    /// exceed it; 0 is unlimited.
    #[arg(long, env = "DATAPATH_HOST_BANDWIDTH_LIMIT", default_value_t = 0)]
    pub host_bandwidth_limit: u64,
    /// The job-tracker's URL.
    #[arg(
        long,
        env = "DATAPATH_JOB_TRACKER",
        default_value = "http://127.0.0.1:7300"
    )]
    pub job_tracker: String,
    /// Address to serve Prometheus metrics on, at `/metrics` (plain HTTP).
    #[arg(
        long,
        env = "DATAPATH_METRICS_LISTEN",
        default_value = "127.0.0.1:9301"
    )]
    pub metrics_listen: SocketAddr,
    /// Server-wide settings.
    #[command(flatten)]
    pub server: ServerOptions,
}

/// Serves the host on `listener` until `shutdown` resolves; then resigns the SPM role if it holds it,
/// stops its copies and revokes its session lease so its registration and volume leases disappear at
/// once.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let _metrics = datapath_server::MetricsEndpoint::start("host-worker", config.metrics_listen)
        .await
        .with_context(|| format!("bind the metrics listener {}", config.metrics_listen))?;
    let host_id = identity::load_or_create(&config.state_dir, config.host_id)?;
    let nbd_dir = native_copier::prepare_socket_root(&config.state_dir)
        .context("the native copier's socket directory")?;
    let tls = datapath_server::load_tls(&config.server).context("TLS settings")?;
    if let Some(tls) = &tls {
        // The host id is the persisted one; the certificate must be issued for it.
        let wanted = datapath_tls::Identity::Host(host_id);
        anyhow::ensure!(
            *tls.identity() == wanted,
            "the certificate names {}, but this host is {wanted}: issue it with \
             `dpctl certs issue --identity host/{host_id}`",
            tls.identity()
        );
    }
    let address = config
        .advertise_address
        .clone()
        .unwrap_or(listener.local_addr()?.to_string());
    let storage = storage::Storage::open(&config.storage_root)
        .with_context(|| format!("open storage root {}", config.storage_root.display()))?;
    let swept = storage.sweep_interrupted_deletions();
    if swept > 0 {
        info!(swept, "finished image deletions interrupted by a crash");
    }
    let coord = config
        .etcd
        .connect_tls(tls.as_ref().map(|t| t.client(None)))
        .await
        .context("connect to etcd")?;
    let session = Session::start(&coord, config.session_ttl);
    let worker = Arc::new(worker::Worker {
        host_id,
        storage,
        volumes: datapath_coord::volume_view::VolumeView::unwatched(),
        leases: Arc::new(coord.clone()),
        hosts: Arc::new(coord.clone()),
        coord,
        session: session.subscribe(),
        spm: spm::Spm::default(),
        reporter: reporter::Reporter::new(&config.job_tracker, host_id, tls.as_ref())?,
        jobs: jobs::HostJobs::with_max_pending(config.max_queued_jobs),
        slots: Arc::new(Semaphore::new(config.job_slots.max(1) as usize)),
        job_slots: config.job_slots.max(1),
        copy_bandwidth_limit: copy_limit(&config),
        simulated_copy_rate: config.simulated_copy_rate,
        copier: config.copier,
        nbd_dir,
        host_bandwidth: (config.host_bandwidth_limit > 0).then(|| {
            Arc::new(datapath_copier::TokenBucket::new(
                config.host_bandwidth_limit,
            ))
        }),
        per_copy_limit: config.copy_bandwidth_limit,
        max_volume_capacity: config.max_volume_capacity,
        session_ttl: config.session_ttl,
    });
    metrics::init();
    metrics::watch_host(&worker);
    let (health, health_server) = ServerHealth::new(&["datapath.v1.HostWorkerService"]).await;
    let (registered, registrations) = tokio::sync::watch::channel(None);
    let health_task = tokio::spawn(health::follow(
        health,
        worker.session.clone(),
        registrations,
    ));
    let fencer = tokio::spawn(registration::fence_on_loss(worker.clone()));
    let registrar = tokio::spawn(registration::register(
        worker.clone(),
        address.clone(),
        registered,
    ));
    let elector = tokio::spawn(spm::campaign(worker.clone()));
    let view_mode = tokio::spawn(view_mode::follow(worker.clone(), config.volume_view));
    let routes = Routes::new(health_server).add_service(HostWorkerServiceServer::new(
        service::HostWorkerApi::new(worker.clone()),
    ));
    info!(%host_id, %address, root = %config.storage_root.display(), "host-worker listening");
    let served = datapath_server::serve(
        listener,
        &config.server,
        tls.as_ref(),
        &["datapath.v1.HostWorkerService"],
        routes,
        shutdown,
    )
    .await;
    elector.abort();
    view_mode.abort();
    spm::resign(&worker).await;
    registrar.abort();
    health_task.abort();
    fencer.abort();
    let stopped = worker.jobs.stop_all(jobs::StopReason::Shutdown);
    if stopped > 0 {
        info!(stopped, "stopped running copies");
        // Wait (at most 5 s) for them to end, woken by each change of the host's jobs.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let changed = worker.jobs.changed.notified();
            if worker.jobs.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                warn!("copies still ending after 5 s; shutting down anyway");
                break;
            }
        }
    }
    session.close().await;
    served.context("serve gRPC")
}

/// The limit of one copy: the per-copy limit and the host's share per slot, whichever is tighter.
fn copy_limit(config: &Config) -> u64 {
    let share = config.host_bandwidth_limit / u64::from(config.job_slots.max(1));
    match (config.copy_bandwidth_limit, share) {
        (0, s) => s,
        (c, 0) => c,
        (c, s) => c.min(s),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::Config;

    #[test]
    fn the_host_limit_is_shared_by_the_slots() {
        let parse = |args: &[&str]| {
            let mut all = vec!["host-worker", "--job-slots", "2"];
            all.extend_from_slice(args);
            super::copy_limit(&Config::try_parse_from(all).unwrap())
        };
        assert_eq!(parse(&[]), 0);
        assert_eq!(parse(&["--host-bandwidth-limit", "100"]), 50);
        assert_eq!(
            parse(&[
                "--host-bandwidth-limit",
                "100",
                "--copy-bandwidth-limit",
                "30"
            ]),
            30
        );
        assert_eq!(parse(&["--copy-bandwidth-limit", "30"]), 30);
    }

    #[test]
    fn the_example_environment_file_parses() {
        let text = include_str!("../../../deploy/systemd/host-worker.env.example");
        let args = datapath_server::env_file_args(&Config::command(), text).unwrap();
        let config = Config::try_parse_from(args).unwrap();
        assert_eq!(config.etcd.endpoints.len(), 3);
        assert_eq!(config.metrics_listen.to_string(), "0.0.0.0:9301");
        assert_eq!(config.session_ttl, std::time::Duration::from_secs(10));
    }
}
