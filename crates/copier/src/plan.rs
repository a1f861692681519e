//! What to do with each extent of the source: pure, so the rules are tested without a server.

use datapath_nbd::{proto, Extent};

/// Which source bytes are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The image as the guest sees it, through its whole backing chain (`base:allocation`): a base
    /// volume, or a chain collapsed into one.
    Whole,
    /// Only what this layer holds (`qemu:allocation-depth` = 1), onto a destination with the same
    /// backing chain: what the layer does not hold stays unallocated so that it reads through.
    /// `qemu-img convert -B` of one layer does the same.
    LayerOnly,
}

/// One piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Read these bytes from the source and write them to the destination.
    Data { offset: u64, length: u64 },
    /// Make these bytes read as zeroes on the destination.
    Zero { offset: u64, length: u64 },
    /// Nothing to write: zeroes on a destination that already reads as zeroes, or bytes the
    /// layer does not hold.
    Skip { offset: u64, length: u64 },
}

impl Work {
    /// Where it starts and how long it is.
    pub fn span(&self) -> (u64, u64) {
        match *self {
            Work::Data { offset, length }
            | Work::Zero { offset, length }
            | Work::Skip { offset, length } => (offset, length),
        }
    }
}

/// The work for one source extent. `allocation` is its `base:allocation` flags; `depth` its
/// `qemu:allocation-depth` (used by [`Scope::LayerOnly`] only); `destination_zeroed` says the
/// destination reads as zeroes already (a fresh sparse file).
pub fn work_for(
    scope: Scope,
    offset: u64,
    length: u64,
    allocation: u32,
    depth: Option<u32>,
    destination_zeroed: bool,
) -> Work {
    if scope == Scope::LayerOnly && depth != Some(1) {
        return Work::Skip { offset, length };
    }
    if allocation & proto::STATE_ZERO != 0 {
        // A fresh sparse destination of a whole image already reads as zeroes; a layer's zeroes
        // must be written, since they hide what its backing holds there.
        if destination_zeroed && scope == Scope::Whole {
            Work::Skip { offset, length }
        } else {
            Work::Zero { offset, length }
        }
    } else {
        Work::Data { offset, length }
    }
}

/// The work for a stretch of the source described by its `base:allocation` extents and, for
/// [`Scope::LayerOnly`], its `qemu:allocation-depth` extents: each piece where both say one thing,
/// data cut into pieces of at most `chunk` bytes, ending where the shorter description ends.
pub fn plan(
    scope: Scope,
    allocation: &[Extent],
    depth: &[Extent],
    destination_zeroed: bool,
    chunk: u64,
) -> Vec<Work> {
    let mut out = Vec::new();
    let (mut a, mut d) = (allocation.iter().peekable(), depth.iter().peekable());
    let Some(first) = allocation.first() else {
        return out;
    };
    let mut at = first.offset;
    while let Some(ae) = a.peek().copied() {
        let mut end = ae.offset + ae.length;
        let mut depth_flags = None;
        if scope == Scope::LayerOnly {
            while d.peek().is_some_and(|de| de.offset + de.length <= at) {
                d.next();
            }
            let Some(de) = d.peek().copied() else { break };
            end = end.min(de.offset + de.length);
            depth_flags = Some(de.flags);
        }
        let w = work_for(
            scope,
            at,
            end - at,
            ae.flags,
            depth_flags,
            destination_zeroed,
        );
        split(w, chunk, &mut out);
        at = end;
        if at >= ae.offset + ae.length {
            a.next();
        }
    }
    out
}

/// Pushes `w`, data cut into pieces of at most `chunk` bytes (zeroes and skips whole).
fn split(w: Work, chunk: u64, out: &mut Vec<Work>) {
    let Work::Data { mut offset, length } = w else {
        merge(w, out);
        return;
    };
    let end = offset + length;
    while offset < end {
        let n = chunk.min(end - offset);
        out.push(Work::Data { offset, length: n });
        offset += n;
    }
}

/// Pushes a zero or skip piece, joined to the previous one of its kind when they touch.
fn merge(w: Work, out: &mut Vec<Work>) {
    match (out.last_mut(), w) {
        (
            Some(Work::Zero { offset, length }),
            Work::Zero {
                offset: o,
                length: l,
            },
        )
        | (
            Some(Work::Skip { offset, length }),
            Work::Skip {
                offset: o,
                length: l,
            },
        ) if *offset + *length == o => *length += l,
        _ => out.push(w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u64, length: u64, flags: u32) -> Extent {
        Extent {
            offset,
            length,
            flags,
        }
    }

    const HOLE: u32 = proto::STATE_HOLE | proto::STATE_ZERO;

    #[test]
    fn a_whole_image_copies_data_in_chunks_and_skips_zeroes_on_a_fresh_destination() {
        let alloc = [e(0, 5, 0), e(5, 10, HOLE), e(15, 2, proto::STATE_ZERO)];
        assert_eq!(
            plan(Scope::Whole, &alloc, &[], true, 2),
            [
                Work::Data {
                    offset: 0,
                    length: 2
                },
                Work::Data {
                    offset: 2,
                    length: 2
                },
                Work::Data {
                    offset: 4,
                    length: 1
                },
                Work::Skip {
                    offset: 5,
                    length: 12
                },
            ]
        );
        assert_eq!(
            plan(Scope::Whole, &alloc, &[], false, 8),
            [
                Work::Data {
                    offset: 0,
                    length: 5
                },
                Work::Zero {
                    offset: 5,
                    length: 12
                },
            ],
            "a destination that may hold old bytes gets its zeroes written"
        );
    }

    #[test]
    fn a_layer_copies_what_it_holds_its_zeroes_included_and_nothing_else() {
        // The layer holds 0..4 (data 0..2, zeroes 2..4); 4..8 comes from the backing; 8..10 nowhere.
        let alloc = [
            e(0, 2, 0),
            e(2, 2, proto::STATE_ZERO),
            e(4, 4, 0),
            e(8, 2, HOLE),
        ];
        let depth = [e(0, 4, 1), e(4, 4, 2), e(8, 2, 0)];
        assert_eq!(
            plan(Scope::LayerOnly, &alloc, &depth, true, 16),
            [
                Work::Data {
                    offset: 0,
                    length: 2
                },
                Work::Zero {
                    offset: 2,
                    length: 2
                },
                Work::Skip {
                    offset: 4,
                    length: 6
                },
            ]
        );
    }

    #[test]
    fn extents_that_do_not_line_up_are_cut_where_either_changes() {
        let alloc = [e(0, 10, 0)];
        let depth = [e(0, 3, 1), e(3, 4, 2), e(7, 3, 1)];
        assert_eq!(
            plan(Scope::LayerOnly, &alloc, &depth, false, 16),
            [
                Work::Data {
                    offset: 0,
                    length: 3
                },
                Work::Skip {
                    offset: 3,
                    length: 4
                },
                Work::Data {
                    offset: 7,
                    length: 3
                },
            ]
        );
        // The depth described less than the allocation: the plan stops where it stops.
        let short = [e(0, 6, 1)];
        assert_eq!(
            plan(Scope::LayerOnly, &alloc, &short, false, 16),
            [Work::Data {
                offset: 0,
                length: 6
            }]
        );
    }
}
