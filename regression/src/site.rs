//! What a site computes from its own rows: sufficient statistics for the linear model, and one
//! IRLS round's contribution for a GLM. Only these aggregates leave the site.

use serde::Serialize;

use crate::design::{Design, Family, LevelCount};
use crate::error::DesignError;

/// Sufficient statistics of the linear model over one site's (or all sites') complete cases.
/// Matrices are p×p, stored in full (symmetric, so row- and column-major coincide).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sufficient {
    pub n: u64,
    pub dropped: u64,
    pub intercept: bool,
    pub p: usize,
    /// X'X.
    pub xtx: Vec<f64>,
    /// X'y.
    pub xty: Vec<f64>,
    /// y'y.
    pub yty: f64,
    /// Σy (for the centred total sum of squares, R²).
    pub sum_y: f64,
    pub levels: Vec<LevelCount>,
}

/// One IRLS round's contribution of a site, evaluated at the coefficients the coordinator sent
/// (`beta: Some`) or at the family's row-local starting values (`beta: None`, R's `mustart`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    pub family: Family,
    /// The coefficients this was evaluated at; `None` in the start round.
    pub beta: Option<Vec<f64>>,
    pub n: u64,
    pub dropped: u64,
    pub intercept: bool,
    pub p: usize,
    /// Fisher information X'WX (p×p, full), W = diag(dμ/dη) for the canonical link.
    pub information: Vec<f64>,
    /// X'W(z − Xβ) with z the working response: X'(y − μ) when evaluated at `beta`, and
    /// X'Wz (β taken as 0) in the start round, so that β_new = β + information⁻¹·score always.
    pub score: Vec<f64>,
    /// Σ deviance residuals at this round's μ.
    pub deviance: f64,
    /// Σy, Σ y ln y and Σ ln(y!): the null deviance and the Poisson log-likelihood need them.
    pub sum_y: f64,
    pub sum_ylogy: f64,
    pub sum_lfact: f64,
    /// Whether some row's fitted μ is numerically at the boundary (binomial: within 10ε of 0
    /// or 1; Poisson: below 10ε), R's test for its "fitted probabilities numerically 0 or 1"
    /// warning. A flag, not a count: rows past a half-space the coordinator chose by β would
    /// be a count without a floor.
    pub boundary: bool,
    pub levels: Vec<LevelCount>,
    /// The round's IRLS weights over all rows, for the site's disclosure check (rule R7 of
    /// docs/regression-plan.md); stays at the site.
    #[serde(skip)]
    pub weights: WeightSupport,
    /// Per design column, the weights over the rows where that column is non-zero: a β that
    /// puts the weight on one row (or one member of a level) shows as few effective rows
    /// there. Stays at the site.
    #[serde(skip)]
    pub support: Vec<WeightSupport>,
}

/// Σw and Σw² of a round's IRLS weights over some rows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WeightSupport {
    pub sum: f64,
    pub sum_sq: f64,
}

impl WeightSupport {
    /// Kish's effective number of rows, (Σw)² / Σw²: the row count when all weights are
    /// equal, about 1 when one row carries the weight; 0 without weight.
    pub fn effective_rows(&self) -> f64 {
        if self.sum_sq > 0.0 { self.sum * self.sum / self.sum_sq } else { 0.0 }
    }

    fn add(&mut self, other: &WeightSupport) {
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }
}

const EPS: f64 = f64::EPSILON;
/// R's `logit_linkinv` clamps η to ±30 (src/library/stats/src/family.c).
const THRESH: f64 = 30.0;

impl Design {
    /// X'X, X'y, y'y, Σy and n for the linear model.
    pub fn sufficient(&self) -> Sufficient {
        let (xtx, xty) = weighted_gram(&self.x, self.n, self.p(), &self.y);
        Sufficient {
            n: self.n as u64,
            dropped: self.dropped as u64,
            intercept: self.intercept,
            p: self.p(),
            xtx,
            xty,
            yty: self.stats.yty,
            sum_y: self.stats.sum_y,
            levels: self.levels.clone(),
        }
    }

    /// One IRLS round: information, score and deviance at `beta`, or at R's row-local starting
    /// values when `beta` is `None` (binomial μ = (y + ½)/2, Poisson μ = y + 0.1, Gaussian μ = y).
    pub fn contribution(&self, family: Family, beta: Option<&[f64]>) -> Result<Contribution, DesignError> {
        self.check_outcome(family)?;
        let (n, p) = (self.n, self.p());
        let y = &self.y;
        let start = beta.is_none();
        if let Some(b) = beta {
            if b.len() != p {
                return Err(DesignError::CoefficientCount { got: b.len(), expected: p });
            }
            if let Some(&bad) = b.iter().find(|v| !v.is_finite()) {
                return Err(DesignError::NonFiniteCoefficient(bad));
            }
        }
        // One pass over row blocks: η, μ, weights and residuals of a block stay in L1 while
        // its share of X'WX and X'r is accumulated.
        let mut gram = Gram::new(p);
        let (mut eta, mut w, mut r) = ([0.0; BLOCK], [0.0; BLOCK], [0.0; BLOCK]);
        let mut deviance = 0.0;
        let mut boundary = false;
        let mut weights = WeightSupport::default();
        let mut support = vec![WeightSupport::default(); p];
        let mut lo = 0;
        while lo < n {
            let hi = (lo + BLOCK).min(n);
            let len = hi - lo;
            let yb = &y[lo..hi];
            match beta {
                Some(b) => {
                    eta[..len].fill(0.0);
                    for (j, &bj) in b.iter().enumerate() {
                        for (e, &xij) in eta[..len].iter_mut().zip(&self.x[j * n + lo..j * n + hi]) {
                            *e += bj * xij;
                        }
                    }
                }
                None => {
                    for (e, &yi) in eta[..len].iter_mut().zip(yb) {
                        *e = match family {
                            Family::Gaussian => yi,
                            Family::Binomial => {
                                let mu = (yi + 0.5) / 2.0;
                                (mu / (1.0 - mu)).ln()
                            }
                            Family::Poisson => (yi + 0.1).ln(),
                        };
                    }
                }
            }
            for i in 0..len {
                let (yi, ei) = (yb[i], eta[i]);
                let (mu, wi, dev) = match family {
                    Family::Gaussian => (ei, 1.0, (yi - ei) * (yi - ei)),
                    Family::Binomial => {
                        // R's logit_linkinv and logit_mu_eta, clamps included.
                        let (mu, mu_eta) = if ei < -THRESH {
                            (EPS / (1.0 + EPS), EPS)
                        } else if ei > THRESH {
                            (1.0 / (1.0 + EPS), EPS)
                        } else {
                            let e = ei.exp();
                            let ope = 1.0 + e;
                            (e / ope, e / (ope * ope))
                        };
                        boundary |= !(10.0 * EPS..=1.0 - 10.0 * EPS).contains(&mu);
                        let dev = if yi == 1.0 { -2.0 * mu.ln() } else { -2.0 * (1.0 - mu).ln() };
                        (mu, mu_eta, dev)
                    }
                    Family::Poisson => {
                        let mu = ei.exp().max(EPS);
                        boundary |= mu < 10.0 * EPS;
                        let dev = if yi > 0.0 { 2.0 * (yi * (yi / mu).ln() - (yi - mu)) } else { 2.0 * mu };
                        (mu, mu, dev)
                    }
                };
                w[i] = wi;
                r[i] = if start { (yi - mu) + wi * ei } else { yi - mu };
                deviance += dev;
            }
            gram.add(&self.x, n, lo, &w[..len], &r[..len]);
            add_support(&mut weights, &mut support, &self.x, n, lo, &w[..len]);
            lo = hi;
        }
        let (information, score) = gram.finish();
        Ok(Contribution {
            family,
            beta: beta.map(<[f64]>::to_vec),
            n: n as u64,
            dropped: self.dropped as u64,
            intercept: self.intercept,
            p,
            information,
            score,
            deviance,
            sum_y: self.stats.sum_y,
            sum_ylogy: self.stats.sum_ylogy,
            sum_lfact: self.stats.sum_lfact,
            boundary,
            levels: self.levels.clone(),
            weights,
            support,
        })
    }
}

/// Rows per block: a block of p weighted columns stays in L1/L2 while the p(p+1)/2 dot products
/// of the upper triangle are taken over it.
const BLOCK: usize = 512;

/// Accumulates X'WX (upper triangle, mirrored at the end) and X'r over row blocks of a
/// column-major X.
struct Gram {
    p: usize,
    g: Vec<f64>,
    s: Vec<f64>,
    wx: Vec<f64>,
}

impl Gram {
    fn new(p: usize) -> Gram {
        Gram { p, g: vec![0.0; p * p], s: vec![0.0; p], wx: vec![0.0; p * BLOCK] }
    }

    /// Rows `lo .. lo + w.len()` (at most BLOCK) of the n-row matrix `x`.
    fn add(&mut self, x: &[f64], n: usize, lo: usize, w: &[f64], r: &[f64]) {
        let (p, len) = (self.p, w.len());
        let hi = lo + len;
        for j in 0..p {
            let col = &x[j * n + lo..j * n + hi];
            for ((d, &a), &b) in self.wx[j * BLOCK..j * BLOCK + len].iter_mut().zip(col).zip(w) {
                *d = a * b;
            }
        }
        for j in 0..p {
            let wxj = &self.wx[j * BLOCK..j * BLOCK + len];
            for k in j..p {
                self.g[j * p + k] += dot(wxj, &x[k * n + lo..k * n + hi]);
            }
            self.s[j] += dot(&x[j * n + lo..j * n + hi], r);
        }
    }

    fn finish(mut self) -> (Vec<f64>, Vec<f64>) {
        let p = self.p;
        for j in 0..p {
            for k in 0..j {
                self.g[j * p + k] = self.g[k * p + j];
            }
        }
        (self.g, self.s)
    }
}

/// Adds a block's weights (rows `lo .. lo + w.len()`) to the total and, per column, to the
/// rows where the column is non-zero. Branch-free (the mask multiplies), so it vectorises.
fn add_support(total: &mut WeightSupport, support: &mut [WeightSupport], x: &[f64], n: usize, lo: usize, w: &[f64]) {
    let hi = lo + w.len();
    total.add(&WeightSupport { sum: w.iter().sum(), sum_sq: dot(w, w) });
    for (j, s) in support.iter_mut().enumerate() {
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for (&xij, &wi) in x[j * n + lo..j * n + hi].iter().zip(w) {
            let on = f64::from(u8::from(xij != 0.0));
            sum += on * wi;
            sum_sq += on * wi * wi;
        }
        s.add(&WeightSupport { sum, sum_sq });
    }
}

impl Contribution {
    /// Adds another contribution's weight supports (used by [`Contribution::sum`]). Parts that
    /// came over the wire carry none; then the total has none either.
    pub(crate) fn add_support(&mut self, other: &Contribution) {
        if self.support.len() != other.support.len() {
            self.support.clear();
            self.weights = WeightSupport::default();
            return;
        }
        self.weights.add(&other.weights);
        for (t, o) in self.support.iter_mut().zip(&other.support) {
            t.add(o);
        }
    }
}

/// X'X and X'y in blocks (weights one).
fn weighted_gram(x: &[f64], n: usize, p: usize, y: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut gram = Gram::new(p);
    let ones = [1.0; BLOCK];
    let mut lo = 0;
    while lo < n {
        let hi = (lo + BLOCK).min(n);
        gram.add(x, n, lo, &ones[..hi - lo], &y[lo..hi]);
        lo = hi;
    }
    gram.finish()
}

/// Dot product with eight independent accumulators, so the compiler can vectorise and
/// pipeline it (a single running sum is a serial chain of dependent adds).
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}
