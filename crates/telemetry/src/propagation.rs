//! W3C trace-context over gRPC metadata (HTTP/2 headers).
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
};
use tonic::{body::Body, transport::Channel};
use tower::util::MapRequest;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The span of one incoming gRPC call, a child of the caller's `traceparent` when there is one. Give
/// it to tonic's `Server::trace_fn`.
pub fn server_span(req: &Request<()>) -> Span {
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %req.uri().path(),
        otel.kind = "server",
        rpc.system = "grpc",
    );
    let _ = span.set_parent(parent);
    span
}

fn inject(mut req: Request<Body>) -> Request<Body> {
    let cx = Span::current().context();
    global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(req.headers_mut()))
    });
    req
}

/// A channel whose every request carries the current span's `traceparent`.
pub type TracedChannel = MapRequest<Channel, fn(Request<Body>) -> Request<Body>>;

/// Wraps `channel` so calls made through it propagate the caller's trace.
pub fn traced(channel: Channel) -> TracedChannel {
    MapRequest::new(channel, inject as fn(Request<Body>) -> Request<Body>)
}
