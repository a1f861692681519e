//! A running local cluster: start-up in dependency order (etcd, job-tracker, host-workers, scheduler), each
//! waited on until ready, then until one host is elected SPM; accessors for endpoints and processes;
//! restarts that wait for SERVING (and an SPM) again; the orderly stop. `cluster.env` is in
//! `cluster_env.rs`.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use datapath_api::ids::HostId;
use datapath_coord::{
    election::{Elections as _, Role},
    Coord,
};

use datapath_tls::{Identity, Tls};

use super::{
    config::{host_worker_args, job_tracker_args, scheduler_args, ClusterConfig},
    etcd::Etcd,
    etcd_auth,
    freezer::Freezer,
    netns::NetworkLab,
    pki::{self, Pki},
    process::{ManagedProcess, ProcessSpec},
    support::{find_binary, free_ports, search_dirs, wait_serving},
};

/// How long a service may take to answer SERVING after it starts.
pub const SERVING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Cluster::stop`] waits for each process after SIGTERM before SIGKILL.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A gRPC service process, its URL and where it serves `/metrics`.
#[derive(Debug)]
struct Service {
    process: ManagedProcess,
    addr: SocketAddr,
    metrics: SocketAddr,
    /// Served over TLS (`https://`).
    secure: bool,
}

impl Service {
    fn url(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// A host-worker and the id it registered under.
#[derive(Debug)]
struct Host {
    /// Declared first: a frozen host is thawed before its process is killed.
    frozen: Option<Freezer>,
    service: Service,
    state_dir: PathBuf,
    host_id: String,
}

/// etcd, a job-tracker and N host-workers, running as child processes. Dropping it kills them all.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    etcd: Etcd,
    job_tracker: Service,
    hosts: Vec<Host>,
    scheduler: Service,
    /// The certificates, unless the cluster runs `--insecure`.
    pki: Option<Pki>,
    /// Declared last: dropped after every process is killed.
    lab: Option<NetworkLab>,
}

impl Cluster {
    /// Starts etcd (with empty data), the job-tracker, then `config.hosts` host-workers sharing one
    /// storage root, and waits until each is ready (etcd healthy, services SERVING) and one host is
    /// SPM.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Self> {
        let dirs = search_dirs(config.bin_dir.as_deref());
        let job_tracker_bin = find_binary("job-tracker", &dirs)?;
        let host_worker_bin = find_binary("host-worker", &dirs)?;
        let scheduler_bin = find_binary("scheduler", &dirs)?;
        let etcd_bin = find_binary("etcd", &dirs)?;

        prepare_dirs(&config)?;
        let lab = match config.isolate_hosts {
            true => Some(NetworkLab::create(config.hosts)?),
            false => None,
        };
        let gateway = lab.as_ref().map(NetworkLab::gateway);
        let host_ids = (0..config.hosts)
            .map(|i| pki::host_id(&config.host_state_dir(i)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pki = match config.insecure {
            true => None,
            false => Some(pki::prepare_for(&config, &host_ids, gateway, lab.as_ref())?),
        };
        let etcd = Etcd::start_with(
            &etcd_bin,
            &config.dir,
            base_spec(&config),
            gateway,
            config.etcd_members,
            pki.as_ref().map(Pki::etcd_server).as_ref(),
        )
        .await?;
        if let Some(pki) = &pki {
            etcd_auth::lock(&etcd.endpoints(), &config.etcd_prefix, pki)
                .await
                .context("lock etcd to datapath (users, roles, authentication)")?;
        }
        let etcd_url = etcd.endpoints().join(",");
        let etcd_for_hosts = gateway.map_or(etcd_url.clone(), |ip| etcd.endpoints_on(ip).join(","));
        let local = |ip: Option<Ipv4Addr>, port| {
            SocketAddr::from((ip.unwrap_or(Ipv4Addr::LOCALHOST), port))
        };
        let tls_args = |identity: &Identity| match &pki {
            Some(pki) => pki.args(identity),
            None => vec!["--insecure".to_string()],
        };
        let client_tls = pki.as_ref().map(Pki::client);
        let secure = pki.is_some();

        let ports = free_ports(2 * (config.hosts + 2))?;
        let (ports, metrics_ports) = ports.split_at(config.hosts + 2);
        let metrics_listen = |addr: SocketAddr| ["--metrics-listen".to_string(), addr.to_string()];
        let metrics = local(gateway, metrics_ports[0]);
        let spec = ProcessSpec {
            name: "job-tracker".into(),
            program: job_tracker_bin,
            ..base_spec(&config)
        }
        .args(job_tracker_args(
            &config,
            local(gateway, ports[0]),
            &etcd_url,
        ))
        .args(tls_args(&Identity::JobTracker))
        .args(metrics_listen(metrics));
        let mut job_tracker = Service {
            process: ManagedProcess::start(spec, &config.log_dir())?,
            addr: local(gateway, ports[0]),
            metrics,
            secure,
        };
        let job_tracker_url = job_tracker.url();
        wait_serving(
            &mut job_tracker.process,
            &job_tracker_url,
            client_tls,
            SERVING_TIMEOUT,
        )
        .await?;

        let mut hosts = Vec::with_capacity(config.hosts);
        for (i, &port) in ports[1..=config.hosts].iter().enumerate() {
            let addr = local(lab.as_ref().map(|l| l.host_addr(i)), port);
            let metrics = SocketAddr::new(addr.ip(), metrics_ports[i + 1]);
            let args = host_worker_args(&config, i, addr, &etcd_for_hosts, &job_tracker.url());
            let spec = match &lab {
                // `ip netns exec` execs the worker in place: the pid stays the worker's.
                Some(lab) => ProcessSpec {
                    name: format!("host-{i}"),
                    program: "ip".into(),
                    ..base_spec(&config)
                }
                .args(lab.exec_prefix(i))
                .args([host_worker_bin.display().to_string()]),
                None => ProcessSpec {
                    name: format!("host-{i}"),
                    program: host_worker_bin.clone(),
                    ..base_spec(&config)
                },
            }
            .args(args)
            .args(tls_args(&Identity::Host(host_ids[i])))
            .args(metrics_listen(metrics));
            hosts.push(Host {
                frozen: None,
                service: Service {
                    process: ManagedProcess::start(spec, &config.log_dir())?,
                    addr,
                    metrics,
                    secure,
                },
                state_dir: config.host_state_dir(i),
                host_id: String::new(),
            });
        }
        let scheduler_port = ports[config.hosts + 1];
        let metrics = local(None, metrics_ports[config.hosts + 1]);
        let spec = ProcessSpec {
            name: "scheduler".into(),
            program: scheduler_bin,
            ..base_spec(&config)
        }
        .args(scheduler_args(
            &config,
            scheduler_port,
            &etcd_url,
            &job_tracker_url,
        ))
        .args(tls_args(&Identity::Scheduler))
        .args(metrics_listen(metrics));
        let scheduler = Service {
            process: ManagedProcess::start(spec, &config.log_dir())?,
            addr: local(None, scheduler_port),
            metrics,
            secure,
        };
        let mut cluster = Self {
            config,
            etcd,
            job_tracker,
            hosts,
            scheduler,
            pki,
            lab,
        };
        let client_tls = cluster.pki.as_ref().map(Pki::client);
        let waits = cluster
            .hosts
            .iter_mut()
            .enumerate()
            .map(|(i, host)| wait_host(host, i, client_tls));
        futures::future::try_join_all(waits).await?;
        if cluster.host_count() > 0 {
            cluster.wait_spm().await?;
        }
        let url = cluster.scheduler.url();
        let client_tls = cluster.pki.as_ref().map(Pki::client);
        wait_serving(
            &mut cluster.scheduler.process,
            &url,
            client_tls,
            SERVING_TIMEOUT,
        )
        .await?;
        Ok(cluster)
    }

    /// The certificates, unless the cluster runs `--insecure`.
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// Its configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// etcd's client URLs.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd.endpoints()
    }

    /// The etcd key prefix every service uses.
    pub fn etcd_prefix(&self) -> &str {
        &self.config.etcd_prefix
    }

    /// The job-tracker's URL.
    pub fn job_tracker_url(&self) -> String {
        self.job_tracker.url()
    }

    /// The network lab the hosts run in, when `isolate_hosts` is set: cut and restore their links.
    pub fn network(&self) -> Option<&NetworkLab> {
        self.lab.as_ref()
    }

    /// The scheduler's URL.
    pub fn scheduler_url(&self) -> String {
        self.scheduler.url()
    }

    /// Where the job-tracker serves `/metrics`.
    pub fn job_tracker_metrics(&self) -> SocketAddr {
        self.job_tracker.metrics
    }

    /// Where the scheduler serves `/metrics`.
    pub fn scheduler_metrics(&self) -> SocketAddr {
        self.scheduler.metrics
    }

    /// Where host `i` serves `/metrics`. Panics when `i` is out of range.
    pub fn host_metrics(&self, i: usize) -> SocketAddr {
        self.hosts[i].service.metrics
    }

    /// The scheduler's process.
    pub fn scheduler_mut(&mut self) -> &mut ManagedProcess {
        &mut self.scheduler.process
    }

    /// Restarts the scheduler (stopping it first if it runs; kill it first to simulate a crash);
    /// waits until SERVING.
    pub async fn restart_scheduler(&mut self) -> anyhow::Result<()> {
        let url = self.scheduler.url();
        let process = &mut self.scheduler.process;
        process.restart().await.context("restart scheduler")?;
        let tls = self.pki.as_ref().map(Pki::client);
        wait_serving(process, &url, tls, SERVING_TIMEOUT).await
    }

    /// Number of host-workers.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// The host-workers' URLs, by index.
    pub fn host_urls(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.service.url()).collect()
    }

    /// Host `i`'s URL. Panics when `i` is out of range.
    pub fn host_url(&self, i: usize) -> String {
        self.hosts[i].service.url()
    }

    /// The host-workers' ids, by index.
    pub fn host_ids(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.host_id.clone()).collect()
    }

    /// The index of the host-worker whose id is `host_id`, if it is one of this cluster's.
    pub fn host_index(&self, host_id: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.host_id == host_id)
    }

    /// Host `i`'s id. Panics when `i` is out of range.
    pub fn host_id(&self, i: usize) -> &str {
        &self.hosts[i].host_id
    }

    /// Host `i`'s state directory. Panics when `i` is out of range.
    pub fn host_state_dir(&self, i: usize) -> &Path {
        &self.hosts[i].state_dir
    }

    /// The storage root every host-worker shares.
    pub fn storage_root(&self) -> PathBuf {
        self.config.storage_root()
    }

    /// etcd.
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// etcd's process, to signal or kill it.
    pub fn etcd_mut(&mut self) -> &mut ManagedProcess {
        self.etcd.process_mut()
    }

    /// The job-tracker's process.
    pub fn job_tracker_mut(&mut self) -> &mut ManagedProcess {
        &mut self.job_tracker.process
    }

    /// Host `i`'s process. Panics when `i` is out of range.
    pub fn host_mut(&mut self, i: usize) -> &mut ManagedProcess {
        &mut self.hosts[i].service.process
    }

    /// etcd member `i`'s process. Panics when `i` is out of range.
    pub fn etcd_member_mut(&mut self, i: usize) -> &mut ManagedProcess {
        self.etcd.member_mut(i)
    }

    /// Which etcd member leads now, if any.
    pub async fn etcd_leader(&self) -> Option<usize> {
        self.etcd.leader().await
    }

    /// Restarts etcd on the same ports and data (stopping it first if it runs); waits until healthy.
    pub async fn restart_etcd(&mut self) -> anyhow::Result<()> {
        self.etcd.restart().await
    }

    /// Restarts the job-tracker (stopping it first if it runs); waits until SERVING.
    pub async fn restart_job_tracker(&mut self) -> anyhow::Result<()> {
        let url = self.job_tracker.url();
        let process = &mut self.job_tracker.process;
        process.restart().await.context("restart job-tracker")?;
        let tls = self.pki.as_ref().map(Pki::client);
        wait_serving(process, &url, tls, SERVING_TIMEOUT).await
    }

    /// Freezes host `i` whole — its host-worker, copier watchdogs and qemu-img — with the cgroup
    /// freezer (see `freezer.rs`); it stays frozen until [`Cluster::thaw_host`] or the cluster drops.
    /// Returns the pids frozen. Panics when `i` is out of range.
    pub fn freeze_host(&mut self, i: usize) -> anyhow::Result<Vec<u32>> {
        let host = &mut self.hosts[i];
        let pid = host
            .service
            .process
            .pid()
            .with_context(|| format!("host-{i} is not running"))?;
        let group = Freezer::freeze_tree(pid).with_context(|| format!("freeze host-{i}"))?;
        let pids = group.pids();
        host.frozen = Some(group);
        Ok(pids)
    }

    /// Thaws host `i` if it is frozen. Panics when `i` is out of range.
    pub fn thaw_host(&mut self, i: usize) -> anyhow::Result<()> {
        match self.hosts[i].frozen.take() {
            Some(group) => group.thaw().with_context(|| format!("thaw host-{i}")),
            None => Ok(()),
        }
    }

    /// Restarts host `i` (stopping it first if it runs; kill it first to simulate a crash); waits
    /// until SERVING, reads its host id again, and waits until some host is SPM. Panics when `i` is
    /// out of range.
    pub async fn restart_host(&mut self, i: usize) -> anyhow::Result<()> {
        let host = &mut self.hosts[i];
        host.service
            .process
            .restart()
            .await
            .with_context(|| format!("restart host-{i}"))?;
        self.wait_host(i).await?;
        self.wait_spm().await.map(drop)
    }

    /// A store handle on the cluster's etcd, with the client certificate the launcher made.
    pub async fn coord(&self) -> anyhow::Result<Coord> {
        let tls = self.client_tls().map(|t| t.client(None));
        Coord::connect_with(&self.etcd_endpoints(), self.etcd_prefix(), tls)
            .await
            .context("connect to etcd")
    }

    /// The index of the host that is SPM now: the one etcd's `spm` election names, on the session
    /// lease it is registered with (a leader key left by a killed host's old lease does not count).
    pub async fn spm_index(&self) -> anyhow::Result<Option<usize>> {
        let coord = self.coord().await?;
        let Some(leader) = coord.leader(Role::Spm).await.context("read the SPM")? else {
            return Ok(None);
        };
        let Some(i) = self.hosts.iter().position(|h| h.host_id == leader.value) else {
            return Ok(None);
        };
        let host_id = HostId::parse("spm", &leader.value)?;
        let live = coord
            .get_host(host_id)
            .await
            .context("read the SPM's registration")?
            .is_some_and(|h| h.session_lease_id == leader.lease);
        Ok(live.then_some(i))
    }

    /// Waits (up to [`SERVING_TIMEOUT`]) until some host is SPM; returns its index. Structural verbs
    /// (CreateVolume, DeleteImage) need one.
    pub async fn wait_spm(&self) -> anyhow::Result<usize> {
        let until = Instant::now() + SERVING_TIMEOUT;
        loop {
            let last = match self.spm_index().await {
                Ok(Some(i)) => return Ok(i),
                Ok(None) => "none yet".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= until {
                bail!(
                    "no host-worker became SPM within {} (last: {last})",
                    humantime::format_duration(SERVING_TIMEOUT)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until host `i` is SERVING (e.g. after SIGCONT) and reads its host id. Panics when `i`
    /// is out of range.
    pub async fn wait_host(&mut self, i: usize) -> anyhow::Result<()> {
        let tls = self.pki.as_ref().map(Pki::client);
        wait_host(&mut self.hosts[i], i, tls).await
    }

    /// Stops the scheduler, then the host-workers, then the job-tracker, then etcd: each SIGTERM, then SIGKILL after
    /// [`STOP_DEADLINE`]. Goes on past a failure and reports the first.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        let mut note = |result: anyhow::Result<_>| {
            if let Err(e) = result {
                tracing::warn!("{e:#}");
                first_error.get_or_insert(e);
            }
        };
        note(self.scheduler.process.stop(STOP_DEADLINE).await);
        let hosts = self
            .hosts
            .iter_mut()
            .map(|h| h.service.process.stop(STOP_DEADLINE));
        for result in futures::future::join_all(hosts).await {
            note(result);
        }
        note(self.job_tracker.process.stop(STOP_DEADLINE).await);
        note(self.etcd.stop(STOP_DEADLINE).await);
        first_error.map_or(Ok(()), Err)
    }
}

/// The spec every process starts from: the configured environment, without inherited `DATAPATH_*`.
fn base_spec(config: &ClusterConfig) -> ProcessSpec {
    ProcessSpec {
        env: config.env.clone(),
        env_remove: std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with("DATAPATH_"))
            .collect(),
        own_process_group: config.own_process_groups,
        ..ProcessSpec::default()
    }
}

/// Waits until host `i` is SERVING, then reads its id (written before it started).
async fn wait_host(host: &mut Host, i: usize, tls: Option<&Tls>) -> anyhow::Result<()> {
    let url = host.service.url();
    wait_serving(&mut host.service.process, &url, tls, SERVING_TIMEOUT).await?;
    host.host_id = pki::host_id(&host.state_dir)
        .with_context(|| format!("read the host id of host-{i}"))?
        .to_string();
    Ok(())
}

fn prepare_dirs(config: &ClusterConfig) -> anyhow::Result<()> {
    for m in 0..config.etcd_members.max(1) {
        let etcd_dir = match m {
            0 => config.dir.join("etcd"),
            m => config.dir.join(format!("etcd-{m}")),
        };
        if etcd_dir.exists() {
            fs::remove_dir_all(&etcd_dir)
                .with_context(|| format!("remove old etcd data {}", etcd_dir.display()))?;
        }
    }
    let mut dirs = vec![config.log_dir(), config.storage_root()];
    dirs.extend((0..config.hosts).map(|i| config.host_state_dir(i)));
    for dir in dirs {
        fs::create_dir_all(&dir).with_context(|| format!("create directory {}", dir.display()))?;
    }
    Ok(())
}
