//! The server side of one client connection: a TCP stream that takes a short read as proof
//! that the socket is drained.
//!
//! Tokio learns that a socket has nothing more to read only from a read that fails with
//! `WouldBlock`. Under keep-alive load that is a third system call per request (read the
//! request, write the answer, read nothing), where Redis makes two. A read that returns fewer
//! bytes than were asked for has emptied the kernel's receive queue, so this stream clears
//! its read readiness right there and waits for the next epoll edge instead. Tokio clears
//! only the readiness it saw before the read: bytes that arrive in between keep the socket
//! readable and are read next, never lost (benches/README.md has the numbers).
//!
//! Reads and writes only the socket it owns.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, Ready};

pub struct ClientSocket {
    fd: AsyncFd<TcpStream>,
}

impl ClientSocket {
    /// Takes the stream over from tokio's reactor registration.
    pub fn new(stream: tokio::net::TcpStream) -> io::Result<ClientSocket> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        // SAFETY: the std stream owns its descriptor, keeps it open until this socket is
        // dropped, and `as_raw_fd` always returns that one descriptor.
        let fd = unsafe { AsyncFd::register(stream) }?;
        Ok(ClientSocket { fd })
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let asked = unfilled.len();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(read)) => {
                    // zero is the peer's end of stream: that readiness must stay
                    if read > 0 && read < asked {
                        guard.clear_ready_matching(Ready::READABLE);
                    }
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                // `WouldBlock`: readiness is cleared, wait for the next edge
                Err(_) => continue,
            }
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            if let Ok(result) = guard.try_io(|fd| fd.get_ref().write(buf)) {
                return Poll::Ready(result);
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            if let Ok(result) = guard.try_io(|fd| fd.get_ref().write_vectored(bufs)) {
                return Poll::Ready(result);
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // writes go straight to the socket
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.fd.get_ref().shutdown(Shutdown::Write))
    }
}
