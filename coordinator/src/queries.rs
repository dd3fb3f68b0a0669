//! The life of a researcher's query (or model fit) at the coordinator: admitted and stored as
//! queued, run when a slot is free, its answer stored until it expires. Submitted and blocking
//! queries take the same path; a blocking caller only waits for the end (and cancels if it
//! hangs up). A query caught running by a restart is failed, never re-run: re-running would
//! need the researcher's token at rest, and would be a release nobody asked for again.

use crate::audit::{Asked, Asking};
use crate::fanout::SiteOutcome;
use crate::store::{Refused, Stored};
use crate::{Coordinator, RequestError as Error};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use verbund_proto::v1 as pb;
use verbund_security::token::Claims;

/// What a researcher asked to run.
#[derive(Debug, Clone)]
pub enum Work {
    Query(pb::ResearchQuery),
    Model(pb::ResearchModel),
}

/// What a finished query answered.
#[derive(Debug, Clone)]
pub enum Answer {
    Query(pb::QueryResponse),
    Model(pb::ModelResponse),
}

impl Work {
    pub(crate) fn asking(&self) -> Asking<'_> {
        match self {
            Work::Query(q) => Asking::Query(q),
            Work::Model(m) => Asking::Model(m),
        }
    }

    fn ids(&mut self) -> (&mut String, &str, &[String]) {
        match self {
            Work::Query(q) => (&mut q.query_id, &q.project, &q.sites),
            Work::Model(m) => (&mut m.query_id, &m.project, &m.sites),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Work::Query(_) => "query",
            Work::Model(_) => "model",
        }
    }

    /// What was asked, in at most 200 characters.
    fn summary(&self) -> String {
        let text = match self {
            Work::Query(q) if !q.sql.trim().is_empty() => q.sql.split_whitespace().collect::<Vec<_>>().join(" "),
            Work::Query(q) if !q.ccdl.is_empty() => "feasibility count of a CCDL cohort".into(),
            Work::Query(_) => "feasibility count of a cohort".into(),
            Work::Model(m) => {
                let family = verbund_query::model::family_name(m.family());
                let terms: Vec<&str> = m.covariates.iter().map(|t| t.column.as_str()).collect();
                format!("{family} {} ~ {} ({})", m.outcome, terms.join(" + "), m.dataset)
            }
        };
        match text.char_indices().nth(200) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text,
        }
    }
}

/// How a running query is steered (cancel) and watched (per-site progress).
#[derive(Clone, Default)]
pub(crate) struct Ctl {
    pub cancel: CancellationToken,
    progress: Option<watch::Sender<pb::QueryStatus>>,
}

impl Ctl {
    /// For a query the researcher does not see on its own (a fit's levels count): the fit's
    /// cancel stops it too.
    pub fn inner(cancel: &CancellationToken) -> Self {
        Self { cancel: cancel.child_token(), progress: None }
    }

    /// A new round (model fits) or the one fan-out (queries) starts at `sites`.
    pub fn round(&self, attempt: u32, round: u32, sites: &[String]) {
        if let Some(tx) = &self.progress {
            tx.send_modify(|s| {
                s.attempt = attempt;
                s.round = round;
                s.sites =
                    sites.iter().map(|site| pb::SiteProgress { site: site.clone(), ..Default::default() }).collect();
                s.version += 1;
            });
        }
    }

    /// One site of the round ended.
    pub fn site_done(&self, outcome: &SiteOutcome) {
        if let Some(tx) = &self.progress {
            tx.send_modify(|s| {
                let status = Some(crate::api::status_of(outcome));
                match s.sites.iter_mut().find(|p| p.site == outcome.site) {
                    Some(p) => {
                        p.finished = true;
                        p.status = status;
                    }
                    None => s.sites.push(pb::SiteProgress { site: outcome.site.clone(), finished: true, status }),
                }
                s.version += 1;
            });
        }
    }
}

/// A query that is still queued or running: its cancel handle and its live status.
pub struct LiveQuery {
    pub cancel: CancellationToken,
    pub status: watch::Sender<pb::QueryStatus>,
}

/// An admitted query: its first status, and (for a blocking caller) its answer when it ends.
pub(crate) struct Launched {
    pub status: pb::QueryStatus,
    pub cancel: CancellationToken,
    pub done: oneshot::Receiver<Result<Answer, Error>>,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The longest a status call may wait for a change.
const MAX_WAIT: Duration = Duration::from_secs(30);

impl Coordinator {
    /// Admits `work` (access, quota, id, sites and, for queries, the plan), stores it as
    /// queued and starts it. Errors here are the researcher's to fix and are not stored.
    /// `submitted`: the caller leaves and comes back, so the query's records are durable
    /// before its id is returned; a blocking caller waits for the answer itself.
    pub(crate) async fn launch(
        self: &Arc<Self>,
        mut work: Work,
        claims: &Claims,
        token: &str,
        submitted: bool,
    ) -> Result<Launched, Error> {
        let wire_id = uuid::Uuid::new_v4().to_string();
        let started = std::time::Instant::now();
        let admitted = self.check_work(&mut work, claims).await;
        let asked = Asked::of(&wire_id, work.asking(), Some(claims));
        let targets = self.audit_refusal(&asked, started, admitted).await?;
        let (query_id, project) = {
            let (id, project, _) = work.ids();
            (id.clone(), project.to_string())
        };
        let status = pb::QueryStatus {
            query_id,
            owner: claims.sub.clone(),
            project,
            kind: work.kind().into(),
            state: pb::QueryState::Queued as i32,
            sites: targets.into_iter().map(|site| pb::SiteProgress { site, ..Default::default() }).collect(),
            submitted_unix_ms: now_ms(),
            summary: work.summary(),
            version: 1,
            ..Default::default()
        };
        let request_json = match &work {
            Work::Query(q) => serde_json::to_string(q),
            Work::Model(m) => serde_json::to_string(m),
        }
        .unwrap_or_default();
        let stored = Stored {
            status: Some(status.clone()),
            wire_id: wire_id.clone(),
            roles: claims.roles.clone(),
            request_json,
        };
        let cancel = CancellationToken::new();
        let (tx, _) = watch::channel(status.clone());
        // Registered before it is stored, so that no moment exists where it is stored as queued
        // but cannot be cancelled.
        if !self.running().insert(
            &claims.sub,
            &status.query_id,
            LiveQuery { cancel: cancel.clone(), status: tx.clone() },
        ) {
            return Err(Error::DuplicateQueryId { id: status.query_id, state: "running".into() });
        }
        let max = u64::from(self.config().queries.max_stored_per_researcher);
        let inserted = self.blocking_store({
            let stored = stored.clone();
            move |store| store.insert_new(&stored, max, submitted)
        });
        let refused = match inserted.await {
            Ok(Ok(())) => None,
            Ok(Err(Refused::Duplicate(old))) => {
                Some(Error::DuplicateQueryId { id: status.query_id.clone(), state: describe_state(&old) })
            }
            Ok(Err(Refused::Full(n))) => Some(Error::TooManyStored(n)),
            Err(e) => Some(e),
        };
        if let Some(error) = refused {
            self.running().remove(&claims.sub, &status.query_id);
            return Err(error);
        }
        let (done_tx, done) = oneshot::channel();
        let span = tracing::info_span!("query", query_id = %wire_id);
        let (claims, token) = (claims.clone(), token.to_string());
        let task = self.clone().run_stored(stored, work, claims, token, cancel.clone(), tx, done_tx, submitted);
        self.spawn_query(task.instrument(span));
        Ok(Launched { status, cancel, done })
    }

    /// The checks before a query is stored: the sites it goes to, or the error.
    async fn check_work(&self, work: &mut Work, claims: &Claims) -> Result<Vec<String>, Error> {
        let (query_id, project, sites) = work.ids();
        if query_id.is_empty() {
            *query_id = uuid::Uuid::new_v4().to_string();
        }
        let admitted = self.admit(claims, project, query_id, sites)?;
        if let Work::Query(q) = work {
            // A query that cannot be planned is refused now, not stored.
            self.plan(q, &admitted.catalogue).await?;
        }
        Ok(admitted.targets)
    }

    /// Runs a stored query once a slot is free, and stores how it ended.
    #[allow(clippy::too_many_arguments)]
    async fn run_stored(
        self: Arc<Self>,
        mut stored: Stored,
        work: Work,
        claims: Claims,
        token: String,
        cancel: CancellationToken,
        tx: watch::Sender<pb::QueryStatus>,
        done: oneshot::Sender<Result<Answer, Error>>,
        durable: bool,
    ) {
        let waiting = self.metrics().query_queued();
        let slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            slot = self.slots.clone().acquire_owned() => slot.ok(),
        };
        drop(waiting);
        let result = match slot {
            None => Err(Error::CancelledWhileQueued),
            Some(_slot) if claims.exp <= now_ms() / 1000 => Err(Error::ExpiredWhileQueued),
            Some(_slot) => {
                tx.send_modify(|s| {
                    s.state = pb::QueryState::Running as i32;
                    s.started_unix_ms = now_ms();
                    s.version += 1;
                });
                // Not written to the store: a restart fails queued and running queries alike,
                // and one write fewer keeps a small query fast.
                let ctl = Ctl { cancel: cancel.clone(), progress: Some(tx.clone()) };
                match work {
                    Work::Query(q) => {
                        self.run_query(&q, &stored.wire_id, &claims, &token, &ctl).await.map(Answer::Query)
                    }
                    Work::Model(m) => self.run_fit(&m, &stored.wire_id, &claims, &token, &ctl).await.map(Answer::Model),
                }
            }
        };
        let (state, code, message, encoded) = match &result {
            Ok(answer) if cancel.is_cancelled() => (
                pb::QueryState::Cancelled,
                0,
                "cancelled: the result holds what the sites sent before".into(),
                encode(answer),
            ),
            Ok(answer) => (pb::QueryState::Done, 0, String::new(), encode(answer)),
            Err(e) if cancel.is_cancelled() => (pb::QueryState::Cancelled, e.code() as i32, e.to_string(), None),
            Err(e) => (pb::QueryState::Failed, e.code() as i32, e.to_string(), None),
        };
        // Readers see the end only once it is stored: a status that says done means the
        // answer can be fetched.
        let now = now_ms();
        let mut s = tx.borrow().clone();
        s.state = state as i32;
        s.error_code = code;
        s.error_message = message;
        s.finished_unix_ms = now;
        s.expires_unix_ms = now.saturating_add(self.config().queries.keep.as_millis() as u64);
        if let Ok(answer) = &result {
            let sites = match answer {
                Answer::Query(r) => &r.sites,
                Answer::Model(r) => &r.sites,
            };
            s.sites = sites
                .iter()
                .map(|st| pb::SiteProgress { site: st.site.clone(), finished: true, status: Some(st.clone()) })
                .collect();
            if let Answer::Query(r) = answer {
                s.rows = crate::api::decode_ipc(&r.arrow_ipc).map_or(0, |b| b.num_rows() as u64);
            }
        }
        s.sites.iter_mut().for_each(|p| p.finished = true);
        s.version += 1;
        stored.status = Some(s.clone());
        let finished = stored.clone();
        let written = self.blocking_store(move |store| store.update(&finished, encoded.as_deref(), durable)).await;
        if let Err(e) = written {
            tracing::error!(error = %e, "the query's answer could not be stored; only a waiting caller gets it");
            s.state = pb::QueryState::Failed as i32;
            s.error_code = tonic::Code::Unavailable as i32;
            s.error_message = format!("the answer could not be stored ({e}); ask again");
        }
        tx.send_replace(s);
        let status = tx.borrow().clone();
        self.running().remove(&status.owner, &status.query_id);
        let _ = done.send(result);
    }

    /// A researcher's blocking query: submitted and waited for. Hanging up cancels it.
    pub async fn query(
        self: &Arc<Self>,
        request: pb::ResearchQuery,
        claims: &Claims,
        token: &str,
    ) -> Result<pb::QueryResponse, Error> {
        match self.launch_and_wait(Work::Query(request), claims, token).await? {
            Answer::Query(r) => Ok(r),
            Answer::Model(_) => Err(Error::Ended { code: tonic::Code::Internal as i32, message: "not a query".into() }),
        }
    }

    /// A researcher's blocking model fit: submitted and waited for. Hanging up cancels it.
    pub async fn model(
        self: &Arc<Self>,
        request: pb::ResearchModel,
        claims: &Claims,
        token: &str,
    ) -> Result<pb::ModelResponse, Error> {
        match self.launch_and_wait(Work::Model(request), claims, token).await? {
            Answer::Model(r) => Ok(r),
            Answer::Query(_) => Err(Error::Ended { code: tonic::Code::Internal as i32, message: "not a fit".into() }),
        }
    }

    async fn launch_and_wait(self: &Arc<Self>, work: Work, claims: &Claims, token: &str) -> Result<Answer, Error> {
        let launched = self.launch(work, claims, token, false).await?;
        let hang_up = launched.cancel.drop_guard();
        let answer = launched.done.await.map_err(|_| Error::ShuttingDown);
        hang_up.disarm();
        answer?
    }

    /// Submits `work`: stored and started; returns at once.
    pub async fn submit(self: &Arc<Self>, work: Work, claims: &Claims, token: &str) -> Result<pb::QueryStatus, Error> {
        Ok(self.launch(work, claims, token, true).await?.status)
    }

    /// Cancels the caller's own queued or running query; false if it has none by that id.
    pub fn cancel(&self, claims: &Claims, query_id: &str) -> bool {
        match self.running().get(&claims.sub, query_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// The stored query `owner`/`query_id` if `claims` may read it. Anyone else learns
    /// nothing, not even that it exists.
    async fn readable(&self, claims: &Claims, owner: &str, query_id: &str) -> Result<Stored, Error> {
        let owner = if owner.is_empty() { claims.sub.as_str() } else { owner };
        let not_found = || Error::NoSuchQuery {
            id: query_id.to_string(),
            keep_hours: self.config().queries.keep.as_secs().div_ceil(3600),
        };
        let (o, id) = (owner.to_string(), query_id.to_string());
        let stored = self.blocking_store(move |store| store.get(&o, &id)).await?.ok_or_else(not_found)?;
        let status = stored.status();
        let may = status.owner == claims.sub
            || (self.config().queries.share_with_project && claims.projects.contains(&status.project));
        let expired = status.expires_unix_ms > 0 && status.expires_unix_ms <= now_ms();
        if !may || expired {
            return Err(not_found());
        }
        Ok(stored)
    }

    /// A query's state: live while it runs, stored after. With `wait_ms`, waits (at most
    /// 30 s) until its version is above `after_version`.
    pub async fn status(&self, claims: &Claims, request: pb::StatusRequest) -> Result<pb::QueryStatus, Error> {
        let stored = self.readable(claims, &request.owner, &request.query_id).await?;
        let status = stored.status();
        let Some(mut live) = self.running().watch(&status.owner, &status.query_id) else {
            return Ok(status.clone());
        };
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(MAX_WAIT);
        let _ = tokio::time::timeout(wait, live.wait_for(|s| s.version > request.after_version)).await;
        let status = live.borrow().clone();
        Ok(status)
    }

    /// A finished query's answer, with its status.
    pub async fn result(&self, claims: &Claims, owner: &str, query_id: &str) -> Result<pb::ResultResponse, Error> {
        let stored = self.readable(claims, owner, query_id).await?;
        let status = stored.status().clone();
        match status.state() {
            pb::QueryState::Queued | pb::QueryState::Running => {
                let answered = status.sites.iter().filter(|s| s.finished).count();
                return Err(Error::NotFinished {
                    id: status.query_id,
                    progress: format!("{answered} of {} sites finished", status.sites.len()),
                });
            }
            pb::QueryState::Failed => {
                return Err(Error::Ended { code: status.error_code, message: status.error_message });
            }
            _ => {}
        }
        let (o, id) = (status.owner.clone(), status.query_id.clone());
        let bytes = self.blocking_store(move |store| store.result(&o, &id)).await?;
        let mut response = match bytes {
            Some(b) => <pb::ResultResponse as prost::Message>::decode(b.as_slice())
                .map_err(|e| Error::Store(crate::store::StoreError::Decode(e)))?,
            // Cancelled before any site answered.
            None => pb::ResultResponse::default(),
        };
        response.status = Some(status);
        Ok(response)
    }

    /// The caller's stored queries (and, where shared, their projects' members'), newest first.
    pub async fn list_queries(&self, claims: &Claims, request: pb::ListRequest) -> Result<pb::ListResponse, Error> {
        let share = request.project_members && self.config().queries.share_with_project;
        let (me, projects, project) = (claims.sub.clone(), claims.projects.clone(), request.project.clone());
        let now = now_ms();
        let mut queries = self
            .blocking_store(move |store| {
                store.list(|s| {
                    (s.owner == me || (share && projects.contains(&s.project)))
                        && (project.is_empty() || s.project == project)
                        && (s.expires_unix_ms == 0 || s.expires_unix_ms > now)
                })
            })
            .await?;
        // Live progress beats the stored state of a running query.
        for q in &mut queries {
            if let Some(live) = self.running().watch(&q.owner, &q.query_id) {
                *q = live.borrow().clone();
            }
        }
        queries.sort_by(|a, b| b.submitted_unix_ms.cmp(&a.submitted_unix_ms).then_with(|| a.query_id.cmp(&b.query_id)));
        queries.truncate(if request.limit == 0 { 100 } else { request.limit as usize });
        Ok(pb::ListResponse { queries })
    }

    /// Deletes expired results now and then, until shutdown.
    pub(crate) async fn sweep_expired(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.config().queries.sweep);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = now_ms();
            match self.blocking_store(move |store| Ok((store.sweep(now)?, store.len()?))).await {
                Ok((deleted, stored)) => {
                    self.metrics().stored_queries(stored, deleted);
                    if deleted > 0 {
                        tracing::info!(deleted, "expired query results deleted");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "expired query results could not be deleted"),
            }
        }
    }

    /// Runs a store call off the async runtime.
    async fn blocking_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&crate::store::Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| Error::Store(crate::store::StoreError::Storage(e.to_string())))?
            .map_err(Error::Store)
    }
}

fn encode(answer: &Answer) -> Option<Vec<u8>> {
    let result = match answer.clone() {
        Answer::Query(r) => pb::result_response::Result::Query(r),
        Answer::Model(r) => pb::result_response::Result::Model(r),
    };
    Some(prost::Message::encode_to_vec(&pb::ResultResponse { status: None, result: Some(result) }))
}

fn describe_state(status: &pb::QueryStatus) -> String {
    match status.state() {
        pb::QueryState::Queued | pb::QueryState::Running => "running".into(),
        state => {
            let name = match state {
                pb::QueryState::Done => "done",
                pb::QueryState::Failed => "failed",
                _ => "cancelled",
            };
            format!(
                "{name}, kept for {} more hour(s)",
                status.expires_unix_ms.saturating_sub(now_ms()).div_ceil(3_600_000)
            )
        }
    }
}
