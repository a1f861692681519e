//! One trace crosses a gRPC hop: a call made through a `traced` channel inside a span is a client
//! span, the caller's child, and arrives at a datapath server whose span is the client span's child,
//! with the same trace id and the RPC attributes — the tower layers on both sides, no handler code
//! involved.
use std::time::Duration;

use datapath_server::{serve, ServerOptions};
use opentelemetry::{
    global,
    trace::{SpanKind, TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{InMemorySpanExporter, SdkTracerProvider},
};
use tonic::{service::Routes, transport::Endpoint};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::test(flavor = "current_thread")]
async fn the_server_span_continues_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // Thread-local, and the current-thread runtime runs the server on this thread too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let routes = Routes::new(health);
        serve(
            listener,
            &ServerOptions::default(),
            None,
            &[],
            routes,
            async {
                let _ = stopped.await;
            },
        )
        .await
    });

    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(datapath_telemetry::traced(channel));
    let span = tracing::info_span!("caller");
    let caller = span.context().span().span_context().clone();
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .instrument(span)
        .await
        .unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.name == "grpc.health.v1.Health/Check" && s.span_kind == kind)
            .unwrap_or_else(|| {
                panic!(
                    "no {kind:?} span among {:?}",
                    spans
                        .iter()
                        .map(|s| (&s.name, &s.span_kind))
                        .collect::<Vec<_>>()
                )
            })
    };
    let (sent, served) = (find(SpanKind::Client), find(SpanKind::Server));
    assert!(caller.is_valid());
    assert_eq!(sent.span_context.trace_id(), caller.trace_id());
    assert_eq!(sent.parent_span_id, caller.span_id());
    assert_eq!(
        served.span_context.trace_id(),
        caller.trace_id(),
        "the server started a new trace"
    );
    assert_eq!(
        served.parent_span_id,
        sent.span_context.span_id(),
        "the server span is not the client span's child"
    );
    for span in [sent, served] {
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|a| a.key.as_str() == k)
                .map(|a| a.value.to_string())
        };
        assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            attr("rpc.service").as_deref(),
            Some("grpc.health.v1.Health")
        );
        assert_eq!(attr("rpc.method").as_deref(), Some("Check"));
        assert_eq!(attr("rpc.grpc.status_code").as_deref(), Some("0"));
    }
}
