//! What a Flight SQL client gets back for a query: the handles it holds (a statement's ticket,
//! a prepared statement), the verbund metadata on the result's schema, and the results kept
//! for its DoGet.

use parking_lot::Mutex;
use prost::Message;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tonic::Status;
use verbund_proto::v1 as pb;

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
        "status": outcome_name(s.outcome()),
        "message": s.message,
        "elapsed_ms": s.elapsed_ms,
        "groups": s.groups,
        "profile": s.profile,
        "cost": cost,
    })
}

/// A site's outcome in the CLI's words (`verbund_cli::render::outcome_name`: the CLI depends on
/// this crate, not the other way round).
fn outcome_name(o: pb::SiteOutcome) -> &'static str {
    match o {
        pb::SiteOutcome::Answered => "answered",
        pb::SiteOutcome::Refused => "refused",
        pb::SiteOutcome::TimedOut => "timed out",
        pb::SiteOutcome::Cancelled => "cancelled",
        pb::SiteOutcome::NotConnected => "not connected",
        pb::SiteOutcome::Disconnected => "disconnected",
        pb::SiteOutcome::Failed => "failed",
        pb::SiteOutcome::Unspecified => "unknown",
    }
}

/// How many Flight SQL results are kept for DoGet, over all researchers.
pub const KEPT_RESULTS: usize = 256;

/// The last [`KEPT_RESULTS`] results of Flight SQL queries, by owner and query id: what a
/// DoGet fetches until the coordinator keeps every result itself (the query store).
#[derive(Default)]
pub(super) struct KeptResults(Mutex<VecDeque<(String, String, Arc<pb::QueryResponse>)>>);

impl KeptResults {
    pub fn keep(&self, owner: &str, response: pb::QueryResponse) -> Arc<pb::QueryResponse> {
        let response = Arc::new(response);
        let mut kept = self.0.lock();
        kept.retain(|(o, id, _)| !(o == owner && id == &response.query_id));
        if kept.len() >= KEPT_RESULTS {
            kept.pop_front();
        }
        kept.push_back((owner.to_string(), response.query_id.clone(), response.clone()));
        response
    }

    pub fn get(&self, owner: &str, query_id: &str) -> Option<Arc<pb::QueryResponse>> {
        self.0.lock().iter().rev().find(|(o, id, _)| o == owner && id == query_id).map(|(_, _, r)| r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: &str) -> pb::QueryResponse {
        pb::QueryResponse { query_id: id.into(), ..Default::default() }
    }

    #[test]
    fn kept_results_are_bounded_and_owned() {
        let kept = KeptResults::default();
        for i in 0..KEPT_RESULTS + 1 {
            kept.keep("alice", response(&i.to_string()));
        }
        assert!(kept.get("alice", "0").is_none(), "the oldest result is dropped");
        assert!(kept.get("alice", &KEPT_RESULTS.to_string()).is_some());
        assert!(kept.get("bob", "1").is_none(), "another researcher's query is not found");
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
