//! Serving an auditor's read of this log over the network (`ReadAudit`): the request as the
//! wire carries it, the answer bounded in size, and the record that the read happened.
//! Node and coordinator answer the same way; each records the read in its own log before
//! the answer leaves.

use crate::{AuditError, Decision, Entry, Filter, PublicKey, Record, Requester, Result, Selection, VerifyOptions};
use std::path::Path;
use verbund_proto::v1 as pb;

/// Records sent when the request names no limit.
pub const DEFAULT_LIMIT: usize = 1000;
/// The most records one answer carries.
pub const MAX_LIMIT: usize = 10_000;
/// Entries beyond this many bytes are left out (and the answer marked truncated), well
/// below the largest message the network carries.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// The role a token must carry to read audit logs.
pub const AUDITOR_ROLE: &str = "auditor";

/// The selection a request asks for.
pub fn selection(request: &pb::AuditRequest) -> Result<Selection> {
    let text = |s: &String| (!s.is_empty()).then(|| s.clone());
    let decision = match request.decision.as_str() {
        "" => None,
        name => Some(Decision::parse(name).ok_or_else(|| {
            let names: Vec<&str> = Decision::ALL.iter().map(|d| d.as_str()).collect();
            AuditError::BadRequest(format!("unknown decision '{name}'; use one of {}", names.join(", ")))
        })?),
    };
    let limit = match request.limit {
        0 => DEFAULT_LIMIT,
        n => (n as usize).min(MAX_LIMIT),
    };
    Ok(Selection {
        filter: Filter {
            from_ms: (request.since_ms > 0).then_some(request.since_ms),
            until_ms: (request.until_ms > 0).then_some(request.until_ms),
            subject: text(&request.subject),
            project: text(&request.project),
            decision,
            ..Filter::default()
        },
        any_query_id: text(&request.query_id),
        limit: Some(limit),
    })
}

/// Answers `request` from the log in `dir` (blocking: it reads the log).
pub fn answer(
    dir: &Path,
    service: &str,
    public_key: &PublicKey,
    request: &pb::AuditRequest,
) -> Result<pb::AuditResponse> {
    let mut response = pb::AuditResponse { service: service.to_string(), ..Default::default() };
    match pb::AuditAction::try_from(request.action).unwrap_or(pb::AuditAction::Unspecified) {
        pb::AuditAction::Verify => {
            let options = VerifyOptions { public_key: Some(public_key), ..VerifyOptions::default() };
            let report = crate::verify_with(dir, options)?;
            response.verification = Some(pb::AuditVerification {
                intact: report.is_ok(),
                records: report.records,
                checkpoints: report.checkpoints,
                signatures: report.signatures,
                last_seq: report.last_seq.unwrap_or(0),
                problem: report.problem.map(|p| p.to_string()).unwrap_or_default(),
            });
        }
        pb::AuditAction::List => {
            let selected: Vec<Entry> = selection(request)?.entries(dir)?.collect::<Result<_>>()?;
            // Newest first while counting bytes, so that a cut keeps the newest records.
            let mut bytes = 0;
            let mut lines = Vec::with_capacity(selected.len());
            for entry in selected.iter().rev() {
                let line = entry_json(entry)?;
                bytes += line.len();
                if bytes > MAX_ANSWER_BYTES {
                    response.truncated = true;
                    break;
                }
                lines.push(line);
            }
            lines.reverse();
            response.truncated |= request.limit == 0 && selected.len() == DEFAULT_LIMIT;
            response.entries = lines;
        }
        pb::AuditAction::Unspecified => {
            return Err(AuditError::BadRequest("say what to do with the audit log: list or verify".into()));
        }
    }
    Ok(response)
}

/// One entry as a JSON line, as `verbund audit list --format json` prints it.
pub fn entry_json(entry: &Entry) -> Result<String> {
    let value = serde_json::json!({ "seq": entry.seq, "hash": entry.hash.to_string(), "record": entry.record });
    serde_json::to_string(&value).map_err(AuditError::Serialize)
}

/// Reads back a line written by [`entry_json`] (what a remote read returns).
pub fn parse_entry_json(line: &str) -> Result<Entry> {
    #[derive(serde::Deserialize)]
    struct Line {
        seq: u64,
        hash: String,
        record: Record,
    }
    let bad = |what: String| AuditError::BadRequest(format!("an entry in the answer is not readable: {what}"));
    let parsed: Line = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    let hash = crate::Hash::from_hex(&parsed.hash).ok_or_else(|| bad(format!("'{}' is not a hash", parsed.hash)))?;
    Ok(Entry { seq: parsed.seq, hash, record: parsed.record })
}

/// The record of a read of this log: who read what, and how much was sent.
pub fn read_record(service: &str, request_id: &str, requester: Requester, request: &pb::AuditRequest) -> Record {
    let value = serde_json::to_value(request).unwrap_or_default();
    Record::new(service, request_id, Decision::AuditRead, requester, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_become_selections_with_bounded_limits() {
        let request = pb::AuditRequest {
            action: pb::AuditAction::List as i32,
            decision: "timed_out".into(),
            query_id: "q1".into(),
            limit: 1_000_000,
            ..Default::default()
        };
        let s = selection(&request).unwrap();
        assert_eq!(s.filter.decision, Some(Decision::TimedOut));
        assert_eq!(s.any_query_id.as_deref(), Some("q1"));
        assert_eq!(s.limit, Some(MAX_LIMIT));
        let entry = Entry {
            seq: 7,
            hash: crate::Hash([3; 32]),
            record: Record::new("site-a", "q1", Decision::Answered, Requester::default(), serde_json::json!({})),
        };
        assert_eq!(parse_entry_json(&entry_json(&entry).unwrap()).unwrap(), entry);
        let bad = pb::AuditRequest { decision: "deleted".into(), ..request };
        assert!(selection(&bad).unwrap_err().to_string().contains("unknown decision 'deleted'"));
    }
}
