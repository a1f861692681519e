//! A real OTLP receiver for the trace tests: Arize Phoenix (`phoenix serve`, from PyPI), started on
//! free loopback ports with its own working directory and its phone-home telemetry off. It takes
//! spans over OTLP/gRPC and answers them back, by trace id, over its REST API.
use std::{
    net::{SocketAddr, TcpListener},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::harness::wait_for;

/// A running Phoenix; killed when dropped.
pub struct Phoenix {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    /// The OTLP/gRPC endpoint, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp: String,
    rest: SocketAddr,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn curl(url: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", url])
        .output()
        .context("run curl")?;
    if !out.status.success() {
        bail!("{url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

impl Phoenix {
    /// Starts Phoenix and waits until it answers (it takes about ten seconds).
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (http, grpc) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("phoenix.log"))?;
        let child = tokio::process::Command::new("phoenix")
            .arg("serve")
            .env("PHOENIX_WORKING_DIR", dir.path())
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", http.to_string())
            .env("PHOENIX_GRPC_PORT", grpc.to_string())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("run `phoenix serve` (pip install arize-phoenix)")?;
        let phoenix = Self {
            _child: child,
            dir,
            otlp: format!("http://127.0.0.1:{grpc}"),
            rest: SocketAddr::from(([127, 0, 0, 1], http)),
        };
        let health = format!("http://{}/healthz", phoenix.rest);
        let otlp = SocketAddr::from(([127, 0, 0, 1], grpc));
        // Ready when its REST API answers and its OTLP port takes connections (spans sent before
        // that would be lost).
        let ready = wait_for(Duration::from_secs(120), "Phoenix to answer", || {
            let ok = curl(&health).is_ok() && std::net::TcpStream::connect(otlp).is_ok();
            async move { ok.then_some(()) }
        })
        .await;
        if let Err(e) = ready {
            bail!("{e}; its log:\n{}", phoenix.log());
        }
        Ok(phoenix)
    }

    /// Phoenix's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("phoenix.log")).unwrap_or_default()
    }

    /// Every span Phoenix stored for `trace_id` (32 hex digits), in OTLP's JSON form.
    pub fn spans(&self, trace_id: &str) -> anyhow::Result<Vec<Value>> {
        let url = format!(
            "http://{}/v1/projects/default/spans/otlpv1?trace_id={trace_id}&limit=1000",
            self.rest
        );
        let body: Value = serde_json::from_str(&curl(&url)?)?;
        Ok(body["data"].as_array().cloned().unwrap_or_default())
    }
}
