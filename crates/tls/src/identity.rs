//! Who a caller is. Every datapath certificate names exactly one identity, as a SPIFFE-style URI SAN
//! under the trust domain `datapath`:
//!
//! ```text
//! spiffe://datapath/host/<host id>     a host-worker (its host id, a UUID)
//! spiffe://datapath/scheduler          the engine (every replica)
//! spiffe://datapath/job-tracker        the job-tracker
//! spiffe://datapath/operator/<name>    a person or program that runs operations
//! spiffe://datapath/admin/<name>       an operator who may also change runtime settings
//! spiffe://datapath/viewer/<name>      reads only
//! spiffe://datapath/plugin/<name>      a placement plugin the scheduler calls (HostSelectorService)
//! ```
//!
//! A certificate with no such URI, or with two, names nobody. Services also carry a DNS name derived
//! from their identity ([`Identity::dns_name`]), which clients pin when they verify a server, so a
//! host cannot pose as the job-tracker.
use std::fmt;

use datapath_api::ids::HostId;

/// The SPIFFE trust domain of every datapath identity.
pub const TRUST_DOMAIN: &str = "datapath";

/// A caller or server, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A host-worker.
    Host(HostId),
    /// The scheduler.
    Scheduler,
    /// The job-tracker.
    JobTracker,
    /// Runs operations.
    Operator(String),
    /// Runs operations and changes runtime settings.
    Admin(String),
    /// Reads only.
    Viewer(String),
    /// A placement plugin (an external HostSelectorService): a server the scheduler calls.
    Plugin(String),
}

/// Why a URI names no identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{uri:?} is not a datapath identity: {why}")]
pub struct BadIdentity {
    uri: String,
    why: &'static str,
}

impl Identity {
    /// Parses `spiffe://datapath/<kind>[/<name>]`.
    pub fn parse(uri: &str) -> Result<Self, BadIdentity> {
        let bad = |why| BadIdentity {
            uri: uri.chars().take(200).collect(),
            why,
        };
        let path = uri
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.strip_prefix(TRUST_DOMAIN))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| bad("not under spiffe://datapath/"))?;
        let (kind, name) = match path.split_once('/') {
            Some((k, n)) => (k, Some(n)),
            None => (path, None),
        };
        match kind {
            "host" => HostId::parse("host", &name_checked(name, &bad)?)
                .map(Identity::Host)
                .map_err(|_| bad("a host is named by its host id, a UUID")),
            "scheduler" if name.is_none() => Ok(Identity::Scheduler),
            "job-tracker" if name.is_none() => Ok(Identity::JobTracker),
            "operator" => Ok(Identity::Operator(name_checked(name, &bad)?)),
            "admin" => Ok(Identity::Admin(name_checked(name, &bad)?)),
            "viewer" => Ok(Identity::Viewer(name_checked(name, &bad)?)),
            "plugin" => Ok(Identity::Plugin(name_checked(name, &bad)?)),
            _ => Err(bad("unknown kind")),
        }
    }

    /// The URI SAN that names it.
    pub fn uri(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}", self.path())
    }

    /// `host/<id>`, `scheduler`, `operator/<name>`, …: the URI's path, also used in logs and metrics.
    pub fn path(&self) -> String {
        match self {
            Identity::Host(id) => format!("host/{id}"),
            Identity::Scheduler => "scheduler".into(),
            Identity::JobTracker => "job-tracker".into(),
            Identity::Operator(n) => format!("operator/{n}"),
            Identity::Admin(n) => format!("admin/{n}"),
            Identity::Viewer(n) => format!("viewer/{n}"),
            Identity::Plugin(n) => format!("plugin/{n}"),
        }
    }

    /// The kind alone (`host`, `scheduler`, …): the label an authorisation table speaks of.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Host(_) => "host",
            Identity::Scheduler => "scheduler",
            Identity::JobTracker => "job-tracker",
            Identity::Operator(_) => "operator",
            Identity::Admin(_) => "admin",
            Identity::Viewer(_) => "viewer",
            Identity::Plugin(_) => "plugin",
        }
    }

    /// Whether it is a service (it also serves, so its certificate is a server's too).
    pub fn is_service(&self) -> bool {
        matches!(
            self,
            Identity::Host(_) | Identity::Scheduler | Identity::JobTracker | Identity::Plugin(_)
        )
    }

    /// The DNS name a service's certificate carries and its clients verify:
    /// `<host id>.host.datapath`, `scheduler.datapath`, `job-tracker.datapath`.
    pub fn dns_name(&self) -> Option<String> {
        match self {
            Identity::Host(id) => Some(format!("{id}.host.{TRUST_DOMAIN}")),
            Identity::Scheduler => Some(format!("scheduler.{TRUST_DOMAIN}")),
            Identity::JobTracker => Some(format!("job-tracker.{TRUST_DOMAIN}")),
            Identity::Plugin(n) => Some(format!("{n}.plugin.{TRUST_DOMAIN}")),
            _ => None,
        }
    }

    /// The certificate's common name, which etcd (with client-certificate auth) takes as the user:
    /// `datapath` (read and write under the prefix) for services, operators and admins,
    /// `datapath-viewer` (read only) for viewers and plugins (which need no etcd at all).
    pub fn etcd_user(&self) -> &'static str {
        match self {
            Identity::Viewer(_) | Identity::Plugin(_) => ETCD_VIEWER,
            _ => ETCD_USER,
        }
    }
}

/// The etcd user of datapath's services, operators and admins.
pub const ETCD_USER: &str = "datapath";
/// The etcd user of viewers.
pub const ETCD_VIEWER: &str = "datapath-viewer";

fn name_checked(
    name: Option<&str>,
    bad: &impl Fn(&'static str) -> BadIdentity,
) -> Result<String, BadIdentity> {
    let n = name.ok_or_else(|| bad("a name is required"))?;
    if valid_name(n) {
        Ok(n.to_string())
    } else {
        Err(bad("names are 1-64 of [a-z0-9._-]"))
    }
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_round_trips_through_its_uri() {
        let host = HostId::random();
        for id in [
            Identity::Host(host),
            Identity::Scheduler,
            Identity::JobTracker,
            Identity::Operator("alice".into()),
            Identity::Admin("ops-1".into()),
            Identity::Viewer("grafana.bot".into()),
            Identity::Plugin("host-selector".into()),
        ] {
            assert_eq!(Identity::parse(&id.uri()), Ok(id.clone()), "{id}");
        }
        assert_eq!(
            Identity::Host(host).uri(),
            format!("spiffe://datapath/host/{host}")
        );
    }

    #[test]
    fn anything_else_names_nobody() {
        for uri in [
            "spiffe://other/scheduler",
            "https://datapath/scheduler",
            "spiffe://datapath/",
            "spiffe://datapath/scheduler/x",
            "spiffe://datapath/host/not-a-uuid",
            "spiffe://datapath/host/",
            "spiffe://datapath/operator",
            "spiffe://datapath/operator/",
            "spiffe://datapath/operator/Alice",
            "spiffe://datapath/operator/a/b",
            "spiffe://datapath/root",
        ] {
            assert!(Identity::parse(uri).is_err(), "{uri}");
        }
    }
}
