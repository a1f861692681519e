//! The native copier's engine (qemu-nbd at both ends, `crates/copier`) against `qemu-img convert
//! -t none -T none` alone, into a fresh sparse raw file each run, the runs rotating: a 2 GiB raw
//! source (1 GiB random, then a 1 GiB hole), then a 16 GiB one holding 1 GiB.
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

/// The engine's piece size and pieces in flight, and which images.
pub struct Tuning {
    /// Bytes per piece.
    pub chunk: u32,
    /// Pieces in flight.
    pub in_flight: usize,
    /// Only the dense 2 GiB image.
    pub dense_only: bool,
}

/// The ways the native engine is run, each against the baseline.
fn variants(t: &Tuning) -> Vec<(&'static str, CopyOptions)> {
    let tuned = CopyOptions {
        chunk: t.chunk,
        in_flight: t.in_flight,
        ..Default::default()
    };
    vec![
        (
            "native, zeroes skipped (a fresh sparse destination)",
            CopyOptions {
                destination_zeroed: true,
                ..tuned.clone()
            },
        ),
        ("native, zeroes written", tuned.clone()),
        (
            "native, zeroes skipped, verified (source hashed as read, destination read back)",
            CopyOptions {
                destination_zeroed: true,
                verify: true,
                ..tuned
            },
        ),
    ]
}

pub async fn run(base: &Path, rounds: usize, tuning: &Tuning) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(base)?;
    let src = dir.path().join("src.raw");
    std::fs::File::create(&src)?.set_len(SIZE)?;
    fill_raw(&src, SIZE / 2)?;
    println!(
        "(native pieces of {} KiB, {} in flight)",
        tuning.chunk >> 10,
        tuning.in_flight
    );
    compare(
        dir.path(),
        &src,
        SIZE,
        rounds,
        "2 GiB raw, 1 GiB random then a 1 GiB hole",
        tuning,
    )
    .await?;
    std::fs::remove_file(&src)?;
    if tuning.dense_only {
        return Ok(());
    }
    // 16 GiB holding 1 GiB: 64 random 16 MiB extents spread evenly, holes between them.
    let sparse = dir.path().join("sparse.raw");
    std::fs::File::create(&sparse)?.set_len(SPARSE_SIZE)?;
    spread_random(&sparse, 64, 16 << 20, SPARSE_SIZE)?;
    compare(
        dir.path(),
        &sparse,
        SPARSE_SIZE,
        rounds,
        "16 GiB raw holding 1 GiB (64 random 16 MiB extents spread evenly)",
        tuning,
    )
    .await
}

const SPARSE_SIZE: u64 = 16 << 30;

/// Writes `count` random extents of `len` bytes spread evenly over `size` bytes of `path`.
fn spread_random(path: &Path, count: u64, len: usize, size: u64) -> anyhow::Result<()> {
    use rand::RngCore as _;
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut buf = vec![0u8; len];
    let mut rng = rand::rng();
    for i in 0..count {
        rng.fill_bytes(&mut buf);
        f.write_all_at(&buf, i * (size / count))?;
    }
    f.sync_all()?;
    Ok(())
}

/// The runs and the table for one source of `size` bytes.
async fn compare(
    dir: &Path,
    src: &Path,
    size: u64,
    rounds: usize,
    what: &str,
    tuning: &Tuning,
) -> anyhow::Result<()> {
    let dst = dir.join("dst.raw");
    let variants = variants(tuning);
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len() + 1];
    let mut stats = vec![CopyStats::default(); variants.len()];
    for round in 0..rounds {
        // Rotate who goes first: the disk here has slow phases.
        for turn in 0..=variants.len() {
            let who = (turn + round) % (variants.len() + 1);
            let _ = std::fs::remove_file(&dst);
            std::fs::File::create(&dst)?.set_len(size)?;
            settle()?;
            if who == variants.len() {
                times[who].push(qemu_img_alone(src, &dst)?);
            } else {
                let (t, s) = native(dir, src, &dst, &variants[who].1).await?;
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
    println!("## native-copy: {what}, into a fresh sparse raw file ({rounds} rounds, median)");
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
    let _ = std::fs::remove_file(&dst);
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
    let d = destination.connect("", &["base:allocation"]).await?;
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
