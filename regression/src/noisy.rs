//! The coordinator's side of linear models under differential privacy: a site releases Z'Z
//! for Z = [1, x_1 .. x_{q-2}, y] in integer units (row value = centre + unit · v), with noise
//! on every entry; [`sufficient_from_noisy`] un-centres it exactly into a site's
//! [`Sufficient`], which are then summed over sites ([`Sufficient::sum`]) and fitted
//! ([`crate::fit_linear`]).
//!
//! Σ z_j z_k = n c_j c_k + c_j u_k S_k + c_k u_j S_j + u_j u_k S_jk, where S_jk is the entry
//! (j, k) of Z'Z in units, S_k = S_0k (the constant column is v = 1, centre 0, unit 1) and
//! n = S_00. The noise passes through unchanged in distribution: the result is post-processing.

use crate::{FitError, Sufficient};

/// Un-centres a site's noisy Z'Z into its sufficient statistics.
///
/// `zz` is Z'Z's upper triangle with the diagonal, row by row (q(q+1)/2 values); `centre` and
/// `unit` have one value per column of Z; column 0 must be the constant (centre 0, unit 1) and
/// column q−1 the outcome. With `intercept`, X is Z's columns 0..q−1 (the constant is the
/// intercept), else 1..q−1. Returns n = Z'Z[0,0] (noisy), X'X (full p×p), X'y, y'y and Σy;
/// `dropped` is 0 (not released under dp) and there are no level counts.
pub fn sufficient_from_noisy(
    zz: &[i64],
    centre: &[f64],
    unit: &[f64],
    intercept: bool,
) -> Result<Sufficient, FitError> {
    let q = centre.len();
    if q < 2 || unit.len() != q || zz.len() != q * (q + 1) / 2 {
        return Err(FitError::Mismatch(format!(
            "noisy statistics need q ≥ 2 columns with one centre and unit each and q(q+1)/2 entries; got {} centres, {} units and {} entries",
            centre.len(),
            unit.len(),
            zz.len()
        )));
    }
    if centre.iter().chain(unit).any(|v| !v.is_finite()) {
        return Err(FitError::NonFinite("a centre or unit of the noisy statistics"));
    }
    if centre[0] != 0.0 || unit[0] != 1.0 {
        return Err(FitError::Mismatch(
            "the first column of noisy statistics must be the constant (centre 0, unit 1)".into(),
        ));
    }
    if unit.iter().any(|u| *u <= 0.0) {
        return Err(FitError::Mismatch("a unit of the noisy statistics is not positive".into()));
    }
    let s = |j: usize, k: usize| -> f64 {
        let (j, k) = if j <= k { (j, k) } else { (k, j) };
        zz[j * q - j * j.saturating_sub(1) / 2 - j + k] as f64
    };
    let n = s(0, 0);
    if n < 1.0 {
        return Err(FitError::Mismatch("the noisy count of rows is not positive".into()));
    }
    let m = |j: usize, k: usize| -> f64 {
        n * centre[j] * centre[k]
            + centre[j] * unit[k] * s(0, k)
            + centre[k] * unit[j] * s(0, j)
            + unit[j] * unit[k] * s(j, k)
    };
    let y = q - 1;
    let columns: Vec<usize> = (usize::from(!intercept)..y).collect();
    let p = columns.len();
    if p == 0 {
        return Err(FitError::Mismatch("the model has no columns: add an intercept or a covariate".into()));
    }
    let mut xtx = vec![0.0; p * p];
    for (a, &j) in columns.iter().enumerate() {
        for (b, &k) in columns.iter().enumerate() {
            xtx[a * p + b] = m(j, k);
        }
    }
    let xty: Vec<f64> = columns.iter().map(|&j| m(j, y)).collect();
    let (yty, sum_y) = (m(y, y), m(0, y));
    if xtx.iter().chain(&xty).chain([&yty, &sum_y]).any(|v| !v.is_finite()) {
        return Err(FitError::NonFinite("the un-centred noisy statistics"));
    }
    Ok(Sufficient { n: n as u64, dropped: 0, intercept, p, xtx, xty, yty, sum_y, levels: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DesignBuilder;

    /// Z'Z in units of integer-valued data: no rounding, no noise.
    fn zz_of(rows: &[Vec<f64>], centre: &[f64], unit: &[f64]) -> Vec<i64> {
        let q = centre.len();
        let v = |r: &Vec<f64>, j: usize| ((r[j] - centre[j]) / unit[j]).round() as i64;
        let mut out = Vec::new();
        for j in 0..q {
            for k in j..q {
                out.push(rows.iter().map(|r| v(r, j) * v(r, k)).sum());
            }
        }
        out
    }

    #[test]
    fn integer_data_round_trips_exactly_with_and_without_intercept() {
        // Z = [1, age, smoker (dummy), y]; age centre 50 unit 1, y centre 10 unit 0.5.
        let data: Vec<(f64, f64, f64)> = (0..40)
            .map(|i| (30.0 + (i * 7 % 41) as f64, (i % 3 == 0) as u8 as f64, (i * 5 % 17) as f64 / 2.0))
            .collect();
        let rows: Vec<Vec<f64>> = data.iter().map(|&(a, s, y)| vec![1.0, a, s, y]).collect();
        let (centre, unit) = ([0.0, 50.0, 0.0, 10.0], [1.0, 1.0, 1.0, 0.5]);
        let zz = zz_of(&rows, &centre, &unit);
        for intercept in [true, false] {
            let age: Vec<Option<f64>> = data.iter().map(|d| Some(d.0)).collect();
            let smoker: Vec<Option<&str>> = data.iter().map(|d| Some(if d.1 == 1.0 { "yes" } else { "no" })).collect();
            let y: Vec<Option<f64>> = data.iter().map(|d| Some(d.2)).collect();
            let want = DesignBuilder::new(intercept)
                .numeric("age", &age)
                .categorical("smoker", &smoker, &["no".into(), "yes".into()])
                .outcome(&y)
                .build()
                .unwrap()
                .sufficient();
            let got = sufficient_from_noisy(&zz, &centre, &unit, intercept).unwrap();
            assert_eq!((got.n, got.p, got.intercept, got.dropped), (want.n, want.p, intercept, 0));
            assert_eq!(got.xtx, want.xtx, "intercept {intercept}");
            assert_eq!(got.xty, want.xty);
            assert_eq!((got.yty, got.sum_y), (want.yty, want.sum_y));
            assert!(got.levels.is_empty());
        }
    }

    #[test]
    fn wrong_shapes_and_values_are_errors() {
        let (c, u) = ([0.0, 1.0, 2.0], [1.0, 1.0, 1.0]);
        let zz = [10, 3, 4, 5, 6, 7];
        assert!(sufficient_from_noisy(&zz, &c, &u, true).is_ok());
        assert!(matches!(sufficient_from_noisy(&zz[..5], &c, &u, true), Err(FitError::Mismatch(_))));
        assert!(matches!(sufficient_from_noisy(&zz, &c, &u[..2], true), Err(FitError::Mismatch(_))));
        assert!(matches!(sufficient_from_noisy(&zz[..1], &c[..1], &u[..1], true), Err(FitError::Mismatch(_))));
        assert!(matches!(sufficient_from_noisy(&zz, &[0.0, f64::NAN, 2.0], &u, true), Err(FitError::NonFinite(_))));
        assert!(matches!(
            sufficient_from_noisy(&zz, &c, &[1.0, f64::INFINITY, 1.0], true),
            Err(FitError::NonFinite(_))
        ));
        assert!(matches!(sufficient_from_noisy(&zz, &[1.0, 1.0, 2.0], &u, true), Err(FitError::Mismatch(_))));
        assert!(matches!(sufficient_from_noisy(&zz, &c, &[1.0, 0.0, 1.0], true), Err(FitError::Mismatch(_))));
        let mut negative = zz;
        negative[0] = -3;
        assert!(matches!(sufficient_from_noisy(&negative, &c, &u, true), Err(FitError::Mismatch(_))));
        // Without intercept and without covariates there is nothing to fit.
        assert!(matches!(
            sufficient_from_noisy(&[10, 3, 4], &[0.0, 1.0], &[1.0, 1.0], false),
            Err(FitError::Mismatch(_))
        ));
        let huge = [10, i64::MAX, i64::MAX, i64::MAX, i64::MAX, i64::MAX];
        assert!(matches!(
            sufficient_from_noisy(&huge, &c, &[1.0, f64::MAX, f64::MAX], true),
            Err(FitError::NonFinite(_))
        ));
    }
}
