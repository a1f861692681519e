//! What tracing and metrics cost: three clusters side by side in one run — one exporting every span
//! over OTLP to a collector in this process (which counts and drops them), one with no `OTEL_*`
//! variable set (spans made, nothing exported: the default), and one with `OTEL_SDK_DISABLED=true`
//! (no span recorded). All serve `/metrics`. Measured on each: unary RPC latency
//! (GetVolumeInfo ×2,000 and CopyData's answer ×400, which crosses to the job-tracker and etcd, per
//! side), and the time of a 2 GiB copy, interleaved round by round with `qemu-img convert` alone.
use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use datapath_api::pb::{self, DeleteImageRequest, Legality};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::cluster::{copy_request, fill_raw, median, percentile, settle, Bench};

const SIZE: u64 = 2 << 30;
const CALLS: usize = 1000;
const ACCEPTS: usize = 200;

/// An OTLP collector that counts the spans it receives and keeps none.
#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = req
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_sink() -> anyhow::Result<(Sink, String)> {
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let service = TraceServiceServer::new(sink.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((sink, endpoint))
}

/// One side of a side-by-side comparison (this one, and `tls.rs`): its cluster, a source and a
/// destination domain.
pub(crate) struct Side {
    pub name: &'static str,
    pub bench: Bench,
    pub src: pb::VolumeRef,
    dst_domain: String,
    pub copies: Vec<Duration>,
}

impl Side {
    async fn start(
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
        Ok(Self {
            name,
            bench,
            src,
            dst_domain: d,
            copies: Vec::new(),
        })
    }

    /// Unary GetVolumeInfo latencies, sorted.
    pub(crate) async fn unary(&mut self) -> anyhow::Result<Vec<Duration>> {
        let mut t = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let start = Instant::now();
            self.bench
                .host
                .get_volume_info(pb::GetVolumeInfoRequest {
                    volume: Some(self.src.clone()),
                })
                .await?;
            t.push(start.elapsed());
        }
        t.sort();
        Ok(t)
    }

    /// CopyData answer times (each job aborted at once), sorted.
    pub(crate) async fn accepts(&mut self) -> anyhow::Result<Vec<Duration>> {
        let mut t = Vec::with_capacity(ACCEPTS);
        for _ in 0..ACCEPTS {
            let dst = self.destination().await?;
            let job_id = uuid::Uuid::new_v4().to_string();
            let start = Instant::now();
            self.bench
                .host
                .copy_data(copy_request(&job_id, &self.src, &dst))
                .await?;
            t.push(start.elapsed());
            let _ = self
                .bench
                .tracker
                .abort_job(pb::AbortJobRequest { job_id })
                .await;
        }
        t.sort();
        Ok(t)
    }

    pub(crate) async fn destination(&mut self) -> anyhow::Result<pb::VolumeRef> {
        let img = uuid::Uuid::new_v4().to_string();
        let d = self.dst_domain.clone();
        self.bench
            .raw_volume(&d, &img, SIZE, Legality::Illegal)
            .await
    }

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

/// Prints the copy table of side-by-side runs: `qemu-img convert` alone, then each side's median
/// and its ratio to it; returns the sides' medians.
pub(crate) fn print_copies(sides: &[Side], alone: &[Duration], rounds: usize) -> Vec<Duration> {
    let m_alone = median(alone.to_vec());
    println!();
    println!("| 2 GiB copy ({rounds} rounds) | median | ÷ qemu-img alone |");
    println!("|---|---|---|");
    println!(
        "| qemu-img convert alone | {:.3} s | 1.000× |",
        m_alone.as_secs_f64()
    );
    let mut medians = Vec::new();
    for side in sides {
        let m = median(side.copies.clone());
        medians.push(m);
        println!(
            "| CopyData, {} | {:.3} s | {:.3}× |",
            side.name,
            m.as_secs_f64(),
            m.as_secs_f64() / m_alone.as_secs_f64()
        );
    }
    medians
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

pub async fn run(base: &Path, rounds: usize) -> anyhow::Result<()> {
    let (sink, endpoint) = start_sink().await?;
    let traced_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint)];
    let disabled = vec![("OTEL_SDK_DISABLED".to_string(), "true".to_string())];
    let mut sides = [
        Side::start("tracing off (OTEL_SDK_DISABLED)", base, disabled).await?,
        Side::start("no exporter (default)", base, vec![]).await?,
        Side::start("OTLP exporter", base, traced_env).await?,
    ];

    println!("## telemetry: the cost of tracing and metrics (three clusters, one run)");
    println!("| RPC | side | p50 | p90 | p99 |");
    println!("|---|---|---|---|---|");
    for which in ["GetVolumeInfo", "CopyData (answer)"] {
        // A warm-up pass, thrown away, then two measured passes in opposite orders pooled per side,
        // so a drift of the machine during the run weighs on every side alike.
        let mut pooled: [Vec<Duration>; 3] = Default::default();
        for (pass, order) in [[0, 1, 2], [0, 1, 2], [2, 1, 0]].into_iter().enumerate() {
            for i in order {
                let side = &mut sides[i];
                let t = if which == "GetVolumeInfo" {
                    side.unary().await?
                } else {
                    side.accepts().await?
                };
                if pass > 0 {
                    pooled[i].extend(t);
                }
            }
        }
        for (i, t) in pooled.iter_mut().enumerate() {
            t.sort();
            println!(
                "| {which} | {} | {} | {} | {} |",
                sides[i].name,
                ms(percentile(t, 0.5)),
                ms(percentile(t, 0.9)),
                ms(percentile(t, 0.99))
            );
        }
    }

    let mut alone = Vec::new();
    for round in 0..rounds {
        // Rotate who goes first, so a slow phase of the disk does not always hit the same side.
        for who in (0..4).map(|i| (round + i) % 4) {
            settle()?;
            match who {
                0..=2 => sides[who].copy_once().await?,
                _ => {
                    let dst = sides[0].destination().await?;
                    alone.push(crate::copy::qemu_img_alone(
                        &sides[0].bench.path(&sides[0].src),
                        &sides[0].bench.path(&dst),
                    )?);
                }
            }
        }
        eprintln!(
            "telemetry round {round}: tracing off {:?}, no exporter {:?}, exporter {:?}, qemu-img {:?}",
            sides[0].copies[round], sides[1].copies[round], sides[2].copies[round], alone[round]
        );
    }
    let medians = print_copies(&sides, &alone, rounds);
    println!(
        "| exporter ÷ tracing off | {:.3}× | |",
        medians[2].as_secs_f64() / medians[0].as_secs_f64()
    );
    println!(
        "| exporter ÷ no exporter | {:.3}× | |",
        medians[2].as_secs_f64() / medians[1].as_secs_f64()
    );
    for side in sides {
        side.bench.cluster.stop().await?;
    }
    println!(
        "\nspans received by the collector: {}",
        sink.0.load(Ordering::Relaxed)
    );
    Ok(())
}
