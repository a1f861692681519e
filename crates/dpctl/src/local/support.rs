//! What the launcher needs around its processes: free loopback ports, finding the binaries, and
//! waiting until a gRPC server answers its health check with SERVING.
use std::{
    env,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use super::process::ManagedProcess;

/// Log lines quoted in an error about a process that failed to start.
pub const LOG_TAIL_LINES: usize = 40;
const HEALTH_POLL: Duration = Duration::from_millis(100);
const HEALTH_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// `n` distinct free TCP ports on 127.0.0.1, found by binding port 0. All are held until every one is
/// picked, so they differ; another process may still take one before its user binds it.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("bind a free loopback port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().context("read a bound port")?.port()))
        .collect()
}

/// The directories searched for datapath binaries before `PATH`: `bin_dir`, else `DATAPATH_BIN_DIR`,
/// else the directory of the current executable and its parent (so a test binary in
/// `target/debug/deps` finds `target/debug/host-worker`).
pub fn search_dirs(bin_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(dir) = bin_dir {
        return vec![dir.to_path_buf()];
    }
    if let Some(dir) = env::var_os("DATAPATH_BIN_DIR").filter(|d| !d.is_empty()) {
        return vec![PathBuf::from(dir)];
    }
    let Some(exe_dir) = env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let parent = exe_dir.parent().map(Path::to_path_buf);
    let mut dirs = vec![exe_dir];
    dirs.extend(parent);
    dirs
}

/// Finds the binary `name` in `dirs`, then in `PATH`.
pub fn find_binary(name: &str, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let path_dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.iter()
        .chain(&path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            anyhow!(
                "cannot find the {name} binary in [{}] or PATH (build it, or set DATAPATH_BIN_DIR)",
                searched.join(", ")
            )
        })
}

/// One health check of the server at `url` (service ""), over mutual TLS when `tls` is given:
/// `Ok(true)` when it answers SERVING.
pub async fn check_serving(url: &str, tls: Option<&datapath_tls::Tls>) -> anyhow::Result<bool> {
    let call = async {
        let channel = crate::client::channel(url, tls).await?;
        let mut health = HealthClient::new(datapath_telemetry::traced(channel));
        let response = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .context("call grpc.health.v1.Health/Check")?;
        Ok(response.into_inner().status == ServingStatus::Serving as i32)
    };
    tokio::time::timeout(HEALTH_CALL_TIMEOUT, call)
        .await
        .map_err(|_| anyhow!("health check timed out after {HEALTH_CALL_TIMEOUT:?}"))?
}

/// Waits until the server at `url`, run by `process`, answers SERVING. Fails early when the process
/// exits, and after `timeout`; the error quotes the end of the process's log.
pub async fn wait_serving(
    process: &mut ManagedProcess,
    url: &str,
    tls: Option<&datapath_tls::Tls>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exit_status() {
            bail!(
                "{} exited ({status}) before it was SERVING; last lines of {}:\n{}",
                process.name(),
                process.log_path().display(),
                process.log_tail(LOG_TAIL_LINES)
            );
        }
        let last = match check_serving(url, tls).await {
            Ok(true) => return Ok(()),
            Ok(false) => "NOT_SERVING".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= until {
            bail!(
                "{} at {url} was not SERVING within {} (last: {last}); last lines of {}:\n{}",
                process.name(),
                humantime::format_duration(timeout),
                process.log_path().display(),
                process.log_tail(LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(HEALTH_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(5).unwrap();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 5);
    }

    #[test]
    fn explicit_bin_dir_comes_first_then_path() {
        let dirs = search_dirs(Some(Path::new("/nonexistent")));
        assert_eq!(dirs, vec![PathBuf::from("/nonexistent")]);
        // `sh` is on PATH on any machine that runs these tests.
        assert!(find_binary("sh", &dirs).is_ok());
        let err = find_binary("no-such-datapath-binary", &dirs).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }
}
