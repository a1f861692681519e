//! The local cluster's certificates, made at start unless the cluster runs `--insecure`:
//!
//! ```text
//! <dir>/pki/ca.pem, ca.key                      the cluster CA (kept across restarts of the same dir)
//! <dir>/pki/job-tracker.pem|.key, scheduler.*    the services, for 127.0.0.1 and their addresses
//! <dir>/pki/host-<host id>.pem|.key              each host, for its persisted host id
//! <dir>/pki/admin-local.pem|.key                 the launcher itself, dpctl and grpcurl
//! <dir>/pki/etcd-server.pem|.key                 etcd's server certificate
//! <dir>/pki/etcd-root.pem|.key                   etcd's `root` user, to set its users and roles up
//! ```
//!
//! A host's id is fixed before it starts (written into its state directory, which the host-worker
//! reads), so its certificate can be issued for it.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use datapath_api::ids::HostId;
use datapath_tls::{
    ca::{file_name, Ca, LEAF_LIFETIME},
    Identity, Tls, TlsOptions,
};

/// The identity the launcher, and the dpctl and grpcurl it sets up, act as: an admin, who may do
/// everything a person may (run operations, change settings), on a cluster that is theirs.
pub fn local_user() -> Identity {
    Identity::Admin("local".into())
}

/// The certificates of one local cluster.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    client: Tls,
}

impl Pki {
    /// Makes (or loads) the CA in `dir` and issues a certificate for every identity in `services`,
    /// each valid for its addresses, and one for the local operator.
    pub fn prepare(
        dir: &Path,
        services: &[(Identity, Vec<IpAddr>)],
        etcd_addresses: &[IpAddr],
    ) -> anyhow::Result<Self> {
        let ca = if dir.join("ca.pem").exists() {
            Ca::load(dir).context("load the local CA")?
        } else {
            Ca::init(dir, "datapath local").context("make the local CA")?
        };
        let operator = local_user();
        let everyone = services
            .iter()
            .cloned()
            .chain(std::iter::once((operator.clone(), Vec::new())));
        for (identity, addresses) in everyone {
            ca.issue(&identity, &addresses, LEAF_LIFETIME)
                .and_then(|leaf| leaf.write(dir, &file_name(&identity)))
                .with_context(|| format!("issue a certificate for {identity}"))?;
        }
        ca.issue_etcd_server(etcd_addresses)
            .and_then(|leaf| leaf.write(dir, "etcd-server"))
            .context("issue etcd's certificate")?;
        ca.issue_etcd_user("root")
            .and_then(|leaf| leaf.write(dir, "etcd-root"))
            .context("issue etcd's root certificate")?;
        let client = Self::options_in(dir, &operator)
            .load()?
            .context("the operator's certificate")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            client,
        })
    }

    fn options_in(dir: &Path, identity: &Identity) -> TlsOptions {
        TlsOptions::in_dir(dir, &file_name(identity))
    }

    /// Issues a certificate for another process of the cluster (a placement plugin, a second
    /// scheduler) valid for `addresses`; returns its TLS flags.
    pub fn issue(&self, identity: &Identity, addresses: &[IpAddr]) -> anyhow::Result<Vec<String>> {
        let ca = Ca::load(&self.dir).context("load the local CA")?;
        ca.issue(identity, addresses, LEAF_LIFETIME)
            .and_then(|leaf| leaf.write(&self.dir, &file_name(identity)))
            .with_context(|| format!("issue a certificate for {identity}"))?;
        Ok(self.args(identity))
    }

    /// Issues a certificate for `identity` and loads it, for a client of the cluster acting as that
    /// identity (tests: a host's job reports, a viewer's reads).
    pub fn issue_tls(&self, identity: &Identity) -> anyhow::Result<Tls> {
        self.issue(identity, &[])?;
        Self::options_in(&self.dir, identity)
            .load()?
            .context("issued TLS settings")
    }

    /// The TLS flags of `identity`'s process.
    pub fn args(&self, identity: &Identity) -> Vec<String> {
        Self::options_in(&self.dir, identity).to_args()
    }

    /// The local user's TLS settings (the launcher's own clients, and tests').
    pub fn client(&self) -> &Tls {
        &self.client
    }

    /// The local operator's files as `DATAPATH_TLS_*` variables (for `cluster.env`).
    pub fn env(&self) -> Vec<(String, String)> {
        let (ca, cert, key) = self.client.paths();
        vec![
            ("DATAPATH_TLS_CA".into(), ca.display().to_string()),
            ("DATAPATH_TLS_CERT".into(), cert.display().to_string()),
            ("DATAPATH_TLS_KEY".into(), key.display().to_string()),
        ]
    }

    /// etcd's server files.
    pub fn etcd_server(&self) -> super::etcd::EtcdTls {
        super::etcd::EtcdTls {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join("etcd-server.pem"),
            key: self.dir.join("etcd-server.key"),
        }
    }

    /// TLS settings for an etcd client acting as etcd's `root` user.
    pub fn etcd_root(&self) -> anyhow::Result<etcd_client::TlsOptions> {
        let read = |name: &str| {
            let path = self.dir.join(name);
            fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
        };
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")?))
            .identity(etcd_client::Identity::from_pem(
                read("etcd-root.pem")?,
                read("etcd-root.key")?,
            )))
    }

    /// grpcurl's flags for the local operator (`-cacert`, `-cert`, `-key`).
    pub fn grpcurl_args(&self) -> Vec<String> {
        let (ca, cert, key) = self.client.paths();
        vec![
            "-cacert".into(),
            ca.display().to_string(),
            "-cert".into(),
            cert.display().to_string(),
            "-key".into(),
            key.display().to_string(),
        ]
    }
}

/// A local cluster's certificates: the services for the addresses they serve on, each host for its id.
pub(super) fn prepare_for(
    config: &super::ClusterConfig,
    host_ids: &[HostId],
    gateway: Option<Ipv4Addr>,
    lab: Option<&super::NetworkLab>,
) -> anyhow::Result<Pki> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let with_gateway: Vec<IpAddr> = std::iter::once(loopback)
        .chain(gateway.map(IpAddr::V4))
        .collect();
    let mut services = vec![
        (Identity::JobTracker, with_gateway.clone()),
        (Identity::Scheduler, vec![loopback]),
    ];
    for (i, id) in host_ids.iter().enumerate() {
        let mut addresses = vec![loopback];
        addresses.extend(lab.map(|l| IpAddr::V4(l.host_addr(i))));
        services.push((Identity::Host(*id), addresses));
    }
    Pki::prepare(&config.pki_dir(), &services, &with_gateway)
}

/// The host id in `state_dir/host-id`, written there first when missing (the host-worker keeps it).
pub fn host_id(state_dir: &Path) -> anyhow::Result<HostId> {
    let path = state_dir.join("host-id");
    match fs::read_to_string(&path) {
        Ok(text) => HostId::parse("host-id", text.trim())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(state_dir)
                .with_context(|| format!("create {}", state_dir.display()))?;
            let id = HostId::random();
            fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}
