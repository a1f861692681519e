//! The server side of a gRPC hop: a tower layer giving every call a `grpc.server` span (OpenTelemetry
//! RPC conventions, named `<service>/<method>`), the child of the caller's `traceparent` when there is
//! one. Handlers run inside it, and it ends when the answer's body does, with the call's status.
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use opentelemetry::{global, trace::Status as SpanStatus};
use tonic::{transport::server::TcpConnectInfo, Code};
use tower::{Layer, Service};
use tracing::{Instrument as _, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    carrier::HeaderExtractor,
    grpc::{method_of, status_in, Observed, Pending},
};

/// Gives every call a server span; see the module.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTrace { inner }
    }
}

/// The service [`GrpcTraceLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
}

/// The codes that are the server's fault, so mark its span an error (the RPC conventions: a
/// NOT_FOUND or INVALID_ARGUMENT is a correct answer, not a server failure).
fn server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn end(span: &Span, code: Code) {
    span.set_attribute("rpc.grpc.status_code", code as i64);
    if server_error(code) {
        span.set_status(SpanStatus::error(format!("{code:?}")));
    }
}

/// The span of one incoming call.
pub fn server_span<B>(req: &Request<B>) -> Span {
    let (service, method) = method_of(req.uri().path());
    let span = tracing::info_span!(
        target: "datapath_telemetry",
        "grpc.server",
        otel.name = %format!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let _ = span.set_parent(parent);
    if let Some(info) = req.extensions().get::<TcpConnectInfo>() {
        if let Some(local) = info.local_addr() {
            span.set_attribute("server.address", local.ip().to_string());
            span.set_attribute("server.port", i64::from(local.port()));
        }
        if let Some(remote) = info.remote_addr() {
            span.set_attribute("network.peer.address", remote.ip().to_string());
            span.set_attribute("network.peer.port", i64::from(remote.port()));
        }
    }
    span
}

impl<S, B, RB> Service<Request<B>> for GrpcTrace<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<Observed<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let span = server_span(&req);
        let call = self.inner.call(req);
        Box::pin(
            async move {
                // A call the client gives up on before the answer drops this future: CANCELLED.
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
                        end(&span, Code::Internal);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}
