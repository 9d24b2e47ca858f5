//! The smuggling signatures hyper hides: a connection wrapper that notices, in the bytes as they
//! arrive, a request head carrying Content-Length together with Transfer-Encoding, or
//! Content-Length twice.
//!
//! hyper stays the parser. It handles both cases safely (it drops the Content-Length and reads
//! chunked, or folds identical lengths), but it removes the evidence before the request reaches
//! the pipeline, so the framing layer alone cannot answer them with 400. This wrapper only counts
//! header *names* at the start of each line, between blank lines, and raises a per-connection
//! flag the pipeline takes for the next request.
//!
//! What it sees is a superset of the heads: body lines are scanned too. A body line can raise the
//! flag only by starting with `Content-Length:` or `Transfer-Encoding:` twice or together before
//! a blank line; that is not JSON, so such a request is refused anyway. With pipelining, the flag
//! raised by a later request can be taken by an earlier one on the same connection; both are
//! then refused and the connection closes, which is the safe side.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared between the connection's reader and its requests.
#[derive(Debug, Default)]
pub struct FramingFlag(AtomicBool);

impl FramingFlag {
    /// True once if a head with ambiguous framing arrived since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }

    fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
}

const CONTENT_LENGTH: &[u8] = b"content-length";
const TRANSFER_ENCODING: &[u8] = b"transfer-encoding";
/// Longer than either name: a longer field name cannot be one of them.
const NAME_CAP: usize = TRANSFER_ENCODING.len() + 1;

/// The scanning state; survives reads split anywhere, even inside a name. Crate-visible for
/// the `framing_watch` fuzz target.
#[derive(Debug, Default)]
pub(crate) struct HeadScanner {
    name: [u8; NAME_CAP],
    name_len: usize,
    /// The current line can no longer be a field line of interest: skip to its end.
    skipping: bool,
    /// Any byte other than CR on this line, so a bare CRLF is told apart.
    line_has_content: bool,
    content_lengths: u8,
    transfer_encodings: u8,
}

impl HeadScanner {
    /// Returns true when a block that ended in `bytes` had ambiguous framing.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut ambiguous = false;
        while !bytes.is_empty() {
            if self.skipping {
                // Most bytes are values and bodies: jump to the next line.
                match memchr::memchr(b'\n', bytes) {
                    Some(at) => {
                        ambiguous |= self.end_line();
                        bytes = &bytes[at + 1..];
                    }
                    None => return ambiguous,
                }
                continue;
            }
            let byte = bytes[0];
            bytes = &bytes[1..];
            match byte {
                b'\n' => ambiguous |= self.end_line(),
                b'\r' => {}
                b':' => {
                    self.line_has_content = true;
                    self.count_name();
                    self.skipping = true;
                }
                _ => {
                    self.line_has_content = true;
                    if self.name_len == NAME_CAP {
                        self.skipping = true;
                    } else {
                        self.name[self.name_len] = byte.to_ascii_lowercase();
                        self.name_len += 1;
                    }
                }
            }
        }
        ambiguous
    }

    fn count_name(&mut self) {
        let name = &self.name[..self.name_len];
        if name == CONTENT_LENGTH {
            self.content_lengths = self.content_lengths.saturating_add(1);
        } else if name == TRANSFER_ENCODING {
            self.transfer_encodings = self.transfer_encodings.saturating_add(1);
        }
    }

    /// A line ended; a line without content ends the block.
    fn end_line(&mut self) -> bool {
        let block_ended = !self.line_has_content;
        self.name_len = 0;
        self.skipping = false;
        self.line_has_content = false;
        if !block_ended {
            return false;
        }
        let ambiguous =
            self.content_lengths > 1 || (self.content_lengths > 0 && self.transfer_encodings > 0);
        self.content_lengths = 0;
        self.transfer_encodings = 0;
        ambiguous
    }
}

/// A connection whose incoming bytes pass the scanner before hyper reads them.
pub struct FramingWatch<S> {
    inner: S,
    scanner: HeadScanner,
    flag: Arc<FramingFlag>,
}

impl<S> FramingWatch<S> {
    pub fn new(inner: S) -> (FramingWatch<S>, Arc<FramingFlag>) {
        let flag = Arc::new(FramingFlag::default());
        let watch = FramingWatch {
            inner,
            scanner: HeadScanner::default(),
            flag: flag.clone(),
        };
        (watch, flag)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingWatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if this.scanner.feed(&buf.filled()[before..]) {
                this.flag.raise();
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingWatch<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ambiguous(wire: &str) -> bool {
        HeadScanner::default().feed(wire.as_bytes())
    }

    #[test]
    fn table() {
        let cases: &[(&str, bool)] = &[
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", false),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", false),
            ("POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", true),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", true),
            ("POST / HTTP/1.1\r\ncontent-length: 2\r\nCONTENT-LENGTH: 2\r\n\r\n{}", true),
            ("POST / HTTP/1.1\nContent-Length: 2\nTransfer-Encoding: chunked\n\n", true),
            // Names that merely contain or extend the two are other fields.
            ("POST / HTTP/1.1\r\nX-Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", false),
            ("POST / HTTP/1.1\r\nContent-Lengthy: 2\r\nContent-Length: 2\r\n\r\n{}", false),
            // A value that looks like a field is not a field.
            ("GET / HTTP/1.1\r\nX-A: Content-Length: 1\r\nContent-Length: 0\r\n\r\n", false),
            // Two requests on one connection, each with one length.
            (
                "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                false,
            ),
            // A JSON body never looks like a field line.
            (
                "POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"content-length\":1,\r\n\"transfer-encoding\":2}",
                false,
            ),
        ];
        for (wire, expected) in cases {
            assert_eq!(ambiguous(wire), *expected, "{wire:?}");
        }
    }

    #[test]
    fn reads_split_anywhere_give_the_same_answer() {
        let wire = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        for split in 0..wire.len() {
            let mut scanner = HeadScanner::default();
            let seen = scanner.feed(&wire[..split]) | scanner.feed(&wire[split..]);
            assert!(seen, "split at {split}");
        }
        let mut scanner = HeadScanner::default();
        let one_by_one = wire.iter().fold(false, |seen, byte| {
            seen | scanner.feed(std::slice::from_ref(byte))
        });
        assert!(one_by_one);
    }

    #[test]
    fn the_flag_is_taken_once() {
        let flag = FramingFlag::default();
        assert!(!flag.take());
        flag.raise();
        assert!(flag.take());
        assert!(!flag.take());
    }
}
