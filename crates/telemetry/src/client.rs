//! The client side of a gRPC hop: a `grpc.client` span per call (OpenTelemetry RPC conventions,
//! named `<service>/<method>`), whose context travels in the request's `traceparent`, and which ends
//! when the answer's body does, with the call's status.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response};
use opentelemetry::{global, trace::Status as SpanStatus};
use tonic::{body::Body, transport::Channel, Code};
use tower::Service;
use tracing::{Instrument as _, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    carrier::HeaderInjector,
    grpc::{method_of, status_in, Observed, Pending},
};

/// A channel whose every call is a client span, carried to the server as `traceparent`.
#[derive(Clone)]
pub struct TracedChannel {
    inner: Channel,
    /// `host:port` of the server, for `server.address` / `server.port`.
    peer: Option<Arc<(String, u16)>>,
}

/// Wraps `channel` so calls made through it are traced and propagate the caller's trace.
pub fn traced(channel: Channel) -> TracedChannel {
    TracedChannel {
        inner: channel,
        peer: None,
    }
}

/// [`traced`], naming the server (`http://host:port` or `host:port`) on every span.
pub fn traced_to(channel: Channel, server: &str) -> TracedChannel {
    let authority = server.split_once("://").map_or(server, |(_, a)| a);
    let peer = authority
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.trim_end_matches('/').parse().ok()?)));
    TracedChannel {
        inner: channel,
        peer: peer.map(Arc::new),
    }
}

/// Records the end of a call on its span: the status code, and an error status for any code but OK
/// (a client sees every failure as one).
fn end(span: &Span, code: Code) {
    span.set_attribute("rpc.grpc.status_code", code as i64);
    if code != Code::Ok {
        span.set_status(SpanStatus::error(format!("{code:?}")));
    }
}

fn client_span(req: &Request<Body>, peer: Option<&(String, u16)>) -> Span {
    let (service, method) = method_of(req.uri().path());
    let span = tracing::info_span!(
        target: "datapath_telemetry",
        "grpc.client",
        otel.name = %format!("{service}/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    if let Some((host, port)) = peer {
        span.set_attribute("server.address", host.clone());
        span.set_attribute("server.port", i64::from(*port));
    }
    span
}

impl Service<Request<Body>> for TracedChannel {
    type Response = Response<Observed<Body>>;
    type Error = <Channel as Service<Request<Body>>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let span = client_span(&req, self.peer.as_deref());
        let cx = span.context();
        global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(req.headers_mut()))
        });
        let call = self.inner.call(req);
        Box::pin(
            async move {
                // A caller that gives up before the answer (a timeout, an aborted task) drops this
                // future: the span then ends CANCELLED.
                let pending = Pending::new(Span::current(), end);
                let result = call.await;
                let span = pending.answered();
                match result {
                    Ok(resp) => {
                        let (parts, body) = resp.into_parts();
                        let body = match status_in(&parts.headers) {
                            Some(code) => Observed::ended(body, code, move |c| end(&span, c)),
                            None => Observed::new(body, move |c| end(&span, c)),
                        };
                        Ok(Response::from_parts(parts, body))
                    }
                    Err(e) => {
                        end(&span, Code::Unavailable);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}
