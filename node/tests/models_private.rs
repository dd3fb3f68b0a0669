//! Linear models under differential privacy at a node (docs/regression-plan.md §4, step 9),
//! through `Node::handle` as the link calls it: a noisy Z'Z once per model and data version,
//! charged `epsilon_per_model` once in the ledger (a repeat gets the same numbers for free),
//! near the exact statistics at 50,000 patients, GLMs and unbounded columns refused at no cost.
// Helpers build fixed test data; a failure there is a broken test, so panicking is right.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use verbund_ledger::Ledger;
use verbund_node::private::{Privacy, allowance};
use verbund_node::{Catalogue, Node, Refusal};
use verbund_policies::noise::NoiseKey;
use verbund_policies::{DatasetRule, ModelRefusal, Policy, PrivacyRefusal, Profile};
use verbund_proto::v1 as pb;
use verbund_regression::{DesignBuilder, fit_linear, sufficient_from_noisy};
use verbund_security::token::{DevIssuer, Verifier};

const PROJECT: &str = "study";

/// One patient: key, age, bmi, sex, y, event.
type Row = (String, f64, f64, &'static str, f64, f64);

/// `n` patients with y = 2 + 0.05 age + 0.3 bmi + 1.5 male + a deterministic wobble, every
/// value inside the declared bounds (so that clipping changes nothing).
fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let x = i as f64;
            let age = 20.0 + (x * 7.31) % 70.0;
            let bmi = 16.0 + (x * 3.77) % 24.0;
            let male = (i * 7) % 5 < 3;
            let wobble = 2.0 * ((x * 1.37).sin() + (x * 0.071).cos());
            let y = 2.0 + 0.05 * age + 0.3 * bmi + if male { 1.5 } else { 0.0 } + wobble;
            let event = if (i * 11) % 7 < 3 { 1.0 } else { 0.0 };
            (format!("p{i:06}"), age, bmi, if male { "male" } else { "female" }, y, event)
        })
        .collect()
}

fn catalogue(rows: &[Row], version: &str) -> Catalogue {
    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, true),
        Field::new("age", DataType::Float64, true),
        Field::new("bmi", DataType::Float64, true),
        Field::new("sex", DataType::Utf8, true),
        Field::new("y", DataType::Float64, true),
        Field::new("event", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(rows.iter().map(|r| Some(r.0.clone())).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| Some(r.1)).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| Some(r.2)).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| Some(r.3)).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| Some(r.4)).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| Some(r.5)).collect::<Vec<_>>())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
    let mut catalogue = Catalogue::new();
    let exposed: Vec<String> = ["age", "bmi", "sex", "y", "event"].iter().map(|c| c.to_string()).collect();
    catalogue.add_table("cohort", Arc::new(table), "patient_id", &exposed).unwrap();
    catalogue.set_version("cohort", version);
    catalogue
}

/// Profile dp, k = 5, bounds on age, bmi and y (and event, for the GLM refusal).
fn dp_policy() -> Policy {
    let mut rule = DatasetRule { name: "cohort".into(), one_row_per_patient: true, ..Default::default() };
    for (column, bounds) in [("age", [0.0, 100.0]), ("bmi", [10.0, 60.0]), ("y", [-20.0, 80.0]), ("event", [0.0, 1.0])]
    {
        rule.bounds.insert(column.into(), bounds);
    }
    let mut policy = Policy { profile: Profile::Dp, datasets: vec![rule], ..Policy::with_min_cell_size(5).unwrap() };
    policy.regression.epsilon_per_model = 1.0;
    policy.allowing(PROJECT)
}

struct Site {
    node: Node,
    token: String,
    ledger: Arc<Ledger>,
    policy: Policy,
    _dir: tempfile::TempDir,
}

/// A dp site with a fixed noise key (its noise is the same in every run: no flaky test).
fn site(catalogue: Catalogue, policy: Policy) -> Site {
    verbund_security::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let issuer = DevIssuer::generate("test-key", "https://idp.test", "verbund").unwrap();
    let auth = issuer.write_jwks(&dir.path().join("jwks.json")).unwrap();
    let verifier = Arc::new(Verifier::load(&auth).unwrap());
    let token = issuer.issue("alice", &[PROJECT], &["researcher"], Duration::from_secs(3600));
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.redb")).unwrap());
    let privacy = Privacy { key: NoiseKey::from_bytes(&[7; 32]).unwrap(), ledger: ledger.clone() };
    let node = Node::new("a", catalogue, policy.clone(), verifier).with_privacy(privacy);
    Site { node, token, ledger, policy, _dir: dir }
}

impl Site {
    async fn ask(&self, request: pb::ModelRequest) -> Result<pb::PartialResult, Refusal> {
        let q = pb::NodeQuery {
            query_id: format!("{}.{}.{}", request.fit_id, request.attempt, request.round),
            identity: Some(pb::Identity {
                researcher_token: self.token.clone(),
                researcher: "alice".into(),
                project: PROJECT.into(),
            }),
            timeout_ms: 0,
            query: None,
            model: Some(request),
        };
        self.node.handle(&q).await
    }

    /// ε spent by the project in this period, and the number of charges.
    fn spent(&self) -> (f64, u64) {
        let allowance = allowance(&self.policy).unwrap();
        let r = self.ledger.remaining(PROJECT, &allowance, SystemTime::now()).unwrap();
        (r.spent.epsilon(), r.queries)
    }
}

fn model(outcome: &str, family: pb::ModelFamily) -> pb::ModelQuery {
    let level = |s: &str| pb::Literal { value: Some(pb::literal::Value::String(s.into())) };
    pb::ModelQuery {
        dataset: "cohort".into(),
        outcome: outcome.into(),
        covariates: vec![
            pb::ModelCovariate { column: "age".into(), levels: vec![] },
            pb::ModelCovariate { column: "bmi".into(), levels: vec![] },
            pb::ModelCovariate { column: "sex".into(), levels: vec![level("female"), level("male")] },
        ],
        family: family as i32,
        ..Default::default()
    }
}

fn request(model: &pb::ModelQuery, step: pb::ModelStep, fit: &str) -> pb::ModelRequest {
    pb::ModelRequest {
        model: Some(model.clone()),
        step: step as i32,
        fit_id: fit.into(),
        attempt: 0,
        round: 0,
        beta: vec![],
        sites: 1,
    }
}

fn linear(fit: &str) -> pb::ModelRequest {
    request(&model("y", pb::ModelFamily::Gaussian), pb::ModelStep::Sufficient, fit)
}

fn noisy_part(answer: &pb::PartialResult) -> pb::NoisySufficientPart {
    match answer.model.as_ref().and_then(|m| m.numbers.clone()) {
        Some(pb::model_part::Numbers::NoisySufficient(z)) => z,
        other => panic!("expected noisy sufficient statistics, got {other:?}"),
    }
}

fn refused_by_rule(outcome: Result<pb::PartialResult, Refusal>) -> ModelRefusal {
    match outcome {
        Err(Refusal::Model(r)) => r,
        other => panic!("expected a model refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_same_model_twice_gets_the_same_numbers_and_is_charged_once() {
    let s = site(catalogue(&rows(2_000), "import-1"), dp_policy());
    assert_eq!(s.spent(), (0.0, 0));
    let first = s.ask(linear("fit-1")).await.unwrap();
    let cost = first.cost.expect("a dp answer says what it cost");
    assert!(!cost.repeat && (cost.epsilon - 1.0).abs() < 1e-9 && (cost.delta - 1e-7).abs() < 1e-15, "{cost:?}");
    assert_eq!(s.spent(), (1.0, 1), "epsilon_per_model once in the ledger");
    let part = first.model.clone().unwrap();
    assert_eq!(part.columns, ["(Intercept)", "age", "bmi", "sexmale"]);
    let z = noisy_part(&first);
    assert_eq!((z.zz.len(), z.centre.len(), z.unit.len(), z.scale.len()), (15, 5, 5, 15));
    assert_eq!((z.centre[0], z.unit[0], z.centre[3], z.unit[3]), (0.0, 1.0, 0.0, 1.0), "constant and dummy");
    assert_eq!((z.centre[1], z.centre[2], z.centre[4]), (50.0, 35.0, 30.0), "centres of the bounds");
    assert_ne!(z.zz[0], 2_000, "n is noisy");
    assert!((z.zz[0] - 2_000).abs() < 500, "{}", z.zz[0]);

    // Asked again, in another fit: the same numbers, a repeat, nothing charged.
    let again = s.ask(linear("fit-2")).await.unwrap();
    assert_eq!(again.model, first.model, "the same model over the same data gets the same numbers");
    let cost = again.cost.unwrap();
    assert!(cost.repeat && cost.epsilon == 0.0, "{cost:?}");
    assert_eq!(s.spent(), (1.0, 1));
}

#[tokio::test]
async fn new_data_gets_new_noise_and_a_new_charge() {
    let data = rows(2_000);
    let s = site(catalogue(&data, "import-1"), dp_policy());
    let first = noisy_part(&s.ask(linear("fit-1")).await.unwrap());
    s.node.engine().replace_catalogue(catalogue(&data, "import-2")).await;
    let second = s.ask(linear("fit-2")).await.unwrap();
    assert!(!second.cost.unwrap().repeat);
    let second = noisy_part(&second);
    assert_ne!(second.zz, first.zz, "the same rows under a new data version get new noise");
    assert_eq!(s.spent(), (2.0, 2));
    // New settings: new noise and a new charge too.
    let mut policy = dp_policy();
    policy.regression.min_rows_per_site = 20;
    let other = site(catalogue(&data, "import-1"), policy);
    let third = noisy_part(&other.ask(linear("fit-1")).await.unwrap());
    assert_ne!(third.zz, first.zz);
}

/// Fits the site's released part and the exact statistics of the same rows; returns the
/// largest coefficient error in exact standard errors.
async fn noisy_against_exact(n: usize, policy: Policy) -> f64 {
    let data = rows(n);
    let s = site(catalogue(&data, "import-1"), policy);
    let answer = s.ask(linear("fit-1")).await.unwrap();
    let names = answer.model.clone().unwrap().columns;
    let z = noisy_part(&answer);
    let noisy = sufficient_from_noisy(&z.zz, &z.centre, &z.unit, true).unwrap();
    let age: Vec<Option<f64>> = data.iter().map(|r| Some(r.1)).collect();
    let bmi: Vec<Option<f64>> = data.iter().map(|r| Some(r.2)).collect();
    let sex: Vec<Option<&str>> = data.iter().map(|r| Some(r.3)).collect();
    let y: Vec<Option<f64>> = data.iter().map(|r| Some(r.4)).collect();
    let exact = DesignBuilder::new(true)
        .numeric("age", &age)
        .numeric("bmi", &bmi)
        .categorical("sex", &sex, &["female".into(), "male".into()])
        .outcome(&y)
        .build()
        .unwrap()
        .sufficient();
    assert_eq!(noisy.p, exact.p);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1.0);
    let worst_xtx = noisy.xtx.iter().zip(&exact.xtx).map(|(a, b)| rel(*a, *b)).fold(0.0, f64::max);
    let worst_xty = noisy.xty.iter().zip(&exact.xty).map(|(a, b)| rel(*a, *b)).fold(0.0, f64::max);
    eprintln!("n {} vs {}; worst relative error X'X {worst_xtx:.2e}, X'y {worst_xty:.2e}", noisy.n, exact.n);
    assert!(worst_xtx < 2e-2 && worst_xty < 2e-2, "X'X {worst_xtx}, X'y {worst_xty}");
    assert!(rel(noisy.yty, exact.yty) < 2e-2 && rel(noisy.sum_y, exact.sum_y) < 2e-2);

    let got = fit_linear(&noisy, &names).unwrap();
    let want = fit_linear(&exact, &names).unwrap();
    let mut worst: f64 = 0.0;
    for (g, w) in got.coefficients.iter().zip(&want.coefficients) {
        let off = (g.estimate - w.estimate).abs();
        eprintln!(
            "{}: noisy {:.5} exact {:.5} (relative {:.2e}, {:.2} exact standard errors)",
            w.name,
            g.estimate,
            w.estimate,
            off / w.estimate.abs(),
            off / w.std_error
        );
        worst = worst.max(off / w.std_error);
    }
    worst
}

#[tokio::test]
async fn uncentred_noisy_statistics_at_50000_patients_are_near_the_exact_ones() {
    // At ε = 1 over P = 15 entries the privacy noise dominates the sampling error: over noise
    // keys 1..24 the worst coefficient was 2.4 to 26 exact standard errors off (median about
    // 6; slopes 0.2–15 % relative), entries of X'X and X'y at most 0.75 % off. The bound
    // below holds for all of them with margin; a wrong un-centring is orders of magnitude off.
    let worst = noisy_against_exact(50_000, dp_policy()).await;
    assert!(worst < 40.0, "coefficients within 40 exact standard errors at ε = 1: {worst}");
    // With next to no noise (ε = 10⁶) the site's integer units and the coordinator's
    // un-centring reproduce the exact fit: what is left above is the privacy noise.
    let mut policy = dp_policy();
    policy.regression.epsilon_per_model = 1e6;
    policy.budget.epsilon = 1e7;
    let worst = noisy_against_exact(50_000, policy).await;
    assert!(worst < 0.05, "{worst}");
}

#[tokio::test]
async fn glms_under_dp_are_refused_with_their_message_at_no_cost() {
    let s = site(catalogue(&rows(2_000), "import-1"), dp_policy());
    let rules = s.node.hello().model_rules.expect("model rules in the hello");
    assert_eq!(rules.families, [pb::ModelFamily::Gaussian as i32], "a dp site fits linear models only");
    for (family, label) in [(pb::ModelFamily::Binomial, "logistic"), (pb::ModelFamily::Poisson, "Poisson")] {
        let asked = request(&model("event", family), pb::ModelStep::Contribution, "fit-glm");
        let e = refused_by_rule(s.ask(asked).await);
        let text = e.to_string();
        assert!(matches!(e, ModelRefusal::FamilyUnderDp { .. }), "{e:?}");
        assert!(
            text.contains(&format!("fits linear models only: a {label} fit releases new information matrices"))
                && text.contains("ask at sites with profile k-only"),
            "{text}"
        );
    }
    // A linear model in contribution rounds: refused too (one noisy release per model).
    let rounds = request(&model("y", pb::ModelFamily::Gaussian), pb::ModelStep::Contribution, "fit-rounds");
    match s.ask(rounds).await {
        Err(Refusal::InvalidModel(e)) => assert!(e.to_string().contains("with step sufficient"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(s.spent(), (0.0, 0), "a refused GLM costs nothing");
}

#[tokio::test]
async fn a_dataset_without_bounds_is_refused_clearly_at_no_cost() {
    let mut policy = dp_policy();
    policy.datasets[0].bounds.remove("bmi");
    let s = site(catalogue(&rows(2_000), "import-1"), policy);
    let e = refused_by_rule(s.ask(linear("fit-1")).await);
    assert_eq!(
        e,
        ModelRefusal::Privacy(PrivacyRefusal::MissingBounds { dataset: "cohort".into(), column: "bmi".into() })
    );
    let text = e.to_string();
    assert!(text.contains("'bmi'") && text.contains("no clipping bounds") && text.contains("bounds = {"), "{text}");
    // The outcome needs bounds too.
    let mut policy = dp_policy();
    policy.datasets[0].bounds.remove("y");
    let s2 = site(catalogue(&rows(2_000), "import-1"), policy);
    let e = refused_by_rule(s2.ask(linear("fit-1")).await);
    assert!(
        matches!(e, ModelRefusal::Privacy(PrivacyRefusal::MissingBounds { ref column, .. }) if column == "y"),
        "{e:?}"
    );
    assert_eq!((s.spent(), s2.spent()), ((0.0, 0), (0.0, 0)));
}

#[tokio::test]
async fn r1_and_r3_hold_under_dp_and_a_refusal_is_paid_for_and_holds_no_count() {
    // 30 patients, 12 of them female: over the true floors (10 rows, 5 per level) but under
    // the noisy threshold (10 + the tail of the noise on n).
    let s = site(catalogue(&rows(30), "import-1"), dp_policy());
    let outcome = s.ask(linear("fit-1")).await;
    let text = format!("{outcome:?}");
    assert_eq!(refused_by_rule(outcome), ModelRefusal::TooFewRows { min: 10 });
    assert!(!text.contains("30") && !text.contains("12"), "{text}");
    assert_eq!(s.spent(), (1.0, 1), "charged before the rows were read: the refusal is paid for");
    // Under the true floor (8 patients): the same refusal, paid for the same way (were it free,
    // the cost would tell a true-floor refusal from a noisy one).
    let s = site(catalogue(&rows(8), "import-1"), dp_policy());
    assert_eq!(refused_by_rule(s.ask(linear("fit-1")).await), ModelRefusal::TooFewRows { min: 10 });
    assert_eq!(s.spent(), (1.0, 1));
    // A level with 3 patients among 2,000: R3, the level named, no count.
    let mut data = rows(2_000);
    for r in data.iter_mut() {
        r.3 = "male";
    }
    for r in data.iter_mut().take(3) {
        r.3 = "female";
    }
    let s = site(catalogue(&data, "import-1"), dp_policy());
    let e = refused_by_rule(s.ask(linear("fit-1")).await);
    assert_eq!(e, ModelRefusal::SmallLevel { column: "sex".into(), level: "female".into(), k: 5 });
}
