//! `grpc.health.v1` as every datapath server reports it: one status for the whole server (`""`) and
//! the same status under each service name it serves (`datapath.v1.<X>Service`), set together so a
//! checker asking either sees one answer. Statuses start NOT_SERVING (tonic-health would start `""`
//! SERVING before anything is known) and a Watch stream gets a message only when the status changes,
//! as the health protocol says, not at every probe.
//!
//! What "serving" means is the service's own: a host-worker follows its session lease; the job-tracker
//! and the scheduler probe their store, etcd, with [`probe_forever`].
use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tonic_health::{
    pb::health_server::{Health, HealthServer},
    server::HealthReporter,
    ServingStatus,
};
use tracing::{info, warn};

/// The health of one server: `""` plus its service names, always equal.
#[derive(Clone)]
pub struct ServerHealth {
    reporter: HealthReporter,
    names: Arc<[String]>,
    current: Arc<Mutex<ServingStatus>>,
}

impl ServerHealth {
    /// A health service for `services` and the whole server, all NOT_SERVING; route the returned
    /// server, set the status through the handle.
    pub async fn new(services: &[&str]) -> (Self, HealthServer<impl Health>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let names: Arc<[String]> = std::iter::once("")
            .chain(services.iter().copied())
            .map(String::from)
            .collect();
        for name in names.iter() {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        let health = Self {
            reporter,
            names,
            current: Arc::new(Mutex::new(ServingStatus::NotServing)),
        };
        (health, server)
    }

    /// Sets every name to SERVING (`true`) or NOT_SERVING; watchers hear of it only when it changes.
    /// Returns whether it changed.
    pub async fn set(&self, serving: bool) -> bool {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let mut current = self.current.lock().await;
        if *current == status {
            return false;
        }
        for name in self.names.iter() {
            self.reporter.set_service_status(name, status).await;
        }
        *current = status;
        true
    }
}

/// How often a store probe runs, and how long one may take before it counts as a failure.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTiming {
    /// Pause between probes.
    pub every: Duration,
    /// A probe slower than this fails: a store that hangs is as good as down.
    pub timeout: Duration,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Runs `probe` forever, SERVING while it succeeds in time and NOT_SERVING while it fails; a change is
/// logged once. For services whose liveness is their store's (the job-tracker, the scheduler).
pub async fn probe_forever<F, Fut, E>(health: ServerHealth, timing: ProbeTiming, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        let outcome = match tokio::time::timeout(timing.timeout, probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", timing.timeout)),
        };
        let serving = outcome.is_ok();
        if health.set(serving).await {
            match outcome {
                Ok(()) => info!("store reachable again: SERVING"),
                Err(e) => warn!(error = %e, "store probe failed: NOT_SERVING"),
            }
        }
        tokio::time::sleep(timing.every).await;
    }
}
