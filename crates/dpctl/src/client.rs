//! Connections to the datapath services: every client goes through a traced channel, so each call
//! carries the caller's W3C `traceparent`; with TLS settings each presents the caller's certificate
//! and verifies the server against the cluster CA (by the address dialled).
use std::time::Duration;

use anyhow::Context as _;
use datapath_api::pb::{
    host_worker_service_client::HostWorkerServiceClient,
    job_tracker_service_client::JobTrackerServiceClient,
    scheduler_service_client::SchedulerServiceClient,
};
use datapath_telemetry::{traced, TracedChannel};
use datapath_tls::Tls;
use tonic::transport::Channel;

/// How long connecting to a service may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A job-tracker client.
pub type JobTrackerClient = JobTrackerServiceClient<TracedChannel>;
/// A host-worker client.
pub type HostWorkerClient = HostWorkerServiceClient<TracedChannel>;
/// A scheduler client.
pub type SchedulerClient = SchedulerServiceClient<TracedChannel>;

/// `addr` as a URL: `host:port` gets `http://`; a URL is kept as it is (the scheme is set by the TLS
/// settings when connecting).
pub fn normalize_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// A connected channel to the server at `url` (or `host:port`), over mutual TLS when `tls` is given.
pub async fn channel(url: &str, tls: Option<&Tls>) -> anyhow::Result<Channel> {
    let url = datapath_tls::url(tls, url);
    datapath_tls::endpoint(&url, tls, None)
        .with_context(|| format!("parse URL {url:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connect to {url}"))
}

/// A client of the job-tracker at `url`.
pub async fn job_tracker(url: &str, tls: Option<&Tls>) -> anyhow::Result<JobTrackerClient> {
    let channel = channel(url, tls).await.context("reach the job-tracker")?;
    Ok(JobTrackerServiceClient::new(traced(channel)))
}

/// A client of the host-worker at `url`.
pub async fn host_worker(url: &str, tls: Option<&Tls>) -> anyhow::Result<HostWorkerClient> {
    let channel = channel(url, tls).await.context("reach the host-worker")?;
    Ok(HostWorkerServiceClient::new(traced(channel)))
}

/// A client of the scheduler at `url`.
pub async fn scheduler(url: &str, tls: Option<&Tls>) -> anyhow::Result<SchedulerClient> {
    let channel = channel(url, tls).await.context("reach the scheduler")?;
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
