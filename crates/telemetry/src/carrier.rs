//! W3C trace context in and out of carriers: gRPC metadata (HTTP/2 headers) on every hop, and the
//! `map<string, string> trace_context` of flow and job records in etcd, so work resumed by another
//! process (a restarted scheduler, a worker reporting after a reconnect) joins the trace it belongs to.
use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    Context,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub(crate) struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

pub(crate) struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The W3C fields (`traceparent`, and `tracestate` when there is one) of `span`, for storing in a
/// record. Empty when the span has no valid context (telemetry not initialised).
pub fn carrier_of(span: &Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    let cx = span.context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier
}

/// The current span's [`carrier_of`].
pub fn current_carrier() -> HashMap<String, String> {
    carrier_of(&Span::current())
}

/// The current span's trace id (32 hex digits), when it is sampled: what to search a tracing backend
/// for.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    let cx = Span::current().context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

/// The context a stored carrier names; an empty or malformed carrier gives an empty context (a
/// span parented to it starts a new trace).
pub fn context_from(carrier: &HashMap<String, String>) -> Context {
    global::get_text_map_propagator(|p| p.extract(carrier))
}

/// Makes `span` a child of the context stored in `carrier` (when it holds one). Call it before the
/// span is first entered.
pub fn continue_from(span: &Span, carrier: &HashMap<String, String>) {
    if !carrier.is_empty() {
        let _ = span.set_parent(context_from(carrier));
    }
}
