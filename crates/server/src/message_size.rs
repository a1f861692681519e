//! The largest request message a server takes. tonic refuses one over its 4 MiB limit with
//! `OUT_OF_RANGE` and a bare message; this layer refuses it first, from the 5-byte gRPC frame header
//! before the message's bytes are buffered, with `RESOURCE_EXHAUSTED`, the reason
//! `MESSAGE_TOO_LARGE` and the limit in the `ErrorInfo` — a status a client can act on, as it can
//! on every other limit. The limit equals tonic's, so tonic's own check is never the one that fires.
use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};

/// The largest request message, in bytes: tonic's default decoding limit.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Wraps every request body in a [`SizedBody`] of at most `limit` bytes per message.
#[derive(Debug, Clone, Copy)]
pub struct MessageSizeLayer {
    limit: usize,
}

impl MessageSizeLayer {
    /// Messages of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl Default for MessageSizeLayer {
    fn default() -> Self {
        Self::new(MAX_MESSAGE_BYTES)
    }
}

impl<S> Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSize {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`MessageSizeLayer`].
#[derive(Debug, Clone)]
pub struct MessageSize<S> {
    inner: S,
    limit: usize,
}

impl<S, B> Service<http::Request<B>> for MessageSize<S>
where
    S: Service<http::Request<SizedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = self.limit;
        self.inner.call(req.map(|body| SizedBody::new(body, limit)))
    }
}

/// A request body that fails with `RESOURCE_EXHAUSTED` as soon as a gRPC frame header announces a
/// message over the limit; tonic's decoder hands that status to the caller as it stands.
#[derive(Debug)]
pub struct SizedBody<B> {
    inner: B,
    frames: FrameScanner,
}

impl<B> SizedBody<B> {
    fn new(inner: B, limit: usize) -> Self {
        Self {
            inner,
            frames: FrameScanner::new(limit),
        }
    }
}

impl<B> Body for SizedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            if let Err(len) = this.frames.scan(data.chunk()) {
                return Poll::Ready(Some(Err(Box::new(too_large(len, this.frames.limit)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn too_large(len: usize, limit: usize) -> tonic::Status {
    datapath_api::error::status_with_metadata(
        Code::ResourceExhausted,
        "MESSAGE_TOO_LARGE",
        format!("a request message of {len} bytes is over this server's limit of {limit} bytes"),
        &[
            ("limit_bytes", limit.to_string()),
            ("message_bytes", len.to_string()),
        ],
    )
}

/// Follows gRPC's length-prefixed framing (1 byte compressed flag, 4 bytes big-endian length, the
/// message) across data chunks of any size.
#[derive(Debug)]
struct FrameScanner {
    limit: usize,
    header: [u8; 5],
    header_len: usize,
    message_left: usize,
}

impl FrameScanner {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            header: [0; 5],
            header_len: 0,
            message_left: 0,
        }
    }

    /// Reads the next chunk; the announced length of a message over the limit is the error.
    fn scan(&mut self, mut chunk: &[u8]) -> Result<(), usize> {
        while !chunk.is_empty() {
            if self.message_left > 0 {
                let n = self.message_left.min(chunk.len());
                self.message_left -= n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (self.header.len() - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[..n]);
            self.header_len += n;
            chunk = &chunk[n..];
            if self.header_len == self.header.len() {
                self.header_len = 0;
                let [_, a, b, c, d] = self.header;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if len > self.limit {
                    return Err(len);
                }
                self.message_left = len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: usize) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len));
        v
    }

    #[test]
    fn messages_at_the_limit_pass_in_chunks_of_any_size() {
        let stream: Vec<u8> = [framed(10), framed(0), framed(10)].concat();
        for chunk in 1..stream.len() {
            let mut s = FrameScanner::new(10);
            for c in stream.chunks(chunk) {
                assert_eq!(s.scan(c), Ok(()), "chunk size {chunk}");
            }
        }
    }

    #[test]
    fn a_message_over_the_limit_fails_at_its_header_however_split() {
        let stream: Vec<u8> = [framed(3), framed(11)].concat();
        for chunk in 1..=13 {
            let mut s = FrameScanner::new(10);
            let got: Result<Vec<()>, usize> =
                stream[..13].chunks(chunk).map(|c| s.scan(c)).collect();
            assert_eq!(got, Err(11), "chunk size {chunk}");
        }
    }
}
