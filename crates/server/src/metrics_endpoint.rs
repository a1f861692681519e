//! The `/metrics` listener: Prometheus text of the process's registry over plain HTTP/1.1, on its own
//! port (`--metrics-listen`), apart from gRPC so a scraper needs no HTTP/2 and a slow scrape never
//! takes one of the gRPC server's concurrency slots.
use std::net::SocketAddr;

use axum::{http::header, routing::get, Router};
use tokio::{net::TcpListener, task::JoinHandle};

/// A running `/metrics` listener; stops when dropped.
#[derive(Debug)]
pub struct MetricsEndpoint {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Binds `addr` and serves `/metrics` for `service` (which names `datapath_build_info`) until
    /// dropped. Fails only when the address cannot be bound: a configured metrics port that is taken
    /// is an error to see at start-up, not a silent gap in the dashboards later.
    pub async fn start(service: &'static str, addr: SocketAddr) -> std::io::Result<Self> {
        datapath_telemetry::metrics::init(service);
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route("/metrics", get(scrape));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the /metrics listener stopped");
            }
        });
        tracing::info!(address = %addr, "serving /metrics");
        Ok(Self { addr, task })
    }

    /// The bound address (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn scrape() -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(
            header::CONTENT_TYPE,
            datapath_telemetry::metrics::CONTENT_TYPE,
        )],
        datapath_telemetry::metrics::encode(),
    )
}
