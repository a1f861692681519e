//! `cluster.env`: what a shell, a test or a Prometheus scrape config needs to reach a local cluster,
//! as `KEY=value` lines (`set -a; . DIR/cluster.env`).
use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;

use super::cluster::Cluster;

impl Cluster {
    /// The variables of `cluster.env`: `DATAPATH_ETCD_ENDPOINTS`, `DATAPATH_ETCD_PREFIX`,
    /// `DATAPATH_JOB_TRACKER`, `DATAPATH_STORAGE_ROOT`, and `DATAPATH_HOST_<i>` (URL) and
    /// `DATAPATH_HOST_<i>_ID` for every host; and each service's `/metrics` address (`host:port`, for
    /// a Prometheus scrape config): `DATAPATH_JOB_TRACKER_METRICS`, `DATAPATH_SCHEDULER_METRICS`,
    /// `DATAPATH_HOST_<i>_METRICS`; and the local operator's certificate (`DATAPATH_TLS_CA`,
    /// `DATAPATH_TLS_CERT`, `DATAPATH_TLS_KEY`), or `DATAPATH_INSECURE=true`.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (
                "DATAPATH_ETCD_ENDPOINTS".to_string(),
                self.etcd_endpoints().join(","),
            ),
            (
                "DATAPATH_ETCD_PREFIX".into(),
                self.config().etcd_prefix.clone(),
            ),
            ("DATAPATH_JOB_TRACKER".into(), self.job_tracker_url()),
            ("DATAPATH_SCHEDULER".into(), self.scheduler_url()),
            (
                "DATAPATH_JOB_TRACKER_METRICS".into(),
                self.job_tracker_metrics().to_string(),
            ),
            (
                "DATAPATH_SCHEDULER_METRICS".into(),
                self.scheduler_metrics().to_string(),
            ),
            (
                "DATAPATH_STORAGE_ROOT".into(),
                self.storage_root().display().to_string(),
            ),
        ];
        match self.pki() {
            Some(pki) => vars.extend(pki.env()),
            None => vars.push(("DATAPATH_INSECURE".into(), "true".into())),
        }
        for i in 0..self.host_count() {
            vars.push((format!("DATAPATH_HOST_{i}"), self.host_url(i)));
            vars.push((format!("DATAPATH_HOST_{i}_ID"), self.host_id(i).to_string()));
            vars.push((
                format!("DATAPATH_HOST_{i}_METRICS"),
                self.host_metrics(i).to_string(),
            ));
        }
        vars
    }

    /// Writes [`Cluster::env_vars`] to `path` as `KEY=value` lines (conventionally
    /// `<dir>/cluster.env`).
    pub fn write_env(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = String::new();
        for (key, value) in self.env_vars() {
            let _ = writeln!(text, "{key}={value}");
        }
        fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }
}
