//! Exporting records: JSON lines (the entries as stored, one per line) or CSV (one flat row
//! per record), and [`FlatRow`] for tables on a terminal.

use crate::read::Entry;
use crate::{AuditError, Result};
use serde::Serialize;
use std::io::Write;

/// One record flattened into text columns, in [`FlatRow::HEADER`] order. Absent values are
/// empty strings; roles are joined with `;`.
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
}

impl FlatRow {
    pub const HEADER: [&'static str; 21] = [
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
        }
    }

    /// The values in [`FlatRow::HEADER`] order (for a table renderer).
    pub fn values(&self) -> [&str; 21] {
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
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
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

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_714_566_896_789), "2024-05-01T12:34:56.789Z");
    }
}
