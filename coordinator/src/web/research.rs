//! The researchers' pages: sites and their catalogues, the query box (SQL or CCDL), the
//! queries with their per-site progress, a result as a table, a chart and CSV.

use super::session::Session;
use super::view::{self, ProgressRow, QueryForm, QueryRow, SiteChoice, SiteRow, Table};
use super::{PageError, Web, chart};
use crate::api::{decode_ipc, outcome_name, state_name};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use tonic::Code;
use verbund_proto::v1 as pb;
use verbund_proto::v1::researcher_server::Researcher;

/// Rows shown on the page; the CSV holds them all.
const PAGE_ROWS: usize = 1000;
/// How long a followed page waits for the query's next change before it reloads anyway.
const FOLLOW_WAIT_MS: u32 = 15_000;

/// `key=value&…` pairs of a form body or query string.
pub(super) fn pairs(text: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(text).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

pub(super) fn value(pairs: &[(String, String)], key: &str) -> String {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim().to_string()).unwrap_or_default()
}

async fn list_sites(web: &Web, session: &Session) -> Result<pb::ListSitesResponse, PageError> {
    Ok(web.api.list_sites(session.request(pb::ListSitesRequest::default())?).await?.into_inner())
}

pub async fn sites(State(web): State<Web>, session: Session) -> Result<Response, PageError> {
    let listed = list_sites(&web, &session).await?;
    let sites = listed
        .sites
        .into_iter()
        .map(|s| SiteRow {
            datasets: s
                .catalogue
                .unwrap_or_default()
                .datasets
                .into_iter()
                .map(|d| view::Dataset {
                    columns: d.columns.iter().map(|c| format!("{} ({})", c.name, column_type(c.r#type()))).collect(),
                    name: d.name,
                    model: d.model,
                    patient_key: d.patient_key,
                })
                .collect(),
            budgets: s
                .budgets
                .iter()
                .map(|b| {
                    format!(
                        "{}: ε {} left of {} per {} days",
                        b.project,
                        num(b.epsilon_left),
                        num(b.epsilon),
                        b.period_days
                    )
                })
                .collect(),
            site: s.site,
            connected: s.connected,
            connected_since: view::time(s.connected_since_unix_ms),
            last_seen: view::time(s.last_seen_unix_ms),
            profile: s.profile,
            min_cell_size: s.min_cell_size,
        })
        .collect();
    Ok(view::render(StatusCode::OK, &view::Sites { nav: session.nav("sites"), sites }))
}

fn column_type(t: pb::ColumnType) -> &'static str {
    t.as_str_name().strip_prefix("COLUMN_TYPE_").unwrap_or("UNKNOWN")
}

/// A number as a person reads it: no trailing zeros, at most 4 decimals.
pub(super) fn num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let text = format!("{x:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The empty form, with the token's projects and the connected sites.
async fn form(web: &Web, session: &Session) -> Result<QueryForm, PageError> {
    let listed = list_sites(web, session).await?;
    Ok(QueryForm {
        nav: session.nav("query"),
        projects: session.claims.projects.clone(),
        project: session.claims.projects.first().cloned().unwrap_or_default(),
        sites: listed
            .sites
            .into_iter()
            .map(|s| SiteChoice { site: s.site, connected: s.connected, checked: false })
            .collect(),
        ..Default::default()
    })
}

pub async fn query_form(State(web): State<Web>, session: Session) -> Result<Response, PageError> {
    let page = form(&web, &session).await?;
    Ok(view::render(StatusCode::OK, &page))
}

/// Submits the query; on success the browser goes to its page, otherwise the form comes back
/// with what was typed and the reason next to the input it concerns.
pub async fn submit(State(web): State<Web>, session: Session, body: axum::body::Bytes) -> Result<Response, PageError> {
    let fields = pairs(&body);
    let chosen: Vec<String> = fields.iter().filter(|(k, _)| k == "site").map(|(_, v)| v.clone()).collect();
    let query = pb::ResearchQuery {
        query_id: value(&fields, "query_id"),
        sql: value(&fields, "sql"),
        sites: chosen.clone(),
        project: value(&fields, "project"),
        ccdl: value(&fields, "ccdl"),
        ..Default::default()
    };
    // The form (with the sites listed) is built again only when it goes back to the browser.
    let refill = |page: &mut QueryForm| {
        page.project = query.project.clone();
        page.sql = query.sql.clone();
        page.ccdl = query.ccdl.clone();
        page.query_id = query.query_id.clone();
        for choice in &mut page.sites {
            choice.checked = chosen.contains(&choice.site);
        }
    };
    if query.sql.is_empty() && query.ccdl.is_empty() {
        let mut page = form(&web, &session).await?;
        refill(&mut page);
        page.error_sql = "write a SQL query, or paste or upload a CCDL document below".into();
        return Ok(view::render(StatusCode::BAD_REQUEST, &page));
    }
    let request = pb::SubmitRequest { request: Some(pb::submit_request::Request::Query(query.clone())) };
    match web.api.submit(session.request(request)?).await {
        Ok(status) => {
            let status = status.into_inner();
            Ok(Redirect::to(&query_link(&status.query_id, "")).into_response())
        }
        Err(status) => {
            let mut page = form(&web, &session).await?;
            refill(&mut page);
            place_error(&mut page, &status);
            let code = PageError::from(status).status_code();
            Ok(view::render(code, &page))
        }
    }
}

/// Puts the API's reason next to the input it is about.
fn place_error(page: &mut QueryForm, status: &tonic::Status) {
    let message = status.message().to_string();
    let lower = message.to_lowercase();
    match status.code() {
        Code::PermissionDenied if lower.contains("project") => page.error_project = message,
        Code::AlreadyExists => page.error_id = message,
        Code::InvalidArgument if lower.contains("query id") => page.error_id = message,
        Code::InvalidArgument if lower.contains("unknown site") => page.error_form = message,
        Code::InvalidArgument if !page.ccdl.is_empty() && (page.sql.is_empty() || lower.contains("ccdl")) => {
            page.error_ccdl = message
        }
        Code::InvalidArgument if !page.sql.is_empty() => page.error_sql = message,
        _ => page.error_form = message,
    }
}

pub(super) fn query_link(id: &str, owner: &str) -> String {
    let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
    if owner.is_empty() {
        format!("/queries/{id}")
    } else {
        let owner: String = form_urlencoded::byte_serialize(owner.as_bytes()).collect();
        format!("/queries/{id}?owner={owner}")
    }
}

pub async fn queries(State(web): State<Web>, session: Session) -> Result<Response, PageError> {
    let request = pb::ListRequest { project_members: true, ..Default::default() };
    let listed = web.api.list_queries(session.request(request)?).await?.into_inner();
    let rows = listed
        .queries
        .into_iter()
        .map(|q| {
            let owner = if q.owner == session.claims.sub { String::new() } else { q.owner.clone() };
            QueryRow {
                link: query_link(&q.query_id, &owner),
                progress: progress(&q),
                state: state_name(q.state()).into(),
                id: q.query_id,
                owner: q.owner,
                kind: q.kind,
                summary: q.summary,
                project: q.project,
                submitted: view::time(q.submitted_unix_ms),
            }
        })
        .collect();
    Ok(view::render(StatusCode::OK, &view::Queries { nav: session.nav("queries"), rows }))
}

fn progress(q: &pb::QueryStatus) -> String {
    if q.sites.is_empty() {
        return String::new();
    }
    let finished = q.sites.iter().filter(|p| p.finished).count();
    format!("{finished} of {} sites finished", q.sites.len())
}

/// `owner` (whose query, where the network shares a project's) and `after` (the version the
/// page showed: wait for the next change).
fn page_params(raw: Option<String>) -> (String, Option<u64>) {
    let fields = pairs(raw.unwrap_or_default().as_bytes());
    (value(&fields, "owner"), value(&fields, "after").parse().ok())
}

async fn fetch_result(web: &Web, session: &Session, id: &str, owner: &str) -> Result<pb::ResultResponse, PageError> {
    let request = pb::ResultRequest { query_id: id.to_string(), owner: owner.to_string() };
    Ok(web.api.get_result(session.request(request)?).await?.into_inner())
}

pub async fn query_page(
    State(web): State<Web>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let (owner, after) = page_params(raw);
    let ask = pb::StatusRequest {
        query_id: id.clone(),
        owner: owner.clone(),
        after_version: after.unwrap_or(0),
        wait_ms: if after.is_some() { FOLLOW_WAIT_MS } else { 0 },
    };
    let status = web.api.get_status(session.request(ask)?).await?.into_inner();
    let state = status.state();
    let ended_with_answer = matches!(state, pb::QueryState::Done | pb::QueryState::Cancelled);
    let result = if ended_with_answer { Some(fetch_result(&web, &session, &id, &owner).await?) } else { None };
    let mut page = view::QueryPage {
        nav: session.nav("queries"),
        id: id.clone(),
        owner: status.owner.clone(),
        kind: status.kind.clone(),
        state: state_name(state).into(),
        follow: String::new(),
        summary: status.summary.clone(),
        project: status.project.clone(),
        submitted: view::time(status.submitted_unix_ms),
        finished: view::time(status.finished_unix_ms),
        expires: view::time(status.expires_unix_ms),
        round: if status.kind == "model" {
            format!("round {}, attempt {}", status.round, status.attempt + 1)
        } else {
            String::new()
        },
        progress: status.sites.iter().map(progress_row).collect(),
        error: status.error_message.clone(),
        table: None,
        charts: Vec::new(),
        notes: Vec::new(),
        model_summary: String::new(),
        csv_link: String::new(),
        cancel_link: String::new(),
    };
    let link = query_link(&id, &owner);
    if matches!(state, pb::QueryState::Queued | pb::QueryState::Running) {
        let sep = if link.contains('?') { '&' } else { '?' };
        page.follow = format!("{link}{sep}after={}", status.version);
        if owner.is_empty() {
            page.cancel_link = format!("{}/cancel", link);
        }
    }
    match result.and_then(|r| r.result) {
        Some(pb::result_response::Result::Query(response)) => {
            let batch = decode_ipc(&response.arrow_ipc).map_err(|e| {
                PageError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Failed",
                    format!("the stored answer cannot be read: {e}"),
                )
            })?;
            page.charts =
                chart::Chart::of(&batch).into_iter().chain(chart::histograms(&batch, &status.summary)).collect();
            page.table = Some(table(&batch)?);
            page.notes = response.notes;
            let (path, query) = link.split_once('?').unwrap_or((link.as_str(), ""));
            page.csv_link =
                format!("{path}/result.csv{}", if query.is_empty() { String::new() } else { format!("?{query}") });
        }
        Some(pb::result_response::Result::Model(response)) => {
            page.model_summary = response.summary;
            page.notes = response.notes;
        }
        None => {}
    }
    Ok(view::render(StatusCode::OK, &page))
}

fn progress_row(p: &pb::SiteProgress) -> ProgressRow {
    let Some(s) = p.status.as_ref().filter(|_| p.finished) else {
        return ProgressRow {
            site: p.site.clone(),
            outcome: "waiting".into(),
            message: String::new(),
            groups: String::new(),
            elapsed: String::new(),
            profile: String::new(),
            cost: String::new(),
            budget_left: String::new(),
        };
    };
    let (cost, left) = match &s.cost {
        Some(c) if c.repeat => ("0 (a repeat: the same numbers as before)".to_string(), num(c.epsilon_left)),
        Some(c) if c.epsilon > 0.0 || c.delta > 0.0 => {
            let delta = if c.delta > 0.0 { format!(", δ {}", c.delta) } else { String::new() };
            (format!("ε {}{delta}", num(c.epsilon)), num(c.epsilon_left))
        }
        _ => (String::new(), String::new()),
    };
    ProgressRow {
        site: p.site.clone(),
        outcome: outcome_name(s.outcome()).into(),
        message: s.message.clone(),
        groups: s.groups.to_string(),
        elapsed: format!("{} ms", num(s.elapsed_ms)),
        profile: s.profile.clone(),
        cost,
        budget_left: left,
    }
}

/// The merged answer as text cells (an empty cell is "–": withheld or no value, the notes say).
fn table(batch: &RecordBatch) -> Result<Table, PageError> {
    let options = FormatOptions::default().with_null("–");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "Failed", e.to_string()))?;
    let rows = (0..batch.num_rows().min(PAGE_ROWS))
        .map(|row| formatters.iter().map(|f| f.value(row).to_string()).collect())
        .collect();
    let schema = batch.schema();
    Ok(Table {
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        numeric: schema.fields().iter().map(|f| f.data_type().is_numeric()).collect(),
        rows,
    })
}

/// The whole answer as CSV (a header row, then every row), for a spreadsheet or R.
pub async fn csv(
    State(web): State<Web>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let (owner, _) = page_params(raw);
    let result = fetch_result(&web, &session, &id, &owner).await?;
    let Some(pb::result_response::Result::Query(response)) = result.result else {
        return Err(PageError::bad_request(
            "only a query's table can be exported as CSV; a model's fit is on its page",
        ));
    };
    let failed = |e: String| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "Failed", e);
    let batch = decode_ipc(&response.arrow_ipc).map_err(|e| failed(e.to_string()))?;
    let mut out = Vec::new();
    {
        let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
        writer.write(&batch).map_err(|e| failed(e.to_string()))?;
    }
    let file: String = id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    let mut response = (StatusCode::OK, out).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"verbund-{file}.csv\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

pub async fn cancel(State(web): State<Web>, session: Session, Path(id): Path<String>) -> Result<Response, PageError> {
    let found = web.api.cancel(session.request(pb::CancelRequest { query_id: id.clone() })?).await?.into_inner().found;
    if !found {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("no query '{id}' of yours is queued or running"),
        ));
    }
    Ok(Redirect::to(&query_link(&id, "")).into_response())
}
