//! Exporting records: JSON lines (the entries as stored, one per line) or CSV (one flat row
//! per record), and [`FlatRow`] for tables on a terminal.

use crate::read::Entry;
use crate::{AuditError, Result};
use serde::Serialize;
use std::io::Write;

/// One record flattened into text columns, in [`FlatRow::HEADER`] order. Absent values are
/// empty strings; roles are joined with `;`; `sites` is the coordinator's account of each
/// site in one cell, `site:outcome` joined with `,` (`site-a:answered,site-b:refused`; the
/// sites' release hashes are in the JSON lines export).
///
/// The column order is part of the export format: scripts may read columns by position, so
/// a column is never moved or removed, and new columns are added at the end (which is why
/// `client_query_id` and `sites` come after `hash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlatRow {
    pub seq: String,
    pub time: String,
    pub time_ms: String,
    pub service: String,
    pub query_id: String,
    pub decision: String,
    pub subject: String,
    pub project: String,
    pub roles: String,
    pub peer: String,
    pub refusal_code: String,
    pub refusal_reason: String,
    pub groups_released: String,
    pub groups_withheld: String,
    pub duration_ms: String,
    pub privacy_cost: String,
    pub request_hash: String,
    pub release_hash: String,
    pub sql: String,
    pub request: String,
    pub hash: String,
    pub client_query_id: String,
    pub sites: String,
}

impl FlatRow {
    pub const HEADER: [&'static str; 23] = [
        "seq",
        "time",
        "time_ms",
        "service",
        "query_id",
        "decision",
        "subject",
        "project",
        "roles",
        "peer",
        "refusal_code",
        "refusal_reason",
        "groups_released",
        "groups_withheld",
        "duration_ms",
        "privacy_cost",
        "request_hash",
        "release_hash",
        "sql",
        "request",
        "hash",
        "client_query_id",
        "sites",
    ];

    pub fn new(entry: &Entry) -> FlatRow {
        let r = &entry.record;
        let text = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        FlatRow {
            seq: entry.seq.to_string(),
            time: utc(r.time_ms),
            time_ms: r.time_ms.to_string(),
            service: r.service.clone(),
            query_id: r.query_id.clone(),
            decision: r.decision.as_str().to_string(),
            subject: r.requester.subject.clone(),
            project: r.requester.project.clone().unwrap_or_default(),
            roles: r.requester.roles.join(";"),
            peer: r.peer.clone().unwrap_or_default(),
            refusal_code: r.refusal.as_ref().map(|x| x.code.clone()).unwrap_or_default(),
            refusal_reason: r.refusal.as_ref().map(|x| x.reason.clone()).unwrap_or_default(),
            groups_released: text(r.groups_released),
            groups_withheld: text(r.groups_withheld),
            duration_ms: text(r.duration_ms),
            privacy_cost: r.privacy_cost.map(|c| c.to_string()).unwrap_or_default(),
            request_hash: r.request_hash.clone(),
            release_hash: r.release_hash.clone().unwrap_or_default(),
            sql: r.sql.clone().unwrap_or_default(),
            request: r.request.to_string(),
            hash: entry.hash.to_hex(),
            client_query_id: r.client_query_id.clone().unwrap_or_default(),
            sites: r.sites.iter().map(|s| format!("{}:{}", s.site, s.outcome)).collect::<Vec<_>>().join(","),
        }
    }

    /// The values in [`FlatRow::HEADER`] order (for a table renderer).
    pub fn values(&self) -> [&str; 23] {
        [
            &self.seq,
            &self.time,
            &self.time_ms,
            &self.service,
            &self.query_id,
            &self.decision,
            &self.subject,
            &self.project,
            &self.roles,
            &self.peer,
            &self.refusal_code,
            &self.refusal_reason,
            &self.groups_released,
            &self.groups_withheld,
            &self.duration_ms,
            &self.privacy_cost,
            &self.request_hash,
            &self.release_hash,
            &self.sql,
            &self.request,
            &self.hash,
            &self.client_query_id,
            &self.sites,
        ]
    }
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    seq: u64,
    hash: String,
    record: &'a crate::Record,
}

/// Writes each entry as `{"seq":..,"hash":..,"record":{..}}` on its own line; stops at the
/// first error. Returns how many were written.
pub fn export_jsonl(entries: impl IntoIterator<Item = Result<Entry>>, out: impl Write) -> Result<u64> {
    let mut out = std::io::BufWriter::new(out);
    let mut n = 0;
    for entry in entries {
        let entry = entry?;
        let line = JsonEntry { seq: entry.seq, hash: entry.hash.to_hex(), record: &entry.record };
        serde_json::to_writer(&mut out, &line).map_err(AuditError::Serialize)?;
        out.write_all(b"\n").map_err(AuditError::Export)?;
        n += 1;
    }
    out.flush().map_err(AuditError::Export)?;
    Ok(n)
}

/// Writes a header and one [`FlatRow`] per entry as CSV; stops at the first error.
pub fn export_csv(entries: impl IntoIterator<Item = Result<Entry>>, out: impl Write) -> Result<u64> {
    let mut writer = csv::Writer::from_writer(out);
    let mut n = 0;
    for entry in entries {
        writer.serialize(FlatRow::new(&entry?))?;
        n += 1;
    }
    if n == 0 {
        writer.write_record(FlatRow::HEADER)?;
    }
    writer.flush().map_err(AuditError::Export)?;
    Ok(n)
}

/// `2024-05-01T12:34:56.789Z` for Unix milliseconds (proleptic Gregorian, UTC).
pub fn utc(time_ms: u64) -> String {
    let seconds = time_ms / 1000;
    let days = (seconds / 86_400) as i64;
    let in_day = seconds % 86_400;
    let (year, month, day) = verbund_calendar::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        time_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, Hash, Record, Requester, SiteRelease};

    #[test]
    fn the_csv_columns_keep_their_order() {
        // Scripts read columns by position: this list only ever grows at its end.
        assert_eq!(
            FlatRow::HEADER.join(","),
            "seq,time,time_ms,service,query_id,decision,subject,project,roles,peer,refusal_code,refusal_reason,\
             groups_released,groups_withheld,duration_ms,privacy_cost,request_hash,release_hash,sql,request,hash,\
             client_query_id,sites"
        );
        let site = |site: &str, outcome: &str| SiteRelease {
            site: site.into(),
            outcome: outcome.into(),
            release_hash: None,
            privacy_cost: None,
        };
        let record =
            Record::new("coordinator", "uuid", Decision::Answered, Requester::default(), serde_json::json!({}))
                .with_client_query_id("mine")
                .with_sites(vec![site("site-a", "answered"), site("site-b", "refused")]);
        let row = FlatRow::new(&Entry { seq: 1, hash: Hash::GENESIS, record });
        let values = row.values();
        assert_eq!(values.len(), FlatRow::HEADER.len());
        assert_eq!(&values[21..], ["mine", "site-a:answered,site-b:refused"]);
        let mut csv = Vec::new();
        let mut writer = csv::Writer::from_writer(&mut csv);
        writer.serialize(&row).expect("csv");
        drop(writer);
        assert!(String::from_utf8(csv).expect("utf8").trim_end().ends_with(",mine,\"site-a:answered,site-b:refused\""));
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_714_566_896_789), "2024-05-01T12:34:56.789Z");
    }
}
