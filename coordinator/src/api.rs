//! The researcher API: plan the SQL, fan out to the sites, merge, and report every site's
//! status next to the merged table.

use crate::audit::Asked;
use crate::fanout::{SiteOutcome, fan_out};
use crate::merge::Merger;
use crate::queries::{Ctl, Work};
use crate::sites::View;
use crate::{Coordinator, Forbidden, RequestError as Error};
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info};
use verbund_proto::v1 as pb;
use verbund_proto::v1::researcher_server::Researcher;
use verbund_security::token::{Claims, TokenError};

pub struct ResearcherService {
    coordinator: Arc<Coordinator>,
}

impl ResearcherService {
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self { coordinator }
    }
}

/// The token role that sees the sites as operators do (network addresses, full catalogues).
pub const OPERATOR_ROLE: &str = "operator";

fn valid_query_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The researcher's verified claims, from `authorization: Bearer <token>`.
pub(crate) fn authenticate<T>(coordinator: &Coordinator, request: &Request<T>) -> Result<(Claims, String), Error> {
    let header = request.metadata().get("authorization").ok_or(TokenError::Missing)?;
    let value = header.to_str().map_err(|_| TokenError::Malformed("the authorization header is not text".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| TokenError::Malformed("the authorization header must be 'Bearer <token>'".into()))?;
    let claims = coordinator.tokens().verify(token)?;
    Ok((claims, token.trim().to_string()))
}

impl Coordinator {
    /// Runs one admitted query at the sites under `wire_id` (the id the sites see) and merges
    /// the answers; a failure is audited as refused. The quota was charged at admission.
    pub(crate) async fn run_query(
        &self,
        request: &pb::ResearchQuery,
        wire_id: &str,
        claims: &Claims,
        token: &str,
        ctl: &Ctl,
    ) -> Result<pb::QueryResponse, Error> {
        let started = std::time::Instant::now();
        let asked = Asked::new(wire_id, request, Some(claims));
        let result = self.answer_query(request, &asked, claims, token, ctl, started).await;
        self.audit_refusal(&asked, started, result).await
    }

    /// `result`, its refusal on record (best effort: a refusal releases nothing).
    pub(crate) async fn audit_refusal<T>(
        &self,
        asked: &Asked<'_>,
        started: std::time::Instant,
        result: Result<T, Error>,
    ) -> Result<T, Error> {
        if let (Err(error), Some(audit)) = (&result, self.audit()) {
            audit.refused(asked, error, started.elapsed()).await;
        }
        result
    }

    /// A query the researcher does not see on its own (a model fit's levels count): run at
    /// once under an id of its own, audited as any other, not stored.
    pub(crate) async fn query_direct(
        &self,
        request: &pb::ResearchQuery,
        claims: &Claims,
        token: &str,
        ctl: &Ctl,
    ) -> Result<pb::QueryResponse, Error> {
        let wire_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("query", query_id = %wire_id);
        self.run_query(request, &wire_id, claims, token, ctl).instrument(span).await
    }

    async fn answer_query(
        &self,
        request: &pb::ResearchQuery,
        asked: &Asked<'_>,
        claims: &Claims,
        token: &str,
        ctl: &Ctl,
        started: std::time::Instant,
    ) -> Result<pb::QueryResponse, Error> {
        let wire_id = asked.wire_id.to_string();
        let Admitted { query_id, targets, catalogue, .. } =
            self.admit_unmetered(claims, &request.project, &request.query_id, &request.sites)?;
        let plan = self.plan(request, &catalogue).await?;
        if let Some(audit) = self.audit() {
            audit.received(asked, &plan.request).await?;
        }

        let timeout = match request.timeout_ms {
            0 => self.config().default_timeout,
            ms => Duration::from_millis(u64::from(ms)).min(self.config().max_timeout),
        };
        info!(client_query_id = %query_id, researcher = %claims.sub, project = %request.project, sites = targets.len(), dataset = %plan.request.dataset, "federated query started");
        let node_query = pb::NodeQuery {
            query_id: wire_id.clone(),
            identity: Some(pb::Identity {
                researcher_token: token.to_string(),
                researcher: claims.sub.clone(),
                project: request.project.clone(),
            }),
            timeout_ms: timeout.as_millis() as u32,
            query: Some(plan.request.clone()),
            model: None,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        ctl.round(0, 0, &targets);
        let mut outcomes =
            fan_out(&self.sites_arc(), &targets, node_query, deadline, &ctl.cancel, &|o| ctl.site_done(o)).await;

        let mut merger = Merger::new(&plan);
        for o in &mut outcomes {
            if let Some(partial) = &o.partial {
                match merger.check_shape(partial) {
                    Ok(()) => merger.add(partial),
                    Err(why) => {
                        tracing::warn!(site = %o.site, %why, "malformed answer discarded");
                        o.outcome = pb::SiteOutcome::Failed;
                        o.message = format!("the site's answer was malformed and is not used: {why}");
                        o.partial = None;
                    }
                }
            }
        }
        let rules = &self.config().network;
        let suppressed = merger.apply_network_rules(rules.min_total, rules.min_sites);
        for o in &outcomes {
            if let Some(cost) = o.partial.as_ref().and_then(|p| p.cost.as_ref()) {
                self.sites().note_cost(&o.site, &request.project, cost);
            }
            // Per-site withheld counts are for operators (log, metrics), never for the researcher.
            let (groups, bins, values) =
                o.partial.as_ref().map(|p| (p.withheld_groups, p.withheld_bins, p.withheld_values)).unwrap_or_default();
            self.metrics().site_result(&o.site, site_outcome_label(o.outcome), groups + bins + values);
            info!(site = %o.site, outcome = site_outcome_label(o.outcome), withheld_groups = groups, withheld_bins = bins, withheld_values = values, "site result");
        }
        let batch = merger.finish()?;
        let mut notes = notes(&plan, &outcomes);
        notes.extend(network_notes(rules, suppressed));
        let response = pb::QueryResponse {
            query_id,
            arrow_ipc: encode_ipc(&batch)?,
            sites: outcomes.iter().map(status_of).collect(),
            notes,
        };
        if let Some(audit) = self.audit() {
            audit.answered(asked, &plan.request, &response, batch.num_rows(), &outcomes, started.elapsed()).await?;
        }
        info!(rows = batch.num_rows(), "federated query done");
        Ok(response)
    }
}

/// A researcher's request that may go ahead: its id, the sites to ask, and what the project
/// may use there.
pub(crate) struct Admitted {
    pub query_id: String,
    pub known: Vec<pb::SiteInfo>,
    pub targets: Vec<String>,
    /// The union of the targets' catalogues as the project sees them.
    pub catalogue: pb::Catalogue,
}

impl Coordinator {
    /// The checks every researcher request passes before it is planned, queries and models
    /// alike: role, project, quota, id, sites.
    pub(crate) fn admit(
        &self,
        claims: &Claims,
        project: &str,
        query_id: &str,
        sites: &[String],
    ) -> Result<Admitted, Error> {
        let admitted = self.admit_unmetered(claims, project, query_id, sites)?;
        // Charged only for a request that may go ahead.
        self.quotas().admit(&claims.sub, std::time::Instant::now())?;
        Ok(admitted)
    }

    /// Role and project: may this token ask anything of `project`?
    fn check_access(&self, claims: &Claims, project: &str) -> Result<(), Error> {
        if claims.roles.iter().any(|r| r == verbund_audit::remote::AUDITOR_ROLE) {
            return Err(Forbidden::AuditorsCannotQuery.into());
        }
        if project.is_empty() {
            return Err(Forbidden::NoProject { granted: claims.projects.clone() }.into());
        }
        if !claims.projects.iter().any(|p| p == project) {
            return Err(Forbidden::ProjectNotGranted {
                project: project.to_string(),
                granted: claims.projects.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// [`Coordinator::admit`] without charging the researcher's quota: for describing a
    /// query (its result schema) without running it.
    pub(crate) fn admit_unmetered(
        &self,
        claims: &Claims,
        project: &str,
        query_id: &str,
        sites: &[String],
    ) -> Result<Admitted, Error> {
        self.check_access(claims, project)?;
        let query_id = if query_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { query_id.to_string() };
        if !valid_query_id(&query_id) {
            return Err(Error::InvalidQueryId);
        }
        // What the project may query at each site: nothing more is planned against or shown.
        let project = project.to_string();
        let known = self.sites().list_for(&View::Projects(std::slice::from_ref(&project)));
        let targets: Vec<String> = if sites.is_empty() {
            known.iter().map(|s| s.site.clone()).collect()
        } else {
            for s in sites {
                if !known.iter().any(|k| &k.site == s) {
                    let names: Vec<&str> = known.iter().map(|k| k.site.as_str()).collect();
                    return Err(Error::UnknownSite { site: s.clone(), known: names.join(", ") });
                }
            }
            sites.to_vec()
        };
        if !known.iter().any(|k| k.connected && targets.contains(&k.site)) {
            return Err(Error::NoSites);
        }
        // Plan against what the asked sites let this project use.
        let catalogue = crate::frontend::union_catalogue(
            known.iter().filter(|k| targets.contains(&k.site)).filter_map(|k| k.catalogue.as_ref()),
        );
        if catalogue.datasets.is_empty() {
            return Err(Forbidden::NoDatasetsForProject { project }.into());
        }
        Ok(Admitted { query_id, known, targets, catalogue })
    }

    /// The schema a query's answer would have, planned as the query would be but not sent
    /// to any site and not charged to the quota (Flight SQL's prepared statements).
    pub async fn describe_query(
        &self,
        request: &pb::ResearchQuery,
        claims: &Claims,
    ) -> Result<datafusion::arrow::datatypes::SchemaRef, Error> {
        let Admitted { catalogue, .. } =
            self.admit_unmetered(claims, &request.project, &request.query_id, &request.sites)?;
        Ok(self.plan(request, &catalogue).await?.schema)
    }

    /// The typed request for a researcher's query: SQL, a cohort (typed or as CCDL), or both
    /// (the cohort is then the SQL query's population).
    pub(crate) async fn plan(
        &self,
        request: &pb::ResearchQuery,
        catalogue: &pb::Catalogue,
    ) -> Result<crate::frontend::FederatedPlan, Error> {
        let cohort = crate::feasibility::cohort_of(request.cohort.as_ref(), &request.ccdl)?;
        let sql = match (&cohort, request.sql.trim()) {
            (Some(_), "") => crate::feasibility::count_sql(catalogue)?,
            (_, sql) => sql.to_string(),
        };
        let mut plan = self.planner.plan(&sql, catalogue).await.map_err(Error::Query)?;
        if let Some(cohort) = cohort {
            plan.request.cohort = Some(cohort);
            // The same check every site runs, for an early and precise error.
            verbund_query::validate::check(&plan.request, catalogue)
                .map_err(|e| Error::Query(crate::frontend::Unsupported::Invalid(e)))?;
        }
        Ok(plan)
    }
}

/// A query's state as researchers read it (CLI, web page).
pub fn state_name(state: pb::QueryState) -> &'static str {
    match state {
        pb::QueryState::Queued => "queued",
        pb::QueryState::Running => "running",
        pb::QueryState::Done => "done",
        pb::QueryState::Failed => "failed",
        pb::QueryState::Cancelled => "cancelled",
        pb::QueryState::Unspecified => "unknown",
    }
}

/// A site's outcome in words, as the CLI and Flight SQL's `verbund.sites` show it.
pub fn outcome_name(o: pb::SiteOutcome) -> &'static str {
    match o {
        pb::SiteOutcome::Answered => "answered",
        pb::SiteOutcome::Refused => "refused",
        pb::SiteOutcome::TimedOut => "timed out",
        pb::SiteOutcome::Cancelled => "cancelled",
        pb::SiteOutcome::NotConnected => "not connected",
        pb::SiteOutcome::Disconnected => "disconnected",
        pb::SiteOutcome::Failed => "failed",
        pb::SiteOutcome::Unspecified => "unknown",
    }
}

/// The label of a site's outcome in metrics, logs and reports.
pub fn site_outcome_label(o: pb::SiteOutcome) -> &'static str {
    match o {
        pb::SiteOutcome::Answered => "answered",
        pb::SiteOutcome::Refused => "refused",
        pb::SiteOutcome::TimedOut => "timed_out",
        pb::SiteOutcome::Cancelled => "cancelled",
        pb::SiteOutcome::NotConnected => "not_connected",
        pb::SiteOutcome::Disconnected => "disconnected",
        pb::SiteOutcome::Failed | pb::SiteOutcome::Unspecified => "failed",
    }
}

pub(crate) fn status_of(o: &SiteOutcome) -> pb::SiteStatus {
    let p = o.partial.as_ref();
    pb::SiteStatus {
        site: o.site.clone(),
        outcome: o.outcome as i32,
        message: o.message.clone(),
        groups: p.map(|p| p.groups.len() as u32).unwrap_or(0),
        elapsed_ms: o.elapsed_ms,
        profile: p.map(|p| p.profile.clone()).unwrap_or_default(),
        cost: p.and_then(|p| p.cost),
    }
}

fn notes(plan: &crate::frontend::FederatedPlan, outcomes: &[SiteOutcome]) -> Vec<String> {
    let mut notes = Vec::new();
    let answered = outcomes.iter().filter(|o| o.outcome == pb::SiteOutcome::Answered).count();
    if answered < outcomes.len() {
        notes.push(format!(
            "partial answer: {answered} of {} sites answered; the numbers cover only those sites",
            outcomes.len()
        ));
    }
    if plan.request.aggregates.iter().any(|a| a.kind() == pb::AggregateKind::CountPatients) {
        notes.push(
            "distinct patient counts are summed over sites: a patient treated at two sites counts once at each \
             (there is no cross-site record linkage yet); a row without a patient key counts as a patient of its own"
                .into(),
        );
    }
    // What the researcher learns of suppression must not depend on whether a cell was empty
    // or small: the cell-size note is the same for every answer, and the counts below only
    // cover cells and values that are withheld when empty too (histogram bins, values of
    // released groups). Withheld groups are not counted: an empty group is never seen.
    let answered: Vec<&pb::PartialResult> = outcomes.iter().filter_map(|o| o.partial.as_ref()).collect();
    let ks = answered.iter().map(|p| p.min_cell_size);
    if let (Some(low), Some(high)) = (ks.clone().min(), ks.max()) {
        let k = if low == high { format!("{low}") } else { format!("{low} to {high}, depending on the site") };
        notes.push(format!(
            "each site withholds every group, histogram bin and value with fewer than k = {k} patients behind it, \
             empty ones included; a group missing from the table had fewer than k patients at every site that \
             answered, and merged numbers include only what the sites released"
        ));
    }
    notes.extend(profile_notes(outcomes));
    let bins: u32 = answered.iter().map(|p| p.withheld_bins).sum();
    let values: u32 = answered.iter().map(|p| p.withheld_values).sum();
    let plural = |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let withheld_parts: Vec<String> = [(values, "value", "values"), (bins, "histogram bin", "histogram bins")]
        .into_iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| plural(n, one, many))
        .collect();
    if !withheld_parts.is_empty() {
        notes.push(format!(
            "{} withheld at sites in the groups shown (counted over all sites); a value or bin that no site \
             released is NULL",
            withheld_parts.join(" and ")
        ));
    }
    notes
}

/// What the network's own rules left out.
fn network_notes(rules: &crate::config::NetworkRules, suppressed: crate::merge::NetworkSuppression) -> Vec<String> {
    let mut notes = Vec::new();
    if suppressed.groups > 0 {
        notes.push(format!(
            "{} group(s) left out: fewer than {} sites released numbers for them (this network's minimum)",
            suppressed.groups, rules.min_sites
        ));
    }
    if suppressed.values > 0 {
        notes.push(format!(
            "{} number(s) below threshold: fewer than {} values behind them across the network, shown as NULL",
            suppressed.values, rules.min_total
        ));
    }
    notes
}

/// How each answering site protected its numbers, said plainly: noise and what it cost, exact
/// numbers, or raw numbers.
pub(crate) fn profile_notes(outcomes: &[SiteOutcome]) -> Vec<String> {
    let mut notes = Vec::new();
    let by_profile = |profile: &str| -> Vec<&str> {
        outcomes
            .iter()
            .filter(|o| o.partial.as_ref().is_some_and(|p| p.profile == profile))
            .map(|o| o.site.as_str())
            .collect()
    };
    let private: Vec<&SiteOutcome> = outcomes
        .iter()
        .filter(|o| o.partial.as_ref().is_some_and(|p| p.profile == "dp" || p.profile == "feasibility"))
        .collect();
    if !private.is_empty() {
        let costs: Vec<String> = private
            .iter()
            .filter_map(|o| {
                let c = o.partial.as_ref()?.cost?;
                let spent =
                    if c.repeat { "asked before, no new cost".to_string() } else { format!("spent ε {}", c.epsilon) };
                Some(format!("{}: {spent}, ε {} left", o.site, c.epsilon_left))
            })
            .collect();
        notes.push(format!(
            "numbers carry differential-privacy noise added at each site (counts can be off by a few, means \
             and sums by more in small groups); asking the same question again returns the same numbers at no \
             cost. Privacy budget: {}",
            costs.join("; ")
        ));
    }
    let exact = by_profile("k-only");
    if !exact.is_empty() {
        notes.push(format!(
            "{} released exact numbers (profile k-only: cell-size floors without noise)",
            exact.join(", ")
        ));
    }
    let raw = by_profile("test-only-raw");
    if !raw.is_empty() {
        notes.push(format!(
            "WARNING: {} released RAW, UNPROTECTED numbers (profile test-only-raw, for synthetic test data only)",
            raw.join(", ")
        ));
    }
    notes
}

/// The one record batch of an answer's Arrow IPC stream (merged answers are one batch).
pub(crate) fn decode_ipc(ipc: &[u8]) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    datafusion::arrow::compute::concat_batches(&schema, &batches)
}

pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    let encode = |e: datafusion::arrow::error::ArrowError| Error::Merge(crate::merge::MergeError::Encode(e));
    let mut writer = StreamWriter::try_new(&mut buf, &batch.schema()).map_err(encode)?;
    writer.write(batch).map_err(encode)?;
    writer.finish().map_err(encode)?;
    drop(writer);
    Ok(buf)
}

/// A researcher's request that runs at the sites: a query or a model fit.
pub(crate) trait ResearchRequest {
    fn asking(&self) -> crate::audit::Asking<'_>;
}

impl ResearchRequest for pb::ResearchQuery {
    fn asking(&self) -> crate::audit::Asking<'_> {
        crate::audit::Asking::Query(self)
    }
}

impl ResearchRequest for pb::ResearchModel {
    fn asking(&self) -> crate::audit::Asking<'_> {
        crate::audit::Asking::Model(self)
    }
}

impl ResearchRequest for pb::SubmitRequest {
    fn asking(&self) -> crate::audit::Asking<'_> {
        static NOTHING: std::sync::LazyLock<pb::ResearchQuery> = std::sync::LazyLock::new(Default::default);
        match &self.request {
            Some(pb::submit_request::Request::Query(q)) => crate::audit::Asking::Query(q),
            Some(pb::submit_request::Request::Model(m)) => crate::audit::Asking::Model(m),
            None => crate::audit::Asking::Query(&NOTHING),
        }
    }
}

/// The `outcome` label of an answered request in the metrics.
pub(crate) trait Outcome {
    fn outcome(&self) -> &'static str;
}

pub(crate) fn per_site(sites: &[pb::SiteStatus]) -> &'static str {
    if sites.iter().all(|s| s.outcome() == pb::SiteOutcome::Answered) { "answered" } else { "partial" }
}

impl Outcome for pb::QueryResponse {
    fn outcome(&self) -> &'static str {
        per_site(&self.sites)
    }
}

impl Outcome for pb::ModelResponse {
    fn outcome(&self) -> &'static str {
        per_site(&self.sites)
    }
}

/// A submitted query's own outcome is counted when its researcher fetches it.
impl Outcome for pb::QueryStatus {
    fn outcome(&self) -> &'static str {
        "submitted"
    }
}

/// The frame of every request that runs at the sites: the token checked (a refused token is
/// audited too), no new work while draining, the running count and the outcome in the metrics.
pub(crate) async fn serve<T, R, F, Fut>(c: &Coordinator, request: Request<T>, run: F) -> Result<Response<R>, Status>
where
    T: ResearchRequest,
    R: Outcome,
    F: FnOnce(T, Claims, String) -> Fut,
    Fut: std::future::Future<Output = Result<R, Error>>,
{
    let started = std::time::Instant::now();
    let _running = c.metrics().query_started();
    let result = match authenticate(c, &request) {
        Err(e) => {
            if let Some(audit) = c.audit() {
                let wire_id = uuid::Uuid::new_v4().to_string();
                audit.refused(&Asked::of(&wire_id, request.get_ref().asking(), None), &e, started.elapsed()).await;
            }
            Err(e)
        }
        Ok(_) if c.is_draining() => Err(Error::ShuttingDown),
        Ok((claims, token)) => {
            let _tracked = c.track_query();
            run(request.into_inner(), claims, token).await
        }
    };
    let outcome = match &result {
        Ok(r) => r.outcome(),
        Err(e) => e.outcome(),
    };
    c.metrics().query_finished(outcome, started.elapsed());
    Ok(Response::new(result?))
}

#[tonic::async_trait]
impl Researcher for ResearcherService {
    async fn query(&self, request: Request<pb::ResearchQuery>) -> Result<Response<pb::QueryResponse>, Status> {
        let c = &self.coordinator;
        serve(c, request, |r, claims, token| async move { c.query(r, &claims, &token).await }).await
    }

    async fn submit(&self, request: Request<pb::SubmitRequest>) -> Result<Response<pb::QueryStatus>, Status> {
        let c = &self.coordinator;
        serve(c, request, |r, claims, token| async move {
            let work = match r.request {
                Some(pb::submit_request::Request::Query(q)) => Work::Query(q),
                Some(pb::submit_request::Request::Model(m)) => Work::Model(m),
                None => return Err(Error::BadRequest("a submission holds a query or a model".into())),
            };
            c.submit(work, &claims, &token).await
        })
        .await
    }

    async fn get_status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::QueryStatus>, Status> {
        let (claims, _) = authenticate(&self.coordinator, &request)?;
        Ok(Response::new(self.coordinator.status(&claims, request.into_inner()).await?))
    }

    async fn get_result(&self, request: Request<pb::ResultRequest>) -> Result<Response<pb::ResultResponse>, Status> {
        let (claims, _) = authenticate(&self.coordinator, &request)?;
        let r = request.into_inner();
        Ok(Response::new(self.coordinator.result(&claims, &r.owner, &r.query_id).await?))
    }

    async fn list_queries(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let (claims, _) = authenticate(&self.coordinator, &request)?;
        Ok(Response::new(self.coordinator.list_queries(&claims, request.into_inner()).await?))
    }

    async fn read_audit(&self, request: Request<pb::AuditRequest>) -> Result<Response<pb::AuditResponse>, Status> {
        let (claims, token) = authenticate(&self.coordinator, &request)?;
        Ok(Response::new(self.coordinator.read_audit(request.into_inner(), &claims, &token).await?))
    }

    async fn model(&self, request: Request<pb::ResearchModel>) -> Result<Response<pb::ModelResponse>, Status> {
        let c = &self.coordinator;
        serve(c, request, |r, claims, token| async move { c.model(r, &claims, &token).await }).await
    }

    async fn cancel(&self, request: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let (claims, _) = authenticate(&self.coordinator, &request)?;
        // A researcher's query ids are their own: only they can find (and cancel) them.
        let found = self.coordinator.cancel(&claims, &request.into_inner().query_id);
        Ok(Response::new(pb::CancelResponse { found }))
    }

    async fn list_sites(
        &self,
        request: Request<pb::ListSitesRequest>,
    ) -> Result<Response<pb::ListSitesResponse>, Status> {
        let (claims, _) = authenticate(&self.coordinator, &request)?;
        let project = request.into_inner().project;
        let asked = [project];
        // Auditors review what every project spent, as operators see it.
        let view = if claims.roles.iter().any(|r| r == OPERATOR_ROLE || r == verbund_audit::remote::AUDITOR_ROLE) {
            View::Operator
        } else if asked[0].is_empty() {
            View::Projects(&claims.projects)
        } else if claims.projects.contains(&asked[0]) {
            View::Projects(&asked)
        } else {
            let [project] = asked;
            return Err(Error::from(Forbidden::ProjectNotGranted { project, granted: claims.projects.clone() }).into());
        };
        Ok(Response::new(pb::ListSitesResponse {
            sites: self.coordinator.sites().list_for(&view),
            coordinator_certificate_not_after_unix: self.coordinator.certificate_not_after(),
        }))
    }
}
