//! The identity a peer's certificate names. The TLS handshake has already checked the chain to the
//! cluster CA and the validity dates; this reads the one `spiffe://datapath/…` URI SAN of the leaf.
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

use crate::{identity::BadIdentity, Identity};

/// Why a verified certificate names no identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    /// The connection carries no client certificate (plaintext, or TLS without client auth).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate does not parse.
    #[error("the certificate does not parse")]
    Unreadable,
    /// It has no datapath URI SAN, or more than one.
    #[error("the certificate must name exactly one spiffe://datapath/ identity, it names {0}")]
    NotOne(usize),
    /// Its URI is not a valid identity.
    #[error(transparent)]
    Bad(#[from] BadIdentity),
}

/// The identity the leaf certificate `der` names.
pub fn identity_of_der(der: &[u8]) -> Result<Identity, PeerError> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| PeerError::Unreadable)?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|_| PeerError::Unreadable)?;
    let uris: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => Ok(Identity::parse(uri)?),
        other => Err(PeerError::NotOne(other.len())),
    }
}

/// The identity of a peer from the certificates its TLS handshake presented (leaf first).
pub fn identity_of_chain<C: AsRef<[u8]>>(chain: Option<&[C]>) -> Result<Identity, PeerError> {
    let leaf = chain
        .and_then(|c| c.first())
        .ok_or(PeerError::NoCertificate)?;
    identity_of_der(leaf.as_ref())
}

/// The identity a PEM certificate names (the first certificate in the text).
pub fn identity_of_pem(pem: &str) -> Result<Identity, PeerError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| PeerError::Unreadable)?;
    identity_of_der(&pem.contents)
}
