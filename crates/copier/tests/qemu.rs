//! The engine between real `qemu-nbd`s on real files, every result checked by `qemu-img compare`
//! (and `qemu-img check` for qcow2): raw and qcow2 both ways, one layer of a chain on its own, and a
//! copy that starts from a checkpoint.
use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::Command,
};

use datapath_copier::{copy, CopyOptions, CopyStats, Progress, Scope};
use datapath_nbd::{Client, QemuNbd};

const MIB: u64 = 1024 * 1024;

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    out
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A 64 MiB sparse raw source: 3 MiB of data at 1 MiB, 1 MiB at 40 MiB, 4 KiB at the very end.
fn raw_source(dir: &Path) -> PathBuf {
    let path = dir.join("src.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&pattern(1, 3 * MIB as usize), MIB).unwrap();
    f.write_all_at(&pattern(2, MIB as usize), 40 * MIB).unwrap();
    f.write_all_at(&pattern(3, 4096), 64 * MIB - 4096).unwrap();
    path
}

/// Serves both ends and copies; the source with `base:allocation` (and the depth when asked).
async fn run_copy(
    dir: &Path,
    (src, src_fmt): (&Path, &str),
    (dst, dst_fmt): (&Path, &str),
    opts: &CopyOptions,
) -> (CopyStats, Vec<Progress>) {
    let mut src_args = vec!["--read-only"];
    let mut contexts = vec!["base:allocation"];
    if opts.scope == Scope::LayerOnly {
        src_args.push("--allocation-depth");
        contexts.push("qemu:allocation-depth");
    }
    let mut source = QemuNbd::start(&dir.join("s.sock"), src, src_fmt, &src_args).unwrap();
    let mut destination = QemuNbd::start(&dir.join("d.sock"), dst, dst_fmt, &[]).unwrap();
    let s: Client = source.connect("", &contexts).await.unwrap();
    let d: Client = destination.connect("", &[]).await.unwrap();
    let mut seen = Vec::new();
    let stats = copy(&s, &d, opts, |p| seen.push(p)).await.unwrap();
    s.disconnect().await.unwrap();
    d.disconnect().await.unwrap();
    (stats, seen)
}

fn assert_progress(seen: &[Progress], from: u64, size: u64) {
    let last = seen.last().expect("progress reported");
    assert_eq!(last.done, size - from, "{last:?}");
    assert_eq!(last.written_below, size, "{last:?}");
    for w in seen.windows(2) {
        assert!(w[0].done <= w[1].done, "{w:?}");
        assert!(w[0].written_below <= w[1].written_below, "{w:?}");
    }
}

#[tokio::test]
async fn raw_to_a_fresh_sparse_raw_copies_only_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = raw_source(dir.path());
    let dst = dir.path().join("dst.raw");
    qemu_img(&["create", "-f", "raw", p(&dst), "64M"]);
    let opts = CopyOptions {
        destination_zeroed: true,
        chunk: MIB as u32,
        ..Default::default()
    };
    let (stats, seen) = run_copy(dir.path(), (&src, "raw"), (&dst, "raw"), &opts).await;
    qemu_img(&["compare", "-f", "raw", "-F", "raw", p(&src), p(&dst)]);
    assert!(
        stats.data_bytes >= 4 * MIB + 4096 && stats.data_bytes <= 8 * MIB,
        "only the data read and written: {stats:?}"
    );
    assert_eq!(stats.zero_bytes, 0, "a fresh destination gets no zeroes");
    assert_eq!(stats.data_bytes + stats.skipped_bytes, 64 * MIB);
    assert_progress(&seen, 0, 64 * MIB);
}

#[tokio::test]
async fn raw_to_qcow2_and_back_is_identical_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let src = raw_source(dir.path());
    let mid = dir.path().join("mid.qcow2");
    qemu_img(&["create", "-f", "qcow2", p(&mid), "64M"]);
    let (_, seen) = run_copy(
        dir.path(),
        (&src, "raw"),
        (&mid, "qcow2"),
        &CopyOptions {
            destination_zeroed: true,
            ..Default::default()
        },
    )
    .await;
    assert_progress(&seen, 0, 64 * MIB);
    qemu_img(&["check", p(&mid)]);
    qemu_img(&["compare", "-f", "raw", "-F", "qcow2", p(&src), p(&mid)]);

    // Back into a raw file full of old bytes: the zeroes must be written this time.
    let back = dir.path().join("back.raw");
    std::fs::write(&back, vec![0xee; 64 * MIB as usize]).unwrap();
    let (stats, _) = run_copy(
        dir.path(),
        (&mid, "qcow2"),
        (&back, "raw"),
        &CopyOptions::default(),
    )
    .await;
    assert!(stats.zero_bytes > 0, "{stats:?}");
    qemu_img(&["compare", "-f", "raw", "-F", "raw", p(&src), p(&back)]);
}

#[tokio::test]
async fn one_layer_of_a_chain_is_copied_on_its_own_over_the_same_backing() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        p(&raw_source(dir.path())),
        p(&base),
    ]);
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        p(&base),
        p(&top),
    ]);
    {
        // The top layer: new data at 20 MiB, and zeroes over part of the base's data at 1 MiB.
        let mut w = QemuNbd::start(&dir.path().join("w.sock"), &top, "qcow2", &[]).unwrap();
        let c = w.connect("", &[]).await.unwrap();
        c.write(20 * MIB, pattern(9, MIB as usize)).await.unwrap();
        c.write_zeroes(MIB, MIB as u32, false).await.unwrap();
        c.flush().await.unwrap();
        c.disconnect().await.unwrap();
    }
    let copy_of_top = dir.path().join("top2.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        p(&base),
        p(&copy_of_top),
    ]);
    let opts = CopyOptions {
        scope: Scope::LayerOnly,
        destination_zeroed: true,
        ..Default::default()
    };
    let (stats, seen) = run_copy(dir.path(), (&top, "qcow2"), (&copy_of_top, "qcow2"), &opts).await;
    assert_progress(&seen, 0, 64 * MIB);
    assert_eq!(stats.data_bytes, MIB, "only the layer's data: {stats:?}");
    assert_eq!(
        stats.zero_bytes, MIB,
        "the layer's zeroes hide the base: {stats:?}"
    );
    qemu_img(&["check", p(&copy_of_top)]);
    qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        p(&top),
        p(&copy_of_top),
    ]);
    // The base's data was not copied into the layer: without it the layer reads zeroes there.
    let map = String::from_utf8(
        qemu_img(&["map", "--output=json", "-f", "qcow2", p(&copy_of_top)]).stdout,
    )
    .unwrap();
    let in_layer: u64 = map
        .lines()
        .filter(|l| l.contains("\"depth\": 0") && l.contains("\"data\": true"))
        .filter_map(|l| {
            let at = l.find("\"length\": ")? + 10;
            l[at..].split(',').next()?.trim().parse::<u64>().ok()
        })
        .sum();
    assert_eq!(in_layer, MIB, "data held by the copied layer itself: {map}");
}

#[tokio::test]
async fn a_copy_from_a_checkpoint_writes_nothing_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = raw_source(dir.path());
    let dst = dir.path().join("half.raw");
    // What a first attempt wrote below 32 MiB, and old bytes above it.
    let mut old = std::fs::read(&src).unwrap();
    old[32 * MIB as usize..].fill(0xee);
    std::fs::write(&dst, &old).unwrap();
    let opts = CopyOptions {
        from: 32 * MIB,
        ..Default::default()
    };
    let (stats, seen) = run_copy(dir.path(), (&src, "raw"), (&dst, "raw"), &opts).await;
    qemu_img(&["compare", "-f", "raw", "-F", "raw", p(&src), p(&dst)]);
    assert_eq!(
        stats.data_bytes,
        MIB + 4096,
        "only the data after the checkpoint: {stats:?}"
    );
    assert_progress(&seen, 32 * MIB, 64 * MIB);
}

/// A dense 24 MiB raw source and a fresh destination, in `dir`, named by `tag`.
fn dense_pair(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let (src, dst) = (
        dir.join(format!("{tag}.src.raw")),
        dir.join(format!("{tag}.dst.raw")),
    );
    std::fs::write(&src, pattern(tag.len() as u8, 24 * MIB as usize)).unwrap();
    qemu_img(&["create", "-f", "raw", p(&dst), "24M"]);
    (src, dst)
}

/// Copies `src` into `dst` under `opts`, both served from `dir`; how long the copy itself took.
async fn timed_copy(dir: &Path, tag: &str, src: &Path, dst: &Path, opts: CopyOptions) -> f64 {
    let mut s = QemuNbd::start(
        &dir.join(format!("{tag}.s.sock")),
        src,
        "raw",
        &["--read-only"],
    )
    .unwrap();
    let mut d = QemuNbd::start(&dir.join(format!("{tag}.d.sock")), dst, "raw", &[]).unwrap();
    let (s, d) = (
        s.connect("", &["base:allocation"]).await.unwrap(),
        d.connect("", &[]).await.unwrap(),
    );
    let start = std::time::Instant::now();
    copy(&s, &d, &opts, |_| {}).await.unwrap();
    let took = start.elapsed().as_secs_f64();
    s.disconnect().await.unwrap();
    d.disconnect().await.unwrap();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_alone_gets_the_whole_host_limit_and_two_copies_share_it() {
    use std::sync::Arc;

    use datapath_copier::TokenBucket;
    const LIMIT: u64 = 16 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(TokenBucket::new(LIMIT));
    let opts = CopyOptions {
        limits: vec![host.clone()],
        ..Default::default()
    };

    // Alone: 24 MiB at 16 MiB/s is 1.5 s; at least 90 % of the limit, and never over it.
    let (src, dst) = dense_pair(dir.path(), "alone");
    let took = timed_copy(dir.path(), "alone", &src, &dst, opts.clone()).await;
    let rate = 24.0 / took;
    assert!(rate >= 0.9 * 16.0, "{rate:.1} MiB/s alone");
    assert!(rate <= 1.1 * 16.0, "{rate:.1} MiB/s alone, over the limit");
    qemu_img(&["compare", "-f", "raw", "-F", "raw", p(&src), p(&dst)]);

    // Two at once from the same bucket: ~8 MiB/s each, both done in ~3 s.
    let (src1, dst1) = dense_pair(dir.path(), "first");
    let (src2, dst2) = dense_pair(dir.path(), "second!");
    let (a, b) = tokio::join!(
        timed_copy(dir.path(), "first", &src1, &dst1, opts.clone()),
        timed_copy(dir.path(), "second!", &src2, &dst2, opts.clone()),
    );
    for (took, which) in [(a, "first"), (b, "second")] {
        let rate = 24.0 / took;
        assert!(
            (0.4 * 16.0..=0.6 * 16.0).contains(&rate),
            "{which}: {rate:.1} MiB/s while sharing"
        );
    }
}

/// The digest of `image` as `qemu-nbd` serves it.
async fn digest_of(dir: &Path, image: &Path, format: &str) -> String {
    let mut server = QemuNbd::start(&dir.join("h.sock"), image, format, &["--read-only"]).unwrap();
    let client = server.connect("", &["base:allocation"]).await.unwrap();
    let digest = datapath_copier::blkhash::image_digest(&client, 8)
        .await
        .unwrap();
    client.disconnect().await.unwrap();
    digest
}

#[tokio::test]
async fn the_digest_depends_on_the_bytes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = raw_source(dir.path());
    let (cow, full) = (dir.path().join("c.qcow2"), dir.path().join("full.raw"));
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&src), p(&cow)]);
    qemu_img(&[
        "convert",
        "-S",
        "0",
        "-f",
        "raw",
        "-O",
        "raw",
        p(&src),
        p(&full),
    ]);
    let d = digest_of(dir.path(), &src, "raw").await;
    assert_eq!(digest_of(dir.path(), &cow, "qcow2").await, d, "qcow2");
    assert_eq!(
        digest_of(dir.path(), &full, "raw").await,
        d,
        "every zero allocated"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&full)
        .unwrap()
        .write_all_at(&[1], 50 * MIB)
        .unwrap();
    assert_ne!(
        digest_of(dir.path(), &full, "raw").await,
        d,
        "one byte changed"
    );
}

#[tokio::test]
async fn a_verified_copy_carries_the_digest_and_a_destination_corrupted_before_the_check_fails() {
    use std::sync::Arc;

    use datapath_copier::{CopyError, Failpoint};
    let dir = tempfile::tempdir().unwrap();
    let src = raw_source(dir.path());
    let dst = dir.path().join("v.raw");
    qemu_img(&["create", "-f", "raw", p(&dst), "64M"]);
    let opts = CopyOptions {
        verify: true,
        ..Default::default()
    };
    let (stats, _) = run_copy(dir.path(), (&src, "raw"), (&dst, "raw"), &opts).await;
    let digest = digest_of(dir.path(), &src, "raw").await;
    assert_eq!(stats.digest.as_ref(), Some(&digest));
    // Hashed from what the copy read, its zeroes skipped, out of a qcow2: the same digest.
    let (cow, fresh) = (dir.path().join("v.qcow2"), dir.path().join("fresh.raw"));
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&src), p(&cow)]);
    qemu_img(&["create", "-f", "raw", p(&fresh), "64M"]);
    let skipping = CopyOptions {
        verify: true,
        destination_zeroed: true,
        chunk: 300 * 1024,
        ..Default::default()
    };
    let (stats, _) = run_copy(dir.path(), (&cow, "qcow2"), (&fresh, "raw"), &skipping).await;
    assert_eq!(stats.digest.as_ref(), Some(&digest));

    let corrupt = {
        let dst = dst.clone();
        Failpoint(Arc::new(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
            f.write_all_at(&[0x5a; 512], MIB + 4096).unwrap();
            f.sync_all().unwrap();
        }))
    };
    let opts = CopyOptions {
        verify: true,
        before_verify: Some(corrupt),
        ..Default::default()
    };
    let mut source =
        QemuNbd::start(&dir.path().join("s.sock"), &src, "raw", &["--read-only"]).unwrap();
    let mut destination = QemuNbd::start(&dir.path().join("d.sock"), &dst, "raw", &[]).unwrap();
    let s = source.connect("", &["base:allocation"]).await.unwrap();
    let d = destination.connect("", &[]).await.unwrap();
    match copy(&s, &d, &opts, |_| {}).await {
        Err(CopyError::ChecksumMismatch {
            source_digest,
            destination,
        }) => assert_ne!(source_digest, destination),
        other => panic!("{other:?}"),
    }
}
