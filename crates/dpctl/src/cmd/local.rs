//! `dpctl local up`: runs a local cluster in the foreground, prints its endpoints and
//! `<dir>/cluster.env`, and stops it in order on Ctrl-C, SIGTERM or SIGHUP.
use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Subcommand;
use tokio::signal::unix::{signal, SignalKind};

use crate::local::{Cluster, ClusterConfig, ManagedProcess};

/// Local cluster commands.
#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start etcd, a job-tracker, N host-workers and a scheduler; run until interrupted.
    Up(UpArgs),
}

/// `local up` flags.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Number of host-workers.
    #[arg(long, env = "DATAPATH_LOCAL_HOSTS", default_value_t = 1)]
    hosts: usize,
    /// The cluster's directory: etcd data, logs, storage root, hosts' state.
    #[arg(long, env = "DATAPATH_LOCAL_DIR", default_value = ".datapath-local")]
    dir: PathBuf,
    /// The host-workers' session lease TTL.
    #[arg(long, env = "DATAPATH_SESSION_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// Jobs each host-worker runs at once.
    #[arg(long, env = "DATAPATH_JOB_SLOTS", default_value_t = 2)]
    job_slots: u32,
    /// How long the job-tracker keeps ended jobs.
    #[arg(long, env = "DATAPATH_JOB_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    job_retention: Duration,
    /// The etcd key prefix.
    #[arg(long, env = "DATAPATH_ETCD_PREFIX", default_value = "/datapath/")]
    etcd_prefix: String,
    /// The scheduler's host-selection policy.
    #[arg(long, env = "DATAPATH_HOST_SELECTION", default_value = "least-loaded")]
    host_selection: String,
    /// The external HostSelectorService (for `--host-selection external`).
    #[arg(long, env = "DATAPATH_HOST_SELECTOR_URL")]
    host_selector_url: Option<String>,
    /// Volumes of one chain the scheduler copies at once.
    #[arg(long, env = "DATAPATH_PARALLEL_COPIES", default_value_t = 1)]
    parallel_copies: usize,
    /// Each host-worker's bandwidth limit in bytes per second (0: unlimited).
    #[arg(long, env = "DATAPATH_HOST_BANDWIDTH_LIMIT", default_value_t = 0)]
    host_bandwidth_limit: u64,
    /// Where the service binaries are (default: beside dpctl, then PATH).
    #[arg(long, env = "DATAPATH_BIN_DIR")]
    bin_dir: Option<PathBuf>,
}

impl LocalCommand {
    /// Runs it. With the global `--insecure` the services run in plaintext without authentication;
    /// otherwise on mutual TLS with certificates the launcher makes in `<dir>/pki`.
    pub async fn run(self, insecure: bool) -> anyhow::Result<()> {
        let Self::Up(args) = self;
        up(args, insecure).await
    }
}

async fn up(args: UpArgs, insecure: bool) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolve directory {}", args.dir.display()))?;
    let config = ClusterConfig {
        hosts: args.hosts,
        dir: dir.clone(),
        bin_dir: args.bin_dir,
        session_ttl: args.session_ttl,
        job_slots: args.job_slots,
        job_retention: args.job_retention,
        etcd_prefix: args.etcd_prefix,
        env: Vec::new(),
        host_selection: args.host_selection,
        host_selector_url: args.host_selector_url,
        parallel_copies: args.parallel_copies,
        host_bandwidth_limit: args.host_bandwidth_limit,
        host_worker_extra_args: Vec::new(),
        etcd_members: 1,
        isolate_hosts: false,
        own_process_groups: true,
        insecure,
    };
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("listen for SIGHUP")?;

    let mut cluster = Cluster::start(config)
        .await
        .context("start the local cluster")?;
    let env_path = dir.join("cluster.env");
    cluster.write_env(&env_path)?;
    println!("etcd         {}", cluster.etcd_endpoints().join(","));
    println!("scheduler    {}", cluster.scheduler_url());
    println!("job-tracker  {}", cluster.job_tracker_url());
    for (i, (url, id)) in cluster
        .host_urls()
        .iter()
        .zip(cluster.host_ids())
        .enumerate()
    {
        println!("host-{i:<7} {url}  {id}");
    }
    println!("storage      {}", cluster.storage_root().display());
    println!("logs         {}", dir.join("logs").display());
    match cluster.pki() {
        Some(_) => println!(
            "tls          mutual TLS, certificates in {}",
            dir.join("pki").display()
        ),
        None => println!("tls          none (--insecure): plaintext, no authentication"),
    }
    println!("env          {}", env_path.display());
    println!("(use it with: set -a; . {}; set +a)", env_path.display());
    eprintln!("dpctl: local cluster up; Ctrl-C stops it");

    let mut reported = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => break,
            _ = tick.tick() => report_exits(&mut cluster, &mut reported),
        }
    }
    eprintln!("dpctl: stopping the local cluster");
    cluster.stop().await.context("stop the local cluster")
}

/// Warns once about each process that has exited on its own.
fn report_exits(cluster: &mut Cluster, reported: &mut HashSet<String>) {
    let mut check = |process: &mut ManagedProcess| {
        if let Some(status) = process.exit_status() {
            if reported.insert(process.name().to_string()) {
                eprintln!(
                    "dpctl: warning: {} exited ({status}); see {}",
                    process.name(),
                    process.log_path().display()
                );
            }
        }
    };
    check(cluster.etcd_mut());
    check(cluster.job_tracker_mut());
    for i in 0..cluster.host_count() {
        check(cluster.host_mut(i));
    }
}
