//! A flooding client against a copy: the 2 GiB CopyData of `copy`, timed alone and while one client
//! (the operator's certificate) opens 1,000 WatchJobs streams and keeps 8 loops of malformed calls
//! going (GetVolumeInfo and CopyData with ids that do not parse), rounds alternating which goes
//! first. Meanwhile a second client (a viewer's certificate, another identity) times GetVolumeInfo:
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
async fn flood(
    tracker: JobTrackerServiceClient<Channel>,
    host: HostWorkerServiceClient<Channel>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> anyhow::Result<()> {
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
    let mut b = Bench::start(base, 2, vec![]).await?;
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
    let (mut idle, mut flooded) = (Vec::new(), Vec::new());
    let mut others = Vec::new();
    let counts = Arc::new(Counts::default());
    for round in 0..rounds {
        for flooding in [round % 2 == 1, round % 2 == 0] {
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
            let side = if flooding {
                let flooder = flood(
                    b.tracker.clone(),
                    b.host.clone(),
                    stop.clone(),
                    counts.clone(),
                );
                let watcher = other_client(other.clone(), src.clone(), stop.clone());
                let copy = async {
                    let r = b.copy(&src, &dst).await;
                    stop.store(true, Ordering::Relaxed);
                    r
                };
                let (f, w, c) = tokio::join!(flooder, watcher, copy);
                f?;
                others.extend(w?);
                flooded.push(c?.1);
                "flooded"
            } else {
                idle.push(b.copy(&src, &dst).await?.1);
                "idle"
            };
            b.host
                .delete_image(pb::DeleteImageRequest {
                    storage_domain_id: d.clone(),
                    image_id: dst.image_id.clone(),
                })
                .await?;
            eprintln!("flood round {round}: {side} done");
        }
    }
    others.sort();
    let (m_idle, m_flood) = (median(idle.clone()), median(flooded.clone()));
    println!("## flood: a 2 GiB copy while one client floods the services");
    println!("| 2 GiB copy ({rounds} rounds) | median |");
    println!("|---|---|");
    println!("| idle | {:.3} s |", m_idle.as_secs_f64());
    println!("| flooded | {:.3} s |", m_flood.as_secs_f64());
    println!(
        "| flooded ÷ idle | **{:.3}×** |",
        m_flood.as_secs_f64() / m_idle.as_secs_f64()
    );
    println!();
    println!(
        "flood per round: {STREAMS} WatchJobs opened ({} granted, {} refused in all), {} malformed calls in all",
        counts.streams_open.load(Ordering::Relaxed),
        counts.streams_refused.load(Ordering::Relaxed),
        counts.bad_calls.load(Ordering::Relaxed)
    );
    if !others.is_empty() {
        println!(
            "another client's GetVolumeInfo during the flood: {} calls, p50 {}, p99 {}",
            others.len(),
            ms(percentile(&others, 0.5)),
            ms(percentile(&others, 0.99))
        );
    }
    b.cluster.stop().await?;
    Ok(())
}
