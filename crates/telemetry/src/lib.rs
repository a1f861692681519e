//! One telemetry set-up for every datapath binary: `tracing` logs filtered by `RUST_LOG`, OpenTelemetry
//! traces exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C `traceparent`
//! propagation on every gRPC hop — extracted by [`server_span`] (a tonic `trace_fn`, i.e. a tower layer
//! around every handler) and injected by [`traced`] (a tower layer around every client channel).
#![warn(missing_docs)]

pub mod metrics;
mod propagation;

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing::Level;
use tracing_subscriber::{
    filter::{filter_fn, EnvFilter},
    layer::SubscriberExt,
    util::SubscriberInitExt,
    Layer,
};

pub use propagation::{server_span, traced, TracedChannel};

/// Keeps the tracer provider alive; flushes pending spans when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs logging and tracing for `service`. Must be called inside a Tokio runtime (the OTLP
/// exporter needs one). Spans always get trace ids, so `traceparent` propagates even when nothing is
/// exported.
pub fn init(service: &'static str) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(opentelemetry_otlp::Protocol::Grpc)
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    global::set_tracer_provider(provider.clone());

    // Only our own spans are exported: h2 and hyper would otherwise add one span per frame.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter_fn(|meta| {
            *meta.level() <= Level::INFO
                && (meta.target().starts_with("datapath") || meta.target().starts_with("dpctl"))
        }));
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(env);
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}
