//! The connection an [`Egress`](super::Egress) hands out ([`EgressStream`]: plain TCP, or
//! TLS to an `https://` proxy with the tunnel inside), and the HTTP CONNECT exchange that
//! opens a tunnel. What the proxy answers is read with care: it may close, stall, or send
//! something that is not HTTP; each is an [`EgressError`] naming the proxy.

use super::EgressError;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Longest proxy response header accepted before the tunnel starts.
const MAX_RESPONSE_HEADER: usize = 16 * 1024;

/// A connection to a destination, direct or through a proxy's tunnel; what is written to it
/// reaches the destination unchanged (TLS to the destination goes inside it).
pub struct EgressStream(Inner);

enum Inner {
    Tcp(TcpStream),
    /// TLS to an `https://` proxy; the tunnel runs inside this TLS session.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl EgressStream {
    pub(super) fn tcp(stream: TcpStream) -> Self {
        Self(Inner::Tcp(stream))
    }

    pub(super) fn tls(stream: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        Self(Inner::Tls(Box::new(stream)))
    }

    /// Whether the connection to the first hop (the proxy) is TLS.
    pub fn is_tls_to_proxy(&self) -> bool {
        matches!(self.0, Inner::Tls(_))
    }
}

impl std::fmt::Debug for EgressStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            Inner::Tcp(_) => "tcp",
            Inner::Tls(_) => "tls to the proxy",
        };
        f.debug_tuple("EgressStream").field(&kind).finish()
    }
}

impl AsyncRead for EgressStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for EgressStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            Inner::Tcp(s) => s.is_write_vectored(),
            Inner::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Asks the proxy (already connected as `stream`) for a tunnel to `target` (`host:port`).
/// `authorization` is the `Proxy-Authorization` value, if any. The caller bounds the time.
pub(super) async fn connect(
    mut stream: EgressStream,
    proxy: &str,
    target: &str,
    authorization: Option<&str>,
) -> Result<EgressStream, EgressError> {
    let io_error = |error: io::Error| EgressError::ProxyIo { proxy: proxy.to_string(), error };
    let mut request =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: verbund/{}\r\n", env!("CARGO_PKG_VERSION"));
    if let Some(value) = authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;

    // Read the response header byte by byte so that nothing of the tunnel is consumed.
    let mut header = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !header.ends_with(b"\r\n\r\n") {
        if header.len() >= MAX_RESPONSE_HEADER {
            return Err(EgressError::ProxyGarbage {
                proxy: proxy.into(),
                target: target.into(),
                what: format!("a response header longer than {} KiB", MAX_RESPONSE_HEADER / 1024),
            });
        }
        let n = stream.read(&mut byte).await.map_err(io_error)?;
        if n == 0 {
            return Err(EgressError::ProxyClosed { proxy: proxy.into(), target: target.into() });
        }
        header.push(byte[0]);
        // Anything but HTTP is refused at its first bytes, not after waiting for a blank line.
        if header.len() <= 5 && !b"HTTP/".starts_with(&header) {
            return Err(EgressError::ProxyGarbage {
                proxy: proxy.into(),
                target: target.into(),
                what: "an answer that is not HTTP".into(),
            });
        }
    }
    let text = String::from_utf8_lossy(&header);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) =
        (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let code = match (version.starts_with("HTTP/1."), code.parse::<u16>()) {
        (true, Ok(code)) if (100..600).contains(&code) => code,
        _ => {
            return Err(EgressError::ProxyGarbage {
                proxy: proxy.into(),
                target: target.into(),
                what: format!("a malformed status line '{}'", printable(status_line)),
            });
        }
    };
    match code {
        200..=299 => Ok(stream),
        407 => {
            // Which schemes the proxy offers (`Proxy-Authenticate: Basic realm=...`, `Negotiate`).
            let offered: Vec<String> = lines
                .filter_map(|line| line.split_once(':'))
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case("proxy-authenticate"))
                .filter_map(|(_, value)| value.split_whitespace().next().map(printable))
                .collect();
            let (proxy, target) = (proxy.to_string(), target.to_string());
            Err(match authorization {
                None => EgressError::ProxyAuthRequired { proxy, target, offered },
                Some(_) => EgressError::ProxyAuthRejected { proxy, target, offered },
            })
        }
        _ => Err(EgressError::ProxyRefused {
            proxy: proxy.into(),
            target: target.into(),
            status: code,
            reason: printable(reason),
        }),
    }
}

/// Text from the proxy as it may appear in a message: printable ASCII, at most 80 characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(80).collect()
}
