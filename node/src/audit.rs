//! The site's own audit record of every request: one record when it is admitted (or refused
//! before that) and one when it ends, each fsynced before anything about it leaves the
//! node. If a record cannot be written the node answers nothing: [`Refusal::AuditUnavailable`].

use crate::refusal::{Refusal, outcome_label};
use std::sync::Arc;
use std::time::Duration;
use verbund_audit::{AuditLog, Decision, Record, Requester};
use verbund_ops::AuditMetrics;
use verbund_proto::v1 as pb;

/// The log and what every record of this site shares.
pub struct SiteAudit {
    log: Arc<AuditLog>,
    metrics: AuditMetrics,
    site: String,
    /// Who sends this node its queries: the coordinator, as its certificate must name it.
    peer: Option<String>,
}

/// The requester as the record names them: from the verified token, or, when the token did
/// not verify, the name the coordinator forwarded, marked as such.
pub fn requester(q: &pb::NodeQuery, claims: Option<&verbund_security::token::Claims>) -> Requester {
    let identity = q.identity.clone().unwrap_or_default();
    let project = (!identity.project.is_empty()).then_some(identity.project);
    match claims {
        Some(c) => Requester { subject: c.sub.clone(), project, roles: c.roles.clone() },
        None => Requester { subject: format!("{} (unverified)", identity.researcher), project, roles: vec![] },
    }
}

fn decision(outcome: &Result<pb::PartialResult, Refusal>) -> Decision {
    match outcome {
        Ok(_) => Decision::Answered,
        Err(Refusal::Cancelled) => Decision::Cancelled,
        Err(Refusal::TimedOut) => Decision::TimedOut,
        Err(Refusal::Internal | Refusal::AuditUnavailable { .. }) => Decision::Failed,
        Err(_) => Decision::Refused,
    }
}

impl SiteAudit {
    pub fn new(log: Arc<AuditLog>, metrics: AuditMetrics, site: String, peer: Option<String>) -> Self {
        Self { log, metrics, site, peer }
    }

    pub fn log(&self) -> &Arc<AuditLog> {
        &self.log
    }

    fn record(&self, q: &pb::NodeQuery, decision: Decision, requester: Requester) -> Record {
        // The typed request (an aggregate query or a model's round) in protobuf's JSON
        // mapping: readable, and readable back.
        let request = match (&q.query, &q.model) {
            (Some(query), _) => serde_json::to_value(query).ok(),
            (None, Some(model)) => serde_json::to_value(model).ok(),
            (None, None) => None,
        };
        let request = request.unwrap_or_default();
        let record = Record::new(&self.site, &q.query_id, decision, requester, request);
        match &self.peer {
            Some(peer) => record.with_peer(peer),
            None => record,
        }
    }

    async fn append(&self, record: Record) -> Result<(), Refusal> {
        self.log.append(&record).await.map(drop).map_err(|error| {
            self.metrics.write_failed();
            tracing::error!(%error, "cannot write the audit record; the query is refused instead");
            Refusal::AuditUnavailable { site: self.site.clone() }
        })
    }

    /// The request was admitted: its token verified.
    pub async fn received(&self, q: &pb::NodeQuery, requester: Requester) -> Result<(), Refusal> {
        self.append(self.record(q, Decision::Received, requester)).await
    }

    /// How the request ended. What it returns is what may leave the node: the outcome, or a
    /// refusal if its record could not be written.
    pub async fn finished(
        &self,
        q: &pb::NodeQuery,
        requester: Requester,
        outcome: Result<pb::PartialResult, Refusal>,
        elapsed: Duration,
    ) -> Result<pb::PartialResult, Refusal> {
        let mut record = self.record(q, decision(&outcome), requester).with_duration(elapsed);
        record = match &outcome {
            Ok(answer) => {
                // Exactly the bytes that go to the coordinator, which hashes what it receives.
                let released = prost::Message::encode_to_vec(answer);
                let mut record =
                    record.with_release(&released, answer.groups.len() as u64, u64::from(answer.withheld_groups));
                if !answer.profile.is_empty() {
                    record = record.with_privacy_profile(&answer.profile);
                }
                if let Some(cost) = &answer.cost {
                    record = record.with_privacy_cost(cost.epsilon);
                }
                record
            }
            Err(refusal) => record.with_refusal(outcome_label(&Err(refusal.clone())), refusal.to_string()),
        };
        self.append(record).await?;
        outcome
    }
}

impl crate::Node {
    /// Answers an auditor's read of this site's log, forwarded by the coordinator: the token
    /// verified here, the auditor role and this site's policy checked, and the read itself
    /// recorded before the answer leaves.
    pub async fn read_audit(&self, read: &pb::AuditRead) -> pb::AuditResult {
        let outcome = self.serve_audit_read(read).await;
        let outcome = match outcome {
            Ok(response) => pb::audit_result::Outcome::Response(response),
            Err(refusal) => pb::audit_result::Outcome::Refusal(refusal.to_proto()),
        };
        pb::AuditResult { request_id: read.request_id.clone(), outcome: Some(outcome) }
    }

    async fn serve_audit_read(&self, read: &pb::AuditRead) -> Result<pb::AuditResponse, Refusal> {
        let site = self.site().to_string();
        let token = read.identity.as_ref().map(|i| i.researcher_token.as_str()).unwrap_or_default();
        let request = read.request.clone().unwrap_or_default();
        let (requester, decided) = match self.tokens().verify(token) {
            Err(reason) => {
                let who = Requester { subject: "(token not verified)".into(), project: None, roles: vec![] };
                (who, Err(Refusal::Unauthenticated { site: site.clone(), reason }))
            }
            Ok(claims) => {
                let who = Requester { subject: claims.sub.clone(), project: None, roles: claims.roles.clone() };
                let decided = if !claims.roles.iter().any(|r| r == verbund_audit::remote::AUDITOR_ROLE) {
                    Err(Refusal::NotAnAuditor { site: site.clone() })
                } else if !self.engine().policy().remote_audit_reads {
                    Err(Refusal::AuditReadsNotAllowed { site: site.clone() })
                } else {
                    Ok(())
                };
                (who, decided)
            }
        };
        let Some(audit) = self.audit() else {
            return Err(Refusal::internal("an audit read reached a node without an audit log"));
        };
        let outcome = match decided {
            Err(refusal) => Err(refusal),
            Ok(()) => {
                let (dir, key, request) = (audit.log.dir().to_path_buf(), audit.log.public_key(), request.clone());
                let service = site.clone();
                match tokio::task::spawn_blocking(move || verbund_audit::remote::answer(&dir, &service, &key, &request))
                    .await
                {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(verbund_audit::AuditError::BadRequest(why))) => Err(Refusal::BadAuditRequest(why)),
                    Ok(Err(error)) => Err(Refusal::internal(error)),
                    Err(error) => Err(Refusal::internal(error)),
                }
            }
        };
        if let Ok(pb::AuditResponse { verification: Some(v), .. }) = &outcome {
            audit.metrics.verified(v.intact);
        }
        let mut record = verbund_audit::remote::read_record(&site, &read.request_id, requester, &request);
        if let Some(peer) = &audit.peer {
            record = record.with_peer(peer);
        }
        record = match &outcome {
            Ok(response) => {
                record.with_release(&prost::Message::encode_to_vec(response), response.entries.len() as u64, 0)
            }
            Err(refusal) => record.with_refusal(outcome_label(&Err(refusal.clone())), refusal.to_string()),
        };
        audit.append(record).await?;
        outcome
    }
}
