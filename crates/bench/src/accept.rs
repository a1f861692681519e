//! How fast CopyData answers while the host's queue is long: 2 job slots, copies throttled to
//! 1 MiB/s so they stay queued, 250 submissions; latencies counted once ≥ 50 jobs wait.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use datapath_api::pb::{self, Legality};

use crate::cluster::{copy_request, fill_raw, Bench};

const SUBMISSIONS: usize = 250;
const QUEUED: usize = 50;

pub async fn run(base: &Path) -> anyhow::Result<()> {
    let env = vec![(
        "DATAPATH_COPY_BANDWIDTH_LIMIT".to_string(),
        (1u64 << 20).to_string(),
    )];
    let mut b = Bench::start(base, 2, env).await?;
    let (a, d) = (b.domain().await?, b.domain().await?);
    let src = b
        .raw_volume(
            &a,
            &uuid::Uuid::new_v4().to_string(),
            64 << 20,
            Legality::Legal,
        )
        .await?;
    fill_raw(&b.path(&src), 8 << 20)?;
    let mut dsts = Vec::new();
    for _ in 0..SUBMISSIONS {
        dsts.push(
            b.raw_volume(
                &d,
                &uuid::Uuid::new_v4().to_string(),
                64 << 20,
                Legality::Illegal,
            )
            .await?,
        );
    }
    let mut latencies = Vec::new();
    let mut job_ids = Vec::new();
    for (i, dst) in dsts.iter().enumerate() {
        let job_id = uuid::Uuid::new_v4().to_string();
        let start = Instant::now();
        b.host.copy_data(copy_request(&job_id, &src, dst)).await?;
        let t = start.elapsed();
        if i >= QUEUED + 2 {
            latencies.push(t);
        }
        job_ids.push(job_id);
    }
    let queued = b
        .host
        .list_host_jobs(pb::ListHostJobsRequest {})
        .await?
        .into_inner()
        .jobs;
    let pending = queued
        .iter()
        .filter(|j| j.status() == pb::JobStatus::Pending)
        .count();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!("## accept: CopyData answer time with ≥ {QUEUED} jobs queued ({} samples; {pending} pending at the end)", latencies.len());
    println!("| p50 | p90 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} |",
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(*latencies.last().unwrap())
    );
    for id in job_ids {
        let _ = b
            .tracker
            .abort_job(pb::AbortJobRequest { job_id: id })
            .await;
    }
    b.cluster.stop().await?;
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
