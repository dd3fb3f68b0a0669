//! Reconciling the coordinator's log with the sites' logs (`verbund audit reconcile`): what
//! the coordinator says each site did with a query must be what the site itself logged.
//!
//! # What the logs are expected to hold
//! - The coordinator (`service` = [`COORDINATOR_SERVICE`]) logs each query under the id it
//!   sends to the sites (`query_id`, a UUID; the researcher's own id is `client_query_id`):
//!   a `received` record, then one outcome record whose `sites` lists every site it asked,
//!   with that site's outcome — `answered` (with the `release_hash` of the answer it got),
//!   `refused`, `timed_out`, `cancelled`, `failed`, `not_connected` or `disconnected`.
//! - A site (`service` = its site name) logs the same `query_id`: `received`, then exactly
//!   one outcome record (`answered` with the `release_hash` of what it sent, or `refused`,
//!   `timed_out`, `cancelled`, `failed`).
//!
//! # What is a finding ([`FindingKind`])
//! - The coordinator's outcome for a site says the site got the query — `answered`,
//!   `refused`, `timed_out`, `cancelled` or `failed` — but the site's log has no outcome
//!   record for it: [`FindingKind::MissingAtSite`]. For `not_connected` and `disconnected`
//!   the site may never have seen the query, so its having no record is no finding;
//!   `not_connected` means it was never sent, so a site record of it is
//!   [`FindingKind::OutcomeMismatch`]. After `disconnected` any site outcome is possible
//!   (the answer may have been lost on the way), and none is a finding.
//! - The site's outcome differs from the coordinator's (`answered` at one, `refused` at the
//!   other; also a site that answered after the coordinator gave up on it, `timed_out`):
//!   [`FindingKind::OutcomeMismatch`].
//! - Both say `answered` but the release hashes differ, or one is missing:
//!   [`FindingKind::ReleaseHashMismatch`] — what the site released is not what the
//!   coordinator received.
//! - A site logged a query the coordinator has no record of, or whose coordinator record
//!   does not name that site: [`FindingKind::UnknownAtCoordinator`].
//! - More than one outcome record for one query in one log: [`FindingKind::SeveralOutcomes`].
//! - A log holds records of another service (the wrong directory given for a site):
//!   [`FindingKind::WrongLog`], once per log and service; those records are not used.
//!
//! Sites the coordinator names but whose logs were not given are counted
//! ([`ReconcileReport::unchecked_sites`]), not findings. `audit_read` records play no part.
//!
//! # Scope
//! [`Scope`] picks the coordinator's queries: a query is in scope when any of its
//! coordinator records is (time window, query id), and then all of its records, and all the
//! sites' records of it, are compared whatever their times — so a window's edge does not
//! cut a query in two. A site record of a query the coordinator's log does not have at all
//! is reported when the site record itself is in scope.

use crate::read::Entry;
use crate::record::{Decision, SiteRelease};
use crate::text::{Column, render_table};
use crate::{AuditError, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// The `service` of the coordinator's records.
pub const COORDINATOR_SERVICE: &str = "coordinator";

/// The name the report uses for the coordinator's log.
const COORDINATOR_LOG: &str = "coordinator";

/// Which queries to reconcile; every condition set must hold. Times are Unix milliseconds,
/// `from_ms` inclusive and `until_ms` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The coordinator's query id or the researcher's (`client_query_id`).
    pub query_id: Option<String>,
    pub from_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl Scope {
    fn matches(&self, entry: &Entry) -> bool {
        let r = &entry.record;
        self.from_ms.is_none_or(|from| r.time_ms >= from)
            && self.until_ms.is_none_or(|until| r.time_ms < until)
            && self.query_id.as_deref().is_none_or(|id| r.query_id == id || r.client_query_id.as_deref() == Some(id))
    }
}

/// What kind of disagreement a [`Finding`] is (see the module docs for the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    MissingAtSite,
    OutcomeMismatch,
    ReleaseHashMismatch,
    UnknownAtCoordinator,
    SeveralOutcomes,
    WrongLog,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::MissingAtSite => "missing_at_site",
            FindingKind::OutcomeMismatch => "outcome_mismatch",
            FindingKind::ReleaseHashMismatch => "release_hash_mismatch",
            FindingKind::UnknownAtCoordinator => "unknown_at_coordinator",
            FindingKind::SeveralOutcomes => "several_outcomes",
            FindingKind::WrongLog => "wrong_log",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One disagreement between the coordinator's log and a site's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The site concerned (`coordinator` for a problem within the coordinator's log).
    pub site: String,
    /// The coordinator's query id (empty for [`FindingKind::WrongLog`]).
    pub query_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_query_id: Option<String>,
    /// The coordinator's record this is about, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator_seq: Option<u64>,
    /// The site's record this is about, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site_seq: Option<u64>,
    /// What disagrees, in words.
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.site)?;
        if !self.query_id.is_empty() {
            write!(f, " query {}", self.query_id)?;
        }
        if let Some(id) = &self.client_query_id {
            write!(f, " (client id {id})")?;
        }
        write!(f, ": {}", self.what)?;
        match (self.coordinator_seq, self.site_seq) {
            (Some(c), Some(s)) => write!(f, " [coordinator seq {c}, site seq {s}]"),
            (Some(c), None) => write!(f, " [coordinator seq {c}]"),
            (None, Some(s)) => write!(f, " [site seq {s}]"),
            (None, None) => Ok(()),
        }
    }
}

/// The findings, and what was compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// In the order of the coordinator's queries, then site records the coordinator does
    /// not know (by site, then seq), then wrong-log findings.
    pub findings: Vec<Finding>,
    /// The coordinator's queries in scope.
    pub queries: u64,
    /// Coordinator accounts of a site (one per query and site) checked against that site's log.
    pub site_outcomes_checked: u64,
    /// Records read from each site's log (`audit_read` and wrong-log records left out).
    pub site_records: BTreeMap<String, u64>,
    /// Sites the coordinator names whose logs were not given, with how many of their
    /// outcomes could therefore not be checked.
    pub unchecked_sites: BTreeMap<String, u64>,
}

impl ReconcileReport {
    pub fn is_ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// One line per finding (an aligned table), then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.findings.is_empty() {
            let columns = [
                Column::left("finding", 22),
                Column::left("site", 24),
                // A UUID and the researcher's id after it.
                Column::left("query id", 80),
                Column::right("coord seq", 20),
                Column::right("site seq", 20),
                Column::left("what", 400),
            ];
            let text = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
            let rows: Vec<Vec<String>> = self
                .findings
                .iter()
                .map(|f| {
                    let query = match &f.client_query_id {
                        Some(client) => format!("{} ({client})", f.query_id),
                        None => f.query_id.clone(),
                    };
                    vec![
                        f.kind.to_string(),
                        f.site.clone(),
                        query,
                        text(f.coordinator_seq),
                        text(f.site_seq),
                        f.what.clone(),
                    ]
                })
                .collect();
            out.push_str(&render_table(&columns, &rows));
            out.push('\n');
        }
        out.push_str(&self.summary());
        out
    }

    /// `12 queries of the coordinator, 30 site outcomes checked against 3 site logs: 2 findings`
    /// and a line for each site whose log was not given.
    pub fn summary(&self) -> String {
        let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let sites: Vec<String> = self.site_records.iter().map(|(site, n)| format!("{site}: {n}")).collect();
        let mut out = format!(
            "{} of the coordinator, {} checked against {} ({}): {}\n",
            plural(self.queries, "query", "queries"),
            plural(self.site_outcomes_checked, "site outcome", "site outcomes"),
            plural(self.site_records.len() as u64, "site log", "site logs"),
            if sites.is_empty() { "none given".to_string() } else { format!("records {}", sites.join(", ")) },
            if self.findings.is_empty() {
                "everything matches".to_string()
            } else {
                plural(self.findings.len() as u64, "finding", "findings")
            }
        );
        for (site, n) in &self.unchecked_sites {
            out.push_str(&format!(
                "not checked: {} at {site} (no --site-log {site}=DIR given)\n",
                plural(*n, "outcome", "outcomes")
            ));
        }
        out
    }
}

/// Reconciles `coordinator`'s records with each site's, `(site name, records)`: the whole
/// comparison at once; [`Reconciler`] does it step by step. The first `Err` item stops it.
pub fn reconcile<C, S, I>(scope: Scope, coordinator: C, sites: S) -> Result<ReconcileReport>
where
    C: IntoIterator<Item = Result<Entry>>,
    S: IntoIterator<Item = (String, I)>,
    I: IntoIterator<Item = Result<Entry>>,
{
    let sites: Vec<(String, I)> = sites.into_iter().collect();
    let mut reconciler = Reconciler::new(scope, sites.iter().map(|(name, _)| name.clone()), coordinator)?;
    for (name, entries) in sites {
        reconciler.site(&name, entries)?;
    }
    Ok(reconciler.finish())
}

/// The coordinator's account of one query.
#[derive(Debug)]
struct CoordinatorQuery {
    query_id: String,
    client_query_id: Option<String>,
    first_seq: u64,
    /// The outcome record: its seq and the sites it lists.
    outcome: Option<(u64, Vec<SiteRelease>)>,
    /// Outcome records after the first (there should be none).
    extra_outcomes: Vec<u64>,
}

/// What one site logged of one query.
#[derive(Debug, Default)]
struct SiteQuery {
    received: Option<u64>,
    outcomes: Vec<(u64, Decision, Option<String>)>,
}

/// Reconciling in steps: the coordinator's whole log first (in [`Reconciler::new`]), then
/// each site's ([`Reconciler::site`]), then [`Reconciler::finish`]. Holds a summary of each
/// in-scope query (and the ids of all the coordinator's queries), not whole records.
pub struct Reconciler {
    scope: Scope,
    /// The sites whose logs will be given.
    sites: Vec<String>,
    queries: Vec<CoordinatorQuery>,
    /// Index into `queries` by query id.
    index: HashMap<String, usize>,
    /// Every query id in the coordinator's log, in scope or not.
    known: HashSet<String>,
    at_sites: HashMap<(String, String), SiteQuery>,
    unknown: Vec<Finding>,
    /// Per (log, foreign service): how many records, and the first one's seq.
    wrong: BTreeMap<(String, String), (u64, u64)>,
    site_records: BTreeMap<String, u64>,
}

impl Reconciler {
    /// Reads the coordinator's records; `sites` names the site logs that will follow.
    pub fn new(
        scope: Scope,
        sites: impl IntoIterator<Item = String>,
        coordinator: impl IntoIterator<Item = Result<Entry>>,
    ) -> Result<Reconciler> {
        let mut reconciler = Reconciler {
            scope,
            sites: sites.into_iter().collect(),
            queries: Vec::new(),
            index: HashMap::new(),
            known: HashSet::new(),
            at_sites: HashMap::new(),
            unknown: Vec::new(),
            wrong: BTreeMap::new(),
            site_records: BTreeMap::new(),
        };
        for entry in coordinator {
            reconciler.coordinator_entry(entry?);
        }
        Ok(reconciler)
    }

    fn coordinator_entry(&mut self, entry: Entry) {
        let r = &entry.record;
        if r.decision == Decision::AuditRead {
            return;
        }
        if r.service != COORDINATOR_SERVICE {
            self.wrong_log(COORDINATOR_LOG, &entry);
            return;
        }
        self.known.insert(r.query_id.clone());
        let i = match self.index.get(&r.query_id) {
            Some(&i) => i,
            None if self.scope.matches(&entry) => {
                self.queries.push(CoordinatorQuery {
                    query_id: r.query_id.clone(),
                    client_query_id: r.client_query_id.clone(),
                    first_seq: entry.seq,
                    outcome: None,
                    extra_outcomes: Vec::new(),
                });
                self.index.insert(r.query_id.clone(), self.queries.len() - 1);
                self.queries.len() - 1
            }
            None => return,
        };
        let query = &mut self.queries[i];
        if query.client_query_id.is_none() {
            query.client_query_id.clone_from(&r.client_query_id);
        }
        if r.decision != Decision::Received {
            if query.outcome.is_some() {
                query.extra_outcomes.push(entry.seq);
            } else {
                query.outcome = Some((entry.seq, entry.record.sites));
            }
        }
    }

    /// Reads one site's records. `site` is the site's name, as the coordinator's `sites`
    /// entries and the site's own records (`service`) spell it.
    pub fn site(&mut self, site: &str, entries: impl IntoIterator<Item = Result<Entry>>) -> Result<()> {
        if !self.sites.iter().any(|s| s == site) {
            self.sites.push(site.to_string());
        }
        self.site_records.entry(site.to_string()).or_default();
        let mut reported = HashSet::new();
        for entry in entries {
            let entry = entry?;
            let r = &entry.record;
            if r.decision == Decision::AuditRead {
                continue;
            }
            if r.service != site {
                self.wrong_log(site, &entry);
                continue;
            }
            *self.site_records.entry(site.to_string()).or_default() += 1;
            if self.index.contains_key(&r.query_id) {
                let at = self.at_sites.entry((site.to_string(), r.query_id.clone())).or_default();
                match r.decision {
                    Decision::Received => {
                        at.received.get_or_insert(entry.seq);
                    }
                    decision => at.outcomes.push((entry.seq, decision, r.release_hash.clone())),
                }
            } else if !self.known.contains(&r.query_id)
                && self.scope.matches(&entry)
                && reported.insert(r.query_id.clone())
            {
                self.unknown.push(Finding {
                    kind: FindingKind::UnknownAtCoordinator,
                    site: site.to_string(),
                    query_id: r.query_id.clone(),
                    client_query_id: r.client_query_id.clone(),
                    coordinator_seq: None,
                    site_seq: Some(entry.seq),
                    what: format!(
                        "the site logged this query ({}), the coordinator's log has no record of it",
                        r.decision
                    ),
                });
            }
        }
        Ok(())
    }

    fn wrong_log(&mut self, log: &str, entry: &Entry) {
        let counted = self.wrong.entry((log.to_string(), entry.record.service.clone())).or_insert((0, entry.seq));
        counted.0 += 1;
    }

    /// Compares what was read.
    pub fn finish(mut self) -> ReconcileReport {
        let mut report = ReconcileReport {
            queries: self.queries.len() as u64,
            site_records: std::mem::take(&mut self.site_records),
            ..ReconcileReport::default()
        };
        for query in &self.queries {
            let finding = |kind, site: &str, coordinator_seq, site_seq, what: String| Finding {
                kind,
                site: site.to_string(),
                query_id: query.query_id.clone(),
                client_query_id: query.client_query_id.clone(),
                coordinator_seq,
                site_seq,
                what,
            };
            if let Some(&extra) = query.extra_outcomes.first() {
                let what = format!(
                    "the coordinator logged {} outcome records for this query; one is expected",
                    query.extra_outcomes.len() + 1
                );
                report.findings.push(finding(FindingKind::SeveralOutcomes, COORDINATOR_LOG, Some(extra), None, what));
            }
            let listed: &[SiteRelease] = query.outcome.as_ref().map_or(&[], |(_, sites)| sites);
            for release in listed {
                if !self.sites.contains(&release.site) {
                    *report.unchecked_sites.entry(release.site.clone()).or_default() += 1;
                }
            }
            for site in &self.sites {
                let at_site = self.at_sites.remove(&(site.clone(), query.query_id.clone()));
                let release = listed.iter().find(|r| &r.site == site);
                let Some(release) = release else {
                    // The coordinator does not account for this site: the site should have nothing.
                    if let Some(at) = at_site {
                        let seq = at.received.or(at.outcomes.first().map(|o| o.0));
                        let what = match &query.outcome {
                            Some(_) => "the site logged this query, but the coordinator's outcome record does not name the site".to_string(),
                            None => format!(
                                "the site logged this query, but the coordinator logged only receiving it (seq {}), no outcome: still running, or the coordinator stopped",
                                query.first_seq
                            ),
                        };
                        let coordinator_seq = query.outcome.as_ref().map(|o| o.0).or(Some(query.first_seq));
                        report.findings.push(finding(
                            FindingKind::UnknownAtCoordinator,
                            site,
                            coordinator_seq,
                            seq,
                            what,
                        ));
                    }
                    continue;
                };
                report.site_outcomes_checked += 1;
                let coordinator_seq = query.outcome.as_ref().map(|o| o.0);
                let at_site = at_site.unwrap_or_default();
                if at_site.outcomes.len() > 1 {
                    let what = format!(
                        "the site logged {} outcome records for this query ({}); one is expected",
                        at_site.outcomes.len(),
                        at_site.outcomes.iter().map(|o| o.1.as_str()).collect::<Vec<_>>().join(", ")
                    );
                    let seq = at_site.outcomes.get(1).map(|o| o.0);
                    report.findings.push(finding(FindingKind::SeveralOutcomes, site, coordinator_seq, seq, what));
                    continue;
                }
                let outcome = at_site.outcomes.first();
                let said = release.outcome.as_str();
                match (site_got_query(said), outcome) {
                    (Some(true), None) => {
                        let what = match at_site.received {
                            Some(seq) => format!(
                                "the coordinator says the site {said}, but the site logged only receiving the query (seq {seq}), no outcome"
                            ),
                            None => {
                                format!("the coordinator says the site {said}, but the site has no record of the query")
                            }
                        };
                        report.findings.push(finding(FindingKind::MissingAtSite, site, coordinator_seq, None, what));
                    }
                    (Some(false), _) if outcome.is_some() || at_site.received.is_some() => {
                        let seq = at_site.received.or(outcome.map(|o| o.0));
                        let what = format!(
                            "the coordinator says the site was {said} (the query was never sent), but the site logged it{}",
                            outcome.map(|o| format!(" ({})", o.1)).unwrap_or_default()
                        );
                        report.findings.push(finding(FindingKind::OutcomeMismatch, site, coordinator_seq, seq, what));
                    }
                    // After `disconnected` (or an outcome this version does not know) any
                    // site outcome is possible; only a known one that differs is compared.
                    (None, _) | (Some(_), None) => {}
                    (Some(_), Some(&(seq, decision, ref site_hash))) => {
                        if decision.as_str() != said {
                            let what = format!(
                                "the coordinator says the site {said}, the site logged {decision}{}",
                                if decision == Decision::Answered && matches!(said, "timed_out" | "cancelled") {
                                    " (it answered after the coordinator stopped waiting)"
                                } else {
                                    ""
                                }
                            );
                            report.findings.push(finding(
                                FindingKind::OutcomeMismatch,
                                site,
                                coordinator_seq,
                                Some(seq),
                                what,
                            ));
                        } else if decision == Decision::Answered && release.release_hash != *site_hash {
                            let show = |h: &Option<String>| h.clone().unwrap_or_else(|| "none".into());
                            let what = format!(
                                "the coordinator received release {} from the site, the site released {}",
                                show(&release.release_hash),
                                show(site_hash)
                            );
                            report.findings.push(finding(
                                FindingKind::ReleaseHashMismatch,
                                site,
                                coordinator_seq,
                                Some(seq),
                                what,
                            ));
                        }
                    }
                }
            }
        }
        self.unknown.sort_by(|a, b| (&a.site, a.site_seq).cmp(&(&b.site, b.site_seq)));
        report.findings.append(&mut self.unknown);
        for ((log, service), (count, first_seq)) in self.wrong {
            let what = if log == COORDINATOR_LOG {
                format!(
                    "the coordinator's log holds {count} record(s) of service '{service}': is it the coordinator's log?"
                )
            } else {
                format!(
                    "the log given for site {log} holds {count} record(s) of service '{service}': is it {log}'s log?"
                )
            };
            let (coordinator_seq, site_seq) =
                if log == COORDINATOR_LOG { (Some(first_seq), None) } else { (None, Some(first_seq)) };
            report.findings.push(Finding {
                kind: FindingKind::WrongLog,
                site: log,
                query_id: String::new(),
                client_query_id: None,
                coordinator_seq,
                site_seq,
                what,
            });
        }
        report
    }
}

/// Whether a coordinator outcome for a site means the site got the query: `Some(true)` for
/// `answered`, `refused`, `timed_out`, `cancelled`, `failed` (the site must have logged an
/// outcome); `Some(false)` for `not_connected` (never sent: the site must have nothing);
/// `None` for `disconnected` (sent, but the site may or may not have seen it) and for
/// outcomes this version does not know.
pub fn site_got_query(outcome: &str) -> Option<bool> {
    match outcome {
        "answered" | "refused" | "timed_out" | "cancelled" | "failed" => Some(true),
        "not_connected" => Some(false),
        _ => None,
    }
}

/// A `--site-log NAME=DIR` argument split in two.
pub fn parse_site_log(text: &str) -> Result<(String, std::path::PathBuf)> {
    match text.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.to_string(), dir.into())),
        _ => Err(AuditError::BadSiteLog { text: text.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hash, Record, Requester, sha256_hex};
    use serde_json::json;

    const UUID: &str = "0d9c6f4e-3c51-4b1e-9a0f-5a8f8d7b2c11";

    fn at(seq: u64, record: Record) -> Entry {
        Entry { seq, hash: Hash::GENESIS, record: record.with_time_ms(1_000 + seq) }
    }

    fn rec(service: &str, query_id: &str, decision: Decision) -> Record {
        Record::new(
            service,
            query_id,
            decision,
            Requester { subject: "alice".into(), ..Requester::default() },
            json!({}),
        )
    }

    fn release(site: &str, outcome: &str, hash: Option<&str>) -> SiteRelease {
        SiteRelease {
            site: site.into(),
            outcome: outcome.into(),
            release_hash: hash.map(sha256_hex_of),
            privacy_cost: None,
        }
    }

    fn sha256_hex_of(text: &str) -> String {
        sha256_hex(text.as_bytes())
    }

    /// The coordinator's two records of query `id`, listing `sites`.
    fn coordinator(id: &str, first_seq: u64, sites: Vec<SiteRelease>) -> Vec<Entry> {
        vec![
            at(first_seq, rec("coordinator", id, Decision::Received).with_client_query_id("mine")),
            at(
                first_seq + 1,
                rec("coordinator", id, Decision::Answered).with_client_query_id("mine").with_sites(sites),
            ),
        ]
    }

    /// A site's received and outcome records of query `id`.
    fn site(name: &str, id: &str, first_seq: u64, outcome: Decision, hash: Option<&str>) -> Vec<Entry> {
        let mut record = rec(name, id, outcome);
        match hash {
            Some(text) => record = record.with_release(text.as_bytes(), 1, 0),
            None if outcome != Decision::Answered => record = record.with_refusal("X", "why"),
            None => {}
        }
        vec![at(first_seq, rec(name, id, Decision::Received)), at(first_seq + 1, record)]
    }

    fn run(scope: Scope, coordinator: Vec<Entry>, sites: Vec<(&str, Vec<Entry>)>) -> ReconcileReport {
        let sites = sites.into_iter().map(|(name, entries)| (name.to_string(), entries.into_iter().map(Ok)));
        reconcile(scope, coordinator.into_iter().map(Ok), sites).expect("reconcile")
    }

    fn kinds(report: &ReconcileReport) -> Vec<(FindingKind, &str)> {
        report.findings.iter().map(|f| (f.kind, f.site.as_str())).collect()
    }

    /// The usual case: a query to three sites, each of whose logs agrees.
    fn agreeing() -> (Vec<Entry>, Vec<(&'static str, Vec<Entry>)>) {
        let coordinator = coordinator(
            UUID,
            1,
            vec![
                release("site-a", "answered", Some("a")),
                release("site-b", "refused", None),
                release("site-c", "not_connected", None),
            ],
        );
        let sites = vec![
            ("site-a", site("site-a", UUID, 1, Decision::Answered, Some("a"))),
            ("site-b", site("site-b", UUID, 7, Decision::Refused, None)),
            ("site-c", vec![]),
        ];
        (coordinator, sites)
    }

    #[test]
    fn logs_that_agree_give_no_findings() {
        let (coordinator, sites) = agreeing();
        let report = run(Scope::default(), coordinator, sites);
        assert!(report.is_ok(), "{report:?}");
        assert_eq!((report.queries, report.site_outcomes_checked), (1, 3));
        assert_eq!(report.site_records.get("site-a"), Some(&2));
        assert!(report.render().contains("everything matches"), "{}", report.render());
    }

    #[test]
    fn a_site_without_the_record_the_coordinator_vouches_for_is_found() {
        let (coordinator, mut sites) = agreeing();
        // site-a logged nothing; site-b logged receiving it only.
        sites[0].1.clear();
        sites[1].1.truncate(1);
        let report = run(Scope::default(), coordinator, sites);
        assert_eq!(kinds(&report), [(FindingKind::MissingAtSite, "site-a"), (FindingKind::MissingAtSite, "site-b")]);
        assert!(report.findings[0].what.contains("no record of the query"), "{}", report.findings[0]);
        assert!(report.findings[1].what.contains("only receiving the query (seq 7)"), "{}", report.findings[1]);
        assert_eq!(report.findings[0].coordinator_seq, Some(2));
        assert_eq!(report.findings[0].client_query_id.as_deref(), Some("mine"));
        assert!(report.render().contains("2 findings"), "{}", report.render());
    }

    #[test]
    fn every_outcome_that_says_the_site_got_the_query_needs_a_site_record() {
        for outcome in ["answered", "refused", "timed_out", "cancelled", "failed"] {
            let coordinator = coordinator(UUID, 1, vec![release("site-a", outcome, None)]);
            let report = run(Scope::default(), coordinator, vec![("site-a", vec![])]);
            assert_eq!(kinds(&report), [(FindingKind::MissingAtSite, "site-a")], "{outcome}");
        }
        // A site that was never sent the query, or lost on the way, may have nothing.
        for outcome in ["not_connected", "disconnected"] {
            let coordinator = coordinator(UUID, 1, vec![release("site-a", outcome, None)]);
            let report = run(Scope::default(), coordinator, vec![("site-a", vec![])]);
            assert!(report.is_ok(), "{outcome}: {report:?}");
        }
    }

    #[test]
    fn a_different_release_hash_is_found() {
        let (mut coordinator, sites) = agreeing();
        coordinator[1].record.sites[0] = release("site-a", "answered", Some("something else"));
        let report = run(Scope::default(), coordinator, sites);
        assert_eq!(kinds(&report), [(FindingKind::ReleaseHashMismatch, "site-a")]);
        let finding = &report.findings[0];
        assert!(finding.what.contains(&sha256_hex_of("a")) && finding.what.contains(&sha256_hex_of("something else")));
        assert_eq!((finding.coordinator_seq, finding.site_seq), (Some(2), Some(2)));

        // A hash missing on one side is no match either.
        let (mut coordinator, sites) = agreeing();
        coordinator[1].record.sites[0].release_hash = None;
        let report = run(Scope::default(), coordinator, sites);
        assert_eq!(kinds(&report), [(FindingKind::ReleaseHashMismatch, "site-a")]);
        assert!(report.findings[0].what.contains("release none"), "{}", report.findings[0]);
    }

    #[test]
    fn a_different_outcome_is_found() {
        let (mut coordinator, sites) = agreeing();
        coordinator[1].record.sites[1] = release("site-b", "answered", Some("b"));
        coordinator[1].record.sites[0] = release("site-a", "timed_out", None);
        let report = run(Scope::default(), coordinator, sites);
        assert_eq!(
            kinds(&report),
            [(FindingKind::OutcomeMismatch, "site-a"), (FindingKind::OutcomeMismatch, "site-b")]
        );
        assert!(report.findings[0].what.contains("after the coordinator stopped waiting"), "{}", report.findings[0]);
        assert!(report.findings[1].what.contains("says the site answered, the site logged refused"));

        // `not_connected` means never sent: a site record of it disagrees.
        let (coordinator, mut sites) = agreeing();
        sites[2].1 = site("site-c", UUID, 1, Decision::Answered, Some("c"));
        let report = run(Scope::default(), coordinator, sites);
        assert_eq!(kinds(&report), [(FindingKind::OutcomeMismatch, "site-c")]);
    }

    #[test]
    fn a_site_record_the_coordinator_does_not_know_is_found() {
        let (coordinator, mut sites) = agreeing();
        // A query the coordinator never logged...
        sites[0].1.extend(site("site-a", "f00", 3, Decision::Answered, Some("x")));
        // ... and one it logged without naming site-c.
        sites[2].1 = site("site-c", UUID, 1, Decision::Answered, Some("c"));
        let mut coordinator = coordinator;
        coordinator[1].record.sites.pop();
        let report = run(Scope::default(), coordinator, sites);
        assert_eq!(
            kinds(&report),
            [(FindingKind::UnknownAtCoordinator, "site-c"), (FindingKind::UnknownAtCoordinator, "site-a")]
        );
        assert!(report.findings[0].what.contains("does not name the site"), "{}", report.findings[0]);
        assert_eq!((report.findings[1].query_id.as_str(), report.findings[1].site_seq), ("f00", Some(3)));
        assert!(report.findings[1].what.contains("no record of it"), "{}", report.findings[1]);
    }

    #[test]
    fn several_outcomes_and_foreign_records_are_found() {
        let (coordinator, mut sites) = agreeing();
        let mut again = sites[1].1[1].clone();
        again.seq = 9;
        sites[1].1.push(again);
        let mut foreign = sites[0].1[0].clone();
        foreign.record.service = "site-z".into();
        foreign.seq = 3;
        sites[0].1.push(foreign);
        let report = run(Scope::default(), coordinator, sites);
        assert_eq!(kinds(&report), [(FindingKind::SeveralOutcomes, "site-b"), (FindingKind::WrongLog, "site-a")]);
        assert_eq!(report.findings[0].site_seq, Some(9));
        assert!(report.findings[1].what.contains("1 record(s) of service 'site-z'"), "{}", report.findings[1]);
    }

    #[test]
    fn sites_without_a_log_are_counted_not_found() {
        let (coordinator, mut sites) = agreeing();
        sites.truncate(1);
        let report = run(Scope::default(), coordinator, sites);
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.unchecked_sites.get("site-b"), Some(&1));
        assert!(report.summary().contains("not checked: 1 outcome at site-b"), "{}", report.summary());
    }

    #[test]
    fn the_scope_picks_whole_queries() {
        let other = "7e0b7a7c-0000-4000-8000-000000000000";
        let mut coordinator_log = coordinator(UUID, 1, vec![release("site-a", "answered", Some("a"))]);
        coordinator_log.extend(coordinator(other, 3, vec![release("site-a", "answered", Some("b"))]));
        // site-a lost its record of `other`.
        let site_log = site("site-a", UUID, 1, Decision::Answered, Some("a"));
        let sites = || vec![("site-a", site_log.clone())];

        let report = run(Scope::default(), coordinator_log.clone(), sites());
        assert_eq!(report.findings.len(), 1);
        for scope in [
            Scope { query_id: Some(UUID.into()), ..Scope::default() },
            // The window holds only the first query's outcome record (time 1002): the query
            // is compared as a whole.
            Scope { from_ms: Some(1_002), until_ms: Some(1_003), ..Scope::default() },
        ] {
            let report = run(scope.clone(), coordinator_log.clone(), sites());
            assert!(report.is_ok(), "{scope:?}: {report:?}");
            assert_eq!(report.queries, 1, "{scope:?}");
        }
        // The researcher's id selects every query they gave it.
        let report = run(Scope { query_id: Some("mine".into()), ..Scope::default() }, coordinator_log, sites());
        assert_eq!((report.queries, report.findings.len()), (2, 1));
    }

    #[test]
    fn errors_stop_reconciling() {
        let error = || Err(AuditError::Parse { path: "x".into(), line: 1, what: "bad".into() });
        assert!(reconcile(Scope::default(), vec![error()], Vec::<(String, Vec<Result<Entry>>)>::new()).is_err());
        let sites = vec![("site-a".to_string(), vec![error()])];
        assert!(reconcile(Scope::default(), Vec::new(), sites).is_err());
        assert!(parse_site_log("site-a=/var/log/a").is_ok());
        for bad in ["site-a", "=/x", "site-a="] {
            assert!(parse_site_log(bad).unwrap_err().to_string().contains("NAME=DIR"), "{bad}");
        }
    }
}
