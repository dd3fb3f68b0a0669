//! The weights behind a round (rule R7 of docs/regression-plan.md): Σw and Σw² over all rows
//! and per column over the rows where it is non-zero, computed in the same pass as X'WX; and
//! the boundary reported as a flag.

mod common;

use common::*;
use verbund_regression::{Contribution, Design, DesignBuilder, Family, WeightSupport};

/// 40 rows: `x` is 0.1·i, `big` is 0 except row 7 (100), `g` alternates a/b/c; y is 0/1.
fn small() -> Design {
    let x: Vec<Option<f64>> = (0..40).map(|i| Some(0.1 * i as f64)).collect();
    let big: Vec<Option<f64>> = (0..40).map(|i| Some(if i == 7 { 100.0 } else { 0.0 })).collect();
    let g: Vec<Option<&str>> = (0..40).map(|i| Some(["a", "b", "c"][i % 3])).collect();
    let y: Vec<Option<f64>> = (0..40).map(|i| Some(((i * 5) % 3 == 0) as u8 as f64)).collect();
    DesignBuilder::new(true)
        .numeric("x", &x)
        .numeric("big", &big)
        .categorical("g", &g, &levels(&["a", "b", "c"]))
        .outcome(&y)
        .build()
        .expect("design")
}

/// The supports computed row by row from the weights `w`, for comparison.
fn by_rows(d: &Design, w: &[f64]) -> Vec<WeightSupport> {
    (0..d.p())
        .map(|j| {
            let rows = d.column(j).iter().zip(w).filter(|(x, _)| **x != 0.0);
            rows.fold(WeightSupport::default(), |s, (_, w)| WeightSupport { sum: s.sum + w, sum_sq: s.sum_sq + w * w })
        })
        .collect()
}

fn close(a: &[WeightSupport], b: &[WeightSupport]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x.sum - y.sum).abs() <= 1e-12 * y.sum.abs().max(1.0), "{x:?} vs {y:?}");
        assert!((x.sum_sq - y.sum_sq).abs() <= 1e-12 * y.sum_sq.abs().max(1.0), "{x:?} vs {y:?}");
    }
}

#[test]
fn gaussian_weights_count_the_rows_where_a_column_is_set() {
    let d = small();
    let c = d.contribution(Family::Gaussian, Some(&vec![0.0; d.p()])).expect("contribution");
    assert_eq!(d.names, ["(Intercept)", "x", "big", "gb", "gc"]);
    let sums: Vec<f64> = c.support.iter().map(|s| s.sum).collect();
    // x is 0 on row 0; big is set on one row; levels b and c have 13 rows each.
    assert_eq!(sums, [40.0, 39.0, 1.0, 13.0, 13.0]);
    assert_eq!(c.weights, WeightSupport { sum: 40.0, sum_sq: 40.0 });
    assert_eq!(c.weights.effective_rows(), 40.0);
    assert_eq!(c.support[2].effective_rows(), 1.0, "one row behind `big`");
    assert_eq!(WeightSupport::default().effective_rows(), 0.0, "no weight, no rows");
}

#[test]
fn binomial_supports_match_a_row_by_row_computation() {
    let d = small();
    for beta in [None, Some(vec![-0.5, 0.3, 0.01, 0.2, -0.4])] {
        let c = d.contribution(Family::Binomial, beta.as_deref()).expect("contribution");
        let w: Vec<f64> = (0..d.n)
            .map(|i| {
                let eta = match &beta {
                    None => {
                        let mu = (d.outcome()[i] + 0.5) / 2.0;
                        (mu / (1.0 - mu)).ln()
                    }
                    Some(b) => (0..d.p()).map(|j| b[j] * d.column(j)[i]).sum(),
                };
                let mu = 1.0 / (1.0 + (-eta).exp());
                mu * (1.0 - mu)
            })
            .collect();
        close(&c.support, &by_rows(&d, &w));
        close(&[c.weights], &[by_rows(&d, &w)[0]]);
        assert!(!c.boundary);
    }
}

#[test]
fn a_beta_that_weights_one_row_shows_as_one_effective_row() {
    // η = −20 + 0.2·big: 0 on row 7, −20 elsewhere. Its weight is ¼, the others' about 2e-9:
    // X'WX is then about ¼·x₇x₇', the row's own values.
    let d = small();
    let c = d.contribution(Family::Binomial, Some(&[-20.0, 0.0, 0.2, 0.0, 0.0])).expect("contribution");
    assert!(c.weights.effective_rows() < 1.001, "{:?}", c.weights);
    assert!(c.support[1].effective_rows() < 1.001, "x's rows are weighted by the one row too");
    let even = d.contribution(Family::Binomial, Some(&[0.0; 5])).expect("contribution");
    assert!((even.weights.effective_rows() - 40.0).abs() < 1e-9);
}

#[test]
fn boundary_is_a_flag() {
    let d = small();
    let c = d.contribution(Family::Binomial, Some(&[-40.0, 0.0, 0.0, 0.0, 0.0])).expect("contribution");
    assert!(c.boundary, "every μ is at 0");
    let json = serde_json::to_value(&c).expect("json");
    assert_eq!(json["boundary"], serde_json::Value::Bool(true));
    assert!(json.get("support").is_none() && json.get("weights").is_none(), "weights stay at the site: {json}");
    let c = d.contribution(Family::Poisson, Some(&[-40.0, 0.0, 0.0, 0.0, 0.0])).expect("contribution");
    assert!(c.boundary, "every rate is at 0");
}

#[test]
fn sums_add_supports_and_drop_them_when_a_part_has_none() {
    let d = small();
    let c = d.contribution(Family::Binomial, None).expect("contribution");
    let total = Contribution::sum(&[c.clone(), c.clone()]).expect("sum");
    let doubled: Vec<WeightSupport> =
        c.support.iter().map(|s| WeightSupport { sum: 2.0 * s.sum, sum_sq: 2.0 * s.sum_sq }).collect();
    assert_eq!(total.support, doubled);
    let wire = Contribution { support: Vec::new(), weights: WeightSupport::default(), ..c.clone() };
    let total = Contribution::sum(&[c, wire]).expect("sum");
    assert!(total.support.is_empty() && total.weights == WeightSupport::default());
}
