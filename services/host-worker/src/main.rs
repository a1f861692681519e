//! `host-worker`: the datapath agent on one host (and, as `host-worker copier-watchdog`, the watchdog
//! its copiers run under).
use anyhow::Context as _;
use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(datapath_host_worker::watchdog::SUBCOMMAND) {
        std::process::exit(datapath_host_worker::watchdog::main(&args[2..]));
    }
    serve()
}

#[tokio::main]
async fn serve() -> anyhow::Result<()> {
    let mut config = datapath_host_worker::Config::parse();
    // The host id is known before telemetry starts, so every span names its host.
    let host_id =
        datapath_host_worker::identity::load_or_create(&config.state_dir, config.host_id)?;
    config.host_id = Some(host_id);
    let identity = datapath_telemetry::Identity {
        host_id: Some(host_id.to_string()),
    };
    let _telemetry = datapath_telemetry::init("host-worker", identity)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    datapath_host_worker::run(config, listener, datapath_server::shutdown_signal()).await
}
