//! The native copier's engine (qemu-nbd at both ends, `crates/copier`) against `qemu-img convert
//! -t none -T none` alone, on the same 2 GiB raw source (1 GiB random, then a 1 GiB hole) into a
//! fresh sparse raw file each run, the runs alternating.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use datapath_copier::{copy, CopyOptions, CopyStats};
use datapath_nbd::QemuNbd;

use crate::{
    cluster::{fill_raw, median, settle},
    copy::qemu_img_alone,
};

const SIZE: u64 = 2 << 30;

/// The ways the native engine is run, each against the baseline.
fn variants() -> Vec<(&'static str, CopyOptions)> {
    vec![
        (
            "native, zeroes skipped (a fresh sparse destination)",
            CopyOptions {
                destination_zeroed: true,
                ..Default::default()
            },
        ),
        ("native, zeroes written", CopyOptions::default()),
    ]
}

pub async fn run(base: &Path, rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(base)?;
    let src = dir.path().join("src.raw");
    std::fs::File::create(&src)?.set_len(SIZE)?;
    fill_raw(&src, SIZE / 2)?;
    let dst = dir.path().join("dst.raw");
    let variants = variants();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len() + 1];
    let mut stats = vec![CopyStats::default(); variants.len()];
    for round in 0..rounds {
        // Rotate who goes first: the disk here has slow phases.
        for turn in 0..=variants.len() {
            let who = (turn + round) % (variants.len() + 1);
            let _ = std::fs::remove_file(&dst);
            std::fs::File::create(&dst)?.set_len(SIZE)?;
            settle()?;
            if who == variants.len() {
                times[who].push(qemu_img_alone(&src, &dst)?);
            } else {
                let (t, s) = native(dir.path(), &src, &dst, &variants[who].1).await?;
                times[who].push(t);
                stats[who] = s;
            }
        }
        eprintln!(
            "native-copy round {round}: {:?}",
            times.iter().map(|t| t[round]).collect::<Vec<_>>()
        );
    }
    let baseline = median(times[variants.len()].clone()).as_secs_f64();
    println!("## native-copy: 2 GiB raw, 1 GiB random then a 1 GiB hole, into a fresh sparse raw file ({rounds} rounds, median)");
    println!("| path | median | ÷ qemu-img | bytes read and written / zeroed | runs |");
    println!("|---|---|---|---|---|");
    println!(
        "| qemu-img convert -t none -T none alone | {baseline:.3} s | 1.000× | | {} |",
        fmt(&times[variants.len()])
    );
    for (i, (name, _)) in variants.iter().enumerate() {
        let m = median(times[i].clone()).as_secs_f64();
        println!(
            "| {name} | {m:.3} s | {:.3}× | {} / {} MiB | {} |",
            m / baseline,
            stats[i].data_bytes >> 20,
            stats[i].zero_bytes >> 20,
            fmt(&times[i])
        );
    }
    Ok(())
}

/// One native copy, from starting both `qemu-nbd`s to the destination flushed and closed.
async fn native(
    dir: &Path,
    src: &Path,
    dst: &Path,
    opts: &CopyOptions,
) -> anyhow::Result<(Duration, CopyStats)> {
    let start = Instant::now();
    let mut source = QemuNbd::start(
        &dir.join("src.sock"),
        src,
        "raw",
        &["--read-only", "--cache=none"],
    )?;
    let mut destination = QemuNbd::start(&dir.join("dst.sock"), dst, "raw", &["--cache=none"])?;
    let s = source.connect("", &["base:allocation"]).await?;
    let d = destination.connect("", &[]).await?;
    let stats = copy(&s, &d, opts, |_| {}).await?;
    s.disconnect().await?;
    d.disconnect().await?;
    Ok((start.elapsed(), stats))
}

fn fmt(v: &[Duration]) -> String {
    v.iter()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}
