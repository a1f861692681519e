//! The copy loop: the source's block status a window at a time, its plan, and the pieces run with a
//! bounded number in flight. Completions come back in any order; the offset below which every piece
//! is written (`written_below`) is what a checkpoint may record once the destination is flushed.
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use datapath_nbd::{Client, NbdError};
use futures::{stream::FuturesUnordered, StreamExt};

use crate::{
    bandwidth::TokenBucket,
    blkhash::{block_aligned, image_digest, Blocks, Digest, BLOCK},
    plan::{plan, Scope, Work},
};

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Which source bytes are copied.
    pub scope: Scope,
    /// The largest read or write, in bytes (cut further to what both servers take).
    pub chunk: u32,
    /// Pieces in flight at once.
    pub in_flight: usize,
    /// The destination already reads as zeroes (a fresh sparse file): zeroes of a whole image are
    /// not written at all.
    pub destination_zeroed: bool,
    /// Zeroes must be allocated on the destination (a preallocated volume): no hole is punched.
    pub allocate_zeroes: bool,
    /// Where to start: 0, or a resumed copy's checkpoint.
    pub from: u64,
    /// The buckets every data piece is paid from before it is read: the host's, shared by its
    /// copies, and the copy's own limit, if any.
    pub limits: Vec<Arc<TokenBucket>>,
    /// After the flush, read both images back and compare their digests (`blkhash`): a mismatch
    /// fails the copy with [`CopyError::ChecksumMismatch`].
    pub verify: bool,
    /// Tests only: runs between the flush and the verification (a test corrupts the destination
    /// there, as a disk that lies would).
    pub before_verify: Option<Failpoint>,
}

/// A hook a test sets; nothing else does.
#[derive(Clone)]
pub struct Failpoint(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Failpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Failpoint")
    }
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            scope: Scope::Whole,
            chunk: 2 * 1024 * 1024,
            in_flight: 8,
            destination_zeroed: false,
            allocate_zeroes: false,
            from: 0,
            limits: Vec::new(),
            verify: false,
            before_verify: None,
        }
    }
}

/// How far a copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the image handled (copied, zeroed or skipped) since the start offset.
    pub done: u64,
    /// Every piece below this offset is written (not yet flushed).
    pub written_below: u64,
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes read from the source and written.
    pub data_bytes: u64,
    /// Bytes written as zeroes without a payload.
    pub zero_bytes: u64,
    /// Bytes not written: zeroes on a fresh destination, or what a layer does not hold.
    pub skipped_bytes: u64,
    /// The image's digest, source and destination alike, when verified.
    pub digest: Option<Digest>,
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading or asking the source failed.
    #[error("source: {0}")]
    Source(NbdError),
    /// Writing the destination failed.
    #[error("destination: {0}")]
    Destination(NbdError),
    /// The destination is smaller than the source.
    #[error(
        "the destination ({destination} bytes) is smaller than the source ({source_size} bytes)"
    )]
    TooSmall {
        /// The source's size.
        source_size: u64,
        /// The destination's size.
        destination: u64,
    },
    /// The source cannot say what a layer holds (`qemu:allocation-depth` not selected).
    #[error("the source does not report qemu:allocation-depth, needed to copy one layer")]
    NoDepth,
    /// The source's block status described nothing.
    #[error("the source's block status described nothing at {0}")]
    NoExtents(u64),
    /// The destination read back differs from the source.
    #[error("the destination's digest {destination} differs from the source's {source_digest}")]
    ChecksumMismatch {
        /// The source's digest.
        source_digest: Digest,
        /// The destination's digest.
        destination: Digest,
    },
}

/// How much of the source one block status asks about.
const WINDOW: u64 = 1 << 30;
/// The largest zero write sent at once.
const MAX_ZERO: u64 = 1 << 30;

/// Copies `source` into `destination` as `opts` says, calling `progress` after each piece, then
/// flushes the destination.
pub async fn copy(
    source: &Client,
    destination: &Client,
    opts: &CopyOptions,
    mut progress: impl FnMut(Progress),
) -> Result<CopyStats, CopyError> {
    let size = source.size();
    if destination.size() < size {
        return Err(CopyError::TooSmall {
            source_size: size,
            destination: destination.size(),
        });
    }
    let contexts = &source.export().contexts;
    let described = contexts.contains_key("base:allocation");
    if opts.scope == Scope::LayerOnly && !contexts.contains_key("qemu:allocation-depth") {
        return Err(CopyError::NoDepth);
    }
    let chunk = u64::from(
        opts.chunk
            .min(source.max_payload())
            .min(destination.max_payload())
            .max(4096),
    );
    // A whole image copied from its start is hashed from what the copy reads (only the
    // destination is read back to check it); a layer or a resumed copy re-reads its source.
    let hashing = opts.verify && opts.scope == Scope::Whole && opts.from == 0;
    let chunk = if hashing {
        (chunk / BLOCK * BLOCK).max(BLOCK)
    } else {
        chunk
    };
    let blocks = hashing.then(|| Mutex::new(Blocks::new(size)));
    let (mut at, mut stats) = (opts.from.min(size), CopyStats::default());
    let mut done = 0;
    // The pieces' buffers, used again and again: fresh ones cost a page fault per 4 KiB.
    let buffers = Mutex::new(Vec::new());
    let mut running = FuturesUnordered::new();
    let mut starts = BTreeSet::new();
    while at < size {
        let want = WINDOW.min(size - at);
        let works = if described {
            describe(source, opts, at, want).await?
        } else {
            // No block status: every byte is data.
            plan(
                Scope::Whole,
                &[datapath_nbd::Extent {
                    offset: at,
                    length: want,
                    flags: 0,
                }],
                &[],
                false,
                chunk,
            )
        };
        let works = if hashing {
            let aligned = block_aligned(&works, at, size);
            for w in &aligned {
                if let (Work::Zero { offset, length } | Work::Skip { offset, length }, Some(b)) =
                    (w, &blocks)
                {
                    b.lock().expect("block hashes").zero(*offset, *length);
                }
            }
            aligned
        } else {
            works
        };
        let works = recut(works, chunk);
        let Some(last) = works.last() else {
            return Err(CopyError::NoExtents(at));
        };
        let (o, l) = last.span();
        let window_end = o + l;
        for w in works {
            // Nothing at or after `w` is written yet: that is as far as `written_below` may go.
            let next = w.span().0;
            while running.len() >= opts.in_flight.max(1) {
                if let Some(r) = running.next().await {
                    finish(r?, &mut starts, &mut stats, &mut done, next, &mut progress);
                }
            }
            // A data piece is paid for before it is sent, one at a time per copy, while the
            // pieces in flight go on: copies sharing a bucket then take turns piece by piece
            // (paying inside each piece let the first copy reserve all it had in flight at once).
            if let (Work::Data { length, .. }, false) = (w, opts.limits.is_empty()) {
                let paid = pay(&opts.limits, length);
                tokio::pin!(paid);
                loop {
                    tokio::select! {
                        () = &mut paid => break,
                        Some(r) = running.next() => {
                            finish(r?, &mut starts, &mut stats, &mut done, next, &mut progress);
                        }
                    }
                }
            }
            starts.insert(w.span().0);
            running.push(run(source, destination, w, opts, &buffers, blocks.as_ref()));
        }
        at = window_end;
        if running.is_empty() {
            progress(Progress {
                done,
                written_below: at,
            });
        }
    }
    while let Some(r) = running.next().await {
        finish(r?, &mut starts, &mut stats, &mut done, at, &mut progress);
    }
    drop(running);
    destination.flush().await.map_err(CopyError::Destination)?;
    if opts.verify {
        if let Some(Failpoint(hook)) = &opts.before_verify {
            hook();
        }
        let n = opts.in_flight.max(1);
        let (s, d) = match blocks {
            Some(b) => (
                b.into_inner().expect("block hashes").digest(),
                image_digest(destination, n)
                    .await
                    .map_err(CopyError::Destination)?,
            ),
            None => {
                let (s, d) = tokio::join!(image_digest(source, n), image_digest(destination, n));
                (
                    s.map_err(CopyError::Source)?,
                    d.map_err(CopyError::Destination)?,
                )
            }
        };
        if s != d {
            return Err(CopyError::ChecksumMismatch {
                source_digest: s,
                destination: d,
            });
        }
        stats.digest = Some(s);
    }
    Ok(stats)
}

/// The plan for `want` bytes at `at`, from the source's block status.
async fn describe(
    source: &Client,
    opts: &CopyOptions,
    at: u64,
    want: u64,
) -> Result<Vec<Work>, CopyError> {
    let status = source
        .block_status(at, want as u32)
        .await
        .map_err(CopyError::Source)?;
    let of = |name: &str| {
        status
            .iter()
            .find(|c| c.context == name)
            .map(|c| c.extents.clone())
            .unwrap_or_default()
    };
    let (allocation, depth) = (of("base:allocation"), of("qemu:allocation-depth"));
    // Extents past what was asked are cut: the server may describe further.
    let clip = |mut v: Vec<datapath_nbd::Extent>| {
        v.retain(|e| e.offset < at + want);
        if let Some(e) = v.last_mut() {
            e.length = e.length.min(at + want - e.offset);
        }
        v
    };
    Ok(plan(
        opts.scope,
        &clip(allocation),
        &clip(depth),
        opts.destination_zeroed,
        u64::MAX,
    ))
}

/// Cuts data pieces to `chunk` and zero pieces to [`MAX_ZERO`].
fn recut(works: Vec<Work>, chunk: u64) -> Vec<Work> {
    let mut out = Vec::with_capacity(works.len());
    for w in works {
        let (mut offset, length) = w.span();
        let end = offset + length;
        let max = match w {
            Work::Data { .. } => chunk,
            Work::Zero { .. } => MAX_ZERO,
            Work::Skip { .. } => u64::MAX,
        };
        while offset < end {
            let n = max.min(end - offset);
            out.push(match w {
                Work::Data { .. } => Work::Data { offset, length: n },
                Work::Zero { .. } => Work::Zero { offset, length: n },
                Work::Skip { .. } => Work::Skip { offset, length: n },
            });
            offset += n;
        }
    }
    out
}

/// Takes `length` bytes from every bucket.
async fn pay(limits: &[Arc<TokenBucket>], length: u64) {
    for bucket in limits {
        bucket.take(length).await;
    }
}

/// Runs one piece.
async fn run(
    source: &Client,
    destination: &Client,
    w: Work,
    opts: &CopyOptions,
    buffers: &Mutex<Vec<Vec<u8>>>,
    blocks: Option<&Mutex<Blocks>>,
) -> Result<Work, CopyError> {
    let allocate = opts.allocate_zeroes;
    match w {
        Work::Data { offset, length } => {
            let buf = buffers
                .lock()
                .expect("buffer pool")
                .pop()
                .unwrap_or_default();
            let bytes = source
                .read_into(offset, length as u32, buf)
                .await
                .map_err(CopyError::Source)?;
            if let Some(b) = blocks {
                b.lock().expect("block hashes").data(offset, &bytes);
            }
            let buf = destination
                .write_buf(offset, bytes)
                .await
                .map_err(CopyError::Destination)?;
            buffers.lock().expect("buffer pool").push(buf);
        }
        Work::Zero { offset, length } => {
            match destination
                .write_zeroes(offset, length as u32, allocate)
                .await
            {
                Err(NbdError::Unsupported(_)) => {
                    // A server without NBD_CMD_WRITE_ZEROES gets the zeroes as data.
                    let mut at = offset;
                    while at < offset + length {
                        let n = (offset + length - at).min(destination.max_payload().into());
                        destination
                            .write(at, vec![0; n as usize])
                            .await
                            .map_err(CopyError::Destination)?;
                        at += n;
                    }
                }
                other => other.map_err(CopyError::Destination)?,
            }
        }
        Work::Skip { .. } => {}
    }
    Ok(w)
}

/// Accounts a finished piece and reports progress.
fn finish(
    w: Work,
    starts: &mut BTreeSet<u64>,
    stats: &mut CopyStats,
    done: &mut u64,
    frontier: u64,
    progress: &mut impl FnMut(Progress),
) {
    let (offset, length) = w.span();
    starts.remove(&offset);
    match w {
        Work::Data { .. } => stats.data_bytes += length,
        Work::Zero { .. } => stats.zero_bytes += length,
        Work::Skip { .. } => stats.skipped_bytes += length,
    }
    *done += length;
    progress(Progress {
        done: *done,
        written_below: starts.first().copied().unwrap_or(frontier),
    });
}
