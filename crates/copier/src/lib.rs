//! The native copier's engine (issue 14): copies an image between two NBD exports — the source
//! read-only through its backing chain, the destination as the volume's format requires — reading
//! only what the source's block status says holds data, writing zeroes without a payload (or not at
//! all on a fresh sparse destination), several pieces in flight. It knows nothing of jobs, leases or
//! etcd: the host-worker runs it under the same lease, fencing and job protocol as `qemu-img`.
pub mod bandwidth;
pub mod blkhash;
mod engine;
pub mod plan;

pub use bandwidth::TokenBucket;
pub use engine::{copy, CopyError, CopyOptions, CopyStats, Failpoint, Progress};
pub use plan::Scope;
