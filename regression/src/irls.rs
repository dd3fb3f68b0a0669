//! The coordinator's IRLS (Fisher scoring) driver for binomial and Poisson GLMs. It does no
//! I/O: feed it the summed [`Contribution`] of a round, send the returned β to the sites.
//!
//! It follows R's `glm.fit` step for step, so that estimates, deviances and the iteration count
//! match R's: start from the family's row-local μ (round 0), solve, evaluate the deviance at the
//! new β, stop when |dev − dev_old| / (|dev| + 0.1) < ε (`glm.control(epsilon = 1e-8,
//! maxit = 25)`), and take the covariance from the weights of the last solve (R's `fit$qr`).

use nalgebra::{DMatrix, DVector};
use serde::Serialize;

use crate::design::Family;
use crate::error::FitError;
use crate::fit::{Coefficient, factor, row_major, wald};
use crate::site::Contribution;

/// R's `glm.control()$epsilon`.
pub const EPSILON: f64 = 1e-8;
/// R's `glm.control()$maxit`.
pub const MAX_ITERATIONS: usize = 25;

/// A GLM fitted across sites; the numbers of R's `summary(glm)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlmFit {
    pub family: Family,
    pub link: &'static str,
    pub coefficients: Vec<Coefficient>,
    /// Covariance matrix of the estimates (dispersion 1), p×p row-major.
    pub covariance: Vec<f64>,
    pub n: u64,
    pub dropped: u64,
    pub deviance: f64,
    pub residual_df: u64,
    pub null_deviance: f64,
    pub null_df: u64,
    pub aic: f64,
    /// Fisher scoring iterations (WLS solves), counted as R counts them.
    pub iterations: usize,
    /// Warnings R would give (fitted values at the boundary) that did not amount to an error.
    pub warnings: Vec<String>,
    /// Reciprocal condition number of the scaled information matrix at the last solve.
    pub rcond: f64,
}

/// What to do after a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send these coefficients to the sites and call [`Irls::next`] with the summed answers.
    Continue(Vec<f64>),
    Done(GlmFit),
}

/// The IRLS state machine. Round 0 asks the sites for `Design::contribution(family, None)`.
pub struct Irls {
    family: Family,
    names: Vec<String>,
    max_iterations: usize,
    /// WLS solves so far (R's `iter`).
    iteration: usize,
    /// The β the sites were last asked to evaluate (None: the start round).
    sent: Option<Vec<f64>>,
    previous: Option<Vec<f64>>,
    dev_old: f64,
    /// (X'WX)⁻¹ of the last solve and its rcond.
    covariance: Option<(DMatrix<f64>, f64)>,
    /// Diagonal of the start round's information: 0.1875·Σx² for a 0/1 outcome, so it gives
    /// each column's scale (to compare coefficient steps) and its unweighted mass.
    start_diag: Vec<f64>,
    finished: bool,
}

impl Irls {
    pub fn new(family: Family, names: Vec<String>) -> Result<Irls, FitError> {
        if family == Family::Gaussian {
            return Err(FitError::Unsupported { family });
        }
        Ok(Irls {
            family,
            names,
            max_iterations: MAX_ITERATIONS,
            iteration: 0,
            sent: None,
            previous: None,
            dev_old: f64::NAN,
            covariance: None,
            start_diag: Vec::new(),
            finished: false,
        })
    }

    /// R's `glm.control(maxit = k)`; default 25.
    pub fn with_max_iterations(mut self, k: usize) -> Irls {
        self.max_iterations = k.max(1);
        self
    }

    /// The coefficients the sites must evaluate next (`None`: the start round).
    pub fn beta(&self) -> Option<&[f64]> {
        self.sent.as_deref()
    }

    /// Consumes the summed contribution of the round asked for, and decides the next step.
    pub fn next(&mut self, total: &Contribution) -> Result<Step, FitError> {
        if self.finished {
            return Err(FitError::Finished);
        }
        let p = self.names.len();
        if total.family != self.family || total.p != p || total.score.len() != p {
            return Err(FitError::Mismatch(format!(
                "a {} contribution with {} columns for a {} model with {p}",
                total.family, total.p, self.family
            )));
        }
        if total.beta != self.sent {
            return Err(FitError::StaleRound { round: self.iteration });
        }
        if !total.deviance.is_finite() {
            return Err(FitError::NonFinite("deviance"));
        }
        if self.family == Family::Binomial && (total.sum_y == 0.0 || total.sum_y == total.n as f64) {
            let class = if total.sum_y == 0.0 { 0 } else { 1 };
            return Err(FitError::Separation {
                covariates: vec![self.names.first().cloned().unwrap_or_default()],
                detail: format!("the outcome is {class} in all {} complete cases", total.n),
            });
        }
        let Some(beta) = self.sent.clone() else {
            // Round 0: row-local start, R's devold; the score is X'Wz with β taken as 0.
            self.start_diag = (0..p).map(|j| total.information[j * p + j]).collect();
            self.dev_old = total.deviance;
            return self.solve(vec![0.0; p], total);
        };
        let change = (total.deviance - self.dev_old).abs() / (total.deviance.abs() + 0.1);
        if change < EPSILON {
            self.finished = true;
            return self.done(beta, total).map(Step::Done);
        }
        if self.iteration >= self.max_iterations {
            self.finished = true;
            self.check_separation(&beta, total, true)?;
            return Err(FitError::NonConvergence { iterations: self.iteration, change });
        }
        self.dev_old = total.deviance;
        self.solve(beta, total)
    }

    /// One Newton (= IRLS, canonical link) step from `base`.
    fn solve(&mut self, base: Vec<f64>, total: &Contribution) -> Result<Step, FitError> {
        let factored = match factor(&total.information, self.names.len(), &self.names) {
            Ok(f) => f,
            Err(FitError::Singular { aliased }) if self.family == Family::Binomial && total.boundary => {
                return Err(FitError::Separation {
                    covariates: aliased,
                    detail: "the information matrix became singular as fitted probabilities reached 0 or 1".to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        let step = factored.chol.solve(&DVector::from_column_slice(&total.score));
        let next: Vec<f64> = base.iter().zip(step.iter()).map(|(b, s)| b + s).collect();
        if next.iter().any(|v| !v.is_finite()) {
            return Err(FitError::NonFinite("coefficients"));
        }
        self.covariance = Some((factored.chol.inverse(), factored.rcond));
        self.iteration += 1;
        self.previous = self.sent.replace(next.clone());
        Ok(Step::Continue(next))
    }

    /// Separation: binomial, and either (a) the rows of some column carry almost no weight any
    /// more (mean μ(1−μ) over them below 1e-6: their fitted probabilities are all but 0 or 1,
    /// the quasi-complete case where R converges silently with a huge estimate and standard
    /// error), or (b) fitted probabilities are numerically 0 or 1 while coefficients still
    /// move, or (c) the fit is perfect. Names the columns concerned.
    fn check_separation(&self, beta: &[f64], total: &Contribution, stopped: bool) -> Result<(), FitError> {
        if self.family != Family::Binomial {
            return Ok(());
        }
        let Some(prev) = &self.previous else { return Ok(()) };
        let p = beta.len();
        let slope = |j: usize| -> bool { !(total.intercept && j == 0) };
        // Mean weight over column j's rows (weighted by x²); the start round's weights are all
        // (¼·¾) = 0.1875 for 0/1 outcomes, so its diagonal is 0.1875·Σx².
        let faded: Vec<usize> =
            (0..p).filter(|&j| slope(j) && total.information[j * p + j] * 0.1875 < 1e-6 * self.start_diag[j]).collect();
        let moves: Vec<f64> = (0..p)
            .map(|j| {
                if slope(j) { ((beta[j] - prev[j]) * (self.start_diag[j] / total.n as f64).sqrt()).abs() } else { 0.0 }
            })
            .collect();
        let max = moves.iter().copied().fold(0.0, f64::max);
        let perfect = total.deviance < 1e-6;
        let diverging = total.boundary && (max > 1e-3 || stopped);
        if faded.is_empty() && !perfect && !diverging {
            return Ok(());
        }
        // Of the faded columns (all of them under complete separation), name those still moving.
        let candidates: Vec<usize> = if faded.is_empty() { (0..p).filter(|&j| slope(j)).collect() } else { faded };
        let top = candidates.iter().map(|&j| moves[j]).fold(0.0, f64::max);
        let columns = candidates.iter().copied().filter(|&j| top <= 0.0 || moves[j] >= 0.1 * top);
        let mut covariates: Vec<String> = columns.map(|j| self.names[j].clone()).collect();
        if covariates.is_empty() {
            covariates = self.names.clone();
        }
        Err(FitError::Separation {
            covariates,
            detail: format!(
                "after {} iterations some fitted probabilities are numerically 0 or 1 and the residual deviance is {:.4}; drop or merge the covariate's sparse levels, or use penalised (Firth) regression",
                self.iteration, total.deviance
            ),
        })
    }

    fn done(&self, beta: Vec<f64>, total: &Contribution) -> Result<GlmFit, FitError> {
        self.check_separation(&beta, total, false)?;
        let Some((cov, rcond)) = &self.covariance else { return Err(FitError::Finished) };
        let p = self.names.len();
        let n = total.n as f64;
        let (null_deviance, null_df) = null_deviance(self.family, total);
        let aic = match self.family {
            // loglik = Σ log dbinom(y, 1, μ) = −deviance/2 for 0/1 outcomes.
            Family::Binomial => total.deviance + 2.0 * p as f64,
            // loglik = Σ(y ln μ − μ − ln y!) = −deviance/2 + Σ(y ln y − y − ln y!).
            Family::Poisson => {
                total.deviance - 2.0 * (total.sum_ylogy - total.sum_y - total.sum_lfact) + 2.0 * p as f64
            }
            Family::Gaussian => f64::NAN,
        };
        let mut warnings = Vec::new();
        if total.boundary {
            warnings.push(match self.family {
                Family::Poisson => "fitted rates numerically 0 occurred".to_owned(),
                _ => "fitted probabilities numerically 0 or 1 occurred".to_owned(),
            });
        }
        Ok(GlmFit {
            family: self.family,
            link: self.family.link(),
            coefficients: wald(&self.names, &beta, cov),
            covariance: row_major(cov, 1.0),
            n: total.n,
            dropped: total.dropped,
            deviance: total.deviance,
            residual_df: (n as u64).saturating_sub(p as u64),
            null_deviance,
            null_df: null_df as u64,
            aic,
            iterations: self.iteration,
            warnings,
            rcond: *rcond,
        })
    }
}

/// Null deviance from sums alone: the intercept-only fit of a canonical-link GLM has μ = ȳ;
/// without an intercept the null model is η = 0 (μ = ½ or 1), as R's `glm.fit`.
fn null_deviance(family: Family, t: &Contribution) -> (f64, f64) {
    let n = t.n as f64;
    let xlogx = |x: f64| if x > 0.0 { x * x.ln() } else { 0.0 };
    match (family, t.intercept) {
        (Family::Binomial, true) => {
            let (ones, zeros) = (t.sum_y, n - t.sum_y);
            (-2.0 * (xlogx(ones) + xlogx(zeros) - n * n.ln()), n - 1.0)
        }
        (Family::Binomial, false) => (2.0 * n * std::f64::consts::LN_2, n),
        (Family::Poisson, true) => {
            let mean = t.sum_y / n;
            let log_mean = if mean > 0.0 { mean.ln() } else { 0.0 };
            (2.0 * (t.sum_ylogy - t.sum_y * log_mean), n - 1.0)
        }
        (Family::Poisson, false) => (2.0 * (t.sum_ylogy - t.sum_y + n), n),
        (Family::Gaussian, _) => (f64::NAN, n),
    }
}
