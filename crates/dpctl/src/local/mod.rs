//! The local cluster launcher behind `dpctl local up` and the end-to-end tests: etcd, one job-tracker
//! and N host-workers as child processes on free loopback ports, sharing one storage root under one
//! directory:
//!
//! ```text
//! <dir>/etcd/            etcd's data (wiped at every start: its ports are new)
//! <dir>/logs/<name>.log  one log per process (etcd, job-tracker, host-<i>), appended across restarts
//! <dir>/storage/         the storage root every host-worker mounts
//! <dir>/hosts/host-<i>/  host i's state directory (its persisted host id)
//! <dir>/cluster.env      written by `Cluster::write_env`: the endpoints, for `set -a; . cluster.env`
//! ```
//!
//! Every process is killed when its handle drops, so a panicking test leaves nothing behind;
//! [`Cluster::stop`] is the orderly way down: host-workers, then the job-tracker, then etcd.

mod cluster;
mod cluster_access;
mod cluster_env;
mod config;
mod etcd;
mod etcd_auth;
mod freezer;
pub mod invariants;
mod netns;
mod pki;
mod process;
mod support;

pub use cluster::{Cluster, SERVING_TIMEOUT, STOP_DEADLINE};
pub use config::ClusterConfig;
pub use etcd::{Etcd, EtcdTls, ETCD_READY_TIMEOUT};
pub use freezer::{descendants, Freezer, FREEZER_ROOT};
pub use netns::NetworkLab;
pub use pki::{local_user, Pki};
pub use process::{log_tail, ManagedProcess, ProcessSpec, RESTART_STOP_DEADLINE};
pub use support::{check_serving, find_binary, free_ports, search_dirs, wait_serving};
