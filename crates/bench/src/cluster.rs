//! A benchmark cluster: release binaries, helpers to make volumes and run one copy to its end.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use datapath_api::pb::{
    self, host_worker_service_client::HostWorkerServiceClient,
    job_tracker_service_client::JobTrackerServiceClient, JobStatus,
};
use dpctl::local::{Cluster, ClusterConfig};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

/// A running cluster in its own directory.
pub struct Bench {
    pub cluster: Cluster,
    /// The SPM host: structural verbs (CreateStorageDomain, CreateVolume, DeleteImage) go there;
    /// with one host, that host.
    pub host: HostWorkerServiceClient<Channel>,
    pub tracker: JobTrackerServiceClient<Channel>,
    _dir: tempfile::TempDir,
}

impl Bench {
    /// One host-worker with `slots` job slots and extra environment.
    pub async fn start(
        base: &Path,
        slots: u32,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            base,
            ClusterConfig {
                job_slots: slots,
                env,
                ..ClusterConfig::default()
            },
        )
        .await
    }

    /// A cluster shaped by `config` (hosts, slots, limits, extra environment); its directory,
    /// binaries and log level are the benchmark's.
    pub async fn start_with(base: &Path, config: ClusterConfig) -> anyhow::Result<Self> {
        let mut dir = tempfile::Builder::new()
            .prefix("datapath-bench-")
            .tempdir_in(base)?;
        // DATAPATH_BENCH_KEEP=1 keeps the cluster's directory (logs, etcd data) for a look after.
        if std::env::var_os("DATAPATH_BENCH_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let exe = std::env::current_exe()?;
        let config = ClusterConfig {
            dir: dir.path().to_path_buf(),
            bin_dir: exe.parent().map(Path::to_path_buf),
            // No per-caller call rate: the benchmarks' own client calls back to back, far above
            // it (the `flood` benchmark sets it back to measure it).
            env: [
                vec![
                    (
                        "RUST_LOG".to_string(),
                        std::env::var("DATAPATH_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                    ),
                    ("DATAPATH_MAX_CALL_RATE".to_string(), "0".to_string()),
                ],
                config.env,
            ]
            .concat(),
            ..config
        };
        let cluster = Cluster::start(config).await.context("start cluster")?;
        let spm = cluster.wait_spm().await?;
        let host = HostWorkerServiceClient::new(cluster.channel(&cluster.host_url(spm)).await?);
        let tracker =
            JobTrackerServiceClient::new(cluster.channel(&cluster.job_tracker_url()).await?);
        Ok(Self {
            cluster,
            host,
            tracker,
            _dir: dir,
        })
    }

    /// A client of the cluster's scheduler.
    pub async fn scheduler(
        &self,
    ) -> anyhow::Result<pb::scheduler_service_client::SchedulerServiceClient<Channel>> {
        Ok(pb::scheduler_service_client::SchedulerServiceClient::new(
            self.cluster.channel(&self.cluster.scheduler_url()).await?,
        ))
    }

    pub async fn domain(&mut self) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.host
            .create_storage_domain(pb::CreateStorageDomainRequest {
                storage_domain_id: id.clone(),
                name: "bench".into(),
            })
            .await?;
        Ok(id)
    }

    pub async fn raw_volume(
        &mut self,
        sd: &str,
        img: &str,
        capacity: u64,
        legality: pb::Legality,
    ) -> anyhow::Result<pb::VolumeRef> {
        let volume = pb::VolumeRef {
            storage_domain_id: sd.into(),
            image_id: img.into(),
            volume_id: uuid::Uuid::new_v4().to_string(),
        };
        self.host
            .create_volume(pb::CreateVolumeRequest {
                volume: Some(volume.clone()),
                format: pb::VolumeFormat::Raw as i32,
                capacity_bytes: capacity,
                legality: legality as i32,
                ..Default::default()
            })
            .await?;
        Ok(volume)
    }

    pub fn path(&self, v: &pb::VolumeRef) -> std::path::PathBuf {
        self.cluster
            .storage_root()
            .join(&v.storage_domain_id)
            .join("images")
            .join(&v.image_id)
            .join(&v.volume_id)
    }

    /// Sends CopyData and waits for the job's end on WatchJobs (opened first).
    pub async fn copy(
        &mut self,
        src: &pb::VolumeRef,
        dst: &pb::VolumeRef,
    ) -> anyhow::Result<(String, Duration)> {
        let job_id = uuid::Uuid::new_v4().to_string();
        let mut watch = self
            .tracker
            .watch_jobs(pb::WatchJobsRequest {
                job_id: job_id.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let start = std::time::Instant::now();
        self.host.copy_data(copy_request(&job_id, src, dst)).await?;
        while let Some(event) = watch.next().await {
            let job = event?.job.unwrap_or_default();
            match job.status() {
                JobStatus::Succeeded => return Ok((job_id, start.elapsed())),
                JobStatus::Failed | JobStatus::Aborted => {
                    bail!("job ended {:?}: {:?}", job.status(), job.error)
                }
                _ => {}
            }
        }
        bail!("watch ended before the job")
    }
}

pub fn copy_request(job_id: &str, src: &pb::VolumeRef, dst: &pb::VolumeRef) -> pb::CopyDataRequest {
    pb::CopyDataRequest {
        job_id: job_id.into(),
        source: Some(pb::CopyDataEndpoint {
            volume: Some(src.clone()),
            generation: None,
        }),
        destination: Some(pb::CopyDataEndpoint {
            volume: Some(dst.clone()),
            generation: None,
        }),
    }
}

/// Writes random data into the first `random` bytes of a raw file; the rest stays zeros (sparse).
pub fn fill_raw(path: &Path, random: u64) -> anyhow::Result<()> {
    use rand::RngCore as _;
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut buf = vec![0u8; 4 << 20];
    let mut rng = rand::rng();
    let mut off = 0;
    while off < random {
        rng.fill_bytes(&mut buf);
        f.write_all_at(&buf, off)?;
        off += buf.len() as u64;
    }
    f.sync_all()?;
    Ok(())
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The nearest-rank percentile `p` (0 < p ≤ 1) of `sorted` (ascending, not empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Starts each run alike: no dirty pages left by the previous run, the source read from disk, and
/// the disks idle. The root filesystem here is mounted with `discard`, so deleting the last run's
/// files sends TRIMs that would otherwise land inside the next timed run. Dropping the page cache
/// needs root; without it both sides still start after a full sync.
pub fn settle() -> anyhow::Result<()> {
    settle_with(true)
}

/// [`settle`], dropping the page cache or not: a latency measurement keeps it, or the first
/// `qemu-img` run after the drop would time reading its own binary and libraries from disk.
pub fn settle_with(drop_caches: bool) -> anyhow::Result<()> {
    Command::new("sync").status()?;
    if drop_caches {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut idle_since = Instant::now();
    while Instant::now() < deadline {
        if in_flight() > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Requests in flight on every block device (`/sys/block/*/inflight`).
fn in_flight() -> u64 {
    let Ok(devices) = std::fs::read_dir("/sys/block") else {
        return 0;
    };
    devices
        .flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("inflight")).ok())
        .flat_map(|t| {
            t.split_whitespace()
                .filter_map(|n| n.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}
