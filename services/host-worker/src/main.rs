//! `host-worker`: the datapath agent on one host.
use anyhow::Context as _;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = datapath_host_worker::Config::parse();
    let _telemetry = datapath_telemetry::init("host-worker")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    datapath_host_worker::run(config, listener, datapath_server::shutdown_signal()).await
}
