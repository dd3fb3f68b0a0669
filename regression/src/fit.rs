//! The coordinator's side: summing the sites' statistics, and the linear fit.

use nalgebra::{Cholesky, DMatrix, DVector, Dyn, SymmetricEigen};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, FisherSnedecor, Normal, StudentsT};

use crate::design::LevelCount;
use crate::error::FitError;
use crate::site::{Contribution, Sufficient};

/// A column is aliased when the share of its (scaled) sum of squares left unexplained by the
/// columns before it is below this. R's `lm` uses 1e-7 on *norms* of X in its pivoted QR, i.e.
/// 1e-14 on squares; from X'X we only have squares, whose rounding error is ~1e-16 relative and
/// grows with the number of rows summed, so we refuse earlier (1e-5 on norms).
const ALIAS_TOL: f64 = 1e-10;

/// One coefficient row of a fit summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Coefficient {
    pub name: String,
    pub estimate: f64,
    pub std_error: f64,
    /// t value (linear model) or z value (GLM).
    pub statistic: f64,
    /// Two-sided p-value from Student's t (linear) or the normal (GLM, Wald).
    pub p_value: f64,
    /// 95% confidence interval: t-based for the linear model (R's `confint`), Wald for a GLM
    /// (R's `confint.default`).
    pub ci_lower: f64,
    pub ci_upper: f64,
}

/// The overall F test of a linear model against the intercept-only (or empty) model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FStatistic {
    pub value: f64,
    pub numdf: u64,
    pub dendf: u64,
    pub p_value: f64,
}

/// A linear model fitted from pooled sufficient statistics; the numbers of R's `summary(lm)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinearFit {
    pub coefficients: Vec<Coefficient>,
    /// Covariance matrix of the estimates, p×p row-major.
    pub covariance: Vec<f64>,
    pub n: u64,
    pub dropped: u64,
    pub residual_df: u64,
    /// Residual standard error σ̂.
    pub sigma: f64,
    pub rss: f64,
    /// Centred if the model has an intercept, uncentred otherwise (as R).
    pub r_squared: f64,
    pub adj_r_squared: f64,
    pub f_statistic: Option<FStatistic>,
    pub intercept: bool,
    /// Reciprocal condition number of X'X after scaling its columns to unit length.
    pub rcond: f64,
}

impl Sufficient {
    /// Adds up the sites' statistics; they must describe the same model.
    pub fn sum(parts: &[Sufficient]) -> Result<Sufficient, FitError> {
        let (first, rest) = parts.split_first().ok_or(FitError::Empty)?;
        let mut total = first.clone();
        for part in rest {
            same_shape(total.p, part.p, total.intercept, part.intercept, &total.levels, &part.levels)?;
            total.n += part.n;
            total.dropped += part.dropped;
            add(&mut total.xtx, &part.xtx);
            add(&mut total.xty, &part.xty);
            total.yty += part.yty;
            total.sum_y += part.sum_y;
            add_levels(&mut total.levels, &part.levels);
        }
        Ok(total)
    }
}

impl Contribution {
    /// Adds up the sites' contributions to one round; they must be for the same model and β.
    pub fn sum(parts: &[Contribution]) -> Result<Contribution, FitError> {
        let (first, rest) = parts.split_first().ok_or(FitError::Empty)?;
        let mut total = first.clone();
        for part in rest {
            same_shape(total.p, part.p, total.intercept, part.intercept, &total.levels, &part.levels)?;
            if part.family != total.family {
                return Err(FitError::Mismatch(format!("families {} and {}", total.family, part.family)));
            }
            if part.beta != total.beta {
                return Err(FitError::Mismatch("the sites evaluated different coefficients".to_owned()));
            }
            total.n += part.n;
            total.dropped += part.dropped;
            add(&mut total.information, &part.information);
            add(&mut total.score, &part.score);
            total.deviance += part.deviance;
            total.sum_y += part.sum_y;
            total.sum_ylogy += part.sum_ylogy;
            total.sum_lfact += part.sum_lfact;
            total.boundary |= part.boundary;
            total.add_support(part);
            add_levels(&mut total.levels, &part.levels);
        }
        Ok(total)
    }
}

fn same_shape(p: usize, q: usize, i: bool, j: bool, a: &[LevelCount], b: &[LevelCount]) -> Result<(), FitError> {
    if p != q {
        return Err(FitError::Mismatch(format!("{p} and {q} design columns")));
    }
    if i != j {
        return Err(FitError::Mismatch("one site has an intercept and another has not".to_owned()));
    }
    let same_levels =
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.variable == y.variable && x.level == y.level);
    if !same_levels {
        return Err(FitError::Mismatch("the categorical covariates or their levels differ".to_owned()));
    }
    Ok(())
}

fn add(total: &mut [f64], part: &[f64]) {
    for (t, v) in total.iter_mut().zip(part) {
        *t += v;
    }
}

fn add_levels(total: &mut [LevelCount], part: &[LevelCount]) {
    for (t, v) in total.iter_mut().zip(part) {
        t.rows += v.rows;
        t.sum_y += v.sum_y;
    }
}

/// A factored symmetric positive definite matrix (X'X or X'WX).
pub(crate) struct Factored {
    pub chol: Cholesky<f64, Dyn>,
    pub rcond: f64,
}

/// Cholesky-factors a p×p matrix after checking that no column is aliased. The check runs on
/// the matrix scaled to unit diagonal, so it does not depend on the covariates' units; aliased
/// columns are found in order, as R's `lm` would mark them NA.
pub(crate) fn factor(a: &[f64], p: usize, names: &[String]) -> Result<Factored, FitError> {
    if a.len() != p * p || names.len() != p {
        return Err(FitError::Mismatch(format!("a {p}×{p} matrix with {} entries and {} names", a.len(), names.len())));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(FitError::NonFinite("information matrix"));
    }
    let m = DMatrix::from_row_slice(p, p, a);
    let d: Vec<f64> = (0..p).map(|j| m[(j, j)]).collect();
    let mut aliased: Vec<usize> = (0..p).filter(|&j| d[j] <= 0.0).collect();
    let scale: Vec<f64> = d.iter().map(|&v| if v > 0.0 { 1.0 / v.sqrt() } else { 1.0 }).collect();
    let scaled = DMatrix::from_fn(p, p, |i, j| m[(i, j)] * scale[i] * scale[j]);
    let mut kept: Vec<usize> = Vec::with_capacity(p);
    for j in 0..p {
        if aliased.contains(&j) {
            continue;
        }
        let mut idx = kept.clone();
        idx.push(j);
        let sub = scaled.select_rows(&idx).select_columns(&idx);
        let last = idx.len() - 1;
        let unexplained = Cholesky::new(sub).map_or(0.0, |c| c.l_dirty()[(last, last)].powi(2));
        if unexplained > ALIAS_TOL {
            kept.push(j);
        } else {
            aliased.push(j);
        }
    }
    if !aliased.is_empty() {
        aliased.sort_unstable();
        return Err(FitError::Singular { aliased: aliased.iter().map(|&j| names[j].clone()).collect() });
    }
    let eigen = SymmetricEigen::new(scaled).eigenvalues;
    let (lo, hi) = eigen.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let rcond = if hi > 0.0 { (lo / hi).max(0.0) } else { 0.0 };
    let chol = Cholesky::new(m).ok_or_else(|| FitError::Singular { aliased: vec![names[p - 1].clone()] })?;
    Ok(Factored { chol, rcond })
}

/// How far below zero (relative to y'y) y'y − β'X'y may fall by rounding alone.
const RSS_ROUNDING: f64 = 1e-9;

/// Least squares from pooled X'X, X'y, y'y: Cholesky of X'X (after the aliasing check), never
/// an explicit inverse for the coefficients. RSS = y'y − β'X'y.
pub fn fit_linear(total: &Sufficient, names: &[String]) -> Result<LinearFit, FitError> {
    let p = total.p;
    if total.xty.len() != p || names.len() != p {
        return Err(FitError::Mismatch(format!("{p} columns, {} in X'y, {} names", total.xty.len(), names.len())));
    }
    let residual_df = total.n as i64 - p as i64;
    if residual_df <= 0 {
        return Err(FitError::NoResidualDf { n: total.n, p, residual_df });
    }
    let f = factor(&total.xtx, p, names)?;
    let beta = f.chol.solve(&DVector::from_column_slice(&total.xty));
    let explained: f64 = beta.iter().zip(&total.xty).map(|(b, v)| b * v).sum();
    let raw_rss = total.yty - explained;
    if !raw_rss.is_finite() {
        return Err(FitError::NonFinite("residual sum of squares"));
    }
    // Exact statistics give a negative RSS only by rounding (a perfect fit). A clearly negative
    // one comes from noisy statistics whose noise exceeds the residual variation: clamping it to
    // zero would print zero standard errors and infinite t values.
    if raw_rss < -RSS_ROUNDING * total.yty.abs().max(1.0) {
        return Err(FitError::NegativeResidual { rss: raw_rss });
    }
    let rss = raw_rss.max(0.0);
    let rdf = residual_df as f64;
    let sigma2 = rss / rdf;
    let inverse = f.chol.inverse();
    let t = StudentsT::new(0.0, 1.0, rdf).map_err(|e| FitError::Mismatch(e.to_string()))?;
    let q = t.inverse_cdf(0.975);
    let coefficients = (0..p)
        .map(|j| {
            let se = (sigma2 * inverse[(j, j)]).sqrt();
            let stat = beta[j] / se;
            Coefficient {
                name: names[j].clone(),
                estimate: beta[j],
                std_error: se,
                statistic: stat,
                p_value: 2.0 * t.sf(stat.abs()),
                ci_lower: beta[j] - q * se,
                ci_upper: beta[j] + q * se,
            }
        })
        .collect();
    // R's summary.lm: mss is centred with an intercept, uncentred without.
    let n = total.n as f64;
    let tss = if total.intercept { total.yty - total.sum_y * total.sum_y / n } else { total.yty };
    let mss = (tss - rss).max(0.0);
    let r_squared = if tss > 0.0 { mss / (mss + rss) } else { f64::NAN };
    let df_int = u64::from(total.intercept);
    let adj_r_squared = 1.0 - (1.0 - r_squared) * ((n - df_int as f64) / rdf);
    let numdf = p as u64 - df_int;
    let f_statistic = if numdf > 0 {
        let value = (mss / numdf as f64) / sigma2;
        let dist = FisherSnedecor::new(numdf as f64, rdf).map_err(|e| FitError::Mismatch(e.to_string()))?;
        Some(FStatistic { value, numdf, dendf: residual_df as u64, p_value: dist.sf(value) })
    } else {
        None
    };
    Ok(LinearFit {
        coefficients,
        covariance: row_major(&inverse, sigma2),
        n: total.n,
        dropped: total.dropped,
        residual_df: residual_df as u64,
        sigma: sigma2.sqrt(),
        rss,
        r_squared,
        adj_r_squared,
        f_statistic,
        intercept: total.intercept,
        rcond: f.rcond,
    })
}

pub(crate) fn row_major(m: &DMatrix<f64>, factor: f64) -> Vec<f64> {
    let p = m.nrows();
    (0..p * p).map(|k| m[(k / p, k % p)] * factor).collect()
}

/// Wald rows (z, normal p-value, 95% CI as R's `confint.default`) for a GLM.
pub(crate) fn wald(names: &[String], beta: &[f64], covariance: &DMatrix<f64>) -> Vec<Coefficient> {
    let q = 1.959_963_984_540_054; // qnorm(0.975)
    names
        .iter()
        .zip(beta)
        .enumerate()
        .map(|(j, (name, &b))| {
            let se = covariance[(j, j)].sqrt();
            let z = b / se;
            Coefficient {
                name: name.clone(),
                estimate: b,
                std_error: se,
                statistic: z,
                p_value: 2.0 * normal_sf(z.abs()),
                ci_lower: b - q * se,
                ci_upper: b + q * se,
            }
        })
        .collect()
}

fn normal_sf(z: f64) -> f64 {
    Normal::standard().sf(z)
}
