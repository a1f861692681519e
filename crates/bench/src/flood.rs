//! A flooding client against a copy: the 2 GiB CopyData of `copy`, timed alone and while one client
//! (the operator's certificate) opens 1,000 WatchJobs streams and keeps 8 loops of malformed calls
//! going (GetVolumeInfo and CopyData with ids that do not parse) — once with the flooder at the
//! services' priority, once niced (on this 2-core machine the flooder's own TLS and HTTP/2 work
//! competes with the copy; a real flooder's does not) — the order rotating round by round. Meanwhile a second client (a viewer's certificate, another identity) times GetVolumeInfo:
//! the other clients must still be served. Target: the copy within 1.1× of its idle time.
use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use datapath_api::pb::{
    self, host_worker_service_client::HostWorkerServiceClient,
    job_tracker_service_client::JobTrackerServiceClient, Legality,
};
use tonic::transport::Channel;

use crate::{
    cluster::{fill_raw, median, percentile, settle, Bench},
    side::ms,
};

const SIZE: u64 = 2 << 30;
const STREAMS: usize = 1000;
const LOOPS: usize = 8;

/// What the flood did, counted.
#[derive(Default)]
struct Counts {
    streams_open: AtomicU64,
    streams_refused: AtomicU64,
    bad_calls: AtomicU64,
}

/// Floods until `stop`: opens [`STREAMS`] WatchJobs streams (holding those granted) and runs
/// [`LOOPS`] loops of malformed calls.
async fn flood(target: Target, stop: Arc<AtomicBool>, counts: Arc<Counts>) -> anyhow::Result<()> {
    let tls = target.tls.as_ref();
    let tracker =
        JobTrackerServiceClient::new(dpctl::client::channel(&target.tracker_url, tls).await?);
    let host = HostWorkerServiceClient::new(dpctl::client::channel(&target.host_url, tls).await?);
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        match tracker
            .clone()
            .watch_jobs(pb::WatchJobsRequest::default())
            .await
        {
            Ok(s) => {
                counts.streams_open.fetch_add(1, Ordering::Relaxed);
                held.push(s.into_inner());
            }
            Err(_) => {
                counts.streams_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let mut loops = Vec::new();
    for i in 0..LOOPS {
        let (mut host, stop, counts) = (host.clone(), stop.clone(), counts.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let bad = pb::VolumeRef {
                    storage_domain_id: "../../etc".into(),
                    image_id: "x".repeat(64),
                    volume_id: format!("not-a-uuid-{i}"),
                };
                let _ = if i % 2 == 0 {
                    host.get_volume_info(pb::GetVolumeInfoRequest { volume: Some(bad) })
                        .await
                        .map(drop)
                } else {
                    host.copy_data(pb::CopyDataRequest {
                        job_id: "garbage".into(),
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                };
                counts.bad_calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for l in loops {
        l.await?;
    }
    drop(held);
    Ok(())
}

/// Where the flooder connects, as the operator.
#[derive(Clone)]
struct Target {
    tracker_url: String,
    host_url: String,
    tls: Option<datapath_tls::Tls>,
}

/// Runs [`flood`] on a thread of its own with its own runtime and connections, at `nice` (19: the
/// flooder gets the CPU only when the services do not want it — a stand-in for a client on
/// another machine, whose own work is not this machine's).
fn spawn_flood(
    target: Target,
    nice: i32,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    std::thread::spawn(move || {
        if nice != 0 {
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)?;
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(flood(target, stop, counts))
    })
}

/// GetVolumeInfo latencies of another client until `stop`.
async fn other_client(
    mut host: HostWorkerServiceClient<Channel>,
    volume: pb::VolumeRef,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Duration>> {
    let mut t = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        host.get_volume_info(pb::GetVolumeInfoRequest {
            volume: Some(volume.clone()),
        })
        .await?;
        t.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.sort();
    Ok(t)
}

pub async fn run(base: &Path, rounds: usize) -> anyhow::Result<()> {
    // The services' default per-caller call rate (the other benchmarks turn it off).
    let rate = vec![("DATAPATH_MAX_CALL_RATE".to_string(), "1000".to_string())];
    let mut b = Bench::start(base, 2, rate).await?;
    let (a, d) = (b.domain().await?, b.domain().await?);
    let img = uuid::Uuid::new_v4().to_string();
    let src = b.raw_volume(&a, &img, SIZE, Legality::Legal).await?;
    fill_raw(&b.path(&src), SIZE / 2)?;
    // The other client is another identity (a viewer's certificate), so the flooder's share of
    // streams is not its own.
    let spm = b.cluster.wait_spm().await?;
    let viewer = datapath_tls::Identity::Viewer("bench-other".into());
    let tls = match b.cluster.pki() {
        Some(pki) => Some(pki.issue_tls(&viewer)?),
        None => None,
    };
    let other = HostWorkerServiceClient::new(
        dpctl::client::channel(&b.cluster.host_url(spm), tls.as_ref()).await?,
    );
    let target = Target {
        tracker_url: b.cluster.job_tracker_url(),
        host_url: b.cluster.host_url(spm),
        tls: b.cluster.client_tls().cloned(),
    };
    // Side 0: idle; 1: flooded by a client as busy as the services; 2: flooded by a niced client.
    const SIDES: [(&str, Option<i32>); 3] = [
        ("idle", None),
        ("flooded, flooder at the services' priority", Some(0)),
        (
            "flooded, flooder at nice 19 (a remote client's stand-in)",
            Some(19),
        ),
    ];
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut others: [Vec<Duration>; 3] = Default::default();
    let counts = Arc::new(Counts::default());
    for round in 0..rounds {
        for side in (0..3).map(|i| (round + i) % 3) {
            let dst = b
                .raw_volume(
                    &d,
                    &uuid::Uuid::new_v4().to_string(),
                    SIZE,
                    Legality::Illegal,
                )
                .await?;
            settle()?;
            let stop = Arc::new(AtomicBool::new(false));
            match SIDES[side].1 {
                Some(nice) => {
                    let flooder = spawn_flood(target.clone(), nice, stop.clone(), counts.clone());
                    let watcher = other_client(other.clone(), src.clone(), stop.clone());
                    let copy = async {
                        let r = b.copy(&src, &dst).await;
                        stop.store(true, Ordering::Relaxed);
                        r
                    };
                    let (w, c) = tokio::join!(watcher, copy);
                    flooder
                        .join()
                        .map_err(|_| anyhow::anyhow!("the flooder panicked"))??;
                    others[side].extend(w?);
                    times[side].push(c?.1);
                }
                None => times[side].push(b.copy(&src, &dst).await?.1),
            }
            b.host
                .delete_image(pb::DeleteImageRequest {
                    storage_domain_id: d.clone(),
                    image_id: dst.image_id.clone(),
                })
                .await?;
            eprintln!(
                "flood round {round}: {} {:?}",
                SIDES[side].0,
                times[side].last()
            );
        }
    }
    let idle = median(times[0].clone());
    println!("## flood: a 2 GiB copy while one client floods the services");
    println!("| 2 GiB copy ({rounds} rounds) | median | ÷ idle | another client's GetVolumeInfo p50 / p99 |");
    println!("|---|---|---|---|");
    for (side, (name, _)) in SIDES.iter().enumerate() {
        let m = median(times[side].clone());
        let o = &mut others[side];
        o.sort();
        let other = if o.is_empty() {
            "—".to_string()
        } else {
            format!("{} / {}", ms(percentile(o, 0.5)), ms(percentile(o, 0.99)))
        };
        println!(
            "| {name} | {:.3} s | {:.3}× | {other} |",
            m.as_secs_f64(),
            m.as_secs_f64() / idle.as_secs_f64()
        );
    }
    println!();
    println!(
        "flood in all: WatchJobs streams {} granted, {} refused; {} malformed calls",
        counts.streams_open.load(Ordering::Relaxed),
        counts.streams_refused.load(Ordering::Relaxed),
        counts.bad_calls.load(Ordering::Relaxed)
    );
    b.cluster.stop().await?;
    Ok(())
}
