//! A content digest of an image as the guest sees it, the idea of ovirt-imageio's blkhash: the
//! image cut into fixed blocks, each block hashed (BLAKE3), a block that reads as zeroes hashed
//! without being read (block status says so), and the digest the hash of the image's size and every
//! block's hash in order. It depends on the bytes alone — not on the format, the allocation or how
//! a copy was cut — so a raw copy of a qcow2 chain has the chain's digest, and a destination read
//! back can be checked against its source.
use std::collections::BTreeMap;

use datapath_nbd::{proto, Client, NbdError};

use crate::plan::Work;
use futures::{stream::FuturesOrdered, StreamExt};

/// The block size: a block's hash is the unit of comparison.
pub const BLOCK: u64 = 64 * 1024;
/// How much is read at once (a whole number of blocks).
const PIECE: u64 = 32 * BLOCK;
/// How much one block status asks about.
const WINDOW: u64 = 1 << 30;

/// A digest, as lowercase hex, prefixed with the algorithm and block size.
pub type Digest = String;

/// The digest of everything `client` serves, reading up to `in_flight` pieces at once.
pub async fn image_digest(client: &Client, in_flight: usize) -> Result<Digest, NbdError> {
    let size = client.size();
    let mut blocks = Blocks::new(size);
    let described = client.export().contexts.contains_key("base:allocation");
    let mut at = 0;
    while at < size {
        let want = WINDOW.min(size - at);
        let zero = if described {
            zero_ranges(client, at, want).await?
        } else {
            Vec::new()
        };
        // Pieces aligned to blocks: a block wholly inside a zero range is not read.
        let mut reads = FuturesOrdered::new();
        let end = at + want;
        let mut block_at = at;
        while block_at < end {
            let block_end = (block_at + BLOCK).min(size);
            if zero.iter().any(|&(s, e)| s <= block_at && block_end <= e) {
                blocks.zero(block_at, block_end - block_at);
                block_at = block_end;
                continue;
            }
            let piece_end = (block_at + PIECE).min(end);
            while reads.len() >= in_flight.max(1) {
                if let Some(r) = reads.next().await {
                    let (off, bytes): (u64, Vec<u8>) = r?;
                    blocks.data(off, &bytes);
                }
            }
            let len = (piece_end - block_at) as u32;
            let off = block_at;
            reads.push_back(async move { client.read(off, len).await.map(|b| (off, b)) });
            block_at = piece_end;
        }
        while let Some(r) = reads.next().await {
            let (off, bytes) = r?;
            blocks.data(off, &bytes);
        }
        at = end;
    }
    Ok(blocks.digest())
}

/// The ranges of `want` bytes at `at` that read as zeroes.
async fn zero_ranges(client: &Client, at: u64, want: u64) -> Result<Vec<(u64, u64)>, NbdError> {
    let mut out = Vec::new();
    let mut from = at;
    while from < at + want {
        let status = client.block_status(from, (at + want - from) as u32).await?;
        let Some(alloc) = status.iter().find(|c| c.context == "base:allocation") else {
            break;
        };
        let Some(last) = alloc.extents.last() else {
            break;
        };
        for e in &alloc.extents {
            if e.flags & proto::STATE_ZERO != 0 {
                out.push((e.offset, (e.offset + e.length).min(at + want)));
            }
        }
        from = last.offset + last.length;
    }
    Ok(out)
}

/// The blocks' hashes, kept in order whatever order they come in.
pub(crate) struct Blocks {
    size: u64,
    hasher: blake3::Hasher,
    /// The next block to fold in.
    next: u64,
    /// Hashes of blocks after `next`, waiting their turn.
    waiting: BTreeMap<u64, blake3::Hash>,
    zero_block: blake3::Hash,
}

impl Blocks {
    pub(crate) fn new(size: u64) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&size.to_le_bytes());
        Self {
            size,
            hasher,
            next: 0,
            waiting: BTreeMap::new(),
            zero_block: blake3::hash(&vec![0u8; BLOCK as usize]),
        }
    }

    /// `len` bytes of zeroes at `at` (whole blocks, or the image's short last one).
    pub(crate) fn zero(&mut self, mut at: u64, len: u64) {
        let end = at + len;
        while at < end {
            let n = BLOCK.min(self.size - at);
            let h = if n == BLOCK {
                self.zero_block
            } else {
                blake3::hash(&vec![0u8; n as usize])
            };
            self.add(at, h);
            at += n;
        }
    }

    /// Bytes read at `at`, a whole number of blocks (or up to the image's end).
    pub(crate) fn data(&mut self, at: u64, bytes: &[u8]) {
        for (i, block) in bytes.chunks(BLOCK as usize).enumerate() {
            self.add(at + i as u64 * BLOCK, blake3::hash(block));
        }
    }

    fn add(&mut self, at: u64, h: blake3::Hash) {
        self.waiting.insert(at, h);
        while let Some(h) = self.waiting.remove(&self.next) {
            self.hasher.update(h.as_bytes());
            self.next = (self.next + BLOCK).min(self.size);
        }
    }

    pub(crate) fn digest(self) -> Digest {
        assert!(self.waiting.is_empty(), "every block folded in order");
        format!("blake3-64k:{}", self.hasher.finalize().to_hex())
    }
}

/// `works` (one window's plan, from `at` to where it ends) cut on block boundaries, so that a
/// copy can hash the source from what it reads: a block any data piece touches is read whole, the
/// others are zeroes (written or skipped as planned). The plan ends at the last whole block (or at
/// the image's end), the rest left to the next window; at least one block is planned.
pub(crate) fn block_aligned(works: &[Work], at: u64, size: u64) -> Vec<Work> {
    let planned_end = works.last().map_or(at, |w| w.span().0 + w.span().1);
    let mut end = if planned_end >= size {
        size
    } else {
        planned_end / BLOCK * BLOCK
    };
    if end <= at {
        end = (at + BLOCK).min(size);
    }
    let mut out: Vec<Work> = Vec::new();
    let mut block = at;
    while block < end {
        let block_end = (block + BLOCK).min(end);
        let touching = works
            .iter()
            .filter(|w| {
                let (o, l) = w.span();
                o < block_end && block < o + l
            })
            .collect::<Vec<_>>();
        let kind =
            if block_end > planned_end || touching.iter().any(|w| matches!(w, Work::Data { .. })) {
                // Data, or a block the plan did not reach: read it.
                Work::Data {
                    offset: block,
                    length: block_end - block,
                }
            } else if touching.iter().any(|w| matches!(w, Work::Zero { .. })) {
                Work::Zero {
                    offset: block,
                    length: block_end - block,
                }
            } else {
                Work::Skip {
                    offset: block,
                    length: block_end - block,
                }
            };
        match (out.last_mut(), kind) {
            (Some(Work::Data { length, .. }), Work::Data { length: l, .. })
            | (Some(Work::Zero { length, .. }), Work::Zero { length: l, .. })
            | (Some(Work::Skip { length, .. }), Work::Skip { length: l, .. }) => *length += l,
            (_, k) => out.push(k),
        }
        block = block_end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_cut_on_block_boundaries() {
        let b = BLOCK;
        let works = [
            Work::Skip {
                offset: 0,
                length: b + 10,
            },
            Work::Data {
                offset: b + 10,
                length: 20,
            },
            Work::Zero {
                offset: b + 30,
                length: 3 * b,
            },
        ];
        // Ends at 4b + 30 in a larger image: the last whole block ends at 4b.
        assert_eq!(
            block_aligned(&works, 0, 100 * b),
            [
                Work::Skip {
                    offset: 0,
                    length: b
                },
                Work::Data {
                    offset: b,
                    length: b
                },
                Work::Zero {
                    offset: 2 * b,
                    length: 2 * b
                },
            ]
        );
        // At the image's end, the short last block is planned too.
        assert_eq!(
            block_aligned(&works, 0, 4 * b + 30).last(),
            Some(&Work::Zero {
                offset: 2 * b,
                length: 2 * b + 30
            })
        );
        // Less than a block described: one block, read.
        assert_eq!(
            block_aligned(
                &[Work::Skip {
                    offset: 0,
                    length: 10
                }],
                0,
                100 * b
            ),
            [Work::Data {
                offset: 0,
                length: b
            }]
        );
    }

    fn blocks_of(size: u64, parts: &[(u64, Option<Vec<u8>>)]) -> Digest {
        let mut b = Blocks::new(size);
        for (at, bytes) in parts {
            match bytes {
                Some(d) => b.data(*at, d),
                None => b.zero(*at, BLOCK.min(size - at)),
            }
        }
        b.digest()
    }

    #[test]
    fn zeroes_read_or_not_and_blocks_in_any_order_give_one_digest() {
        let size = 3 * BLOCK + 100;
        let data = vec![7u8; BLOCK as usize];
        let read_all = blocks_of(
            size,
            &[
                (0, Some(data.clone())),
                (BLOCK, Some(vec![0; BLOCK as usize])),
                (2 * BLOCK, Some(data.clone())),
                (3 * BLOCK, Some(vec![0; 100])),
            ],
        );
        let zero_skipped_out_of_order = blocks_of(
            size,
            &[
                (3 * BLOCK, None),
                (2 * BLOCK, Some(data.clone())),
                (BLOCK, None),
                (0, Some(data.clone())),
            ],
        );
        assert_eq!(read_all, zero_skipped_out_of_order);
        let mut other = data.clone();
        other[5] ^= 1;
        let one_bit = blocks_of(
            size,
            &[
                (0, Some(other)),
                (BLOCK, None),
                (2 * BLOCK, Some(data)),
                (3 * BLOCK, None),
            ],
        );
        assert_ne!(read_all, one_bit, "one flipped bit changes the digest");
        assert!(read_all.starts_with("blake3-64k:"));
    }
}
