//! What one audit record says: who asked what, and what the service decided and released.
//!
//! A record holds identities, the typed request and hashes — never row-level data and never
//! tokens or other credentials. Keeping them out is the caller's duty: the log cannot tell a
//! bearer token in a free-text field from any other string. Release contents are logged as
//! a SHA-256 of the released bytes ([`Record::with_release`]), not as the values.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// What happened to a request. Every request gets `Received` and then exactly one outcome;
/// reads of the audit log itself are logged as `AuditRead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Received,
    Refused,
    Answered,
    Failed,
    TimedOut,
    Cancelled,
    AuditRead,
}

impl Decision {
    pub const ALL: [Decision; 7] = [
        Decision::Received,
        Decision::Refused,
        Decision::Answered,
        Decision::Failed,
        Decision::TimedOut,
        Decision::Cancelled,
        Decision::AuditRead,
    ];

    /// The name used in the log and in exports (`timed_out`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Received => "received",
            Decision::Refused => "refused",
            Decision::Answered => "answered",
            Decision::Failed => "failed",
            Decision::TimedOut => "timed_out",
            Decision::Cancelled => "cancelled",
            Decision::AuditRead => "audit_read",
        }
    }

    /// Parses the name written by [`Decision::as_str`] (for filters given on a command line).
    pub fn parse(name: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asked: the researcher's identity as established from their token (the subject and
/// roles it carried, and the project it was issued for) — never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Requester {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Why a request was refused: the stable code the caller reports, and its explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: String,
    pub reason: String,
}

/// What one site answered within a federated query, as the coordinator logs it: what the
/// site's own record must match when the two are reconciled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRelease {
    pub site: String,
    /// The site's outcome (`answered`, `refused`, `timed_out`, ...).
    pub outcome: String,
    /// Hex SHA-256 of the answer the coordinator received from the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_hash: Option<String>,
    /// The ε the site's answer cost the project's budget there (differentially private
    /// profiles; 0 for a repeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_cost: Option<f64>,
}

/// One audit record, as the caller builds it. The field order here is the order in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the event happened, milliseconds since the Unix epoch (UTC).
    pub time_ms: u64,
    /// The site or service that logged it (a node's site name, or `coordinator`).
    pub service: String,
    pub query_id: String,
    /// The id the researcher chose for the query, where it differs from `query_id` (the
    /// coordinator gives sites an id of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_query_id: Option<String>,
    pub decision: Decision,
    pub requester: Requester,
    /// The peer's identity from its TLS certificate, when the request came over mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The typed request, as JSON; read it back with [`Record::request_as`].
    pub request: Value,
    /// Hex SHA-256 of the canonical bytes of `request` ([`request_hash`]).
    pub request_hash: String,
    /// The researcher's SQL text (the coordinator logs it; nodes receive typed requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// Hex SHA-256 of exactly the bytes released to the requester.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_released: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_withheld: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// The ε the answer cost the project's privacy budget (0 for a repeat, which releases
    /// nothing new); absent where no budget applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_cost: Option<f64>,
    /// The privacy profile the answer was released under ("dp", "feasibility", "k-only",
    /// "test-only-raw").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The coordinator's account of each site's answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteRelease>,
}

impl Record {
    /// A record stamped with the current time, hashing `request` for `request_hash`.
    /// `request` is the typed request as JSON (`serde_json::to_value(&request)`).
    pub fn new(
        service: impl Into<String>,
        query_id: impl Into<String>,
        decision: Decision,
        requester: Requester,
        request: Value,
    ) -> Record {
        let request_hash = request_hash(&request);
        Record {
            time_ms: crate::now_ms(),
            service: service.into(),
            query_id: query_id.into(),
            client_query_id: None,
            decision,
            requester,
            peer: None,
            request,
            request_hash,
            sql: None,
            release_hash: None,
            groups_released: None,
            groups_withheld: None,
            refusal: None,
            privacy_cost: None,
            privacy_profile: None,
            duration_ms: None,
            sites: Vec::new(),
        }
    }

    pub fn with_client_query_id(mut self, id: impl Into<String>) -> Self {
        self.client_query_id = Some(id.into());
        self
    }

    pub fn with_sites(mut self, sites: Vec<SiteRelease>) -> Self {
        self.sites = sites;
        self
    }

    pub fn with_time_ms(mut self, time_ms: u64) -> Self {
        self.time_ms = time_ms;
        self
    }

    pub fn with_peer(mut self, peer: impl Into<String>) -> Self {
        self.peer = Some(peer.into());
        self
    }

    pub fn with_sql(mut self, sql: impl Into<String>) -> Self {
        self.sql = Some(sql.into());
        self
    }

    /// Records a release: the hash of exactly the bytes that left the service (so a copy
    /// the researcher holds can be matched later) and how many groups were released and
    /// withheld.
    pub fn with_release(mut self, released_bytes: &[u8], groups_released: u64, groups_withheld: u64) -> Self {
        self.release_hash = Some(sha256_hex(released_bytes));
        self.groups_released = Some(groups_released);
        self.groups_withheld = Some(groups_withheld);
        self
    }

    pub fn with_refusal(mut self, code: impl Into<String>, reason: impl Into<String>) -> Self {
        self.refusal = Some(Refusal { code: code.into(), reason: reason.into() });
        self
    }

    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration_ms = Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self
    }

    pub fn with_privacy_cost(mut self, cost: f64) -> Self {
        self.privacy_cost = Some(cost);
        self
    }

    pub fn with_privacy_profile(mut self, profile: impl Into<String>) -> Self {
        self.privacy_profile = Some(profile.into());
        self
    }

    /// The request read back as its type.
    pub fn request_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.request)
    }

    /// Whether `request_hash` is the hash of `request` (a record built by hand may disagree).
    pub fn request_hash_matches(&self) -> bool {
        request_hash(&self.request) == self.request_hash
    }

    /// Checks what JSON cannot carry faithfully, before the record is stored.
    pub(crate) fn validate(&self) -> Result<(), crate::AuditError> {
        let invalid = |field, why| Err(crate::AuditError::InvalidRecord { field, why });
        if self.privacy_cost.is_some_and(|c| !c.is_finite()) {
            return invalid("privacy_cost", "it is not a finite number (JSON has no NaN or infinity)");
        }
        if self.query_id.is_empty() {
            return invalid("query_id", "it is empty; every record belongs to a query");
        }
        if !self.request_hash_matches() {
            return invalid(
                "request_hash",
                "it is not the hash of request (build records with Record::new, or set it with request_hash())",
            );
        }
        if self.release_hash.as_deref().is_some_and(|h| crate::Hash::from_hex(h).is_none()) {
            return invalid("release_hash", "it is not 64 lower-case hex digits (use with_release or sha256_hex)");
        }
        Ok(())
    }
}

/// Hex SHA-256 of the canonical JSON bytes of a request ([`canonical_json`]): the same
/// request gives the same hash whatever the order its object keys were built in.
pub fn request_hash(request: &Value) -> String {
    sha256_hex(&canonical_json(request))
}

/// Lower-case hex SHA-256 of `bytes` (use it for release hashes of released bytes).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// Compact JSON with every object's keys sorted (by their UTF-8 bytes), strings and numbers
/// as serde_json writes them. Sorting here rather than relying on serde_json's map keeps the
/// hash stable even if some dependency turns on serde_json's `preserve_order`.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serializing a scalar `Value` to a Vec cannot fail (no maps with non-string keys, no I/O).
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_request_hash_ignores_key_order_but_not_values() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b = json!({"a": {"x": "s", "y": [1, 2]}, "b": 1});
        assert_eq!(canonical_json(&a), br#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&json!({"b": 2, "a": {"y": [1, 2], "x": "s"}})));
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn records_read_back_with_their_typed_request() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Count {
            table: String,
            min_group: u32,
        }
        let request = Count { table: "patients".into(), min_group: 5 };
        let record = Record::new(
            "site-a",
            "q1",
            Decision::Answered,
            Requester { subject: "alice".into(), project: Some("p1".into()), roles: vec!["researcher".into()] },
            serde_json::to_value(&request).unwrap(),
        )
        .with_release(b"released", 3, 1)
        .with_refusal("none", "n/a");
        let text = serde_json::to_string(&record).unwrap();
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.request_as::<Count>().unwrap(), request);
        assert!(back.request_hash_matches());
        assert_eq!(Decision::parse("timed_out"), Some(Decision::TimedOut));
        assert!(text.contains(r#""decision":"answered""#), "{text}");
        assert!(!text.contains("privacy_cost"), "absent options are left out: {text}");
    }
}
