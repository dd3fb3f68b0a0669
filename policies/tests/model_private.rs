//! Linear models under dp (docs/regression-plan.md §4): the plan's calibration by hand, GLMs
//! and unbounded columns refused before anything runs, the seed (same model, same data: same
//! noise; new data or settings: new noise), and the release: noise on every entry, R1 and R3 on
//! true and noisy counts, R2 on the noisy n, R9, refusals without numbers of the data.

mod model_common;

use model_common::*;
use prost::Message;
use verbund_policies::model::{ModelFacts, check_model_facts};
use verbund_policies::model_private::{
    CovariateShape, ModelRound, ModelShape, canonical_model_request, model_seed, release_private_model,
};
use verbund_policies::noise::{NoiseKey, Scale};
use verbund_policies::{DatasetRule, ModelRefusal, Policy, PrivacyRefusal, Profile};
use verbund_proto::v1 as pb;
use verbund_regression::{Design, DesignBuilder, Family, fit_linear, sufficient_from_noisy};

const SEX: [&str; 2] = ["female", "male"];

/// Profile dp, k = 5, bounds age [0, 100] and y [0, 40] (both integer: unit 1).
fn dp() -> Policy {
    let mut rule = DatasetRule { name: "cohort".into(), one_row_per_patient: true, ..Default::default() };
    rule.bounds.insert("age".into(), [0.0, 100.0]);
    rule.bounds.insert("y".into(), [0.0, 40.0]);
    Policy { profile: Profile::Dp, datasets: vec![rule], ..Policy::default() }
}

fn levels() -> Vec<String> {
    SEX.iter().map(|s| s.to_string()).collect()
}

fn shape<'a>(family: pb::ModelFamily, levels: &'a [String]) -> ModelShape<'a> {
    ModelShape {
        dataset: "cohort",
        family,
        outcome: "y",
        outcome_integer: true,
        covariates: vec![
            CovariateShape::Numeric { column: "age", integer: true },
            CovariateShape::Categorical { column: "sex", levels },
        ],
    }
}

/// `n` patients: integer ages 20..89, `females` of them female, y = 5 + age / 5 (+ 0..2).
fn design(n: usize, females: usize) -> Design {
    let age: Vec<Option<f64>> = (0..n).map(|i| Some(20.0 + ((i * 7) % 70) as f64)).collect();
    let sex: Vec<Option<&str>> = (0..n).map(|i| Some(if i < females { "female" } else { "male" })).collect();
    let y: Vec<Option<f64>> =
        age.iter().zip(0..).map(|(a, i)| Some(5.0 + (a.unwrap_or(0.0) / 5.0).floor() + (i % 3) as f64)).collect();
    DesignBuilder::new(true)
        .numeric("age", &age)
        .categorical("sex", &sex, &levels())
        .outcome(&y)
        .build()
        .expect("design")
}

fn key() -> NoiseKey {
    NoiseKey::from_bytes(&[9; 32]).expect("key")
}

fn request(fit: &str, attempt: u32, sites: u32) -> pb::ModelRequest {
    pb::ModelRequest {
        model: Some(pb::ModelQuery { dataset: "cohort".into(), outcome: "y".into(), ..Default::default() }),
        step: pb::ModelStep::Sufficient as i32,
        fit_id: fit.into(),
        attempt,
        round: 0,
        beta: vec![],
        sites,
    }
}

fn seed_of(policy: &Policy, r: &pb::ModelRequest, version: &str) -> verbund_policies::noise::Seed {
    model_seed(policy, &key(), &canonical_model_request(r).encode_to_vec(), "cohort", version)
}

const ROUND: ModelRound = ModelRound { attempt: 0, round: 0, sites: 1 };

fn release(policy: &Policy, d: &Design, version: &str) -> Result<pb::ModelPart, ModelRefusal> {
    let l = levels();
    let plan = policy.plan_private_model(&shape(pb::ModelFamily::Gaussian, &l))?;
    let facts = ModelFacts::of(d, pb::ModelFamily::Gaussian);
    release_private_model(policy, &plan, &seed_of(policy, &request("f", 0, 1), version), &facts, d, ROUND)
}

fn noisy(part: &pb::ModelPart) -> &pb::NoisySufficientPart {
    match &part.numbers {
        Some(pb::model_part::Numbers::NoisySufficient(z)) => z,
        other => panic!("noisy statistics expected, got {other:?}"),
    }
}

/// The exact Z'Z in units of `design` under `dp()`: [1, age − 50, sexmale, y − 20].
fn exact_zz(d: &Design) -> Vec<i64> {
    let z: Vec<Vec<i64>> = vec![
        vec![1; d.n],
        d.column(1).iter().map(|a| (*a - 50.0) as i64).collect(),
        d.column(2).iter().map(|s| *s as i64).collect(),
        d.outcome().iter().map(|y| (*y - 20.0) as i64).collect(),
    ];
    let mut out = Vec::new();
    for j in 0..4 {
        for k in j..4 {
            out.push(z[j].iter().zip(&z[k]).map(|(a, b)| a * b).sum());
        }
    }
    out
}

#[test]
fn the_plan_matches_hand_computed_scales_thresholds_and_cost() {
    let l = levels();
    let plan = dp().plan_private_model(&shape(pb::ModelFamily::Gaussian, &l)).expect("plan");
    // Z = [1, age, sexmale, y]: q = 4, P = 10 entries share ε = 1.
    let names: Vec<&str> = plan.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["(constant)", "age", "sexmale", "y"]);
    let cu: Vec<(f64, f64, u64)> = plan.columns.iter().map(|c| (c.centre, c.unit, c.bound)).collect();
    assert_eq!(cu, [(0.0, 1.0, 1), (50.0, 1.0, 50), (0.0, 1.0, 1), (20.0, 1.0, 20)]);
    // t_jk = b_j · b_k · P / ε, row by row.
    let want = [10.0, 500.0, 10.0, 200.0, 25_000.0, 500.0, 10_000.0, 10.0, 200.0, 4_000.0];
    let got: Vec<f64> = plan.scales.iter().map(Scale::as_f64).collect();
    assert_eq!(got, want);
    // Thresholded: n and both levels of sex, δ = 1e-7 shared; the reference is n − a draw.
    let t = Scale::laplace(1, 10, 1_000_000);
    assert_eq!(plan.rows_threshold, 10 + t.tail(1e-7 / 3.0) as i64);
    assert_eq!(plan.level_threshold, 5 + t.tail(1e-7 / 3.0) as i64);
    assert_eq!(plan.reference_thresholds, [(2, 5 + 2 * t.tail(1e-7 / 6.0) as i64)]);
    assert_eq!((plan.epsilon, plan.delta), (1.0, 1e-7));
    let charge = plan.charge();
    assert_eq!((charge.epsilon, charge.delta), (1.0, 1e-7));
    let mut cheaper = dp();
    cheaper.regression.epsilon_per_model = 0.5;
    let plan = cheaper.plan_private_model(&shape(pb::ModelFamily::Gaussian, &l)).expect("plan");
    assert_eq!((plan.epsilon, plan.scales[0].as_f64()), (0.5, 20.0));
}

#[test]
fn glms_and_unbounded_columns_are_refused_before_anything_runs() {
    let l = levels();
    for family in [pb::ModelFamily::Binomial, pb::ModelFamily::Poisson] {
        let e = dp().plan_private_model(&shape(family, &l)).unwrap_err();
        assert!(matches!(e, ModelRefusal::FamilyUnderDp { max_rounds: 26, .. }), "{e:?}");
        assert!(e.to_string().contains("fits linear models only"), "{e}");
    }
    let mut unbounded = dp();
    unbounded.datasets[0].bounds.remove("y");
    let e = unbounded.plan_private_model(&shape(pb::ModelFamily::Gaussian, &l)).unwrap_err();
    assert_eq!(
        e,
        ModelRefusal::Privacy(PrivacyRefusal::MissingBounds { dataset: "cohort".into(), column: "y".into() })
    );
    assert!(e.to_string().contains("bounds = { y = [low, high] }"), "{e}");
    unbounded.datasets.clear();
    let e = unbounded.plan_private_model(&shape(pb::ModelFamily::Gaussian, &l)).unwrap_err();
    assert!(matches!(e, ModelRefusal::Privacy(PrivacyRefusal::MissingBounds { ref column, .. }) if column == "age"));
    let k_only = Policy { profile: Profile::KOnly, ..dp() };
    assert!(matches!(k_only.plan_private_model(&shape(pb::ModelFamily::Gaussian, &l)), Err(ModelRefusal::Mismatch(_))));
}

#[test]
fn the_seed_is_the_models_over_its_data_and_settings_not_the_fits() {
    let p = dp();
    let base = seed_of(&p, &request("fit-1", 0, 1), "v1");
    assert_eq!(seed_of(&p, &request("fit-2", 3, 4), "v1"), base, "fit id, attempt and sites are cleared");
    assert_ne!(seed_of(&p, &request("fit-1", 0, 1), "v2"), base, "new data, new noise");
    let mut other = request("fit-1", 0, 1);
    other.model.as_mut().expect("model").outcome = "z".into();
    assert_ne!(seed_of(&p, &other, "v1"), base, "another model");
    let mut settings = dp();
    settings.regression.epsilon_per_model = 0.5;
    assert_ne!(seed_of(&settings, &request("fit-1", 0, 1), "v1"), base, "new settings, new noise");
    assert_eq!(settings.mechanism_digest("cohort"), p.mechanism_digest("cohort"), "aggregate noise unchanged");
    assert_ne!(settings.model_mechanism_digest("cohort"), p.model_mechanism_digest("cohort"));
}

#[test]
fn every_entry_gets_noise_of_its_scale_and_the_coordinator_recovers_the_fit() {
    let d = design(20_000, 9_000);
    let part = release(&dp(), &d, "v1").expect("released");
    assert_eq!(part.columns, d.names);
    let z = noisy(&part);
    assert_eq!((z.centre.as_slice(), z.unit.as_slice()), ([0.0, 50.0, 0.0, 20.0].as_slice(), [1.0; 4].as_slice()));
    let exact = exact_zz(&d);
    for (i, ((got, want), scale)) in z.zz.iter().zip(&exact).zip(&z.scale).enumerate() {
        assert_ne!(got, want, "entry {i} has noise");
        // Discrete Laplace: P(|Z| > 20 t) = exp(−20): never at this fixed key.
        assert!(((got - want) as f64).abs() < 20.0 * scale, "entry {i}: {got} vs {want} at scale {scale}");
    }
    assert_eq!(release(&dp(), &d, "v1").expect("released"), part, "the same model and data: the same part");
    assert_ne!(noisy(&release(&dp(), &d, "v2").expect("released")).zz, z.zz);
    // Un-centred and fitted at 20,000 rows: the noise dominates the sampling error (over noise
    // keys 1..39 the coefficients were up to 18 exact standard errors off, typically 3–6).
    let s = sufficient_from_noisy(&z.zz, &z.centre, &z.unit, true).expect("sufficient");
    let got = fit_linear(&s, &d.names).expect("fit");
    let want = fit_linear(&d.sufficient(), &d.names).expect("fit");
    for (g, w) in got.coefficients.iter().zip(&want.coefficients) {
        assert!((g.estimate - w.estimate).abs() < 30.0 * w.std_error, "{g:?} vs {w:?}");
    }
}

#[test]
fn r1_r3_on_true_and_noisy_counts_r2_on_the_noisy_n_and_r9() {
    let p = dp();
    // True floors: 8 rows (R1), a level of 3 patients (R3).
    assert_eq!(release(&p, &design(8, 4), "v"), Err(ModelRefusal::TooFewRows { min: 10 }));
    let small = ModelRefusal::SmallLevel { column: "sex".into(), level: "female".into(), k: 5 };
    assert_eq!(release(&p, &design(2_000, 3), "v"), Err(small.clone()));
    // Over the true floors, under the noisy thresholds: the same refusals.
    assert_eq!(release(&p, &design(60, 30), "v"), Err(ModelRefusal::TooFewRows { min: 10 }));
    assert_eq!(release(&p, &design(2_000, 40), "v"), Err(small));
    let reference = release(&p, &design(2_000, 1_960), "v").unwrap_err();
    assert!(matches!(reference, ModelRefusal::SmallLevel { ref level, .. } if level == "male"), "{reference:?}");
    assert!(release(&p, &design(2_000, 1_000), "v").is_ok());
    // R2 on the noisy n only: the true-fact check lets it through under dp.
    let mut tight = dp();
    tight.regression.max_parameters_per_row = 0.0014;
    let d = design(2_000, 1_000);
    assert_eq!(check_model_facts(&tight, &ModelFacts::of(&d, pb::ModelFamily::Gaussian), 1), Ok(()));
    assert_eq!(release(&tight, &d, "v"), Err(ModelRefusal::TooManyParameters { p: 3, max: 0.0014 }));
    // R9.
    let mut network = dp();
    network.regression.min_sites = 3;
    let l = levels();
    let plan = network.plan_private_model(&shape(pb::ModelFamily::Gaussian, &l)).expect("plan");
    let facts = ModelFacts::of(&d, pb::ModelFamily::Gaussian);
    let seed = seed_of(&network, &request("f", 0, 2), "v");
    let two = ModelRound { sites: 2, ..ROUND };
    assert_eq!(
        release_private_model(&network, &plan, &seed, &facts, &d, two),
        Err(ModelRefusal::TooFewSites { sites: 2, min: 3 })
    );
}

#[test]
fn refusals_hold_no_number_and_mismatches_release_nothing() {
    let p = dp();
    for d in [design(60, 30), design(2_000, 40), design(8, 4)] {
        let e = release(&p, &d, "v").unwrap_err();
        let text = format!("{e:?} {e}");
        for number in ["60", "30", "40", "2000", "1960"] {
            assert!(!text.contains(number), "{number} in {text}");
        }
    }
    // A design without the planned columns, or a profile without noise: nothing released.
    let l = levels();
    let plan = p.plan_private_model(&shape(pb::ModelFamily::Gaussian, &l)).expect("plan");
    let seed = seed_of(&p, &request("f", 0, 1), "v");
    let other = baseline_design(Family::Gaussian);
    let facts = ModelFacts::of(&other, pb::ModelFamily::Gaussian);
    assert!(matches!(release_private_model(&p, &plan, &seed, &facts, &other, ROUND), Err(ModelRefusal::Mismatch(_))));
    let d = design(2_000, 1_000);
    let facts = ModelFacts::of(&d, pb::ModelFamily::Gaussian);
    let k_only = Policy { profile: Profile::KOnly, ..dp() };
    assert!(matches!(release_private_model(&k_only, &plan, &seed, &facts, &d, ROUND), Err(ModelRefusal::Mismatch(_))));
}
