//! How the launcher's own clients, and the tests', reach a local cluster: as the local user
//! (`admin/local`) over mutual TLS, or in plaintext when the cluster runs `--insecure`.
use datapath_tls::Tls;

use super::{cluster::Cluster, pki::Pki};

impl Cluster {
    /// The TLS settings the launcher's own clients use (the local operator's certificate), unless
    /// the cluster runs `--insecure`.
    pub fn client_tls(&self) -> Option<&Tls> {
        self.pki().map(Pki::client)
    }

    /// Options for an etcd client of this cluster: TLS with the local user's certificate (etcd user
    /// `datapath`), unless the cluster runs `--insecure`.
    pub fn etcd_options(&self) -> Option<etcd_client::ConnectOptions> {
        self.client_tls()
            .map(|t| etcd_client::ConnectOptions::new().with_tls(t.client(None)))
    }

    /// A connected channel to `url` (one of this cluster's services) as the local operator.
    pub async fn channel(&self, url: &str) -> anyhow::Result<tonic::transport::Channel> {
        crate::client::channel(url, self.client_tls()).await
    }

    /// grpcurl's flags to reach this cluster: the local operator's certificate, or `-plaintext`.
    pub fn grpcurl_args(&self) -> Vec<String> {
        match self.pki() {
            Some(pki) => pki.grpcurl_args(),
            None => vec!["-plaintext".into()],
        }
    }
}
