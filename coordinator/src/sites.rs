//! The sites the coordinator knows: who is connected right now, since when, last seen when,
//! with which catalogue; and the queries each connection still owes an answer to.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::Status;
use verbund_ops::prometheus_client::metrics::gauge::Gauge;
use verbund_proto::v1 as pb;

pub type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// What a site's connection delivers for one dispatched query.
#[derive(Debug)]
pub enum SiteReply {
    Result(pb::QueryResult),
    /// The site's answer to an auditor's read of its log.
    Audit(pb::AuditResult),
    /// The connection ended before the site answered.
    Disconnected,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DispatchError {
    #[error("not connected")]
    NotConnected,
    #[error("the site's send queue is full")]
    Busy,
}

struct Connection {
    id: u64,
    tx: Outbound,
    pending: HashMap<String, oneshot::Sender<SiteReply>>,
}

struct SiteEntry {
    catalogue: pb::Catalogue,
    /// Per project, what the site's policy lets it use.
    project_views: Vec<pb::ProjectView>,
    min_cell_size: u32,
    node_version: String,
    remote_addr: String,
    connected_since_ms: u64,
    last_seen_ms: u64,
    certificate_not_after_unix: i64,
    connection: Option<Connection>,
    profile: String,
    /// Each project's privacy budget at the site, as of its last heartbeat or answer.
    budgets: Vec<pb::ProjectBudget>,
    /// The site's terms for model fits; `None` from a node that fits no models.
    model_rules: Option<pb::ModelRules>,
}

/// Who looks at the sites: an operator sees everything a site announced, with its network
/// address; a researcher sees, per site, only what their project(s) may query there.
#[derive(Debug, Clone, Copy)]
pub enum View<'a> {
    Operator,
    Projects(&'a [String]),
}

#[derive(Default)]
pub struct SiteRegistry {
    sites: Mutex<HashMap<String, SiteEntry>>,
    next_connection: AtomicU64,
    changed: Notify,
    /// Kept equal to the number of connected sites, for the metrics.
    connected_gauge: Gauge,
}

impl SiteRegistry {
    /// A registry that keeps `connected_gauge` at the number of connected sites.
    pub fn with_gauge(connected_gauge: Gauge) -> Self {
        Self { connected_gauge, ..Self::default() }
    }

    fn update_gauge(&self, sites: &HashMap<String, SiteEntry>) {
        let n = sites.values().filter(|e| e.connection.is_some()).count();
        self.connected_gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, SiteEntry>> {
        self.sites.lock()
    }

    /// Records a new connection of `hello.site`, replacing (and closing) an older one.
    pub fn attach(&self, hello: &pb::Hello, remote_addr: String, certificate_not_after_unix: i64, tx: Outbound) -> u64 {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed) + 1;
        let now = verbund_proto::unix_ms();
        let entry = SiteEntry {
            catalogue: hello.catalogue.clone().unwrap_or_default(),
            project_views: hello.project_views.clone(),
            min_cell_size: hello.min_cell_size,
            node_version: hello.node_version.clone(),
            remote_addr,
            connected_since_ms: now,
            last_seen_ms: now,
            certificate_not_after_unix,
            connection: Some(Connection { id, tx, pending: HashMap::new() }),
            profile: hello.profile.clone(),
            budgets: hello.budgets.clone(),
            model_rules: hello.model_rules.clone(),
        };
        let old = {
            let mut sites = self.lock();
            let old = sites.insert(hello.site.clone(), entry);
            self.update_gauge(&sites);
            old
        };
        if let Some(Connection { pending, .. }) = old.and_then(|o| o.connection) {
            tracing::warn!(site = %hello.site, "site reconnected; the previous connection is closed");
            for (_, waiter) in pending {
                let _ = waiter.send(SiteReply::Disconnected);
            }
        }
        self.changed.notify_waiters();
        id
    }

    /// A connected site announced new data (a later Hello on the same link, after an import):
    /// its catalogue, project views and budgets change; its connection stays.
    pub fn update_catalogue(&self, hello: &pb::Hello, connection: u64) -> bool {
        let mut sites = self.lock();
        match sites.get_mut(&hello.site) {
            Some(entry) if entry.connection.as_ref().is_some_and(|c| c.id == connection) => {
                entry.catalogue = hello.catalogue.clone().unwrap_or_default();
                entry.project_views = hello.project_views.clone();
                entry.budgets = hello.budgets.clone();
                entry.model_rules = hello.model_rules.clone();
                entry.last_seen_ms = verbund_proto::unix_ms();
                true
            }
            _ => false,
        }
    }

    /// Marks the site disconnected if `connection` is still its current one.
    pub fn detach(&self, site: &str, connection: u64) {
        let pending = {
            let mut sites = self.lock();
            let pending = match sites.get_mut(site) {
                Some(entry) if entry.connection.as_ref().is_some_and(|c| c.id == connection) => {
                    entry.connection.take().map(|c| c.pending)
                }
                _ => None,
            };
            self.update_gauge(&sites);
            pending
        };
        if let Some(pending) = pending {
            tracing::warn!(site, open_queries = pending.len(), "site disconnected");
            for (_, waiter) in pending {
                let _ = waiter.send(SiteReply::Disconnected);
            }
            self.changed.notify_waiters();
        }
    }

    /// Closes every site's link (at shutdown); the nodes will redial.
    pub fn close_all(&self) {
        let closed: Vec<Connection> = {
            let mut sites = self.lock();
            let closed = sites.values_mut().filter_map(|e| e.connection.take()).collect();
            self.update_gauge(&sites);
            closed
        };
        for connection in closed {
            for (_, waiter) in connection.pending {
                let _ = waiter.send(SiteReply::Disconnected);
            }
        }
        self.changed.notify_waiters();
    }

    pub fn touch(&self, site: &str) {
        if let Some(entry) = self.lock().get_mut(site) {
            entry.last_seen_ms = verbund_proto::unix_ms();
        }
    }

    /// A site's latest budgets (from its heartbeat).
    pub fn set_budgets(&self, site: &str, budgets: Vec<pb::ProjectBudget>) {
        if let Some(entry) = self.lock().get_mut(site) {
            entry.budgets = budgets;
        }
    }

    /// What an answer says is left of `project`'s budget at `site`, kept until the next
    /// heartbeat.
    pub fn note_cost(&self, site: &str, project: &str, cost: &pb::PrivacyCost) {
        if let Some(b) = self.lock().get_mut(site).and_then(|e| e.budgets.iter_mut().find(|b| b.project == project)) {
            b.epsilon_left = cost.epsilon_left;
            b.delta_left = cost.delta_left;
            b.renews_at = cost.renews_at;
        }
    }

    /// Hands a site's result to the query waiting for it (if it still waits).
    pub fn deliver(&self, site: &str, connection: u64, result: pb::QueryResult) {
        let waiter = self
            .lock()
            .get_mut(site)
            .and_then(|e| e.connection.as_mut())
            .filter(|c| c.id == connection)
            .and_then(|c| c.pending.remove(&result.query_id));
        match waiter {
            Some(w) => {
                let _ = w.send(SiteReply::Result(result));
            }
            None => tracing::debug!(site, query_id = %result.query_id, "late result discarded"),
        }
    }

    /// Hands a site's answer to an audit read to the request waiting for it.
    pub fn deliver_audit(&self, site: &str, connection: u64, result: pb::AuditResult) {
        let waiter = self
            .lock()
            .get_mut(site)
            .and_then(|e| e.connection.as_mut())
            .filter(|c| c.id == connection)
            .and_then(|c| c.pending.remove(&result.request_id));
        if let Some(w) = waiter {
            let _ = w.send(SiteReply::Audit(result));
        }
    }

    /// Forwards an auditor's read to a connected site; its answer arrives on the receiver.
    pub fn dispatch_audit(
        &self,
        site: &str,
        read: pb::AuditRead,
    ) -> Result<oneshot::Receiver<SiteReply>, DispatchError> {
        let id = read.request_id.clone();
        let message = pb::CoordinatorMessage { kind: Some(pb::coordinator_message::Kind::AuditRead(read)) };
        self.send_awaiting(site, id, message)
    }

    /// Stops waiting for an answer (a read that ran past its deadline).
    pub fn forget(&self, site: &str, id: &str) {
        if let Some(connection) = self.lock().get_mut(site).and_then(|e| e.connection.as_mut()) {
            connection.pending.remove(id);
        }
    }

    fn send_awaiting(
        &self,
        site: &str,
        id: String,
        message: pb::CoordinatorMessage,
    ) -> Result<oneshot::Receiver<SiteReply>, DispatchError> {
        let mut sites = self.lock();
        let connection = sites.get_mut(site).and_then(|e| e.connection.as_mut()).ok_or(DispatchError::NotConnected)?;
        let (tx, rx) = oneshot::channel();
        connection.tx.try_send(Ok(message)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => DispatchError::Busy,
            mpsc::error::TrySendError::Closed(_) => DispatchError::NotConnected,
        })?;
        connection.pending.insert(id, tx);
        Ok(rx)
    }

    /// Sends a query to a connected site and returns where its answer will arrive.
    pub fn dispatch(&self, site: &str, query: pb::NodeQuery) -> Result<oneshot::Receiver<SiteReply>, DispatchError> {
        let query_id = query.query_id.clone();
        let message = pb::CoordinatorMessage { kind: Some(pb::coordinator_message::Kind::Query(query)) };
        self.send_awaiting(site, query_id, message)
    }

    /// Stops waiting for a site's answer and tells the site to stop working on it.
    pub fn cancel(&self, site: &str, query_id: &str, reason: &str) {
        let mut sites = self.lock();
        let Some(connection) = sites.get_mut(site).and_then(|e| e.connection.as_mut()) else { return };
        if connection.pending.remove(query_id).is_none() {
            return;
        }
        let message = pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Cancel(pb::CancelQuery {
                query_id: query_id.to_string(),
                reason: reason.to_string(),
            })),
        };
        if connection.tx.try_send(Ok(message)).is_err() {
            tracing::warn!(site, query_id, "could not send cancel; the site will stop at its own deadline");
        }
    }

    /// Every site ever connected, sorted by name.
    pub fn list(&self) -> Vec<pb::SiteInfo> {
        self.list_for(&View::Operator)
    }

    /// Every site ever connected, sorted by name, as `view` may see it.
    pub fn list_for(&self, view: &View<'_>) -> Vec<pb::SiteInfo> {
        let mut out: Vec<pb::SiteInfo> = self
            .lock()
            .iter()
            .map(|(name, e)| {
                let budgets = e
                    .budgets
                    .iter()
                    .filter(|b| match view {
                        View::Operator => true,
                        View::Projects(projects) => projects.contains(&b.project),
                    })
                    .cloned()
                    .collect();
                let (catalogue, remote_addr) = match view {
                    View::Operator => (e.catalogue.clone(), e.remote_addr.clone()),
                    View::Projects(projects) => {
                        let views = e
                            .project_views
                            .iter()
                            .filter(|v| projects.contains(&v.project))
                            .filter_map(|v| v.catalogue.as_ref());
                        (crate::frontend::union_catalogue(views), String::new())
                    }
                };
                pb::SiteInfo {
                    site: name.clone(),
                    connected: e.connection.is_some(),
                    last_seen_unix_ms: e.last_seen_ms,
                    connected_since_unix_ms: e.connected_since_ms,
                    catalogue: Some(catalogue),
                    min_cell_size: e.min_cell_size,
                    remote_addr,
                    certificate_not_after_unix: e.certificate_not_after_unix,
                    profile: e.profile.clone(),
                    budgets,
                }
            })
            .collect();
        out.sort_by(|a, b| a.site.cmp(&b.site));
        out
    }

    /// The site's terms for model fits, as it announced them.
    pub fn model_rules(&self, site: &str) -> Option<pb::ModelRules> {
        self.lock().get(site).and_then(|e| e.model_rules.clone())
    }

    pub fn node_version(&self, site: &str) -> Option<String> {
        self.lock().get(site).map(|e| e.node_version.clone())
    }

    pub fn is_connected(&self, site: &str) -> bool {
        self.lock().get(site).is_some_and(|e| e.connection.is_some())
    }

    /// Waits until every named site is connected, or the timeout passes. Returns whether
    /// they all are.
    pub async fn wait_for(&self, sites: &[&str], timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if sites.iter().all(|s| self.is_connected(s)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return sites.iter().all(|s| self.is_connected(s));
            }
        }
    }

    /// Waits until the named site is disconnected, or the timeout passes.
    pub async fn wait_for_disconnect(&self, site: &str, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if !self.is_connected(site) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.is_connected(site);
            }
        }
    }
}
