//! A verbund node: runs beside one institution's data, dials out to the coordinator, and
//! answers typed aggregate requests from local data under the site's own policy.

mod attributes;
pub mod audit;
pub mod catalogue;
mod cohort;
pub mod config;
pub mod consent;
mod criteria;
pub mod engine;
mod index;
mod indexed;
pub mod link;
pub mod model;
pub mod private;
pub mod refusal;

pub use catalogue::Catalogue;
pub use config::NodeConfig;
pub use engine::Engine;
pub use link::LinkOptions;
pub use refusal::{Exhausted, Refusal};

use audit::SiteAudit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;
use verbund_audit::{AuditLog, Requester};
use verbund_ops::prometheus_client::registry::Registry;
use verbund_ops::{AuditMetrics, NodeMetrics};
use verbund_policies::{Access, Policy};
use verbund_proto::v1 as pb;
use verbund_query::validate::{InvalidRequest, Missing};
use verbund_security::egress::Egress;
use verbund_security::settings::ConfigError;
use verbund_security::token::{Claims, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(#[from] verbund_security::settings::ConfigError),
    #[error("dataset '{dataset}': {message}")]
    Dataset { dataset: String, message: String },
    #[error("policy {path}: {error}")]
    Policy { path: String, error: verbund_policies::Error },
    #[error(transparent)]
    Security(#[from] verbund_security::Error),
    #[error("audit log: {0}")]
    Audit(#[from] verbund_audit::AuditError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct Node {
    site: String,
    engine: Engine,
    tokens: Arc<Verifier>,
    metrics: NodeMetrics,
    registry: Arc<Registry>,
    draining: AtomicBool,
    /// Wakes the link to look at its TLS files now (SIGHUP).
    tls_check: tokio::sync::Notify,
    /// Why the link is down, while it is (for the readiness probe and tests).
    link_error: parking_lot::Mutex<Option<String>>,
    audit: Option<SiteAudit>,
    audit_metrics: AuditMetrics,
    /// The configured datasets, reloaded when their files change (none for a node built in
    /// memory).
    datasets: Vec<config::DatasetConfig>,
}

/// A request whose token verified and whose arrival is on record.
pub struct Admitted {
    pub claims: Claims,
    pub requester: Requester,
}

impl Node {
    pub fn new(site: impl Into<String>, catalogue: Catalogue, policy: Policy, tokens: Arc<Verifier>) -> Self {
        let mut registry = Registry::default();
        let metrics = NodeMetrics::new(&mut registry);
        let audit_metrics = AuditMetrics::new(&mut registry);
        Self {
            site: site.into(),
            engine: Engine::new(catalogue, policy),
            tokens,
            metrics,
            registry: Arc::new(registry),
            draining: AtomicBool::new(false),
            tls_check: tokio::sync::Notify::new(),
            link_error: parking_lot::Mutex::new(None),
            audit: None,
            audit_metrics,
            datasets: Vec::new(),
        }
    }

    /// The configured datasets its catalogue was opened from: [`Node::reload_data`] serves
    /// them anew when their files change. (`Node::from_config` sets them.)
    pub fn with_datasets(mut self, datasets: Vec<config::DatasetConfig>) -> Self {
        self.datasets = datasets;
        self
    }

    /// Gives the node its noise key and budget ledger (the dp and feasibility profiles).
    pub fn with_privacy(mut self, privacy: private::Privacy) -> Self {
        self.engine = self.engine.with_privacy(privacy);
        self
    }

    /// Records every request in `log` from now on; `peer` is the coordinator's name.
    pub fn with_audit(mut self, log: Arc<AuditLog>, peer: Option<String>) -> Self {
        self.audit = Some(SiteAudit::new(log, self.audit_metrics.clone(), self.site.clone(), peer));
        self
    }

    pub fn audit(&self) -> Option<&SiteAudit> {
        self.audit.as_ref()
    }

    /// The audit log's metrics, registered with the node's; pass
    /// their `on_commit()` when opening the log.
    pub fn audit_metrics(&self) -> &AuditMetrics {
        &self.audit_metrics
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// The metrics registry, for the operations endpoint.
    pub fn metrics_registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Ready for queries: attached to the coordinator and not shutting down. (The datasets
    /// are loaded before a node exists.)
    pub fn readiness(&self) -> std::result::Result<(), String> {
        if self.is_draining() {
            return Err("shutting down; finishing running queries".into());
        }
        if !self.metrics.is_connected() {
            return Err(match self.link_error() {
                Some(e) => format!("not connected to the coordinator: {e}"),
                None => "not connected to the coordinator (see the node's log)".into(),
            });
        }
        Ok(())
    }

    /// Why the last attempt to reach the coordinator failed, until the link is up again.
    pub fn link_error(&self) -> Option<String> {
        self.link_error.lock().clone()
    }

    pub(crate) fn set_link_error(&self, error: Option<String>) {
        *self.link_error.lock() = error;
    }

    /// Makes the link look at its TLS files now (as on SIGHUP) and reconnect if they changed.
    pub fn check_tls_files(&self) {
        self.tls_check.notify_waiters();
    }

    pub(crate) async fn tls_check_requested(&self) {
        self.tls_check.notified().await
    }

    /// Serves the datasets anew when their files changed on disk (a new import, a replaced
    /// file), without a restart; returns whether it did. Queries running keep the data they
    /// started with. A dataset that no longer loads leaves the node on the data it has, with
    /// the dataset and the reason in the log.
    pub async fn reload_data(&self) -> bool {
        if self.datasets.is_empty() {
            return false;
        }
        let served: std::collections::HashMap<String, String> = self.engine.dataset_versions().into_iter().collect();
        let changed: Vec<&str> = self
            .datasets
            .iter()
            .filter(|d| served.get(&d.name) != Some(&catalogue::dataset_version(&d.path)))
            .map(|d| d.name.as_str())
            .collect();
        if changed.is_empty() {
            return false;
        }
        match Catalogue::open(&self.datasets).await {
            Ok(catalogue) => {
                self.engine.replace_catalogue(catalogue).await;
                tracing::info!(datasets = ?changed, "new data on disk: now serving it");
                true
            }
            Err(e) => {
                tracing::error!(datasets = ?changed, error = %e, "new data on disk does not load; still serving the data loaded before");
                false
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Loads the policy file, the token keys (fetched through `egress`, the node's way out)
    /// and every dataset of a configuration, and checks that the site certificate names this
    /// site.
    pub async fn from_config(config: &NodeConfig, egress: Arc<Egress>) -> Result<Self> {
        let cert = verbund_security::certs::CertInfo::load(&config.tls.cert)?;
        if cert.identity.as_deref() != Some(config.site.as_str()) {
            return Err(Error::Config(ConfigError::Invalid(format!(
                "the site certificate {} names '{}', but this node is configured as '{}'",
                config.tls.cert.display(),
                cert.identity.unwrap_or_default(),
                config.site
            ))));
        }
        cert.report("site", &config.tls.cert);
        let tokens = Verifier::from_config_with(&config.auth, egress).await?;
        let policy = match &config.policy {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                    what: "policy",
                    path: path.clone(),
                    error,
                })?;
                Policy::from_toml(&text).map_err(|error| Error::Policy { path: shown, error })?
            }
            None => Policy::default(),
        };
        let catalogue = Catalogue::open(&config.datasets).await?;
        let profile = policy.profile;
        let mut node = Self::new(config.site.clone(), catalogue, policy, tokens).with_datasets(config.datasets.clone());
        if profile.is_private() {
            let (key, ledger) = (config.noise_key.clone(), config.ledger.clone());
            let privacy = tokio::task::spawn_blocking(move || private::Privacy::load(&key, &ledger))
                .await
                .map_err(|e| ConfigError::Invalid(format!("loading the privacy state stopped: {e}")))?
                .map_err(ConfigError::Invalid)?;
            node = node.with_privacy(privacy);
        } else if profile == verbund_policies::Profile::TestOnlyRaw {
            tracing::warn!(
                "policy profile test-only-raw: this node releases RAW, UNPROTECTED numbers; for synthetic test data only"
            );
        }
        let settings = config.audit.clone();
        let hook = node.audit_metrics().on_commit();
        let log = tokio::task::spawn_blocking(move || settings.open(Some(hook)))
            .await
            .map_err(|e| Error::Config(ConfigError::Invalid(format!("opening the audit log stopped: {e}"))))??;
        let log = Arc::new(log);
        verbund_audit::spawn_periodic_checkpoints(
            &log,
            std::time::Duration::from_secs(config.audit.checkpoint_seconds),
        );
        Ok(node.with_audit(log, Some(config.coordinator_name()?)))
    }

    /// Decides and answers one request on the site's own authority, with its audit records:
    /// admission, execution, conclusion. Dropping the future stops the execution (the link
    /// runs the three steps itself, so that a cancelled query is recorded too).
    pub async fn handle(&self, q: &pb::NodeQuery) -> Result<pb::PartialResult, Refusal> {
        let started = std::time::Instant::now();
        match self.admit(q).await {
            Err((requester, refusal)) => self.conclude(q, requester, Err(refusal), started.elapsed()).await,
            Ok(admitted) => {
                let outcome = self.execute(q, &admitted).await;
                self.conclude(q, admitted.requester, outcome, started.elapsed()).await
            }
        }
    }

    /// The researcher's token is verified here, and the request's arrival recorded. A
    /// refusal comes with the requester as the record names them.
    pub async fn admit(&self, q: &pb::NodeQuery) -> std::result::Result<Admitted, (Requester, Refusal)> {
        if let Err(e) = model::one_request(q) {
            return Err((audit::requester(q, None), e.into()));
        }
        let token = q.identity.as_ref().map(|i| i.researcher_token.as_str()).unwrap_or_default();
        let claims = match self.tokens.verify(token) {
            Ok(claims) => claims,
            Err(reason) => {
                tracing::info!(%reason, "token refused");
                let refusal = Refusal::Unauthenticated { site: self.site.clone(), reason };
                return Err((audit::requester(q, None), refusal));
            }
        };
        let requester = audit::requester(q, Some(&claims));
        if let Some(audit) = &self.audit {
            audit.received(q, requester.clone()).await.map_err(|refusal| (requester.clone(), refusal))?;
        }
        Ok(Admitted { claims, requester })
    }

    /// Checks the project against this site's policy and runs the query or the model's round.
    /// Runs inside the caller's span, which carries the query id.
    pub async fn execute(&self, q: &pb::NodeQuery, admitted: &Admitted) -> Result<pb::PartialResult, Refusal> {
        model::one_request(q)?;
        let project = q.identity.as_ref().map(|i| i.project.as_str()).unwrap_or_default();
        let claims = &admitted.claims;
        let access = Access { site: &self.site, project, token_projects: &claims.projects, roles: &claims.roles };
        if let Some(request) = &q.model {
            let dataset = request.model.as_ref().map(|m| m.dataset.as_str()).unwrap_or_default();
            tracing::info!(researcher = %claims.sub, %project, %dataset, fit = %request.fit_id, attempt = request.attempt, round = request.round, "model round received");
            let outcome = self.engine.answer_model(request, &access).await;
            match &outcome {
                Ok(_) => tracing::info!("answered"),
                Err(refused) => tracing::info!(reason = %refused, "refused"),
            }
            return outcome;
        }
        let Some(query) = &q.query else { return Err(InvalidRequest::from(Missing::Query).into()) };
        tracing::info!(researcher = %claims.sub, %project, dataset = %query.dataset, "query received");
        let outcome = self.engine.answer(query, &access).await;
        match &outcome {
            Ok(partial) => tracing::info!(
                groups = partial.groups.len(),
                withheld_groups = partial.withheld_groups,
                withheld_bins = partial.withheld_bins,
                withheld_values = partial.withheld_values,
                "answered"
            ),
            Err(refused) => tracing::info!(reason = %refused, "refused"),
        }
        outcome
    }

    /// Records how the request ended; what it returns is what may leave the node.
    pub async fn conclude(
        &self,
        q: &pb::NodeQuery,
        requester: Requester,
        outcome: Result<pb::PartialResult, Refusal>,
        elapsed: std::time::Duration,
    ) -> Result<pb::PartialResult, Refusal> {
        match &self.audit {
            Some(audit) => audit.finished(q, requester, outcome, elapsed).await,
            None => outcome,
        }
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub(crate) fn tokens(&self) -> &Verifier {
        &self.tokens
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn hello(&self) -> pb::Hello {
        pb::Hello {
            site: self.site.clone(),
            node_version: env!("CARGO_PKG_VERSION").to_string(),
            catalogue: Some(self.engine.catalogue().clone()),
            min_cell_size: self.engine.policy().min_cell_size,
            project_views: self.engine.policy().project_views(&self.engine.catalogue()),
            profile: self.engine.policy().profile.label().into(),
            budgets: Vec::new(),
            model_rules: Some(self.engine.policy().model_rules()),
        }
    }

    /// What each project of the policy has left of its privacy budget here (none without a
    /// ledger). A ledger that cannot be read is logged and reported as nothing.
    pub async fn budgets(&self) -> Vec<pb::ProjectBudget> {
        let Some(privacy) = self.engine.privacy() else { return Vec::new() };
        let policy = self.engine.policy();
        if !policy.profile.is_private() {
            return Vec::new();
        }
        let Ok(allowance) = private::allowance(policy) else { return Vec::new() };
        let projects: Vec<String> = policy.projects.iter().map(|p| p.name.clone()).collect();
        let ledger = privacy.ledger.clone();
        let period_days = policy.budget.period_days;
        let read = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now();
            projects
                .into_iter()
                .map(|project| {
                    let r = ledger.remaining(&project, &allowance, now)?;
                    Ok(pb::ProjectBudget {
                        project,
                        epsilon_left: r.left.epsilon(),
                        delta_left: r.left.delta(),
                        epsilon: allowance.per_period.epsilon(),
                        delta: allowance.per_period.delta(),
                        period_days,
                        renews_at: private::unix_seconds(r.renews_at),
                    })
                })
                .collect::<Result<Vec<_>, verbund_ledger::LedgerError>>()
        })
        .await;
        match read {
            Ok(Ok(budgets)) => budgets,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the privacy ledger");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the privacy ledger stopped");
                Vec::new()
            }
        }
    }

    /// Keeps the link to the coordinator up until `shutdown` is cancelled.
    pub async fn run(self: Arc<Self>, options: LinkOptions, shutdown: CancellationToken) {
        link::run_link(self, options, shutdown).await
    }
}

/// How this node reaches the outside, from its configuration and the process's environment
/// (`HTTPS_PROXY`, `NO_PROXY`, when no `proxy` is configured). Logs once which way each
/// destination goes; the link and the key fetch then share the result.
pub fn egress(config: &NodeConfig) -> Result<Arc<Egress>> {
    let egress = config.egress_with_env(|name| std::env::var(name).ok())?;
    let mut destinations = vec![("coordinator", &config.coordinator)];
    if let Some(url) = &config.auth.jwks_url {
        destinations.push(("identity provider keys (jwks_url)", url));
    }
    egress.report(&destinations);
    Ok(Arc::new(egress))
}

/// Builds link options from a configuration; the link goes out through `egress`.
pub fn link_options(config: &NodeConfig, egress: Arc<Egress>) -> Result<LinkOptions> {
    let mut options = LinkOptions::new(config.coordinator.to_string(), config.tls.files(), config.coordinator_name()?);
    options.heartbeat = config.heartbeat;
    options.tls_reload = config.tls_reload;
    options.data_reload = config.data_reload;
    options.drain = config.drain;
    options.egress = egress;
    Ok(options)
}
