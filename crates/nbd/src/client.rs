//! The transmission phase: requests go out through one writer task (so a caller that gives up on a
//! call can never leave half a request on the socket) and replies come back, in any order, to one
//! reader task that hands each to its caller by cookie. Many requests may be in flight at once.
use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixStream,
    },
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    error::{NbdError, Result},
    handshake::{handshake, Export},
    proto::{self, Chunk, Request},
};

/// One extent of one metadata context, as block status reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Where it starts in the export.
    pub offset: u64,
    /// How long it is.
    pub length: u64,
    /// The context's flags (for `base:allocation`: [`proto::STATE_HOLE`], [`proto::STATE_ZERO`];
    /// for `qemu:allocation-depth`: the depth, 0 for unallocated in the whole chain).
    pub flags: u32,
}

/// The extents block status reported for one metadata context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextExtents {
    /// The context's name, e.g. `base:allocation`.
    pub context: String,
    /// Its extents, consecutive from the request's offset.
    pub extents: Vec<Extent>,
}

/// The largest payload sent or asked for when the server did not say (the spec's default).
const DEFAULT_MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// A connected NBD session in transmission.
pub struct Client {
    export: Export,
    requests: mpsc::Sender<Outgoing>,
    pending: Arc<Mutex<Pending>>,
    cookies: AtomicU64,
    reader: JoinHandle<()>,
    /// Taken by [`Client::disconnect`] to wait for the last request to be written.
    writer: Option<JoinHandle<()>>,
}

/// A request on its way to the writer task.
struct Outgoing {
    header: [u8; Request::SIZE],
    payload: Option<Vec<u8>>,
    /// Where the payload's buffer goes once written, for the caller to use again.
    give_back: Option<oneshot::Sender<Vec<u8>>>,
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    /// Set once the session ended: no new request is taken.
    closed: bool,
}

struct Waiter {
    kind: Kind,
    /// The first error a chunk reported; the reply ends with it.
    error: Option<NbdError>,
    tx: oneshot::Sender<Result<Reply>>,
}

enum Kind {
    Read {
        offset: u64,
        buf: Vec<u8>,
        /// The ranges the chunks filled: a reply whose chunks do not cover the whole read is
        /// refused, so a reused buffer's old bytes can never pass for data.
        covered: Vec<std::ops::Range<usize>>,
    },
    BlockStatus {
        offset: u64,
        extents: Vec<(u32, Vec<Extent>)>,
    },
    Other,
}

enum Reply {
    Data(Vec<u8>),
    Extents(Vec<(u32, Vec<Extent>)>),
    Done,
}

impl Client {
    /// Connects to the server on the Unix socket `path`, selects `export` and the metadata
    /// `contexts` (`base:allocation`, `qemu:allocation-depth`, …: those the server does not know are
    /// simply not selected).
    pub async fn connect(path: impl AsRef<Path>, export: &str, contexts: &[&str]) -> Result<Self> {
        let mut stream = UnixStream::connect(path).await?;
        let export = handshake(&mut stream, export, contexts).await?;
        let (read, write) = stream.into_split();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (requests, outgoing) = mpsc::channel(64);
        let writer = tokio::spawn(write_requests(write, outgoing, pending.clone()));
        let reader = tokio::spawn(read_replies(read, pending.clone()));
        Ok(Self {
            export,
            requests,
            pending,
            cookies: AtomicU64::new(1),
            reader,
            writer: Some(writer),
        })
    }

    /// What the handshake settled.
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.export.size
    }

    /// The largest request payload the server takes.
    pub fn max_payload(&self) -> u32 {
        self.export
            .block_sizes
            .map_or(DEFAULT_MAX_PAYLOAD, |(_, _, max)| {
                max.min(DEFAULT_MAX_PAYLOAD)
            })
    }

    /// Reads `length` bytes at `offset` (holes come back as zeroes).
    pub async fn read(&self, offset: u64, length: u32) -> Result<Vec<u8>> {
        self.read_into(offset, length, Vec::new()).await
    }

    /// [`Client::read`] into `buf`, reused (resized to `length`): a copier that reads and writes
    /// the same few buffers over and over spares the allocator and the page faults of fresh ones.
    pub async fn read_into(&self, offset: u64, length: u32, mut buf: Vec<u8>) -> Result<Vec<u8>> {
        self.check_range(offset, length)?;
        buf.resize(length as usize, 0);
        let kind = Kind::Read {
            offset,
            buf,
            covered: Vec::new(),
        };
        match self
            .call(proto::CMD_READ, 0, offset, length, None, None, kind)
            .await?
        {
            Reply::Data(buf) => Ok(buf),
            _ => Err(NbdError::Protocol("a read answered without data".into())),
        }
    }

    /// Writes `data` at `offset`.
    pub async fn write(&self, offset: u64, data: Vec<u8>) -> Result<()> {
        self.write_buf(offset, data).await.map(drop)
    }

    /// [`Client::write`], giving the buffer back once the write is done, to be used again.
    pub async fn write_buf(&self, offset: u64, data: Vec<u8>) -> Result<Vec<u8>> {
        self.writable()?;
        let length = u32::try_from(data.len())
            .map_err(|_| NbdError::Unsupported("a write over 4 GiB".into()))?;
        self.check_range(offset, length)?;
        let (give_back, back) = oneshot::channel();
        self.call(
            proto::CMD_WRITE,
            0,
            offset,
            length,
            Some(data),
            Some(give_back),
            Kind::Other,
        )
        .await?;
        // Written before its reply could come: the writer task has handed it back already.
        Ok(back.await.unwrap_or_default())
    }

    /// Writes zeroes over `length` bytes at `offset`; `allocate` forbids punching a hole (for a
    /// preallocated destination).
    pub async fn write_zeroes(&self, offset: u64, length: u32, allocate: bool) -> Result<()> {
        self.writable()?;
        if self.export.flags & proto::FLAG_SEND_WRITE_ZEROES == 0 {
            return Err(NbdError::Unsupported("NBD_CMD_WRITE_ZEROES".into()));
        }
        self.check_end(offset, u64::from(length))?;
        let flags = if allocate { proto::CMD_FLAG_NO_HOLE } else { 0 };
        self.call(
            proto::CMD_WRITE_ZEROES,
            flags,
            offset,
            length,
            None,
            None,
            Kind::Other,
        )
        .await
        .map(drop)
    }

    /// Makes every write completed so far durable.
    pub async fn flush(&self) -> Result<()> {
        if self.export.flags & proto::FLAG_SEND_FLUSH == 0 {
            return Err(NbdError::Unsupported("NBD_CMD_FLUSH".into()));
        }
        self.call(proto::CMD_FLUSH, 0, 0, 0, None, None, Kind::Other)
            .await
            .map(drop)
    }

    /// The extents of every selected context over `length` bytes at `offset` (the server may
    /// describe less than asked: the extents say how far).
    pub async fn block_status(&self, offset: u64, length: u32) -> Result<Vec<ContextExtents>> {
        if self.export.contexts.is_empty() {
            return Err(NbdError::Unsupported(
                "block status without a selected metadata context".into(),
            ));
        }
        self.check_end(offset, u64::from(length))?;
        let kind = Kind::BlockStatus {
            offset,
            extents: Vec::new(),
        };
        let Reply::Extents(by_id) = self
            .call(proto::CMD_BLOCK_STATUS, 0, offset, length, None, None, kind)
            .await?
        else {
            return Err(NbdError::Protocol(
                "block status answered without extents".into(),
            ));
        };
        by_id
            .into_iter()
            .map(|(id, extents)| {
                let context = self
                    .export
                    .contexts
                    .iter()
                    .find_map(|(name, cid)| (*cid == id).then(|| name.clone()))
                    .ok_or_else(|| {
                        NbdError::Protocol(format!("block status for unknown context id {id}"))
                    })?;
                Ok(ContextExtents { context, extents })
            })
            .collect()
    }

    /// Ends the session cleanly (`NBD_CMD_DISC`, which has no reply; the writer stops after it).
    pub async fn disconnect(mut self) -> Result<()> {
        let header = Request {
            flags: 0,
            command: proto::CMD_DISC,
            cookie: 0,
            offset: 0,
            length: 0,
        }
        .encode();
        let sent = self
            .requests
            .send(Outgoing {
                header,
                payload: None,
                give_back: None,
            })
            .await;
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
        sent.map_err(|_| NbdError::Closed)
    }

    fn writable(&self) -> Result<()> {
        if self.export.flags & proto::FLAG_READ_ONLY != 0 {
            return Err(NbdError::Unsupported(
                "a write to a read-only export".into(),
            ));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, length: u32) -> Result<()> {
        if length > self.max_payload() {
            return Err(NbdError::Unsupported(format!(
                "a payload of {length} bytes (the server takes {} at most)",
                self.max_payload()
            )));
        }
        self.check_end(offset, u64::from(length))
    }

    fn check_end(&self, offset: u64, length: u64) -> Result<()> {
        match offset.checked_add(length) {
            Some(end) if end <= self.export.size => Ok(()),
            _ => Err(NbdError::Unsupported(format!(
                "{length} bytes at {offset}: past the end of the export ({} bytes)",
                self.export.size
            ))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: Option<Vec<u8>>,
        give_back: Option<oneshot::Sender<Vec<u8>>>,
        kind: Kind,
    ) -> Result<Reply> {
        let cookie = self.cookies.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().expect("pending lock");
            if pending.closed {
                return Err(NbdError::Closed);
            }
            pending.waiters.insert(
                cookie,
                Waiter {
                    kind,
                    error: None,
                    tx,
                },
            );
        }
        let header = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        }
        .encode();
        let outgoing = Outgoing {
            header,
            payload,
            give_back,
        };
        if self.requests.send(outgoing).await.is_err() {
            self.pending
                .lock()
                .expect("pending lock")
                .waiters
                .remove(&cookie);
            return Err(NbdError::Closed);
        }
        rx.await.map_err(|_| NbdError::Closed)?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(w) = &self.writer {
            w.abort();
        }
    }
}

/// Writes requests in the order they come until `NBD_CMD_DISC` is written, every sender is gone or
/// the socket fails.
async fn write_requests(
    mut socket: OwnedWriteHalf,
    mut requests: mpsc::Receiver<Outgoing>,
    pending: Arc<Mutex<Pending>>,
) {
    while let Some(r) = requests.recv().await {
        let mut written = socket.write_all(&r.header).await;
        if let (Ok(()), Some(p)) = (&written, &r.payload) {
            written = socket.write_all(p).await;
        }
        if let Err(e) = written {
            tracing::debug!(error = %e, "NBD socket write failed");
            close(&pending);
            return;
        }
        if let (Some(back), Some(p)) = (r.give_back, r.payload) {
            let _ = back.send(p);
        }
        if proto::u16_at(&r.header, 6) == proto::CMD_DISC {
            break;
        }
    }
    let _ = socket.shutdown().await;
}

/// Fails every waiting call and refuses new ones.
fn close(pending: &Mutex<Pending>) {
    let mut p = pending.lock().expect("pending lock");
    p.closed = true;
    for (_, w) in p.waiters.drain() {
        let _ = w.tx.send(Err(NbdError::Closed));
    }
}

/// Reads replies until the socket ends or the server breaks the protocol, then fails whatever
/// still waits.
async fn read_replies(mut socket: OwnedReadHalf, pending: Arc<Mutex<Pending>>) {
    if let Err(e) = reply_loop(&mut socket, &pending).await {
        tracing::debug!(error = %e, "NBD session ended");
    }
    close(&pending);
}

async fn reply_loop(socket: &mut OwnedReadHalf, pending: &Mutex<Pending>) -> Result<()> {
    loop {
        let magic = socket.read_u32().await?;
        match magic {
            proto::SIMPLE_REPLY_MAGIC => {
                let errno = socket.read_u32().await?;
                let cookie = socket.read_u64().await?;
                let mut w = take(pending, cookie)?;
                let reply = if errno != 0 {
                    Err(NbdError::Server {
                        errno,
                        message: String::new(),
                    })
                } else if let Kind::Read { buf, .. } = &mut w.kind {
                    socket.read_exact(buf).await?;
                    Ok(Reply::Data(std::mem::take(buf)))
                } else {
                    Ok(Reply::Done)
                };
                let _ = w.tx.send(reply);
            }
            proto::STRUCTURED_REPLY_MAGIC => {
                let mut b = [0u8; Chunk::SIZE];
                socket.read_exact(&mut b).await?;
                let chunk = Chunk::decode(&b);
                let mut w = take(pending, chunk.cookie)?;
                read_chunk(socket, &chunk, &mut w).await?;
                if chunk.done() {
                    let reply = match (w.error.take(), w.kind) {
                        (Some(e), _) => Err(e),
                        (None, Kind::Read { buf, covered, .. })
                            if union_len(&covered) == buf.len() =>
                        {
                            Ok(Reply::Data(buf))
                        }
                        (None, Kind::Read { buf, .. }) => Err(NbdError::Protocol(format!(
                            "a read of {} bytes answered in part",
                            buf.len()
                        ))),
                        (None, Kind::BlockStatus { extents, .. }) => Ok(Reply::Extents(extents)),
                        (None, Kind::Other) => Ok(Reply::Done),
                    };
                    let _ = w.tx.send(reply);
                } else {
                    pending
                        .lock()
                        .expect("pending lock")
                        .waiters
                        .insert(chunk.cookie, w);
                }
            }
            m => return Err(NbdError::Protocol(format!("bad reply magic {m:#x}"))),
        }
    }
}

/// The waiter for `cookie`; a reply to no request breaks the session.
fn take(pending: &Mutex<Pending>, cookie: u64) -> Result<Waiter> {
    pending
        .lock()
        .expect("pending lock")
        .waiters
        .remove(&cookie)
        .ok_or_else(|| NbdError::Protocol(format!("a reply to unknown cookie {cookie}")))
}

/// Reads one chunk's payload into its waiter.
async fn read_chunk(socket: &mut OwnedReadHalf, chunk: &Chunk, w: &mut Waiter) -> Result<()> {
    let len = chunk.length as usize;
    match (chunk.kind, &mut w.kind) {
        (proto::REPLY_TYPE_NONE, _) if len == 0 => Ok(()),
        (
            proto::REPLY_TYPE_OFFSET_DATA,
            Kind::Read {
                offset,
                buf,
                covered,
            },
        ) if len >= 8 => {
            let at = socket.read_u64().await?;
            let range = slot(*offset, buf.len(), at, (len - 8) as u64)?;
            covered.push(range.clone());
            socket.read_exact(&mut buf[range]).await?;
            Ok(())
        }
        (
            proto::REPLY_TYPE_OFFSET_HOLE,
            Kind::Read {
                offset,
                buf,
                covered,
            },
        ) if len == 12 => {
            let at = socket.read_u64().await?;
            let size = socket.read_u32().await?;
            let range = slot(*offset, buf.len(), at, u64::from(size))?;
            covered.push(range.clone());
            buf[range].fill(0);
            Ok(())
        }
        (proto::REPLY_TYPE_BLOCK_STATUS, Kind::BlockStatus { offset, extents })
            if len >= 12 && (len - 4).is_multiple_of(8) =>
        {
            let mut payload = vec![0u8; len];
            socket.read_exact(&mut payload).await?;
            let id = proto::u32_at(&payload, 0);
            let mut at = *offset;
            let list = payload[4..]
                .chunks_exact(8)
                .map(|d| {
                    let length = u64::from(proto::u32_at(d, 0));
                    let e = Extent {
                        offset: at,
                        length,
                        flags: proto::u32_at(d, 4),
                    };
                    at += length;
                    e
                })
                .collect();
            extents.push((id, list));
            Ok(())
        }
        (kind, _) if kind & 0x8000 != 0 && len >= 6 => {
            let mut payload = vec![0u8; len];
            socket.read_exact(&mut payload).await?;
            let errno = proto::u32_at(&payload, 0);
            let msg_len = usize::from(proto::u16_at(&payload, 4)).min(len - 6);
            let message = String::from_utf8_lossy(&payload[6..6 + msg_len]).into_owned();
            w.error.get_or_insert(NbdError::Server { errno, message });
            Ok(())
        }
        (kind, _) => Err(NbdError::Protocol(format!(
            "an unexpected chunk of type {kind} and {len} bytes"
        ))),
    }
}

/// How many bytes `ranges` cover together (overlaps counted once).
fn union_len(ranges: &[std::ops::Range<usize>]) -> usize {
    let mut ranges = ranges.to_vec();
    ranges.sort_by_key(|r| r.start);
    let (mut total, mut end) = (0, 0);
    for r in ranges {
        let start = r.start.max(end);
        if r.end > start {
            total += r.end - start;
            end = r.end;
        }
    }
    total
}

/// Where `length` bytes at `at` fall in a buffer of `size` bytes read from `offset`; outside it
/// is a protocol error, never a panic.
fn slot(offset: u64, size: usize, at: u64, length: u64) -> Result<std::ops::Range<usize>> {
    let start = at.checked_sub(offset).map(|s| s as usize);
    match start {
        Some(s) if (s as u64).saturating_add(length) <= size as u64 => Ok(s..s + length as usize),
        _ => Err(NbdError::Protocol(format!(
            "a chunk of {length} bytes at {at} outside the read of {size} at {offset}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn overlapping_chunks_count_once() {
        assert_eq!(super::union_len(&[0..10, 5..15, 20..30]), 25);
        assert_eq!(super::union_len(&[0..2048, 0..2048]), 2048);
        assert_eq!(super::union_len(&[]), 0);
    }

    #[test]
    fn a_chunk_outside_its_read_is_refused() {
        assert_eq!(slot(4096, 8192, 4096, 8192).unwrap(), 0..8192);
        assert_eq!(slot(4096, 8192, 8192, 512).unwrap(), 4096..4608);
        assert!(slot(4096, 8192, 0, 512).is_err(), "before it");
        assert!(slot(4096, 8192, 8192, 8192).is_err(), "past its end");
        assert!(slot(0, 10, u64::MAX, 2).is_err(), "overflowing");
    }
}
