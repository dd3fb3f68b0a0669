//! Linear models under differential privacy (docs/regression-plan.md §4): one-shot noisy
//! sufficient statistics. A site releases Z'Z for Z = [1, the design columns without the
//! intercept, y] once per model and data version, nothing per round:
//!
//! * numeric covariates and the outcome are clipped to the dataset's declared `bounds` and put
//!   in integer units as [`Units`] does (centre (low + high) / 2, unit = the resolution);
//!   dummies and the constant column are 0/1 (centre 0, unit 1);
//! * the entries of Z'Z (upper triangle with the diagonal, row by row) are exact integer sums;
//! * each of the P = q(q+1)/2 entries gets discrete Laplace noise of scale Δ_jk · P / ε, where
//!   Δ_jk = b_j · b_k units is what one patient (one row, m = 1) can move it by and ε is
//!   `[regression] epsilon_per_model` (basic composition, as [`Policy::plan_private`]);
//! * the rules are R1 and R3 on the true counts AND on noisy counts over a threshold (δ as for
//!   cells: `dp.delta_per_query` shared by the thresholded counts), R2 on the noisy n, and R9;
//!   the noise covers R4–R6. GLMs are refused before anything runs, at no cost.
//!
//! The noise is seeded from the model request (without fit id, attempt, round and sites), the
//! data version and [`Policy::model_mechanism_digest`]: the same model over the same data gets
//! the same numbers (and the ledger a repeat), new data or settings new noise and a new charge.

use crate::model::{
    CandidateModel, CandidateNumbers, ModelFacts, ModelRefusal, check_model_profile, check_model_sites, release_model,
};
use crate::noise::{NoiseKey, Scale, Seed};
use crate::private::{PrivatePlan, clamp_i64, micro, units_of};
use crate::profile::DatasetRule;
use crate::{Policy, PrivacyRefusal, Profile};
use verbund_proto::v1 as pb;
use verbund_regression::Design;

/// Bumped whenever the way a model's noise is derived or applied changes.
pub const MODEL_MECHANISM_VERSION: u32 = 1;

/// Where the draws of a model's Z'Z come from (`Seed::cell`).
const ZZ_NOISE: &[u8] = b"model/zz";

/// A covariate as the privacy plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum CovariateShape<'a> {
    Numeric {
        column: &'a str,
        integer: bool,
    },
    /// `levels` as the design names them, the reference first.
    Categorical {
        column: &'a str,
        levels: &'a [String],
    },
}

/// A model request as the privacy plan sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape<'a> {
    pub dataset: &'a str,
    pub family: pb::ModelFamily,
    pub outcome: &'a str,
    pub outcome_integer: bool,
    pub covariates: Vec<CovariateShape<'a>>,
}

/// One column of Z: row value = centre + unit · v, v an integer with |v| ≤ bound.
#[derive(Debug, Clone, PartialEq)]
pub struct ZColumn {
    /// The design column's name (R's), "(constant)" for the first column and the outcome's
    /// name for the last.
    pub name: String,
    pub centre: f64,
    pub unit: f64,
    pub bound: u64,
    /// Clipping bounds of a numeric column; `None` for the constant and the dummies.
    pub clip: Option<[f64; 2]>,
}

/// A categorical covariate's levels and the Z columns of its dummies (the reference has none).
#[derive(Debug, Clone, PartialEq)]
pub struct LevelColumns {
    pub column: String,
    pub levels: Vec<String>,
    /// For levels[1..]: the index of its dummy in Z.
    pub dummies: Vec<usize>,
}

/// What the node needs to release one linear model under dp, decided before anything runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlan {
    /// Z's columns: the constant, the design columns without the intercept, the outcome.
    pub columns: Vec<ZColumn>,
    /// Each entry's noise scale, upper triangle row by row (P = q(q+1)/2).
    pub scales: Vec<Scale>,
    pub categorical: Vec<LevelColumns>,
    /// R1's true floor, max(min_rows_per_site, k), and the noisy n's threshold.
    pub floor: u64,
    pub rows_threshold: i64,
    /// R3: k, a level's noisy count threshold (levels with a dummy), and the reference level's
    /// (n minus the other levels' counts: a sum of several draws, so a union bound).
    pub k: u64,
    pub level_threshold: i64,
    /// By the number of levels of the covariate.
    pub reference_thresholds: Vec<(usize, i64)>,
    pub epsilon: f64,
    pub delta: f64,
}

impl ModelPlan {
    /// Number of Z's columns (q).
    pub fn q(&self) -> usize {
        self.columns.len()
    }

    /// The index of entry (j, k), j ≤ k, of the upper triangle row by row.
    pub fn entry(&self, j: usize, k: usize) -> usize {
        triangle_index(self.q(), j, k)
    }

    /// The request's cost in the form the node's ledger debit takes (ε, δ and nothing else).
    pub fn charge(&self) -> PrivatePlan {
        PrivatePlan {
            rows_per_patient: 1,
            levels: Vec::new(),
            patients: None,
            floor: self.floor,
            aggregates: Vec::new(),
            epsilon: self.epsilon,
            delta: self.delta,
        }
    }
}

/// The index of entry (j, k), j ≤ k, in a q×q upper triangle stored row by row.
fn triangle_index(q: usize, j: usize, k: usize) -> usize {
    j * q - j * (j.saturating_sub(1)) / 2 - j + k
}

impl Policy {
    /// Checks a model request against the dp profile and calibrates its noise, before anything
    /// is read or charged: only linear models (GLMs: [`ModelRefusal::FamilyUnderDp`]), bounds
    /// declared for every numeric covariate and the outcome (else `MissingBounds`).
    pub fn plan_private_model(&self, shape: &ModelShape<'_>) -> Result<ModelPlan, ModelRefusal> {
        check_model_profile(self, shape.family)?;
        if self.profile != Profile::Dp {
            return Err(ModelRefusal::Mismatch("a private model plan under a profile without noise"));
        }
        let empty = DatasetRule::default();
        let rule = self.dataset_rule(shape.dataset).unwrap_or(&empty);
        let numeric = |column: &str, integer: bool| -> Result<ZColumn, PrivacyRefusal> {
            let u = units_of(rule, shape.dataset, column, integer, true)?;
            Ok(ZColumn {
                name: column.to_string(),
                centre: u.centre,
                unit: u.unit,
                bound: u.bound,
                clip: Some([u.low, u.high]),
            })
        };
        let dummy = |name: String| ZColumn { name, centre: 0.0, unit: 1.0, bound: 1, clip: None };
        let mut columns = vec![dummy("(constant)".into())];
        let mut categorical = Vec::new();
        for c in &shape.covariates {
            match c {
                CovariateShape::Numeric { column, integer } => columns.push(numeric(column, *integer)?),
                CovariateShape::Categorical { column, levels } => {
                    let mut dummies = Vec::new();
                    for level in levels.iter().skip(1) {
                        dummies.push(columns.len());
                        columns.push(dummy(format!("{column}{level}")));
                    }
                    categorical.push(LevelColumns { column: column.to_string(), levels: levels.to_vec(), dummies });
                }
            }
        }
        columns.push(numeric(shape.outcome, shape.outcome_integer)?);

        let q = columns.len();
        let parts = u32::try_from(q * (q + 1) / 2).unwrap_or(u32::MAX);
        let epsilon_micro = micro(self.regression.epsilon_per_model);
        let mut scales = Vec::with_capacity(parts as usize);
        for j in 0..q {
            for k in j..q {
                let sensitivity = columns[j].bound.saturating_mul(columns[k].bound);
                scales.push(Scale::laplace(sensitivity, parts, epsilon_micro));
            }
        }
        // Thresholded counts: n, and every level of every categorical covariate.
        let thresholded = 1 + categorical.iter().map(|c| c.levels.len()).sum::<usize>();
        let delta = self.dp.delta_per_query;
        let delta_each = delta / thresholded as f64;
        // n (entry 0,0) and a dummy's diagonal both have Δ = 1: the same scale.
        let count_scale = Scale::laplace(1, parts, epsilon_micro);
        let floor = self.model_floor();
        let k = u64::from(self.min_cell_size).max(1);
        let mut reference_thresholds: Vec<(usize, i64)> = Vec::new();
        for c in &categorical {
            let draws = c.levels.len();
            if !reference_thresholds.iter().any(|(l, _)| *l == draws) {
                // n − Σ (draws − 1) dummies: P(Σ of `draws` draws ≥ z) ≤ draws · P(one ≥ z / draws).
                let tail = count_scale.tail(delta_each / draws as f64).saturating_mul(draws as u64);
                reference_thresholds.push((draws, clamp_i64(k.saturating_add(tail))));
            }
        }
        Ok(ModelPlan {
            columns,
            scales,
            categorical,
            floor,
            rows_threshold: clamp_i64(floor.saturating_add(count_scale.tail(delta_each))),
            k,
            level_threshold: clamp_i64(k.saturating_add(count_scale.tail(delta_each))),
            reference_thresholds,
            epsilon: epsilon_micro as f64 / 1e6,
            delta,
        })
    }

    /// A digest of everything that shapes a model's noise on `dataset`: the aggregate
    /// mechanism's (profile, k, dp settings, the dataset's bounds and levels) and `[regression]`.
    pub fn model_mechanism_digest(&self, dataset: &str) -> Vec<u8> {
        let aggregate = self.mechanism_digest(dataset);
        let hex: String = aggregate.iter().map(|b| format!("{b:02x}")).collect();
        let described = format!("model-v{MODEL_MECHANISM_VERSION}|{hex}|{:?}", self.regression);
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, described.as_bytes()).as_ref().to_vec()
    }
}

/// The model request as its noise sees it: with what changes between the rounds and attempts
/// of a fit cleared (fit id, attempt, round, sites, β). The same model asked again, in any fit,
/// gets the same numbers.
pub fn canonical_model_request(request: &pb::ModelRequest) -> pb::ModelRequest {
    pb::ModelRequest { model: request.model.clone(), step: request.step, ..Default::default() }
}

/// The seed of a model's noise: the encoded [`canonical_model_request`], the data version and
/// the model mechanism ([`Policy::model_mechanism_digest`]).
pub fn model_seed(policy: &Policy, key: &NoiseKey, encoded_request: &[u8], dataset: &str, data_version: &str) -> Seed {
    let mut bytes = b"verbund/model/v1\n".to_vec();
    bytes.extend_from_slice(encoded_request);
    Seed::for_request(key, &bytes, data_version, &policy.model_mechanism_digest(dataset))
}

/// The fit a released part answers: `ModelRequest`'s attempt, round and sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRound {
    pub attempt: u32,
    pub round: u32,
    pub sites: u32,
}

/// Z's values of one column in integer units over the design's rows.
fn z_column(plan: &ModelPlan, design: &Design, z: usize) -> Vec<i64> {
    let q = plan.q();
    let c = &plan.columns[z];
    let values: &[f64] =
        if z == q - 1 { design.outcome() } else { design.column(z - 1 + usize::from(design.intercept)) };
    match c.clip {
        Some([low, high]) => values.iter().map(|v| ((v.clamp(low, high) - c.centre) / c.unit).round() as i64).collect(),
        // Dummies hold 0 or 1 exactly.
        None => values.iter().map(|v| *v as i64).collect(),
    }
}

/// The exact integer Z'Z, upper triangle row by row. Refuses when a sum could leave 64 bits
/// (decided on the bounds and the rows, not on the values).
fn exact_zz(plan: &ModelPlan, design: &Design) -> Result<Vec<i64>, ModelRefusal> {
    let q = plan.q();
    let n = design.n;
    let mut z: Vec<Vec<i64>> = Vec::with_capacity(q);
    z.push(vec![1; n]);
    for j in 1..q {
        z.push(z_column(plan, design, j));
    }
    let mut out = Vec::with_capacity(q * (q + 1) / 2);
    for j in 0..q {
        for k in j..q {
            let per_row = u128::from(plan.columns[j].bound) * u128::from(plan.columns[k].bound);
            if (n as u128).saturating_mul(per_row) >= (i64::MAX as u128) / 2 {
                let c = if plan.columns[j].bound >= plan.columns[k].bound { j } else { k };
                return Err(ModelRefusal::ResolutionTooFine { column: plan.columns[c].name.clone() });
            }
            out.push(z[j].iter().zip(&z[k]).map(|(a, b)| a * b).sum());
        }
    }
    Ok(out)
}

/// The one checker for a linear model under dp: applies R1, R3 (true and noisy), R2 (noisy n)
/// and R9 to the design, computes the noisy Z'Z and returns the part as it may leave the node
/// (through [`release_model`]), or a refusal that holds none of its numbers.
pub fn release_private_model(
    policy: &Policy,
    plan: &ModelPlan,
    seed: &Seed,
    facts: &ModelFacts,
    design: &Design,
    round: ModelRound,
) -> Result<pb::ModelPart, ModelRefusal> {
    if policy.profile != Profile::Dp || facts.family != pb::ModelFamily::Gaussian {
        return Err(ModelRefusal::Mismatch("noisy statistics outside a linear model under dp"));
    }
    check_model_sites(policy, round.sites)?;
    crate::model::check_model_facts(policy, facts, round.sites)?;
    let q = plan.q();
    let without_intercept = &design.names[usize::from(design.intercept)..];
    let planned: Vec<&str> = plan.columns[1..q - 1].iter().map(|c| c.name.as_str()).collect();
    if design.names != facts.columns
        || without_intercept.len() != planned.len()
        || without_intercept.iter().zip(&planned).any(|(a, b)| a != b)
        || plan.scales.len() != q * (q + 1) / 2
        || design.outcome().len() != design.n
    {
        return Err(ModelRefusal::Mismatch("the design does not have the planned columns"));
    }
    let mut zz = exact_zz(plan, design)?;
    // Every entry is drawn, in order, whatever is then refused.
    let mut noise = seed.cell(ZZ_NOISE);
    for (v, scale) in zz.iter_mut().zip(&plan.scales) {
        let draw = noise.laplace(*scale).map_err(|_| ModelRefusal::Mismatch("the noise could not be drawn"))?;
        *v = v.saturating_add(draw);
    }

    // R1: the noisy n over its threshold (the true floor was checked above).
    let noisy_n = zz[0];
    if noisy_n < plan.rows_threshold {
        return Err(ModelRefusal::TooFewRows { min: plan.floor });
    }
    // R3: every level's noisy count over its threshold; the reference is n minus the others.
    let k = u32::try_from(plan.k).unwrap_or(u32::MAX);
    for c in &plan.categorical {
        let counts: Vec<i64> = c.dummies.iter().map(|&j| zz[plan.entry(j, j)]).collect();
        let reference = counts.iter().fold(noisy_n, |n, c| n.saturating_sub(*c));
        let reference_threshold = plan
            .reference_thresholds
            .iter()
            .find(|(l, _)| *l == c.levels.len())
            .map(|(_, t)| *t)
            .ok_or(ModelRefusal::Mismatch("a covariate's levels are not planned"))?;
        let small = std::iter::once((reference, reference_threshold))
            .chain(counts.iter().map(|c| (*c, plan.level_threshold)))
            .position(|(count, threshold)| count < threshold);
        if let Some(i) = small {
            return Err(ModelRefusal::SmallLevel { column: c.column.clone(), level: c.levels[i].clone(), k });
        }
    }
    // R2 on the noisy n.
    let p = facts.columns.len();
    let max = policy.regression.max_parameters_per_row;
    if p as f64 > max * noisy_n as f64 {
        return Err(ModelRefusal::TooManyParameters { p, max });
    }
    let part = pb::NoisySufficientPart {
        zz,
        centre: plan.columns.iter().map(|c| c.centre).collect(),
        unit: plan.columns.iter().map(|c| c.unit).collect(),
        scale: plan.scales.iter().map(Scale::as_f64).collect(),
    };
    let candidate = CandidateModel {
        attempt: round.attempt,
        round: round.round,
        sites: round.sites,
        numbers: CandidateNumbers::NoisySufficient(part),
    };
    release_model(policy, facts, None, candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangle_indexes_run_row_by_row() {
        let q = 4;
        let mut at = 0;
        for j in 0..q {
            for k in j..q {
                assert_eq!(triangle_index(q, j, k), at, "({j},{k})");
                at += 1;
            }
        }
    }
}
