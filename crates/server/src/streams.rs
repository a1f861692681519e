//! Limits on open server streams (WatchJobs, WatchOperation). Each open stream holds a task, an etcd
//! watch and a channel, so a client that opens thousands could starve the service and etcd. A
//! stream takes a permit from the service's total and one from its caller's share, and gives both
//! back when it closes; past either, the call is refused with `RESOURCE_EXHAUSTED`
//! (`TOO_MANY_STREAMS`) before anything is opened. The scheduler's own streams are exempt: the
//! engine opens one per running copy, bounded by its flows. A caller is its certificate's
//! identity, or its address under `--insecure`.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use datapath_tls::Identity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Request, Status};

/// The default limit of open streams per service.
pub const DEFAULT_TOTAL: usize = 1024;
/// The default limit of open streams per caller.
pub const DEFAULT_PER_CALLER: usize = 64;

/// A service's stream limits; share one per service.
pub struct StreamLimits {
    total: Arc<Semaphore>,
    total_max: usize,
    per_caller: usize,
    callers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// An open stream's permits; dropped with the stream.
pub struct StreamPermit {
    _total: Option<OwnedSemaphorePermit>,
    _caller: Option<OwnedSemaphorePermit>,
}

impl StreamLimits {
    /// At most `total` open streams, `per_caller` of them from one caller.
    pub fn new(total: usize, per_caller: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            total_max: total,
            per_caller,
            callers: Mutex::default(),
        }
    }

    /// Permits for one more stream of `req`'s caller, or `RESOURCE_EXHAUSTED`.
    pub fn acquire<T>(&self, req: &Request<T>) -> Result<StreamPermit, Status> {
        let identity = crate::authz::caller(req);
        if matches!(identity, Some(Identity::Scheduler)) {
            return Ok(StreamPermit {
                _total: None,
                _caller: None,
            });
        }
        let caller = match identity {
            Some(id) => id.to_string(),
            None => req
                .remote_addr()
                .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string()),
        };
        let share = {
            let mut callers = self.callers.lock().expect("stream limits lock");
            // Forget callers with nothing open, so the table stays as small as the open streams.
            if callers.len() > 4096 {
                let full = self.per_caller;
                callers.retain(|_, s| s.available_permits() < full);
            }
            callers
                .entry(caller.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller)))
                .clone()
        };
        let caller_permit = share.try_acquire_owned().map_err(|_| {
            too_many(format!(
                "{caller} already has {} streams open; close one first",
                self.per_caller
            ))
        })?;
        let total_permit = self.total.clone().try_acquire_owned().map_err(|_| {
            too_many(format!(
                "this service already has {} streams open; try again later",
                self.total_max
            ))
        })?;
        Ok(StreamPermit {
            _total: Some(total_permit),
            _caller: Some(caller_permit),
        })
    }
}

/// A response stream that holds its permits until the client drops it.
pub struct Permitted<S> {
    inner: S,
    _permit: StreamPermit,
}

impl<S> Permitted<S> {
    /// `inner`, holding `permit` for its life.
    pub fn new(inner: S, permit: StreamPermit) -> Self {
        Self {
            inner,
            _permit: permit,
        }
    }
}

impl<S: tokio_stream::Stream + Unpin> tokio_stream::Stream for Permitted<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

fn too_many(message: String) -> Status {
    datapath_api::error::status(Code::ResourceExhausted, "TOO_MANY_STREAMS", message, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_share_and_the_service_its_total() {
        let limits = StreamLimits::new(3, 2);
        let from = |ip: &str| {
            let mut r = Request::new(());
            r.extensions_mut()
                .insert(crate::authz::Caller(Identity::Operator(ip.into())));
            r
        };
        let a1 = limits.acquire(&from("a")).unwrap();
        let _a2 = limits.acquire(&from("a")).unwrap();
        let e = limits.acquire(&from("a")).err().unwrap();
        assert_eq!(e.code(), Code::ResourceExhausted);
        let _b1 = limits.acquire(&from("b")).unwrap();
        assert!(limits.acquire(&from("b")).is_err(), "the total is 3");
        drop(a1);
        assert!(
            limits.acquire(&from("b")).is_ok(),
            "a closed stream gives its permits back"
        );
        let mut engine = Request::new(());
        engine
            .extensions_mut()
            .insert(crate::authz::Caller(Identity::Scheduler));
        assert!(limits.acquire(&engine).is_ok(), "the engine is exempt");
    }
}
