//! What a Flight SQL client gets back for a query: the handles it holds (a statement's ticket,
//! a prepared statement) and the verbund metadata on the result's schema.

use crate::RequestError;
use prost::Message;
use serde_json::json;
use std::collections::HashMap;
use tonic::Status;
use verbund_proto::v1 as pb;
use verbund_security::token::Claims;

/// A statement's ticket: whose query, and its id. The owner is checked against the token on
/// DoGet, so a ticket passed on is worth nothing to anyone else.
#[derive(Clone, PartialEq, Message)]
pub(super) struct StatementHandle {
    #[prost(string, tag = "1")]
    pub owner: String,
    #[prost(string, tag = "2")]
    pub query_id: String,
}

/// A prepared statement, stateless: what to run. Executing it runs the query as a statement
/// (access, quota and audit as for any query); closing it frees nothing.
#[derive(Clone, PartialEq, Message)]
pub(super) struct PreparedHandle {
    #[prost(string, tag = "1")]
    pub sql: String,
    #[prost(string, tag = "2")]
    pub project: String,
    #[prost(string, repeated, tag = "3")]
    pub sites: Vec<String>,
}

impl StatementHandle {
    pub fn decode_from(bytes: &[u8]) -> Result<Self, Status> {
        Self::decode(bytes).map_err(|_| Status::invalid_argument("this ticket is not a verbund statement handle"))
    }
}

impl PreparedHandle {
    pub fn decode_from(bytes: &[u8]) -> Result<Self, Status> {
        Self::decode(bytes)
            .map_err(|_| Status::invalid_argument("this handle is not a verbund prepared statement; prepare it again"))
    }
}

/// Schema metadata keys (docs/flight-sql.md).
pub const QUERY_ID: &str = "verbund.query_id";
pub const COMPLETE: &str = "verbund.complete";
pub const SITES: &str = "verbund.sites";
pub const NOTES: &str = "verbund.notes";
pub const EXPIRES: &str = "verbund.expires_unix_ms";

/// The metadata every result's schema carries: the query id, whether every site answered,
/// each site's status (the CLI's `--format json` shape) and the notes. `expires_unix_ms`:
/// until when DoGet can fetch the result again.
pub(super) fn metadata(response: &pb::QueryResponse, expires_unix_ms: Option<u64>) -> HashMap<String, String> {
    let complete = response.sites.iter().all(|s| s.outcome() == pb::SiteOutcome::Answered);
    let sites: Vec<serde_json::Value> = response.sites.iter().map(site_json).collect();
    let mut metadata = HashMap::from([
        (QUERY_ID.to_string(), response.query_id.clone()),
        (COMPLETE.to_string(), complete.to_string()),
        (SITES.to_string(), serde_json::Value::Array(sites).to_string()),
        (NOTES.to_string(), json!(response.notes).to_string()),
    ]);
    if let Some(expires) = expires_unix_ms {
        metadata.insert(EXPIRES.to_string(), expires.to_string());
    }
    metadata
}

/// One site's status as the CLI's `--format json` prints it (`verbund_cli::render::site_json`
/// with groups), plus its privacy profile and what the answer cost.
fn site_json(s: &pb::SiteStatus) -> serde_json::Value {
    let cost = s.cost.map(|c| {
        json!({
            "epsilon": c.epsilon,
            "delta": c.delta,
            "repeat": c.repeat,
            "epsilon_left": c.epsilon_left,
            "delta_left": c.delta_left,
            "renews_at": c.renews_at,
        })
    });
    json!({
        "site": s.site,
        "status": crate::api::outcome_name(s.outcome()),
        "message": s.message,
        "elapsed_ms": s.elapsed_ms,
        "groups": s.groups,
        "profile": s.profile,
        "cost": cost,
    })
}

impl super::FlightSql {
    /// The stored result of `owner`'s query `query_id`, and until when it is kept (unix ms).
    /// A Flight SQL ticket is its owner's alone, also where the network shares a project's
    /// queries.
    pub(super) async fn fetch_result(
        &self,
        claims: &Claims,
        owner: &str,
        query_id: &str,
    ) -> Result<(pb::QueryResponse, Option<u64>), Status> {
        if claims.sub != owner {
            let keep_hours = self.coordinator.config().queries.keep.as_secs().div_ceil(3600);
            return Err(RequestError::NoSuchQuery { id: query_id.to_string(), keep_hours }.into());
        }
        let stored = self.coordinator.result(claims, owner, query_id).await?;
        let expires = stored.status.map(|s| s.expires_unix_ms);
        match stored.result {
            Some(pb::result_response::Result::Query(response)) => Ok((response, expires)),
            Some(pb::result_response::Result::Model(_)) => Err(Status::invalid_argument(format!(
                "'{query_id}' is a model fit; Flight SQL fetches query results (use verbund result)"
            ))),
            None => Err(Status::not_found(format!("query '{query_id}' was cancelled before any site answered"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: &str) -> pb::QueryResponse {
        pb::QueryResponse { query_id: id.into(), ..Default::default() }
    }

    #[test]
    fn metadata_says_whether_every_site_answered() {
        let mut r = response("q");
        r.sites = vec![
            pb::SiteStatus { site: "a".into(), outcome: pb::SiteOutcome::Answered as i32, ..Default::default() },
            pb::SiteStatus { site: "b".into(), outcome: pb::SiteOutcome::TimedOut as i32, ..Default::default() },
        ];
        r.notes = vec!["partial answer".into()];
        let m = metadata(&r, Some(5));
        assert_eq!(m[COMPLETE], "false");
        assert_eq!(m[EXPIRES], "5");
        let sites: serde_json::Value = serde_json::from_str(&m[SITES]).unwrap_or_default();
        assert_eq!(sites[1]["status"], "timed out");
        assert_eq!(sites[1]["cost"], serde_json::Value::Null);
        assert_eq!(m[NOTES], r#"["partial answer"]"#);
    }
}
