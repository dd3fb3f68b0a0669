//! The coordinator's audit record of every researcher query: `received` once it is planned
//! (the typed request beside the researcher's SQL), and how it ended, with each site's
//! outcome and the hash of the answer that site sent, so that the sites' own records can
//! be reconciled with it. The answer leaves only after its record is durable.

use crate::RequestError;
use crate::fanout::SiteOutcome;
use std::sync::Arc;
use std::time::Duration;
use verbund_audit::{AuditLog, CommitHook, Decision, Record, Requester, SiteRelease, sha256_hex};
use verbund_ops::AuditMetrics;
use verbund_proto::v1 as pb;
use verbund_security::token::Claims;

/// The `service` of the coordinator's records.
pub const SERVICE: &str = "coordinator";

pub struct CoordinatorAudit {
    log: Arc<AuditLog>,
    metrics: AuditMetrics,
}

/// A metrics hook for [`verbund_audit::AuditConfig::on_commit`].
pub fn commit_hook(metrics: &AuditMetrics) -> CommitHook {
    let metrics = metrics.clone();
    Arc::new(move |c: &verbund_audit::CommitInfo| metrics.committed(c.records, c.fsync))
}

/// What is known of a query before it is planned.
pub struct Asked<'a> {
    pub wire_id: &'a str,
    pub request: &'a pb::ResearchQuery,
    pub requester: Requester,
}

impl<'a> Asked<'a> {
    pub fn new(wire_id: &'a str, request: &'a pb::ResearchQuery, claims: Option<&Claims>) -> Self {
        let project = (!request.project.is_empty()).then(|| request.project.clone());
        let requester = match claims {
            Some(c) => Requester { subject: c.sub.clone(), project, roles: c.roles.clone() },
            None => Requester { subject: "(token not verified)".into(), project, roles: vec![] },
        };
        Self { wire_id, request, requester }
    }

    fn record(&self, decision: Decision, typed: Option<&pb::AggregateQuery>) -> Record {
        // The typed request once planned; before that, the researcher's request as sent.
        let request = match typed {
            Some(t) => serde_json::to_value(t),
            None => serde_json::to_value(self.request),
        }
        .unwrap_or_default();
        let mut record = Record::new(SERVICE, self.wire_id, decision, self.requester.clone(), request)
            .with_sql(self.request.sql.clone());
        if !self.request.query_id.is_empty() {
            record = record.with_client_query_id(self.request.query_id.clone());
        }
        record
    }
}

fn site_release(o: &SiteOutcome) -> SiteRelease {
    SiteRelease {
        site: o.site.clone(),
        outcome: crate::api::site_outcome_label(o.outcome).to_string(),
        // The site hashed the same encoding before sending it.
        release_hash: o.partial.as_ref().map(|p| sha256_hex(&prost::Message::encode_to_vec(p))),
    }
}

impl CoordinatorAudit {
    pub fn new(log: Arc<AuditLog>, metrics: AuditMetrics) -> Self {
        Self { log, metrics }
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    async fn append(&self, record: Record) -> Result<(), RequestError> {
        self.log.append(&record).await.map(drop).map_err(|error| {
            self.metrics.write_failed();
            tracing::error!(%error, "cannot write the audit record; the query gets no answer");
            RequestError::AuditUnavailable
        })
    }

    /// The query is planned and about to go to the sites.
    pub async fn received(&self, asked: &Asked<'_>, typed: &pb::AggregateQuery) -> Result<(), RequestError> {
        self.append(asked.record(Decision::Received, Some(typed))).await
    }

    /// The merged answer, before it goes to the researcher.
    pub async fn answered(
        &self,
        asked: &Asked<'_>,
        typed: &pb::AggregateQuery,
        response: &pb::QueryResponse,
        rows: usize,
        outcomes: &[SiteOutcome],
        elapsed: Duration,
    ) -> Result<(), RequestError> {
        let withheld: u64 =
            outcomes.iter().filter_map(|o| o.partial.as_ref()).map(|p| u64::from(p.withheld_groups)).sum();
        let released = prost::Message::encode_to_vec(response);
        let record = asked
            .record(Decision::Answered, Some(typed))
            .with_release(&released, rows as u64, withheld)
            .with_sites(outcomes.iter().map(site_release).collect())
            .with_duration(elapsed);
        self.append(record).await
    }

    /// The query got no answer. Best effort: the researcher gets the refusal either way, and
    /// a refusal releases nothing.
    pub async fn refused(&self, asked: &Asked<'_>, error: &RequestError, elapsed: Duration) {
        let decision = match error {
            RequestError::Merge(_) | RequestError::AuditUnavailable => Decision::Failed,
            _ => Decision::Refused,
        };
        let record =
            asked.record(decision, None).with_refusal(error.outcome(), error.to_string()).with_duration(elapsed);
        if let Err(error) = self.log.append(&record).await {
            self.metrics.write_failed();
            tracing::error!(%error, "cannot write the audit record of a refused query");
        }
    }
}
