//! The stream an SMTP connection is handed to lettre as: plain TCP (upgraded by lettre at STARTTLS) or implicit TLS
//! made here (lettre's own would resolve the host name again; this way the connection goes to the address the guard
//! checked). It bounds what the server may send between two writes of the client: lettre reads a reply line until
//! its newline with no limit, so a server streaming a reply without line end would fill the worker's memory within
//! the I/O timeout.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The most a server may send without the client writing in between: a reply to one command (an EHLO's extensions,
/// a multi-line error) is a few kilobytes; RFC 5321 lines are at most 512 bytes.
pub const MAX_UNANSWERED_BYTES: usize = 1024 * 1024;

enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub struct ServerStream {
    transport: Transport,
    /// Bytes read since the client last wrote.
    unanswered: usize,
    /// Where the reply to STARTTLS stands, once the client sent it.
    starttls: Option<TlsReply>,
}

/// The reply to STARTTLS as it is read: nothing may follow its last line before the TLS handshake. lettre reads
/// replies through a buffer it keeps across the upgrade, so plaintext bytes injected after `220` (by anyone on the
/// path) would be read as the server's encrypted answer to the next EHLO.
#[derive(Clone, Copy, Default)]
struct TlsReply {
    /// Bytes into the current line.
    column: usize,
    /// The current line is the reply's last (`220 `, not `220-`).
    last_line: bool,
    /// The last line has ended: the handshake comes next.
    done: bool,
}

impl TlsReply {
    /// Follows `read` through the reply; an error when bytes follow its end in the same read.
    fn follow(&mut self, read: &[u8]) -> std::io::Result<()> {
        for byte in read {
            if self.done {
                return Err(std::io::Error::other("the server sent data before the TLS handshake"));
            }
            match byte {
                b'\n' => {
                    self.done = self.last_line;
                    self.column = 0;
                }
                b' ' if self.column == 3 => {
                    self.last_line = true;
                    self.column += 1;
                }
                _ => self.column += 1,
            }
        }
        Ok(())
    }
}

impl ServerStream {
    pub fn plain(tcp: TcpStream) -> ServerStream {
        ServerStream { transport: Transport::Plain(tcp), unanswered: 0, starttls: None }
    }

    pub fn tls(tls: TlsStream<TcpStream>) -> ServerStream {
        ServerStream { transport: Transport::Tls(Box::new(tls)), unanswered: 0, starttls: None }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.transport {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.get_ref().0,
        }
    }

    fn io(&mut self) -> Pin<&mut (dyn AsyncReadWrite + Unpin + Send + Sync)> {
        match &mut self.transport {
            Transport::Plain(tcp) => Pin::new(tcp),
            Transport::Tls(tls) => Pin::new(tls.as_mut()),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncReadWrite for T {}

impl fmt::Debug for ServerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tls = matches!(self.transport, Transport::Tls(_));
        f.debug_struct("ServerStream").field("peer", &self.tcp().peer_addr().ok()).field("implicit_tls", &tls).finish()
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = this.io().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            this.unanswered = this.unanswered.saturating_add(read.len());
            if let Some(reply) = this.starttls.as_mut().filter(|reply| !reply.done) {
                reply.follow(read)?;
            }
            if this.unanswered > MAX_UNANSWERED_BYTES {
                return Poll::Ready(Err(std::io::Error::other(format!(
                    "the server sent more than {MAX_UNANSWERED_BYTES} bytes without an answer from the client"
                ))));
            }
        }
        polled
    }
}

// Vectored writes are left to tokio's default, which goes through `poll_write`: every write passes its accounting.
impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = this.io().poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            if written > 0 {
                this.unanswered = 0;
            }
            if matches!(this.transport, Transport::Plain(_)) && buf.eq_ignore_ascii_case(b"STARTTLS\r\n") {
                this.starttls = Some(TlsReply::default());
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().io().poll_shutdown(cx)
    }
}

impl AsyncTokioStream for ServerStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr()
    }
}
