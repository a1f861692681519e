//! Clients of the other services, created lazily and shared: one channel per host-worker address
//! (hosts come and go, so they are looked up by the address in their `hosts/` record), one to the
//! job-tracker. Every channel propagates the trace context; with TLS each presents the scheduler's
//! certificate and verifies the server as the service it means to reach (the job-tracker, or the
//! host whose id its record names).
use std::{collections::HashMap, sync::Mutex, time::Duration};

use datapath_api::{
    ids::HostId,
    pb::{
        self, host_worker_service_client::HostWorkerServiceClient,
        job_tracker_service_client::JobTrackerServiceClient,
    },
};
use datapath_telemetry::TracedChannel;
use datapath_tls::{Identity, Tls};

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
    tls: Option<Tls>,
}

fn channel(
    url: &str,
    tls: Option<&Tls>,
    server: Option<&Identity>,
    timeout: Option<Duration>,
) -> anyhow::Result<TracedChannel> {
    let mut endpoint = datapath_tls::endpoint(url, tls, server)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    Ok(datapath_telemetry::traced_to(endpoint.connect_lazy(), url))
}

impl Clients {
    /// Clients with the job-tracker at `tracker_url`, over mutual TLS when `tls` is given.
    pub fn new(tracker_url: &str, tls: Option<Tls>) -> anyhow::Result<Self> {
        // No per-call timeout on the job-tracker channel: its WatchJobs streams last as long as a copy.
        let tracker = channel(tracker_url, tls.as_ref(), Some(&Identity::JobTracker), None)?;
        Ok(Self {
            tracker: JobTrackerServiceClient::new(tracker),
            hosts: Mutex::default(),
            tls,
        })
    }

    /// The job-tracker.
    pub fn tracker(&self) -> TrackerClient {
        self.tracker.clone()
    }

    /// The host-worker of `host`'s record, at its address (`host:port`), verified as that host.
    pub fn host(&self, host: &pb::Host) -> Result<HostClient, tonic::Status> {
        let address = &host.address;
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = hosts.get(address) {
            return Ok(c.clone());
        }
        let identity = HostId::parse("host_id", &host.host_id)
            .map(Identity::Host)
            .map_err(|_| tonic::Status::unavailable(format!("bad host id {:?}", host.host_id)))?;
        let ch = channel(
            address,
            self.tls.as_ref(),
            Some(&identity),
            Some(CALL_TIMEOUT),
        )
        .map_err(|e| tonic::Status::unavailable(format!("bad host address {address}: {e}")))?;
        let client = HostWorkerServiceClient::new(ch);
        hosts.insert(address.to_string(), client.clone());
        Ok(client)
    }
}
