//! The scaffolding every datapath gRPC server shares, so no service repeats it: `grpc.health.v1`,
//! server reflection (v1 and v1alpha: grpcurl 1.8 speaks only v1alpha), and the cross-cutting tower
//! layers — gRPC spans and trace context, gRPC metrics ([`GrpcMetricsLayer`]), a per-request timeout
//! and a global concurrency limit that health checks bypass ([`limit`]), the largest request message
//! ([`message_size`]) — plus graceful shutdown on
//! SIGTERM or Ctrl-C, and the `/metrics` listener ([`MetricsEndpoint`]). With TLS settings
//! ([`load_tls`]) every server requires a client certificate signed by the cluster CA, and lets a
//! caller call only what its identity may ([`authz`]).
#![warn(missing_docs)]

pub mod authz;
mod grpc_metrics;
pub mod health;
pub mod limit;
pub mod message_size;
mod metrics_endpoint;
pub mod rate;
pub mod streams;

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    service::Routes,
    transport::{server::TcpIncoming, Server},
};

pub use grpc_metrics::{GrpcMetrics, GrpcMetricsLayer};
pub use metrics_endpoint::MetricsEndpoint;

/// Flags shared by every server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerOptions {
    /// Deadline of one unary call (a stream's handler must answer its headers within it).
    #[arg(long, env = "DATAPATH_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Calls handled at once across all connections; more wait for a slot. Health checks are exempt.
    #[arg(long, env = "DATAPATH_CONCURRENCY_LIMIT", default_value_t = 256)]
    pub concurrency_limit: usize,
    /// Calls per second one caller (a certificate's identity; an address under `--insecure`) may
    /// make; beyond it a call waits for its turn, and one that would wait over a second is refused
    /// (RESOURCE_EXHAUSTED). The services' own identities are exempt. 0: no limit.
    #[arg(long, env = "DATAPATH_MAX_CALL_RATE", default_value_t = 1000)]
    pub max_call_rate: u32,
    /// Server streams (WatchJobs, WatchOperation) open at once; more are refused
    /// (RESOURCE_EXHAUSTED). The scheduler's own streams are exempt.
    #[arg(long, env = "DATAPATH_MAX_STREAMS", default_value_t = streams::DEFAULT_TOTAL)]
    pub max_streams: usize,
    /// Server streams one caller (a certificate's identity) may hold open at once.
    #[arg(long, env = "DATAPATH_MAX_STREAMS_PER_CALLER", default_value_t = streams::DEFAULT_PER_CALLER)]
    pub max_streams_per_caller: usize,
    /// Mutual TLS for this process's server and its clients, or `--insecure`.
    #[command(flatten)]
    pub tls: datapath_tls::TlsOptions,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            concurrency_limit: 256,
            max_call_rate: 1000,
            max_streams: streams::DEFAULT_TOTAL,
            max_streams_per_caller: streams::DEFAULT_PER_CALLER,
            tls: datapath_tls::TlsOptions::insecure(),
        }
    }
}

impl ServerOptions {
    /// The stream limits these options set.
    pub fn stream_limits(&self) -> streams::StreamLimits {
        streams::StreamLimits::new(self.max_streams, self.max_streams_per_caller)
    }
}

/// Loads the process's TLS settings: `None` under `--insecure`, which is logged as a warning and
/// exported as `datapath_insecure 1`.
pub fn load_tls(
    options: &ServerOptions,
) -> Result<Option<datapath_tls::Tls>, datapath_tls::TlsError> {
    let tls = options.tls.load()?;
    match &tls {
        Some(t) => tracing::info!(identity = %t.identity(), "mutual TLS on"),
        None => tracing::warn!(
            "--insecure: gRPC in plaintext and without authentication; anyone who reaches a port \
             may do anything"
        ),
    }
    datapath_telemetry::metrics::set_insecure(tls.is_none());
    Ok(tls)
}

/// Serves `routes` plus reflection on `listener` until `shutdown` resolves, then drains in-flight calls;
/// over mutual TLS when `tls` is given. Reflection lists `services` (the full names of what `routes`
/// serves) and health, and resolves every datapath, health and `google.rpc` error-detail type, so
/// grpcurl prints error details by name.
pub async fn serve(
    listener: TcpListener,
    options: &ServerOptions,
    tls: Option<&datapath_tls::Tls>,
    services: &[&str],
    routes: Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(datapath_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for s in services {
            b = b.with_service_name(*s);
        }
        b
    };
    let v1 = reflection()
        .build_v1()
        .expect("embedded descriptor sets are valid");
    let v1alpha = reflection()
        .build_v1alpha()
        .expect("embedded descriptor sets are valid");
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.server())?;
    }
    builder
        .timeout(options.request_timeout)
        .layer(datapath_telemetry::GrpcTraceLayer)
        .layer(GrpcMetricsLayer::new(options.request_timeout))
        .layer(authz::AuthorizeLayer::new(tls.is_some()))
        .layer(rate::CallerRateLayer::new(options.max_call_rate))
        .layer(limit::ConcurrencyLimitExceptHealthLayer::new(
            options.concurrency_limit,
        ))
        .layer(message_size::MessageSizeLayer::default())
        .add_routes(routes)
        .add_service(v1)
        .add_service(v1alpha)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// Accepted connections with Nagle's algorithm off: small gRPC answers otherwise wait for the peer's
/// delayed ACK (about 40 ms on Linux), which made every unary call that slow.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Turns an environment file (`DATAPATH_NAME=value` lines, as the systemd units read) into the
/// command-line flags of `command` with those environment variables, so a test can check that an
/// example file names only real settings and parses. Other variables (`RUST_LOG`, `OTEL_*`) and
/// comments are skipped.
pub fn env_file_args(command: &clap::Command, text: &str) -> Result<Vec<String>, String> {
    let mut args = vec![command.get_name().to_string()];
    for line in text.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if line.starts_with('#') || !key.starts_with("DATAPATH_") {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == key))
            .ok_or_else(|| format!("{key} is not a setting of {}", command.get_name()))?;
        let long = arg.get_long().ok_or_else(|| format!("{key} has no flag"))?;
        args.push(format!("--{long}={value}"));
    }
    Ok(args)
}
