//! Queries that outlive the command: `submit`, `status`, `result`, `list`, and the progress
//! that `query` and `model` show while they wait (on stderr, so that stdout stays the answer).

use crate::{OutputFormat, ResearcherConnection, authorized, connect, print, render, status_error};
use std::io::IsTerminal;
use std::time::Duration;
use tonic::transport::Channel;
use verbund_proto::v1 as pb;
use verbund_proto::v1::researcher_client::ResearcherClient;

type Client = ResearcherClient<Channel>;

/// How long one status call waits for a change.
const POLL_WAIT_MS: u32 = 10_000;

fn finished(state: pb::QueryState) -> bool {
    matches!(state, pb::QueryState::Done | pb::QueryState::Failed | pb::QueryState::Cancelled)
}

pub use verbund_coordinator::api::state_name;

/// One line of progress: "q-7 running: 2 of 3 sites finished (north answered 1.2 s, south refused) round 3".
pub fn progress_line(s: &pb::QueryStatus) -> String {
    let done: Vec<String> = s
        .sites
        .iter()
        .filter(|p| p.finished)
        .map(|p| match &p.status {
            Some(st) => {
                let label = verbund_coordinator::api::site_outcome_label(st.outcome());
                format!("{} {label} {}", p.site, took(st.elapsed_ms))
            }
            None => format!("{} finished", p.site),
        })
        .collect();
    let mut line = format!("{} {}", s.query_id, state_name(s.state()));
    if !s.sites.is_empty() {
        let n = s.sites.iter().filter(|p| p.finished).count();
        line.push_str(&format!(": {n} of {} sites finished", s.sites.len()));
        if !done.is_empty() {
            line.push_str(&format!(" ({})", done.join(", ")));
        }
    }
    if s.kind == "model" {
        line.push_str(&format!(", round {} attempt {}", s.round, s.attempt + 1));
    }
    line
}

/// "850 ms", "1.2 s".
fn took(ms: f64) -> String {
    if ms < 1000.0 { format!("{ms:.0} ms") } else { format!("{:.1} s", ms / 1000.0) }
}

/// Shows progress on stderr: one redrawn line on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: String,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar, last: String::new() }
    }

    fn show(&mut self, status: &pb::QueryStatus, quiet: bool) {
        let line = progress_line(status);
        if line == self.last || quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(line.clone()),
            None => eprintln!("{line}"),
        }
        self.last = line;
    }

    fn done(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Follows a query until it is finished, showing its progress. With `cancel_on_interrupt`,
/// Ctrl-C cancels the query at the coordinator (and the sites) and waits for its end;
/// without, Ctrl-C only stops watching.
pub async fn follow(
    client: &mut Client,
    token: &str,
    id: &str,
    owner: &str,
    cancel_on_interrupt: bool,
    quiet: bool,
) -> anyhow::Result<pb::QueryStatus> {
    let mut progress = Progress::new(quiet);
    let mut version = 0;
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    let mut cancelled = false;
    let result = loop {
        let request = pb::StatusRequest {
            query_id: id.into(),
            owner: owner.into(),
            after_version: version,
            wait_ms: POLL_WAIT_MS,
        };
        let mut poll_client = client.clone();
        let call = poll_client.get_status(authorized(request, token)?);
        let status = tokio::select! {
            status = call => status.map_err(status_error)?.into_inner(),
            _ = &mut interrupt, if !cancelled => {
                if !cancel_on_interrupt {
                    progress.done();
                    anyhow::bail!("stopped watching {id}; it goes on at the coordinator (verbund status {id})");
                }
                cancelled = true;
                eprintln!("cancelling {id} …");
                let cancel = pb::CancelRequest { query_id: id.into() };
                client.cancel(authorized(cancel, token)?).await.map_err(status_error)?;
                continue;
            }
        };
        progress.show(&status, quiet);
        version = status.version;
        if finished(status.state()) {
            break status;
        }
    };
    progress.done();
    Ok(result)
}

/// Submits, follows and fetches: what `query` and `model` do. Ctrl-C cancels.
pub async fn run_to_end(
    client: &mut Client,
    token: &str,
    submit: pb::SubmitRequest,
    quiet: bool,
) -> anyhow::Result<pb::ResultResponse> {
    let status = client.submit(authorized(submit, token)?).await.map_err(status_error)?.into_inner();
    follow(client, token, &status.query_id, "", true, quiet).await?;
    fetch(client, token, &status.query_id, "").await
}

async fn fetch(client: &mut Client, token: &str, id: &str, owner: &str) -> anyhow::Result<pb::ResultResponse> {
    let request = pb::ResultRequest { query_id: id.into(), owner: owner.into() };
    Ok(client.get_result(authorized(request, token)?).await.map_err(status_error)?.into_inner())
}

/// A stored answer, as `query` or `model` prints it.
pub fn render_result(response: &pb::ResultResponse, format: OutputFormat) -> anyhow::Result<String> {
    match &response.result {
        Some(pb::result_response::Result::Query(q)) => render::response(q, format),
        Some(pb::result_response::Result::Model(m)) => crate::model::render(m, format == OutputFormat::Json),
        None => {
            let status = response.status.clone().unwrap_or_default();
            Ok(format!("{} was {} before any site answered", status.query_id, state_name(status.state())))
        }
    }
}

/// The flags `verbund status`, `result` share.
#[derive(Debug, clap::Args)]
pub struct QueryRef {
    #[command(flatten)]
    pub connection: ResearcherConnection,
    /// The query's id (as `submit` printed it).
    pub id: String,
    /// Another researcher's query (where the network shares a project's queries).
    #[arg(long, default_value = "")]
    pub owner: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

pub async fn submit(
    connection: &ResearcherConnection,
    request: pb::SubmitRequest,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let (mut client, token) = connect(connection).await?;
    let status = client.submit(authorized(request, &token)?).await.map_err(status_error)?.into_inner();
    match format {
        OutputFormat::Json => print(&serde_json::to_string_pretty(&status)?),
        OutputFormat::Table => print(&format!(
            "{}\t{}\n(verbund status {} --wait; verbund result {})",
            status.query_id,
            state_name(status.state()),
            status.query_id,
            status.query_id
        )),
    }
}

pub async fn status(r: &QueryRef, wait: bool) -> anyhow::Result<()> {
    let (mut client, token) = connect(&r.connection).await?;
    let status = if wait {
        follow(&mut client, &token, &r.id, &r.owner, false, r.format == OutputFormat::Json).await?
    } else {
        let request = pb::StatusRequest { query_id: r.id.clone(), owner: r.owner.clone(), ..Default::default() };
        client.get_status(authorized(request, &token)?).await.map_err(status_error)?.into_inner()
    };
    match r.format {
        OutputFormat::Json => print(&serde_json::to_string_pretty(&status)?),
        OutputFormat::Table => print(&status_text(&status)),
    }
}

pub async fn result(r: &QueryRef) -> anyhow::Result<()> {
    let (mut client, token) = connect(&r.connection).await?;
    let response = fetch(&mut client, &token, &r.id, &r.owner).await?;
    print(&render_result(&response, r.format)?)
}

pub async fn list(
    connection: &ResearcherConnection,
    request: pb::ListRequest,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let (mut client, token) = connect(connection).await?;
    let listed = client.list_queries(authorized(request, &token)?).await.map_err(status_error)?.into_inner();
    match format {
        OutputFormat::Json => print(&serde_json::to_string_pretty(&listed.queries)?),
        OutputFormat::Table => print(&list_table(&listed.queries)),
    }
}

fn when(ms: u64) -> String {
    if ms == 0 { "-".into() } else { verbund_audit::utc(ms) }
}

fn status_text(s: &pb::QueryStatus) -> String {
    let mut out = format!(
        "{} ({}, {} of project {}): {}\n  {}\n  submitted {}, started {}, finished {}, kept until {}\n",
        s.query_id,
        s.kind,
        s.owner,
        s.project,
        state_name(s.state()),
        s.summary,
        when(s.submitted_unix_ms),
        when(s.started_unix_ms),
        when(s.finished_unix_ms),
        when(s.expires_unix_ms),
    );
    if !s.error_message.is_empty() {
        out.push_str(&format!("  {}\n", s.error_message));
    }
    for p in &s.sites {
        let what = match (&p.status, p.finished) {
            (Some(st), _) => format!(
                "{} after {} {}",
                verbund_coordinator::api::site_outcome_label(st.outcome()),
                took(st.elapsed_ms),
                st.message
            ),
            (None, true) => "finished".into(),
            (None, false) => "waiting".into(),
        };
        out.push_str(&format!("  site {}: {}\n", p.site, what.trim_end()));
    }
    out.trim_end().to_string()
}

pub fn list_table(queries: &[pb::QueryStatus]) -> String {
    if queries.is_empty() {
        return "(no stored queries)".into();
    }
    let mut out = String::from("id\tkind\tstate\tsites\tsubmitted\tkept until\towner\twhat\n");
    for q in queries {
        let finished = q.sites.iter().filter(|p| p.finished).count();
        out.push_str(&format!(
            "{}\t{}\t{}\t{finished}/{}\t{}\t{}\t{}\t{}\n",
            q.query_id,
            q.kind,
            state_name(q.state()),
            q.sites.len(),
            when(q.submitted_unix_ms),
            when(q.expires_unix_ms),
            q.owner,
            q.summary
        ));
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_says_which_sites_finished_and_how() {
        let mut s = pb::QueryStatus {
            query_id: "q-7".into(),
            kind: "model".into(),
            state: pb::QueryState::Running as i32,
            round: 3,
            attempt: 0,
            ..Default::default()
        };
        s.sites.push(pb::SiteProgress {
            site: "north".into(),
            finished: true,
            status: Some(pb::SiteStatus {
                outcome: pb::SiteOutcome::Answered as i32,
                elapsed_ms: 1234.0,
                ..Default::default()
            }),
        });
        s.sites.push(pb::SiteProgress { site: "south".into(), ..Default::default() });
        assert_eq!(progress_line(&s), "q-7 running: 1 of 2 sites finished (north answered 1.2 s), round 3 attempt 1");
        s.kind = "query".into();
        s.state = pb::QueryState::Queued as i32;
        s.sites.clear();
        assert_eq!(progress_line(&s), "q-7 queued");
        assert!(list_table(&[]).contains("no stored"));
    }
}
