//! Everything that knows etcd. This crate is the only code that knows the key layout (see [`keys`]);
//! the services see narrow, domain-level operations: a session lease with self-fencing, host
//! registrations, volume leases, and job records with compare-and-swap and resumable watches.
#![warn(missing_docs)]

pub mod config;
pub mod election;
pub mod error;
pub mod flows;
pub mod generations;
pub mod hosts;
pub mod jobs;
pub mod keys;
pub mod session;
pub mod volume_leases;

use std::time::Duration;

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
    /// Connects as configured.
    pub async fn connect(&self) -> Result<Coord> {
        Coord::connect(&self.endpoints, &self.prefix).await
    }
}

/// A connection to etcd plus the key layout under one prefix. Cheap to clone.
#[derive(Clone)]
pub struct Coord {
    client: Client,
    /// A client without a request deadline, for calls that block by design (an election campaign
    /// waits for the leader to go); cancelled by dropping the call.
    blocking: Client,
    keys: Keys,
}

impl Coord {
    /// Connects to `endpoints` (lazily: an etcd that is down now is retried on each call) and scopes
    /// every key under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // etcd (3.4 default --grpc-keepalive-min-time 5s) answers pings sent more often than every
            // 5 s with GOAWAY, which cut long campaigns and quiet watches every few seconds.
            .with_keep_alive(KEEP_ALIVE_INTERVAL, Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        let blocking = Client::connect(endpoints, Some(options.clone())).await?;
        let client =
            Client::connect(endpoints, Some(options.with_timeout(REQUEST_TIMEOUT))).await?;
        Ok(Self {
            client,
            blocking,
            keys: Keys::new(prefix),
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A handle on the raw client, for this crate's modules.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }
}
