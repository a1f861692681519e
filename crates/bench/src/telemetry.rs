//! What tracing and metrics cost: three clusters side by side in one run — one exporting every span
//! over OTLP to a collector in this process (which counts and drops them), one with no `OTEL_*`
//! variable set (spans made, nothing exported: the default), and one with `OTEL_SDK_DISABLED=true`
//! (no span recorded). All serve `/metrics`. Measured on each: unary RPC latency
//! (GetVolumeInfo and CopyData's answer, which crosses to the job-tracker and etcd, timed call by
//! call in turn on every side), and the time of a 2 GiB copy, interleaved round by round with `qemu-img convert` alone.
use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::{
    cluster::median,
    side::{copy_rounds, interleaved, print_rpc, Rpc, Side},
};

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
    for rpc in [Rpc::GetVolumeInfo, Rpc::CopyDataAnswer] {
        let times = interleaved(&mut sides, rpc).await?;
        print_rpc(&sides, rpc, &times, 0);
    }

    let alone = copy_rounds(&mut sides, rounds, "telemetry").await?;
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
