//! CopyData against `qemu-img convert` alone, on the same 2 GiB raw source (half random, half zeros).
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;
use datapath_api::pb::{DeleteImageRequest, Legality};

use crate::cluster::{fill_raw, median, settle, Bench};

const SIZE: u64 = 2 << 30;

pub async fn run(base: &Path, rounds: usize) -> anyhow::Result<()> {
    let mut b = Bench::start(base, 2, vec![]).await?;
    let (a, d) = (b.domain().await?, b.domain().await?);
    let img = uuid::Uuid::new_v4().to_string();
    let src = b.raw_volume(&a, &img, SIZE, Legality::Legal).await?;
    fill_raw(&b.path(&src), SIZE / 2)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Both destinations made alike, by CreateVolume, so only who runs qemu-img differs.
        let dst = b
            .raw_volume(
                &d,
                &uuid::Uuid::new_v4().to_string(),
                SIZE,
                Legality::Illegal,
            )
            .await?;
        let baseline = b
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
                theirs.push(qemu_img_alone(&b.path(&src), &b.path(&baseline))?);
            }
        }
        for image in [&dst.image_id, &baseline.image_id] {
            let req = DeleteImageRequest {
                storage_domain_id: d.clone(),
                image_id: image.clone(),
            };
            b.host.delete_image(req).await?;
        }
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
        "| ratio of the medians | {:.3}× | |",
        m_ours.as_secs_f64() / m_theirs.as_secs_f64()
    );
    // The disk here has slow phases lasting seconds; a round's two runs share a phase more often than
    // two medians do, so the median of per-round ratios is the steadier figure.
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(o, t)| o.as_secs_f64() / t.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "| median of per-round ratios | {:.3}× | {} |",
        ratios[ratios.len() / 2],
        shown.join(", ")
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

/// The host-worker's own command line, run directly.
pub fn qemu_img_alone(src: &Path, dst: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = Command::new("qemu-img")
        .args([
            "convert", "-p", "-n", "-t", "none", "-T", "none", "-f", "raw", "-O", "raw",
        ])
        .arg(src)
        .arg(dst)
        .stdout(std::process::Stdio::null())
        .status()?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("qemu-img convert failed");
    }
    Ok(elapsed)
}
