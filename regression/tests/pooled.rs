//! Federated fits (three sites, statistics summed) equal an independent pooled fit (QR of the
//! pooled design; R's glm.fit by QR of √W·X) to 1e-8 relative.

mod common;

use common::*;
use nalgebra::{DMatrix, DVector};
use verbund_regression::{Family, Sufficient, fit_linear};

const N: usize = 3000;
const SPLITS: [std::ops::Range<usize>; 3] = [0..1000, 1000..2200, 2200..N];

#[test]
fn linear_federated_equals_pooled_qr() {
    let data = generate(N, 11);
    let sites: Vec<_> = SPLITS.iter().map(|r| design(&data, r.clone(), Family::Gaussian)).collect();
    let total = Sufficient::sum(&sites.iter().map(|s| s.sufficient()).collect::<Vec<_>>()).expect("sum");
    let fit = fit_linear(&total, &sites[0].names).expect("fit");

    let pooled = design(&data, 0..N, Family::Gaussian);
    assert_eq!(fit.n as usize, pooled.n);
    assert_eq!(fit.dropped as usize, pooled.dropped);
    assert!(pooled.dropped > 0, "the data should have missing values");
    let (x, y) = matrix(&pooled);
    let (beta, se, rss) = qr_least_squares(&x, &y);
    for (j, c) in fit.coefficients.iter().enumerate() {
        assert_rel(&format!("beta {}", c.name), c.estimate, beta[j], 1e-8);
        assert_rel(&format!("se {}", c.name), c.std_error, se[j], 1e-8);
    }
    let df = (pooled.n - pooled.p()) as f64;
    assert_rel("sigma", fit.sigma, (rss / df).sqrt(), 1e-8);
    let mean = y.mean();
    let tss: f64 = y.iter().map(|v| (v - mean) * (v - mean)).sum();
    assert_rel("R²", fit.r_squared, 1.0 - rss / tss, 1e-8);
    assert_rel("adjusted R²", fit.adj_r_squared, 1.0 - (rss / df) / (tss / (pooled.n as f64 - 1.0)), 1e-8);
    assert_eq!(fit.residual_df as usize, pooled.n - pooled.p());
}

fn glm_federated_equals_pooled(family: Family, seed: u64) {
    let data = generate(N, seed);
    let sites: Vec<_> = SPLITS.iter().map(|r| design(&data, r.clone(), family)).collect();
    let fit = federated_glm(family, &sites, 25).expect("federated fit");

    let pooled = design(&data, 0..N, family);
    let (x, y) = matrix(&pooled);
    let want = pooled_irls(family, &x, &y);
    assert_eq!(fit.iterations, want.iterations, "Fisher scoring iterations");
    for (j, c) in fit.coefficients.iter().enumerate() {
        assert_rel(&format!("beta {}", c.name), c.estimate, want.beta[j], 1e-8);
        assert_rel(&format!("se {}", c.name), c.std_error, want.se[j], 1e-8);
    }
    assert_rel("deviance", fit.deviance, want.deviance, 1e-8);

    // Null deviance: the intercept-only model fitted by the pooled IRLS.
    let ones = DMatrix::from_element(pooled.n, 1, 1.0);
    let null = pooled_irls(family, &ones, &y);
    assert_rel("null deviance", fit.null_deviance, null.deviance, 1e-8);
    assert_eq!(fit.null_df as usize, pooled.n - 1);

    // AIC from the log-likelihood summed row by row at the fitted μ.
    let eta = &x * DVector::from_column_slice(&want.beta);
    let loglik: f64 = eta
        .iter()
        .zip(y.iter())
        .map(|(&e, &y)| match family {
            Family::Binomial => y * e - (1.0 + e.exp()).ln(),
            _ => y * e - e.exp() - statrs::function::gamma::ln_gamma(y + 1.0),
        })
        .sum();
    assert_rel("AIC", fit.aic, -2.0 * loglik + 2.0 * pooled.p() as f64, 1e-8);
}

#[test]
fn logistic_federated_equals_pooled_irls() {
    glm_federated_equals_pooled(Family::Binomial, 12);
}

#[test]
fn poisson_federated_equals_pooled_irls() {
    glm_federated_equals_pooled(Family::Poisson, 13);
}

/// The node's size: 100,000 rows × 11 columns. Not timed here; it checks that a contribution
/// over all rows equals the sum over two halves (the blocked kernel's edges) and prints the time.
#[test]
fn large_contribution_is_additive() {
    let n = 100_000;
    let mut data = generate(n, 14);
    let extra: Vec<Vec<Option<f64>>> =
        (0..5).map(|k| (0..n).map(|i| Some(((i * (k + 3)) % 17) as f64 / 17.0)).collect()).collect();
    data.y_binary.iter_mut().for_each(|v| *v = Some(v.unwrap_or(0.0)));
    let build = |r: std::ops::Range<usize>| {
        let mut b = verbund_regression::DesignBuilder::new(true)
            .numeric("age", &data.age[r.clone()])
            .numeric("bmi", &data.bmi[r.clone()])
            .categorical("region", &data.region[r.clone()], &levels(&REGIONS));
        for (k, col) in extra.iter().enumerate() {
            b = b.numeric(&format!("z{k}"), &col[r.clone()]);
        }
        b.outcome(&data.y_binary[r]).build().expect("design")
    };
    let all = build(0..n);
    assert_eq!(all.p(), 11);
    let beta: Vec<f64> = (0..11).map(|j| 0.01 * j as f64 - 0.05).collect();
    let mut fastest = std::time::Duration::MAX;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        std::hint::black_box(all.contribution(Family::Binomial, Some(&beta)).expect("contribution"));
        fastest = fastest.min(started.elapsed());
    }
    eprintln!("contribution over {} rows × {} columns: {fastest:?} (fastest of 5)", all.n, all.p());
    let whole = all.contribution(Family::Binomial, Some(&beta)).expect("contribution");
    let halves: Vec<_> = [0..n / 2 + 7, n / 2 + 7..n]
        .iter()
        .map(|r| build(r.clone()).contribution(Family::Binomial, Some(&beta)))
        .collect();
    let halves =
        verbund_regression::Contribution::sum(&halves.into_iter().map(|c| c.expect("half")).collect::<Vec<_>>())
            .expect("sum");
    for (a, b) in whole.information.iter().zip(&halves.information) {
        assert_rel("information", *a, *b, 1e-10);
    }
    for (a, b) in whole.score.iter().zip(&halves.score) {
        assert!((a - b).abs() <= 1e-8 * (1.0 + b.abs()), "score {a} vs {b}");
    }
    assert_rel("deviance", whole.deviance, halves.deviance, 1e-10);
    for j in 0..11 {
        for k in 0..11 {
            assert_eq!(whole.information[j * 11 + k], whole.information[k * 11 + j], "symmetric");
        }
    }
}
