//! TLS for the coordinator's listeners (rustls, reloaded when the files change or on
//! SIGHUP) and for clients (nodes, researchers' tools). Nothing here falls back to plain TCP.

use crate::certs::{CertInfo, load_certs, load_key};
use crate::{CertificateProblem, Error, Result};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a party's TLS files are. Paths, never the secrets themselves.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA bundle that the other side's certificate must chain to.
    pub ca: PathBuf,
    /// This party's certificate (chain) in PEM.
    pub cert: PathBuf,
    /// This party's private key in PEM.
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Modification times and sizes of the files: changes when any of them is replaced.
    pub fn stamp(&self) -> FileStamp {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
            .collect()
    }
}

/// What the files looked like when last read (modification time and size of each).
pub type FileStamp = Vec<Option<(SystemTime, u64)>>;

fn roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| Error::Certificate {
            path: path.to_path_buf(),
            problem: CertificateProblem::NotATrustAnchor(e.to_string()),
        })?;
    }
    Ok(roots)
}

/// Who must present a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Sites: a certificate chaining to the CA is required.
    Required,
    /// Researchers: authenticate with tokens, not certificates.
    None,
}

/// Builds a server configuration from files. Refuses an expired certificate.
pub fn server_config(files: &TlsFiles, client_auth: ClientAuth) -> Result<(Arc<ServerConfig>, CertInfo)> {
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let info =
        CertInfo::parse(&chain[0]).map_err(|problem| Error::Certificate { path: files.cert.clone(), problem })?;
    if info.expired() {
        return Err(Error::Certificate { path: files.cert.clone(), problem: CertificateProblem::Expired });
    }
    let builder = ServerConfig::builder();
    let builder = match client_auth {
        ClientAuth::Required => {
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots(&files.ca)?))
                .build()
                .map_err(|e| Error::Tls(format!("client verifier from {}: {e}", files.ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        Error::Tls(format!(
            "{} and {} do not form a usable certificate: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), info))
}

/// A server configuration that follows its files: when they change (or on SIGHUP) new
/// connections get the new certificate; a broken replacement keeps the old one in service.
pub struct ReloadingServerConfig {
    files: TlsFiles,
    client_auth: ClientAuth,
    state: RwLock<(Arc<ServerConfig>, CertInfo, FileStamp)>,
}

impl ReloadingServerConfig {
    pub fn load(files: TlsFiles, client_auth: ClientAuth) -> Result<Arc<Self>> {
        let stamp = files.stamp();
        let (config, info) = server_config(&files, client_auth)?;
        info.report("server", &files.cert);
        Ok(Arc::new(Self { files, client_auth, state: RwLock::new((config, info, stamp)) }))
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    pub fn cert_info(&self) -> CertInfo {
        self.state.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// Reloads if the files changed (or when `force`). Returns whether a new configuration
    /// is in service.
    pub fn reload(&self, force: bool) -> bool {
        let stamp = self.files.stamp();
        if !force && self.state.read().unwrap_or_else(|p| p.into_inner()).2 == stamp {
            return false;
        }
        match server_config(&self.files, self.client_auth) {
            Ok((config, info)) => {
                tracing::info!(certificate = %self.files.cert.display(), not_after = info.not_after_unix, "TLS certificate reloaded");
                info.report("server", &self.files.cert);
                *self.state.write().unwrap_or_else(|p| p.into_inner()) = (config, info, stamp);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the previous certificate");
                // Remember the stamp so a broken file is not retried in a loop.
                self.state.write().unwrap_or_else(|p| p.into_inner()).2 = stamp;
                false
            }
        }
    }

    /// Checks the files every `interval` and on SIGHUP until `shutdown`, as a task of `tasks`.
    pub fn watch(self: &Arc<Self>, interval: Duration, shutdown: CancellationToken, tasks: &TaskTracker) {
        let this = self.clone();
        tasks.spawn(async move {
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut ticker = tokio::time::interval(interval);
            loop {
                #[cfg(unix)]
                let sighup = async {
                    match hangup.as_mut() {
                        Some(s) => {
                            s.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let sighup = std::future::pending::<()>();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => { this.reload(false); }
                    _ = sighup => { this.reload(true); }
                }
            }
        });
    }
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow or failing
/// client never blocks the others). Connections that do not speak TLS, or present a
/// certificate the CA did not issue, are closed here.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ReloadingServerConfig>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.current());
            let tx = tx.clone();
            handshakes.spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// TLS for a node dialling the coordinator: the network CA, the site's certificate, and the
/// name the coordinator's certificate must carry. Read from disk at every call, so a
/// renewed certificate is used from the next connection on.
pub fn node_client_tls(
    files: &TlsFiles,
    coordinator_name: &str,
) -> Result<(tonic::transport::ClientTlsConfig, CertInfo)> {
    let info = CertInfo::load(&files.cert)?;
    if info.expired() {
        return Err(Error::Certificate { path: files.cert.clone(), problem: CertificateProblem::Expired });
    }
    let ca = crate::certs::read(&files.ca)?;
    let cert = crate::certs::read(&files.cert)?;
    let key = crate::certs::read(&files.key)?;
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name(coordinator_name);
    Ok((config, info))
}

/// TLS for a researcher's client: only the CA that the coordinator's certificate chains to.
pub fn researcher_client_tls(ca: &Path, coordinator_name: Option<&str>) -> Result<tonic::transport::ClientTlsConfig> {
    let ca = crate::certs::read(ca)?;
    let mut config =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if let Some(name) = coordinator_name {
        config = config.domain_name(name);
    }
    Ok(config)
}

/// TLS for an HTTPS client (the identity provider's keys, an `https://` proxy): the
/// server's certificate checked against the CA bundle `ca`, or the system's roots when
/// there is none; ALPN offers `alpn` only.
pub fn https_client_config(ca: Option<&Path>, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = match ca {
        Some(path) => builder.with_root_certificates(roots(path)?).with_no_client_auth(),
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| Error::Tls(format!("the system's root certificates: {e}")))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}
