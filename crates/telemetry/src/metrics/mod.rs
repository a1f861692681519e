//! The process's one Prometheus registry and the families every service shares. Each crate registers
//! its own families here once (a `LazyLock` in its `metrics.rs`) and [`encode`] renders them all as
//! Prometheus text (format 0.0.4) for `/metrics`.
//!
//! Conventions (issue 5, agreed by the whole team): every name starts with `datapath_`, is in base
//! units (seconds, bytes), counters end in `_total` (prometheus-client appends it: register counters
//! without it), and no label ever carries a job, volume or operation id — labels take a small, fixed
//! set of values, so the number of series stays bounded whatever the traffic.
pub mod text;

use std::sync::{LazyLock, Mutex, RwLock};

use prometheus_client::{
    encoding::{prometheus_text, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(Default::default);

type Hook = Box<dyn Fn() + Send + Sync>;
static HOOKS: LazyLock<Mutex<Vec<Hook>>> = LazyLock::new(Default::default);

/// Adds a family to the process's registry. `name` must be unique in the process; a counter's name
/// is given without `_total`.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    REGISTRY
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .register(name, help, metric);
}

/// Runs `hook` before every scrape, so gauges that mirror in-memory state (slots, roles) are read
/// when asked for instead of kept in step with every change.
pub fn on_scrape(hook: impl Fn() + Send + Sync + 'static) {
    HOOKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(hook));
}

/// Every registered family, as Prometheus text.
pub fn encode() -> String {
    for hook in HOOKS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        hook();
    }
    let mut text = String::new();
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// A histogram family whose every series has `buckets` (a plain `fn`, so the type can be named).
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A counter family.
pub type CounterFamily<L> = Family<L, Counter>;

/// A gauge family.
pub type GaugeFamily<L> = Family<L, Gauge>;

/// Latency buckets for calls that usually take milliseconds but may wait for seconds (gRPC, etcd):
/// 0.5 ms to 5 min.
pub fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0,
    ])
}

/// Buckets for long work (copies, flow steps): 10 ms to 2 h.
pub fn long_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
        3600.0, 7200.0,
    ])
}

/// The labels of one gRPC call on the server side.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// The full service name (`datapath.v1.HostWorkerService`), or `unknown` for a path no service
    /// of this server declares.
    pub grpc_service: String,
    /// The method name (`CopyData`), or `unknown`.
    pub grpc_method: String,
    /// The status code's name (`OK`, `NOT_FOUND`, …).
    pub grpc_code: &'static str,
}

/// The families every service has.
pub struct Common {
    /// `datapath_grpc_server_handled_total`: calls ended, by service, method and code.
    pub grpc_handled: CounterFamily<GrpcLabels>,
    /// `datapath_grpc_server_handling_seconds`: from the request to the end of the response
    /// (a stream: until its body ends).
    pub grpc_handling: HistogramFamily<GrpcLabels>,
    /// `datapath_build_info{service,version}`: always 1.
    pub build_info: GaugeFamily<[(&'static str, String); 2]>,
    /// `datapath_insecure`: 1 when the process runs with `--insecure` (plaintext, no authentication).
    pub insecure: prometheus_client::metrics::gauge::Gauge,
}

/// The shared families, registered on first use.
pub fn common() -> &'static Common {
    static COMMON: LazyLock<Common> = LazyLock::new(|| {
        let c = Common {
            grpc_handled: Default::default(),
            grpc_handling: Family::new_with_constructor(latency_histogram),
            build_info: Default::default(),
            insecure: Default::default(),
        };
        register(
            "datapath_grpc_server_handled",
            "gRPC calls completed on the server, by service, method and status code",
            c.grpc_handled.clone(),
        );
        register(
            "datapath_grpc_server_handling_seconds",
            "Time from a gRPC request to the end of its response (streams: until the stream ends)",
            c.grpc_handling.clone(),
        );
        register(
            "datapath_build_info",
            "Always 1; labels name the service and its version",
            c.build_info.clone(),
        );
        register(
            "datapath_insecure",
            "1 when this process serves and calls gRPC in plaintext without authentication \
             (--insecure), 0 with mutual TLS",
            c.insecure.clone(),
        );
        c
    });
    &COMMON
}

/// Sets `datapath_insecure`.
pub fn set_insecure(insecure: bool) {
    common().insecure.set(i64::from(insecure));
}

/// Registers the shared families and sets `datapath_build_info` for `service`; call once at start-up,
/// so the families are present (with zero series) from the first scrape.
pub fn init(service: &'static str) {
    common()
        .build_info
        .get_or_create(&[
            ("service", service.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ])
        .set(1);
}

/// The canonical name of a gRPC status code, as the `grpc_code` label spells it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_families_render_as_prometheus_text() {
        init("unit-test");
        let labels = GrpcLabels {
            grpc_service: "datapath.v1.X".into(),
            grpc_method: "Y".into(),
            grpc_code: code_name(tonic::Code::NotFound),
        };
        common().grpc_handled.get_or_create(&labels).inc();
        common().grpc_handling.get_or_create(&labels).observe(0.003);
        let text = encode();
        assert!(
            text.contains("# TYPE datapath_grpc_server_handled_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"datapath_grpc_server_handled_total{grpc_service="datapath.v1.X",grpc_method="Y",grpc_code="NOT_FOUND"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"datapath_build_info{service="unit-test",version="#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE datapath_grpc_server_handling_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"datapath_grpc_server_handling_seconds_bucket{grpc_service="datapath.v1.X",grpc_method="Y",grpc_code="NOT_FOUND",le="0.005"} 1"#
            ),
            "{text}"
        );
    }
}
