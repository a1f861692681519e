//! Who a caller is, by its certificate: datapath's identities (SPIFFE-style URI SANs, `identity.rs`),
//! the cluster CA and the certificates it issues (`ca.rs`), the TLS flags every binary shares and
//! the rustls configurations they load into (`options.rs`), and the identity a peer's verified
//! certificate names (`peer.rs`). Only ring is used as rustls's crypto provider.
#![warn(missing_docs)]

pub mod ca;
pub mod identity;
pub mod options;
pub mod peer;

pub use identity::Identity;
pub use options::{endpoint, url, Tls, TlsError, TlsOptions};
