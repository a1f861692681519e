//! `external`: asks an operator's HostSelectorService. Its answer must be one of the candidates; an
//! error, a timeout or any other answer falls back to `least-loaded`, so a broken plugin slows
//! nothing and places nothing on a host that cannot run the step.
use std::time::Duration;

use datapath_api::pb::{self, host_selector_service_client::HostSelectorServiceClient};
use datapath_telemetry::TracedChannel;
use tracing::warn;

use super::{least_loaded, HostSelector, Step};

/// A client of the external policy.
pub struct External {
    client: HostSelectorServiceClient<TracedChannel>,
}

impl External {
    /// Talks to the policy at `url` (connected lazily), over mutual TLS when `tls` is given (the
    /// policy's certificate is verified by the address dialled).
    pub fn new(url: &str, tls: Option<&datapath_tls::Tls>) -> anyhow::Result<Self> {
        let channel = datapath_tls::endpoint(url, tls, None)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(Self {
            client: HostSelectorServiceClient::new(datapath_telemetry::traced_to(channel, url)),
        })
    }
}

#[tonic::async_trait]
impl HostSelector for External {
    fn name(&self) -> &'static str {
        "external"
    }

    async fn select(&self, step: &Step) -> Option<String> {
        if step.candidates.is_empty() {
            return None;
        }
        let req = pb::SelectHostRequest {
            candidates: step.candidates.iter().map(|c| c.host.clone()).collect(),
            spm_host_id: step.spm.clone().unwrap_or_default(),
            step: Some(step.params.clone()),
            size_bytes: step.size_bytes,
        };
        match self.client.clone().select_host(req).await {
            Ok(resp) => {
                let id = resp.into_inner().host_id;
                if step.candidates.iter().any(|c| c.host.host_id == id) {
                    return Some(id);
                }
                warn!(answer = %id, "external host selector answered a host that is not a candidate; using least-loaded");
            }
            Err(e) => warn!(error = %e, "external host selector failed; using least-loaded"),
        }
        least_loaded::pick(&step.candidates, step.spm.as_deref(), 0).map(|c| c.host.host_id.clone())
    }
}
