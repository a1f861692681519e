//! A benchmark cluster: release binaries, helpers to make volumes and run one copy to its end.
use std::{path::Path, time::Duration};

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
        let dir = tempfile::Builder::new()
            .prefix("datapath-bench-")
            .tempdir_in(base)?;
        let exe = std::env::current_exe()?;
        let config = ClusterConfig {
            hosts: 1,
            dir: dir.path().to_path_buf(),
            bin_dir: exe.parent().map(Path::to_path_buf),
            job_slots: slots,
            env: [
                vec![(
                    "RUST_LOG".to_string(),
                    std::env::var("DATAPATH_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                )],
                env,
            ]
            .concat(),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::start(config).await.context("start cluster")?;
        let host = HostWorkerServiceClient::connect(cluster.host_url(0)).await?;
        let tracker = JobTrackerServiceClient::connect(cluster.job_tracker_url()).await?;
        Ok(Self {
            cluster,
            host,
            tracker,
            _dir: dir,
        })
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
