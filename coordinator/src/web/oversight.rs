//! The operators' and auditors' pages: site health and certificates, privacy budgets per
//! project and site, the audit logs with filters, one record, verify, and the reconciliation
//! of one query across the coordinator's and the sites' logs. Reads of a log go through the
//! API's `ReadAudit`, so they need the role 'auditor' and are themselves on record.

use super::research::{num, pairs, value};
use super::session::Session;
use super::view::{self, AuditFilters, AuditRow, BudgetRow, FindingRow, HealthRow, Verdict};
use super::{PageError, Web};
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use verbund_audit::{Entry, Scope};
use verbund_proto::v1 as pb;
use verbund_proto::v1::researcher_server::Researcher;

/// The coordinator's own log, in the log chooser.
const COORDINATOR: &str = "coordinator";
/// Records listed when no limit is typed.
const DEFAULT_ROWS: u32 = 200;

pub async fn operations(State(web): State<Web>, session: Session) -> Result<Response, PageError> {
    session.require_oversight()?;
    let listed = web.api.list_sites(session.request(pb::ListSitesRequest::default())?).await?.into_inner();
    let now = crate::queries::now_ms();
    let mut sites: Vec<HealthRow> = listed
        .sites
        .iter()
        .map(|s| {
            let (cert_expiry, cert_days, cert_soon) = view::expiry(s.certificate_not_after_unix, now);
            HealthRow {
                site: s.site.clone(),
                connected: s.connected,
                since: view::time(s.connected_since_unix_ms),
                last_seen: view::time(s.last_seen_unix_ms),
                address: s.remote_addr.clone(),
                profile: s.profile.clone(),
                cert_expiry,
                cert_days,
                cert_soon,
            }
        })
        .collect();
    // Sites the network expects that never connected since the coordinator started.
    for name in &web.coordinator.config().sites {
        if !sites.iter().any(|s| &s.site == name) {
            sites.push(HealthRow {
                site: name.clone(),
                connected: false,
                since: String::new(),
                last_seen: "never since the coordinator started".into(),
                address: String::new(),
                profile: String::new(),
                cert_expiry: "unknown".into(),
                cert_days: 0,
                cert_soon: false,
            });
        }
    }
    sites.sort_by(|a, b| a.site.cmp(&b.site));
    let budgets = listed
        .sites
        .iter()
        .flat_map(|s| s.budgets.iter().map(move |b| (s.site.clone(), b)))
        .map(|(site, b)| BudgetRow {
            site,
            project: b.project.clone(),
            epsilon_left: num(b.epsilon_left),
            epsilon: num(b.epsilon),
            delta_left: if b.delta > 0.0 { format!("{:e}", b.delta_left) } else { String::new() },
            period_days: b.period_days,
            renews: if b.renews_at > 0 { view::time(b.renews_at as u64 * 1000) } else { String::new() },
            used_percent: if b.epsilon > 0.0 {
                (((b.epsilon - b.epsilon_left) / b.epsilon).clamp(0.0, 1.0) * 100.0).round() as u32
            } else {
                0
            },
        })
        .collect();
    let (coordinator_cert, coordinator_days, coordinator_soon) =
        view::expiry(listed.coordinator_certificate_not_after_unix, now);
    let page = view::Operations {
        nav: session.nav("operations"),
        coordinator_cert,
        coordinator_days,
        coordinator_soon,
        running: web.coordinator.running().len(),
        sites,
        budgets,
    };
    Ok(view::render(StatusCode::OK, &page))
}

fn logs(web: &Web) -> Vec<String> {
    std::iter::once(COORDINATOR.to_string()).chain(web.coordinator.config().sites.iter().cloned()).collect()
}

fn filters(raw: &[u8]) -> AuditFilters {
    let fields = pairs(raw);
    let log = value(&fields, "log");
    AuditFilters {
        log: if log.is_empty() { COORDINATOR.into() } else { log },
        since: value(&fields, "since"),
        until: value(&fields, "until"),
        subject: value(&fields, "subject"),
        project: value(&fields, "project"),
        decision: value(&fields, "decision"),
        query_id: value(&fields, "query_id"),
        limit: value(&fields, "limit"),
    }
}

fn site_of(log: &str) -> String {
    if log == COORDINATOR { String::new() } else { log.to_string() }
}

/// The API request for `f`'s records; a filter that does not parse is said in words.
fn list_request(f: &AuditFilters) -> Result<pb::AuditRequest, String> {
    let time = |text: &str, until: bool| -> Result<u64, String> {
        if text.is_empty() {
            return Ok(0);
        }
        let parsed = if until { verbund_audit::parse_until(text) } else { verbund_audit::parse_since(text) };
        parsed.map_err(|e| e.to_string())
    };
    let limit = match f.limit.as_str() {
        "" => DEFAULT_ROWS,
        text => text.parse().map_err(|_| format!("limit '{text}' is not a number of records"))?,
    };
    Ok(pb::AuditRequest {
        site: site_of(&f.log),
        action: pb::AuditAction::List as i32,
        since_ms: time(&f.since, false)?,
        until_ms: time(&f.until, true)?,
        subject: f.subject.clone(),
        project: f.project.clone(),
        decision: f.decision.clone(),
        query_id: f.query_id.clone(),
        limit,
    })
}

async fn read(web: &Web, session: &Session, request: pb::AuditRequest) -> Result<pb::AuditResponse, tonic::Status> {
    let request = session.request(request).map_err(|e| tonic::Status::unauthenticated(e.message()))?;
    Ok(web.api.read_audit(request).await?.into_inner())
}

fn parse(response: &pb::AuditResponse) -> Result<Vec<Entry>, String> {
    response
        .entries
        .iter()
        .map(|line| {
            verbund_audit::remote::parse_entry_json(line).map_err(|e| format!("a record could not be read: {e}"))
        })
        .collect()
}

fn row(log: &str, entry: &Entry) -> AuditRow {
    let r = &entry.record;
    let groups = match (r.groups_released, r.groups_withheld) {
        (None, None) => String::new(),
        (released, withheld) => {
            let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
            format!("{} / {}", n(released), n(withheld))
        }
    };
    let query = |pairs: &[(&str, String)]| -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish()
    };
    AuditRow {
        seq: entry.seq,
        time: view::time(r.time_ms),
        query_id: r.query_id.clone(),
        decision: r.decision.as_str().into(),
        subject: r.requester.subject.clone(),
        project: r.requester.project.clone().unwrap_or_default(),
        refusal: r.refusal.as_ref().map(|x| x.code.clone()).unwrap_or_default(),
        groups,
        link: format!(
            "/audit/record?{}",
            query(&[("log", log.to_string()), ("seq", entry.seq.to_string()), ("time", r.time_ms.to_string())])
        ),
    }
}

fn audit_page(web: &Web, session: &Session, filters: AuditFilters) -> view::Audit {
    view::Audit {
        nav: session.nav("audit"),
        logs: logs(web),
        decisions: verbund_audit::Decision::ALL.iter().map(|d| d.as_str()).collect(),
        filters,
        rows: Vec::new(),
        truncated: false,
        verdict: None,
        error: String::new(),
    }
}

/// Lists `page.filters`' records, newest first; a refusal or bad filter goes in `page.error`.
async fn fill(web: &Web, session: &Session, page: &mut view::Audit) -> Result<(), PageError> {
    let request = match list_request(&page.filters) {
        Ok(request) => request,
        Err(why) => {
            page.error = why;
            return Ok(());
        }
    };
    match read(web, session, request).await {
        Ok(response) => match parse(&response) {
            Ok(entries) => {
                page.rows = entries.iter().rev().map(|e| row(&page.filters.log, e)).collect();
                page.truncated = response.truncated;
            }
            Err(why) => page.error = why,
        },
        Err(status) if status.code() == tonic::Code::Unauthenticated => return Err(status.into()),
        Err(status) if status.code() == tonic::Code::PermissionDenied => return Err(status.into()),
        Err(status) => page.error = status.message().to_string(),
    }
    Ok(())
}

pub async fn audit(State(web): State<Web>, session: Session, RawQuery(raw): RawQuery) -> Result<Response, PageError> {
    session.require_oversight()?;
    let mut page = audit_page(&web, &session, filters(raw.unwrap_or_default().as_bytes()));
    fill(&web, &session, &mut page).await?;
    let code = if page.error.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    Ok(view::render(code, &page))
}

/// Verifies one log (hash chain, checkpoints, signatures) and shows the verdict above its records.
pub async fn verify(State(web): State<Web>, session: Session, body: axum::body::Bytes) -> Result<Response, PageError> {
    session.require_oversight()?;
    let mut page = audit_page(&web, &session, filters(&body));
    let request = pb::AuditRequest {
        site: site_of(&page.filters.log),
        action: pb::AuditAction::Verify as i32,
        ..Default::default()
    };
    match read(&web, &session, request).await {
        Ok(response) => {
            let v = response.verification.unwrap_or_default();
            page.verdict = Some(Verdict {
                log: response.service,
                intact: v.intact,
                records: v.records,
                checkpoints: v.checkpoints,
                signatures: v.signatures,
                last_seq: v.last_seq,
                problem: v.problem,
            });
        }
        Err(status) if status.code() == tonic::Code::PermissionDenied => return Err(status.into()),
        Err(status) => page.error = status.message().to_string(),
    }
    fill(&web, &session, &mut page).await?;
    Ok(view::render(StatusCode::OK, &page))
}

/// One record in full: every field the log holds, and its hash in the chain.
pub async fn record(State(web): State<Web>, session: Session, RawQuery(raw): RawQuery) -> Result<Response, PageError> {
    session.require_oversight()?;
    let fields = pairs(raw.unwrap_or_default().as_bytes());
    let log = value(&fields, "log");
    let (Ok(seq), Ok(time)) = (value(&fields, "seq").parse::<u64>(), value(&fields, "time").parse::<u64>()) else {
        return Err(PageError::bad_request(
            "a record is named by its log, seq and time (follow a link on the audit page)",
        ));
    };
    let request = pb::AuditRequest {
        site: site_of(&log),
        action: pb::AuditAction::List as i32,
        since_ms: time,
        until_ms: time + 1,
        limit: 10_000,
        ..Default::default()
    };
    let response = read(&web, &session, request).await?;
    let entries = parse(&response).map_err(PageError::bad_request)?;
    let Some(entry) = entries.into_iter().find(|e| e.seq == seq) else {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("the {log} log has no record {seq} at that time"),
        ));
    };
    let json = serde_json::to_string_pretty(&entry.record)
        .map_err(|e| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "Failed", e.to_string()))?;
    let page = view::AuditRecord {
        nav: session.nav("audit"),
        log,
        seq,
        hash: entry.hash.to_string(),
        query_id: entry.record.query_id.clone(),
        json,
    };
    Ok(view::render(StatusCode::OK, &page))
}

/// One query's account in the coordinator's log against each site's: the sites read are those
/// the coordinator knows; a site that cannot be read is named and its part left unchecked.
pub async fn reconcile(
    State(web): State<Web>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    session.require_oversight()?;
    let query_id = value(&pairs(raw.unwrap_or_default().as_bytes()), "query_id");
    let mut page = view::Reconcile {
        nav: session.nav("audit"),
        query_id: query_id.clone(),
        done: false,
        ok: false,
        summary: String::new(),
        findings: Vec::new(),
        unread: Vec::new(),
        error: String::new(),
    };
    if query_id.is_empty() {
        return Ok(view::render(StatusCode::OK, &page));
    }
    let by_id = |site: String, id: &str| pb::AuditRequest {
        site,
        action: pb::AuditAction::List as i32,
        query_id: id.to_string(),
        limit: 10_000,
        ..Default::default()
    };
    let coordinator = match read(&web, &session, by_id(String::new(), &query_id)).await.map_err(PageError::from) {
        Ok(response) => parse(&response).map_err(PageError::bad_request)?,
        Err(e) => return Err(e),
    };
    if coordinator.is_empty() {
        page.error = format!("the coordinator's log has no record of query '{query_id}'");
        return Ok(view::render(StatusCode::NOT_FOUND, &page));
    }
    // Sites know a query by the coordinator's id only.
    let mut wire_ids: Vec<String> = coordinator.iter().map(|e| e.record.query_id.clone()).collect();
    wire_ids.sort();
    wire_ids.dedup();
    let mut site_logs = Vec::new();
    for site in &web.coordinator.config().sites {
        let mut entries = Vec::new();
        let mut failed = None;
        for id in &wire_ids {
            match read(&web, &session, by_id(site.clone(), id)).await {
                Ok(response) => match parse(&response) {
                    Ok(mut read) => entries.append(&mut read),
                    Err(why) => failed = Some(why),
                },
                Err(status) => failed = Some(status.message().to_string()),
            }
        }
        match failed {
            Some(why) => page.unread.push(format!("{site}: {why}")),
            None => site_logs.push((site.clone(), entries)),
        }
    }
    let scope = Scope { query_id: Some(query_id.clone()), ..Scope::default() };
    let report = verbund_audit::reconcile(
        scope,
        coordinator.into_iter().map(Ok),
        site_logs.into_iter().map(|(site, entries)| (site, entries.into_iter().map(Ok))),
    )
    .map_err(|e| PageError::bad_request(e.to_string()))?;
    page.done = true;
    page.ok = report.is_ok();
    page.summary = report.summary();
    page.findings = report
        .findings
        .iter()
        .map(|f| FindingRow {
            kind: f.kind.to_string(),
            site: f.site.clone(),
            query: match &f.client_query_id {
                Some(client) => format!("{} ({client})", f.query_id),
                None => f.query_id.clone(),
            },
            coordinator_seq: f.coordinator_seq.map(|s| s.to_string()).unwrap_or_default(),
            site_seq: f.site_seq.map(|s| s.to_string()).unwrap_or_default(),
            what: f.what.clone(),
        })
        .collect();
    Ok(view::render(StatusCode::OK, &page))
}
