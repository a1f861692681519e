//! Copies spread over hosts (issue 3): three hosts whose storage links are the bottleneck
//! (`--host-bandwidth-limit`), six disks moved at once with `data_operations_by_hsm=true` against the
//! same six moved with `false` (every copy on the SPM), in one run. Then the scheduling overhead on
//! an idle cluster without a limit: MoveDisk's answer → the copy's first byte on the destination.
use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use datapath_api::pb::{
    self, scheduler_service_client::SchedulerServiceClient, JobStatus, Legality,
};
use dpctl::local::ClusterConfig;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::cluster::{fill_raw, median, percentile, settle, settle_with, Bench};

const HOSTS: usize = 3;
const SLOTS: u32 = 2;
const DISKS: usize = 6;
const DISK_SIZE: u64 = 64 << 20;
/// The overhead part's disks: small, so the copy itself is short.
const SMALL_DISK: u64 = 8 << 20;
const DEADLINE: Duration = Duration::from_secs(300);

type Scheduler = SchedulerServiceClient<Channel>;

/// `host_limit`: each host's storage link in bytes/s (`--host-bandwidth-limit`; 0: none), shared
/// by its job slots.
pub async fn run(base: &Path, rounds: usize, moves: usize, host_limit: u64) -> anyhow::Result<()> {
    spread(base, rounds.max(1), host_limit).await?;
    overhead(base, moves.max(1)).await
}

/// One timed batch: six moves at once, and what the operations and the jobs said.
struct Batch {
    took: Duration,
    /// Copies per host index.
    hosts: BTreeMap<usize, usize>,
    /// Each copy job's RUNNING → SUCCEEDED, as seen on WatchJobs.
    copies: Vec<Duration>,
}

async fn spread(base: &Path, rounds: usize, host_limit: u64) -> anyhow::Result<()> {
    let mut b = Bench::start_with(
        base,
        ClusterConfig {
            hosts: HOSTS,
            job_slots: SLOTS,
            host_bandwidth_limit: host_limit,
            ..ClusterConfig::default()
        },
    )
    .await?;
    let spm = b.cluster.wait_spm().await?;
    let mut sched = b.scheduler().await?;
    let (a, d) = (b.domain().await?, b.domain().await?);
    let t = Instant::now();
    wait_reach(&mut sched, &[&a, &d], HOSTS).await?;
    eprintln!(
        "spread: every host announced the new domains after {}",
        ms(t.elapsed())
    );
    let mut images = Vec::new();
    for _ in 0..DISKS {
        let img = uuid::Uuid::new_v4().to_string();
        let v = b.raw_volume(&a, &img, DISK_SIZE, Legality::Legal).await?;
        fill_raw(&b.path(&v), DISK_SIZE)?;
        images.push(img);
    }
    let ids = b.cluster.host_ids();
    let (mut here, mut there) = (a, d);
    let (mut spread, mut spm_only, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut copies_on, mut copies_off) = (Vec::new(), Vec::new());
    let limit = match host_limit {
        0 => "no host limit".to_string(),
        l => format!("host limit {} MiB/s", l >> 20),
    };
    println!(
        "## spread: {DISKS} disks × {} MiB random, {HOSTS} hosts × {SLOTS} slots, {limit} ({rounds} rounds)",
        DISK_SIZE >> 20
    );
    println!("| round | first | by_hsm=true | copies on | by_hsm=false | copies on | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for round in 0..rounds {
        // Alternate which mode goes first, as `copy` does: the disk's slow phases hit both alike.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut got: HashMap<bool, Batch> = HashMap::new();
        for by_hsm in order {
            set_by_hsm(&mut sched, by_hsm).await?;
            settle()?;
            let batch = move_all(&mut b, &sched, &images, &here, &there, &ids).await?;
            eprintln!(
                "spread round {round}: by_hsm={by_hsm} {:.3} s, copies on {}, copy times {}",
                batch.took.as_secs_f64(),
                hosts_text(&batch.hosts, spm),
                secs_list(&batch.copies)
            );
            got.insert(by_hsm, batch);
            std::mem::swap(&mut here, &mut there);
        }
        let (on, off) = (&got[&true], &got[&false]);
        let ratio = on.took.as_secs_f64() / off.took.as_secs_f64();
        println!(
            "| {round} | {} | {:.3} s | {} | {:.3} s | {} | {ratio:.3}× |",
            if order[0] { "true" } else { "false" },
            on.took.as_secs_f64(),
            hosts_text(&on.hosts, spm),
            off.took.as_secs_f64(),
            hosts_text(&off.hosts, spm),
        );
        spread.push(on.took);
        spm_only.push(off.took);
        ratios.push(ratio);
        copies_on.extend(on.copies.iter().copied());
        copies_off.extend(off.copies.iter().copied());
    }
    let (m_on, m_off) = (median(spread), median(spm_only));
    ratios.sort_by(f64::total_cmp);
    println!(
        "| median | | {:.3} s | | {:.3} s | | **{:.3}×** (of the medians); {:.3}× (median of per-round ratios) |",
        m_on.as_secs_f64(),
        m_off.as_secs_f64(),
        m_on.as_secs_f64() / m_off.as_secs_f64(),
        ratios[ratios.len() / 2]
    );
    if !copies_on.is_empty() && !copies_off.is_empty() {
        println!();
        println!(
            "Each copy job, RUNNING → SUCCEEDED on WatchJobs: median {:.3} s with by_hsm=true ({} jobs), \
             {:.3} s with by_hsm=false ({} jobs).",
            median(copies_on.clone()).as_secs_f64(),
            copies_on.len(),
            median(copies_off.clone()).as_secs_f64(),
            copies_off.len()
        );
    }
    set_by_hsm(&mut sched, true).await?;
    b.cluster.stop().await?;
    Ok(())
}

/// Waits until the scheduler sees every host reach every one of `domains`: a host announces a new
/// domain with its next registration (every few seconds), and until then placement cannot use it.
/// Waits until `expected` live hosts reach every one of `domains`.
pub(crate) async fn wait_reach(
    sched: &mut Scheduler,
    domains: &[&str],
    expected: usize,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = sched
            .list_hosts(pb::ListHostsRequest {})
            .await?
            .into_inner()
            .hosts;
        let reaching = hosts
            .iter()
            .filter_map(|h| h.host.as_ref())
            .filter(|h| {
                domains
                    .iter()
                    .all(|d| h.storage_domain_ids.iter().any(|s| s == d))
            })
            .count();
        if reaching == expected {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("only {reaching} of {expected} hosts reach the new domains after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set_by_hsm(sched: &mut Scheduler, on: bool) -> anyhow::Result<()> {
    sched
        .set_config(pb::SetConfigRequest {
            key: "data_operations_by_hsm".into(),
            value: on.to_string(),
        })
        .await
        .context("SetConfig data_operations_by_hsm")?;
    Ok(())
}

/// Moves every image from `from` to `to` at once; the time runs from the first MoveDisk sent to the
/// last operation seen done on WatchOperation.
async fn move_all(
    b: &mut Bench,
    sched: &Scheduler,
    images: &[String],
    from: &str,
    to: &str,
    host_ids: &[String],
) -> anyhow::Result<Batch> {
    // Every job change of the batch, timed on arrival, to tell copying time from the rest.
    let mut jobs = b
        .tracker
        .watch_jobs(pb::WatchJobsRequest::default())
        .await?
        .into_inner();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let recorder = tokio::spawn(async move {
        let mut seen: HashMap<String, (Option<Instant>, Option<Instant>)> = HashMap::new();
        loop {
            tokio::select! {
                event = jobs.next() => {
                    let Some(Ok(event)) = event else { break };
                    let Some(job) = event.job else { continue };
                    let now = Instant::now();
                    let entry = seen.entry(job.job_id.clone()).or_default();
                    match job.status() {
                        JobStatus::Running => { entry.0.get_or_insert(now); }
                        JobStatus::Succeeded => { entry.1.get_or_insert(now); }
                        _ => {}
                    }
                }
                _ = &mut stop_rx => break,
            }
        }
        seen
    });
    let start = Instant::now();
    let mut moves = tokio::task::JoinSet::new();
    for img in images {
        let mut sched = sched.clone();
        let (from, to, img) = (from.to_string(), to.to_string(), img.clone());
        moves.spawn(async move {
            let name = start_move(&mut sched, &from, &img, &to).await?;
            follow(&mut sched, &name).await
        });
    }
    let mut ops = Vec::new();
    while let Some(op) = moves.join_next().await {
        ops.push(op??);
    }
    let took = start.elapsed();
    let _ = stop_tx.send(());
    let seen = recorder.await?;
    let mut hosts = BTreeMap::new();
    let mut copies = Vec::new();
    for op in &ops {
        if let Some(pb::operation::Result::Error(e)) = &op.result {
            bail!("{} failed: {e:?}", op.name);
        }
        for v in op.metadata.as_ref().map(|m| &m.volumes[..]).unwrap_or(&[]) {
            let i = host_ids
                .iter()
                .position(|h| *h == v.host_id)
                .with_context(|| format!("unknown host {}", v.host_id))?;
            *hosts.entry(i).or_default() += 1;
            if let Some((Some(running), Some(done))) = seen.get(&v.job_id) {
                copies.push(done.duration_since(*running));
            }
        }
    }
    Ok(Batch {
        took,
        hosts,
        copies,
    })
}

async fn start_move(
    sched: &mut Scheduler,
    sd: &str,
    img: &str,
    to: &str,
) -> anyhow::Result<String> {
    let op = sched
        .move_disk(pb::MoveDiskRequest {
            image: Some(pb::DiskRef {
                storage_domain_id: sd.into(),
                image_id: img.into(),
            }),
            destination_storage_domain_id: to.into(),
            request_id: String::new(),
        })
        .await
        .context("MoveDisk")?
        .into_inner()
        .operation
        .context("MoveDisk answered without an operation")?;
    Ok(op.name)
}

/// Follows an operation on WatchOperation until it is done; returns its last state.
async fn follow(sched: &mut Scheduler, name: &str) -> anyhow::Result<pb::Operation> {
    let mut stream = sched
        .watch_operation(pb::WatchOperationRequest { name: name.into() })
        .await?
        .into_inner();
    loop {
        let next = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .with_context(|| format!("{name} not done within {DEADLINE:?}"))?;
        let Some(event) = next else {
            bail!("the watch of {name} ended before it was done")
        };
        let op = event?.operation.context("an operation")?;
        if op.done {
            return Ok(op);
        }
    }
}

/// What one overhead sample saw, each time measured from MoveDisk's answer.
struct Sample {
    /// The MoveDisk call itself (sent → answered).
    answer: Duration,
    /// The copy job's first record (PENDING) on WatchJobs.
    registered: Duration,
    /// The job's RUNNING record on WatchJobs.
    running: Duration,
    /// The first data block allocated in the destination file.
    first_byte: Duration,
}

async fn overhead(base: &Path, moves: usize) -> anyhow::Result<()> {
    let mut b = Bench::start_with(
        base,
        ClusterConfig {
            hosts: HOSTS,
            job_slots: SLOTS,
            ..ClusterConfig::default()
        },
    )
    .await?;
    let mut sched = b.scheduler().await?;
    let (a, d) = (b.domain().await?, b.domain().await?);
    wait_reach(&mut sched, &[&a, &d], HOSTS).await?;
    let mut disks = Vec::new();
    for _ in 0..moves {
        let img = uuid::Uuid::new_v4().to_string();
        let v = b.raw_volume(&a, &img, SMALL_DISK, Legality::Legal).await?;
        fill_raw(&b.path(&v), SMALL_DISK)?;
        disks.push(v);
    }
    let mut samples = Vec::new();
    for (i, v) in disks.iter().enumerate() {
        settle_with(false)?;
        let dst = pb::VolumeRef {
            storage_domain_id: d.clone(),
            ..v.clone()
        };
        let s = one_move(&mut b, &mut sched, v, &dst).await?;
        eprintln!(
            "overhead move {i}: answer {}, job registered {}, RUNNING {}, first byte {}",
            ms(s.answer),
            ms(s.registered),
            ms(s.running),
            ms(s.first_byte)
        );
        samples.push(s);
    }
    println!(
        "## scheduling overhead: MoveDisk's answer → …, {moves} single {} MiB moves on an idle 3-host cluster",
        SMALL_DISK >> 20
    );
    println!("| from MoveDisk's answer to | median | p99 | max |");
    println!("|---|---|---|---|");
    type Row = (&'static str, fn(&Sample) -> Duration);
    let rows: [Row; 4] = [
        ("(MoveDisk call itself: sent → answered)", |s| s.answer),
        ("the copy job registered (PENDING on WatchJobs)", |s| {
            s.registered
        }),
        ("the job RUNNING on WatchJobs", |s| s.running),
        (
            "**first byte copied** (first block in the destination)",
            |s| s.first_byte,
        ),
    ];
    for (what, f) in rows {
        let mut v: Vec<Duration> = samples.iter().map(f).collect();
        v.sort();
        println!(
            "| {what} | {} | {} | {} |",
            ms(percentile(&v, 0.5)),
            ms(percentile(&v, 0.99)),
            ms(*v.last().unwrap())
        );
    }
    b.cluster.stop().await?;
    Ok(())
}

/// One move, timed from MoveDisk's answer: the job's records on a WatchJobs stream filtered on the
/// destination volume (opened first), and the destination file's first allocated block, polled.
async fn one_move(
    b: &mut Bench,
    sched: &mut Scheduler,
    src: &pb::VolumeRef,
    dst: &pb::VolumeRef,
) -> anyhow::Result<Sample> {
    let entity = format!(
        "{}/{}/{}",
        dst.storage_domain_id, dst.image_id, dst.volume_id
    );
    let mut jobs = b
        .tracker
        .watch_jobs(pb::WatchJobsRequest {
            entity,
            ..Default::default()
        })
        .await?
        .into_inner();
    let recorder = tokio::spawn(async move {
        let (mut registered, mut running) = (None, None);
        while let Some(Ok(event)) = jobs.next().await {
            let Some(job) = event.job else { continue };
            let now = Instant::now();
            registered.get_or_insert(now);
            match job.status() {
                JobStatus::Running => {
                    running.get_or_insert(now);
                }
                JobStatus::Succeeded | JobStatus::Failed | JobStatus::Aborted => break,
                _ => {}
            }
        }
        (registered, running)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (path, stop) = (b.path(dst), stop.clone());
        std::thread::spawn(move || first_block(&path, &stop))
    };
    let sent = Instant::now();
    let name = start_move(
        sched,
        &src.storage_domain_id,
        &src.image_id,
        &dst.storage_domain_id,
    )
    .await?;
    let answered = Instant::now();
    let op = follow(sched, &name).await?;
    if let Some(pb::operation::Result::Error(e)) = &op.result {
        bail!("{name} failed: {e:?}");
    }
    let (registered, running) = tokio::time::timeout(Duration::from_secs(10), recorder)
        .await
        .context("the job's end never came on WatchJobs")??;
    stop.store(true, Ordering::Relaxed);
    let first = poller
        .join()
        .map_err(|_| anyhow::anyhow!("poller panicked"))??;
    let since = |t: Option<Instant>, what: &str| {
        t.map(|t| t.saturating_duration_since(answered))
            .with_context(|| format!("{name}: no {what} seen"))
    };
    Ok(Sample {
        answer: answered - sent,
        registered: since(registered, "job record")?,
        running: since(running, "RUNNING record")?,
        first_byte: since(first, "data block in the destination")?,
    })
}

/// What `qemu-img create` allocates in a new raw file: its first block (QEMU allocates it so that
/// O_DIRECT alignment can be probed later).
const CREATE_ALLOCATION: u64 = 4096;

/// Polls `path` (every 200 µs) until more than [`CREATE_ALLOCATION`] of it is allocated: the
/// copier's first write (qemu-img convert writes 2 MiB at offset 0 first); `None` if `stop` came
/// first. Errs if the file already held more when first seen (then this cannot tell when copying
/// began).
fn first_block(path: &Path, stop: &AtomicBool) -> anyhow::Result<Option<Instant>> {
    let mut seen = false;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(m) = std::fs::metadata(path) {
            if m.blocks() * 512 > CREATE_ALLOCATION {
                if !seen {
                    bail!("{} held data when it appeared", path.display());
                }
                return Ok(Some(Instant::now()));
            }
            seen = true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(None)
}

fn hosts_text(hosts: &BTreeMap<usize, usize>, spm: usize) -> String {
    hosts
        .iter()
        .map(|(i, n)| {
            let tag = if *i == spm { " (SPM)" } else { "" };
            format!("host-{i}{tag} ×{n}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn secs_list(v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort();
    v.iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
