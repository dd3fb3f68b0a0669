//! Choosing records the way an operator asks for them (`verbund audit list`, `export`,
//! `show`): time bounds as people write them, a query id that may be either of a query's
//! ids, and "the newest N".

use crate::read::{Entry, Filter, entries};
use crate::{AuditError, Result};
use std::collections::VecDeque;
use std::path::Path;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// Which records an operator's command reads: [`Filter`]'s conditions, a query id matched
/// against both ids a record may carry, and a limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub filter: Filter,
    /// Matches records whose `query_id` *or* `client_query_id` is this: the researcher
    /// knows their own id, a site only the coordinator's.
    pub any_query_id: Option<String>,
    /// Only the newest this many matching records (still returned oldest first).
    pub limit: Option<usize>,
}

impl Selection {
    pub fn matches(&self, entry: &Entry) -> bool {
        let r = &entry.record;
        self.any_query_id.as_deref().is_none_or(|id| r.query_id == id || r.client_query_id.as_deref() == Some(id))
            && self.filter.matches(entry.seq, r)
    }

    /// The selected records of the log in `dir`, oldest first. Without a limit they are
    /// read lazily; with one, the whole log is read once, keeping only the newest `limit`.
    /// A line that cannot be read is an `Err` item (with a limit: the only item).
    pub fn entries(&self, dir: &Path) -> Result<Box<dyn Iterator<Item = Result<Entry>>>> {
        let selection = self.clone();
        let matching = entries(dir, self.filter.clone())?
            .filter(move |entry| entry.as_ref().map_or(true, |entry| selection.matches(entry)));
        let Some(limit) = self.limit else { return Ok(Box::new(matching)) };
        let mut newest = VecDeque::with_capacity(limit.min(4096));
        for entry in matching {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return Ok(Box::new(std::iter::once(Err(e)))),
            };
            if newest.len() == limit {
                newest.pop_front();
            }
            if limit > 0 {
                newest.push_back(entry);
            }
        }
        Ok(Box::new(newest.into_iter().map(Ok)))
    }
}

/// A lower time bound (inclusive), in Unix milliseconds: RFC 3339 (`2026-11-30T10:00:00Z`,
/// `2026-11-30T11:00:00.5+01:00`) or a date (`2026-11-30`: from 00:00 UTC that day).
pub fn parse_since(text: &str) -> Result<u64> {
    parse_time(text, false)
}

/// An upper time bound (exclusive), in Unix milliseconds: RFC 3339, or a date, which
/// includes that whole day (`2026-11-30`: until 00:00 UTC on 2026-12-01).
pub fn parse_until(text: &str) -> Result<u64> {
    parse_time(text, true)
}

fn parse_time(text: &str, until: bool) -> Result<u64> {
    let bad = |why: &str| AuditError::BadTime { text: text.to_string(), why: why.to_string() };
    let text = text.trim();
    let time = if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        time
    } else if let Ok(date) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        let date = if until { date.next_day().ok_or_else(|| bad("the date is the last one there is"))? } else { date };
        date.midnight().assume_utc()
    } else if text
        .get(10..)
        .is_some_and(|rest| rest.starts_with(['T', 't', ' ']) && !rest.contains(['Z', 'z', '+', '-']))
    {
        // A local time without a zone would depend on where the command runs.
        return Err(bad("it has no time zone; add Z for UTC (2026-11-30T10:00:00Z) or an offset (+01:00)"));
    } else {
        return Err(bad("it is neither RFC 3339 nor a date"));
    };
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| bad("it is before 1970, when no record can have been written"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    /// 2026-11-30T00:00:00Z.
    const NOV30: u64 = 1_795_996_800_000;

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(parse_since("2026-11-30T00:00:00Z").unwrap(), NOV30);
        assert_eq!(parse_since("2026-11-30T10:00:00Z").unwrap(), NOV30 + 10 * 3_600_000);
        assert_eq!(parse_since("2026-11-30T10:00:00.250Z").unwrap(), NOV30 + 10 * 3_600_000 + 250);
        // The offset is honoured: 11:00 at +01:00 is 10:00 UTC.
        assert_eq!(parse_since("2026-11-30T11:00:00+01:00").unwrap(), NOV30 + 10 * 3_600_000);
        assert_eq!(parse_until("2026-11-30T10:00:00Z").unwrap(), NOV30 + 10 * 3_600_000);
        // A date starts its day as a lower bound and includes it as an upper bound.
        assert_eq!(parse_since("2026-11-30").unwrap(), NOV30);
        assert_eq!(parse_until("2026-11-30").unwrap(), NOV30 + DAY);
        assert_eq!(parse_until("2026-12-31").unwrap(), NOV30 + 32 * DAY);
        assert_eq!(crate::utc(parse_since("2024-02-29").unwrap()), "2024-02-29T00:00:00.000Z");
    }

    #[test]
    fn bad_times_say_what_to_write() {
        for (text, why) in [
            ("2026-11-30T10:00:00", "no time zone"),
            ("yesterday", "neither RFC 3339 nor a date"),
            ("2026-13-01", "neither RFC 3339 nor a date"),
            ("2026-02-30", "neither RFC 3339 nor a date"),
            ("30.11.2026", "neither RFC 3339 nor a date"),
            ("", "neither RFC 3339 nor a date"),
            ("1969-12-31T23:59:59Z", "before 1970"),
        ] {
            let error = parse_since(text).unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
            assert!(error.contains("2026-11-30T10:00:00Z"), "the message shows the form: {error}");
        }
    }

    #[test]
    fn a_query_id_matches_either_id() {
        use crate::{Decision, Hash, Record, Requester};
        let record =
            Record::new("coordinator", "uuid-1", Decision::Answered, Requester::default(), serde_json::json!({}))
                .with_client_query_id("mine");
        let entry = Entry { seq: 1, hash: Hash::GENESIS, record };
        let select = |id: &str| Selection { any_query_id: Some(id.into()), ..Selection::default() };
        assert!(select("uuid-1").matches(&entry));
        assert!(select("mine").matches(&entry));
        assert!(!select("other").matches(&entry));
        assert!(Selection::default().matches(&entry));
    }
}
