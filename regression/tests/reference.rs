//! Published results of R's own examples, compared at the precision R prints them.

mod common;

use common::*;
use verbund_regression::{DesignBuilder, Family, fit_linear};

fn strings(v: &[&str]) -> Vec<String> {
    levels(v)
}

/// Dobson (1990) Poisson example from R's `?glm` (stats package):
/// counts <- c(18,17,15,20,10,20,25,13,12); outcome <- gl(3,1,9); treatment <- gl(3,3)
/// glm.D93 <- glm(counts ~ outcome + treatment, family = poisson()); summary(glm.D93)
#[test]
fn dobson_poisson_matches_r() {
    let counts = [18.0, 17.0, 15.0, 20.0, 10.0, 20.0, 25.0, 13.0, 12.0].map(Some);
    let outcome: Vec<Option<&str>> = ["1", "2", "3", "1", "2", "3", "1", "2", "3"].map(Some).to_vec();
    let treatment: Vec<Option<&str>> = ["1", "1", "1", "2", "2", "2", "3", "3", "3"].map(Some).to_vec();
    let l = strings(&["1", "2", "3"]);
    let design = DesignBuilder::new(true)
        .categorical("outcome", &outcome, &l)
        .categorical("treatment", &treatment, &l)
        .outcome(&counts)
        .build()
        .expect("design");
    assert_eq!(design.names, ["(Intercept)", "outcome2", "outcome3", "treatment2", "treatment3"]);
    // Two "sites": rows 0..4 and 4..9 would need two designs; fit as one site here.
    let fit = federated_glm(Family::Poisson, &[design], 25).expect("fit");
    let c = &fit.coefficients;
    let close = |got: f64, want: f64, half_ulp: f64| (got - want).abs() <= half_ulp;
    // R prints 3.045e+00, -4.543e-01, -2.930e-01, 1.338e-15, 1.421e-15 (the last two are 0).
    assert!(close(c[0].estimate, 3.045, 5e-4), "{}", c[0].estimate);
    assert!(close(c[1].estimate, -0.4543, 5e-5), "{}", c[1].estimate);
    assert!(close(c[2].estimate, -0.2930, 5e-5), "{}", c[2].estimate);
    assert!(c[3].estimate.abs() < 1e-10 && c[4].estimate.abs() < 1e-10);
    // Std. Error 1.709e-01 2.022e-01 1.927e-01 2.000e-01 2.000e-01
    for (j, se) in [0.1709, 0.2022, 0.1927, 0.2000, 0.2000].iter().enumerate() {
        assert!(close(c[j].std_error, *se, 5e-5), "se {j}: {}", c[j].std_error);
    }
    // Null deviance: 10.5814 on 8; Residual deviance: 5.1291 on 4; AIC: 56.761; 4 iterations.
    assert!(close(fit.null_deviance, 10.5814, 5e-5), "{}", fit.null_deviance);
    assert_eq!(fit.null_df, 8);
    assert!(close(fit.deviance, 5.1291, 5e-5), "{}", fit.deviance);
    assert_eq!(fit.residual_df, 4);
    assert!(close(fit.aic, 56.761, 5e-4), "{}", fit.aic);
    assert_eq!(fit.iterations, 4);
    let text = fit.to_string();
    assert!(text.contains("    Null deviance: 10.5814  on 8  degrees of freedom"), "{text}");
    assert!(text.contains("Residual deviance:  5.1291  on 4  degrees of freedom"), "{text}");
    assert!(text.contains("AIC: 56.761"), "{text}");
    assert!(text.contains("Number of Fisher Scoring iterations: 4"), "{text}");
    assert!(text.contains("(Dispersion parameter for poisson family taken to be 1)"), "{text}");
    assert!(text.contains("(Intercept)  3.045e+00  1.709e-01  17.815  < 2e-16 ***"), "{text}");
    assert!(text.contains("outcome2    -4.543e-01  2.022e-01  -2.247   0.0246 *"), "{text}");
}

/// Dobson (1990, p. 9) plant weights from R's `?lm` (stats package):
/// lm.D9 <- lm(weight ~ group); summary(lm.D9)
#[test]
fn plant_weight_lm_matches_r() {
    let ctl = [4.17, 5.58, 5.18, 6.11, 4.50, 4.61, 5.17, 4.53, 5.33, 5.14];
    let trt = [4.81, 4.17, 4.41, 3.59, 5.87, 3.83, 6.03, 4.89, 4.32, 4.69];
    let weight: Vec<Option<f64>> = ctl.iter().chain(&trt).map(|&v| Some(v)).collect();
    let group: Vec<Option<&str>> = (0..20).map(|i| Some(if i < 10 { "Ctl" } else { "Trt" })).collect();
    let design = DesignBuilder::new(true)
        .categorical("group", &group, &strings(&["Ctl", "Trt"]))
        .outcome(&weight)
        .build()
        .expect("design");
    let fit = fit_linear(&design.sufficient(), &design.names).expect("fit");
    let text = fit.to_string();
    for line in [
        "            Estimate Std. Error t value Pr(>|t|)    ",
        "(Intercept)   5.0320     0.2202  22.850 9.55e-15 ***",
        "groupTrt     -0.3710     0.3114  -1.191    0.249    ",
        "Residual standard error: 0.6964 on 18 degrees of freedom",
        "Multiple R-squared:  0.07308,\tAdjusted R-squared:  0.02158 ",
        "F-statistic: 1.419 on 1 and 18 DF,  p-value: 0.249",
    ] {
        assert!(text.lines().any(|l| l == line), "missing line {line:?} in\n{text}");
    }
    let f = fit.f_statistic.as_ref().expect("F");
    assert!((f.value - 1.419).abs() < 5e-4);
}

/// R: glm(vs ~ mpg, family = binomial, data = mtcars) — the datasets package's Motor Trend data.
#[test]
fn mtcars_logistic_matches_r() {
    let mpg = [
        21.0, 21.0, 22.8, 21.4, 18.7, 18.1, 14.3, 24.4, 22.8, 19.2, 17.8, 16.4, 17.3, 15.2, 10.4, 10.4, 14.7, 32.4,
        30.4, 33.9, 21.5, 15.5, 15.2, 13.3, 19.2, 27.3, 26.0, 30.4, 15.8, 19.7, 15.0, 21.4,
    ];
    let vs = [
        0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0,
    ];
    let design =
        DesignBuilder::new(true).numeric("mpg", &mpg.map(Some)).outcome(&vs.map(Some)).build().expect("design");
    let fit = federated_glm(Family::Binomial, &[design], 25).expect("fit");
    eprintln!("{fit}");
    let c = &fit.coefficients;
    assert!((c[0].estimate - -8.8331).abs() < 5e-5, "{}", c[0].estimate);
    assert!((c[1].estimate - 0.4304).abs() < 5e-5, "{}", c[1].estimate);
    assert!((c[0].std_error - 3.1623).abs() < 5e-5, "{}", c[0].std_error);
    assert!((c[1].std_error - 0.1584).abs() < 5e-5, "{}", c[1].std_error);
    assert!((fit.null_deviance - 43.860).abs() < 5e-4, "{}", fit.null_deviance);
    assert!((fit.deviance - 25.533).abs() < 5e-4, "{}", fit.deviance);
    assert!((fit.aic - 29.533).abs() < 5e-4, "{}", fit.aic);
    assert_eq!(fit.iterations, 6);
}
