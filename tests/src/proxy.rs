//! A loopback HTTP CONNECT proxy, as a hospital's outbound proxy behaves: it answers CONNECT
//! with 200 and then copies bytes both ways. It can ask for Basic credentials, speak TLS
//! itself (an `https://` proxy with a certificate from the hospital's own CA), refuse,
//! stall, or answer something that is not HTTP. It counts the connections and tunnels it
//! saw, records the tunnels' targets, and tunnels only to 127.0.0.1.

use base64::Engine;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use verbund_security::tls::TlsFiles;

/// What the proxy does with a CONNECT request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Opens the tunnel (after checking credentials, if it asks for them).
    #[default]
    Tunnel,
    /// Answers 403.
    Refuse,
    /// Reads the request and never answers.
    Stall,
    /// Answers with an SSH banner and keeps the connection open.
    Garbage,
}

pub struct Proxy {
    /// `http://127.0.0.1:port` or `https://127.0.0.1:port`.
    pub address: String,
    pub tunnels: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    pub targets: Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Default)]
pub struct ProxyBuilder {
    behaviour: Behaviour,
    /// The expected `Proxy-Authorization` value.
    authorization: Option<String>,
    tls: Option<TlsFiles>,
}

impl ProxyBuilder {
    pub fn behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// Asks for these Basic credentials (407 without them or with others).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {encoded}"));
        self
    }

    /// Speaks TLS with this certificate (an `https://` proxy).
    pub fn tls(mut self, files: &TlsFiles) -> Self {
        self.tls = Some(files.clone());
        self
    }

    pub async fn start(self) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = self.tls.as_ref().map(|files| {
            let (config, _) =
                verbund_security::tls::server_config(files, verbund_security::tls::ClientAuth::None).unwrap();
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let proxy = Proxy {
            address: format!("{scheme}://127.0.0.1:{port}"),
            tunnels: Arc::default(),
            connections: Arc::default(),
            targets: Arc::default(),
        };
        let state = Arc::new(State {
            behaviour: self.behaviour,
            authorization: self.authorization,
            tunnels: proxy.tunnels.clone(),
            targets: proxy.targets.clone(),
        });
        let connections = proxy.connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let (state, acceptor) = (state.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let _ = match acceptor {
                        None => serve(client, &state).await,
                        Some(acceptor) => match acceptor.accept(client).await {
                            Ok(tls) => serve(tls, &state).await,
                            Err(_) => Ok(()),
                        },
                    };
                });
            }
        });
        proxy
    }
}

impl Proxy {
    /// An open proxy over plain TCP (or one that refuses every tunnel).
    pub async fn start(refuse: bool) -> Self {
        let behaviour = if refuse { Behaviour::Refuse } else { Behaviour::Tunnel };
        Self::builder().behaviour(behaviour).start().await
    }

    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    pub fn url(&self) -> verbund_security::settings::Uri {
        self.address.parse().unwrap()
    }

    pub fn tunnel_count(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }

    /// Connections accepted, whatever became of them.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn saw_target(&self, target: &str) -> bool {
        self.targets.lock().unwrap().iter().any(|t| t == target)
    }
}

struct State {
    behaviour: Behaviour,
    authorization: Option<String>,
    tunnels: Arc<AtomicUsize>,
    targets: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut client: S, state: &State) -> std::io::Result<()> {
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    while !header.ends_with(b"\r\n\r\n") && header.len() < 8192 {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        header.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&header).to_string();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or_default(), first.next().unwrap_or_default().to_string());
    let authorization = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, value)| value.trim().to_string());
    match state.behaviour {
        Behaviour::Stall => return hold(client).await,
        Behaviour::Garbage => {
            client.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await?;
            return hold(client).await;
        }
        Behaviour::Refuse => {
            client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await?;
            return client.flush().await;
        }
        Behaviour::Tunnel => {}
    }
    if method != "CONNECT" || !target.starts_with("127.0.0.1:") {
        client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await?;
        return client.flush().await;
    }
    if state.authorization.is_some() && authorization != state.authorization {
        client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test proxy\"\r\n\
                  Content-Length: 0\r\n\r\n",
            )
            .await?;
        return client.flush().await;
    }
    let mut upstream = TcpStream::connect(&target).await?;
    state.targets.lock().unwrap().push(target);
    state.tunnels.fetch_add(1, Ordering::SeqCst);
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    client.flush().await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Keeps the connection open, answering nothing, until the client goes.
async fn hold<S: AsyncRead + Unpin>(mut client: S) -> std::io::Result<()> {
    let mut buf = [0u8; 256];
    while client.read(&mut buf).await? > 0 {}
    Ok(())
}
