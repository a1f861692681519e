//! `job-tracker`: the Job API server.
use anyhow::Context as _;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = datapath_job_tracker::Config::parse();
    let _telemetry = datapath_telemetry::init("job-tracker", Default::default())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    datapath_job_tracker::run(config, listener, datapath_server::shutdown_signal()).await
}
