//! Answers model requests (`NodeQuery.model`, docs/regression-plan.md §1 "Node"): the linear
//! model's sufficient statistics, or one IRLS round of a GLM, over the model's rows at this
//! site. The design is built once per model and data version (`design.rs`) and cached between
//! the rounds of a fit (`cache.rs`), which also keeps each fit's rounds in order (rule R8).
//! Every part leaves through `verbund_policies::release_model`, whole, or not at all.

pub(crate) mod cache;
mod design;

use crate::consent::Population;
use crate::engine::{Engine, in_population};
use crate::private::{cost_of, unix_seconds};
use crate::refusal::Refusal;
use cache::DesignKey;
use design::Built;
use prost::Message;
use std::sync::Arc;
use verbund_policies::model::{
    CandidateModel, CandidateNumbers, RoundFacts, check_model_facts, check_model_profile, check_model_sites,
};
use verbund_policies::model_private::{
    CovariateShape, ModelRound, ModelShape, canonical_model_request, model_seed, release_private_model,
};
use verbund_policies::{Access, ModelRefusal, Profile, release_model};
use verbund_proto::v1 as pb;
use verbund_query::model::{CheckedCovariate, CheckedModel, check_model, family_name};
use verbund_query::validate::CheckedQuery;
use verbund_regression::{DesignError, Family};

/// What is wrong with a model request at this site, worded without any data value or count.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("the request carries neither an aggregate query nor a model request: set exactly one")]
    Neither,
    #[error("the request carries both an aggregate query and a model request: set exactly one")]
    Both,
    #[error("the model request carries no model")]
    NoModel,
    #[error("the model request names no fit id: every round of a fit carries the coordinator's id of the fit")]
    NoFitId,
    #[error(transparent)]
    Check(#[from] verbund_query::model::InvalidModel),
    #[error("the model request names no step: sufficient (a linear model) or contribution (a GLM round)")]
    NoStep,
    #[error(
        "a {family} model has no sufficient statistics: its rounds are asked with step contribution (step sufficient is for linear models)"
    )]
    StepFamily { family: &'static str },
    #[error(
        "this site releases numbers with differential privacy: a linear model is answered once, with step sufficient (noisy sufficient statistics), not in contribution rounds"
    )]
    StepUnderDp,
    #[error("step sufficient has one round (0), not round {round}")]
    SufficientRound { round: u32 },
    #[error("round 0 is evaluated at the start values and takes no coefficients ({got} were sent)")]
    StartWithBeta { got: usize },
    #[error("round {round} needs one coefficient per design column ({expected}), got {got}")]
    BetaCount { round: u32, got: usize, expected: usize },
    #[error("round {round} has a coefficient that is not a finite number")]
    BetaNotFinite { round: u32 },
    #[error("fit id '{fit_id}' was used for another model or project; each fit needs an id of its own")]
    OtherModel { fit_id: String },
    #[error(
        "categorical covariate '{column}' has a value at this site that is not one of the levels given [{levels}]; list every level the column takes"
    )]
    UnknownLevel { column: String, levels: String },
    #[error("{what} has an infinite value at this site; only finite numbers or missing values can be modelled")]
    Infinite { what: String },
    #[error(
        "the outcome '{column}' does not fit the {family} family at this site: it {rule} for every complete case; choose another family or outcome"
    )]
    Outcome { column: String, family: &'static str, rule: &'static str },
    #[error(
        "some patient has more than one row among the model's rows in dataset '{dataset}' at this site; a model needs one row per patient (filter to one row each, or use a dataset with one row per patient)"
    )]
    RowsPerPatient { dataset: String },
}

/// A model round admitted: what it reads, and the key of its design.
struct Admitted {
    population: Population,
    rows: CheckedQuery,
    key: DesignKey,
}

/// Exactly one of `query` and `model` is set.
pub(crate) fn one_request(q: &pb::NodeQuery) -> Result<(), ModelError> {
    match (&q.query, &q.model) {
        (Some(_), Some(_)) => Err(ModelError::Both),
        (None, None) => Err(ModelError::Neither),
        _ => Ok(()),
    }
}

fn family_of(family: pb::ModelFamily) -> Family {
    match family {
        pb::ModelFamily::Binomial => Family::Binomial,
        pb::ModelFamily::Poisson => Family::Poisson,
        // check_model refuses an unspecified family.
        pb::ModelFamily::Gaussian | pb::ModelFamily::Unspecified => Family::Gaussian,
    }
}

/// Maps the crate's design errors to refusals that name columns and rules, never the value or
/// the count the crate puts in its message for an analyst at their own data.
fn design_refusal(e: DesignError, m: &CheckedModel, floor: u64) -> Refusal {
    match e {
        DesignError::UnknownLevel { name, levels, .. } => ModelError::UnknownLevel { column: name, levels }.into(),
        DesignError::Infinite { what } => ModelError::Infinite { what }.into(),
        DesignError::NoCompleteRows { .. } => ModelRefusal::TooFewRows { min: floor }.into(),
        DesignError::InvalidOutcome { family, .. } => {
            let rule = match family {
                Family::Binomial => "must be 0 or 1 (or a boolean)",
                _ => "must be a non-negative whole number (a count)",
            };
            ModelError::Outcome { column: m.outcome.clone(), family: family_name(m.family), rule }.into()
        }
        other => Refusal::internal(format!("building a model's design: {other}")),
    }
}

/// The request's step, round and coefficients are of the right form for the model.
fn check_round_form(request: &pb::ModelRequest, m: &CheckedModel) -> Result<pb::ModelStep, ModelError> {
    if request.fit_id.is_empty() {
        return Err(ModelError::NoFitId);
    }
    let step = match pb::ModelStep::try_from(request.step) {
        Ok(pb::ModelStep::Unspecified) | Err(_) => return Err(ModelError::NoStep),
        Ok(step) => step,
    };
    let round = request.round;
    if step == pb::ModelStep::Sufficient {
        if m.family != pb::ModelFamily::Gaussian {
            return Err(ModelError::StepFamily { family: family_name(m.family) });
        }
        if round != 0 {
            return Err(ModelError::SufficientRound { round });
        }
    }
    if round == 0 {
        if !request.beta.is_empty() {
            return Err(ModelError::StartWithBeta { got: request.beta.len() });
        }
    } else if request.beta.len() != m.p() {
        return Err(ModelError::BetaCount { round, got: request.beta.len(), expected: m.p() });
    } else if request.beta.iter().any(|b| !b.is_finite()) {
        return Err(ModelError::BetaNotFinite { round });
    }
    Ok(step)
}

/// The model as the dp plan sees it: which columns are numeric (and integer), which categorical.
fn model_shape(m: &CheckedModel) -> ModelShape<'_> {
    let covariates = m
        .covariates
        .iter()
        .map(|c| match c {
            CheckedCovariate::Numeric { column, column_type } => {
                CovariateShape::Numeric { column, integer: *column_type == pb::ColumnType::Int64 }
            }
            CheckedCovariate::Categorical { column, texts, .. } => {
                CovariateShape::Categorical { column, levels: texts }
            }
        })
        .collect();
    ModelShape {
        dataset: &m.dataset,
        family: m.family,
        outcome: &m.outcome,
        outcome_integer: m.outcome_type == pb::ColumnType::Int64,
        covariates,
    }
}

impl Engine {
    /// The model's design from the cache, or built (inside the request's population scope) and
    /// kept.
    async fn cached_design(
        &self,
        checked: &CheckedModel,
        rows: &CheckedQuery,
        key: DesignKey,
        population: Population,
    ) -> Result<Arc<Built>, Refusal> {
        let policy = self.policy();
        let settings = &policy.regression;
        let idle = std::time::Duration::from_secs(settings.cache_seconds);
        if let Some(built) = self.models.design(&key, idle) {
            return Ok(built);
        }
        let floor = settings.min_rows_per_site.max(u64::from(policy.min_cell_size));
        let built = in_population(population, self.build_design(checked, rows))
            .await?
            .map_err(|e| design_refusal(e, checked, floor))?;
        let built = Arc::new(built);
        let limit = usize::try_from(settings.max_cached_designs_mb).unwrap_or(usize::MAX) * 1024 * 1024;
        self.models.keep(key, built.clone(), limit, idle);
        Ok(built)
    }

    /// The round's population (consent on the day), rows and design key, and the round
    /// admitted by the fit's state (rule R8): the same for every profile.
    async fn admit_round(
        &self,
        request: &pb::ModelRequest,
        model: &pb::ModelQuery,
        checked: &CheckedModel,
        access: &Access<'_>,
    ) -> Result<Admitted, Refusal> {
        let day = (unix_seconds(std::time::SystemTime::now()) / 86_400) as i32;
        let population = self.population(access.project, day).await?;
        let rows = design::rows_query(checked);
        let key = DesignKey {
            project: access.project.to_string(),
            model: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &model.encode_to_vec()).as_ref().to_vec(),
            version: self.data_version(&rows, &population),
        };
        let settings = &self.policy().regression;
        let idle = std::time::Duration::from_secs(settings.cache_seconds);
        self.models.admit_round(&key, request, settings.max_rounds, idle)?;
        Ok(Admitted { population, rows, key })
    }

    /// A linear model under dp (docs/regression-plan.md §4): planned (bounds) and R9 checked
    /// before anything runs, the round admitted (R8), the budget debited once per model and data
    /// version (a repeat costs nothing and gets the same numbers), then the noisy Z'Z as the
    /// policy's checker releases it.
    async fn answer_private_model(
        &self,
        request: &pb::ModelRequest,
        model: &pb::ModelQuery,
        checked: &CheckedModel,
        access: &Access<'_>,
    ) -> Result<pb::PartialResult, Refusal> {
        let policy = self.policy();
        check_model_sites(policy, request.sites)?;
        let plan = policy.plan_private_model(&model_shape(checked))?;
        let privacy = self.privacy().ok_or(Refusal::PrivacyUnconfigured)?;
        let _permit = self.slot().await?;

        // R8 before anything is charged or computed.
        let Admitted { population, rows, key } = self.admit_round(request, model, checked, access).await?;
        let encoded = canonical_model_request(request).encode_to_vec();
        let seed = model_seed(policy, &privacy.key, &encoded, &checked.dataset, &key.version);
        // Charged before a row is read: every outcome from here on (a part, or a refusal on a
        // true or a noisy floor) is paid for, so none of them tells more than the noise allows.
        let (cost, debit) = self.debit(privacy, access.project, &seed, &plan.charge()).await?;
        let built = self.cached_design(checked, &rows, key, population).await?;

        let round = ModelRound { attempt: request.attempt, round: request.round, sites: request.sites };
        let policy_owned = policy.clone();
        let work = built.clone();
        let part = tokio::task::spawn_blocking(move || {
            release_private_model(&policy_owned, &plan, &seed, &work.facts, &work.design, round)
        })
        .await
        .map_err(Refusal::internal)??;
        let mut out = verbund_policies::empty_result(policy);
        out.model = Some(part);
        out.cost = Some(cost_of(cost, &debit));
        Ok(out)
    }

    /// Model designs cached now (for tests and operators: a replaced catalogue empties it).
    pub fn cached_model_designs(&self) -> usize {
        self.models.designs()
    }

    /// Answers one round of a model for a researcher whose token was verified: the part as the
    /// policy's one checker released it, in `PartialResult.model`, or why not. Dropping the
    /// returned future stops the work (a round already in `spawn_blocking` finishes unseen).
    pub async fn answer_model(
        &self,
        request: &pb::ModelRequest,
        access: &Access<'_>,
    ) -> Result<pb::PartialResult, Refusal> {
        let _same_data = self.same_data().await;
        let data = self.data();
        let policy = self.policy();
        let model = request.model.as_ref().ok_or(ModelError::NoModel)?;
        let checked =
            check_model(model, data.catalogue(), policy.regression.max_columns as usize).map_err(ModelError::from)?;
        policy.authorize(access, &checked.dataset, &checked.columns())?;
        if let Some(cohort) = &checked.cohort {
            for (dataset, columns) in cohort.columns() {
                policy.authorize(access, dataset, &columns.into_iter().collect::<Vec<_>>())?;
            }
        }
        // Before any row is read: what the profile answers at all (under dp linear models
        // only: a GLM is refused here, at no cost).
        check_model_profile(policy, checked.family)?;
        let step = check_round_form(request, &checked)?;
        if policy.profile == Profile::Dp {
            if step != pb::ModelStep::Sufficient {
                return Err(ModelError::StepUnderDp.into());
            }
            return self.answer_private_model(request, model, &checked, access).await;
        }
        let _permit = self.slot().await?;

        // R8 before anything is computed: a refused round costs nothing and reveals nothing.
        let Admitted { population, rows, key } = self.admit_round(request, model, &checked, access).await?;
        let settings = &policy.regression;

        let floor = settings.min_rows_per_site.max(u64::from(policy.min_cell_size));
        let built = self.cached_design(&checked, &rows, key, population).await?;
        // R1–R6 and R9 before a round is computed; release_model checks them again.
        check_model_facts(policy, &built.facts, request.sites)?;

        let family = family_of(checked.family);
        let beta = (request.round > 0).then(|| request.beta.clone());
        let work = built.clone();
        let computed = tokio::task::spawn_blocking(move || match step {
            pb::ModelStep::Sufficient => Ok(CandidateNumbers::Sufficient(work.design.sufficient())),
            _ => work.design.contribution(family, beta.as_deref()).map(CandidateNumbers::Contribution),
        })
        .await
        .map_err(Refusal::internal)?
        .map_err(|e| design_refusal(e, &checked, floor))?;
        let round = match &computed {
            CandidateNumbers::Contribution(c) => Some(RoundFacts::of(c)),
            _ => None,
        };
        let candidate =
            CandidateModel { attempt: request.attempt, round: request.round, sites: request.sites, numbers: computed };
        let part = release_model(policy, &built.facts, round.as_ref(), candidate)?;
        if policy.profile == Profile::TestOnlyRaw {
            tracing::warn!(
                "released a RAW, UNPROTECTED model part (policy profile test-only-raw: for synthetic test data only)"
            );
        }
        let mut out = verbund_policies::empty_result(policy);
        out.model = Some(part);
        Ok(out)
    }
}
