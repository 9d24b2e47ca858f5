//! The response write timeout (issue 12): a connection wrapper that fails a write which has made
//! no progress for `proxy.timeouts.write_stall_secs`, so a client that stops reading cannot pin
//! its key's concurrency permit and an upstream slot for ever.
//!
//! The clock runs only while the socket refuses bytes (a write returned `Pending`), and any byte
//! it accepts stops it. A slow but steady reader therefore never trips it, and neither does a
//! long wait for the upstream (nothing is being written then). When it fires, the write fails
//! with `TimedOut`: hyper ends the connection, which drops the response body and with it the
//! permits it holds; the shared [`StallFlag`] tells that body's audit record why.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

/// Raised once the connection was cut for a stalled client.
#[derive(Debug, Default)]
pub struct StallFlag(AtomicBool);

impl StallFlag {
    pub fn stalled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pub struct WriteStall<T> {
    inner: T,
    limit: Duration,
    /// Armed at the first refused write, disarmed by progress.
    deadline: Option<Pin<Box<Sleep>>>,
    flag: Arc<StallFlag>,
    /// Counted when the limit fires, before the cut response's record is written, so a reader
    /// of that record finds the count already there.
    stalls: Counter,
}

impl<T> WriteStall<T> {
    pub fn new(inner: T, limit: Duration, stalls: Counter) -> (WriteStall<T>, Arc<StallFlag>) {
        let flag = Arc::new(StallFlag::default());
        let wrapped = WriteStall {
            inner,
            limit,
            deadline: None,
            flag: flag.clone(),
            stalls,
        };
        (wrapped, flag)
    }

    /// Passes `polled` through, running the clock while it is `Pending`.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.deadline = None;
            return polled;
        }
        let limit = self.limit;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        // Registers the waker, so the task is polled again when the limit passes.
        ready!(deadline.as_mut().poll(cx));
        self.deadline = None;
        if !self.flag.0.swap(true, Ordering::AcqRel) {
            self.stalls.inc();
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client accepted no response bytes within the write stall limit",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStall<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_reader_that_stops_is_cut_and_a_steady_one_is_not() {
        // A 64-byte pipe: the writer blocks as soon as the reader falls behind.
        let (near, mut far) = tokio::io::duplex(64);
        let stalls = Counter::default();
        let (mut writer, flag) = WriteStall::new(near, Duration::from_secs(2), stalls.clone());
        let chunk = [7u8; 64];
        // Steady: the reader takes a chunk every 50 ms, far under the limit, while the writer
        // keeps the pipe full.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 64 * 10 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                got += far.read(&mut buf).await.unwrap();
            }
            far
        });
        for _ in 0..10 {
            writer.write_all(&chunk).await.unwrap();
        }
        let _far = reader.await.unwrap();
        assert!(!flag.stalled());
        assert_eq!(stalls.get(), 0);
        // Now nobody reads: the pipe fills and the next write fails after the limit.
        writer.write_all(&chunk).await.unwrap();
        let err = writer.write_all(&chunk).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(flag.stalled());
        assert_eq!(stalls.get(), 1);
    }
}
