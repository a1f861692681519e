//! etcd for a local cluster: one member (data under `<dir>/etcd`), or three on loopback as users run
//! it in production (the others under `<dir>/etcd-<i>`), client and peer URLs on free loopback
//! ports, ready when member 0's `/health` answers `"health":"true"` (which needs a quorum). With
//! [`EtcdTls`] clients must come over TLS with a certificate of the cluster CA (etcd then takes the
//! certificate's common name as the user); `/health` and `/metrics` stay on a plain-HTTP metrics
//! listener of their own. Peers talk plaintext, on loopback only.
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

/// The files of an etcd that serves clients over TLS.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA client certificates must chain to.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A running etcd server (member 0, and any other members), killed on drop.
#[derive(Debug)]
pub struct Etcd {
    process: ManagedProcess,
    client_addr: SocketAddr,
    /// Where member 0 serves `/health` and `/metrics` in plain HTTP.
    metrics_addr: SocketAddr,
    data_dir: PathBuf,
    /// Members 1.. of a multi-member cluster: process, client address, metrics address.
    others: Vec<(ManagedProcess, SocketAddr, SocketAddr)>,
    /// `https` when clients come over TLS.
    scheme: &'static str,
}

impl Etcd {
    /// Starts the `etcd` found on `PATH` with its data in `<dir>/etcd` and its log in
    /// `<dir>/logs/etcd.log`, and waits until it is healthy.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let program = find_binary("etcd", &[])?;
        Self::start_with(&program, dir, ProcessSpec::default(), None, 1, None).await
    }

    /// Starts `program` as [`Etcd::start`] does, with `members` members (1 or more); `base` supplies
    /// the environment and process-group choice (its name, program and arguments are replaced).
    /// With `also_listen`, clients may also connect on that address (a network lab's gateway), on
    /// the same ports. With `tls`, clients must present a certificate of its CA.
    pub async fn start_with(
        program: &Path,
        dir: &Path,
        base: ProcessSpec,
        also_listen: Option<Ipv4Addr>,
        members: usize,
        tls: Option<&EtcdTls>,
    ) -> anyhow::Result<Self> {
        let members = members.max(1);
        let ports = free_ports(3 * members)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let name = |i: usize| match i {
            0 => "datapath-local".to_string(),
            i => format!("datapath-local-{i}"),
        };
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[3 * i + 1]);
        let initial_cluster = (0..members)
            .map(|i| format!("{}={}", name(i), peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut started = Vec::new();
        for i in 0..members {
            let client_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[3 * i]));
            let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[3 * i + 2]));
            let client_url = format!("{scheme}://{client_addr}");
            let listen_urls = match also_listen {
                Some(ip) => format!("{client_url},{scheme}://{ip}:{}", ports[3 * i]),
                None => client_url.clone(),
            };
            let data_dir = match i {
                0 => dir.join("etcd"),
                i => dir.join(format!("etcd-{i}")),
            };
            let spec = ProcessSpec {
                name: match i {
                    0 => "etcd".to_string(),
                    i => format!("etcd-{i}"),
                },
                program: program.to_path_buf(),
                args: Vec::new(),
                ..base.clone()
            }
            .args([
                "--name",
                &name(i),
                "--data-dir",
                &data_dir.display().to_string(),
                "--listen-client-urls",
                &listen_urls,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url(i),
                "--initial-advertise-peer-urls",
                &peer_url(i),
                "--initial-cluster",
                &initial_cluster,
                "--listen-metrics-urls",
                &format!("http://{metrics_addr}"),
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ]);
            let spec = match tls {
                Some(t) => spec.args([
                    "--client-cert-auth",
                    "--trusted-ca-file",
                    &t.ca.display().to_string(),
                    "--cert-file",
                    &t.cert.display().to_string(),
                    "--key-file",
                    &t.key.display().to_string(),
                ]),
                None => spec,
            };
            let process = ManagedProcess::start(spec, &dir.join("logs"))?;
            started.push((process, client_addr, metrics_addr, data_dir));
        }
        let mut rest = started.into_iter();
        let (process, client_addr, metrics_addr, data_dir) = rest.next().context("member 0")?;
        let mut etcd = Self {
            process,
            client_addr,
            metrics_addr,
            data_dir,
            others: rest.map(|(p, a, m, _)| (p, a, m)).collect(),
            scheme,
        };
        etcd.wait_ready(ETCD_READY_TIMEOUT).await?;
        Ok(etcd)
    }

    /// How many members it has.
    pub fn member_count(&self) -> usize {
        1 + self.others.len()
    }

    /// Member `i`'s process. Panics when `i` is out of range.
    pub fn member_mut(&mut self, i: usize) -> &mut ManagedProcess {
        match i {
            0 => &mut self.process,
            i => &mut self.others[i - 1].0,
        }
    }

    /// The index of the member that is leader now, from each member's `/metrics`
    /// (`etcd_server_is_leader 1`); `None` while there is none (or none answers).
    pub async fn leader(&self) -> Option<usize> {
        let addrs =
            std::iter::once(self.metrics_addr).chain(self.others.iter().map(|(_, _, m)| *m));
        for (i, addr) in addrs.enumerate() {
            if http_get(addr, "/metrics")
                .await
                .is_some_and(|m| m.lines().any(|l| l == "etcd_server_is_leader 1"))
            {
                return Some(i);
            }
        }
        None
    }

    /// Its client URL, e.g. `https://127.0.0.1:40123`.
    pub fn client_url(&self) -> String {
        format!("{}://{}", self.scheme, self.client_addr)
    }

    /// Its client URLs (every member's), as the services' `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        std::iter::once(self.client_url())
            .chain(
                self.others
                    .iter()
                    .map(|(_, a, _)| format!("{}://{a}", self.scheme)),
            )
            .collect()
    }

    /// Its client URLs on another address they listen on (see [`Etcd::start_with`]).
    pub fn endpoints_on(&self, ip: Ipv4Addr) -> Vec<String> {
        std::iter::once(self.client_addr.port())
            .chain(self.others.iter().map(|(_, a, _)| a.port()))
            .map(|port| format!("{}://{ip}:{port}", self.scheme))
            .collect()
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
            if is_healthy(self.metrics_addr).await {
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

    /// How many unary gRPC requests member 0 has answered, by method (`Range`, `Txn`, `Put`,
    /// `LeaseGrant`, …), from its `/metrics`; `None` when it did not answer. For benchmarks that
    /// count the requests an operation costs.
    pub async fn requests_by_method(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        let text = http_get(self.metrics_addr, "/metrics").await?;
        let mut counts = std::collections::BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("grpc_server_handled_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            if !labels.contains("grpc_type=\"unary\"") {
                continue;
            }
            let method = labels
                .split(',')
                .find_map(|l| l.strip_prefix("grpc_method=\""))
                .and_then(|m| m.strip_suffix('"'));
            if let (Some(method), Ok(value)) = (method, value.trim().parse::<f64>()) {
                *counts.entry(method.to_string()).or_default() += value as u64;
            }
        }
        Some(counts)
    }

    /// SIGTERM, then SIGKILL after `deadline`, every member; returns member 0's status.
    pub async fn stop(&mut self, deadline: Duration) -> anyhow::Result<Option<ExitStatus>> {
        for (p, _, _) in &mut self.others {
            p.stop(deadline).await.context("stop etcd member")?;
        }
        self.process.stop(deadline).await.context("stop etcd")
    }
}

/// One `GET /health` over plain HTTP/1.1; false on any error.
async fn is_healthy(addr: SocketAddr) -> bool {
    http_get(addr, "/health")
        .await
        .is_some_and(|r| r.contains("\"health\":\"true\""))
}

/// One plain HTTP/1.1 GET; the whole response, or `None` on any error.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let call = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(HEALTH_CALL_TIMEOUT, call)
        .await
        .ok()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_restarts_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let mut etcd = Etcd::start(dir.path()).await.unwrap();
        assert!(is_healthy(etcd.metrics_addr).await);
        etcd.process_mut().kill().unwrap();
        assert!(!is_healthy(etcd.metrics_addr).await);
        etcd.restart().await.unwrap();
        assert!(is_healthy(etcd.metrics_addr).await);
        let status = etcd.stop(Duration::from_secs(10)).await.unwrap();
        assert!(status.is_some());
        assert!(!etcd.process_mut().is_running());
        let log = std::fs::read_to_string(dir.path().join("logs/etcd.log")).unwrap();
        assert_eq!(log.matches("--- dpctl: starting").count(), 2, "{log}");
    }
}
