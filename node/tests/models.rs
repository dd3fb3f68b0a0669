//! A node answers model requests (docs/regression-plan.md §1 "Node", step 5), through
//! `Node::handle` as the link calls it: the numbers equal the regression crate's on the same
//! rows, every part leaves through the policy's one checker, and refusals (R1, R8, one row per
//! patient, new data mid-fit) carry no part and none of the data's values.
// Helpers build fixed test data; a failure there is a broken test, so panicking is right.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use std::sync::Arc;
use std::time::Duration;
use verbund_node::{Catalogue, Node, Refusal};
use verbund_policies::{ModelRefusal, Policy, PrivacyRefusal, Profile};
use verbund_proto::v1 as pb;
use verbund_regression::{Design, DesignBuilder, Family};
use verbund_security::token::{DevIssuer, Verifier};

const PROJECT: &str = "study";
/// A value only the data holds: no refusal may contain it.
const SENTINEL: f64 = 31.77;

/// One patient's row: key, age, bmi, sex, outcome y (numeric), event (0/1).
type Row = (String, Option<f64>, f64, Option<&'static str>, Option<f64>, f64);

/// `n` patients with keys p000.., some values missing; the first patient's bmi is the sentinel.
fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let x = i as f64;
            let age = if i % 13 == 5 { None } else { Some(30.0 + (x * 7.0) % 41.0) };
            let sex = if i % 17 == 3 { None } else { Some(if i % 3 == 0 { "female" } else { "male" }) };
            let bmi = if i == 0 { SENTINEL } else { 20.0 + (x * 3.3) % 15.0 };
            let y = Some(1.5 + 0.3 * x + (x * 1.7).sin());
            let event = if (i * 7) % 5 < 2 { 1.0 } else { 0.0 };
            (format!("p{i:03}"), age, bmi, sex, y, event)
        })
        .collect()
}

/// The rows as a catalogue, stored in reverse order (the node sorts by patient key).
fn catalogue(rows: &[Row]) -> Catalogue {
    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, true),
        Field::new("age", DataType::Float64, true),
        Field::new("bmi", DataType::Float64, true),
        Field::new("sex", DataType::Utf8, true),
        Field::new("y", DataType::Float64, true),
        Field::new("event", DataType::Float64, true),
    ]));
    let r: Vec<&Row> = rows.iter().rev().collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(r.iter().map(|r| Some(r.0.clone())).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(r.iter().map(|r| r.1).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(r.iter().map(|r| Some(r.2)).collect::<Vec<_>>())),
        Arc::new(StringArray::from(r.iter().map(|r| r.3).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(r.iter().map(|r| r.4).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(r.iter().map(|r| Some(r.5)).collect::<Vec<_>>())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
    let mut catalogue = Catalogue::new();
    let exposed: Vec<String> = ["age", "bmi", "sex", "y", "event"].iter().map(|c| c.to_string()).collect();
    catalogue.add_table("cohort", Arc::new(table), "patient_id", &exposed).unwrap();
    catalogue
}

/// The design the node should build: the same rows in patient-key order.
fn design(rows: &[Row], outcome: impl Fn(&Row) -> Option<f64>) -> Design {
    let age: Vec<Option<f64>> = rows.iter().map(|r| r.1).collect();
    let sex: Vec<Option<&str>> = rows.iter().map(|r| r.3).collect();
    let y: Vec<Option<f64>> = rows.iter().map(outcome).collect();
    DesignBuilder::new(true)
        .numeric("age", &age)
        .categorical("sex", &sex, &["female".to_string(), "male".to_string()])
        .outcome(&y)
        .build()
        .unwrap()
}

struct Site {
    node: Node,
    token: String,
    _dir: tempfile::TempDir,
}

fn site(catalogue: Catalogue, policy: Policy) -> Site {
    verbund_security::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let issuer = DevIssuer::generate("test-key", "https://idp.test", "verbund").unwrap();
    let auth = issuer.write_jwks(&dir.path().join("jwks.json")).unwrap();
    let verifier = Arc::new(Verifier::load(&auth).unwrap());
    let token = issuer.issue("alice", &[PROJECT], &["researcher"], Duration::from_secs(3600));
    Site { node: Node::new("a", catalogue, policy, verifier), token, _dir: dir }
}

fn k_only() -> Policy {
    Policy::with_min_cell_size(5).unwrap().allowing(PROJECT)
}

fn model(outcome: &str, family: pb::ModelFamily) -> pb::ModelQuery {
    let level = |s: &str| pb::Literal { value: Some(pb::literal::Value::String(s.into())) };
    pb::ModelQuery {
        dataset: "cohort".into(),
        outcome: outcome.into(),
        covariates: vec![
            pb::ModelCovariate { column: "age".into(), levels: vec![] },
            pb::ModelCovariate { column: "sex".into(), levels: vec![level("female"), level("male")] },
        ],
        family: family as i32,
        ..Default::default()
    }
}

fn request(model: &pb::ModelQuery, step: pb::ModelStep, fit: &str, round: u32, beta: &[f64]) -> pb::ModelRequest {
    pb::ModelRequest {
        model: Some(model.clone()),
        step: step as i32,
        fit_id: fit.into(),
        attempt: 0,
        round,
        beta: beta.to_vec(),
        sites: 1,
    }
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
}

fn upper(full: &[f64], p: usize) -> Vec<f64> {
    (0..p).flat_map(|j| full[j * p + j..(j + 1) * p].to_vec()).collect()
}

fn refused_by_rule(outcome: Result<pb::PartialResult, Refusal>) -> ModelRefusal {
    match outcome {
        Err(Refusal::Model(r)) => r,
        other => panic!("expected a model refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn linear_sufficient_statistics_equal_the_crates_on_the_same_rows() {
    let data = rows(60);
    let s = site(catalogue(&data), k_only());
    let m = model("y", pb::ModelFamily::Gaussian);
    let answer = s.ask(request(&m, pb::ModelStep::Sufficient, "fit-1", 0, &[])).await.unwrap();
    let part = answer.model.expect("a model part");
    assert!(answer.groups.is_empty());
    assert_eq!(part.columns, ["(Intercept)", "age", "sexmale"]);
    let Some(pb::model_part::Numbers::Sufficient(got)) = part.numbers else { panic!("sufficient statistics") };
    let want = design(&data, |r| r.4).sufficient();
    assert!(want.dropped > 0, "the test data has incomplete rows");
    assert_eq!((got.n, got.dropped), (want.n, want.dropped));
    assert_eq!(got.xtx, upper(&want.xtx, want.p), "X'X bit for bit: rows are read in patient-key order");
    assert_eq!(got.xty, want.xty);
    assert_eq!((got.yty, got.sum_y), (want.yty, want.sum_y));
    assert_eq!(s.node.engine().cached_model_designs(), 1);
}

#[tokio::test]
async fn contribution_rounds_equal_the_crates_at_the_start_and_at_the_coordinators_beta() {
    let data = rows(80);
    let s = site(catalogue(&data), k_only());
    let m = model("event", pb::ModelFamily::Binomial);
    let pooled = design(&data, |r| Some(r.5));
    let beta = [-0.4, 0.01, 0.2];
    for (round, at) in [(0, None), (1, Some(&beta[..]))] {
        let asked = request(&m, pb::ModelStep::Contribution, "fit-2", round, at.unwrap_or(&[]));
        let part = s.ask(asked).await.unwrap().model.expect("a model part");
        assert_eq!((part.round, part.beta.as_slice()), (round, at.unwrap_or(&[])));
        let Some(pb::model_part::Numbers::Contribution(got)) = part.numbers else { panic!("a contribution") };
        let want = pooled.contribution(Family::Binomial, at).unwrap();
        assert_eq!(got.information, upper(&want.information, want.p), "round {round}");
        assert_eq!(got.score, want.score);
        assert_eq!((got.deviance, got.sum_y, got.boundary), (want.deviance, want.sum_y, want.boundary));
        assert_eq!((got.n, got.dropped), (want.n, want.dropped));
    }
}

#[tokio::test]
async fn r8_rounds_come_in_order_and_each_round_for_one_beta() {
    let s = site(catalogue(&rows(80)), k_only());
    let m = model("event", pb::ModelFamily::Binomial);
    let ask = |round, beta: &[f64]| s.ask(request(&m, pb::ModelStep::Contribution, "fit-3", round, beta));
    let e = refused_by_rule(ask(1, &[0.0, 0.0, 0.0]).await);
    assert_eq!(e, ModelRefusal::RoundOutOfOrder { round: 1, expected: 0 });
    ask(0, &[]).await.unwrap();
    let e = refused_by_rule(ask(2, &[0.0, 0.0, 0.0]).await);
    assert_eq!(e, ModelRefusal::RoundOutOfOrder { round: 2, expected: 1 });
    let first = ask(1, &[-0.4, 0.01, 0.2]).await.unwrap();
    let again = ask(1, &[-0.4, 0.01, 0.2]).await.unwrap();
    assert_eq!(first.model, again.model, "the same coefficients get the same numbers");
    let refused = ask(1, &[-0.4, 0.02, 0.2]).await;
    assert!(matches!(&refused, Err(Refusal::Model(ModelRefusal::RoundRepeated { round: 1 }))), "{refused:?}");
    // A new attempt starts again at round 0; older attempts are over.
    let restart = |attempt, round| {
        let mut r = request(&m, pb::ModelStep::Contribution, "fit-3", round, &[]);
        r.attempt = attempt;
        s.ask(r)
    };
    restart(1, 0).await.unwrap();
    assert_eq!(refused_by_rule(restart(0, 0).await), ModelRefusal::AttemptOutOfOrder { attempt: 0 });
    assert_eq!(refused_by_rule(restart(4, 0).await), ModelRefusal::TooManyAttempts { max: 3 });
    let late = s.ask(request(&m, pb::ModelStep::Contribution, "fit-4", 26, &[0.0; 3])).await;
    assert_eq!(refused_by_rule(late), ModelRefusal::TooManyRounds { max: 26 });
}

#[tokio::test]
async fn r1_refuses_a_handful_of_rows_with_no_part_and_none_of_the_data() {
    let s = site(catalogue(&rows(11)), k_only());
    let m = model("y", pb::ModelFamily::Gaussian);
    let outcome = s.ask(request(&m, pb::ModelStep::Sufficient, "fit-5", 0, &[])).await;
    let text = format!("{outcome:?}");
    assert_eq!(refused_by_rule(outcome), ModelRefusal::TooFewRows { min: 10 });
    assert!(!text.contains(&SENTINEL.to_string()) && !text.contains("31.7"), "{text}");
    // Test-only-raw answers the same rows: the rule, not the data, refused.
    let raw = Policy { profile: Profile::TestOnlyRaw, ..k_only() };
    let s = site(catalogue(&rows(11)), raw);
    assert!(s.ask(request(&m, pb::ModelStep::Sufficient, "fit-5", 0, &[])).await.unwrap().model.is_some());
}

#[tokio::test]
async fn a_replaced_catalogue_empties_the_cache_and_new_data_mid_fit_restarts_it() {
    let data = rows(80);
    let s = site(catalogue(&data), k_only());
    let m = model("event", pb::ModelFamily::Binomial);
    s.ask(request(&m, pb::ModelStep::Contribution, "fit-6", 0, &[])).await.unwrap();
    assert_eq!(s.node.engine().cached_model_designs(), 1);
    let mut newer = catalogue(&data);
    newer.set_version("cohort", "import-2");
    s.node.engine().replace_catalogue(newer).await;
    assert_eq!(s.node.engine().cached_model_designs(), 0);
    let next = s.ask(request(&m, pb::ModelStep::Contribution, "fit-6", 1, &[-0.4, 0.01, 0.2])).await;
    assert_eq!(refused_by_rule(next), ModelRefusal::DataChanged);
    let mut restart = request(&m, pb::ModelStep::Contribution, "fit-6", 0, &[]);
    restart.attempt = 1;
    s.ask(restart).await.unwrap();
}

#[tokio::test]
async fn more_than_one_row_per_patient_is_refused() {
    let mut data = rows(40);
    data[7].0 = data[6].0.clone();
    let s = site(catalogue(&data), k_only());
    let m = model("y", pb::ModelFamily::Gaussian);
    let outcome = s.ask(request(&m, pb::ModelStep::Sufficient, "fit-7", 0, &[])).await;
    match outcome {
        Err(Refusal::InvalidModel(e)) => assert!(e.to_string().contains("more than one row"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_carry_exactly_one_of_query_and_model_and_profiles_decide_first() {
    let s = site(catalogue(&rows(40)), k_only());
    let m = model("y", pb::ModelFamily::Gaussian);
    let mut q = pb::NodeQuery {
        query_id: "q".into(),
        identity: Some(pb::Identity {
            researcher_token: s.token.clone(),
            researcher: "alice".into(),
            project: PROJECT.into(),
        }),
        model: Some(request(&m, pb::ModelStep::Sufficient, "fit-8", 0, &[])),
        query: Some(pb::AggregateQuery { dataset: "cohort".into(), ..Default::default() }),
        timeout_ms: 0,
    };
    let both = s.node.handle(&q).await.unwrap_err();
    assert!(both.to_string().contains("both"), "{both}");
    (q.query, q.model) = (None, None);
    let neither = s.node.handle(&q).await.unwrap_err();
    assert!(neither.to_string().contains("neither"), "{neither}");

    let rules = s.node.hello().model_rules.expect("model rules in the hello");
    assert_eq!(rules.families.len(), 3);
    let unbounded = PrivacyRefusal::MissingBounds { dataset: "cohort".into(), column: "age".into() };
    for (profile, want) in
        [(Profile::Dp, ModelRefusal::Privacy(unbounded)), (Profile::Feasibility, ModelRefusal::FeasibilityOnly)]
    {
        let s = site(catalogue(&rows(40)), Policy { profile, ..k_only() });
        let outcome = s.ask(request(&m, pb::ModelStep::Sufficient, "fit-9", 0, &[])).await;
        assert_eq!(refused_by_rule(outcome), want);
    }
}

#[tokio::test]
async fn designs_are_not_kept_past_cache_seconds_and_a_rebuild_gives_the_same_numbers() {
    let mut policy = k_only();
    policy.regression.cache_seconds = 0;
    let s = site(catalogue(&rows(80)), policy);
    let m = model("event", pb::ModelFamily::Binomial);
    let ask = |round, beta: &[f64]| s.ask(request(&m, pb::ModelStep::Contribution, "fit-10", round, beta));
    ask(0, &[]).await.unwrap();
    assert_eq!(s.node.engine().cached_model_designs(), 0);
    let first = ask(1, &[-0.4, 0.01, 0.2]).await.unwrap();
    let again = ask(1, &[-0.4, 0.01, 0.2]).await.unwrap();
    assert_eq!(first.model, again.model, "rebuilt from the same rows in the same order");
}

/// A coordinator that crafts β to put the IRLS weight on one patient (η = 50·(age − 64): μ is
/// 0 or 1 for everyone but the one patient aged 64, whose weight is 0.25). Without rule R7
/// the information matrix tells that patient's sex; with it (k-only) the round is refused.
#[tokio::test]
async fn r7_refuses_a_beta_that_puts_the_weight_on_one_patient() {
    let data = rows(80);
    let target: Vec<&Row> = data.iter().filter(|r| r.1 == Some(64.0)).collect();
    assert_eq!(target.len(), 1, "one patient is 64");
    let m = model("event", pb::ModelFamily::Binomial);
    let crafted = [-50.0 * 64.0, 50.0, 0.0];
    async fn attack(s: &Site, m: &pb::ModelQuery, fit: &str, beta: &[f64]) -> Result<pb::PartialResult, Refusal> {
        s.ask(request(m, pb::ModelStep::Contribution, fit, 0, &[])).await?;
        s.ask(request(m, pb::ModelStep::Contribution, fit, 1, beta)).await
    }

    // The attack succeeds where nothing defends (profile test-only-raw).
    let raw = site(catalogue(&data), Policy { profile: Profile::TestOnlyRaw, ..k_only() });
    let part = attack(&raw, &m, "fit-r7-raw", &crafted).await.unwrap().model.unwrap();
    let Some(pb::model_part::Numbers::Contribution(c)) = part.numbers else { panic!("a contribution") };
    // Upper triangle of (Intercept, age, sexmale): [0] = Σw, [2] = Σw·sexmale.
    assert!((c.information[0] - 0.25).abs() < 1e-9, "one patient carries the weight: {}", c.information[0]);
    let male = c.information[2] / c.information[0];
    assert_eq!(male.round(), if target[0].3 == Some("male") { 1.0 } else { 0.0 }, "the patient's sex is out");

    // k-only: R7 refuses the round, and the refusal says nothing of the patient.
    let guarded = site(catalogue(&data), k_only());
    let refusal = refused_by_rule(attack(&guarded, &m, "fit-r7-k", &crafted).await);
    assert!(matches!(refusal, ModelRefusal::ConcentratedWeights { .. }), "{refusal:?}");
    let text = refusal.to_string();
    assert!(!text.contains("64") && !text.contains("male"), "{text}");
}
