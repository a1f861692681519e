//! `example-host-selector`: serves the example host-selection policy until SIGTERM or Ctrl-C.
use anyhow::Context as _;
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = datapath_example_host_selector::Config::parse();
    let _telemetry = datapath_telemetry::init("example-host-selector", Default::default())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    datapath_example_host_selector::run(config, listener, datapath_server::shutdown_signal()).await
}
