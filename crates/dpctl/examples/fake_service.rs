//! A stand-in for the `job-tracker` and `host-worker` binaries in dpctl's own launcher tests: it
//! serves `grpc.health.v1.Health` (SERVING) on `--listen`, persists a host id in
//! `<--state-dir>/host-id` when given one, ignores every other flag, and exits on SIGTERM. The real
//! services are tested end to end in the `tests/` crate.
use std::{fs, net::SocketAddr, path::PathBuf};

use tokio::signal::unix::{signal, SignalKind};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    eprintln!("fake service: {}", args.join(" "));
    let listen: SocketAddr = flag(&args, "--listen")
        .ok_or("--listen is required")?
        .parse()?;
    if let Some(dir) = flag(&args, "--state-dir").map(PathBuf::from) {
        let file = dir.join("host-id");
        if !file.exists() {
            fs::create_dir_all(&dir)?;
            fs::write(&file, format!("{}\n", uuid::Uuid::new_v4()))?;
        }
    }
    let (_reporter, health) = tonic_health::server::health_reporter();
    let mut terminate = signal(SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_shutdown(listen, async move {
            terminate.recv().await;
            eprintln!("fake service: SIGTERM");
        })
        .await?;
    Ok(())
}
