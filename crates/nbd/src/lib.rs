//! A small async NBD client for the host-worker's native copier: fixed newstyle handshake,
//! structured replies, `NBD_CMD_BLOCK_STATUS` on the contexts asked for (`base:allocation`,
//! `qemu:allocation-depth`), reads, writes, zero writes and flushes, many in flight on one socket.
//!
//! Written here rather than taken from the registry: `nbd` 0.3 is synchronous and has no
//! structured replies or block status, and `tokio-nbd` is GPL-2.0 while datapath is Apache-2.0.
//! It speaks to `qemu-nbd` / `qemu-storage-daemon` over a private Unix socket; it has no TLS and
//! no extended headers (64-bit lengths), which a copier over a local socket does not need.
mod client;
mod error;
mod handshake;
pub mod proto;
mod qemu_nbd;

pub use client::{Client, ContextExtents, Extent};
pub use error::{NbdError, Result};
pub use handshake::Export;
pub use qemu_nbd::QemuNbd;
