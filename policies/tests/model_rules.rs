//! The one checker for models, rule by rule (docs/regression-plan.md §3): each rule refuses
//! below its threshold and passes at it, a refusal holds no number of the data, and per profile
//! the right rules apply. The attacks each rule blocks are in `model_attacks.rs`.

mod model_common;

use model_common::*;
use verbund_policies::model::{CandidateNumbers, ModelFacts, ModelRefusal, RoundFacts, check_model_facts};
use verbund_policies::{Policy, Profile, release_model};
use verbund_proto::v1 as pb;
use verbund_regression::{Family, WeightSupport};

/// Facts that pass every rule of a k-only policy with k = 5 and the default [regression]:
/// 40 patients, p = 4 (intercept, age, sexmale, regionsouth).
fn facts() -> ModelFacts {
    use verbund_policies::model::{CategoricalFacts, CrossingFacts, LevelFacts};
    let level = |level: &str, patients, events| LevelFacts { level: level.into(), patients, events };
    ModelFacts {
        family: pb::ModelFamily::Binomial,
        n: 40,
        columns: ["(Intercept)", "age", "sexmale", "regionsouth"].map(String::from).to_vec(),
        events: 20,
        outcome_off_mode: 20,
        numeric: vec![("age".into(), 30)],
        categorical: vec![
            CategoricalFacts { column: "sex".into(), levels: vec![level("female", 20, 10), level("male", 20, 10)] },
            CategoricalFacts { column: "region".into(), levels: vec![level("north", 20, 10), level("south", 20, 10)] },
        ],
        crossings: vec![CrossingFacts { first: 0, second: 1, patients: vec![10, 10, 10, 10] }],
    }
}

fn k_only() -> Policy {
    Policy::with_min_cell_size(5).expect("policy")
}

fn check(policy: &Policy, facts: &ModelFacts) -> Result<(), ModelRefusal> {
    check_model_facts(policy, facts, 1)
}

/// Every number in a refusal's text and debug form is one of `allowed` (thresholds, the
/// request's p and sites): none comes from the data.
fn assert_no_data(refusal: &ModelRefusal, allowed: &[&str]) {
    let text = format!("{refusal} {refusal:?}");
    for token in
        text.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|t| t.chars().any(|c| c.is_ascii_digit()))
    {
        let token = token.trim_matches('.');
        assert!(allowed.contains(&token), "'{token}' in a refusal: {text}");
    }
}

#[test]
fn facts_that_pass_every_rule_pass() {
    assert_eq!(check(&k_only(), &facts()), Ok(()));
}

#[test]
fn r1_rows() {
    let mut f = facts();
    f.columns.truncate(1);
    (f.n, f.events) = (10, 5);
    assert_eq!(check(&k_only(), &f), Ok(()), "at min_rows_per_site");
    f.n = 9;
    let e = check(&k_only(), &f).unwrap_err();
    assert_eq!(e, ModelRefusal::TooFewRows { min: 10 });
    assert_no_data(&e, &["1", "10"]);
    let mut strict = k_only();
    strict.min_cell_size = 12;
    f.n = 11;
    assert_eq!(check(&strict, &f), Err(ModelRefusal::TooFewRows { min: 12 }), "at least k");
}

#[test]
fn r2_parameters_per_row() {
    let mut policy = k_only();
    policy.regression.max_parameters_per_row = 0.1;
    let mut f = facts();
    assert_eq!(check(&policy, &f), Ok(()), "4 columns for 40 rows is 0.1: at the limit");
    f.n = 39;
    let e = check(&policy, &f).unwrap_err();
    assert_eq!(e, ModelRefusal::TooManyParameters { p: 4, max: 0.1 });
    assert_no_data(&e, &["2", "4", "0.1"]);
}

#[test]
fn r3_levels_small_and_empty_alike() {
    // Gaussian: only R3 is asked here (R4 would look at the events of the small level).
    let mut at = facts();
    at.family = pb::ModelFamily::Gaussian;
    at.categorical[1].levels[1].patients = 5;
    assert_eq!(check(&k_only(), &at), Ok(()), "k patients in the level");
    at.categorical[1].levels[1].patients = 4;
    let small = check(&k_only(), &at).unwrap_err();
    let want = ModelRefusal::SmallLevel { column: "region".into(), level: "south".into(), k: 5 };
    assert_eq!(small, want);
    at.categorical[1].levels[1].patients = 0;
    assert_eq!(check(&k_only(), &at).unwrap_err(), small, "an empty level is refused as a small one");
    assert!(
        small.to_string().contains("level 'south' of 'region' has fewer than 5 patients at this site, possibly none")
    );
    assert_no_data(&small, &["3", "5"]);
}

#[test]
fn r4_outcome_classes_overall_and_within_levels() {
    let mut f = facts();
    f.events = 5;
    assert_eq!(check(&k_only(), &f), Ok(()));
    f.events = 4;
    let e = check(&k_only(), &f).unwrap_err();
    assert_eq!(e, ModelRefusal::OutcomeClass { place: String::new(), class: "the outcome 1", k: 5 });
    assert_no_data(&e, &["4", "1", "5"]);
    f.events = 36;
    assert!(matches!(check(&k_only(), &f), Err(ModelRefusal::OutcomeClass { class: "the outcome 0", .. })));
    let mut f = facts();
    f.categorical[0].levels[1].events = 15;
    assert_eq!(check(&k_only(), &f), Ok(()), "5 non-events among 20 males");
    f.categorical[0].levels[1].events = 16;
    let e = check(&k_only(), &f).unwrap_err();
    assert!(e.to_string().contains("with level 'male' of 'sex' have the outcome 0"), "{e}");
    assert_no_data(&e, &["4", "0", "5"]);
    let mut f = facts();
    f.family = pb::ModelFamily::Poisson;
    f.outcome_off_mode = 4;
    let e = check(&k_only(), &f).unwrap_err();
    assert_eq!(e, ModelRefusal::OutcomeNearConstant { k: 5 });
    f.outcome_off_mode = 5;
    assert_eq!(check(&k_only(), &f), Ok(()));
}

#[test]
fn r5_near_constant_numeric_covariates() {
    let mut f = facts();
    f.numeric[0].1 = 5;
    assert_eq!(check(&k_only(), &f), Ok(()));
    for off in [4, 1, 0] {
        f.numeric[0].1 = off;
        let e = check(&k_only(), &f).unwrap_err();
        assert_eq!(e, ModelRefusal::NearConstant { column: "age".into(), k: 5 });
        assert_no_data(&e, &["5"]);
    }
}

#[test]
fn r6_crossings_of_two_categorical_covariates() {
    let mut f = facts();
    f.crossings[0].patients = vec![15, 5, 5, 15];
    assert_eq!(check(&k_only(), &f), Ok(()));
    f.crossings[0].patients = vec![16, 4, 4, 16];
    let e = check(&k_only(), &f).unwrap_err();
    assert!(e.to_string().contains("level 'female' of 'sex' together with level 'south' of 'region'"), "{e}");
    assert_no_data(&e, &["6", "5"]);
    f.crossings[0].patients = vec![20, 0, 0, 20];
    assert_eq!(check(&k_only(), &f).unwrap_err(), e, "an empty crossing is refused as a small one");
}

/// Weights spread over `overall` effective rows, and `columns[j]` where column j is not 0.
fn round(overall: f64, columns: &[f64]) -> RoundFacts {
    // n equal weights give n effective rows.
    let even = |rows: f64| WeightSupport { sum: rows, sum_sq: rows };
    RoundFacts { weights: even(overall), support: columns.iter().map(|&c| even(c)).collect() }
}

#[test]
fn r7_round_weights() {
    let d = baseline_design(Family::Binomial);
    let facts = ModelFacts::of(&d, pb::ModelFamily::Binomial);
    let release = |r: Option<&RoundFacts>| release_model(&k_only(), &facts, r, contribution(&d, None, 1));
    assert!(release(Some(&round(10.0, &[10.0, 5.0, 5.0, 5.0, 5.0]))).is_ok(), "at both floors");
    let e = release(Some(&round(9.9, &[10.0, 5.0, 5.0, 5.0, 5.0]))).unwrap_err();
    assert_eq!(e, ModelRefusal::ConcentratedWeights { place: String::new(), min: 10 });
    assert_no_data(&e, &["7", "10"]);
    let e = release(Some(&round(10.0, &[10.0, 5.0, 4.9, 5.0, 5.0]))).unwrap_err();
    assert!(e.to_string().contains("where 'sexmale' is not 0"), "{e}");
    assert_no_data(&e, &["7", "0", "5"]);
    let e = release(None).unwrap_err();
    assert!(matches!(e, ModelRefusal::Mismatch(_)), "a round without its weights is not released");
    let mut short = round(10.0, &[10.0; 5]);
    short.support.pop();
    assert!(matches!(release(Some(&short)), Err(ModelRefusal::Mismatch(_))));
}

#[test]
fn r9_sites() {
    let mut policy = k_only();
    policy.regression.min_sites = 3;
    assert_eq!(check_model_facts(&policy, &facts(), 3), Ok(()));
    let e = check_model_facts(&policy, &facts(), 2).unwrap_err();
    assert_eq!(e, ModelRefusal::TooFewSites { sites: 2, min: 3 });
    assert_no_data(&e, &["9", "2", "3"]);
}

#[test]
fn profiles_choose_the_rules() {
    let mut bad = facts();
    bad.n = 1;
    bad.numeric[0].1 = 0;
    assert_eq!(check(&raw(), &bad), Ok(()), "test-only-raw applies no rule");
    let feasibility = Policy { profile: Profile::Feasibility, ..Policy::default() };
    assert_eq!(check(&feasibility, &facts()), Err(ModelRefusal::FeasibilityOnly));
    let dp = Policy::default();
    let e = check(&dp, &facts()).unwrap_err();
    assert!(e.to_string().contains("fits linear models only: a logistic fit"), "{e}");
    let mut linear = facts();
    linear.family = pb::ModelFamily::Gaussian;
    linear.numeric[0].1 = 0;
    linear.crossings[0].patients = vec![0, 20, 20, 0];
    assert_eq!(check(&dp, &linear), Ok(()), "under dp the noise covers R4–R6");
    linear.categorical[0].levels[0].patients = 4;
    assert!(matches!(check(&dp, &linear), Err(ModelRefusal::SmallLevel { .. })), "R3 holds under dp");
}

#[test]
fn candidates_must_suit_the_profile() {
    let d = baseline_design(Family::Gaussian);
    let facts = ModelFacts::of(&d, pb::ModelFamily::Gaussian);
    let exact = CandidateNumbers::Sufficient(d.sufficient());
    let dp = Policy::default();
    let e = release_model(&dp, &facts, None, candidate(exact.clone(), 1)).unwrap_err();
    assert!(matches!(e, ModelRefusal::Mismatch(_)), "exact numbers never leave a dp site");
    let noisy = CandidateNumbers::NoisySufficient(pb::NoisySufficientPart::default());
    assert!(release_model(&dp, &facts, None, candidate(noisy.clone(), 1)).is_ok());
    assert!(matches!(release_model(&k_only(), &facts, None, candidate(noisy, 1)), Err(ModelRefusal::Mismatch(_))));
    let logistic = ModelFacts { family: pb::ModelFamily::Binomial, ..facts.clone() };
    let e = release_model(&raw(), &logistic, None, candidate(exact, 1)).unwrap_err();
    assert!(matches!(e, ModelRefusal::Mismatch(_)), "a logistic model has no sufficient statistics: {e}");
}

#[test]
fn a_released_part_is_whole_and_in_wire_form() {
    let d = baseline_design(Family::Binomial);
    let facts = ModelFacts::of(&d, pb::ModelFamily::Binomial);
    let beta = vec![-0.2, 0.01, 0.3, -0.1, 0.2];
    let c = d.contribution(Family::Binomial, Some(&beta)).expect("contribution");
    let r = RoundFacts::of(&c);
    let part = release_model(&k_only(), &facts, Some(&r), candidate(CandidateNumbers::Contribution(c.clone()), 1))
        .expect("released");
    assert_eq!((part.attempt, part.round, &part.beta, &part.columns), (2, 3, &beta, &d.names));
    let Some(pb::model_part::Numbers::Contribution(numbers)) = &part.numbers else { panic!("{part:?}") };
    let p = d.p();
    assert_eq!(numbers.information.len(), p * (p + 1) / 2);
    assert_eq!(numbers.information[p], c.information[p + 1], "row 1 starts at its diagonal");
    assert_eq!((numbers.n, &numbers.score, numbers.boundary), (c.n, &c.score, false));
    let encoded = prost::Message::encode_to_vec(&pb::PartialResult { model: Some(part.clone()), ..Default::default() });
    let decoded: pb::PartialResult = prost::Message::decode(encoded.as_slice()).expect("decode");
    assert_eq!(decoded.model, Some(part));
}

#[test]
fn facts_are_counted_from_the_design() {
    let d = baseline_design(Family::Binomial);
    let f = ModelFacts::of(&d, pb::ModelFamily::Binomial);
    assert_eq!(f.n, 60);
    assert_eq!(f.columns, d.names);
    assert_eq!(f.events, d.outcome().iter().filter(|&&y| y == 1.0).count() as u64);
    assert_eq!(f.numeric, [("age".to_owned(), 59)], "60 distinct ages");
    let sex: Vec<u64> = f.categorical[0].levels.iter().map(|l| l.patients).collect();
    let region: Vec<u64> = f.categorical[1].levels.iter().map(|l| l.patients).collect();
    assert_eq!((sex, region), (vec![30, 30], vec![20, 20, 20]));
    assert_eq!(f.crossings[0].patients, [10; 6]);
    let events: u64 = f.categorical[1].levels.iter().map(|l| l.events).sum();
    assert_eq!(events, f.events);
    let zeros =
        design(&[(0.0, "female", "north", -0.0), (-0.0, "male", "south", 0.0)], &["north", "south"], Family::Gaussian);
    let f = ModelFacts::of(&zeros, pb::ModelFamily::Gaussian);
    assert_eq!((f.outcome_off_mode, &f.numeric), (0, &vec![("age".to_owned(), 0)]), "-0 and 0 are one value");
}

#[test]
fn the_regression_section_parses_with_defaults_and_checks() {
    let policy = Policy::from_toml("[regression]\nmin_sites = 3\non_refusal = \"refuse\"\n").expect("policy");
    assert_eq!(policy.regression.min_sites, 3);
    assert_eq!(policy.regression.min_rows_per_site, 10);
    assert_eq!((policy.regression.max_columns, policy.regression.max_rounds), (64, 26));
    let rules = policy.model_rules();
    assert_eq!((rules.min_sites, rules.refuse_if_any_site_refuses), (3, true));
    assert_eq!(rules.families, [pb::ModelFamily::Gaussian as i32], "dp fits linear models only");
    assert_eq!(k_only().model_rules().families.len(), 3);
    let e = Policy::from_toml("[regression]\nmin_site = 3\n").unwrap_err().to_string();
    assert!(e.contains("unknown field"), "{e}");
    let e = Policy::from_toml("[regression]\nmax_parameters_per_row = 1.5\n").unwrap_err().to_string();
    assert!(e.contains("max_parameters_per_row must be above 0 and at most 1"), "{e}");
    assert!(Policy::from_toml("[regression]\non_refusal = \"ignore\"\n").is_err());
    assert!(Policy::from_toml("[regression]\nmin_sites = 0\n").is_err());
}
