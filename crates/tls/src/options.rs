//! TLS settings, the same flags on every binary: `--tls-ca`, `--tls-cert`, `--tls-key` (or
//! `DATAPATH_TLS_CA`, `DATAPATH_TLS_CERT`, `DATAPATH_TLS_KEY`), or `--insecure`
//! (`DATAPATH_INSECURE=true`) for plaintext. Loaded once at start ([`TlsOptions::load`]) into the
//! configurations of tonic's rustls servers and channels: a server requires a client certificate
//! signed by the cluster CA; a client presents its own and verifies the server's against the same CA,
//! pinned to the DNS name of the service it means to reach when it knows which.
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, ServerTlsConfig};

use crate::{peer::identity_of_pem, Identity};

/// The TLS flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsOptions {
    /// The cluster CA's certificate (PEM): servers accept only clients it signed, clients only
    /// servers it signed.
    #[arg(long, env = "DATAPATH_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), naming its identity (`spiffe://datapath/…`).
    #[arg(long, env = "DATAPATH_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "DATAPATH_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Plaintext gRPC without authentication: anyone who reaches a port may do anything. For a lab
    /// only; logged at start and exported as `datapath_insecure 1`.
    #[arg(long, env = "DATAPATH_INSECURE", global = true)]
    pub insecure: bool,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Neither certificates nor `--insecure`.
    #[error(
        "give --tls-ca, --tls-cert and --tls-key (DATAPATH_TLS_*), or --insecure for plaintext"
    )]
    Missing,
    /// Certificates and `--insecure` together.
    #[error("--insecure contradicts --tls-ca/--tls-cert/--tls-key: give one or the other")]
    Both,
    /// A file cannot be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate names no datapath identity.
    #[error("{path}: {source}")]
    Identity {
        /// The certificate.
        path: PathBuf,
        /// Why.
        source: crate::peer::PeerError,
    },
}

/// Loaded TLS material of one process.
#[derive(Debug, Clone)]
pub struct Tls {
    ca: Certificate,
    identity: tonic::transport::Identity,
    own: Identity,
    cert_path: PathBuf,
    key_path: PathBuf,
    ca_path: PathBuf,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl TlsOptions {
    /// Options for `dir/ca.pem` and `dir/<name>.pem`/`.key` (the launcher's layout).
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            tls_ca: Some(dir.join("ca.pem")),
            tls_cert: Some(dir.join(format!("{name}.pem"))),
            tls_key: Some(dir.join(format!("{name}.key"))),
            insecure: false,
        }
    }

    /// Plaintext options.
    pub fn insecure() -> Self {
        Self {
            insecure: true,
            ..Self::default()
        }
    }

    /// Reads the files; `None` with `--insecure`.
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        let given = [&self.tls_ca, &self.tls_cert, &self.tls_key];
        match (self.insecure, given.iter().all(|p| p.is_some())) {
            (true, _) if given.iter().any(|p| p.is_some()) => Err(TlsError::Both),
            (true, _) => Ok(None),
            (false, false) => Err(TlsError::Missing),
            (false, true) => {
                let (ca_path, cert_path, key_path) = (
                    self.tls_ca.clone().unwrap_or_default(),
                    self.tls_cert.clone().unwrap_or_default(),
                    self.tls_key.clone().unwrap_or_default(),
                );
                let cert = read(&cert_path)?;
                let own = identity_of_pem(&cert).map_err(|source| TlsError::Identity {
                    path: cert_path.clone(),
                    source,
                })?;
                Ok(Some(Tls {
                    ca: Certificate::from_pem(read(&ca_path)?),
                    identity: tonic::transport::Identity::from_pem(cert, read(&key_path)?),
                    own,
                    cert_path,
                    key_path,
                    ca_path,
                }))
            }
        }
    }

    /// The options as command-line arguments, to pass on to a child process.
    pub fn to_args(&self) -> Vec<String> {
        if self.insecure {
            return vec!["--insecure".into()];
        }
        let mut args = Vec::new();
        for (flag, path) in [
            ("--tls-ca", &self.tls_ca),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ] {
            if let Some(p) = path {
                args.push(flag.to_string());
                args.push(p.display().to_string());
            }
        }
        args
    }
}

impl Tls {
    /// The identity this process's certificate names.
    pub fn identity(&self) -> &Identity {
        &self.own
    }

    /// The files it was read from: (CA, certificate, key).
    pub fn paths(&self) -> (&Path, &Path, &Path) {
        (&self.ca_path, &self.cert_path, &self.key_path)
    }

    /// A server's configuration: this certificate, and a client certificate signed by the CA
    /// required of every caller.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// A client's configuration: this certificate, and the server verified against the CA — as
    /// the service `server` when given (its DNS name, [`Identity::dns_name`]), else by the address
    /// dialled.
    pub fn client(&self, server: Option<&Identity>) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone());
        match server.and_then(Identity::dns_name) {
            Some(name) => config.domain_name(name),
            None => config,
        }
    }
}

/// `address` (`host:port`, or a URL whose scheme is replaced) as the URL to dial under `tls`:
/// `https://` with TLS, `http://` without.
pub fn url(tls: Option<&Tls>, address: &str) -> String {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let bare = address.split_once("://").map_or(address, |(_, rest)| rest);
    format!("{scheme}://{bare}")
}

/// An endpoint for `address` (see [`url`]); under `tls` it presents this process's certificate and
/// verifies the server as `server` when given (else by the address dialled).
pub fn endpoint(
    address: &str,
    tls: Option<&Tls>,
    server: Option<&Identity>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(url(tls, address))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.client(server)),
        None => Ok(endpoint),
    }
}
