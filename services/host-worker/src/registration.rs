//! Follows the session lease: while it is valid the host is registered at `hosts/<host_id>` (with its
//! domains and load) and SERVING; the moment it is lost, every copy is killed (self-fencing) and the
//! host is NOT_SERVING until a new lease is granted and the host registered again.
use std::{sync::Arc, time::Duration};

use datapath_api::pb;
use datapath_coord::session::SessionState;
use tonic_health::{server::HealthReporter, ServingStatus};
use tracing::{error, info, warn};

use crate::{jobs::StopReason, worker::Worker};

/// The service names whose health this task sets.
const SERVICES: [&str; 2] = ["", "datapath.v1.HostWorkerService"];

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for s in SERVICES {
        health.set_service_status(s, status).await;
    }
}

/// Runs until the process ends.
pub async fn follow_session(worker: Arc<Worker>, address: String, health: HealthReporter) {
    let mut session = worker.session.clone();
    loop {
        let state = *session.borrow_and_update();
        match state {
            SessionState::Lost => {
                let stopped = worker.jobs.stop_all(StopReason::Fenced);
                if stopped > 0 {
                    error!(
                        stopped,
                        "session lease lost: self-fencing, killed every running copy"
                    );
                }
                set_health(&health, ServingStatus::NotServing).await;
                if session.changed().await.is_err() {
                    return;
                }
            }
            SessionState::Valid { lease_id } => {
                let registered_at = Some(datapath_api::time::now());
                loop {
                    let changed = worker.jobs.changed.notified();
                    match worker
                        .coord
                        .register_host(
                            worker.host_id,
                            &record(&worker, &address, lease_id, registered_at),
                            lease_id,
                        )
                        .await
                    {
                        Ok(()) => set_health(&health, ServingStatus::Serving).await,
                        Err(e) => warn!(error = %e, "could not register the host; retrying"),
                    }
                    tokio::select! {
                        r = session.changed() => {
                            if r.is_err() {
                                return;
                            }
                            break;
                        }
                        _ = changed => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                info!("session changed");
            }
        }
    }
}

fn record(
    worker: &Worker,
    address: &str,
    lease_id: i64,
    registered_at: Option<prost_types::Timestamp>,
) -> pb::Host {
    let (running_jobs, bytes_in_flight) = worker.jobs.load();
    let storage_domain_ids = worker
        .storage
        .domains()
        .map(|ds| ds.into_iter().map(|d| d.storage_domain_id).collect())
        .unwrap_or_default();
    pb::Host {
        host_id: worker.host_id.to_string(),
        address: address.to_string(),
        storage_domain_ids,
        job_slots: worker.job_slots,
        running_jobs,
        bytes_in_flight,
        session_lease_id: lease_id,
        registered_at,
    }
}
