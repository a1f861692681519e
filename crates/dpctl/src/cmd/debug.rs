//! `dpctl debug etcd`: datapath's whole etcd state, decoded, for someone finding out why a move is
//! slow or stuck without knowing the key layout — hosts with their address, domains, load and session
//! lease; the SPM; the scheduler replica running the flows; volume leases with holder, fencing token
//! and TTL left; jobs; flows (the full record as proto3 JSON, as `dpctl decode` prints it); disk locks;
//! generations; idempotency keys; settings. It reads etcd directly (so it works when the services do
//! not answer) through `datapath-coord`, the only code that knows the layout. Text for people; JSON
//! (`--json` or `-o json`) for scripts, every record in proto3 JSON.
use anyhow::Context as _;
use clap::{Args, Subcommand};
use datapath_coord::{
    snapshot::{Entry, Snapshot},
    EtcdOptions,
};
use serde_json::{json, Value};

use super::Context;
use crate::output::{self, Output, ProtoMessage};

/// Debugging commands.
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Print datapath's etcd state decoded: hosts, SPM, scheduler leader, leases, jobs, flows, locks.
    Etcd(EtcdArgs),
}

/// `debug etcd` flags.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// Where etcd is and the services' key prefix.
    #[command(flatten)]
    etcd: EtcdOptions,
    /// Print JSON (the same as `-o json`).
    #[arg(long, env = "DATAPATH_DEBUG_JSON")]
    json: bool,
}

impl DebugCommand {
    /// Runs it.
    pub async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Self::Etcd(args) => args.run(ctx).await,
        }
    }
}

impl EtcdArgs {
    async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let endpoints = self.etcd.endpoints.join(",");
        let tls = ctx.tls()?.map(|t| t.client(None));
        let coord = self
            .etcd
            .connect_tls(tls)
            .await
            .context("connect to etcd")?;
        let snapshot = coord
            .snapshot()
            .await
            .with_context(|| format!("read {} from etcd at {endpoints}", self.etcd.prefix))?;
        if self.json || ctx.output() == Output::Json {
            let text = serde_json::to_string_pretty(&to_json(&snapshot)?).context("format JSON")?;
            println!("{text}");
        } else {
            print!("{}", super::debug_text::render(&snapshot)?);
        }
        Ok(())
    }
}

/// The snapshot as JSON: `spm` and `schedulerLeader` up front, then one list per section, each entry
/// `{name, value, lease, ttlLeft, createRevision, modRevision}` with records in proto3 JSON.
pub fn to_json(s: &Snapshot) -> anyhow::Result<Value> {
    let ttl = |lease: i64| s.leases.get(&lease).and_then(|t| t.left);
    let plain = |e: &Entry<String>| entry_json(e, json!(e.value), ttl(e.lease));
    Ok(json!({
        "prefix": s.prefix,
        "revision": s.revision,
        "spm": s.spm_host(),
        "schedulerLeader": s.scheduler_leader(),
        "hosts": proto_entries(&s.hosts, &ttl)?,
        "spmCandidates": s.spm.iter().map(plain).collect::<Vec<_>>(),
        "schedulerCandidates": s.schedulers.iter().map(plain).collect::<Vec<_>>(),
        "volumeLeases": proto_entries(&s.volume_leases, &ttl)?,
        "volumeHolds": proto_entries(&s.volume_holds, &ttl)?,
        "imageDeletions": s.image_deletions.iter().map(plain).collect::<Vec<_>>(),
        "jobs": proto_entries(&s.jobs, &ttl)?,
        "flows": proto_entries(&s.flows, &ttl)?,
        "diskLocks": proto_entries(&s.disk_locks, &ttl)?,
        "generations": s.generations.iter().map(|e| entry_json(e, json!(e.value), None)).collect::<Vec<_>>(),
        "requests": s.requests.iter().map(plain).collect::<Vec<_>>(),
        "config": s.config.iter().map(plain).collect::<Vec<_>>(),
        "other": s.other.iter().map(plain).collect::<Vec<_>>(),
        "unreadable": s.unreadable.iter().map(|u| json!({"key": u.key, "error": u.error})).collect::<Vec<_>>(),
        "leases": s.leases.iter().map(|(id, t)| json!({"lease": id, "grantedTtl": t.granted, "ttlLeft": t.left})).collect::<Vec<_>>(),
    }))
}

fn proto_entries<M: ProtoMessage>(
    entries: &[Entry<M>],
    ttl: &dyn Fn(i64) -> Option<i64>,
) -> anyhow::Result<Vec<Value>> {
    entries
        .iter()
        .map(|e| Ok(entry_json(e, output::to_json(&e.value)?, ttl(e.lease))))
        .collect()
}

fn entry_json<T>(e: &Entry<T>, value: Value, ttl_left: Option<i64>) -> Value {
    json!({
        "name": e.name,
        "value": value,
        "lease": e.lease,
        "ttlLeft": ttl_left,
        "createRevision": e.create_revision,
        "modRevision": e.mod_revision,
    })
}
