//! A minimal HTTP CONNECT proxy on loopback, as a hospital's outbound proxy would behave:
//! it answers CONNECT with 200 and then copies bytes both ways. It counts the tunnels it
//! opened, and can be told to refuse.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub address: String,
    pub tunnels: Arc<AtomicUsize>,
    pub targets: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proxy {
    pub async fn start(refuse: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, g) = (tunnels.clone(), targets.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (t, g) = (t.clone(), g.clone());
                tokio::spawn(async move {
                    let _ = tunnel(client, refuse, t, g).await;
                });
            }
        });
        Self { address, tunnels, targets }
    }

    pub fn tunnel_count(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }
}

async fn tunnel(
    mut client: TcpStream,
    refuse: bool,
    tunnels: Arc<AtomicUsize>,
    targets: Arc<std::sync::Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    while !header.ends_with(b"\r\n\r\n") && header.len() < 8192 {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        header.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&header).to_string();
    let mut first = text.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or_default(), first.next().unwrap_or_default().to_string());
    if method != "CONNECT" || refuse || !target.starts_with("127.0.0.1:") {
        client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(&target).await?;
    targets.lock().unwrap().push(target);
    tunnels.fetch_add(1, Ordering::SeqCst);
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
