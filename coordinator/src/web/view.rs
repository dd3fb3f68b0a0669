//! What each page shows, as askama templates (`coordinator/templates/`); askama escapes every
//! value, so text from the network (a site's message, a query's SQL) cannot become markup.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Renders `page` as an HTML response with `status`.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => {
            let mut response = (status, html).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            response
        }
        Err(error) => {
            tracing::error!(%error, "a page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; the coordinator's log says why")
                .into_response()
        }
    }
}

/// The links at the top of every page, by what the token may do.
#[derive(Default)]
pub struct Nav {
    pub current: &'static str,
    pub user: String,
    pub roles: String,
    pub research: bool,
    pub oversee: bool,
    pub audit: bool,
}

impl Nav {
    /// Not logged in.
    pub fn none() -> Self {
        Nav::default()
    }
}

/// A Unix-milliseconds time as `2026-12-01 09:30:12 UTC`; empty for 0.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let text = verbund_audit::utc(ms);
    let text = text.split('.').next().unwrap_or(&text).trim_end_matches('Z');
    format!("{} UTC", text.replacen('T', " ", 1))
}

/// A certificate's expiry and the days left, and whether that is soon (under 30 days).
pub fn expiry(not_after_unix: i64, now_ms: u64) -> (String, i64, bool) {
    if not_after_unix <= 0 {
        return ("unknown".into(), 0, true);
    }
    let days = (not_after_unix - (now_ms / 1000) as i64).div_euclid(86_400);
    (time(not_after_unix as u64 * 1000), days, days < 30)
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct Message {
    pub nav: Nav,
    pub title: String,
    pub message: String,
}

impl Message {
    pub fn new(title: &str, message: &str) -> Self {
        Message { nav: Nav::none(), title: title.into(), message: message.into() }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct Login {
    pub nav: Nav,
    pub error: String,
}

pub struct Dataset {
    pub name: String,
    pub model: String,
    pub patient_key: String,
    /// `name (type)` per column.
    pub columns: Vec<String>,
}

pub struct SiteRow {
    pub site: String,
    pub connected: bool,
    pub connected_since: String,
    pub last_seen: String,
    pub profile: String,
    pub min_cell_size: u32,
    pub datasets: Vec<Dataset>,
    /// `project: ε left of ε per period`.
    pub budgets: Vec<String>,
}

#[derive(Template)]
#[template(path = "sites.html")]
pub struct Sites {
    pub nav: Nav,
    pub sites: Vec<SiteRow>,
}

pub struct SiteChoice {
    pub site: String,
    pub connected: bool,
    pub checked: bool,
}

/// The query form, with what was typed and, next to each input, why it was not accepted.
#[derive(Template, Default)]
#[template(path = "query.html")]
pub struct QueryForm {
    pub nav: Nav,
    pub projects: Vec<String>,
    pub project: String,
    pub sites: Vec<SiteChoice>,
    pub sql: String,
    pub ccdl: String,
    pub query_id: String,
    pub error_sql: String,
    pub error_ccdl: String,
    pub error_project: String,
    pub error_id: String,
    pub error_form: String,
}

/// The model form, with what was typed and the reasons next to the inputs.
#[derive(Template, Default)]
#[template(path = "model.html")]
pub struct ModelForm {
    pub nav: Nav,
    pub projects: Vec<String>,
    pub project: String,
    /// (form value, label).
    pub families: Vec<(&'static str, &'static str)>,
    pub family: String,
    pub dataset: String,
    pub outcome: String,
    pub covariates: String,
    pub condition: String,
    pub error_project: String,
    pub error_dataset: String,
    pub error_outcome: String,
    pub error_covariates: String,
    pub error_condition: String,
    pub error_form: String,
}

pub struct QueryRow {
    pub id: String,
    pub owner: String,
    pub link: String,
    pub kind: String,
    pub state: String,
    pub summary: String,
    pub project: String,
    pub submitted: String,
    pub progress: String,
}

#[derive(Template)]
#[template(path = "queries.html")]
pub struct Queries {
    pub nav: Nav,
    pub rows: Vec<QueryRow>,
}

pub struct ProgressRow {
    pub site: String,
    pub outcome: String,
    pub message: String,
    pub groups: String,
    pub elapsed: String,
    pub profile: String,
    pub cost: String,
    pub budget_left: String,
}

pub struct Table {
    pub columns: Vec<String>,
    /// Right-aligned (numeric) columns.
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

#[derive(Template)]
#[template(path = "query_page.html")]
pub struct QueryPage {
    pub nav: Nav,
    pub id: String,
    pub owner: String,
    pub kind: String,
    pub state: String,
    /// Still queued or running: the page follows it (the script reloads at `follow`).
    pub follow: String,
    pub summary: String,
    pub project: String,
    pub submitted: String,
    pub finished: String,
    pub expires: String,
    pub round: String,
    pub progress: Vec<ProgressRow>,
    pub error: String,
    pub table: Option<Table>,
    pub charts: Vec<super::chart::Chart>,
    pub notes: Vec<String>,
    pub model_summary: String,
    pub csv_link: String,
    pub cancel_link: String,
}

pub struct HealthRow {
    pub site: String,
    pub connected: bool,
    pub since: String,
    pub last_seen: String,
    pub address: String,
    pub profile: String,
    pub cert_expiry: String,
    pub cert_days: i64,
    pub cert_soon: bool,
}

pub struct BudgetRow {
    pub site: String,
    pub project: String,
    pub epsilon_left: String,
    pub epsilon: String,
    pub delta_left: String,
    pub period_days: u32,
    pub renews: String,
    /// Used share of the period's ε, 0–100, for the meter.
    pub used_percent: u32,
}

#[derive(Template)]
#[template(path = "operations.html")]
pub struct Operations {
    pub nav: Nav,
    pub coordinator_cert: String,
    pub coordinator_days: i64,
    pub coordinator_soon: bool,
    pub running: usize,
    pub sites: Vec<HealthRow>,
    pub budgets: Vec<BudgetRow>,
}

pub struct AuditRow {
    pub seq: u64,
    pub time: String,
    pub query_id: String,
    pub decision: String,
    pub subject: String,
    pub project: String,
    pub refusal: String,
    pub groups: String,
    pub link: String,
}

pub struct Verdict {
    pub log: String,
    pub intact: bool,
    pub records: u64,
    pub checkpoints: u64,
    pub signatures: u64,
    pub last_seq: u64,
    pub problem: String,
}

/// The audit filters, as typed.
#[derive(Default, Clone)]
pub struct AuditFilters {
    pub log: String,
    pub since: String,
    pub until: String,
    pub subject: String,
    pub project: String,
    pub decision: String,
    pub query_id: String,
    pub limit: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct Audit {
    pub nav: Nav,
    pub logs: Vec<String>,
    pub decisions: Vec<&'static str>,
    pub filters: AuditFilters,
    pub rows: Vec<AuditRow>,
    pub truncated: bool,
    pub verdict: Option<Verdict>,
    pub error: String,
}

#[derive(Template)]
#[template(path = "audit_record.html")]
pub struct AuditRecord {
    pub nav: Nav,
    pub log: String,
    pub seq: u64,
    pub hash: String,
    pub query_id: String,
    pub json: String,
}

pub struct FindingRow {
    pub kind: String,
    pub site: String,
    pub query: String,
    pub coordinator_seq: String,
    pub site_seq: String,
    pub what: String,
}

#[derive(Template)]
#[template(path = "reconcile.html")]
pub struct Reconcile {
    pub nav: Nav,
    pub query_id: String,
    pub done: bool,
    pub ok: bool,
    pub summary: String,
    pub findings: Vec<FindingRow>,
    /// Sites whose logs could not be read, and why.
    pub unread: Vec<String>,
    pub error: String,
}
