//! The metrics of a node and of the coordinator. Names and labels are part of the
//! operator-facing interface (dashboards, alerts): change them only with a note in the
//! README. Labels carry outcomes and site names only, never anything from a query.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};
use std::time::Duration;

type Outcome = [(&'static str, &'static str); 1];
type SiteStatus = [(&'static str, String); 2];

/// Registers `metric` under `name` and hands it back for updating (clones share the value).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Latency buckets from 1 ms to ~65 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn build_info(registry: &mut Registry, role: &'static str) {
    let info = Info::new([("version", env!("CARGO_PKG_VERSION")), ("role", role)]);
    registry.register("verbund_build", "The running verbund version and role", info);
}

/// What a site node counts.
#[derive(Clone)]
pub struct NodeMetrics {
    queries: Family<Outcome, Counter>,
    duration: Histogram,
    running: Gauge,
    withheld_groups: Counter,
    withheld_bins: Counter,
    connected: Gauge,
    connects: Counter,
    epsilon_spent: Family<[(&'static str, String); 1], Counter<f64, std::sync::atomic::AtomicU64>>,
}

impl NodeMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        build_info(registry, "node");
        Self {
            queries: registered(
                registry,
                "verbund_node_queries",
                "Queries this site finished, by outcome (answered or the refusal reason)",
                Family::default(),
            ),
            duration: registered(
                registry,
                "verbund_node_query_duration_seconds",
                "Time from receiving a query to its answer or refusal",
                latency(),
            ),
            running: registered(
                registry,
                "verbund_node_queries_running",
                "Queries being executed now",
                Gauge::default(),
            ),
            withheld_groups: registered(
                registry,
                "verbund_node_withheld_groups",
                "Result groups withheld under the minimum cell size",
                Counter::default(),
            ),
            withheld_bins: registered(
                registry,
                "verbund_node_withheld_bins",
                "Histogram bins withheld under the minimum cell size",
                Counter::default(),
            ),
            connected: registered(
                registry,
                "verbund_node_coordinator_connected",
                "1 while the link to the coordinator is up",
                Gauge::default(),
            ),
            connects: registered(
                registry,
                "verbund_node_coordinator_connects",
                "Links established to the coordinator (more than one means reconnects)",
                Counter::default(),
            ),
            epsilon_spent: registered(
                registry,
                "verbund_node_privacy_epsilon_spent",
                "Privacy budget (ε) this site's answers cost, by project (repeats cost nothing)",
                Family::default(),
            ),
        }
    }

    /// Counts what an answer cost a project's privacy budget.
    pub fn privacy_spent(&self, project: &str, epsilon: f64) {
        if epsilon > 0.0 {
            self.epsilon_spent.get_or_create(&[("project", project.to_string())]).inc_by(epsilon);
        }
    }

    /// Marks a query as running until the guard is dropped.
    pub fn query_started(&self) -> RunningGuard {
        self.running.inc();
        RunningGuard(self.running.clone())
    }

    pub fn query_finished(&self, outcome: &'static str, elapsed: Duration, withheld_groups: u32, withheld_bins: u32) {
        self.queries.get_or_create(&[("outcome", outcome)]).inc();
        self.duration.observe(elapsed.as_secs_f64());
        self.withheld_groups.inc_by(u64::from(withheld_groups));
        self.withheld_bins.inc_by(u64::from(withheld_bins));
    }

    pub fn set_connected(&self, up: bool) {
        if up {
            self.connects.inc();
        }
        self.connected.set(i64::from(up));
    }

    pub fn is_connected(&self) -> bool {
        self.connected.get() == 1
    }
}

/// Called after each group commit of an audit log: records committed, fsync time.
pub type CommitObserver = std::sync::Arc<dyn Fn(usize, Duration) + Send + Sync>;

/// What an audit log counts, at a node and at the coordinator alike.
#[derive(Clone)]
pub struct AuditMetrics {
    records: Counter,
    fsync: Histogram,
    write_failures: Counter,
    verify_failures: Counter,
}

impl AuditMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        Self {
            records: registered(
                registry,
                "verbund_audit_records",
                "Audit records written and fsynced",
                Counter::default(),
            ),
            fsync: registered(
                registry,
                "verbund_audit_fsync_seconds",
                "Time one group commit of the audit log took to fsync",
                // 0.1 ms to ~3 s, doubling.
                Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            ),
            write_failures: registered(
                registry,
                "verbund_audit_write_failures",
                "Audit records that could not be written (the request was refused instead)",
                Counter::default(),
            ),
            verify_failures: registered(
                registry,
                "verbund_audit_verify_failures",
                "Verifications of the audit log that found a problem",
                Counter::default(),
            ),
        }
    }

    /// What the audit log calls after each group commit (records in it, its fsync time).
    pub fn on_commit(&self) -> CommitObserver {
        let metrics = self.clone();
        std::sync::Arc::new(move |records, fsync| metrics.committed(records, fsync))
    }

    pub fn committed(&self, records: usize, fsync: Duration) {
        self.records.inc_by(records as u64);
        self.fsync.observe(fsync.as_secs_f64());
    }

    pub fn write_failed(&self) {
        self.write_failures.inc();
    }

    pub fn verified(&self, ok: bool) {
        if !ok {
            self.verify_failures.inc();
        }
    }
}

/// What the coordinator counts.
#[derive(Clone)]
pub struct CoordinatorMetrics {
    queries: Family<Outcome, Counter>,
    duration: Histogram,
    running: Gauge,
    site_results: Family<SiteStatus, Counter>,
    withheld_cells: Counter,
    sites_connected: Gauge,
    sites_configured: Gauge,
    queued: Gauge,
    stored: Gauge,
    expired: Counter,
}

impl CoordinatorMetrics {
    pub fn new(registry: &mut Registry, sites_configured: usize) -> Self {
        build_info(registry, "coordinator");
        let m = Self {
            queries: registered(
                registry,
                "verbund_coordinator_queries",
                "Researcher queries finished, by outcome: answered (every asked site answered), partial, \
             rejected (invalid or unsupported), unauthenticated, forbidden, unavailable, failed",
                Family::default(),
            ),
            duration: registered(
                registry,
                "verbund_coordinator_query_duration_seconds",
                "Time from a researcher's request to the merged answer",
                latency(),
            ),
            running: registered(
                registry,
                "verbund_coordinator_queries_running",
                "Federated queries running now",
                Gauge::default(),
            ),
            site_results: registered(
                registry,
                "verbund_coordinator_site_results",
                "Per-site results of federated queries, by site and status",
                Family::default(),
            ),
            withheld_cells: registered(
                registry,
                "verbund_coordinator_withheld_cells",
                "Groups and histogram bins the sites withheld under their minimum cell size",
                Counter::default(),
            ),
            sites_connected: registered(
                registry,
                "verbund_coordinator_sites_connected",
                "Sites whose link is up now",
                Gauge::default(),
            ),
            sites_configured: registered(
                registry,
                "verbund_coordinator_sites_configured",
                "Sites this coordinator accepts",
                Gauge::default(),
            ),
            queued: registered(
                registry,
                "verbund_coordinator_queries_queued",
                "Researchers' queries waiting for a slot ([queries] max_running)",
                Gauge::default(),
            ),
            stored: registered(
                registry,
                "verbund_coordinator_stored_queries",
                "Queries and answers in the query store",
                Gauge::default(),
            ),
            expired: registered(
                registry,
                "verbund_coordinator_stored_queries_expired",
                "Stored queries deleted because their answers expired",
                Counter::default(),
            ),
        };
        m.sites_configured.set(i64::try_from(sites_configured).unwrap_or(i64::MAX));
        m
    }

    pub fn query_started(&self) -> RunningGuard {
        self.running.inc();
        RunningGuard(self.running.clone())
    }

    pub fn query_finished(&self, outcome: &'static str, elapsed: Duration) {
        self.queries.get_or_create(&[("outcome", outcome)]).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn site_result(&self, site: &str, status: &'static str, withheld_cells: u32) {
        self.site_results.get_or_create(&[("site", site.to_string()), ("status", status.to_string())]).inc();
        self.withheld_cells.inc_by(u64::from(withheld_cells));
    }

    /// Counts a query as waiting for a slot until the returned guard is dropped.
    pub fn query_queued(&self) -> RunningGuard {
        self.queued.inc();
        RunningGuard(self.queued.clone())
    }

    /// How many queries the store holds, and how many the last sweep deleted.
    pub fn stored_queries(&self, stored: u64, expired: u64) {
        self.stored.set(i64::try_from(stored).unwrap_or(i64::MAX));
        self.expired.inc_by(expired);
    }

    /// The gauge of connected sites (the site registry keeps it current).
    pub fn sites_connected(&self) -> Gauge {
        self.sites_connected.clone()
    }
}

/// Decrements a running-queries gauge when dropped, whichever way the query ends.
pub struct RunningGuard(Gauge);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
