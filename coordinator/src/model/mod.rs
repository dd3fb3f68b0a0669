//! Model fits across the sites (docs/regression-plan.md §1 "Coordinator"): the researcher's
//! request is admitted as a query is (`Coordinator::admit`), planned into the model the sites
//! are asked (`plan.rs`), driven round by round (`drive.rs`) over the existing link, each
//! site's part checked (`parts.rs`) and summed, and fitted by `verbund-regression`. Every round
//! is audited under its own id, the id the sites record it under.

mod drive;
mod parts;
mod plan;

use crate::api::{Admitted, profile_notes, status_of};
use crate::audit::Asked;
use crate::config::OnRefusal;
use crate::queries::Ctl;
use crate::{Coordinator, RequestError as Error};
use drive::{Drive, Fitted, LeftOut, describe};
use std::time::Duration;
use tracing::info;
use verbund_proto::v1 as pb;
use verbund_query::model::family_name;
use verbund_regression::FitError;
use verbund_security::token::Claims;

/// Why a model could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Invalid(#[from] verbund_query::model::InvalidModel),
    #[error("covariate '{column}': {problem}")]
    Term { column: String, problem: String },
    #[error("the levels of '{column}' could not be found at the sites: {why}")]
    Levels { column: String, why: String },
    #[error("no site asked fits {family} models: {why}")]
    NoSiteFits { family: &'static str, why: String },
    #[error("the fit needs parts from at least {need} site(s), and {have} can take part; left out: {left_out}")]
    TooFewSites { have: usize, need: u32, left_out: String },
    #[error(
        "site {site} did not take part ({outcome}: {message}); this network or a site asked fits a model only \
         when every site asked takes part (on_refusal = \"refuse\"), so nothing was fitted"
    )]
    SiteLost { site: String, outcome: &'static str, message: String },
    #[error("sites were lost in {restarts} restarts of the fit, which is the most allowed; left out: {left_out}")]
    TooManyRestarts { restarts: u32, left_out: String },
    #[error("fewer than {min} complete cases across the sites (this network's minimum); nothing was fitted")]
    TooFewRows { min: u64 },
    #[error("{0}")]
    Fit(FitError),
    #[error(
        "the noisy statistics do not determine a fit (too few rows for this many covariates at this privacy \
         budget per model); use fewer covariates or a larger population"
    )]
    NoisyUndetermined,
    #[error("the fit did not finish before its deadline; raise the timeout (timeout_ms) or ask fewer sites")]
    TimedOut,
    #[error("the fit was cancelled by the researcher")]
    Cancelled,
}

impl ModelError {
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ModelError::Invalid(_) | ModelError::Term { .. } => Code::InvalidArgument,
            ModelError::Cancelled => Code::Cancelled,
            ModelError::TimedOut => Code::DeadlineExceeded,
            ModelError::Levels { .. } | ModelError::TooManyRestarts { .. } => Code::Unavailable,
            _ => Code::FailedPrecondition,
        }
    }

    pub fn outcome(&self) -> &'static str {
        match self {
            ModelError::Invalid(_) | ModelError::Term { .. } => "rejected",
            ModelError::Cancelled => "cancelled",
            ModelError::NoSiteFits { .. } | ModelError::SiteLost { .. } | ModelError::TooFewSites { .. } => {
                "site_refused"
            }
            ModelError::TooFewRows { .. } => "withheld",
            _ => "failed",
        }
    }
}

impl Coordinator {
    /// Fits one admitted model under `wire_id` (the fit's id at the sites); a failure is
    /// audited as refused. The quota was charged at admission.
    pub(crate) async fn run_fit(
        &self,
        request: &pb::ResearchModel,
        wire_id: &str,
        claims: &Claims,
        token: &str,
        ctl: &Ctl,
    ) -> Result<pb::ModelResponse, Error> {
        let started = std::time::Instant::now();
        let asked = Asked::for_model(wire_id, request, Some(claims));
        let result = self.run_model(request, &asked, claims, token, ctl, started).await;
        if let (Err(error), Some(audit)) = (&result, self.audit()) {
            audit.refused(&asked, error, started.elapsed()).await;
        }
        result
    }

    async fn run_model(
        &self,
        request: &pb::ResearchModel,
        asked: &Asked<'_>,
        claims: &Claims,
        token: &str,
        ctl: &Ctl,
        started: std::time::Instant,
    ) -> Result<pb::ModelResponse, Error> {
        let admitted = self.admit_unmetered(claims, &request.project, &request.query_id, &request.sites)?;
        // Before any levels are looked for (a query that costs): some site must fit the family.
        let asked_family = pb::ModelFamily::try_from(request.family).unwrap_or_default();
        if asked_family != pb::ModelFamily::Unspecified {
            let (members, left_out) = self.members(&admitted, asked_family);
            if members.is_empty() {
                let family = family_name(asked_family);
                return Err(ModelError::NoSiteFits { family, why: describe(&left_out) }.into());
            }
        }
        let planned = self.plan_model(request, &admitted, claims, token, &ctl.cancel).await?;
        if let Some(audit) = self.audit() {
            audit.received(asked, &planned.query).await?;
        }
        let settings = &self.config().regression;
        let family = planned.checked.family;
        let (members, left_out) = self.members(&admitted, family);
        let refuse =
            settings.on_refusal == OnRefusal::Refuse || members.iter().any(|(_, r)| r.refuse_if_any_site_refuses);
        if members.is_empty() {
            return Err(ModelError::NoSiteFits { family: family_name(family), why: describe(&left_out) }.into());
        }
        if refuse && let Some(l) = left_out.iter().find(|l| l.refused) {
            let o = &l.outcome;
            let outcome = crate::api::site_outcome_label(o.outcome);
            return Err(ModelError::SiteLost { site: o.site.clone(), outcome, message: o.message.clone() }.into());
        }
        let min_sites = members.iter().map(|(_, r)| r.min_sites).chain([settings.min_sites]).max().unwrap_or(1);

        let timeout = match request.timeout_ms {
            0 => settings.default_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        }
        .min(self.config().max_timeout);
        info!(client_query_id = %admitted.query_id, researcher = %claims.sub, project = %request.project,
              sites = members.len(), family = family_name(family), "model fit started");

        let mut drive = Drive {
            coordinator: self,
            asked,
            planned: &planned,
            identity: pb::Identity {
                researcher_token: token.to_string(),
                researcher: claims.sub.clone(),
                project: request.project.clone(),
            },
            fit_id: asked.wire_id.to_string(),
            ctl,
            deadline: tokio::time::Instant::now() + timeout,
            round_timeout: settings.round_timeout,
            members: members.into_iter().map(|(site, _)| site).collect(),
            min_sites,
            refuse,
            max_restarts: settings.max_restarts,
            max_iterations: if request.max_iterations == 0 { 25 } else { request.max_iterations },
            attempt: 0,
            rounds: 0,
            left_out,
            last: Vec::new(),
            spent: Default::default(),
        };
        let fitted = drive.run().await?;
        let (summary, fit_json, rows) = match &fitted {
            Fitted::Linear(f) => (f.to_string(), serde_json::to_string(f), f.coefficients.len()),
            Fitted::Glm(f) => (f.to_string(), serde_json::to_string(f), f.coefficients.len()),
        };
        let fit_json = fit_json.map_err(|e| ModelError::Fit(FitError::Mismatch(format!("encoding the fit: {e}"))))?;
        // What each site's answers cost over the whole fit, not only its last round.
        for o in &mut drive.last {
            if let (Some(p), Some(total)) = (o.partial.as_mut(), drive.spent.get(&o.site)) {
                p.cost = Some(*total);
            }
        }
        let mut notes = planned.notes.clone();
        notes.extend(fit_notes(&drive));
        notes.extend(profile_notes(&drive.last));
        let mut sites: Vec<pb::SiteStatus> = drive.last.iter().map(status_of).collect();
        sites.extend(
            drive
                .left_out
                .iter()
                .map(|l| pb::SiteStatus { cost: drive.spent.get(&l.outcome.site).copied(), ..status_of(&l.outcome) }),
        );
        sites.sort_by(|a, b| a.site.cmp(&b.site));
        let response = pb::ModelResponse {
            query_id: admitted.query_id,
            summary,
            fit_json,
            sites,
            notes,
            rounds: drive.rounds,
            attempts: drive.attempt + 1,
        };
        if let Some(audit) = self.audit() {
            // The sites' releases are on record under the rounds' ids (`round_answered`).
            audit.answered(asked, &planned.query, &response, rows, &[], started.elapsed()).await?;
        }
        info!(rounds = drive.rounds, attempts = drive.attempt + 1, "model fit done");
        Ok(response)
    }

    /// The target sites that can take part in a fit of `family`, with their rules, and those
    /// that cannot, with why.
    fn members(&self, admitted: &Admitted, family: pb::ModelFamily) -> (Vec<(String, pb::ModelRules)>, Vec<LeftOut>) {
        let started = std::time::Instant::now();
        let (mut members, mut left_out) = (Vec::new(), Vec::new());
        for site in &admitted.targets {
            let info = admitted.known.iter().find(|k| &k.site == site);
            let rules = self.sites().model_rules(site);
            let (outcome, message, refused) = match (info.is_some_and(|i| i.connected), rules) {
                (false, _) => (pb::SiteOutcome::NotConnected, "the site is not connected".to_string(), false),
                (true, None) => (pb::SiteOutcome::Refused, "the site's node fits no models (update it)".into(), true),
                (true, Some(r)) if !r.families.contains(&(family as i32)) => {
                    let profile = info.map(|i| i.profile.as_str()).unwrap_or_default();
                    let why = format!("the site does not fit {} models (profile {profile})", family_name(family));
                    (pb::SiteOutcome::Refused, why, true)
                }
                (true, Some(r)) => {
                    members.push((site.clone(), r));
                    continue;
                }
            };
            let outcome = crate::fanout::SiteOutcome {
                site: site.clone(),
                outcome,
                message,
                partial: None,
                elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            };
            left_out.push(LeftOut { outcome, refused });
        }
        (members, left_out)
    }
}

/// What the researcher must know of how the fit ran.
fn fit_notes(drive: &Drive<'_>) -> Vec<String> {
    let mut notes = Vec::new();
    let asked = drive.members.len() + drive.left_out.len();
    if !drive.left_out.is_empty() {
        notes.push(format!(
            "fitted on {} of {asked} sites; left out: {}",
            drive.members.len(),
            describe(&drive.left_out)
        ));
    }
    if drive.attempt > 0 {
        notes.push(format!(
            "the fit restarted {} time(s) from its first round without the sites lost; the numbers are those of \
             the last attempt only",
            drive.attempt
        ));
    }
    notes.push(
        "complete cases only: rows with a missing outcome or covariate are dropped at each site; one row per patient"
            .into(),
    );
    if drive.noisy() {
        notes.push(
            "differentially private sites released their statistics with noise, once per model: values are clipped \
             to the bounds each site declares, n and 'dropped' include noise or are not released, and the standard \
             errors do not include the privacy noise"
                .into(),
        );
    }
    notes
}
