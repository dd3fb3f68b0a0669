//! The verbund coordinator: accepts the sites' outbound links, takes researchers' SQL,
//! sends typed aggregate requests to the sites, and merges their privacy-checked partial
//! aggregates into the pooled answer.

pub mod api;
pub mod audit;
pub mod fanout;
pub mod feasibility;
pub mod flight;
pub mod frontend;
pub mod link;
pub mod merge;
pub mod model;
pub mod queries;
pub mod quota;
pub mod sites;
pub mod store;
pub mod web;

use parking_lot::Mutex;
use sites::SiteRegistry;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use verbund_ops::prometheus_client::registry::Registry as MetricsRegistry;
use verbund_ops::{AuditMetrics, CoordinatorMetrics};
use verbund_proto::v1::node_link_server::NodeLinkServer;
use verbund_proto::v1::researcher_server::ResearcherServer;
use verbund_security::tls::{ClientAuth, ReloadingServerConfig, TlsFiles};
use verbund_security::token::{TokenError, Verifier};

use verbund_proto::MAX_MESSAGE_BYTES;

/// Why the coordinator could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Security(#[from] verbund_security::Error),
    #[error("audit log: {0}")]
    Audit(#[from] verbund_audit::AuditError),
    #[error("Flight SQL: {0}")]
    FlightSql(#[from] arrow_flight::error::FlightError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Opens the query store; queries a restart caught queued or running are failed, and their
/// audit trail closed, so that reconciling finds no query without an end.
async fn open_store(
    config: &CoordinatorConfig,
    audit: Option<&audit::CoordinatorAudit>,
) -> Result<Arc<store::Store>, Error> {
    let path = config.queries.store.clone();
    let keep = config.queries.keep;
    let opened = tokio::task::spawn_blocking(move || {
        let store = store::Store::open(&path)?;
        let failed = store.fail_unfinished(queries::now_ms(), keep, RESTARTED)?;
        Ok::<_, store::StoreError>((store, failed))
    })
    .await
    .map_err(|e| store::StoreError::Storage(e.to_string()))??;
    let (store, failed) = opened;
    if !failed.is_empty() {
        tracing::warn!(queries = failed.len(), "queries caught running by a restart are marked failed");
    }
    if let Some(audit) = audit {
        for stored in &failed {
            audit.failed_at_restart(stored).await;
        }
    }
    Ok(Arc::new(store))
}

/// What a researcher reads of a query the coordinator's restart interrupted.
pub const RESTARTED: &str = "the coordinator restarted while this query ran; nothing was released to you; submit it \
     again (sites using differential privacy answer a repeated question at no new cost)";

/// Why a researcher's request got no answer. [`RequestError::code`] and
/// [`RequestError::outcome`] are the one place that maps each to its gRPC code and its
/// metrics label.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Query(#[from] frontend::Unsupported),
    #[error("unknown site '{site}'; known sites: {known}")]
    UnknownSite { site: String, known: String },
    #[error("no site is connected; start the nodes (or check their logs) and retry")]
    NoSites,
    #[error("a query id is 1 to 128 letters, digits, '-' or '_'")]
    InvalidQueryId,
    #[error("you already have a query with id '{id}' ({state}); choose another id")]
    DuplicateQueryId { id: String, state: String },
    #[error("no query '{id}' of yours is stored (results are kept {keep_hours} hours after they finish)")]
    NoSuchQuery { id: String, keep_hours: u64 },
    #[error("query '{id}' is still running ({progress}); ask for its status, or wait")]
    NotFinished { id: String, progress: String },
    /// A stored query that failed: its code and message, as the blocking call returned them.
    #[error("{message}")]
    Ended { code: i32, message: String },
    #[error(
        "you have {0} queries stored; results are deleted when they expire ([queries] keep_hours), \
         ask the operators for a higher max_stored_per_researcher if you need more"
    )]
    TooManyStored(u64),
    #[error("the query was cancelled before it started")]
    CancelledWhileQueued,
    #[error("your token expired while the query waited for its turn; get a new token and submit it again")]
    ExpiredWhileQueued,
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("the answers could not be merged: {0}")]
    Merge(#[from] merge::MergeError),
    #[error("{0}")]
    Unauthenticated(#[from] TokenError),
    #[error(transparent)]
    PermissionDenied(#[from] Forbidden),
    #[error("the coordinator is shutting down; retry in a moment")]
    ShuttingDown,
    #[error(
        "the coordinator cannot write its audit log and releases nothing unrecorded; \
         tell the network's operators (the reason is in the coordinator's log)"
    )]
    AuditUnavailable,
    #[error("{0}")]
    BadAuditRequest(String),
    #[error("{0}")]
    BadRequest(String),
    /// A site refused an auditor's read of its log.
    #[error("site {site} refused: {message}")]
    SiteRefused { site: String, code: verbund_proto::v1::RefusalCode, message: String },
    #[error("site {site} did not answer: {why}")]
    SiteUnreachable { site: String, why: String },
    #[error(transparent)]
    OverQuota(#[from] quota::OverQuota),
    #[error(transparent)]
    Cohort(#[from] feasibility::CohortError),
    #[error(transparent)]
    Model(#[from] model::ModelError),
}

/// What a researcher's token does not allow.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Forbidden {
    #[error("name the project this query belongs to; your token grants: {}", granted.join(", "))]
    NoProject { granted: Vec<String> },
    #[error("your token does not grant project '{project}'; it grants: {}", granted.join(", "))]
    ProjectNotGranted { project: String, granted: Vec<String> },
    #[error("no site asked lets project '{project}' query any dataset; ask the sites' operators to allow it")]
    NoDatasetsForProject { project: String },
    #[error("reading audit logs needs a token with the role 'auditor'")]
    NotAnAuditor,
    /// Separation of duties: who reviews the record does not add to it.
    #[error("tokens with the role 'auditor' read audit logs and cannot submit queries")]
    AuditorsCannotQuery,
}

impl RequestError {
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            RequestError::Query(frontend::Unsupported::PlannerUnavailable(_)) => Code::Unavailable,
            RequestError::Query(_)
            | RequestError::UnknownSite { .. }
            | RequestError::InvalidQueryId
            | RequestError::Cohort(_)
            | RequestError::BadAuditRequest(_)
            | RequestError::BadRequest(_) => Code::InvalidArgument,
            RequestError::SiteRefused { code, .. } => match code {
                verbund_proto::v1::RefusalCode::Unauthenticated => Code::Unauthenticated,
                verbund_proto::v1::RefusalCode::Policy => Code::PermissionDenied,
                verbund_proto::v1::RefusalCode::InvalidRequest => Code::InvalidArgument,
                _ => Code::Unavailable,
            },
            RequestError::SiteUnreachable { .. } => Code::Unavailable,
            RequestError::NoSites | RequestError::ShuttingDown | RequestError::AuditUnavailable => Code::Unavailable,
            RequestError::DuplicateQueryId { .. } => Code::AlreadyExists,
            RequestError::NoSuchQuery { .. } => Code::NotFound,
            RequestError::NotFinished { .. } => Code::FailedPrecondition,
            RequestError::Ended { code, .. } => Code::from_i32(*code),
            RequestError::TooManyStored(_) => Code::ResourceExhausted,
            RequestError::CancelledWhileQueued => Code::Cancelled,
            RequestError::ExpiredWhileQueued => Code::Unauthenticated,
            RequestError::Store(_) => Code::Unavailable,
            RequestError::Merge(_) => Code::Internal,
            RequestError::Unauthenticated(_) => Code::Unauthenticated,
            RequestError::PermissionDenied(_) => Code::PermissionDenied,
            RequestError::OverQuota(_) => Code::ResourceExhausted,
            RequestError::Model(e) => e.code(),
        }
    }

    /// The `outcome` label of `verbund_coordinator_queries_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            RequestError::Query(frontend::Unsupported::PlannerUnavailable(_)) => "unavailable",
            RequestError::Query(_)
            | RequestError::UnknownSite { .. }
            | RequestError::InvalidQueryId
            | RequestError::BadAuditRequest(_)
            | RequestError::BadRequest(_)
            | RequestError::Cohort(_)
            | RequestError::DuplicateQueryId { .. }
            | RequestError::NoSuchQuery { .. }
            | RequestError::NotFinished { .. } => "rejected",
            RequestError::Ended { .. } | RequestError::Store(_) => "failed",
            RequestError::TooManyStored(_) => "over_quota",
            RequestError::CancelledWhileQueued => "cancelled",
            RequestError::ExpiredWhileQueued => "unauthenticated",
            RequestError::SiteRefused { .. } => "site_refused",
            RequestError::SiteUnreachable { .. } => "unavailable",
            RequestError::Unauthenticated(_) => "unauthenticated",
            RequestError::PermissionDenied(_) => "forbidden",
            RequestError::NoSites | RequestError::ShuttingDown | RequestError::AuditUnavailable => "unavailable",
            RequestError::Merge(_) => "failed",
            RequestError::OverQuota(_) => "over_quota",
            RequestError::Model(e) => e.outcome(),
        }
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

pub mod config;
pub use config::CoordinatorConfig;

/// The queries queued or running now, by researcher and the id they gave it: ids are scoped
/// to the researcher, so one researcher's ids say nothing about another's queries.
#[derive(Default)]
pub struct RunningQueries(Mutex<HashMap<(String, String), queries::LiveQuery>>);

impl RunningQueries {
    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<(String, String), queries::LiveQuery>> {
        self.0.lock()
    }

    /// Registers `owner`'s query `id`; false if the owner already runs a query with that id.
    pub fn insert(&self, owner: &str, id: &str, live: queries::LiveQuery) -> bool {
        let mut map = self.lock();
        let key = (owner.to_string(), id.to_string());
        if map.contains_key(&key) {
            return false;
        }
        map.insert(key, live);
        true
    }

    pub fn remove(&self, owner: &str, id: &str) {
        self.lock().remove(&(owner.to_string(), id.to_string()));
    }

    /// The cancel handle of `owner`'s query `id`.
    pub fn get(&self, owner: &str, id: &str) -> Option<CancellationToken> {
        self.lock().get(&(owner.to_string(), id.to_string())).map(|l| l.cancel.clone())
    }

    /// The live status of `owner`'s query `id`.
    pub fn watch(&self, owner: &str, id: &str) -> Option<tokio::sync::watch::Receiver<verbund_proto::v1::QueryStatus>> {
        self.lock().get(&(owner.to_string(), id.to_string())).map(|l| l.status.subscribe())
    }

    /// Who runs which query now (researcher, query id), for the log.
    pub fn describe(&self) -> Vec<String> {
        self.lock().keys().map(|(owner, id)| format!("{owner}/{id}")).collect()
    }

    /// Cancels every queued and running query (their researchers get what the sites sent so far).
    pub fn cancel_all(&self) {
        for live in self.lock().values() {
            live.cancel.cancel();
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
    sites: Arc<SiteRegistry>,
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
    /// Researchers' queries in progress: shutdown waits for them (up to the drain time).
    queries: TaskTracker,
    /// Background tasks (site links, TLS reloads, connection acceptors): shutdown waits for
    /// them after the servers stopped, and says which were still running.
    tasks: TaskTracker,
    audit: Option<audit::CoordinatorAudit>,
    quotas: quota::Quotas,
    /// Researchers' queries and their answers, kept until they expire.
    store: Arc<store::Store>,
    /// Queries running at once ([queries] max_running); the rest wait as queued.
    slots: Arc<tokio::sync::Semaphore>,
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
        let audit_metrics = AuditMetrics::new(&mut metrics_registry);
        let settings = config.audit.clone();
        let hook = audit_metrics.on_commit();
        let log = tokio::task::spawn_blocking(move || settings.open(Some(hook)))
            .await
            .map_err(|e| verbund_audit::AuditError::Spawn(std::io::Error::other(e.to_string())))??;
        let log = Arc::new(log);
        verbund_audit::spawn_periodic_checkpoints(&log, Duration::from_secs(config.audit.checkpoint_seconds));
        let audit = Some(audit::CoordinatorAudit::new(log, audit_metrics));
        let store = open_store(&config, audit.as_ref()).await?;
        Ok(Arc::new(Self {
            store,
            slots: Arc::new(tokio::sync::Semaphore::new(config.queries.max_running as usize)),
            audit,
            quotas: quota::Quotas::new(config.network.queries_per_minute, config.network.queries_per_week),
            sites: Arc::new(SiteRegistry::with_gauge(metrics.sites_connected())),
            metrics,
            metrics_registry: Arc::new(metrics_registry),
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            planner: frontend::Planner::default(),
            queries: TaskTracker::new(),
            tasks: TaskTracker::new(),
            running: RunningQueries::default(),
            config,
            tokens,
            known_sites,
            link_tls,
            api_tls,
        }))
    }

    /// The store of researchers' queries and their answers.
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// Releases the query store's file, as a stopped process would (a test's simulated
    /// crash, so that the next coordinator can open it); later store calls fail.
    pub fn close_store(&self) {
        self.store.close();
    }

    /// The coordinator's audit log.
    pub fn audit(&self) -> Option<&audit::CoordinatorAudit> {
        self.audit.as_ref()
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

    /// The sites this coordinator knows, connected or not.
    pub fn sites(&self) -> &SiteRegistry {
        &self.sites
    }

    pub(crate) fn sites_arc(&self) -> Arc<SiteRegistry> {
        self.sites.clone()
    }

    pub fn running(&self) -> &RunningQueries {
        &self.running
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn quotas(&self) -> &quota::Quotas {
        &self.quotas
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

    /// Counts a researcher's query as running until the returned token is dropped.
    pub(crate) fn track_query(&self) -> tokio_util::task::task_tracker::TaskTrackerToken {
        self.queries.token()
    }

    /// Runs a researcher's query as a task that shutdown drains.
    pub(crate) fn spawn_query<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.queries.spawn(task);
    }

    /// Spawns a background task that shutdown waits for.
    pub(crate) fn spawn_task<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// After `shutdown`: refuses new queries, waits up to the drain time for running ones,
    /// then tells the servers to stop.
    async fn drain(self: Arc<Self>, shutdown: CancellationToken, stop: CancellationToken) {
        shutdown.cancelled().await;
        self.draining.store(true, Ordering::SeqCst);
        self.queries.close();
        if !self.queries.is_empty() {
            tracing::info!(
                running = self.queries.len(),
                drain_seconds = self.config.drain.as_secs(),
                "shutting down: finishing running queries, refusing new ones"
            );
        }
        if tokio::time::timeout(self.config.drain, self.queries.wait()).await.is_err() {
            tracing::warn!(
                running = self.queries.len(),
                queries = ?self.running.describe(),
                "drain time over; cancelling the remaining queries"
            );
            self.running.cancel_all();
            // Give the cancelled queries a moment to answer their researchers.
            if tokio::time::timeout(Duration::from_secs(2), self.queries.wait()).await.is_err() {
                tracing::warn!(queries = ?self.running.describe(), "queries still running after their cancel");
            }
        }
        // Long-lived site links would hold a graceful server shutdown open forever.
        self.sites.close_all();
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
        self.link_tls.watch(self.config.tls_reload, shutdown.clone(), &self.tasks);
        self.api_tls.watch(self.config.tls_reload, shutdown.clone(), &self.tasks);
        self.tasks.spawn(self.clone().sweep_expired(shutdown.clone()));
        let link = NodeLinkServer::new(link::LinkService::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let api = ResearcherServer::new(api::ResearcherService::new(self.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // Arrow Flight SQL beside the native API: same listener, TLS, tokens and drain.
        let flight_sql =
            arrow_flight::flight_service_server::FlightServiceServer::new(flight::FlightSql::new(self.clone())?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let link_server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(link)
            .serve_with_incoming_shutdown(
                verbund_security::tls::incoming(node_listener, self.link_tls.clone(), shutdown.clone(), &self.tasks),
                shutdown.clone().cancelled_owned(),
            );
        // The web page shares the listener: gRPC services by their paths, pages elsewhere.
        let routes = tonic::service::Routes::new(api)
            .add_service(flight_sql)
            .into_axum_router()
            .merge(web::router(self.clone()))
            .fallback(web::fallback);
        let api_server = tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(routes))
            .serve_with_incoming_shutdown(
                verbund_security::tls::incoming(api_listener, self.api_tls.clone(), shutdown.clone(), &self.tasks),
                shutdown.cancelled_owned(),
            );
        self.serving.store(true, Ordering::SeqCst);
        let served = tokio::try_join!(link_server, api_server);
        self.serving.store(false, Ordering::SeqCst);
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await.is_err() {
            tracing::warn!(remaining = self.tasks.len(), "background tasks still running at shutdown are dropped");
        }
        served?;
        Ok(())
    }
}
