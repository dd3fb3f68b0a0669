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
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Status;
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
    #[error("a query with id '{0}' is already running")]
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
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Query(_) | Error::UnknownSite { .. } | Error::InvalidQueryId => Status::invalid_argument(message),
            Error::NoSites => Status::unavailable(message),
            Error::DuplicateQueryId(_) => Status::already_exists(message),
            Error::Merge(_) | Error::Serve(_) | Error::Security(_) => Status::internal(message),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
        }
    }
}

pub mod config;
pub use config::CoordinatorConfig;

/// The queries running now, by query id: who started each, and its cancel handle.
#[derive(Default)]
pub struct RunningQueries(Mutex<HashMap<String, (String, CancellationToken)>>);

impl RunningQueries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, CancellationToken)>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a query; returns the existing entry if the id is taken.
    pub fn insert(&self, id: String, owner: String, token: CancellationToken) -> Option<(String, CancellationToken)> {
        let mut map = self.lock();
        if let Some(existing) = map.get(&id) {
            return Some(existing.clone());
        }
        map.insert(id, (owner, token));
        None
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn get(&self, id: &str) -> Option<(String, CancellationToken)> {
        self.lock().get(id).cloned()
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
        Ok(Arc::new(Self {
            registry: Arc::default(),
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

    /// Serves the node link on `node_listener` and the researcher API on `api_listener`
    /// until `shutdown` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        node_listener: TcpListener,
        api_listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
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
        tokio::try_join!(link_server, api_server)?;
        Ok(())
    }
}
