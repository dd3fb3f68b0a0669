//! The coordinator's audit record of every researcher query: `received` once it is planned
//! (the typed request beside the researcher's SQL), and how it ended, with each site's
//! outcome and the hash of the answer that site sent, so that the sites' own records can
//! be reconciled with it. The answer leaves only after its record is durable.

use crate::RequestError;
use crate::fanout::SiteOutcome;
use std::sync::Arc;
use std::time::Duration;
use verbund_audit::{AuditLog, Decision, Record, Requester, SiteRelease, sha256_hex};
use verbund_ops::AuditMetrics;
use verbund_proto::v1 as pb;
use verbund_security::token::Claims;

/// The `service` of the coordinator's records.
pub const SERVICE: &str = "coordinator";

pub struct CoordinatorAudit {
    log: Arc<AuditLog>,
    metrics: AuditMetrics,
}

/// What a researcher asked: an aggregate query, or a model fit.
#[derive(Debug, Clone, Copy)]
pub enum Asking<'a> {
    Query(&'a pb::ResearchQuery),
    Model(&'a pb::ResearchModel),
}

/// What is known of a query before it is planned.
pub struct Asked<'a> {
    pub wire_id: &'a str,
    pub asking: Asking<'a>,
    pub requester: Requester,
}

impl<'a> Asked<'a> {
    pub fn new(wire_id: &'a str, request: &'a pb::ResearchQuery, claims: Option<&Claims>) -> Self {
        Self::of(wire_id, Asking::Query(request), claims)
    }

    pub fn for_model(wire_id: &'a str, request: &'a pb::ResearchModel, claims: Option<&Claims>) -> Self {
        Self::of(wire_id, Asking::Model(request), claims)
    }

    pub fn of(wire_id: &'a str, asking: Asking<'a>, claims: Option<&Claims>) -> Self {
        let project = match asking {
            Asking::Query(q) => &q.project,
            Asking::Model(m) => &m.project,
        };
        let project = (!project.is_empty()).then(|| project.clone());
        let requester = match claims {
            Some(c) => Requester { subject: c.sub.clone(), project, roles: c.roles.clone() },
            None => Requester { subject: "(token not verified)".into(), project, roles: vec![] },
        };
        Self { wire_id, asking, requester }
    }

    fn record(&self, decision: Decision, typed: Option<serde_json::Value>) -> Record {
        self.record_as(self.wire_id, decision, typed)
    }

    /// A record under `query_id` (the fit's, or one of its rounds').
    fn record_as(&self, query_id: &str, decision: Decision, typed: Option<serde_json::Value>) -> Record {
        // The typed request once planned; before that, the researcher's request as sent.
        let (sent, sql, client_id) = match self.asking {
            Asking::Query(q) => (serde_json::to_value(q), q.sql.as_str(), q.query_id.as_str()),
            Asking::Model(m) => (serde_json::to_value(m), m.condition.as_str(), m.query_id.as_str()),
        };
        let request = typed.unwrap_or_else(|| sent.unwrap_or_default());
        let mut record = Record::new(SERVICE, query_id, decision, self.requester.clone(), request).with_sql(sql);
        if !client_id.is_empty() {
            record = record.with_client_query_id(client_id);
        }
        record
    }
}

fn typed(value: &impl serde::Serialize) -> Option<serde_json::Value> {
    Some(serde_json::to_value(value).unwrap_or_default())
}

fn site_release(o: &SiteOutcome) -> SiteRelease {
    SiteRelease {
        site: o.site.clone(),
        outcome: crate::api::site_outcome_label(o.outcome).to_string(),
        // The site hashed the same encoding before sending it.
        release_hash: o.partial.as_ref().map(|p| sha256_hex(&prost::Message::encode_to_vec(p))),
        privacy_cost: o.partial.as_ref().and_then(|p| p.cost.as_ref()).map(|c| c.epsilon),
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
    pub async fn received(&self, asked: &Asked<'_>, planned: &impl serde::Serialize) -> Result<(), RequestError> {
        self.append(asked.record(Decision::Received, typed(planned))).await
    }

    /// One round of a model fit is about to go to the sites, under the round's own id (the
    /// id the sites record it under, so that reconciling matches round by round).
    pub async fn round_sent(
        &self,
        asked: &Asked<'_>,
        round_id: &str,
        request: &pb::ModelRequest,
    ) -> Result<(), RequestError> {
        self.append(asked.record_as(round_id, Decision::Received, typed(request))).await
    }

    /// What the sites answered to one round, before it is summed: nothing of it reaches the
    /// researcher but through the fit (recorded by [`CoordinatorAudit::answered`]).
    pub async fn round_answered(
        &self,
        asked: &Asked<'_>,
        round_id: &str,
        request: &pb::ModelRequest,
        outcomes: &[SiteOutcome],
        elapsed: Duration,
    ) -> Result<(), RequestError> {
        let record = asked
            .record_as(round_id, Decision::Answered, typed(request))
            .with_sites(outcomes.iter().map(site_release).collect())
            .with_duration(elapsed);
        self.append(record).await
    }

    /// The merged answer, before it goes to the researcher.
    pub async fn answered(
        &self,
        asked: &Asked<'_>,
        planned: &impl serde::Serialize,
        response: &impl prost::Message,
        rows: usize,
        outcomes: &[SiteOutcome],
        elapsed: Duration,
    ) -> Result<(), RequestError> {
        let withheld: u64 =
            outcomes.iter().filter_map(|o| o.partial.as_ref()).map(|p| u64::from(p.withheld_groups)).sum();
        let released = prost::Message::encode_to_vec(response);
        let record = asked
            .record(Decision::Answered, typed(planned))
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

impl CoordinatorAudit {
    /// A stored query the coordinator's restart interrupted: its end, so that reconciling
    /// finds no query without one. Best effort, as a refusal: nothing was released.
    pub async fn failed_at_restart(&self, stored: &crate::store::Stored) {
        let s = stored.status();
        let project = (!s.project.is_empty()).then(|| s.project.clone());
        let requester = Requester { subject: s.owner.clone(), project, roles: stored.roles.clone() };
        let request = serde_json::from_str(&stored.request_json).unwrap_or_default();
        let record = Record::new(SERVICE, &stored.wire_id, Decision::Failed, requester, request)
            .with_client_query_id(&s.query_id)
            .with_refusal("failed", &s.error_message);
        if let Err(error) = self.log.append(&record).await {
            self.metrics.write_failed();
            tracing::error!(%error, "cannot write the audit record of a query the restart interrupted");
        }
    }
}

/// How long the coordinator waits for a site's answer to an audit read.
const SITE_READ_TIMEOUT: Duration = Duration::from_secs(30);

impl crate::Coordinator {
    /// An auditor's read of the coordinator's log or of a site's (forwarded over its link).
    /// The read is recorded here, with what was sent, before the answer leaves.
    pub async fn read_audit(
        &self,
        request: pb::AuditRequest,
        claims: &Claims,
        token: &str,
    ) -> Result<pb::AuditResponse, RequestError> {
        let Some(audit) = self.audit() else { return Err(RequestError::AuditUnavailable) };
        let request_id = uuid::Uuid::new_v4().to_string();
        let requester = Requester { subject: claims.sub.clone(), project: None, roles: claims.roles.clone() };
        let outcome = if !claims.roles.iter().any(|r| r == verbund_audit::remote::AUDITOR_ROLE) {
            Err(crate::Forbidden::NotAnAuditor.into())
        } else if request.site.is_empty() {
            let (dir, key, asked) = (audit.log.dir().to_path_buf(), audit.log.public_key(), request.clone());
            match tokio::task::spawn_blocking(move || verbund_audit::remote::answer(&dir, SERVICE, &key, &asked)).await
            {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(verbund_audit::AuditError::BadRequest(why))) => Err(RequestError::BadAuditRequest(why)),
                Ok(Err(error)) => {
                    tracing::error!(%error, "cannot read the audit log");
                    Err(RequestError::AuditUnavailable)
                }
                Err(error) => {
                    tracing::error!(%error, "reading the audit log stopped");
                    Err(RequestError::AuditUnavailable)
                }
            }
        } else {
            self.read_site_audit(&request_id, &request, claims, token).await
        };
        if let Ok(pb::AuditResponse { verification: Some(v), .. }) = &outcome
            && request.site.is_empty()
        {
            audit.metrics.verified(v.intact);
        }
        let mut record = verbund_audit::remote::read_record(SERVICE, &request_id, requester, &request);
        record = match &outcome {
            Ok(response) => {
                record.with_release(&prost::Message::encode_to_vec(response), response.entries.len() as u64, 0)
            }
            Err(error) => record.with_refusal(error.outcome(), error.to_string()),
        };
        audit.append(record).await?;
        outcome
    }

    async fn read_site_audit(
        &self,
        request_id: &str,
        request: &pb::AuditRequest,
        claims: &Claims,
        token: &str,
    ) -> Result<pb::AuditResponse, RequestError> {
        let site = request.site.clone();
        if !self.knows_site(&site) {
            let known: Vec<String> = self.sites().list().into_iter().map(|s| s.site).collect();
            return Err(RequestError::UnknownSite { site, known: known.join(", ") });
        }
        let read = pb::AuditRead {
            request_id: request_id.to_string(),
            identity: Some(pb::Identity {
                researcher_token: token.to_string(),
                researcher: claims.sub.clone(),
                project: String::new(),
            }),
            request: Some(request.clone()),
        };
        let unreachable = |why: String| RequestError::SiteUnreachable { site: site.clone(), why };
        let reply = self.sites().dispatch_audit(&site, read).map_err(|e| unreachable(e.to_string()))?;
        let reply = match tokio::time::timeout(SITE_READ_TIMEOUT, reply).await {
            Ok(reply) => reply,
            Err(_) => {
                self.sites().forget(&site, request_id);
                return Err(unreachable(format!("no answer within {} s", SITE_READ_TIMEOUT.as_secs())));
            }
        };
        match reply {
            Ok(crate::sites::SiteReply::Audit(result)) => match result.outcome {
                Some(pb::audit_result::Outcome::Response(response)) => Ok(response),
                Some(pb::audit_result::Outcome::Refusal(r)) => {
                    Err(RequestError::SiteRefused { site, code: r.code(), message: r.message })
                }
                None => Err(unreachable("its answer was empty".into())),
            },
            Ok(_) | Err(_) => Err(unreachable("the connection broke before it answered".into())),
        }
    }
}
