//! A single-member etcd for a local cluster: data under `<dir>/etcd`, client and peer URLs on free
//! loopback ports, ready when its `/health` endpoint answers `"health":"true"`.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    process::{ManagedProcess, ProcessSpec},
    support::{find_binary, free_ports, LOG_TAIL_LINES},
};

/// How long [`Etcd::start`] and [`Etcd::restart`] wait for etcd to be healthy.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
const HEALTH_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A running etcd server, killed on drop.
#[derive(Debug)]
pub struct Etcd {
    process: ManagedProcess,
    client_addr: SocketAddr,
    data_dir: PathBuf,
}

impl Etcd {
    /// Starts the `etcd` found on `PATH` with its data in `<dir>/etcd` and its log in
    /// `<dir>/logs/etcd.log`, and waits until it is healthy.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let program = find_binary("etcd", &[])?;
        Self::start_with(&program, dir, ProcessSpec::default(), None).await
    }

    /// Starts `program` as [`Etcd::start`] does; `base` supplies the environment and process-group
    /// choice (its name, program and arguments are replaced). With `also_listen`, clients may also
    /// connect on that address (a network lab's gateway), on the same port.
    pub async fn start_with(
        program: &Path,
        dir: &Path,
        base: ProcessSpec,
        also_listen: Option<Ipv4Addr>,
    ) -> anyhow::Result<Self> {
        let ports = free_ports(2)?;
        let client_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
        let client_url = format!("http://{client_addr}");
        let listen_urls = match also_listen {
            Some(ip) => format!("{client_url},http://{ip}:{}", ports[0]),
            None => client_url.clone(),
        };
        let peer_url = format!("http://127.0.0.1:{}", ports[1]);
        let data_dir = dir.join("etcd");
        let name = "datapath-local";
        let spec = ProcessSpec {
            name: "etcd".to_string(),
            program: program.to_path_buf(),
            args: Vec::new(),
            ..base
        }
        .args([
            "--name",
            name,
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen-client-urls",
            &listen_urls,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("{name}={peer_url}"),
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]);
        let process = ManagedProcess::start(spec, &dir.join("logs"))?;
        let mut etcd = Self {
            process,
            client_addr,
            data_dir,
        };
        etcd.wait_ready(ETCD_READY_TIMEOUT).await?;
        Ok(etcd)
    }

    /// Its client URL, e.g. `http://127.0.0.1:40123`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    /// Its client URL on another address it listens on (see [`Etcd::start_with`]).
    pub fn client_url_on(&self, ip: Ipv4Addr) -> String {
        format!("http://{ip}:{}", self.client_addr.port())
    }

    /// Its client URLs, as the services' `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client_url()]
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Its process.
    pub fn process(&self) -> &ManagedProcess {
        &self.process
    }

    /// Its process, to signal or kill it.
    pub fn process_mut(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }

    /// Waits until `GET /health` answers `"health":"true"`; fails early when etcd exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exit_status() {
                bail!(
                    "etcd exited ({status}) before it was healthy; last lines of {}:\n{}",
                    self.process.log_path().display(),
                    self.process.log_tail(LOG_TAIL_LINES)
                );
            }
            if is_healthy(self.client_addr).await {
                return Ok(());
            }
            if Instant::now() >= until {
                bail!(
                    "etcd at {} was not healthy within {}; last lines of {}:\n{}",
                    self.client_url(),
                    humantime::format_duration(timeout),
                    self.process.log_path().display(),
                    self.process.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Restarts it on the same ports and data (stopping it first if it runs) and waits until it is
    /// healthy.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart().await.context("restart etcd")?;
        self.wait_ready(ETCD_READY_TIMEOUT).await
    }

    /// SIGTERM, then SIGKILL after `deadline`.
    pub async fn stop(&mut self, deadline: Duration) -> anyhow::Result<Option<ExitStatus>> {
        self.process.stop(deadline).await.context("stop etcd")
    }
}

/// One `GET /health` over plain HTTP/1.1; false on any error.
async fn is_healthy(addr: SocketAddr) -> bool {
    let call = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(HEALTH_CALL_TIMEOUT, call).await,
        Ok(Ok(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_restarts_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let mut etcd = Etcd::start(dir.path()).await.unwrap();
        assert!(is_healthy(etcd.client_addr).await);
        etcd.process_mut().kill().unwrap();
        assert!(!is_healthy(etcd.client_addr).await);
        etcd.restart().await.unwrap();
        assert!(is_healthy(etcd.client_addr).await);
        let status = etcd.stop(Duration::from_secs(10)).await.unwrap();
        assert!(status.is_some());
        assert!(!etcd.process_mut().is_running());
        let log = std::fs::read_to_string(dir.path().join("logs/etcd.log")).unwrap();
        assert_eq!(log.matches("--- dpctl: starting").count(), 2, "{log}");
    }
}
