//! The control plane under many operations at once (issue 13's real-copy probe): three hosts with
//! four job slots each, M MoveDisks of 1 MiB raw disks sent at once by 16 clients, for growing M.
//! For each M, on a fresh cluster: the wall time, moves per second, and the CPU time the
//! scheduler, the job-tracker and etcd spent per move (from `/proc/<pid>/stat`), so that a cost
//! that grows with the number of operations in flight shows as a rising figure per move.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use datapath_api::pb::{self, scheduler_service_client::SchedulerServiceClient};
use dpctl::local::ClusterConfig;
use tonic::transport::Channel;

use crate::cluster::Bench;

const HOSTS: usize = 3;
const SLOTS: u32 = 4;
pub(crate) const CLIENTS: usize = 16;
const MIB: u64 = 1 << 20;

pub(crate) type Scheduler = SchedulerServiceClient<Channel>;

/// One row of the table.
struct Row {
    moves: usize,
    wall: Duration,
    cpu: [Duration; 3],
}

pub async fn run(base: &Path, counts: &[usize]) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &m in counts {
        rows.push(one(base, m).await?);
    }
    println!("\n== moves: {HOSTS} hosts × {SLOTS} slots, M MoveDisks of 1 MiB raw disks at once, {CLIENTS} clients");
    println!("| M | wall | moves/s | scheduler CPU/move | job-tracker CPU/move | etcd CPU/move | sum/move |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / r.moves as f64;
        let sum: f64 = r.cpu.iter().map(|d| per(*d)).sum();
        println!(
            "| {} | {:.1} s | {:.1} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            r.moves,
            r.wall.as_secs_f64(),
            r.moves as f64 / r.wall.as_secs_f64(),
            per(r.cpu[0]),
            per(r.cpu[1]),
            per(r.cpu[2]),
            sum
        );
    }
    Ok(())
}

async fn one(base: &Path, m: usize) -> anyhow::Result<Row> {
    let mut b = Bench::start_with(
        base,
        ClusterConfig {
            hosts: HOSTS,
            job_slots: SLOTS,
            ..ClusterConfig::default()
        },
    )
    .await?;
    let sched: Scheduler = b.scheduler().await?;
    let (from, to) = (b.domain().await?, b.domain().await?);
    crate::spread::wait_reach(&mut sched.clone(), &[&from, &to], HOSTS).await?;
    let disks = disks(&mut b, &from, m).await?;
    let pids = control_plane_pids(&mut b)?;
    let done = DoneWatch::open(&b.cluster).await?;
    crate::cluster::settle()?;
    let before = pids.map(cpu_time);
    let started = Instant::now();
    send_moves(&sched, &from, &to, disks).await?;
    done.wait(&mut sched.clone(), m).await?;
    let wall = started.elapsed();
    let after = pids.map(cpu_time);
    let ops = wait_done(&mut sched.clone(), m).await?;
    let failed = failed(&ops);
    if failed > 0 {
        bail!("{failed} of {m} moves failed");
    }
    check_invariants(&b).await?;
    let cpu = [0, 1, 2].map(|i| after[i].saturating_sub(before[i]));
    eprintln!("moves M={m}: {:.1} s", wall.as_secs_f64());
    Ok(Row {
        moves: m,
        wall,
        cpu,
    })
}

/// `m` images in `sd`, each one empty raw volume of 1 MiB.
pub(crate) async fn disks(b: &mut Bench, sd: &str, m: usize) -> anyhow::Result<Vec<String>> {
    let mut disks = Vec::with_capacity(m);
    for _ in 0..m {
        let img = uuid::Uuid::new_v4().to_string();
        b.raw_volume(sd, &img, MIB, pb::Legality::Legal).await?;
        disks.push(img);
    }
    Ok(disks)
}

/// The scheduler's, the job-tracker's and etcd's process ids.
pub(crate) fn control_plane_pids(b: &mut Bench) -> anyhow::Result<[u32; 3]> {
    Ok([
        b.cluster
            .scheduler_mut()
            .pid()
            .context("the scheduler runs")?,
        b.cluster
            .job_tracker_mut()
            .pid()
            .context("the job-tracker runs")?,
        b.cluster.etcd_mut().pid().context("etcd runs")?,
    ])
}

/// Sends a MoveDisk of every disk of `disks` from `from` to `to`, by [`CLIENTS`] clients at once;
/// how long each took to answer.
pub(crate) async fn send_moves(
    sched: &Scheduler,
    from: &str,
    to: &str,
    disks: Vec<String>,
) -> anyhow::Result<Vec<Duration>> {
    let mut senders = Vec::new();
    for chunk in disks.chunks(disks.len().div_ceil(CLIENTS).max(1)) {
        let (mut s, chunk) = (sched.clone(), chunk.to_vec());
        let (from, to) = (from.to_string(), to.to_string());
        senders.push(tokio::spawn(async move {
            let mut took = Vec::with_capacity(chunk.len());
            for img in chunk {
                let t = Instant::now();
                s.move_disk(pb::MoveDiskRequest {
                    image: Some(pb::DiskRef {
                        storage_domain_id: from.clone(),
                        image_id: img,
                    }),
                    destination_storage_domain_id: to.clone(),
                    request_id: String::new(),
                })
                .await
                .context("MoveDisk")?;
                took.push(t.elapsed());
            }
            anyhow::Ok(took)
        }));
    }
    let mut accept = Vec::with_capacity(disks.len());
    for s in senders {
        accept.extend(s.await??);
    }
    Ok(accept)
}

/// How long `m` operations are given to end.
fn time_allowed(m: usize) -> Duration {
    Duration::from_secs(120 + m as u64 / 5)
}

/// Counts operations as they end, on one watch of the flow records opened before they are sent,
/// so that waiting for thousands of operations costs the control plane nothing: listing every
/// operation once a second (what [`wait_done`] does) read every flow record from etcd each time,
/// which at M = 5,000 was more reads per operation than the operation itself made.
pub(crate) struct DoneWatch {
    watch: datapath_coord::flows::FlowWatch,
    done: std::collections::HashSet<datapath_api::ids::OperationId>,
}

impl DoneWatch {
    /// Opens the watch at etcd's current revision.
    pub(crate) async fn open(cluster: &dpctl::local::Cluster) -> anyhow::Result<Self> {
        let coord = cluster.coord().await?;
        let revision = coord.revision().await?;
        Ok(Self {
            watch: coord.watch_flows(revision, None).await?,
            done: Default::default(),
        })
    }

    /// Waits until `m` operations are done (then list them with [`wait_done`], which answers at
    /// once); polls as [`wait_done`] does if the watch ends.
    pub(crate) async fn wait(mut self, sched: &mut Scheduler, m: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + time_allowed(m);
        while self.done.len() < m {
            let next = tokio::time::timeout_at(deadline.into(), self.watch.next()).await;
            let changes = match next {
                Err(_) => bail!("{} of {m} operations done by the deadline", self.done.len()),
                Ok(Ok(Some(changes))) => changes,
                Ok(Ok(None)) | Ok(Err(_)) => return wait_done(sched, m).await.map(drop),
            };
            for change in changes {
                let done = change
                    .flow
                    .as_ref()
                    .and_then(|f| f.operation.as_ref())
                    .is_some_and(|o| o.done);
                if done {
                    self.done.insert(change.operation);
                }
            }
        }
        Ok(())
    }
}

/// Waits until `m` operations are done, listing them all once a second.
pub(crate) async fn wait_done(
    sched: &mut Scheduler,
    m: usize,
) -> anyhow::Result<Vec<pb::Operation>> {
    let deadline = Instant::now() + time_allowed(m);
    loop {
        let mut all = Vec::with_capacity(m);
        let mut token = String::new();
        loop {
            let page = sched
                .list_operations(pb::ListOperationsRequest {
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            all.extend(page.operations);
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let done = all.iter().filter(|o| o.done).count();
        if done >= m {
            return Ok(all);
        }
        if Instant::now() > deadline {
            bail!("{done} of {m} operations done by the deadline");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How many of `ops` ended with an error.
pub(crate) fn failed(ops: &[pb::Operation]) -> usize {
    ops.iter()
        .filter(|o| matches!(o.result, Some(pb::operation::Result::Error(_))))
        .count()
}

/// User plus system CPU time of process `pid` so far.
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // Linux reports these in USER_HZ, 100 on every ABI it runs on.
    Duration::from_millis(ticks * 10)
}

/// Fails unless the cluster holds the invariants the fault tests end with
/// (`dpctl::local::invariants`): no lease or lock left, every operation done and job terminal, no
/// ILLEGAL volume, never two holders of one lease.
pub(crate) async fn check_invariants(b: &Bench) -> anyhow::Result<()> {
    let found = dpctl::local::invariants::violations(&b.cluster).await?;
    if !found.is_empty() {
        bail!(
            "{} invariant violations, the first: {}",
            found.len(),
            found[..found.len().min(10)].join("; ")
        );
    }
    Ok(())
}
