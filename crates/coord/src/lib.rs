//! Everything that knows etcd. This crate is the only code that knows the key layout (see [`keys`]);
//! the services see narrow, domain-level operations: a session lease with self-fencing, host
//! registrations, volume leases, and job records with compare-and-swap and resumable watches.
#![warn(missing_docs)]

pub mod candidacy;
pub mod cluster_view;
pub mod config;
pub mod disk_locks;
pub mod election;
pub mod error;
pub mod flow_store;
pub mod flows;
pub mod generations;
pub mod hosts;
pub mod job_store;
pub mod job_view;
pub mod jobs;
mod key_watch;
pub mod keys;
pub mod lease_store;
pub mod metrics;
mod probe;
pub mod quarantine;
pub mod retention;
pub mod session;
pub mod snapshot;
pub mod volume_holds;
pub mod volume_leases;
pub mod volume_reads;
pub mod volume_view;
mod watched;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use etcd_client::{Client, ConnectOptions};

pub use error::{CoordError, Result};
pub use keys::Keys;

/// Per-request deadline for etcd calls; a stopped or partitioned etcd answers with a timeout instead of
/// hanging a caller forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an idle connection to etcd is pinged: no more often than etcd allows by default.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6);

/// Where etcd is and which prefix is ours: the flags every etcd-using service shares.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdOptions {
    /// etcd client URLs, comma-separated.
    #[arg(
        long = "etcd-endpoints",
        env = "DATAPATH_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Prefix of every datapath key in etcd.
    #[arg(long = "etcd-prefix", env = "DATAPATH_ETCD_PREFIX", default_value = keys::DEFAULT_PREFIX)]
    pub prefix: String,
}

impl EtcdOptions {
    /// Connects as configured, in plaintext.
    pub async fn connect(&self) -> Result<Coord> {
        Coord::connect(&self.endpoints, &self.prefix).await
    }

    /// Connects as configured; over TLS with `tls` (a client certificate whose common name etcd
    /// takes as the user) when the endpoints are `https://`.
    pub async fn connect_tls(&self, tls: Option<TlsOptions>) -> Result<Coord> {
        Coord::connect_with(&self.endpoints, &self.prefix, tls).await
    }
}

pub use etcd_client::TlsOptions;

/// A connection to etcd plus the key layout under one prefix. Cheap to clone.
///
/// With several endpoints (an etcd cluster), calls go to one member at a time; a background check
/// moves them to another member as soon as that one stops answering or loses its leader. One channel
/// balanced over every member would keep sending a share of the calls — session renewals among them —
/// to a dead member, until hosts fence themselves for nothing.
#[derive(Clone)]
pub struct Coord {
    members: Arc<Members>,
    keys: Keys,
}

/// The members' clients and the one in use.
struct Members {
    clients: Vec<Member>,
    current: AtomicUsize,
    checker: Option<tokio::task::AbortHandle>,
}

impl Drop for Members {
    fn drop(&mut self) {
        if let Some(c) = &self.checker {
            c.abort();
        }
    }
}

struct Member {
    endpoint: String,
    client: Client,
    /// A client without a request deadline, for calls that block by design (an election campaign
    /// waits for the leader to go); cancelled by dropping the call.
    blocking: Client,
}

/// How often the member in use is checked, and how long it may take to answer.
const MEMBER_CHECK: Duration = Duration::from_millis(500);

impl Coord {
    /// Connects to `endpoints` (lazily: an etcd that is down now is retried on each call) and scopes
    /// every key under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        Self::connect_with(endpoints, prefix, None).await
    }

    /// [`Coord::connect`] over TLS with `tls` when every endpoint is `https://` (the scheme decides:
    /// a plaintext etcd is reached in plaintext whatever the caller's certificates).
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        tls: Option<TlsOptions>,
    ) -> Result<Self> {
        let tls = tls.filter(|_| endpoints.iter().all(|e| e.starts_with("https://")));
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // etcd (3.4 default --grpc-keepalive-min-time 5s) answers pings sent more often than every
            // 5 s with GOAWAY, which cut long campaigns and quiet watches every few seconds.
            .with_keep_alive(KEEP_ALIVE_INTERVAL, Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls {
            options = options.with_tls(tls);
        }
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            clients.push(Member {
                endpoint: endpoint.clone(),
                blocking: Client::connect_with_balanced_channel(
                    [endpoint],
                    Some(options.clone()),
                    metrics::MeteredChannel,
                )
                .await?,
                client: Client::connect_with_balanced_channel(
                    [endpoint],
                    Some(options.clone().with_timeout(REQUEST_TIMEOUT)),
                    metrics::MeteredChannel,
                )
                .await?,
            });
        }
        if clients.is_empty() {
            return Err(etcd_client::Error::InvalidArgs("no etcd endpoint".into()).into());
        }
        let several = clients.len() > 1;
        let mut members = Arc::new(Members {
            clients,
            current: AtomicUsize::new(0),
            checker: None,
        });
        if several {
            let weak = Arc::downgrade(&members);
            let task = tokio::spawn(check_members(weak)).abort_handle();
            if let Some(m) = Arc::get_mut(&mut members) {
                m.checker = Some(task);
            }
        }
        Ok(Self {
            members,
            keys: Keys::new(prefix),
        })
    }

    /// etcd's current revision (a read of one key, the bare prefix).
    pub async fn revision(&self) -> Result<i64> {
        let resp = self.client().get(self.keys.prefix(), None).await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Up to `limit` keys of the directory `prefix` (ending in '/') in key order, strictly after
    /// the name `after` (from the first with `None`), with the name of the last key read (where the
    /// next read starts, even when that record does not decode) and whether more follow: one bounded
    /// range read, so that a page never reads a whole directory.
    pub(crate) async fn range_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(etcd_client::GetResponse, Option<String>, bool)> {
        let start = match after {
            Some(name) => format!("{prefix}{name}\0"),
            None => prefix.to_string(),
        };
        // The end of the directory: the prefix with its last byte ('/') raised by one.
        let end = format!("{}0", prefix.trim_end_matches('/'));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let resp = self
            .client()
            .get(
                start,
                Some(
                    etcd_client::GetOptions::new()
                        .with_range(end)
                        .with_limit(limit),
                ),
            )
            .await?;
        let last = resp.kvs().last().map(|kv| {
            String::from_utf8_lossy(kv.key())
                .trim_start_matches(prefix)
                .to_string()
        });
        let more = resp.more();
        Ok((resp, last, more))
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A handle on the raw client of the member in use, for this crate's modules.
    pub(crate) fn client(&self) -> Client {
        self.member().client.clone()
    }

    /// The member in use's client without a request deadline.
    pub(crate) fn blocking(&self) -> Client {
        self.member().blocking.clone()
    }

    fn member(&self) -> &Member {
        let i = self.members.current.load(Ordering::Relaxed);
        &self.members.clients[i % self.members.clients.len()]
    }
}

/// Keeps calls on a member that answers and knows a leader; runs while the clients exist.
async fn check_members(members: Weak<Members>) {
    loop {
        tokio::time::sleep(MEMBER_CHECK).await;
        let Some(m) = members.upgrade() else { return };
        let n = m.clients.len();
        let current = m.current.load(Ordering::Relaxed) % n;
        if healthy(&m.clients[current]).await {
            continue;
        }
        for step in 1..n {
            let next = (current + step) % n;
            if healthy(&m.clients[next]).await {
                m.current.store(next, Ordering::Relaxed);
                tracing::warn!(
                    from = %m.clients[current].endpoint,
                    to = %m.clients[next].endpoint,
                    "etcd member not answering; calls moved to another member"
                );
                break;
            }
        }
    }
}

/// Whether a member answers its status quickly and knows a leader.
async fn healthy(member: &Member) -> bool {
    let mut client = member.client.clone();
    matches!(
        tokio::time::timeout(MEMBER_CHECK, client.status()).await,
        Ok(Ok(status)) if status.leader() != 0
    )
}
