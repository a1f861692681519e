//! `scheduler`: the engine.
use anyhow::Context as _;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = datapath_scheduler::Config::parse();
    let _telemetry = datapath_telemetry::init("scheduler", Default::default())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    datapath_scheduler::run(config, listener, datapath_server::shutdown_signal()).await
}
