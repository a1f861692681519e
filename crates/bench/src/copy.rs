//! CopyData against `qemu-img convert` alone, on the same 2 GiB raw source (half random, half zeros).
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use datapath_api::pb::Legality;

use crate::cluster::{fill_raw, median, Bench};

const SIZE: u64 = 2 << 30;

pub async fn run(base: &Path, rounds: usize) -> anyhow::Result<()> {
    let mut b = Bench::start(base, 2, vec![]).await?;
    let (a, d) = (b.domain().await?, b.domain().await?);
    let img = uuid::Uuid::new_v4().to_string();
    let src = b.raw_volume(&a, &img, SIZE, Legality::Legal).await?;
    fill_raw(&b.path(&src), SIZE / 2)?;
    let baseline_dst = b.cluster.dir().join("baseline.raw");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let dst = b
            .raw_volume(
                &d,
                &uuid::Uuid::new_v4().to_string(),
                SIZE,
                Legality::Illegal,
            )
            .await?;
        let ours_first = round % 2 == 0;
        for turn in 0..2 {
            settle()?;
            if (turn == 0) == ours_first {
                let (_, t) = b.copy(&src, &dst).await?;
                ours.push(t);
            } else {
                theirs.push(qemu_img_alone(&b.path(&src), &baseline_dst)?);
            }
        }
        let dst_img = dst.image_id.clone();
        let mut host = b.host.clone();
        host.delete_image(datapath_api::pb::DeleteImageRequest {
            storage_domain_id: d.clone(),
            image_id: dst_img,
        })
        .await?;
        eprintln!(
            "copy round {round}: datapath {:?}, qemu-img {:?}",
            ours[round], theirs[round]
        );
    }
    let (m_ours, m_theirs) = (median(ours.clone()), median(theirs.clone()));
    println!("## copy: 2 GiB raw, half random, half zeros ({rounds} rounds, median)");
    println!("| path | median | runs |");
    println!("|---|---|---|");
    println!(
        "| qemu-img convert alone | {:.3} s | {} |",
        m_theirs.as_secs_f64(),
        fmt(&theirs)
    );
    println!(
        "| CopyData (accept → job succeeded) | {:.3} s | {} |",
        m_ours.as_secs_f64(),
        fmt(&ours)
    );
    println!(
        "| ratio | {:.3}× | |",
        m_ours.as_secs_f64() / m_theirs.as_secs_f64()
    );
    b.cluster.stop().await?;
    Ok(())
}

fn fmt(v: &[Duration]) -> String {
    v.iter()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The host-worker's own command line, run directly into a fresh sparse file.
fn qemu_img_alone(src: &Path, dst: &Path) -> anyhow::Result<Duration> {
    let _ = std::fs::remove_file(dst);
    std::fs::File::create(dst)?.set_len(SIZE)?;
    let start = Instant::now();
    let status = Command::new("qemu-img")
        .args([
            "convert",
            "-p",
            "-n",
            "-t",
            "writeback",
            "-f",
            "raw",
            "-O",
            "raw",
        ])
        .arg(src)
        .arg(dst)
        .stdout(std::process::Stdio::null())
        .status()?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("qemu-img convert failed");
    }
    std::fs::remove_file(dst)?;
    Ok(elapsed)
}

/// Starts each run alike: no dirty pages left by the previous run and the source read from disk
/// (dropping the page cache needs root; without it, both sides still start after a full sync).
fn settle() -> anyhow::Result<()> {
    Command::new("sync").status()?;
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
    Ok(())
}
