//! The cluster's certificate authority and the certificates it issues (`dpctl certs`, the local
//! launcher). Files are PEM, so grpcurl, etcdctl and any TLS client can use them:
//!
//! ```text
//! <dir>/ca.pem, ca.key          the CA (keep ca.key off the hosts)
//! <dir>/<name>.pem, <name>.key  a leaf: one identity (URI SAN), its DNS name and addresses
//! ```
//!
//! Keys are ECDSA P-256, written with mode 0600. A service's certificate is good for server and
//! client authentication; a person's (operator, admin, viewer) for client authentication only. The
//! common name is the etcd user the identity acts as ([`Identity::etcd_user`]).
use std::{
    fs,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::Identity;

/// How long a CA made by [`Ca::init`] is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf is valid unless told otherwise.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Leaves start this long before they are made, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// The action.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The CA exists already (init) or is missing (issue).
    #[error("{0}")]
    State(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CaError + 'a {
    move |source| CaError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate authority that can issue leaves.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// An issued certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl Ca {
    /// Makes a new CA named `name` and writes `ca.pem` and `ca.key` into `dir`; refuses to replace
    /// an existing one (every certificate it issued would be orphaned).
    pub fn init(dir: &Path, name: &str) -> Result<Self, CaError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() || key_path.exists() {
            return Err(CaError::State(format!(
                "a CA exists already in {}",
                dir.display()
            )));
        }
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        fs::write(&cert_path, cert.pem()).map_err(io("write", &cert_path))?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the CA in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let cert_pem = fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { cert_pem, issuer })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `identity`, valid from now (less an hour) for `lifetime`. A service
    /// also gets its DNS name, `localhost` and the `addresses` it serves on (verified by clients
    /// that connect by address: grpcurl, etcd clients).
    pub fn issue(
        &self,
        identity: &Identity,
        addresses: &[IpAddr],
        lifetime: Duration,
    ) -> Result<Leaf, CaError> {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(identity, addresses, now - BACKDATE, now + lifetime)
    }

    /// [`Ca::issue`] valid from `not_before` to `not_after` (tests make expired ones with it).
    pub fn issue_valid(
        &self,
        identity: &Identity,
        addresses: &[IpAddr],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Leaf, CaError> {
        let mut params = leaf_params(identity.etcd_user());
        params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if identity.is_service() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            if let Some(dns) = identity.dns_name() {
                params
                    .subject_alt_names
                    .push(SanType::DnsName(dns.try_into()?));
            }
            params
                .subject_alt_names
                .push(SanType::DnsName("localhost".try_into()?));
            for ip in addresses {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
            }
        }
        params.not_before = not_before;
        params.not_after = not_after;
        self.sign(params)
    }

    /// A server certificate for etcd (no datapath identity): `localhost` and `addresses`.
    pub fn issue_etcd_server(&self, addresses: &[IpAddr]) -> Result<Leaf, CaError> {
        let mut params = leaf_params("etcd");
        params.subject_alt_names = vec![SanType::DnsName("localhost".try_into()?)];
        params
            .subject_alt_names
            .extend(addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        self.sign(params)
    }

    /// A certificate for a user of etcd itself, `user` as its common name (`root`, for setting
    /// etcd's users and roles up): client authentication only, no datapath identity.
    pub fn issue_etcd_user(&self, user: &str) -> Result<Leaf, CaError> {
        let mut params = leaf_params(user);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        self.sign(params)
    }
}

impl Ca {
    /// Signs `params` with a fresh key of its own.
    fn sign(&self, params: CertificateParams) -> Result<Leaf, CaError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A leaf's parameters with only its common name set.
fn leaf_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
}

impl Leaf {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>.key` (0600); returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CaError> {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        write_private(&key, self.key_pem.as_bytes())?;
        fs::write(&cert, &self.cert_pem).map_err(io("write", &cert))?;
        Ok((cert, key))
    }
}

/// The file name a leaf of `identity` is written under: its path with `/` as `-`.
pub fn file_name(identity: &Identity) -> String {
    identity.path().replace('/', "-")
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(contents).map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::peer::identity_of_pem;

    #[test]
    fn a_ca_issues_leaves_that_name_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "test").unwrap();
        assert!(
            Ca::init(dir.path(), "test").is_err(),
            "a second CA replaced the first"
        );
        let ca_again = Ca::load(dir.path()).unwrap();
        assert_eq!(ca.cert_pem(), ca_again.cert_pem());
        let host = Identity::Host(datapath_api::ids::HostId::random());
        let leaf = ca_again
            .issue(&host, &["127.0.0.1".parse().unwrap()], LEAF_LIFETIME)
            .unwrap();
        assert_eq!(identity_of_pem(&leaf.cert_pem).unwrap(), host);
        let (cert, key) = leaf.write(dir.path(), &file_name(&host)).unwrap();
        assert!(cert.ends_with(format!(
            "host-{}.pem",
            match &host {
                Identity::Host(id) => id.to_string(),
                _ => unreachable!(),
            }
        )));
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
