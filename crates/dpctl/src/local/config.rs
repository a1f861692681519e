//! What a local cluster looks like: how many hosts, where its files go, which binaries, and the
//! service settings worth varying in tests (session TTL, job slots, retention, key prefix).
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// The shape of a local cluster; see [`super::Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of host-workers.
    pub hosts: usize,
    /// The directory holding etcd's data, the logs, the storage root and the hosts' state.
    pub dir: PathBuf,
    /// Where `job-tracker` and `host-worker` are; `None`: `DATAPATH_BIN_DIR`, else the current
    /// executable's directory and its parent, then `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// The host-workers' `--session-ttl`.
    pub session_ttl: Duration,
    /// The host-workers' `--job-slots`.
    pub job_slots: u32,
    /// The job-tracker's `--job-retention`.
    pub job_retention: Duration,
    /// The etcd key prefix of every service (`--etcd-prefix`).
    pub etcd_prefix: String,
    /// Extra environment for every process (e.g. `RUST_LOG`). Inherited `DATAPATH_*` variables are
    /// removed from the services' environment, so that only the launcher's flags configure them.
    pub env: Vec<(String, String)>,
    /// The scheduler's `--host-selection` policy.
    pub host_selection: String,
    /// The scheduler's `--host-selector-url` (for the `external` policy).
    pub host_selector_url: Option<String>,
    /// The scheduler's `--parallel-copies`.
    pub parallel_copies: usize,
    /// The host-workers' `--host-bandwidth-limit` in bytes per second (0: unlimited).
    pub host_bandwidth_limit: u64,
    /// More flags for every host-worker (e.g. `--copy-bandwidth-limit`).
    pub host_worker_extra_args: Vec<String>,
    /// etcd members: 1, or 3 on loopback as production runs it (a test can then kill the leader).
    pub etcd_members: usize,
    /// Run every host-worker in its own network namespace behind a veth pair (see
    /// [`super::NetworkLab`]), so a test can cut its link. Needs root.
    pub isolate_hosts: bool,
    /// Start every process in its own process group, so a terminal's Ctrl-C reaches only the
    /// launcher, which then stops the cluster in order (`dpctl local up` does). Off by default, so
    /// that interrupting a test run also interrupts its processes.
    pub own_process_groups: bool,
    /// Run every service with `--insecure` (plaintext gRPC, no authentication) instead of mutual TLS
    /// with certificates the launcher makes in `<dir>/pki`.
    pub insecure: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            hosts: 1,
            dir: std::env::temp_dir().join("datapath-local"),
            bin_dir: None,
            session_ttl: Duration::from_secs(10),
            job_slots: 2,
            job_retention: Duration::from_secs(3600),
            etcd_prefix: "/datapath/".to_string(),
            env: Vec::new(),
            host_selection: "least-loaded".to_string(),
            host_selector_url: None,
            parallel_copies: 1,
            host_bandwidth_limit: 0,
            host_worker_extra_args: Vec::new(),
            etcd_members: 1,
            isolate_hosts: false,
            own_process_groups: false,
            insecure: false,
        }
    }
}

impl ClusterConfig {
    /// The storage root shared by every host-worker.
    pub fn storage_root(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The state directory of host `i`.
    pub fn host_state_dir(&self, i: usize) -> PathBuf {
        self.dir.join("hosts").join(format!("host-{i}"))
    }

    /// The directory of the cluster CA and every certificate (see `pki.rs`).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The directory of the process logs.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// The job-tracker's flags.
pub(super) fn job_tracker_args(
    config: &ClusterConfig,
    listen: SocketAddr,
    etcd: &str,
) -> Vec<String> {
    vec![
        "--listen".into(),
        listen.to_string(),
        "--etcd-endpoints".into(),
        etcd.into(),
        "--etcd-prefix".into(),
        config.etcd_prefix.clone(),
        "--job-retention".into(),
        humantime::format_duration(config.job_retention).to_string(),
    ]
}

/// The scheduler's flags.
pub(super) fn scheduler_args(
    config: &ClusterConfig,
    port: u16,
    etcd: &str,
    job_tracker: &str,
) -> Vec<String> {
    let mut args = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--etcd-endpoints".into(),
        etcd.into(),
        "--etcd-prefix".into(),
        config.etcd_prefix.clone(),
        "--job-tracker".into(),
        job_tracker.into(),
        "--host-selection".into(),
        config.host_selection.clone(),
        "--parallel-copies".into(),
        config.parallel_copies.to_string(),
        "--session-ttl".into(),
        humantime::format_duration(config.session_ttl).to_string(),
    ];
    if let Some(url) = &config.host_selector_url {
        args.extend(["--host-selector-url".into(), url.clone()]);
    }
    args
}

/// Host `i`'s flags.
pub(super) fn host_worker_args(
    config: &ClusterConfig,
    i: usize,
    listen: SocketAddr,
    etcd: &str,
    job_tracker: &str,
) -> Vec<String> {
    let mut args = vec![
        "--listen".into(),
        listen.to_string(),
        "--state-dir".into(),
        config.host_state_dir(i).display().to_string(),
        "--etcd-endpoints".into(),
        etcd.into(),
        "--etcd-prefix".into(),
        config.etcd_prefix.clone(),
        "--storage-root".into(),
        config.storage_root().display().to_string(),
        "--job-slots".into(),
        config.job_slots.to_string(),
        "--session-ttl".into(),
        humantime::format_duration(config.session_ttl).to_string(),
        "--job-tracker".into(),
        job_tracker.into(),
    ];
    if config.host_bandwidth_limit > 0 {
        args.extend([
            "--host-bandwidth-limit".into(),
            config.host_bandwidth_limit.to_string(),
        ]);
    }
    args.extend(config.host_worker_extra_args.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_worker_flags_carry_the_config() {
        let config = ClusterConfig {
            dir: PathBuf::from("/d"),
            session_ttl: Duration::from_millis(2500),
            job_slots: 3,
            ..ClusterConfig::default()
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], 7401));
        let args = host_worker_args(&config, 1, listen, "http://e", "http://j").join(" ");
        assert_eq!(
            args,
            "--listen 127.0.0.1:7401 --state-dir /d/hosts/host-1 --etcd-endpoints http://e \
             --etcd-prefix /datapath/ --storage-root /d/storage --job-slots 3 --session-ttl 2s 500ms \
             --job-tracker http://j"
        );
    }
}
