//! What mutual TLS costs: two clusters side by side in one run, one on mutual TLS with authorisation
//! (the default) and one `--insecure`. Measured on each, call by call in turn: unary RPC latency
//! (a health Check, which does no work, GetVolumeInfo, and CopyData's answer, which crosses to the
//! job-tracker and etcd), the TCP connections the services
//! hold to the job-tracker after those calls (a handshake per call would show as one connection per
//! call), a plain etcd read and write from this process (etcd over TLS with authentication against plaintext:
//! what each etcd read inside those RPCs pays), and the time of a 2 GiB copy, interleaved round by
//! round with `qemu-img convert` alone.
use std::{path::Path, time::Duration};

use dpctl::local::ClusterConfig;

use crate::{
    cluster::percentile,
    side::{copy_rounds, interleaved, ms, print_rpc, Rpc, Side},
    telemetry::print_copies,
};

/// Established TCP connections to `port` on this machine (from `/proc/net/tcp`).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state; 01 is ESTABLISHED.
            cols.len() > 3
                && cols[3] == "01"
                && cols[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

fn job_tracker_port(side: &Side) -> u16 {
    side.bench
        .cluster
        .job_tracker_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(0)
}

/// 2,000 reads of one key (`put`: writes of 512 bytes, about a job record) from the side's etcd, as
/// a client of the cluster would (over TLS with the local user's certificate on the secure side),
/// after 200 thrown away; sorted.
async fn etcd_calls(side: &Side, put: bool) -> anyhow::Result<Vec<Duration>> {
    let cluster = &side.bench.cluster;
    let mut etcd =
        etcd_client::Client::connect(cluster.etcd_endpoints(), cluster.etcd_options()).await?;
    let key = format!("{}bench", cluster.etcd_prefix());
    let value = vec![b'j'; 512];
    let mut t = Vec::with_capacity(2000);
    for i in 0..2200 {
        let start = std::time::Instant::now();
        if put {
            etcd.put(key.as_str(), value.clone(), None).await?;
        } else {
            etcd.get(key.as_str(), None).await?;
        }
        if i >= 200 {
            t.push(start.elapsed());
        }
    }
    etcd.delete(key.as_str(), None).await?;
    t.sort();
    Ok(t)
}

pub async fn run(base: &Path, rounds: usize) -> anyhow::Result<()> {
    let insecure = ClusterConfig {
        job_slots: 2,
        insecure: true,
        ..Default::default()
    };
    let secure = ClusterConfig {
        job_slots: 2,
        ..Default::default()
    };
    let mut sides = [
        Side::start_with("--insecure", base, insecure).await?,
        Side::start_with("mutual TLS", base, secure).await?,
    ];

    println!("## tls: the cost of mutual TLS and authorisation (two clusters, one run)");
    println!("| RPC | side | p50 | p90 | p99 |");
    println!("|---|---|---|---|---|");
    for rpc in [Rpc::HealthCheck, Rpc::GetVolumeInfo, Rpc::CopyDataAnswer] {
        let times = interleaved(&mut sides, rpc).await?;
        print_rpc(&sides, rpc, &times, 0);
    }
    for (what, put) in [("etcd get", false), ("etcd put", true)] {
        for side in &sides {
            let t = etcd_calls(side, put).await?;
            println!(
                "| {what} (this process) | {} | {} | {} | {} |",
                side.name,
                ms(percentile(&t, 0.5)),
                ms(percentile(&t, 0.9)),
                ms(percentile(&t, 0.99))
            );
        }
    }
    println!();
    for side in &sides {
        println!(
            "connections to the job-tracker after the calls ({}): {}",
            side.name,
            connections_to(job_tracker_port(side))
        );
    }

    let alone = copy_rounds(&mut sides, rounds, "tls").await?;
    // `--rounds 0` measures the RPCs only.
    if rounds > 0 {
        let medians = print_copies(&sides, &alone, rounds);
        println!(
            "| mutual TLS ÷ insecure | {:.3}× | |",
            medians[1].as_secs_f64() / medians[0].as_secs_f64()
        );
    }
    for side in sides {
        side.bench.cluster.stop().await?;
    }
    Ok(())
}
