//! The verbund coordinator: accepts the sites' outbound links, takes researchers' SQL,
//! sends typed aggregate requests to the sites, and merges their privacy-checked partial
//! aggregates into the pooled answer.

pub mod api;
pub mod fanout;
pub mod frontend;
pub mod link;
pub mod merge;
pub mod registry;

use registry::Registry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use verbund_ops::CoordinatorMetrics;
use verbund_ops::prometheus_client::registry::Registry as MetricsRegistry;
use verbund_proto::v1::node_link_server::NodeLinkServer;
use verbund_proto::v1::researcher_server::ResearcherServer;
use verbund_security::tls::{ClientAuth, ReloadingServerConfig, TlsFiles};
use verbund_security::token::{TokenError, Verifier};

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Query(#[from] frontend::Unsupported),
    #[error("unknown site '{site}'; known sites: {known}")]
    UnknownSite { site: String, known: String },
    #[error("no site is connected; start the nodes (or check their logs) and retry")]
    NoSites,
    #[error("a query id is 1 to 128 letters, digits, '-' or '_'")]
    InvalidQueryId,
    #[error("you already have a query with id '{0}' running; choose another id")]
    DuplicateQueryId(String),
    #[error("the answers could not be merged: {0}")]
    Merge(String),
    #[error("server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Security(#[from] verbund_security::Error),
    #[error("{0}")]
    Unauthenticated(#[from] TokenError),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("the coordinator is shutting down; retry in a moment")]
    ShuttingDown,
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Query(_) | Error::UnknownSite { .. } | Error::InvalidQueryId => Status::invalid_argument(message),
            Error::NoSites | Error::ShuttingDown => Status::unavailable(message),
            Error::DuplicateQueryId(_) => Status::already_exists(message),
            Error::Merge(_) | Error::Serve(_) | Error::Security(_) => Status::internal(message),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
        }
    }
}

pub mod config;
pub use config::CoordinatorConfig;

/// The queries running now, by researcher and the id they gave it: ids are scoped to the
/// researcher, so one researcher's ids say nothing about another's queries.
#[derive(Default)]
pub struct RunningQueries(Mutex<HashMap<(String, String), CancellationToken>>);

impl RunningQueries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), CancellationToken>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `owner`'s query `id`; false if the owner already runs a query with that id.
    pub fn insert(&self, owner: &str, id: &str, token: CancellationToken) -> bool {
        let mut map = self.lock();
        let key = (owner.to_string(), id.to_string());
        if map.contains_key(&key) {
            return false;
        }
        map.insert(key, token);
        true
    }

    pub fn remove(&self, owner: &str, id: &str) {
        self.lock().remove(&(owner.to_string(), id.to_string()));
    }

    /// The cancel handle of `owner`'s query `id`.
    pub fn get(&self, owner: &str, id: &str) -> Option<CancellationToken> {
        self.lock().get(&(owner.to_string(), id.to_string())).cloned()
    }

    /// Cancels every running query (their researchers get what the sites sent so far).
    pub fn cancel_all(&self) {
        for token in self.lock().values() {
            token.cancel();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

pub struct Coordinator {
    registry: Arc<Registry>,
    running: RunningQueries,
    config: CoordinatorConfig,
    tokens: Arc<Verifier>,
    /// Sites allowed to connect, by the identity in their certificate.
    known_sites: BTreeSet<String>,
    link_tls: Arc<ReloadingServerConfig>,
    api_tls: Arc<ReloadingServerConfig>,
    metrics: CoordinatorMetrics,
    metrics_registry: Arc<MetricsRegistry>,
    serving: AtomicBool,
    draining: AtomicBool,
    planner: frontend::Planner,
}

impl Coordinator {
    /// Loads the TLS files and token keys the configuration names.
    pub async fn new(config: CoordinatorConfig) -> Result<Arc<Self>, Error> {
        let tokens = Verifier::from_config(&config.auth).await?;
        let link_tls = ReloadingServerConfig::load(config.tls.clone(), ClientAuth::Required)?;
        let api_tls = ReloadingServerConfig::load(
            TlsFiles { ca: config.tls.ca.clone(), cert: config.tls.cert.clone(), key: config.tls.key.clone() },
            ClientAuth::None,
        )?;
        let known_sites = config.sites.iter().cloned().collect();
        let mut metrics_registry = MetricsRegistry::default();
        let metrics = CoordinatorMetrics::new(&mut metrics_registry, config.sites.len());
        Ok(Arc::new(Self {
            registry: Arc::new(Registry::with_gauge(metrics.sites_connected())),
            metrics,
            metrics_registry: Arc::new(metrics_registry),
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            planner: frontend::Planner::default(),
            running: RunningQueries::default(),
            config,
            tokens,
            known_sites,
            link_tls,
            api_tls,
        }))
    }

    pub fn tokens(&self) -> &Verifier {
        &self.tokens
    }

    pub fn knows_site(&self, site: &str) -> bool {
        self.known_sites.contains(site)
    }

    /// Expiry of the coordinator's certificate now in service.
    pub fn certificate_not_after(&self) -> i64 {
        self.api_tls.cert_info().not_after_unix
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn registry_arc(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub fn running(&self) -> &RunningQueries {
        &self.running
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn metrics(&self) -> &CoordinatorMetrics {
        &self.metrics
    }

    /// The metrics registry, for the operations endpoint.
    pub fn metrics_registry(&self) -> Arc<MetricsRegistry> {
        self.metrics_registry.clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ready for researchers: serving and not shutting down. Having no site connected is
    /// not "unready": the coordinator still answers (with a clear error) and lists sites.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("shutting down; finishing running queries".into());
        }
        if !self.serving.load(Ordering::SeqCst) {
            return Err("starting".into());
        }
        Ok(())
    }

    /// After `shutdown`: refuses new queries, waits up to the drain time for running ones,
    /// then tells the servers to stop.
    async fn drain(self: Arc<Self>, shutdown: CancellationToken, stop: CancellationToken) {
        shutdown.cancelled().await;
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.config.drain;
        if !self.running.is_empty() {
            tracing::info!(
                running = self.running.len(),
                drain_seconds = self.config.drain.as_secs(),
                "shutting down: finishing running queries, refusing new ones"
            );
        }
        while !self.running.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.running.is_empty() {
            tracing::warn!(running = self.running.len(), "drain time over; cancelling the remaining queries");
            self.running.cancel_all();
            // Give the cancelled queries a moment to answer their researchers.
            let grace = tokio::time::Instant::now() + Duration::from_secs(2);
            while !self.running.is_empty() && tokio::time::Instant::now() < grace {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Long-lived site links would hold a graceful server shutdown open forever.
        self.registry.close_all();
        stop.cancel();
    }

    /// Serves the node link on `node_listener` and the researcher API on `api_listener`
    /// until `shutdown` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        node_listener: TcpListener,
        api_listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        // `shutdown` starts the drain; `stop` ends the servers once it is over.
        let stop = CancellationToken::new();
        tokio::spawn(self.clone().drain(shutdown.clone(), stop.clone()));
        let shutdown = stop;
        self.link_tls.watch(self.config.tls_reload, shutdown.clone());
        self.api_tls.watch(self.config.tls_reload, shutdown.clone());
        let link = NodeLinkServer::new(link::LinkService::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let api = ResearcherServer::new(api::ResearcherService::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let link_server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(link)
            .serve_with_incoming_shutdown(
                verbund_security::tls::incoming(node_listener, self.link_tls.clone(), shutdown.clone()),
                shutdown.clone().cancelled_owned(),
            );
        let api_server = tonic::transport::Server::builder().add_service(api).serve_with_incoming_shutdown(
            verbund_security::tls::incoming(api_listener, self.api_tls.clone(), shutdown.clone()),
            shutdown.cancelled_owned(),
        );
        self.serving.store(true, Ordering::SeqCst);
        let served = tokio::try_join!(link_server, api_server);
        self.serving.store(false, Ordering::SeqCst);
        served?;
        Ok(())
    }
}
