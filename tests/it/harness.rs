//! The end-to-end harness: a real etcd, the real job-tracker and host-worker binaries as processes
//! (started by the same launcher as `dpctl local up`), gRPC clients to them, and helpers that read
//! the storage and etcd the way an operator would. Every test gets its own directory and key prefix;
//! a failing test prints the tail of every process log. Structural verbs go to the SPM host
//! ([`TestCluster::spm_host`]); everything else may go to any host.
use std::{
    future::Future,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use datapath_api::pb::{
    self, host_worker_service_client::HostWorkerServiceClient,
    job_tracker_service_client::JobTrackerServiceClient, JobStatus,
};
use dpctl::local::{Cluster, ClusterConfig};
use etcd_client::GetOptions;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

/// A cluster for one test.
pub struct TestCluster {
    pub cluster: Cluster,
    pub etcd: etcd_client::Client,
    /// Job-tracker clients acting as hosts, by host id (see [`TestCluster::tracker_as_host`]).
    as_hosts: std::sync::Mutex<std::collections::HashMap<String, JobTrackerServiceClient<Channel>>>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `hosts` host-workers; `tune` adjusts the configuration first. A start is tried twice:
    /// the launcher picks free ports before the processes bind them, and a test running beside this
    /// one may take a port in between.
    pub async fn start(hosts: usize, tune: impl Fn(&mut ClusterConfig)) -> anyhow::Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(hosts, &tune).await {
                Ok(tc) => return Ok(tc),
                Err(e) if attempt < 2 => eprintln!("cluster start failed, trying again: {e:#}"),
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_start(hosts: usize, tune: &impl Fn(&mut ClusterConfig)) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("datapath-it-").tempdir()?;
        let mut config = ClusterConfig {
            hosts,
            dir: dir.path().to_path_buf(),
            session_ttl: Duration::from_secs(4),
            etcd_prefix: format!("/it-{}/", uuid::Uuid::new_v4().simple()),
            env: vec![("RUST_LOG".into(), "info".into())],
            ..ClusterConfig::default()
        };
        tune(&mut config);
        let cluster = Cluster::start(config).await.context("start cluster")?;
        let etcd =
            etcd_client::Client::connect(cluster.etcd_endpoints(), cluster.etcd_options()).await?;
        Ok(Self {
            cluster,
            etcd,
            as_hosts: Default::default(),
            _dir: dir,
        })
    }

    /// A client of host `i`.
    pub async fn host(&self, i: usize) -> HostWorkerServiceClient<Channel> {
        HostWorkerServiceClient::new(self.channel(&self.cluster.host_url(i)).await)
    }

    /// A connected channel to `url` acting as `identity` (a certificate issued for it by the
    /// cluster CA), or in plaintext when the cluster is insecure.
    pub async fn channel_as(&self, url: &str, identity: &datapath_tls::Identity) -> Channel {
        let tls = self
            .cluster
            .pki()
            .map(|pki| pki.issue_tls(identity).expect("issue a certificate"));
        dpctl::client::channel(url, tls.as_ref())
            .await
            .unwrap_or_else(|e| panic!("connect {url} as {identity}: {e:#}"))
    }

    /// A job-tracker client acting as host `host_id`: only a host may create and update its jobs.
    pub async fn tracker_as_host(&self, host_id: &str) -> JobTrackerServiceClient<Channel> {
        if let Some(c) = self.as_hosts.lock().unwrap().get(host_id) {
            return c.clone();
        }
        let id = datapath_api::ids::HostId::parse("host_id", host_id).expect("a host id");
        let url = self.cluster.job_tracker_url();
        let client = JobTrackerServiceClient::new(
            self.channel_as(&url, &datapath_tls::Identity::Host(id))
                .await,
        );
        self.as_hosts
            .lock()
            .unwrap()
            .insert(host_id.to_string(), client.clone());
        client
    }

    /// A connected channel to one of the cluster's services, as the local operator (mutual TLS).
    pub async fn channel(&self, url: &str) -> Channel {
        self.cluster
            .channel(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e:#}"))
    }

    /// Runs grpcurl against the cluster with the local operator's certificate (or `-plaintext`);
    /// `args` follow the TLS flags.
    pub fn grpcurl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all: Vec<String> = self.cluster.grpcurl_args();
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run("grpcurl", &all)
    }

    /// Runs etcdctl against the cluster's etcd with the local user's certificate (etcd user
    /// `datapath`); `args` follow the connection flags.
    pub fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec![
            "--endpoints".to_string(),
            self.cluster.etcd_endpoints().join(","),
        ];
        if let Some(tls) = self.cluster.client_tls() {
            let (ca, cert, key) = tls.paths();
            for (flag, path) in [("--cacert", ca), ("--cert", cert), ("--key", key)] {
                all.push(flag.to_string());
                all.push(path.display().to_string());
            }
        }
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run("etcdctl", &all)
    }

    /// The environment a dpctl process needs to reach the cluster (its TLS files).
    pub fn dpctl_env(&self) -> Vec<(String, String)> {
        match self.cluster.pki() {
            Some(pki) => pki.env(),
            None => vec![("DATAPATH_INSECURE".into(), "true".into())],
        }
    }

    /// The index of the SPM host, waiting (bounded) until there is one.
    pub async fn spm(&self) -> usize {
        self.cluster.wait_spm().await.expect("an SPM host")
    }

    /// A client of the SPM host: structural verbs (CreateVolume, DeleteImage) go there.
    pub async fn spm_host(&self) -> HostWorkerServiceClient<Channel> {
        self.host(self.spm().await).await
    }

    /// A job as the job-tracker has it (it must exist).
    pub async fn job(&self, job_id: &str) -> pb::Job {
        self.tracker()
            .await
            .get_job(pb::GetJobRequest {
                job_id: job_id.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("get job {job_id}: {s}"))
            .into_inner()
            .job
            .expect("a job")
    }

    /// A client of the job-tracker.
    pub async fn tracker(&self) -> JobTrackerServiceClient<Channel> {
        JobTrackerServiceClient::new(self.channel(&self.cluster.job_tracker_url()).await)
    }

    /// The data file of a volume.
    pub fn volume_path(&self, v: &pb::VolumeRef) -> PathBuf {
        self.cluster
            .storage_root()
            .join(&v.storage_domain_id)
            .join("images")
            .join(&v.image_id)
            .join(&v.volume_id)
    }

    /// One `KEY=VALUE` of a volume's metadata file, read straight from storage.
    pub fn meta(&self, v: &pb::VolumeRef, key: &str) -> String {
        let path = self.volume_path(v).with_extension("meta");
        let text = std::fs::read_to_string(&path).expect("read volume metadata");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .to_string()
    }

    /// The id of a registered host (the first in key order).
    pub async fn a_host_id(&self) -> String {
        let hosts = self.keys(&self.layout().hosts()).await;
        let key = &hosts.first().expect("a registered host").0;
        key.rsplit('/').next().unwrap_or_default().to_string()
    }

    /// The cluster's etcd key layout (`datapath_coord::Keys`): tests name keys through it, never
    /// by writing key strings.
    pub fn layout(&self) -> datapath_coord::Keys {
        datapath_coord::Keys::new(self.cluster.etcd_prefix())
    }

    /// Every key under `prefix` (from [`TestCluster::layout`]) with its mod revision.
    pub async fn keys(&self, prefix: &str) -> Vec<(String, i64)> {
        let resp = self
            .etcd
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .expect("etcd get");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.mod_revision(),
                )
            })
            .collect()
    }

    /// Creates a storage domain through host 0.
    pub async fn domain(&self) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.host(0)
            .await
            .create_storage_domain(pb::CreateStorageDomainRequest {
                storage_domain_id: id.clone(),
                name: "it".into(),
            })
            .await
            .expect("create storage domain");
        self.wait_live_hosts_reach(&id).await;
        id
    }

    /// Waits until every live host's registration lists storage domain `sd` (a host notices a new
    /// domain within a second), so that placement can use every host for it.
    pub async fn wait_live_hosts_reach(&self, sd: &str) {
        use prost::Message as _;
        let prefix = self.layout().hosts();
        wait_for(
            Duration::from_secs(15),
            "every live host to reach the domain",
            || async {
                let resp = self
                    .etcd
                    .clone()
                    .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                    .await
                    .ok()?;
                resp.kvs()
                    .iter()
                    .filter_map(|kv| pb::Host::decode(kv.value()).ok())
                    .all(|h| h.storage_domain_ids.iter().any(|d| d == sd))
                    .then_some(())
            },
        )
        .await
        .expect("hosts reach the new domain");
    }

    /// Creates a volume through the SPM.
    pub async fn volume(
        &self,
        sd: &str,
        img: &str,
        format: pb::VolumeFormat,
        capacity: u64,
        legality: pb::Legality,
    ) -> pb::VolumeRef {
        let volume = pb::VolumeRef {
            storage_domain_id: sd.into(),
            image_id: img.into(),
            volume_id: uuid::Uuid::new_v4().to_string(),
        };
        self.spm_host()
            .await
            .create_volume(pb::CreateVolumeRequest {
                volume: Some(volume.clone()),
                format: format as i32,
                capacity_bytes: capacity,
                legality: legality as i32,
                ..Default::default()
            })
            .await
            .expect("create volume");
        volume
    }

    /// A source volume filled with `chunks` random MiB in a new domain, and an empty ILLEGAL
    /// destination of the same image and size in another new domain.
    pub async fn source_and_destination(
        &self,
        format: pb::VolumeFormat,
        capacity: u64,
        chunks: u64,
    ) -> (pb::VolumeRef, pb::VolumeRef) {
        let img = uuid::Uuid::new_v4().to_string();
        let (a, b) = (self.domain().await, self.domain().await);
        let src = self
            .volume(&a, &img, format, capacity, pb::Legality::Legal)
            .await;
        let qemu_format = if format == pb::VolumeFormat::Cow {
            "qcow2"
        } else {
            "raw"
        };
        fill_random(&self.volume_path(&src), qemu_format, capacity, chunks).unwrap();
        let dst = self
            .volume(&b, &img, format, capacity, pb::Legality::Illegal)
            .await;
        (src, dst)
    }

    /// Sends CopyData to host `i` with a new job id; returns the id.
    pub async fn start_copy(&self, i: usize, src: &pb::VolumeRef, dst: &pb::VolumeRef) -> String {
        let job_id = uuid::Uuid::new_v4().to_string();
        self.host(i)
            .await
            .copy_data(copy_request(&job_id, src, dst, None))
            .await
            .expect("CopyData");
        job_id
    }

    /// Waits until some volume lease is held.
    pub async fn wait_for_lease(&self) {
        wait_for(Duration::from_secs(20), "a volume lease", || async {
            (!self.keys(&self.layout().volume_leases()).await.is_empty()).then_some(())
        })
        .await
        .unwrap();
    }

    /// A volume's info through host `i`.
    pub async fn info(&self, i: usize, v: &pb::VolumeRef) -> pb::VolumeInfo {
        self.host(i)
            .await
            .get_volume_info(pb::GetVolumeInfoRequest {
                volume: Some(v.clone()),
            })
            .await
            .expect("get volume info")
            .into_inner()
            .volume
            .expect("volume info")
    }

    /// Prints every process log's tail (for a failing test).
    /// How many times `needle` appears in the cluster's logs, every process's together.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_dir(self.cluster.dir().join("logs"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .map(|text| text.matches(needle).count())
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn dump_logs(&self) {
        let logs = self.cluster.dir().join("logs");
        if let Ok(entries) = std::fs::read_dir(&logs) {
            for e in entries.flatten() {
                eprintln!(
                    "===== {} =====\n{}",
                    e.path().display(),
                    dpctl::local::log_tail(&e.path(), 60)
                );
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// Throttles every copy to `bytes_per_second`, so a test can act while one runs.
pub fn throttle(config: &mut ClusterConfig, bytes_per_second: u64) {
    config.env.push((
        "DATAPATH_COPY_BANDWIDTH_LIMIT".into(),
        bytes_per_second.to_string(),
    ));
}

/// Waits for `check` to return `Some`, polling every 50 ms, failing after `deadline`.
pub async fn wait_for<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `chunks` distinct random 1 MiB chunks spread evenly over a volume of `capacity` bytes, by
/// writing them into a sparse raw file and converting that into the volume with qemu-img.
pub fn fill_random(
    path: &std::path::Path,
    format: &str,
    capacity: u64,
    chunks: u64,
) -> anyhow::Result<()> {
    use rand::RngCore as _;
    use std::{
        io::{Seek, SeekFrom, Write},
        os::unix::fs::FileExt as _,
    };
    let raw = path.with_extension("fill.raw");
    let mut f = std::fs::File::create(&raw)?;
    f.set_len(capacity)?;
    let stride = capacity / chunks;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..chunks {
        rand::rng().fill_bytes(&mut buf);
        f.write_all_at(&buf, i * stride)?;
    }
    f.seek(SeekFrom::End(0))?;
    f.flush()?;
    drop(f);
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            format,
            raw.to_str().unwrap(),
            path.to_str().unwrap(),
        ],
    )?;
    std::fs::remove_file(&raw)?;
    Ok(())
}

/// sha256 of a file, by `sha256sum`.
pub fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs a command; fails with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `qemu-img compare` says identical.
pub fn identical(a: &std::path::Path, b: &std::path::Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-q"])
        .arg(a)
        .arg(b)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Follows one job on WatchJobs from before it exists until it ends; returns every (status,
/// progress) seen, in order. The watch is open when this returns.
pub async fn follow_job(
    mut tracker: JobTrackerServiceClient<Channel>,
    job_id: String,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<(JobStatus, u32)>>> {
    let mut stream = tracker
        .watch_jobs(pb::WatchJobsRequest {
            job_id,
            ..Default::default()
        })
        .await
        .expect("open WatchJobs")
        .into_inner();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) =
            tokio::time::timeout(Duration::from_secs(120), stream.next()).await?
        {
            let Some(job) = event?.job else { continue };
            seen.push((job.status(), job.progress));
            if matches!(
                job.status(),
                JobStatus::Succeeded | JobStatus::Failed | JobStatus::Aborted
            ) {
                return Ok(seen);
            }
        }
        bail!("watch ended before the job did: {seen:?}")
    })
}

/// A CopyData request.
pub fn copy_request(
    job_id: &str,
    src: &pb::VolumeRef,
    dst: &pb::VolumeRef,
    dst_generation: Option<u64>,
) -> pb::CopyDataRequest {
    pb::CopyDataRequest {
        job_id: job_id.into(),
        source: Some(pb::CopyDataEndpoint {
            volume: Some(src.clone()),
            generation: None,
        }),
        destination: Some(pb::CopyDataEndpoint {
            volume: Some(dst.clone()),
            generation: dst_generation,
        }),
    }
}

/// Every process whose parent is `ppid`: (pid, command name).
pub fn children(ppid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid_here = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid_here == Some(ppid) {
            found.push((pid, stat[open + 1..close].to_string()));
        }
    }
    found
}

/// The pids of processes below `pid` (children, their children, …) whose command name is `comm`:
/// a copier runs as qemu-img under its watchdog, under the host-worker.
pub fn descendants_named(pid: u32, comm: &str) -> Vec<u32> {
    let mut named = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, name) in children(p) {
            if name == comm {
                named.push(child);
            }
            todo.push(child);
        }
    }
    named
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rfind(')')
                .map(|i| !s[i + 2..].starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// (size, allocated blocks, mtime) of a file: changes whenever a copier writes it.
pub fn file_state(path: &std::path::Path) -> (u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).expect("stat");
    (m.size(), m.blocks(), m.mtime(), m.mtime_nsec())
}

/// Waits until `path` has not changed for `quiet`; returns when it became quiet.
pub async fn wait_quiet(
    path: &std::path::Path,
    quiet: Duration,
    deadline: Duration,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    let mut last = file_state(path);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = file_state(path);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(since);
        }
        if start.elapsed() > deadline {
            bail!("{} kept changing for {deadline:?}", path.display());
        }
    }
}
