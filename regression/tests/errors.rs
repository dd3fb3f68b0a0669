//! Refusals with clear messages: singular designs, separation, non-convergence, invalid
//! outcomes, bad inputs; and missing values dropped and counted.

mod common;

use common::*;
use verbund_regression::{Contribution, DesignBuilder, DesignError, Family, FitError, Irls, Sufficient, fit_linear};

fn lin(n: usize) -> Vec<Option<f64>> {
    (0..n).map(|i| Some(((i * 7) % 11) as f64 + 0.1 * i as f64)).collect()
}

#[test]
fn duplicate_column_is_singular_and_named() {
    let x = lin(40);
    let y: Vec<Option<f64>> = (0..40).map(|i| Some((i % 5) as f64)).collect();
    let design =
        DesignBuilder::new(true).numeric("dose", &x).numeric("dose_copy", &x).outcome(&y).build().expect("design");
    let err = fit_linear(&design.sufficient(), &design.names).expect_err("singular");
    assert_eq!(err, FitError::Singular { aliased: vec!["dose_copy".to_owned()] });
    assert!(err.to_string().contains("`dose_copy` is a linear combination"), "{err}");
    let err = federated_glm(Family::Poisson, &[design], 25).expect_err("singular");
    assert!(matches!(err, FitError::Singular { ref aliased } if aliased == &["dose_copy"]), "{err}");
}

#[test]
fn empty_level_is_singular() {
    // Level "c" never occurs in the complete cases: its dummy column is all zero.
    let g: Vec<Option<&str>> = (0..30).map(|i| Some(if i % 2 == 0 { "a" } else { "b" })).collect();
    let y: Vec<Option<f64>> = (0..30).map(|i| Some(i as f64)).collect();
    let d =
        DesignBuilder::new(true).categorical("g", &g, &levels(&["a", "b", "c"])).outcome(&y).build().expect("design");
    let err = fit_linear(&d.sufficient(), &d.names).expect_err("singular");
    assert_eq!(err, FitError::Singular { aliased: vec!["gc".to_owned()] });
}

#[test]
fn perfect_predictor_is_separation() {
    let x: Vec<Option<f64>> = (0..60).map(|i| Some(i as f64 / 10.0)).collect();
    let noise: Vec<Option<f64>> = (0..60).map(|i| Some(((i * 13) % 7) as f64)).collect();
    let y: Vec<Option<f64>> = (0..60).map(|i| Some(if i >= 30 { 1.0 } else { 0.0 })).collect();
    let d = DesignBuilder::new(true).numeric("x", &x).numeric("noise", &noise).outcome(&y).build().expect("design");
    let err = federated_glm(Family::Binomial, &[d], 25).expect_err("separation");
    match &err {
        FitError::Separation { covariates, .. } => assert_eq!(covariates, &["x"], "{err}"),
        other => panic!("expected separation, got {other}"),
    }
    assert!(err.to_string().starts_with("separation: "), "{err}");
}

#[test]
fn level_with_only_events_is_separation() {
    // Quasi-complete separation: every row of level "c" has y = 1.
    let g: Vec<Option<&str>> = (0..90).map(|i| Some(["a", "b", "c"][i % 3])).collect();
    let y: Vec<Option<f64>> = (0..90).map(|i| Some(if i % 3 == 2 || i % 4 == 0 { 1.0 } else { 0.0 })).collect();
    let d =
        DesignBuilder::new(true).categorical("g", &g, &levels(&["a", "b", "c"])).outcome(&y).build().expect("design");
    let err = federated_glm(Family::Binomial, &[d], 25).expect_err("separation");
    match &err {
        FitError::Separation { covariates, .. } => assert_eq!(covariates, &["gc"], "{err}"),
        other => panic!("expected separation, got {other}"),
    }
}

#[test]
fn too_few_iterations_is_non_convergence() {
    let data = generate(500, 21);
    let d = design(&data, 0..500, Family::Binomial);
    let err = federated_glm(Family::Binomial, std::slice::from_ref(&d), 2).expect_err("not converged");
    match err {
        FitError::NonConvergence { iterations, change } => {
            assert_eq!(iterations, 2);
            assert!(change >= 1e-8);
        }
        other => panic!("expected non-convergence, got {other}"),
    }
    assert!(federated_glm(Family::Binomial, &[d], 25).is_ok());
}

#[test]
fn invalid_outcomes_are_refused() {
    let x: Vec<Option<f64>> = (0..4).map(|i| Some(i as f64)).collect();
    let build = |y: &[f64]| {
        DesignBuilder::new(true).numeric("x", &x).outcome(&y.iter().map(|&v| Some(v)).collect::<Vec<_>>()).build()
    };
    let d = build(&[0.0, 1.0, 2.0, 1.0]).expect("design");
    let err = d.contribution(Family::Binomial, None).expect_err("not 0/1");
    assert!(matches!(err, DesignError::InvalidOutcome { family: Family::Binomial, .. }));
    assert!(err.to_string().contains("must be 0 or 1, but 1 of 4 complete cases are not (the first is 2)"), "{err}");
    assert!(d.contribution(Family::Poisson, None).is_ok());
    for bad in [[0.0, 1.5, 2.0, 1.0], [0.0, -1.0, 2.0, 1.0]] {
        let d = build(&bad).expect("design");
        let err = d.contribution(Family::Poisson, None).expect_err("not a count");
        assert!(err.to_string().contains("non-negative whole number"), "{err}");
    }
    assert!(matches!(
        DesignBuilder::new(true).numeric("x", &[Some(f64::INFINITY)]).outcome(&[Some(1.0)]).build(),
        Err(DesignError::Infinite { .. })
    ));
}

#[test]
fn missing_values_are_dropped_and_counted() {
    let x = [Some(1.0), None, Some(3.0), Some(f64::NAN), Some(5.0), Some(6.0)];
    let g = [Some("a"), Some("b"), None, Some("a"), Some("b"), Some("a")];
    let y = [Some(1.0), Some(2.0), Some(3.0), Some(4.0), None, Some(6.5)];
    let d = DesignBuilder::new(true)
        .numeric("x", &x)
        .categorical("g", &g, &levels(&["a", "b"]))
        .outcome(&y)
        .build()
        .expect("design");
    assert_eq!((d.n, d.dropped), (2, 4));
    assert_eq!(d.column(1), [1.0, 6.0]);
    assert_eq!(d.outcome(), [1.0, 6.5]);
    assert_eq!(d.levels.iter().map(|l| l.rows).collect::<Vec<_>>(), [2, 0]);
    let s = d.sufficient();
    assert_eq!((s.n, s.dropped), (2, 4));
}

#[test]
fn bad_inputs_are_refused() {
    let y = [Some(1.0), Some(0.0)];
    let unknown =
        DesignBuilder::new(true).categorical("sex", &[Some("f"), Some("x")], &levels(&["f", "m"])).outcome(&y).build();
    assert!(matches!(unknown, Err(DesignError::UnknownLevel { ref value, .. }) if value == "x"));
    let short = DesignBuilder::new(true).numeric("x", &[Some(1.0)]).outcome(&y).build();
    assert!(matches!(short, Err(DesignError::LengthMismatch { got: 1, expected: 2, .. })));
    let none = DesignBuilder::new(true).numeric("x", &[None, Some(1.0)]).outcome(&[Some(1.0), None]).build();
    assert!(matches!(none, Err(DesignError::NoCompleteRows { dropped: 2 })));
    let one_level =
        DesignBuilder::new(true).categorical("g", &[Some("a"), Some("a")], &levels(&["a"])).outcome(&y).build();
    assert!(matches!(one_level, Err(DesignError::TooFewLevels { .. })));
}

#[test]
fn mismatched_sites_and_stale_rounds_are_refused() {
    let data = generate(300, 22);
    let a = design(&data, 0..150, Family::Gaussian);
    let b =
        DesignBuilder::new(true).numeric("age", &data.age[150..]).outcome(&data.y_linear[150..]).build().expect("b");
    let err = Sufficient::sum(&[a.sufficient(), b.sufficient()]).expect_err("shapes differ");
    assert!(matches!(err, FitError::Mismatch(_)), "{err}");

    let d = design(&data, 0..300, Family::Poisson);
    let mut irls = Irls::new(Family::Poisson, d.names.clone()).expect("irls");
    let stale = d.contribution(Family::Poisson, Some(&vec![0.0; d.p()])).expect("contribution");
    assert_eq!(irls.next(&stale), Err(FitError::StaleRound { round: 0 }));
    let start = d.contribution(Family::Poisson, None).expect("start");
    assert!(irls.next(&Contribution::sum(&[start]).expect("sum")).is_ok());
    assert!(matches!(Irls::new(Family::Gaussian, d.names), Err(FitError::Unsupported { .. })));
}

#[test]
fn no_residual_df_is_refused() {
    let d = DesignBuilder::new(true)
        .numeric("x", &[Some(1.0), Some(2.0)])
        .outcome(&[Some(1.0), Some(3.0)])
        .build()
        .expect("d");
    assert!(matches!(fit_linear(&d.sufficient(), &d.names), Err(FitError::NoResidualDf { .. })));
}

/// Noise larger than the residual variation makes y'y − β'X'y negative: refused, where
/// clamping it to zero printed zero standard errors and infinite t values.
#[test]
fn a_negative_residual_sum_of_squares_is_refused_not_clamped() {
    let data = generate(400, 29);
    let d = design(&data, 0..400, Family::Gaussian);
    let exact = d.sufficient();
    let fit = fit_linear(&exact, &d.names).expect("fit");
    assert!(fit.rss > 0.0);
    let mut noisy = exact.clone();
    noisy.yty -= 2.0 * fit.rss;
    let err = fit_linear(&noisy, &d.names).expect_err("a negative RSS");
    assert!(matches!(err, FitError::NegativeResidual { rss } if rss < 0.0), "{err}");
    // A perfect fit whose RSS rounds just below zero is still a fit.
    let mut rounded = exact;
    rounded.yty -= fit.rss + 1e-12 * rounded.yty;
    assert!(fit_linear(&rounded, &d.names).is_ok());
}

#[test]
fn fits_serialise_to_json() {
    let data = generate(400, 23);
    let d = design(&data, 0..400, Family::Gaussian);
    let fit = fit_linear(&d.sufficient(), &d.names).expect("fit");
    let text = fit.to_string();
    assert!(text.contains(&format!("  ({} observations deleted due to missingness)", d.dropped)), "{text}");
    assert!(text.lines().any(|l| l.starts_with("sexmale ")), "{text}");
    assert!(text.contains("95% confidence intervals:"), "{text}");
    let json = serde_json_like(&fit);
    assert!(json.contains("\"r_squared\""), "{json}");
}

fn serde_json_like<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("json")
}
