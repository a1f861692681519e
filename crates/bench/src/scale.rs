//! The control plane with many hosts (issue 13): N real host-worker processes sharing one storage
//! root, in `--simulated-copy-rate` mode (no qemu-img, no data byte moved; leases, generations,
//! jobs and commits real, as kubemark's hollow nodes), a job-tracker and a scheduler; M MoveDisks
//! of empty 1 MiB disks sent at once by 16 clients. For each (N, M), on a fresh cluster: the time
//! to move them all, MoveDisk's answer p50/p99, a copy job's end → its operation done p50/p99, the
//! CPU time of the scheduler, the job-tracker and etcd per operation, etcd writes per operation
//! (revisions), etcd's reads and transactions per operation (its `/metrics`), etcd's database size
//! and each service's peak RSS; then a check that every source is gone and every disk is in its
//! new domain. The end of the moves is seen on one watch of the flow records, not by listing
//! every operation. Before the moves, the idle cluster's cost: CPU shares of a core over 20 s and
//! etcd writes per second.
use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use datapath_api::pb::{self, job_tracker_service_client::JobTrackerServiceClient};
use dpctl::local::ClusterConfig;
use tonic::transport::Channel;

use crate::{
    cluster::{percentile, Bench},
    moves::{
        check_invariants, control_plane_pids, cpu_time, disks, failed, send_moves, wait_done,
        DoneWatch, Scheduler, CLIENTS,
    },
};

const SLOTS: u32 = 4;
const MIB: u64 = 1 << 20;
/// The simulated copy rate: the disks are empty, so a copy takes no time at any rate.
const RATE: u64 = 256 * MIB;
/// Operations whose job end → done delay is measured.
const SAMPLED: usize = 200;

struct Row {
    hosts: usize,
    ops: usize,
    wall: Duration,
    accept: Vec<Duration>,
    settle: Vec<Duration>,
    cpu: [Duration; 3],
    writes: i64,
    /// etcd's unary requests over the run: reads (`Range`) and transactions (`Txn`); `None`
    /// when its `/metrics` did not answer.
    requests: Option<(u64, u64)>,
    db_bytes: i64,
    rss_kib: [u64; 3],
    /// Idle, before the moves: CPU share of a core of the scheduler, job-tracker and etcd, and
    /// etcd writes per second.
    idle: ([f64; 3], f64),
}

/// How long the idle cluster is watched.
const IDLE: Duration = Duration::from_secs(20);
/// How long the idle cluster is left alone first: start-up work (every host's first reads, `auto`'s
/// second count of the hosts 10 s in) is not the idle cost.
const SETTLE: Duration = Duration::from_secs(15);

/// How every cluster of the benchmark is set up.
pub struct Settings {
    /// The host-workers' session TTL.
    pub session_ttl: Duration,
    /// Variables set in every service besides the simulated copy rate (`--service-env`).
    pub env: Vec<(String, String)>,
}

pub async fn run(
    base: &Path,
    hosts: &[usize],
    ops: &[usize],
    settings: &Settings,
) -> anyhow::Result<()> {
    let session_ttl = settings.session_ttl;
    let mut rows = Vec::new();
    for &n in hosts {
        for &m in ops {
            rows.push(one(base, n, m, settings).await?);
        }
    }
    let set: Vec<String> = settings
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let set = match set.is_empty() {
        true => String::new(),
        false => format!(", services with {}", set.join(" ")),
    };
    println!("\n== scale: N hosts (simulated copies) × {SLOTS} slots, session TTL {}, M MoveDisks of empty 1 MiB disks at once, {CLIENTS} clients{set}", humantime::format_duration(session_ttl));
    println!("| N | M | wall | ops/s | accept p50 / p99 | job end → done p50 / p99 | scheduler / job-tracker / etcd CPU per op | etcd writes/op | etcd reads / txns per op | etcd db | peak RSS scheduler / job-tracker / etcd | idle: scheduler / job-tracker / etcd CPU, etcd writes/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &mut rows {
        r.accept.sort();
        r.settle.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let per = |d: Duration| ms(d) / r.ops as f64;
        let requests = r.requests.map_or("—".to_string(), |(reads, txns)| {
            format!(
                "{:.1} / {:.1}",
                reads as f64 / r.ops as f64,
                txns as f64 / r.ops as f64
            )
        });
        println!(
            "| {} | {} | {:.1} s | {:.1} | {:.1} / {:.1} ms | {:.0} / {:.0} ms | {:.2} / {:.2} / {:.2} ms | {:.1} | {} | {:.1} MiB | {} / {} / {} MiB | {:.1} / {:.1} / {:.1} %, {:.1} |",
            r.hosts,
            r.ops,
            r.wall.as_secs_f64(),
            r.ops as f64 / r.wall.as_secs_f64(),
            ms(percentile(&r.accept, 0.5)),
            ms(percentile(&r.accept, 0.99)),
            ms(percentile(&r.settle, 0.5)),
            ms(percentile(&r.settle, 0.99)),
            per(r.cpu[0]),
            per(r.cpu[1]),
            per(r.cpu[2]),
            r.writes as f64 / r.ops as f64,
            requests,
            r.db_bytes as f64 / MIB as f64,
            r.rss_kib[0] / 1024,
            r.rss_kib[1] / 1024,
            r.rss_kib[2] / 1024,
            r.idle.0[0] * 100.0,
            r.idle.0[1] * 100.0,
            r.idle.0[2] * 100.0,
            r.idle.1,
        );
    }
    Ok(())
}

async fn one(base: &Path, n: usize, m: usize, settings: &Settings) -> anyhow::Result<Row> {
    let started = Instant::now();
    let mut env = vec![("DATAPATH_SIMULATED_COPY_RATE".into(), RATE.to_string())];
    env.extend(settings.env.iter().cloned());
    let mut b = Bench::start_with(
        base,
        ClusterConfig {
            hosts: n,
            job_slots: SLOTS,
            session_ttl: settings.session_ttl,
            env,
            ..ClusterConfig::default()
        },
    )
    .await?;
    eprintln!(
        "scale N={n} M={m}: cluster up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sched: Scheduler = b.scheduler().await?;
    let tracker = b.tracker.clone();
    let (from, to) = (b.domain().await?, b.domain().await?);
    crate::spread::wait_reach(&mut sched.clone(), &[&from, &to], n).await?;
    let pids = control_plane_pids(&mut b)?;
    let mut etcd =
        etcd_client::Client::connect(b.cluster.etcd_endpoints(), b.cluster.etcd_options()).await?;
    let revision = |s: &etcd_client::StatusResponse| s.header().map(|h| h.revision()).unwrap_or(0);
    // The idle cost: every host registered, nothing to do.
    tokio::time::sleep(SETTLE).await;
    let (cpu0, rev0) = (pids.map(cpu_time), revision(&etcd.status().await?));
    tokio::time::sleep(IDLE).await;
    let (cpu1, rev1) = (pids.map(cpu_time), revision(&etcd.status().await?));
    let idle = (
        [0, 1, 2].map(|i| cpu1[i].saturating_sub(cpu0[i]).as_secs_f64() / IDLE.as_secs_f64()),
        (rev1 - rev0) as f64 / IDLE.as_secs_f64(),
    );
    let disks = disks(&mut b, &from, m).await?;
    let done = DoneWatch::open(&b.cluster).await?;
    let requests_before = b.cluster.etcd().requests_by_method().await;
    let first = etcd.status().await?;
    let before = pids.map(cpu_time);
    let t0 = Instant::now();
    let accept = send_moves(&sched, &from, &to, disks).await?;
    done.wait(&mut sched.clone(), m).await?;
    let wall = t0.elapsed();
    let after = pids.map(cpu_time);
    let last = etcd.status().await?;
    let requests = requests_since(requests_before, b.cluster.etcd().requests_by_method().await);
    let done = wait_done(&mut sched.clone(), m).await?;
    let failed = failed(&done);
    if failed > 0 {
        bail!("{failed} of {m} operations failed");
    }
    let settle = settle_times(tracker, &done).await?;
    check_moved(&mut b, &from, &to, m).await?;
    check_invariants(&b).await?;
    Ok(Row {
        hosts: n,
        ops: m,
        wall,
        accept,
        settle,
        cpu: [0, 1, 2].map(|i| after[i].saturating_sub(before[i])),
        writes: revision(&last) - revision(&first),
        requests,
        db_bytes: last.db_size(),
        rss_kib: pids.map(peak_rss_kib),
        idle,
    })
}

/// The `Range` and `Txn` requests etcd answered between two counts.
fn requests_since(
    before: Option<BTreeMap<String, u64>>,
    after: Option<BTreeMap<String, u64>>,
) -> Option<(u64, u64)> {
    let (before, after) = (before?, after?);
    let delta = |m: &str| {
        let get = |c: &BTreeMap<String, u64>| c.get(m).copied().unwrap_or(0);
        get(&after).saturating_sub(get(&before))
    };
    Some((delta("Range"), delta("Txn")))
}

/// For a sample of operations: the time from their copy job's last record to the operation's.
async fn settle_times(
    mut tracker: JobTrackerServiceClient<Channel>,
    ops: &[pb::Operation],
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    let step = (ops.len() / SAMPLED).max(1);
    for op in ops.iter().step_by(step) {
        let Some(meta) = &op.metadata else { continue };
        let Some(job_id) = meta.volumes.last().map(|v| v.job_id.clone()) else {
            continue;
        };
        let job = tracker
            .get_job(pb::GetJobRequest { job_id })
            .await?
            .into_inner()
            .job
            .context("a job")?;
        let (Some(ended), Some(done)) = (job.updated_at, meta.updated_at) else {
            continue;
        };
        let nanos = |t: prost_types::Timestamp| t.seconds as i128 * 1_000_000_000 + t.nanos as i128;
        let d = (nanos(done) - nanos(ended)).max(0);
        times.push(Duration::from_nanos(u64::try_from(d).unwrap_or(0)));
    }
    Ok(times)
}

/// Every source image gone, every disk in its new domain.
async fn check_moved(b: &mut Bench, from: &str, to: &str, m: usize) -> anyhow::Result<()> {
    let count = |sd: &str| {
        let mut host = b.host.clone();
        let sd = sd.to_string();
        async move {
            let mut n = 0;
            let mut token = String::new();
            loop {
                let page = host
                    .list_images(pb::ListImagesRequest {
                        storage_domain_id: sd.clone(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                n += page.images.len();
                token = page.next_page_token;
                if token.is_empty() {
                    return anyhow::Ok(n);
                }
            }
        }
    };
    let (left, arrived) = (count(from).await?, count(to).await?);
    if left != 0 || arrived != m {
        bail!("{left} images left in the source domain, {arrived} of {m} in the destination");
    }
    Ok(())
}

/// The peak resident set of `pid` (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
