//! One side of a side-by-side comparison (`telemetry.rs`, `tls.rs`): a cluster with a source volume
//! and a destination domain, and unary RPCs timed call by call in turn on every side, so a drift of
//! the machine during the run weighs on every side alike.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use datapath_api::pb::{self, DeleteImageRequest, Legality};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::cluster::{copy_request, fill_raw, percentile, Bench};

const SIZE: u64 = 2 << 30;
/// Timed calls per side of the unary RPCs that do no work on the host's disks.
const CALLS: usize = 2000;
/// Timed CopyData answers per side (each makes a volume and a job).
const ACCEPTS: usize = 400;
/// Calls per side thrown away before timing (connections, caches).
const WARM_UP: usize = 100;

/// The unary RPCs the side-by-side benchmarks time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rpc {
    /// `grpc.health.v1.Health/Check` on the host: no work, so what a side adds to it is the
    /// transport's own cost per hop (TLS, authorisation, tracing layers).
    HealthCheck,
    /// GetVolumeInfo of the source: the volume's metadata file and the host's volume view.
    GetVolumeInfo,
    /// CopyData's answer: the host's checks, the job-tracker's create-if-absent in etcd. Each job is
    /// aborted after its answer (not timed), and its end runs beside the next calls.
    CopyDataAnswer,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::HealthCheck => "Health Check (host)",
            Rpc::GetVolumeInfo => "GetVolumeInfo",
            Rpc::CopyDataAnswer => "CopyData (answer)",
        }
    }

    fn calls(self) -> usize {
        match self {
            Rpc::CopyDataAnswer => ACCEPTS,
            _ => CALLS,
        }
    }
}

pub(crate) struct Side {
    pub name: &'static str,
    pub bench: Bench,
    pub src: pb::VolumeRef,
    dst_domain: String,
    health: HealthClient<Channel>,
    pub copies: Vec<Duration>,
}

impl Side {
    /// A side with 2 job slots and extra environment for every service.
    pub(crate) async fn start(
        name: &'static str,
        base: &Path,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let config = dpctl::local::ClusterConfig {
            job_slots: 2,
            env,
            ..Default::default()
        };
        Self::start_with(name, base, config).await
    }

    /// A side whose cluster `config` shapes (2 job slots unless it says otherwise).
    pub(crate) async fn start_with(
        name: &'static str,
        base: &Path,
        config: dpctl::local::ClusterConfig,
    ) -> anyhow::Result<Self> {
        let mut bench = Bench::start_with(base, config).await?;
        let (a, d) = (bench.domain().await?, bench.domain().await?);
        let img = uuid::Uuid::new_v4().to_string();
        let src = bench.raw_volume(&a, &img, SIZE, Legality::Legal).await?;
        fill_raw(&bench.path(&src), SIZE / 2)?;
        let cluster = &bench.cluster;
        let spm = cluster.wait_spm().await?;
        let health = HealthClient::new(cluster.channel(&cluster.host_url(spm)).await?);
        Ok(Self {
            name,
            bench,
            src,
            dst_domain: d,
            health,
            copies: Vec::new(),
        })
    }

    /// One call of `rpc`, timed alone (what it needs made or undone is outside the time).
    pub(crate) async fn time(&mut self, rpc: Rpc) -> anyhow::Result<Duration> {
        match rpc {
            Rpc::HealthCheck => {
                let start = Instant::now();
                self.health.check(HealthCheckRequest::default()).await?;
                Ok(start.elapsed())
            }
            Rpc::GetVolumeInfo => {
                let volume = Some(self.src.clone());
                let start = Instant::now();
                self.bench
                    .host
                    .get_volume_info(pb::GetVolumeInfoRequest { volume })
                    .await?;
                Ok(start.elapsed())
            }
            Rpc::CopyDataAnswer => {
                let dst = self.destination().await?;
                let job_id = uuid::Uuid::new_v4().to_string();
                let request = copy_request(&job_id, &self.src, &dst);
                let start = Instant::now();
                self.bench.host.copy_data(request).await?;
                let took = start.elapsed();
                let _ = self
                    .bench
                    .tracker
                    .abort_job(pb::AbortJobRequest { job_id })
                    .await;
                Ok(took)
            }
        }
    }

    /// A fresh ILLEGAL raw volume in the destination domain, the size of the source.
    pub(crate) async fn destination(&mut self) -> anyhow::Result<pb::VolumeRef> {
        let img = uuid::Uuid::new_v4().to_string();
        let d = self.dst_domain.clone();
        self.bench
            .raw_volume(&d, &img, SIZE, Legality::Illegal)
            .await
    }

    /// One 2 GiB copy of the source through CopyData, its time recorded; the copy deleted after.
    pub(crate) async fn copy_once(&mut self) -> anyhow::Result<()> {
        let dst = self.destination().await?;
        let src = self.src.clone();
        let (_, t) = self.bench.copy(&src, &dst).await?;
        self.copies.push(t);
        self.bench
            .host
            .delete_image(DeleteImageRequest {
                storage_domain_id: dst.storage_domain_id.clone(),
                image_id: dst.image_id.clone(),
            })
            .await?;
        Ok(())
    }
}

/// Times `rpc` on every side in turn, one call at a time, the order rotating call by call; after
/// a warm-up thrown away. Returns each side's times, sorted.
pub(crate) async fn interleaved(
    sides: &mut [Side],
    rpc: Rpc,
) -> anyhow::Result<Vec<Vec<Duration>>> {
    let n = sides.len();
    let mut times = vec![Vec::with_capacity(rpc.calls()); n];
    for call in 0..WARM_UP + rpc.calls() {
        for i in (0..n).map(|k| (call + k) % n) {
            let t = sides[i].time(rpc).await?;
            if call >= WARM_UP {
                times[i].push(t);
            }
        }
    }
    for t in &mut times {
        t.sort();
    }
    Ok(times)
}

/// Prints one row per side (p50, p90, p99), then each other side's p50 against side `base`'s.
pub(crate) fn print_rpc(sides: &[Side], rpc: Rpc, times: &[Vec<Duration>], base: usize) {
    let which = rpc.name();
    for (side, t) in sides.iter().zip(times) {
        println!(
            "| {which} | {} | {} | {} | {} |",
            side.name,
            ms(percentile(t, 0.5)),
            ms(percentile(t, 0.9)),
            ms(percentile(t, 0.99))
        );
    }
    let p50 = |i: usize| percentile(&times[i], 0.5).as_secs_f64();
    for (i, side) in sides.iter().enumerate().filter(|(i, _)| *i != base) {
        println!(
            "| {which} | p50 added, {} | {:+.1} % ({:+.0} µs) | | |",
            side.name,
            (p50(i) / p50(base) - 1.0) * 100.0,
            (p50(i) - p50(base)) * 1e6
        );
    }
}

/// `rounds` rounds of the 2 GiB copy on every side and of `qemu-img convert` alone, the order
/// rotating so a slow phase of the disk does not always hit the same one; returns the times of
/// `qemu-img` alone (each side keeps its own in `copies`).
pub(crate) async fn copy_rounds(
    sides: &mut [Side],
    rounds: usize,
    label: &str,
) -> anyhow::Result<Vec<Duration>> {
    let n = sides.len();
    let mut alone = Vec::new();
    for round in 0..rounds {
        for who in (0..=n).map(|i| (round + i) % (n + 1)) {
            crate::cluster::settle()?;
            if who < n {
                sides[who].copy_once().await?;
            } else {
                let dst = sides[0].destination().await?;
                alone.push(crate::copy::qemu_img_alone(
                    &sides[0].bench.path(&sides[0].src),
                    &sides[0].bench.path(&dst),
                )?);
            }
        }
        let each: Vec<String> = sides
            .iter()
            .map(|s| format!("{} {:?}", s.name, s.copies[round]))
            .collect();
        eprintln!(
            "{label} round {round}: {}, qemu-img {:?}",
            each.join(", "),
            alone[round]
        );
    }
    Ok(alone)
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
