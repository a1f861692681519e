//! The `dpctl` binary: parses the command line (usage errors exit 2), runs the command in a Tokio
//! runtime with telemetry, and prints any error as one `dpctl: error: …` line (exit 1).
use std::process::ExitCode;

use clap::Parser as _;
use dpctl::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dpctl: error: start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _telemetry = match datapath_telemetry::init("dpctl", Default::default()) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("dpctl: warning: telemetry is off: {e:#}");
                None
            }
        };
        cli.run().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpctl: error: {}", dpctl::error::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
