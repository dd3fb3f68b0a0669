//! Sends one request to every selected site and collects what each one says, bounded by a
//! deadline and by the researcher's cancel. A site that is gone, slow or cancelled costs at
//! most the deadline, and is told to stop working on the query.

use crate::sites::{DispatchError, SiteRegistry, SiteReply};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use verbund_proto::v1 as pb;

/// One site's part of a federated query.
#[derive(Debug, Clone)]
pub struct SiteOutcome {
    pub site: String,
    pub outcome: pb::SiteOutcome,
    pub message: String,
    pub partial: Option<pb::PartialResult>,
    pub elapsed_ms: f64,
}

impl SiteOutcome {
    fn new(site: &str, outcome: pb::SiteOutcome, message: impl Into<String>, started: Instant) -> Self {
        Self {
            site: site.to_string(),
            outcome,
            message: message.into(),
            partial: None,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        }
    }
}

/// Tells the site to stop unless the answer arrived (also when the researcher's request is
/// dropped mid-flight).
struct CancelOnDrop<'a> {
    registry: &'a SiteRegistry,
    site: &'a str,
    query_id: &'a str,
    reason: &'static str,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.registry.cancel(self.site, self.query_id, self.reason);
        }
    }
}

/// Asks every site in `sites`; `on_site` hears of each site as it ends (for the researcher's
/// progress). The outcomes come back in the order of `sites`.
pub async fn fan_out(
    registry: &Arc<SiteRegistry>,
    sites: &[String],
    query: pb::NodeQuery,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
    on_site: &(dyn Fn(&SiteOutcome) + Sync),
) -> Vec<SiteOutcome> {
    use futures::StreamExt;
    let mut pending: futures::stream::FuturesUnordered<_> = sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            let query = query.clone();
            async move { (i, ask(registry, site, query, deadline, cancel).await) }
        })
        .collect();
    let mut outcomes: Vec<Option<SiteOutcome>> = vec![None; sites.len()];
    while let Some((i, outcome)) = pending.next().await {
        on_site(&outcome);
        outcomes[i] = Some(outcome);
    }
    outcomes.into_iter().flatten().collect()
}

async fn ask(
    registry: &SiteRegistry,
    site: &str,
    query: pb::NodeQuery,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> SiteOutcome {
    let started = Instant::now();
    let query_id = query.query_id.clone();
    let receiver = match registry.dispatch(site, query) {
        Ok(r) => r,
        Err(DispatchError::NotConnected) => {
            return SiteOutcome::new(site, pb::SiteOutcome::NotConnected, "the site is not connected", started);
        }
        Err(e @ DispatchError::Busy) => return SiteOutcome::new(site, pb::SiteOutcome::Failed, e.to_string(), started),
    };
    let mut guard = CancelOnDrop { registry, site, query_id: &query_id, reason: "researcher went away", armed: true };
    tokio::select! {
        reply = receiver => {
            guard.armed = false;
            match reply {
                Ok(SiteReply::Result(result)) => outcome_of(site, result, started),
                Ok(SiteReply::Audit(_)) => SiteOutcome::new(
                    site,
                    pb::SiteOutcome::Failed,
                    "the site answered the query with an audit result; nothing is used",
                    started,
                ),
                Ok(SiteReply::Disconnected) | Err(_) => SiteOutcome::new(
                    site,
                    pb::SiteOutcome::Disconnected,
                    "the connection to the site broke while the query was running",
                    started,
                ),
            }
        }
        _ = tokio::time::sleep_until(deadline) => {
            guard.reason = "deadline passed";
            SiteOutcome::new(site, pb::SiteOutcome::TimedOut, "no answer before the deadline; the site was told to stop", started)
        }
        _ = cancel.cancelled() => {
            guard.reason = "cancelled by the researcher";
            SiteOutcome::new(site, pb::SiteOutcome::Cancelled, "cancelled by the researcher; the site was told to stop", started)
        }
    }
}

fn outcome_of(site: &str, result: pb::QueryResult, started: Instant) -> SiteOutcome {
    let mut out = SiteOutcome::new(site, pb::SiteOutcome::Answered, "", started);
    match result.outcome {
        Some(pb::query_result::Outcome::Answer(partial)) => out.partial = Some(partial),
        Some(pb::query_result::Outcome::Refusal(r)) => {
            out.outcome = match r.code() {
                pb::RefusalCode::TimedOut => pb::SiteOutcome::TimedOut,
                pb::RefusalCode::Cancelled => pb::SiteOutcome::Cancelled,
                pb::RefusalCode::Internal => pb::SiteOutcome::Failed,
                _ => pb::SiteOutcome::Refused,
            };
            out.message = r.message;
        }
        None => {
            out.outcome = pb::SiteOutcome::Failed;
            out.message = "the site sent an empty result".into();
        }
    }
    out
}
