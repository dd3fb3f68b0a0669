//! Dialling out through an HTTP proxy with HTTP CONNECT, as hospital networks often require
//! for outbound traffic. The tunnel carries the gRPC connection unchanged.

use http::Uri;
use hyper_util::rt::TokioIo;
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest proxy response header accepted before the tunnel starts.
const MAX_RESPONSE_HEADER: usize = 16 * 1024;

/// `host:port` of a URI, with the scheme's default port when none is given.
pub fn authority_of(uri: &Uri) -> io::Result<String> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("address '{uri}' has no host")))?;
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    Ok(format!("{host}:{port}"))
}

/// Opens a TCP connection to `proxy` and asks it to tunnel to `target`.
pub async fn connect_via_proxy(proxy: &Uri, target: &Uri) -> io::Result<TokioIo<TcpStream>> {
    let proxy_addr = authority_of(proxy)?;
    let target_addr = authority_of(target)?;
    let mut stream = TcpStream::connect(&proxy_addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot reach proxy {proxy_addr}: {e}")))?;
    stream.set_nodelay(true)?;
    let request = format!("CONNECT {target_addr} HTTP/1.1\r\nHost: {target_addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;

    // Read the response header byte by byte so nothing of the tunnel is consumed.
    let mut header = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !header.ends_with(b"\r\n\r\n") {
        if header.len() >= MAX_RESPONSE_HEADER {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "proxy response header too long"));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("proxy {proxy_addr} closed the connection before answering CONNECT"),
            ));
        }
        header.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&header).lines().next().unwrap_or_default().to_string();
    let mut parts = status_line.split_whitespace();
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") || code != "200" {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("proxy {proxy_addr} refused to tunnel to {target_addr}: {status_line}"),
        ));
    }
    Ok(TokioIo::new(stream))
}
