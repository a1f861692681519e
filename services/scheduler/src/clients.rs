//! Clients of the other services, created lazily and shared: one channel per host-worker address
//! (hosts come and go, so they are looked up by the address in their `hosts/` record), one to the
//! job-tracker. Every channel propagates the trace context.
use std::{collections::HashMap, sync::Mutex, time::Duration};

use datapath_api::pb::{
    host_worker_service_client::HostWorkerServiceClient,
    job_tracker_service_client::JobTrackerServiceClient,
};
use datapath_telemetry::TracedChannel;
use tonic::transport::Endpoint;

/// A host-worker client.
pub type HostClient = HostWorkerServiceClient<TracedChannel>;
/// A job-tracker client.
pub type TrackerClient = JobTrackerServiceClient<TracedChannel>;

/// Deadline of one call to another service.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The scheduler's clients.
pub struct Clients {
    tracker: TrackerClient,
    hosts: Mutex<HashMap<String, HostClient>>,
}

fn channel(url: &str, timeout: Option<Duration>) -> anyhow::Result<TracedChannel> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    Ok(datapath_telemetry::traced_to(endpoint.connect_lazy(), url))
}

impl Clients {
    /// Clients with the job-tracker at `tracker_url`.
    pub fn new(tracker_url: &str) -> anyhow::Result<Self> {
        // No per-call timeout on the job-tracker channel: its WatchJobs streams last as long as a copy.
        Ok(Self {
            tracker: JobTrackerServiceClient::new(channel(tracker_url, None)?),
            hosts: Mutex::default(),
        })
    }

    /// The job-tracker.
    pub fn tracker(&self) -> TrackerClient {
        self.tracker.clone()
    }

    /// The host-worker at `address` (`host:port`).
    pub fn host(&self, address: &str) -> Result<HostClient, tonic::Status> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = hosts.get(address) {
            return Ok(c.clone());
        }
        let url = format!("http://{address}");
        let ch = channel(&url, Some(CALL_TIMEOUT))
            .map_err(|e| tonic::Status::unavailable(format!("bad host address {address}: {e}")))?;
        let client = HostWorkerServiceClient::new(ch);
        hosts.insert(address.to_string(), client.clone());
        Ok(client)
    }
}
