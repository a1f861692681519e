//! One telemetry set-up for every datapath binary: `tracing` logs filtered by `RUST_LOG`, and
//! OpenTelemetry traces configured only by the standard `OTEL_*` variables — exported over OTLP/gRPC
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, sampled by
//! `OTEL_TRACES_SAMPLER`, named by `OTEL_SERVICE_NAME`, and off with `OTEL_SDK_DISABLED=true`.
//!
//! Every gRPC hop is traced on both sides by tower layers ([`GrpcTraceLayer`] on servers, [`traced`]
//! on client channels) that carry the W3C `traceparent`; records that outlive a call (flows, jobs)
//! keep it too ([`current_carrier`], [`continue_from`]). Spans follow OpenTelemetry's semantic
//! conventions v1.27.0 for RPC.
#![warn(missing_docs)]

mod carrier;
mod client;
pub mod grpc;
mod logfmt;
pub mod metrics;
mod server;

use std::time::Duration;

use opentelemetry::{global, trace::TracerProvider as _, KeyValue};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
    Resource,
};
use tracing::Level;
use tracing_subscriber::{
    filter::{filter_fn, EnvFilter},
    layer::SubscriberExt,
    util::SubscriberInitExt,
    Layer,
};

pub use carrier::{carrier_of, context_from, continue_from, current_carrier, current_trace_id};
pub use client::{traced, traced_to, TracedChannel};
pub use server::{server_span, GrpcTrace, GrpcTraceLayer};

/// How long shutdown waits for the last spans to leave: an unreachable collector must not hold up a
/// stopping service.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps the tracer provider alive; flushes pending spans (for at most two seconds) when dropped.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
    }
}

/// Who is emitting: the resource every span carries.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The datapath host id (host-workers): `host.id` and `service.instance.id`.
    pub host_id: Option<String>,
}

fn truthy(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn exporting() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// The first of `names` set to something.
fn env_any(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
}

/// TLS for the OTLP exporter from the standard variables: `OTEL_EXPORTER_OTLP_CERTIFICATE` (the
/// CA that signed the collector's certificate), `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
/// `OTEL_EXPORTER_OTLP_CLIENT_KEY` (this process's, for a collector that wants mutual TLS), each
/// also as `OTEL_EXPORTER_OTLP_TRACES_*`, which wins. `None` when none is set.
fn otlp_tls() -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use anyhow::Context as _;
    let ca = env_any(&[
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ]);
    let cert = env_any(&[
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    ]);
    let key = env_any(&[
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    ]);
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    let read = |path: &str| std::fs::read_to_string(path).with_context(|| format!("read {path}"));
    let mut config = tonic::transport::ClientTlsConfig::new();
    if let Some(ca) = ca {
        config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(&ca)?));
    }
    match (cert, key) {
        (Some(cert), Some(key)) => {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(&cert)?,
                read(&key)?,
            ));
        }
        (None, None) => {}
        _ => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
        ),
    }
    Ok(Some(config))
}

/// The resource: `service.name` (`OTEL_SERVICE_NAME` wins over `service`), the host id, the version,
/// and `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(service: &'static str, identity: &Identity) -> Resource {
    let mut builder = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        builder = builder.with_service_name(service);
    }
    let mut attrs = vec![
        KeyValue::new("service.namespace", "datapath"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Some(host) = &identity.host_id {
        attrs.push(KeyValue::new("host.id", host.clone()));
        attrs.push(KeyValue::new("service.instance.id", host.clone()));
    }
    if let Ok(name) = nix_hostname() {
        attrs.push(KeyValue::new("host.name", name));
    }
    builder.with_attributes(attrs).build()
}

fn nix_hostname() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string())
}

/// Installs logging and tracing for `service`. Must be called inside a Tokio runtime (the OTLP
/// exporter needs one). Spans get trace ids even when nothing is exported, so `traceparent`
/// propagates through a service that does not export.
pub fn init(service: &'static str, identity: Identity) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let disabled = truthy("OTEL_SDK_DISABLED");
    let mut builder = SdkTracerProvider::builder().with_resource(resource(service, &identity));
    if disabled {
        builder = builder.with_sampler(Sampler::AlwaysOff);
    } else if exporting() {
        use opentelemetry_otlp::WithTonicConfig as _;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(tls) = otlp_tls()? {
            exporter = exporter.with_tls_config(tls);
        }
        let exporter = exporter.build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(service);
    global::set_tracer_provider(provider.clone());

    // Only our own spans are exported: h2 and hyper would otherwise add one span per frame.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_filter(filter_fn(|meta| {
            *meta.level() <= Level::INFO
                && (meta.target().starts_with("datapath") || meta.target().starts_with("dpctl"))
        }));
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .fmt_fields(logfmt::LogFields)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(env);
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}
