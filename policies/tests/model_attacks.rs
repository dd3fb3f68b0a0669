//! The attack each model rule blocks, shown succeeding under profile test-only-raw (no rule
//! applies) and refused under k-only (k = 5): the secret is read off the released part there,
//! and the refusal under k-only holds none of it.

mod model_common;

use model_common::*;
use verbund_policies::model::{CandidateNumbers, ModelFacts, ModelRefusal, RoundFacts};
use verbund_policies::{Policy, release_model};
use verbund_proto::v1 as pb;
use verbund_regression::{Design, DesignBuilder, Family};

fn k_only() -> Policy {
    Policy::with_min_cell_size(5).expect("policy")
}

/// The secret patient: 31.77 is their outcome, 95 their age.
const SECRET_Y: f64 = 31.77;

fn linear(d: &Design, policy: &Policy, sites: u32) -> Result<pb::SufficientPart, ModelRefusal> {
    let facts = ModelFacts::of(d, pb::ModelFamily::Gaussian);
    let part = release_model(policy, &facts, None, candidate(CandidateNumbers::Sufficient(d.sufficient()), sites))?;
    match part.numbers {
        Some(pb::model_part::Numbers::Sufficient(s)) => Ok(s),
        other => panic!("not sufficient statistics: {other:?}"),
    }
}

fn logistic(d: &Design, policy: &Policy, beta: Option<&[f64]>) -> Result<pb::ContributionPart, ModelRefusal> {
    let facts = ModelFacts::of(d, pb::ModelFamily::Binomial);
    let c = d.contribution(Family::Binomial, beta).expect("contribution");
    let round = RoundFacts::of(&c);
    let part = release_model(policy, &facts, Some(&round), candidate(CandidateNumbers::Contribution(c), 1))?;
    match part.numbers {
        Some(pb::model_part::Numbers::Contribution(c)) => Ok(c),
        other => panic!("not a contribution: {other:?}"),
    }
}

fn column(d: &Design, name: &str) -> usize {
    d.names.iter().position(|n| n == name).expect("column")
}

fn refused_without_secret(e: ModelRefusal, expected: fn(&ModelRefusal) -> bool) {
    assert!(expected(&e), "refused for another reason: {e}");
    let text = format!("{e} {e:?}");
    assert!(!text.contains("31.77") && !text.contains("95"), "the refusal holds the secret: {text}");
}

#[test]
fn r1_a_model_on_one_row_is_that_row() {
    let d = design(&[(95.0, "female", "north", SECRET_Y)], &REGIONS, Family::Gaussian);
    let d1 = DesignBuilder::new(true).outcome(&[Some(d.outcome()[0])]).build().expect("design");
    let s = linear(&d1, &raw(), 1).expect("raw releases");
    assert_eq!(s.xty[0] / s.n as f64, SECRET_Y, "Σy over one patient is their outcome");
    refused_without_secret(linear(&d1, &k_only(), 1).unwrap_err(), |e| matches!(e, ModelRefusal::TooFewRows { .. }));
}

#[test]
fn r2_a_saturated_design_is_refused() {
    // 12 rows, 6 numeric columns: with p close to n the fit interpolates single rows.
    let cols: Vec<Vec<Option<f64>>> =
        (0..6).map(|j| (0..12).map(|i| Some(((i * (j + 3)) % 11) as f64)).collect()).collect();
    let y: Vec<Option<f64>> = (0..12).map(|i| Some(if i == 4 { SECRET_Y } else { i as f64 })).collect();
    let mut b = DesignBuilder::new(false);
    for (j, c) in cols.iter().enumerate() {
        b = b.numeric(&format!("x{j}"), c);
    }
    let d = b.outcome(&y).build().expect("design");
    assert!(linear(&d, &raw(), 1).is_ok(), "raw releases a design of 0.5 parameters per row");
    refused_without_secret(linear(&d, &k_only(), 1).unwrap_err(), |e| {
        matches!(e, ModelRefusal::TooManyParameters { p: 6, .. })
    });
}

#[test]
fn r3_a_level_of_one_patient_gives_their_outcome() {
    let mut rows = baseline(Family::Gaussian);
    rows[7] = (95.0, "male", "west", SECRET_Y);
    let d = design(&rows, &["north", "south", "east", "west"], Family::Gaussian);
    let s = linear(&d, &raw(), 1).expect("raw releases");
    let (p, j) = (d.p(), column(&d, "regionwest"));
    assert_eq!(s.xtx[upper(p, j, j)], 1.0, "the level's count: one patient");
    assert_eq!(s.xty[j], SECRET_Y, "and their outcome");
    refused_without_secret(
        linear(&d, &k_only(), 1).unwrap_err(),
        |e| matches!(e, ModelRefusal::SmallLevel { level, .. } if level == "west"),
    );
}

#[test]
fn r4_a_level_whose_patients_all_had_the_event() {
    let mut rows = baseline(Family::Binomial);
    for r in rows.iter_mut().filter(|r| r.2 == "east") {
        r.3 = 1.0;
    }
    let d = design(&rows, &REGIONS, Family::Binomial);
    // At β = 0 every μ is ½: information = ¼·count and score = events − ½·count per dummy.
    let c = logistic(&d, &raw(), Some(&[0.0; 5])).expect("raw releases");
    let (p, j) = (d.p(), column(&d, "regioneast"));
    let count = 4.0 * c.information[upper(p, j, j)];
    let events = c.score[j] + count / 2.0;
    assert_eq!((count, events), (20.0, 20.0), "every patient of the region had the event");
    refused_without_secret(
        logistic(&d, &k_only(), Some(&[0.0; 5])).unwrap_err(),
        |e| matches!(e, ModelRefusal::OutcomeClass { place, .. } if place.contains("'east'")),
    );
}

#[test]
fn r5_a_numeric_indicator_of_one_patient_gives_their_outcome() {
    let rows = baseline(Family::Gaussian);
    let flag: Vec<Option<f64>> = (0..rows.len()).map(|i| Some(if i == 7 { 1.0 } else { 0.0 })).collect();
    let y: Vec<Option<f64>> = rows.iter().enumerate().map(|(i, r)| Some(if i == 7 { SECRET_Y } else { r.3 })).collect();
    let age: Vec<Option<f64>> = rows.iter().map(|r| Some(r.0)).collect();
    let d = DesignBuilder::new(true).numeric("age", &age).numeric("flag", &flag).outcome(&y).build().expect("design");
    let s = linear(&d, &raw(), 1).expect("raw releases");
    assert_eq!(s.xty[column(&d, "flag")], SECRET_Y, "Σ flag·y is the flagged patient's outcome");
    refused_without_secret(
        linear(&d, &k_only(), 1).unwrap_err(),
        |e| matches!(e, ModelRefusal::NearConstant { column, .. } if column == "flag"),
    );
}

#[test]
fn r6_a_crossing_of_one_patient_is_an_exact_cell() {
    let mut rows = baseline(Family::Gaussian);
    // Leave one male in the east: X'X of the two dummies counts him exactly.
    let mut kept = 0;
    for r in rows.iter_mut().filter(|r| r.1 == "male" && r.2 == "east") {
        kept += 1;
        if kept > 1 {
            r.1 = "female";
        }
    }
    let d = design(&rows, &REGIONS, Family::Gaussian);
    let s = linear(&d, &raw(), 1).expect("raw releases");
    let (a, b) = (column(&d, "sexmale"), column(&d, "regioneast"));
    assert_eq!(s.xtx[upper(d.p(), a, b)], 1.0, "one male patient in the east");
    refused_without_secret(
        linear(&d, &k_only(), 1).unwrap_err(),
        |e| matches!(e, ModelRefusal::SmallCrossing { second_level, .. } if second_level == "east"),
    );
}

#[test]
fn r7_a_beta_that_weights_one_row_gives_its_values() {
    let mut rows = baseline(Family::Binomial);
    rows[7].0 = 95.0;
    let d = design(&rows, &REGIONS, Family::Binomial);
    // η = 2·(age − 95): 0 for the secret patient, below −30 for everyone else (ages ≤ 79).
    let beta = [-190.0, 2.0, 0.0, 0.0, 0.0];
    let c = logistic(&d, &raw(), Some(&beta)).expect("raw releases");
    let p = d.p();
    let age = (c.information[upper(p, 1, 1)] / c.information[upper(p, 0, 0)]).sqrt();
    assert!((age - 95.0).abs() < 1e-6, "X'WX is the one row's x·x': age {age}");
    refused_without_secret(logistic(&d, &k_only(), Some(&beta)).unwrap_err(), |e| {
        matches!(e, ModelRefusal::ConcentratedWeights { .. })
    });
    assert!(logistic(&d, &k_only(), Some(&[0.0; 5])).is_ok(), "an honest β is answered");
}

#[test]
fn r9_a_part_not_summed_with_others_is_the_site_s_own() {
    let d = baseline_design(Family::Gaussian);
    let mut raw = raw();
    raw.regression.min_sites = 3;
    let s = linear(&d, &raw, 1).expect("raw releases");
    assert_eq!(s.n, 60, "the site's own figures reach the coordinator unsummed");
    let mut policy = k_only();
    policy.regression.min_sites = 3;
    refused_without_secret(linear(&d, &policy, 1).unwrap_err(), |e| matches!(e, ModelRefusal::TooFewSites { .. }));
    assert!(linear(&d, &policy, 3).is_ok());
}
