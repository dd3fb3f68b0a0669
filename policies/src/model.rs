//! Disclosure control for models (docs/regression-plan.md §3): the `[regression]` section, the
//! facts a site knows about a model's design ([`ModelFacts`]) and round ([`RoundFacts`]), and
//! the one checker, [`release_model`], that turns a computed part into the `pb::ModelPart` that
//! may leave the node, whole, or into a [`ModelRefusal`], whole. No other code builds a
//! `ModelPart` (`tests/one_checker.rs`), so no path releases half a part (DataSHIELD's GLM bug:
//! a failed check blanked the information matrix while the score still went out).
//!
//! v1 models need one row per patient, so rows are patients in every rule below. R8 (rounds in
//! order, one β per round) is per-fit state and is the node's.

use crate::{Policy, Profile};
use serde::{Deserialize, Serialize};
use verbund_proto::v1 as pb;
use verbund_regression::{Contribution, Sufficient, WeightSupport};

/// What a site does when another site of the same fit refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnRefusal {
    /// The others' parts may be fitted without the refusing site.
    #[default]
    FitWithout,
    /// This site's parts may only be used if no other site refused.
    Refuse,
}

/// `[regression]`: the rules for models at this site.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegressionSettings {
    /// Complete cases (patients) a model needs at this site: at least this and min_cell_size.
    pub min_rows_per_site: u64,
    /// Largest p / n, p the design columns (intercept and dummies included): a saturated
    /// design solves for single rows (DataSHIELD's nfilter.glm).
    pub max_parameters_per_row: f64,
    /// Parts of this site are only summed with at least this many sites' parts.
    pub min_sites: u32,
    pub on_refusal: OnRefusal,
    /// Largest number of design columns (p).
    pub max_columns: u32,
    /// Rounds per fit and attempt: R's start plus 25 iterations.
    pub max_rounds: u32,
    /// What one linear model costs under dp (δ is dp.delta_per_query).
    pub epsilon_per_model: f64,
    /// How long an idle design stays cached between the rounds of a fit.
    pub cache_seconds: u64,
    /// Memory the cached designs may take together.
    pub max_cached_designs_mb: u32,
}

impl Default for RegressionSettings {
    fn default() -> Self {
        Self {
            min_rows_per_site: 10,
            max_parameters_per_row: 0.33,
            min_sites: 1,
            on_refusal: OnRefusal::FitWithout,
            max_columns: 64,
            max_rounds: 26,
            epsilon_per_model: 1.0,
            cache_seconds: 120,
            max_cached_designs_mb: 256,
        }
    }
}

impl RegressionSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let r = self;
        if r.min_rows_per_site == 0 || r.min_sites == 0 || r.max_columns == 0 || r.max_rounds == 0 {
            return Err("regression.min_rows_per_site, min_sites, max_columns and max_rounds must be at least 1".into());
        }
        if !(r.max_parameters_per_row > 0.0 && r.max_parameters_per_row <= 1.0) {
            return Err("regression.max_parameters_per_row must be above 0 and at most 1".into());
        }
        if !(r.epsilon_per_model.is_finite() && r.epsilon_per_model >= 1e-6) {
            return Err("regression.epsilon_per_model must be a positive number (at least 0.000001)".into());
        }
        Ok(())
    }
}

/// The outcome and one covariate's level as a model's rules see them, computed once per design.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelFacts {
    pub level: String,
    pub patients: u64,
    /// Binomial: patients with the outcome 1.
    pub events: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CategoricalFacts {
    pub column: String,
    /// Every level, the reference first.
    pub levels: Vec<LevelFacts>,
}

/// Patients per pair of levels of two categorical covariates, row-major over (first, second).
#[derive(Debug, Clone, PartialEq)]
pub struct CrossingFacts {
    pub first: usize,
    pub second: usize,
    pub patients: Vec<u64>,
}

/// What the rules R1–R6 need to know about a site's design: counts that stay at the site.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    pub family: pb::ModelFamily,
    /// Complete cases (= patients).
    pub n: u64,
    /// The design columns, as R names them; p is their number.
    pub columns: Vec<String>,
    /// Binomial: patients with the outcome 1.
    pub events: u64,
    /// Patients whose outcome is not its most common value.
    pub outcome_off_mode: u64,
    /// Per numeric covariate, patients whose value is not its most common value.
    pub numeric: Vec<(String, u64)>,
    pub categorical: Vec<CategoricalFacts>,
    /// Indexes into `categorical`.
    pub crossings: Vec<CrossingFacts>,
}

/// The weights of one GLM round, measured in the pass that computed it (rule R7).
#[derive(Debug, Clone, PartialEq)]
pub struct RoundFacts {
    pub weights: WeightSupport,
    /// Per design column, over the rows where it is non-zero.
    pub support: Vec<WeightSupport>,
}

impl RoundFacts {
    pub fn of(contribution: &Contribution) -> RoundFacts {
        RoundFacts { weights: contribution.weights, support: contribution.support.clone() }
    }
}

/// The numbers of a part as computed, before the policy has seen them.
#[derive(Debug, Clone, PartialEq)]
pub enum CandidateNumbers {
    Sufficient(Sufficient),
    Contribution(Contribution),
    NoisySufficient(pb::NoisySufficientPart),
}

/// A computed part, with the request's round it answers.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateModel {
    pub attempt: u32,
    pub round: u32,
    /// `ModelRequest.sites`: how many sites' parts this one is summed with (itself included).
    pub sites: u32,
    pub numbers: CandidateNumbers,
}

/// Why a site releases no part of a model. Holds names (of rules, columns, levels) and
/// thresholds, never a number derived from the data: every refusal is the same whether a cell
/// is empty or holds one patient.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelRefusal {
    #[error("this site answers feasibility queries only (patient counts); it fits no models")]
    FeasibilityOnly,
    #[error(
        "this site releases numbers with differential privacy and fits linear models only: a {family} fit releases new information matrices in each of up to {max_rounds} rounds, which this version does not price; fit a linear model, or ask at sites with profile k-only"
    )]
    FamilyUnderDp { family: &'static str, max_rounds: u32 },
    #[error(
        "R1: the model has fewer than {min} complete cases (patients) at this site; widen the population or leave this site out"
    )]
    TooFewRows { min: u64 },
    #[error(
        "R2: {p} design columns need more complete cases at this site (at most {max} parameters per case, so that the design cannot solve for single rows); drop covariates or merge levels"
    )]
    TooManyParameters { p: usize, max: f64 },
    #[error(
        "R3: level '{level}' of '{column}' has fewer than {k} patients at this site, possibly none; merge it with another level or leave this site out"
    )]
    SmallLevel { column: String, level: String, k: u32 },
    #[error(
        "R4: fewer than {k} patients {place}have {class} at this site, possibly none; the outcome by level would single them out"
    )]
    OutcomeClass { place: String, class: &'static str, k: u32 },
    #[error(
        "R4: fewer than {k} patients at this site have an outcome other than its most common value; the model would single them out"
    )]
    OutcomeNearConstant { k: u32 },
    #[error(
        "R5: fewer than {k} patients at this site have a value of '{column}' other than its most common one, possibly none; such a covariate singles them out (use it as categorical, or drop it)"
    )]
    NearConstant { column: String, k: u32 },
    #[error(
        "R6: level '{first_level}' of '{first}' together with level '{second_level}' of '{second}' has fewer than {k} patients at this site, possibly none; merge levels or drop one of the covariates"
    )]
    SmallCrossing { first: String, first_level: String, second: String, second_level: String, k: u32 },
    #[error(
        "R7: the coefficients of this round put the weight on fewer than {min} effective patients at this site{place}; such a round would describe single patients, so it is not answered"
    )]
    ConcentratedWeights { place: String, min: u64 },
    #[error("R9: this site's parts are only summed with at least {min} sites' parts; this round has {sites}")]
    TooFewSites { sites: u32, min: u32 },
    /// Under dp: what the privacy plan needs and the site has not declared (bounds).
    #[error(transparent)]
    Privacy(#[from] crate::PrivacyRefusal),
    #[error(
        "the declared resolution of '{column}' is too fine for a model over this many rows: its sums of products could overflow 64 bits; the site can declare a coarser resolution"
    )]
    ResolutionTooFine { column: String },
    #[error("R8: round {round} of this fit was asked before round {expected}; rounds are answered strictly in order")]
    RoundOutOfOrder { round: u32, expected: u32 },
    #[error(
        "R8: round {round} of this fit was answered for other coefficients; a round is answered for one set of coefficients only (restart the fit with a new attempt)"
    )]
    RoundRepeated { round: u32 },
    #[error("R8: a fit has at most {max} rounds per attempt at this site")]
    TooManyRounds { max: u32 },
    #[error("R8: a fit has at most {max} attempts at this site; start a new fit")]
    TooManyAttempts { max: u32 },
    #[error(
        "R8: attempt {attempt} of this fit is older than one already answered; attempts are answered strictly in order"
    )]
    AttemptOutOfOrder { attempt: u32 },
    #[error(
        "the data at this site changed during the fit, so its rounds would describe other rows; restart the fit (a new attempt from round 0)"
    )]
    DataChanged,
    /// The node passed parts that do not fit together: a bug, not the researcher's doing.
    #[error("internal error: {0}; nothing was released")]
    Mismatch(&'static str),
}

pub(crate) fn family_label(family: pb::ModelFamily) -> &'static str {
    match family {
        pb::ModelFamily::Gaussian => "linear",
        pb::ModelFamily::Binomial => "logistic",
        pb::ModelFamily::Poisson => "Poisson",
        pb::ModelFamily::Unspecified => "unspecified",
    }
}

impl Policy {
    /// What this site tells the coordinator about models up front (`Hello.model_rules`).
    pub fn model_rules(&self) -> pb::ModelRules {
        use pb::ModelFamily as F;
        let families: &[F] = match self.profile {
            Profile::Feasibility => &[],
            Profile::Dp => &[F::Gaussian],
            Profile::KOnly | Profile::TestOnlyRaw => &[F::Gaussian, F::Binomial, F::Poisson],
        };
        pb::ModelRules {
            min_sites: self.regression.min_sites,
            refuse_if_any_site_refuses: self.regression.on_refusal == OnRefusal::Refuse,
            families: families.iter().map(|f| *f as i32).collect(),
        }
    }

    /// The smallest count of patients a model's rows and cells need here: k, and for the
    /// whole model also `min_rows_per_site`.
    pub(crate) fn model_floor(&self) -> u64 {
        self.regression.min_rows_per_site.max(u64::from(self.min_cell_size))
    }
}

/// Whether the site's profile answers models of `family` at all: what the node checks before it
/// reads any rows, and [`check_model_facts`] again.
pub fn check_model_profile(policy: &Policy, family: pb::ModelFamily) -> Result<(), ModelRefusal> {
    match policy.profile {
        Profile::Feasibility => Err(ModelRefusal::FeasibilityOnly),
        Profile::Dp if family != pb::ModelFamily::Gaussian => {
            Err(ModelRefusal::FamilyUnderDp { family: family_label(family), max_rounds: policy.regression.max_rounds })
        }
        Profile::Dp | Profile::KOnly | Profile::TestOnlyRaw => Ok(()),
    }
}

/// R9: this site's parts are summed with at least `min_sites` sites' parts (from the request
/// alone: decided before anything is read or charged).
pub fn check_model_sites(policy: &Policy, sites: u32) -> Result<(), ModelRefusal> {
    let min = policy.regression.min_sites;
    if policy.profile != Profile::TestOnlyRaw && sites < min {
        return Err(ModelRefusal::TooFewSites { sites, min });
    }
    Ok(())
}

/// The rules that depend only on the design and the request (profile, R1–R6, R9): what the
/// node checks before it computes a round, and what [`release_model`] checks again.
pub fn check_model_facts(policy: &Policy, facts: &ModelFacts, sites: u32) -> Result<(), ModelRefusal> {
    let k = policy.min_cell_size;
    let r = &policy.regression;
    if policy.profile == Profile::TestOnlyRaw {
        return Ok(());
    }
    check_model_profile(policy, facts.family)?;
    check_model_sites(policy, sites)?;
    let floor = policy.model_floor();
    if facts.n < floor {
        return Err(ModelRefusal::TooFewRows { min: floor });
    }
    // Under dp R2 is decided on the noisy n (`model_private`): on the true n it would tell,
    // exactly, whether n is above p / max_parameters_per_row.
    let p = facts.columns.len();
    if policy.profile != Profile::Dp && p as f64 > r.max_parameters_per_row * facts.n as f64 {
        return Err(ModelRefusal::TooManyParameters { p, max: r.max_parameters_per_row });
    }
    let k64 = u64::from(k);
    for c in &facts.categorical {
        if let Some(l) = c.levels.iter().find(|l| l.patients < k64) {
            return Err(ModelRefusal::SmallLevel { column: c.column.clone(), level: l.level.clone(), k });
        }
    }
    // Under dp the noise covers R4–R6: they release nothing beyond the noisy Z'Z.
    if policy.profile == Profile::Dp {
        return Ok(());
    }
    check_outcome(facts, k)?;
    if let Some((column, _)) = facts.numeric.iter().find(|(_, off)| *off < k64) {
        return Err(ModelRefusal::NearConstant { column: column.clone(), k });
    }
    for x in &facts.crossings {
        let (Some(a), Some(b)) = (facts.categorical.get(x.first), facts.categorical.get(x.second)) else {
            return Err(ModelRefusal::Mismatch("a crossing names a covariate the design does not have"));
        };
        if x.patients.len() != a.levels.len() * b.levels.len() {
            return Err(ModelRefusal::Mismatch("a crossing's counts do not match its covariates' levels"));
        }
        if let Some(i) = x.patients.iter().position(|&c| c < k64) {
            let (la, lb) = (&a.levels[i / b.levels.len()], &b.levels[i % b.levels.len()]);
            return Err(ModelRefusal::SmallCrossing {
                first: a.column.clone(),
                first_level: la.level.clone(),
                second: b.column.clone(),
                second_level: lb.level.clone(),
                k,
            });
        }
    }
    Ok(())
}

/// R4: binomial events and non-events overall and within every level; other families, patients
/// off the outcome's most common value.
fn check_outcome(facts: &ModelFacts, k: u32) -> Result<(), ModelRefusal> {
    let k64 = u64::from(k);
    if facts.family != pb::ModelFamily::Binomial {
        return if facts.outcome_off_mode < k64 { Err(ModelRefusal::OutcomeNearConstant { k }) } else { Ok(()) };
    }
    let small = |events: u64, patients: u64| {
        if events < k64 {
            Some("the outcome 1")
        } else if patients.saturating_sub(events) < k64 {
            Some("the outcome 0")
        } else {
            None
        }
    };
    if let Some(class) = small(facts.events, facts.n) {
        return Err(ModelRefusal::OutcomeClass { place: String::new(), class, k });
    }
    for c in &facts.categorical {
        for l in &c.levels {
            if let Some(class) = small(l.events, l.patients) {
                let place = format!("with level '{}' of '{}' ", l.level, c.column);
                return Err(ModelRefusal::OutcomeClass { place, class, k });
            }
        }
    }
    Ok(())
}

/// R7: the round's weights spread over at least max(min_rows_per_site, k) effective patients
/// overall, and over at least k where each column is non-zero (Kish: (Σw)² / Σw²).
fn check_round(policy: &Policy, facts: &ModelFacts, round: Option<&RoundFacts>) -> Result<(), ModelRefusal> {
    let Some(round) = round.filter(|r| r.support.len() == facts.columns.len()) else {
        return Err(ModelRefusal::Mismatch("a GLM round came without the weights measured over its rows"));
    };
    let floor = policy.model_floor();
    if round.weights.effective_rows() < floor as f64 {
        return Err(ModelRefusal::ConcentratedWeights { place: String::new(), min: floor });
    }
    let k = u64::from(policy.min_cell_size);
    if let Some(j) = round.support.iter().position(|s| s.effective_rows() < k as f64) {
        let place = format!(" among the patients where '{}' is not 0", facts.columns[j]);
        return Err(ModelRefusal::ConcentratedWeights { place, min: k });
    }
    Ok(())
}

/// The one checker: applies every rule of the site's profile to a computed part and returns it
/// as it may leave the node, or a refusal that holds none of its numbers.
pub fn release_model(
    policy: &Policy,
    facts: &ModelFacts,
    round: Option<&RoundFacts>,
    candidate: CandidateModel,
) -> Result<pb::ModelPart, ModelRefusal> {
    check_model_facts(policy, facts, candidate.sites)?;
    let p = facts.columns.len();
    let noisy = policy.profile.is_private();
    let (numbers, beta) = match candidate.numbers {
        CandidateNumbers::Sufficient(s) => {
            if noisy {
                return Err(ModelRefusal::Mismatch("exact statistics under a differentially private profile"));
            }
            if s.p != p || s.xtx.len() != p * p || s.xty.len() != p || facts.family != pb::ModelFamily::Gaussian {
                return Err(ModelRefusal::Mismatch("the statistics are not those of the design's linear model"));
            }
            let part = pb::SufficientPart {
                n: s.n,
                dropped: s.dropped,
                xtx: upper_triangle(&s.xtx, p),
                xty: s.xty,
                yty: s.yty,
                sum_y: s.sum_y,
            };
            (pb::model_part::Numbers::Sufficient(part), Vec::new())
        }
        CandidateNumbers::Contribution(c) => {
            if noisy {
                return Err(ModelRefusal::Mismatch("a GLM round under a differentially private profile"));
            }
            if c.p != p || c.information.len() != p * p || c.score.len() != p || family_of(&c) != facts.family {
                return Err(ModelRefusal::Mismatch("the round does not have the design's columns or family"));
            }
            if policy.profile == Profile::KOnly {
                check_round(policy, facts, round)?;
            }
            let part = pb::ContributionPart {
                n: c.n,
                dropped: c.dropped,
                information: upper_triangle(&c.information, p),
                score: c.score,
                deviance: c.deviance,
                sum_y: c.sum_y,
                sum_ylogy: c.sum_ylogy,
                sum_lfact: c.sum_lfact,
                boundary: c.boundary,
            };
            (pb::model_part::Numbers::Contribution(part), c.beta.unwrap_or_default())
        }
        CandidateNumbers::NoisySufficient(z) => {
            if !noisy {
                return Err(ModelRefusal::Mismatch("noisy statistics under a profile without noise"));
            }
            (pb::model_part::Numbers::NoisySufficient(z), Vec::new())
        }
    };
    Ok(pb::ModelPart {
        attempt: candidate.attempt,
        round: candidate.round,
        beta,
        columns: facts.columns.clone(),
        numbers: Some(numbers),
    })
}

fn family_of(c: &Contribution) -> pb::ModelFamily {
    match c.family {
        verbund_regression::Family::Gaussian => pb::ModelFamily::Gaussian,
        verbund_regression::Family::Binomial => pb::ModelFamily::Binomial,
        verbund_regression::Family::Poisson => pb::ModelFamily::Poisson,
    }
}

/// The upper triangle with the diagonal, row by row, of a full p×p matrix: p(p+1)/2 values.
fn upper_triangle(full: &[f64], p: usize) -> Vec<f64> {
    (0..p).flat_map(|j| full[j * p + j..(j + 1) * p].iter().copied()).collect()
}
