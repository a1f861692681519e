//! The global concurrency limit, with `grpc.health.v1.Health` exempt.
//!
//! A server-wide limit protects a service from a flood, but applied to every call it starves the one
//! caller that must always get an answer: the health checker. When etcd stops answering, every call
//! that reads it hangs until its deadline and can fill every slot; a probe queued behind them times out
//! and the orchestrator kills a process that was merely waiting — or, worse, cannot see that it is
//! NOT_SERVING. Health calls read an in-memory status and never wait on anything, so they bypass the
//! limit; every other call takes a slot for as long as its response future runs (as tower's
//! `GlobalConcurrencyLimit` does: a stream's body does not hold one).
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// The path prefix of every health method.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// A layer limiting calls in flight across every connection to `max`, except health calls.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitExceptHealthLayer {
    slots: Arc<Semaphore>,
}

impl ConcurrencyLimitExceptHealthLayer {
    /// At most `max` non-health calls at once (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitExceptHealthLayer {
    type Service = ConcurrencyLimitExceptHealth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimitExceptHealth {
            inner,
            slots: self.slots.clone(),
        }
    }
}

/// The service [`ConcurrencyLimitExceptHealthLayer`] makes.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitExceptHealth<S> {
    inner: S,
    slots: Arc<Semaphore>,
}

impl<S, B> Service<http::Request<B>> for ConcurrencyLimitExceptHealth<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        // The readied service goes into the future; a fresh clone stays for the next call.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let slots = self.slots.clone();
        Box::pin(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _slot = slots.acquire_owned().await.ok();
            ready.call(request).await
        })
    }
}
