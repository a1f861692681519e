//! Calls per second per caller. A client that loops on calls — malformed ones cost the server
//! TLS, HTTP/2 and a refusal each — must not take the CPU that a running copy needs. Each caller
//! (a certificate's identity, or its address under `--insecure`) has a token bucket of
//! `--max-call-rate` tokens refilled at that rate: a call beyond it **waits** for its token (so a
//! looping client is slowed to the rate instead of spinning on refusals), and a call that would
//! wait more than a second is refused with `RESOURCE_EXHAUSTED` (`TOO_MANY_CALLS`). Waiting happens
//! before the concurrency limit, so it holds no slot. The services' own identities (scheduler,
//! job-tracker, hosts) and health checks are exempt: their rates are bounded by their work.
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use datapath_tls::Identity;
use tonic::{transport::server::TcpConnectInfo, Code};
use tower::{Layer, Service};

use crate::authz::Caller;

/// The longest a call waits for its token before it is refused.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Callers remembered at most; idle ones are forgotten first.
const MAX_CALLERS: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of every caller of one server.
#[derive(Debug)]
struct Buckets {
    rate: f64,
    callers: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    /// How long `caller`'s next call must wait, or `None` if it may not (more than [`MAX_WAIT`]).
    fn reserve(&self, caller: &str, now: Instant) -> Option<Duration> {
        let mut callers = self.callers.lock().expect("rate lock");
        if callers.len() >= MAX_CALLERS && !callers.contains_key(caller) {
            let rate = self.rate;
            callers.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < rate);
        }
        let bucket = callers.entry(caller.to_string()).or_insert(Bucket {
            tokens: self.rate,
            at: now,
        });
        let refilled = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        let tokens = (bucket.tokens + refilled).min(self.rate) - 1.0;
        let wait = Duration::from_secs_f64((-tokens).max(0.0) / self.rate);
        if wait > MAX_WAIT {
            return None;
        }
        *bucket = Bucket { tokens, at: now };
        Some(wait)
    }
}

/// The layer; `rate` 0 turns it off.
#[derive(Debug, Clone)]
pub struct CallerRateLayer {
    buckets: Option<Arc<Buckets>>,
}

impl CallerRateLayer {
    /// At most `rate` calls per second per caller (0: no limit).
    pub fn new(rate: u32) -> Self {
        Self {
            buckets: (rate > 0).then(|| {
                Arc::new(Buckets {
                    rate: f64::from(rate),
                    callers: Mutex::default(),
                })
            }),
        }
    }
}

impl<S> Layer<S> for CallerRateLayer {
    type Service = CallerRate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerRate {
            inner,
            buckets: self.buckets.clone(),
        }
    }
}

/// See [`CallerRateLayer`].
#[derive(Debug, Clone)]
pub struct CallerRate<S> {
    inner: S,
    buckets: Option<Arc<Buckets>>,
}

/// Who a rate applies to: `None` for the exempt.
fn caller<B>(req: &http::Request<B>) -> Option<String> {
    if req.uri().path().starts_with("/grpc.health.v1.Health/") {
        return None;
    }
    match req.extensions().get::<Caller>().map(|c| &c.0) {
        Some(Identity::Scheduler | Identity::JobTracker | Identity::Host(_)) => None,
        Some(other) => Some(other.to_string()),
        None => Some(
            req.extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map_or_else(|| "unknown".to_string(), |a: SocketAddr| a.ip().to_string()),
        ),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> Service<http::Request<B>> for CallerRate<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The ready clone serves this call; the next call readies the other (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let wait = match (&self.buckets, caller(&req)) {
            (Some(buckets), Some(who)) => match buckets.reserve(&who, Instant::now()) {
                Some(wait) => wait,
                None => {
                    let status = datapath_api::error::status(
                        Code::ResourceExhausted,
                        "TOO_MANY_CALLS",
                        format!("{who} calls faster than this service takes; slow down"),
                        None,
                    );
                    return Box::pin(async move { Ok(status.into_http::<ResB>()) });
                }
            },
            _ => Duration::ZERO,
        };
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_burst_then_waits_then_is_refused() {
        let b = Buckets {
            rate: 10.0,
            callers: Mutex::default(),
        };
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.reserve("a", now), Some(Duration::ZERO), "the burst");
        }
        let w = b.reserve("a", now).unwrap();
        assert!(
            w > Duration::from_millis(90) && w <= Duration::from_millis(110),
            "{w:?}"
        );
        for _ in 0..9 {
            assert!(b.reserve("a", now).is_some());
        }
        assert_eq!(b.reserve("a", now), None, "more than a second of waiting");
        assert_eq!(b.reserve("b", now), Some(Duration::ZERO), "another caller");
        let later = now + Duration::from_secs(3);
        assert_eq!(b.reserve("a", later), Some(Duration::ZERO), "refilled");
    }
}
