//! `dpctl certs`: the cluster CA and the certificates of its services and people, as PEM files that
//! datapath's binaries, grpcurl and etcdctl all read.
//!
//! ```sh
//! dpctl certs init --dir /etc/datapath/pki
//! dpctl certs issue --dir /etc/datapath/pki --identity scheduler --address 10.0.0.5
//! dpctl certs issue --dir /etc/datapath/pki --identity host/<host id> --address 10.0.0.21
//! dpctl certs issue --dir /etc/datapath/pki --identity operator/alice
//! ```
use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use datapath_tls::{
    ca::{file_name, Ca, LEAF_LIFETIME},
    Identity,
};

/// `certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a new cluster CA: `<dir>/ca.pem` and `<dir>/ca.key` (keep the key off the hosts).
    Init {
        /// Where the CA's files go.
        #[arg(long, env = "DATAPATH_CERTS_DIR")]
        dir: PathBuf,
        /// The CA's name, in its common name.
        #[arg(long, default_value = "datapath")]
        name: String,
    },
    /// Issue a certificate for one identity, signed by the CA in `--dir`: `<dir>/<identity>.pem` and
    /// `.key`, with `/` in the identity written as `-`. Prints the certificate's path.
    Issue {
        /// Where the CA is and the certificate goes.
        #[arg(long, env = "DATAPATH_CERTS_DIR")]
        dir: PathBuf,
        /// `host/<host id>`, `scheduler`, `job-tracker`, `operator/<name>`, `admin/<name>`,
        /// `viewer/<name>` or `plugin/<name>` (or the whole `spiffe://datapath/…` URI).
        #[arg(long)]
        identity: String,
        /// An address the service is reached at (repeatable), put in its certificate for clients
        /// that connect by address; services always get `localhost` and their DNS name.
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = LEAF_LIFETIME.as_secs() / 86_400)]
        days: u64,
    },
}

/// Parses `scheduler`, `host/<id>`, … or a whole URI.
pub fn parse_identity(text: &str) -> anyhow::Result<Identity> {
    let uri = if text.starts_with("spiffe://") {
        text.to_string()
    } else {
        format!("spiffe://{}/{text}", datapath_tls::identity::TRUST_DOMAIN)
    };
    Identity::parse(&uri).map_err(|e| anyhow::anyhow!("--identity: {e}"))
}

impl CertsCommand {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            CertsCommand::Init { dir, name } => {
                Ca::init(&dir, &name).context("make the CA")?;
                println!("{}", dir.join("ca.pem").display());
            }
            CertsCommand::Issue {
                dir,
                identity,
                addresses,
                days,
            } => {
                let identity = parse_identity(&identity)?;
                let ca = Ca::load(&dir).context("load the CA (run `dpctl certs init` first)")?;
                let lifetime = Duration::from_secs(days.max(1) * 86_400);
                let (cert, _) = ca
                    .issue(&identity, &addresses, lifetime)
                    .and_then(|leaf| leaf.write(&dir, &file_name(&identity)))
                    .with_context(|| format!("issue a certificate for {identity}"))?;
                println!("{}", cert.display());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_given_short_or_whole() {
        assert_eq!(parse_identity("scheduler").unwrap(), Identity::Scheduler);
        assert_eq!(
            parse_identity("spiffe://datapath/operator/alice").unwrap(),
            Identity::Operator("alice".into())
        );
        let e = parse_identity("host/nope").unwrap_err().to_string();
        assert!(e.contains("--identity"), "{e}");
    }

    #[test]
    fn init_then_issue_writes_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        CertsCommand::Init {
            dir: dir.path().into(),
            name: "t".into(),
        }
        .run()
        .unwrap();
        CertsCommand::Issue {
            dir: dir.path().into(),
            identity: "viewer/grafana".into(),
            addresses: vec![],
            days: 30,
        }
        .run()
        .unwrap();
        let cert = std::fs::read_to_string(dir.path().join("viewer-grafana.pem")).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert_eq!(
            datapath_tls::peer::identity_of_pem(&cert).unwrap(),
            Identity::Viewer("grafana".into())
        );
    }
}
