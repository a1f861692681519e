//! Connections to the datapath services: every client goes through a traced channel, so each call
//! carries the caller's W3C `traceparent`.
use std::time::Duration;

use anyhow::Context as _;
use datapath_api::pb::{
    host_worker_service_client::HostWorkerServiceClient,
    job_tracker_service_client::JobTrackerServiceClient,
    scheduler_service_client::SchedulerServiceClient,
};
use datapath_telemetry::{traced, TracedChannel};
use tonic::transport::{Channel, Endpoint};

/// How long connecting to a service may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A job-tracker client.
pub type JobTrackerClient = JobTrackerServiceClient<TracedChannel>;
/// A host-worker client.
pub type HostWorkerClient = HostWorkerServiceClient<TracedChannel>;
/// A scheduler client.
pub type SchedulerClient = SchedulerServiceClient<TracedChannel>;

/// `addr` as a URL: `host:port` gets `http://`; a URL is kept as it is.
pub fn normalize_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// A connected channel to the server at `url` (or `host:port`).
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    let url = normalize_url(url);
    Endpoint::from_shared(url.clone())
        .with_context(|| format!("parse URL {url:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))
}

/// A client of the job-tracker at `url`.
pub async fn job_tracker(url: &str) -> anyhow::Result<JobTrackerClient> {
    let channel = channel(url).await.context("reach the job-tracker")?;
    Ok(JobTrackerServiceClient::new(traced(channel)))
}

/// A client of the host-worker at `url`.
pub async fn host_worker(url: &str) -> anyhow::Result<HostWorkerClient> {
    let channel = channel(url).await.context("reach the host-worker")?;
    Ok(HostWorkerServiceClient::new(traced(channel)))
}

/// A client of the scheduler at `url`.
pub async fn scheduler(url: &str) -> anyhow::Result<SchedulerClient> {
    let channel = channel(url).await.context("reach the scheduler")?;
    Ok(SchedulerServiceClient::new(traced(channel)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_urls() {
        assert_eq!(normalize_url("127.0.0.1:7301"), "http://127.0.0.1:7301");
        assert_eq!(normalize_url("https://h:1"), "https://h:1");
    }
}
