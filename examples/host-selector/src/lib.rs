//! An example external host-selection policy: a `HostSelectorService` that the scheduler calls with
//! `--host-selection external` to choose the host of each data step. Operators may write theirs in any
//! language from `proto/datapath/v1/host_selector.proto`; this one shows the contract end to end —
//! validate the candidates, choose with a pure policy ([`policy`]), answer a coded error — and is
//! small enough to copy. It keeps no state, so any number of replicas can serve.
#![warn(missing_docs)]

pub mod policy;

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use datapath_api::{
    ids::HostId,
    pb::{
        self,
        host_selector_service_server::{HostSelectorService, HostSelectorServiceServer},
    },
};
use datapath_server::ServerOptions;
use tokio::net::TcpListener;
use tonic::{service::Routes, Request, Response, Status};
use tracing::info;

/// The gRPC service name, for health and reflection.
pub const SERVICE_NAME: &str = "datapath.v1.HostSelectorService";

/// Configuration: flags, each with an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "example-host-selector",
    about = "An example external host-selection policy for the datapath scheduler"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "DATAPATH_LISTEN", default_value = "127.0.0.1:7310")]
    pub listen: SocketAddr,
    /// Hosts to choose first, in order of preference, when they are candidates (comma-separated
    /// host ids); otherwise the least-loaded candidate is chosen.
    #[arg(
        long,
        env = "DATAPATH_PREFER_HOSTS",
        value_delimiter = ',',
        value_parser = host_id_arg
    )]
    pub prefer: Vec<HostId>,
    /// Server-wide settings.
    #[command(flatten)]
    pub server: ServerOptions,
}

/// A clap value parser for a host id.
fn host_id_arg(text: &str) -> Result<HostId, String> {
    HostId::parse("--prefer", text.trim()).map_err(|e| e.message)
}

/// The service: the policy with the operator's preferences.
#[derive(Debug, Clone)]
pub struct Selector {
    prefer: Vec<HostId>,
}

impl Selector {
    /// A selector preferring `prefer`, in that order.
    pub fn new(prefer: Vec<HostId>) -> Self {
        Self { prefer }
    }
}

#[tonic::async_trait]
impl HostSelectorService for Selector {
    async fn select_host(
        &self,
        request: Request<pb::SelectHostRequest>,
    ) -> Result<Response<pb::SelectHostResponse>, Status> {
        let request = request.into_inner();
        match policy::select(&request, &self.prefer) {
            Ok(host) => {
                tracing::debug!(%host, candidates = request.candidates.len(), "host selected");
                Ok(Response::new(pb::SelectHostResponse {
                    host_id: host.to_string(),
                }))
            }
            Err(e) => {
                info!("no host selected: {e}");
                Err(e.into())
            }
        }
    }
}

/// Serves the selector on `listener` until `shutdown` resolves, with health and reflection.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<HostSelectorServiceServer<Selector>>()
        .await;
    let routes = Routes::new(health).add_service(HostSelectorServiceServer::new(Selector::new(
        config.prefer.clone(),
    )));
    let address = listener.local_addr().context("read the listen address")?;
    info!(%address, prefer = ?config.prefer, "example host-selector listening");
    let tls = datapath_server::load_tls(&config.server).context("TLS settings")?;
    datapath_server::serve(
        listener,
        &config.server,
        tls.as_ref(),
        &[SERVICE_NAME],
        routes,
        shutdown,
    )
    .await
    .context("serve gRPC")
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn prefer_takes_a_comma_separated_list_of_host_ids() {
        let a = "6f1c6a4e-9d0b-4c4e-9a52-0d5f5b0f6a01";
        let b = "0B9B1C2E-1D2F-4A3B-8C4D-5E6F7A8B9C0D";
        let config =
            Config::try_parse_from(["example-host-selector", "--prefer", &format!("{a}, {b}")])
                .unwrap();
        let prefer: Vec<String> = config.prefer.iter().map(ToString::to_string).collect();
        assert_eq!(prefer, [a, &b.to_lowercase()]);
        assert_eq!(config.listen.to_string(), "127.0.0.1:7310");
        let err = Config::try_parse_from(["example-host-selector", "--prefer", "host-1"]);
        assert_eq!(err.unwrap_err().exit_code(), 2);
    }
}
