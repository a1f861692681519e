//! What the gRPC tracing layers share: the method a request path names, and a response body that
//! tells when the call really ended and with which `grpc-status` (in the headers of a trailers-only
//! answer, else in the trailers, which arrive after the last message of a stream).
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::HeaderMap;
use http_body::{Body, Frame};
use tonic::Code;

/// `/datapath.v1.HostWorkerService/CopyData` → (`datapath.v1.HostWorkerService`, `CopyData`).
pub fn method_of(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// The `grpc-status` in `headers`, if any.
pub fn status_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

type OnEnd = Box<dyn FnOnce(Code) + Send>;

/// The span of a call not answered yet: ended with `CANCELLED` (through `end`) if dropped before
/// [`Pending::answered`], as when the caller gives up first.
pub(crate) struct Pending {
    span: Option<tracing::Span>,
    end: fn(&tracing::Span, Code),
}

impl Pending {
    pub(crate) fn new(span: tracing::Span, end: fn(&tracing::Span, Code)) -> Self {
        Self {
            span: Some(span),
            end,
        }
    }

    /// The answer came: the span is the caller's to end.
    pub(crate) fn answered(mut self) -> tracing::Span {
        self.span.take().unwrap_or_else(tracing::Span::none)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            (self.end)(&span, Code::Cancelled);
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that calls its `on_end` once: with the status in its trailers (`UNKNOWN` if
    /// they have none), with `UNKNOWN` when it ends without trailers or on a body error (the client
    /// sees no status then), and with `CANCELLED` when dropped before its end. A trailers-only
    /// answer's status is in the headers: see [`Observed::ended`].
    pub struct Observed<B> {
        #[pin]
        inner: B,
        on_end: Option<OnEnd>,
    }

    impl<B> PinnedDrop for Observed<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(f) = this.project().on_end.take() {
                f(Code::Cancelled);
            }
        }
    }
}

impl<B> Observed<B> {
    /// Wraps `inner`; `on_end` runs exactly once.
    pub fn new(inner: B, on_end: impl FnOnce(Code) + Send + 'static) -> Self {
        Self {
            inner,
            on_end: Some(Box::new(on_end)),
        }
    }

    /// A body whose end is already known (the status was in the headers): `on_end` runs now.
    pub fn ended(inner: B, code: Code, on_end: impl FnOnce(Code) + Send + 'static) -> Self {
        on_end(code);
        Self {
            inner,
            on_end: None,
        }
    }
}

impl<B: Body> Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let end = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| status_in(t).unwrap_or(Code::Unknown)),
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Some(Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = end {
            if let Some(f) = this.on_end.take() {
                f(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            method_of("/datapath.v1.HostWorkerService/CopyData"),
            ("datapath.v1.HostWorkerService", "CopyData")
        );
        assert_eq!(method_of("/odd"), ("odd", ""));
    }

    #[test]
    fn the_status_is_read_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(status_in(&h), None);
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(status_in(&h), Some(Code::NotFound));
    }
}
