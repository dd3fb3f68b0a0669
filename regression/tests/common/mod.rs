//! Deterministic test data and independent pooled fits (QR of the pooled design, not the
//! crate's Cholesky of summed statistics).
#![allow(dead_code)]

use nalgebra::{DMatrix, DVector};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use verbund_regression::{Design, DesignBuilder, Family};

pub const SEXES: [&str; 2] = ["female", "male"];
pub const REGIONS: [&str; 4] = ["north", "east", "south", "west"];

pub struct Data {
    pub age: Vec<Option<f64>>,
    pub bmi: Vec<Option<f64>>,
    pub sex: Vec<Option<&'static str>>,
    pub region: Vec<Option<&'static str>>,
    pub y_linear: Vec<Option<f64>>,
    pub y_binary: Vec<Option<f64>>,
    pub y_count: Vec<Option<f64>>,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller.
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random::<f64>();
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> f64 {
    let limit = (-lambda).exp();
    let (mut k, mut prod) = (0.0, rng.random::<f64>());
    while prod > limit {
        k += 1.0;
        prod *= rng.random::<f64>();
    }
    k
}

/// `n` rows with about 2% missing values in each covariate and outcome.
pub fn generate(n: usize, seed: u64) -> Data {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut d = Data {
        age: vec![],
        bmi: vec![],
        sex: vec![],
        region: vec![],
        y_linear: vec![],
        y_binary: vec![],
        y_count: vec![],
    };
    let region_effect = [0.0, 0.4, -0.6, 0.8];
    for _ in 0..n {
        let age = rng.random_range(20.0..80.0);
        let bmi = 27.0 + 4.0 * normal(&mut rng);
        let male = rng.random_range(0..2usize);
        let region = rng.random_range(0..4usize);
        let lin = 10.0 + 0.3 * age - 0.5 * bmi + 2.0 * male as f64 + 3.0 * region_effect[region];
        let eta_b = -3.0 + 0.04 * age + 0.08 * (bmi - 27.0) + 0.6 * male as f64 + region_effect[region];
        let eta_p = 0.2 + 0.015 * age - 0.03 * (bmi - 27.0) + 0.3 * male as f64 + 0.5 * region_effect[region];
        let mut miss = || rng.random::<f64>() < 0.02;
        let (m1, m2, m3, m4, m5) = (miss(), miss(), miss(), miss(), miss());
        d.age.push((!m1).then_some(age));
        d.bmi.push((!m2).then_some(bmi));
        d.sex.push((!m3).then_some(SEXES[male]));
        d.region.push((!m4).then_some(REGIONS[region]));
        d.y_linear.push((!m5).then_some(lin + 3.0 * normal(&mut rng)));
        let p = 1.0 / (1.0 + (-eta_b).exp());
        d.y_binary.push((!m5).then_some(if rng.random::<f64>() < p { 1.0 } else { 0.0 }));
        d.y_count.push((!m5).then_some(poisson(&mut rng, eta_p.exp())));
    }
    d
}

pub fn levels(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| (*s).to_owned()).collect()
}

/// The design of rows `range` with outcome `family`'s column.
pub fn design(d: &Data, range: std::ops::Range<usize>, family: Family) -> Design {
    let y = match family {
        Family::Gaussian => &d.y_linear,
        Family::Binomial => &d.y_binary,
        Family::Poisson => &d.y_count,
    };
    DesignBuilder::new(true)
        .numeric("age", &d.age[range.clone()])
        .numeric("bmi", &d.bmi[range.clone()])
        .categorical("sex", &d.sex[range.clone()], &levels(&SEXES))
        .categorical("region", &d.region[range.clone()], &levels(&REGIONS))
        .outcome(&y[range])
        .build()
        .expect("design")
}

pub fn matrix(d: &Design) -> (DMatrix<f64>, DVector<f64>) {
    let x = DMatrix::from_fn(d.n, d.p(), |i, j| d.column(j)[i]);
    (x, DVector::from_column_slice(d.outcome()))
}

/// Least squares by Householder QR of the pooled design: (β, SE, RSS).
pub fn qr_least_squares(x: &DMatrix<f64>, y: &DVector<f64>) -> (Vec<f64>, Vec<f64>, f64) {
    let qr = x.clone().qr();
    let r = qr.r();
    let qty = qr.q().transpose() * y;
    let beta = r.solve_upper_triangular(&qty).expect("full rank");
    let resid = y - x * &beta;
    let rss = resid.dot(&resid);
    let sigma2 = rss / (x.nrows() - x.ncols()) as f64;
    let rinv = r.solve_upper_triangular(&DMatrix::identity(x.ncols(), x.ncols())).expect("full rank");
    let se = (0..x.ncols()).map(|j| (sigma2 * rinv.row(j).norm_squared()).sqrt()).collect();
    (beta.iter().copied().collect(), se, rss)
}

pub struct PooledGlm {
    pub beta: Vec<f64>,
    pub se: Vec<f64>,
    pub deviance: f64,
    pub iterations: usize,
}

fn mu_eta(family: Family, eta: f64) -> (f64, f64) {
    match family {
        Family::Binomial => {
            let mu = 1.0 / (1.0 + (-eta).exp());
            (mu, mu * (1.0 - mu))
        }
        Family::Poisson => (eta.exp(), eta.exp()),
        Family::Gaussian => (eta, 1.0),
    }
}

fn deviance(family: Family, y: &DVector<f64>, mu: &[f64]) -> f64 {
    y.iter()
        .zip(mu)
        .map(|(&y, &m)| match family {
            Family::Binomial => -2.0 * if y == 1.0 { m.ln() } else { (1.0 - m).ln() },
            Family::Poisson => 2.0 * (if y > 0.0 { y * (y / m).ln() } else { 0.0 } - (y - m)),
            Family::Gaussian => (y - m) * (y - m),
        })
        .sum()
}

/// R's glm.fit on the pooled rows: working response, weighted least squares by QR of √W·X
/// every iteration, covariance from the last QR.
pub fn pooled_irls(family: Family, x: &DMatrix<f64>, y: &DVector<f64>) -> PooledGlm {
    let (n, p) = (x.nrows(), x.ncols());
    let mut eta: Vec<f64> = y
        .iter()
        .map(|&y| match family {
            Family::Binomial => {
                let m = (y + 0.5) / 2.0;
                (m / (1.0 - m)).ln()
            }
            _ => (y + 0.1).ln(),
        })
        .collect();
    let mut mu: Vec<f64> = eta.iter().map(|&e| mu_eta(family, e).0).collect();
    let mut dev_old = deviance(family, y, &mu);
    for iter in 1..=25 {
        let w: Vec<f64> = eta.iter().map(|&e| mu_eta(family, e).1).collect();
        let sw = DMatrix::from_fn(n, p, |i, j| x[(i, j)] * w[i].sqrt());
        let sz = DVector::from_fn(n, |i, _| (eta[i] + (y[i] - mu[i]) / w[i]) * w[i].sqrt());
        let qr = sw.qr();
        let r = qr.r();
        let beta = r.solve_upper_triangular(&(qr.q().transpose() * sz)).expect("full rank");
        let e = x * &beta;
        eta = e.iter().copied().collect();
        mu = eta.iter().map(|&e| mu_eta(family, e).0).collect();
        let dev = deviance(family, y, &mu);
        if (dev - dev_old).abs() / (dev.abs() + 0.1) < 1e-8 {
            let rinv = r.solve_upper_triangular(&DMatrix::identity(p, p)).expect("full rank");
            let se = (0..p).map(|j| rinv.row(j).norm_squared().sqrt()).collect();
            return PooledGlm { beta: beta.iter().copied().collect(), se, deviance: dev, iterations: iter };
        }
        dev_old = dev;
    }
    panic!("pooled IRLS did not converge");
}

#[track_caller]
pub fn assert_rel(what: &str, got: f64, want: f64, tol: f64) {
    let rel = (got - want).abs() / want.abs().max(f64::MIN_POSITIVE);
    assert!(rel <= tol, "{what}: got {got:.15e}, want {want:.15e} (relative difference {rel:.2e} > {tol:.0e})");
}

/// Runs the coordinator's IRLS against `sites`, as the node and coordinator will over the wire.
pub fn federated_glm(
    family: Family,
    sites: &[Design],
    max_iterations: usize,
) -> Result<verbund_regression::GlmFit, verbund_regression::FitError> {
    use verbund_regression::{Contribution, Irls, Step};
    let mut irls = Irls::new(family, sites[0].names.clone())?.with_max_iterations(max_iterations);
    loop {
        let parts: Vec<Contribution> =
            sites.iter().map(|s| s.contribution(family, irls.beta()).expect("contribution")).collect();
        if let Step::Done(fit) = irls.next(&Contribution::sum(&parts)?)? {
            return Ok(fit);
        }
    }
}
