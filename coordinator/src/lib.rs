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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use verbund_proto::v1::node_link_server::NodeLinkServer;
use verbund_proto::v1::researcher_server::ResearcherServer;

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
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Query(_) | Error::UnknownSite { .. } | Error::InvalidQueryId => Status::invalid_argument(message),
            Error::NoSites => Status::unavailable(message),
            Error::DuplicateQueryId(_) => Status::already_exists(message),
            Error::Merge(_) | Error::Serve(_) => Status::internal(message),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Deadline of a query whose researcher named none.
    pub default_timeout: Duration,
    /// Longest deadline a researcher may ask for.
    pub max_timeout: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self { default_timeout: Duration::from_secs(30), max_timeout: Duration::from_secs(300) }
    }
}

/// Cancel handles of the queries running now, by query id.
#[derive(Default)]
pub struct RunningQueries(Mutex<HashMap<String, CancellationToken>>);

impl RunningQueries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, id: String, token: CancellationToken) -> Option<CancellationToken> {
        let mut map = self.lock();
        if let Some(existing) = map.get(&id) {
            return Some(existing.clone());
        }
        map.insert(id, token);
        None
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn get(&self, id: &str) -> Option<CancellationToken> {
        self.lock().get(id).cloned()
    }
}

pub struct Coordinator {
    registry: Arc<Registry>,
    running: RunningQueries,
    config: CoordinatorConfig,
}

impl Coordinator {
    pub fn new(config: CoordinatorConfig) -> Arc<Self> {
        Arc::new(Self { registry: Arc::default(), running: RunningQueries::default(), config })
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
        let link = NodeLinkServer::new(link::LinkService::new(self.registry.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let api = ResearcherServer::new(api::ResearcherService::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let link_server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(link)
            .serve_with_incoming_shutdown(TcpListenerStream::new(node_listener), shutdown.clone().cancelled_owned());
        let api_server = tonic::transport::Server::builder()
            .add_service(api)
            .serve_with_incoming_shutdown(TcpListenerStream::new(api_listener), shutdown.cancelled_owned());
        tokio::try_join!(link_server, api_server)?;
        Ok(())
    }
}
