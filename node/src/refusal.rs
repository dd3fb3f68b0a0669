//! Why a node did not answer, in one type: every reason a query can end without an answer,
//! its wire code and its metrics label, mapped in one place. Messages are for the
//! researcher: they name columns and limits, never data values or server paths.

use verbund_policies::AccessDenied;
use verbund_proto::v1 as pb;
use verbund_query::validate::InvalidRequest;
use verbund_security::token::TokenError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    InvalidRequest(#[from] InvalidRequest),
    /// The researcher's token did not verify at this site.
    #[error("site {site}: {reason}")]
    Unauthenticated { site: String, reason: TokenError },
    /// The site's policy does not allow this project / role / dataset / column.
    #[error(transparent)]
    PermissionDenied(#[from] AccessDenied),
    #[error(transparent)]
    ResourceExhausted(#[from] Exhausted),
    #[error("the query was cancelled")]
    Cancelled,
    #[error("the query ran past its deadline and was stopped")]
    TimedOut,
    #[error("site {site} is shutting down; retry later")]
    ShuttingDown { site: String },
    /// An audit read by a token without the auditor role.
    #[error("site {site}: reading the audit log needs a token with the role 'auditor'")]
    NotAnAuditor { site: String },
    /// This site's policy keeps its audit log to its own operators.
    #[error(
        "site {site} does not allow remote reads of its audit log (policy: remote_audit_reads); \
         its operators can read it locally"
    )]
    AuditReadsNotAllowed { site: String },
    #[error("{0}")]
    BadAuditRequest(String),
    /// The site could not write the audit record of this query, so it releases nothing.
    #[error(
        "site {site} cannot write its audit log and answers nothing unrecorded; its operators \
         find the reason in the node's log"
    )]
    AuditUnavailable { site: String },
    /// The request cannot be answered under the site's privacy profile (missing bounds or
    /// levels, or not a feasibility query where only those are answered).
    #[error(transparent)]
    Privacy(#[from] verbund_policies::PrivacyRefusal),
    /// The project's privacy budget at this site cannot pay for the query.
    #[error("{0}")]
    BudgetExhausted(String),
    #[error(
        "this site's policy releases numbers with differential privacy, but the node has no noise key \
         or privacy ledger; its operators must set noise_key and ledger in the node's configuration"
    )]
    PrivacyUnconfigured,
    /// The policy requires research consent, but the site serves no consent data.
    #[error(
        "this site's policy counts only patients with a research consent ([consent] require), but the \
         node serves no consent_provisions dataset; its operators must import the FHIR Consent resources"
    )]
    ConsentUnavailable,
    /// A model request this site cannot answer as asked (the request's form, or the site's
    /// rows do not fit it); worded without data values or counts.
    #[error(transparent)]
    InvalidModel(#[from] crate::model::ModelError),
    /// The site's rules for models refuse this part (docs/regression-plan.md §3): nothing of it
    /// leaves the node.
    #[error(transparent)]
    Model(#[from] verbund_policies::ModelRefusal),
    /// What went wrong is in the site's log, not in the answer.
    #[error("the site could not execute this query (the error is in the site's log)")]
    Internal,
}

/// A limit of the site's that the query would pass.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Exhausted {
    #[error(
        "the query needs more memory than this site allows one query (max_query_memory_mb); \
         filter or group more coarsely"
    )]
    Memory,
    #[error("the site is running {running} queries with {waiting} more waiting; try again shortly")]
    Busy { running: u32, waiting: u32 },
    #[error(
        "this query could compute up to {cells} cells (possible groups × (aggregates + histogram bins)), \
         more than this site's limit of {limit}; group more coarsely, or use fewer histograms or bins"
    )]
    Cells { cells: u64, limit: u64 },
    #[error(
        "grouping by '{column}' makes {levels} levels (NULL included), more than this site's limit of {limit} \
         (max_levels); use wider bins or fewer levels"
    )]
    Levels { column: String, levels: u64, limit: u32 },
    #[error("the answer would release more groups than this site's limit of {limit}; group more coarsely or filter")]
    Groups { limit: u32 },
    #[error(
        "the answer is too large to send ({}; the link carries at most {}); group more coarsely, \
         or ask for fewer histograms or bins",
        human_bytes(*bytes),
        human_bytes(*limit)
    )]
    AnswerSize { bytes: usize, limit: usize },
}

impl Refusal {
    /// Logs `what` (which may name internals) and refuses without it.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "query execution failed");
        Refusal::Internal
    }

    pub fn code(&self) -> pb::RefusalCode {
        use pb::RefusalCode as C;
        match self {
            Refusal::InvalidRequest(_) | Refusal::InvalidModel(_) => C::InvalidRequest,
            Refusal::Unauthenticated { .. } => C::Unauthenticated,
            Refusal::PermissionDenied(_)
            | Refusal::NotAnAuditor { .. }
            | Refusal::AuditReadsNotAllowed { .. }
            | Refusal::Privacy(_)
            | Refusal::Model(_) => C::Policy,
            Refusal::BudgetExhausted(_) => C::ResourceExhausted,
            Refusal::PrivacyUnconfigured | Refusal::ConsentUnavailable => C::Unavailable,
            Refusal::BadAuditRequest(_) => C::InvalidRequest,
            Refusal::ResourceExhausted(_) => C::ResourceExhausted,
            Refusal::Cancelled => C::Cancelled,
            Refusal::TimedOut => C::TimedOut,
            Refusal::ShuttingDown { .. } | Refusal::AuditUnavailable { .. } => C::Unavailable,
            Refusal::Internal => C::Internal,
        }
    }

    pub fn to_proto(&self) -> pb::Refusal {
        pb::Refusal { code: self.code() as i32, message: self.to_string() }
    }
}

/// The `outcome` label of a finished query in the node's metrics.
pub fn outcome_label(outcome: &Result<pb::PartialResult, Refusal>) -> &'static str {
    use pb::RefusalCode as C;
    let Err(refusal) = outcome else { return "answered" };
    if let Refusal::BudgetExhausted(_) = refusal {
        return "budget_exhausted";
    }
    match refusal.code() {
        C::InvalidRequest => "invalid_request",
        C::Policy => "policy",
        C::TimedOut => "timed_out",
        C::Cancelled => "cancelled",
        C::ResourceExhausted => "resource_exhausted",
        C::Unauthenticated => "unauthenticated",
        C::Unavailable => "unavailable",
        C::Internal | C::Unspecified => "internal",
    }
}

fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    } else {
        format!("{} KiB", n.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_wording_and_codes() {
        let r = Refusal::from(Exhausted::AnswerSize { bytes: 20 * 1024 * 1024, limit: 16 * 1024 * 1024 });
        assert_eq!(r.code(), pb::RefusalCode::ResourceExhausted);
        assert!(r.to_string().contains("(20.0 MiB; the link carries at most 16.0 MiB)"), "{r}");
        let r = Refusal::Unauthenticated { site: "a".into(), reason: TokenError::Expired };
        assert_eq!(r.to_proto().code(), pb::RefusalCode::Unauthenticated);
        assert!(r.to_string().starts_with("site a: the token has expired"));
        assert_eq!(outcome_label(&Err(Refusal::ShuttingDown { site: "a".into() })), "unavailable");
        assert_eq!(outcome_label(&Err(Refusal::internal("boom"))), "internal");
        assert_eq!(
            Refusal::Internal.to_string(),
            "the site could not execute this query (the error is in the site's log)"
        );
    }
}
