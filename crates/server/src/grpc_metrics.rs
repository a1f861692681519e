//! A tower layer that counts and times every gRPC call a server handles, by service, method and the
//! status code the client really gets:
//! - a trailers-only answer (how tonic answers a handler's error) carries `grpc-status` in its
//!   headers, and is recorded when the headers leave;
//! - any other answer carries it in the trailers at the end of the body, so the body is wrapped
//!   (telemetry's `Observed`, as the span layer does) and the call recorded when the trailers pass (a
//!   stream: when it ends, so its time is its lifetime); a body that ends without any is UNKNOWN;
//! - a call dropped before it ended (the client reset it, or the server's deadline ran out and tonic
//!   answered `DEADLINE_EXCEEDED` around this layer) is recorded when dropped, as
//!   `DEADLINE_EXCEEDED` if its deadline had passed, else `CANCELLED`.
//!
//! Paths that name no method this server's descriptor sets declare are labelled `unknown`, so a
//! client cannot grow the number of series by calling made-up methods.
use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use datapath_telemetry::{
    grpc::{status_in, Observed},
    metrics::{code_name, common, GrpcLabels},
};
use http::{HeaderMap, Request, Response};
use prost::Message as _;
use tonic::Code;
use tower::{Layer, Service};

/// Adds [`GrpcMetrics`] around a server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    timeout: Duration,
}

impl GrpcMetricsLayer {
    /// `timeout` is the server's own request deadline (a client's `grpc-timeout` may be shorter).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body,
{
    type Response = Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let deadline = grpc_timeout(req.headers()).map_or(self.timeout, |t| t.min(self.timeout));
        let call = Call::start(req.uri().path(), deadline);
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut call = call;
            match response.await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = match status_in(&parts.headers) {
                        Some(code) => Observed::ended(body, code, move |c| call.end(c)),
                        None => Observed::new(body, move |c| call.end_of_body(c)),
                    };
                    Ok(Response::from_parts(parts, body))
                }
                Err(e) => {
                    call.end(Code::Unknown);
                    Err(e)
                }
            }
        })
    }
}

/// One call in flight; records itself exactly once (on [`Call::end`] or when dropped).
struct Call {
    labels: Option<GrpcLabels>,
    started: Instant,
    deadline: Duration,
}

impl Call {
    fn start(path: &str, deadline: Duration) -> Self {
        let (grpc_service, grpc_method) = match KNOWN.contains(path) {
            true => path[1..].split_once('/').unwrap_or(("unknown", "unknown")),
            false => ("unknown", "unknown"),
        };
        Self {
            labels: Some(GrpcLabels {
                grpc_service: grpc_service.to_string(),
                grpc_method: grpc_method.to_string(),
                grpc_code: "OK",
            }),
            started: Instant::now(),
            deadline,
        }
    }

    fn end(&mut self, code: Code) {
        let Some(mut labels) = self.labels.take() else {
            return;
        };
        labels.grpc_code = code_name(code);
        let m = common();
        m.grpc_handled.get_or_create(&labels).inc();
        m.grpc_handling
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }

    /// The body ended with `code`; one dropped before its end (CANCELLED) past the call's deadline
    /// was cut by it.
    fn end_of_body(mut self, code: Code) {
        let code = match code {
            Code::Cancelled => self.dropped(),
            c => c,
        };
        self.end(code);
    }

    fn dropped(&self) -> Code {
        match self.started.elapsed() >= self.deadline {
            true => Code::DeadlineExceeded,
            false => Code::Cancelled,
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.dropped();
        self.end(code);
    }
}

/// The client's `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Every `/package.Service/Method` path a datapath server may serve: datapath's, health's and
/// reflection's.
static KNOWN: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let sets = [
        datapath_api::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut paths = HashSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            continue;
        };
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    paths
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_every_unit() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(h("3S"), Some(Duration::from_secs(3)));
        assert_eq!(h("250m"), Some(Duration::from_millis(250)));
        assert_eq!(h("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(h("10n"), Some(Duration::from_nanos(10)));
        assert_eq!(h("S"), None);
        assert_eq!(h("5x"), None);
        assert_eq!(h(""), None);
    }

    #[test]
    fn known_paths_come_from_the_descriptor_sets() {
        assert!(KNOWN.contains("/datapath.v1.HostWorkerService/CopyData"));
        assert!(KNOWN.contains("/grpc.health.v1.Health/Check"));
        assert!(KNOWN.contains("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!KNOWN.contains("/datapath.v1.HostWorkerService/NoSuchMethod"));
    }
}
