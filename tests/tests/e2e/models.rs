//! Models fitted across three sites (docs/regression-plan.md §6): the network's coefficients
//! and standard errors equal a pooled fit computed here by another route (QR of X, and IRLS by
//! QR of √W·X) to 1e-8 relative, for linear, logistic and Poisson models with numeric and
//! categorical covariates (one with declared levels, one with levels found at the sites). A
//! site that refuses or is lost releases nothing into the fit: the fit runs without it, or not
//! at all, as the network's rules say.

use std::collections::BTreeMap;
use std::sync::Arc;
use verbund_audit::{Decision, Filter, Scope, entries, reconcile};
use verbund_coordinator::config::{ModelSettings, NetworkRules, OnRefusal};
use verbund_node::Node;
use verbund_policies::{DatasetRule, Level, Policy};
use verbund_proto::v1 as pb;
use verbund_tests::models::{self, DATASET, Patient, Reference, assert_close};
use verbund_tests::{Network, open_policy};

const SITES: [&str; 3] = ["a", "b", "c"];

/// k-only, k = 5, with the levels of `sex` declared (public); `region`'s are not.
fn policy() -> Policy {
    let mut policy = open_policy(5);
    let levels = BTreeMap::from([("sex".to_string(), vec![Level::Text("female".into()), Level::Text("male".into())])]);
    policy.datasets.push(DatasetRule { name: DATASET.into(), levels, ..Default::default() });
    policy
}

/// Three sites with `sizes` patients each, under `policies`.
async fn network(sizes: [usize; 3], policies: [Policy; 3], regression: ModelSettings) -> (Network, Vec<Vec<Patient>>) {
    let (network, data, _) = network_and_nodes(sizes, policies, regression).await;
    (network, data)
}

async fn network_and_nodes(
    sizes: [usize; 3],
    policies: [Policy; 3],
    regression: ModelSettings,
) -> (Network, Vec<Vec<Patient>>, Vec<Arc<Node>>) {
    let mut network = Network::start_with(&SITES, NetworkRules::default(), regression).await;
    let (mut data, mut nodes) = (Vec::new(), Vec::new());
    for ((site, n), policy) in SITES.iter().zip(sizes).zip(policies) {
        let patients = models::patients(site, n, 42 + n as u64 + u64::from(site.as_bytes()[0]));
        let node = Arc::new(network.node(site, models::catalogue(&patients), policy));
        network.add_node(node.clone()).await;
        data.push(patients);
        nodes.push(node);
    }
    (network, data, nodes)
}

fn request(family: pb::ModelFamily, outcome: &str) -> pb::ResearchModel {
    let term = |column: &str| pb::ModelTerm { column: column.into(), ..Default::default() };
    pb::ResearchModel {
        dataset: DATASET.into(),
        outcome: outcome.into(),
        covariates: vec![term("age"), term("bmi"), term("sex"), term("region")],
        family: family as i32,
        ..Default::default()
    }
}

/// (estimates, standard errors, names) of a fit's JSON.
fn coefficients(response: &pb::ModelResponse) -> (Vec<f64>, Vec<f64>, Vec<String>) {
    let fit: serde_json::Value = serde_json::from_str(&response.fit_json).unwrap();
    let rows = fit["coefficients"].as_array().unwrap();
    let get = |key: &str| rows.iter().map(|c| c[key].as_f64().unwrap()).collect();
    let names = rows.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    (get("estimate"), get("std_error"), names)
}

fn assert_equals_reference(what: &str, response: &pb::ModelResponse, reference: &Reference) {
    let (beta, se, names) = coefficients(response);
    assert_eq!(names, models::names(), "{what}");
    assert_close(&format!("{what} coefficients"), &beta, &reference.beta, 1e-8);
    assert_close(&format!("{what} standard errors"), &se, &reference.se, 1e-8);
}

fn pooled(data: &[Vec<Patient>], sites: &[usize]) -> Vec<Patient> {
    sites.iter().flat_map(|&i| data[i].iter().cloned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_logistic_and_poisson_fits_equal_the_pooled_fits() {
    let (network, data) = network([400, 300, 350], [policy(), policy(), policy()], ModelSettings::default()).await;
    let all = pooled(&data, &[0, 1, 2]);

    let linear = network.model(request(pb::ModelFamily::Gaussian, "y")).await.unwrap();
    let (x, y, dropped) = models::design(&all, |p| p.y);
    assert_equals_reference("linear", &linear, &models::ols(&x, &y));
    let fit: serde_json::Value = serde_json::from_str(&linear.fit_json).unwrap();
    assert_eq!(fit["n"].as_u64(), Some(x.nrows() as u64));
    assert_eq!(fit["dropped"].as_u64(), Some(dropped as u64), "complete cases: dropped rows are counted");
    assert_eq!((linear.rounds, linear.attempts), (1, 1));
    assert!(linear.summary.contains("Residual standard error"), "{}", linear.summary);
    assert!(linear.notes.iter().any(|n| n.contains("levels of 'sex' as the sites declare them")), "{:?}", linear.notes);
    assert!(linear.notes.iter().any(|n| n.contains("levels of 'region' found by")), "{:?}", linear.notes);
    assert!(linear.sites.iter().all(|s| s.outcome() == pb::SiteOutcome::Answered), "{:?}", linear.sites);

    let logistic = network.model(request(pb::ModelFamily::Binomial, "event")).await.unwrap();
    let (x, y, _) = models::design(&all, |p| Some(p.event));
    let reference = models::glm(&x, &y, true);
    assert_equals_reference("logistic", &logistic, &reference);
    let fit: serde_json::Value = serde_json::from_str(&logistic.fit_json).unwrap();
    assert_close("logistic deviance", &[fit["deviance"].as_f64().unwrap()], &[reference.deviance], 1e-8);
    assert!(logistic.rounds >= 3 && logistic.attempts == 1, "{} rounds", logistic.rounds);
    assert!(logistic.summary.contains("Null deviance"), "{}", logistic.summary);

    let poisson = network.model(request(pb::ModelFamily::Poisson, "visits")).await.unwrap();
    let (x, y, _) = models::design(&all, |p| Some(p.visits));
    assert_equals_reference("poisson", &poisson, &models::glm(&x, &y, false));

    // Another reference level: R's relevel(sex, "male").
    let mut relevel = request(pb::ModelFamily::Gaussian, "y");
    relevel.covariates[2].reference = Some(pb::Literal { value: Some(pb::literal::Value::String("male".into())) });
    let (beta, _, names) = coefficients(&network.model(relevel).await.unwrap());
    assert_eq!(names[3], "sexfemale");
    let (linear_beta, _, _) = coefficients(&linear);
    assert_close("sexfemale = -sexmale", &[beta[3]], &[-linear_beta[3]], 1e-8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_site_is_left_out_or_stops_the_fit_as_the_rules_say() {
    // Site c has 8 patients: fewer than the 10 rows a site needs (rule R1), so it refuses.
    let sizes = [400, 300, 8];
    let (network, data) = network(sizes, [policy(), policy(), policy()], ModelSettings::default()).await;
    let response = network.model(request(pb::ModelFamily::Binomial, "event")).await.unwrap();
    let two = pooled(&data, &[0, 1]);
    let (x, y, _) = models::design(&two, |p| Some(p.event));
    assert_equals_reference("logistic without c", &response, &models::glm(&x, &y, true));
    let c = response.sites.iter().find(|s| s.site == "c").unwrap();
    assert_eq!(c.outcome(), pb::SiteOutcome::Refused, "{c:?}");
    assert!(c.message.contains("fewer than 10"), "the refusal names the rule's threshold: {}", c.message);
    assert!(c.cost.is_none() && c.profile.is_empty(), "a refusing site released nothing: {c:?}");
    assert!(response.notes.iter().any(|n| n.contains("fitted on 2 of 3 sites")), "{:?}", response.notes);
    assert_eq!(response.attempts, 2, "the fit restarted without c");
    // Nothing of c's rows is in the fit: it equals the fit of a and b alone (checked above),
    // and differs from the fit with c's rows.
    let all = pooled(&data, &[0, 1, 2]);
    let (x3, y3, _) = models::design(&all, |p| Some(p.event));
    let (beta, _, _) = coefficients(&response);
    assert!((beta[1] - models::glm(&x3, &y3, true).beta[1]).abs() > 1e-9, "c's rows would change the fit");

    // The same with a network that fits only when every site takes part.
    let strict = ModelSettings { on_refusal: OnRefusal::Refuse, ..ModelSettings::default() };
    let (network, _) = self::network(sizes, [policy(), policy(), policy()], strict).await;
    let error = network.model(request(pb::ModelFamily::Binomial, "event")).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("site c did not take part") && error.message().contains("nothing was fitted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_lost_mid_fit_restarts_the_fit_without_it() {
    // Site c answers at most 2 rounds of a fit (rule R8's round cap), so it refuses round 2:
    // the fit restarts from round 0 on a and b, and uses nothing of c's earlier rounds.
    let mut short = policy();
    short.regression.max_rounds = 2;
    let (network, data) = network([400, 300, 350], [policy(), policy(), short], ModelSettings::default()).await;
    let response = network.model(request(pb::ModelFamily::Binomial, "event")).await.unwrap();
    let two = pooled(&data, &[0, 1]);
    let (x, y, _) = models::design(&two, |p| Some(p.event));
    assert_equals_reference("logistic after losing c", &response, &models::glm(&x, &y, true));
    assert_eq!(response.attempts, 2);
    let c = response.sites.iter().find(|s| s.site == "c").unwrap();
    assert_eq!(c.outcome(), pb::SiteOutcome::Refused);
    assert!(c.message.contains("rounds"), "{}", c.message);
    assert!(response.notes.iter().any(|n| n.contains("restarted 1 time")), "{:?}", response.notes);

    // A site too slow to build its design in the first round's time (half the fit's) is
    // left out, and the fit restarts on the others.
    let (mut network, data) =
        self::network([400, 300, 1], [policy(), policy(), policy()], ModelSettings::default()).await;
    network.kill("c");
    let slow = models::patients("c", 350, 7);
    let node = network.node("c", models::slow_catalogue(&slow, std::time::Duration::from_secs(3)), policy());
    network.add_node(node).await;
    let mut asked = request(pb::ModelFamily::Binomial, "event");
    asked.timeout_ms = 4000;
    let response = network.model(asked).await.unwrap();
    let (x, y, _) = models::design(&pooled(&data, &[0, 1]), |p| Some(p.event));
    assert_equals_reference("logistic without the slow site", &response, &models::glm(&x, &y, true));
    let c = response.sites.iter().find(|s| s.site == "c").unwrap();
    assert_eq!((c.outcome(), response.attempts), (pb::SiteOutcome::TimedOut, 2), "{c:?}");

    // A site's own minimum of sites (rule R9) that the network cannot meet: no fit.
    let mut four = policy();
    four.regression.min_sites = 4;
    let (network, _) = self::network([400, 300, 350], [policy(), four, policy()], ModelSettings::default()).await;
    let error = network.model(request(pb::ModelFamily::Gaussian, "y")).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("at least 4 site(s)"), "{}", error.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_model_requests_get_clear_errors() {
    let (network, data) = network([150, 150, 150], [policy(), policy(), policy()], ModelSettings::default()).await;
    let mut unknown = request(pb::ModelFamily::Gaussian, "y");
    unknown.covariates[0].column = "weight".into();
    let error = network.model(unknown).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("weight"), "{}", error.message());

    let error = network.model(request(pb::ModelFamily::Unspecified, "y")).await.unwrap_err();
    assert!(error.message().contains("no family"), "{}", error.message());

    let mut reference = request(pb::ModelFamily::Gaussian, "y");
    reference.covariates[3].reference = Some(pb::Literal { value: Some(pb::literal::Value::String("east".into())) });
    let error = network.model(reference).await.unwrap_err();
    assert!(
        error.message().contains("'east' is not one of its levels ['north', 'south', 'west']"),
        "{}",
        error.message()
    );

    let mut condition = request(pb::ModelFamily::Gaussian, "y");
    condition.condition = "age >= ".into();
    assert_eq!(network.model(condition).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // A condition narrows the rows as SQL would.
    let mut adults = request(pb::ModelFamily::Gaussian, "y");
    adults.condition = "age >= 40".into();
    let response = network.model(adults).await.unwrap();
    let fit: serde_json::Value = serde_json::from_str(&response.fit_json).unwrap();
    let older: Vec<Patient> =
        pooled(&data, &[0, 1, 2]).into_iter().filter(|p| p.age.is_some_and(|a| a >= 40.0)).collect();
    let (x, y, dropped) = models::design(&older, |p| p.y);
    assert_eq!(fit["n"].as_u64(), Some(x.nrows() as u64));
    assert_eq!(fit["dropped"].as_u64(), Some(dropped as u64));
    assert_close("linear over age >= 40", &coefficients(&response).0, &models::ols(&x, &y).beta, 1e-8);
}

/// Every round of a fit is on record at the coordinator and at each site under the same id,
/// so `verbund audit reconcile` matches them round by round; a refusing site's record holds
/// no release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rounds_of_a_fit_reconcile_between_coordinator_and_sites() {
    let (network, _, nodes) =
        network_and_nodes([300, 250, 8], [policy(), policy(), policy()], ModelSettings::default()).await;
    let response = network.model(request(pb::ModelFamily::Binomial, "event")).await.unwrap();
    let read = |dir: &std::path::Path| entries(dir, Filter::default()).unwrap().collect::<Vec<_>>();
    let coordinator_dir = network.coordinator.audit().unwrap().log().dir().to_path_buf();
    let site_logs = || nodes.iter().map(|n| (n.site().to_string(), read(n.audit().unwrap().log().dir())));
    let report = reconcile(Scope::default(), read(&coordinator_dir), site_logs()).unwrap();
    assert!(report.is_ok(), "{}", report.render());
    // The levels query, the fit, attempt 0's round 0 (c refused) and every round of attempt 1.
    assert_eq!(report.queries as u32, 2 + 1 + response.rounds, "{}", report.render());
    let coordinator = read(&coordinator_dir);
    let c = read(nodes[2].audit().unwrap().log().dir());
    let refused: Vec<_> =
        c.iter().map(|e| &e.as_ref().unwrap().record).filter(|r| r.query_id.contains(".0.0")).collect();
    assert_eq!(refused.iter().filter(|r| r.decision == Decision::Refused).count(), 1, "{refused:#?}");
    assert!(refused.iter().all(|r| r.release_hash.is_none()), "a refusal releases nothing");
    let fit = coordinator
        .iter()
        .map(|e| &e.as_ref().unwrap().record)
        .find(|r| r.decision == Decision::Answered && !r.query_id.contains('.'));
    assert!(fit.is_some_and(|r| r.release_hash.is_some()), "the fit's answer is on record with its hash");
}

/// A dp site's policy: the model's numeric columns have declared bounds; ε 10 per project.
fn dp_policy() -> Policy {
    let mut policy = Policy::default().allowing(verbund_tests::PROJECT);
    policy.budget.epsilon = 10.0;
    policy.budget.delta = 1e-5;
    let bounds = [("age", [0.0, 110.0]), ("bmi", [10.0, 60.0]), ("y", [-10.0, 50.0])];
    let levels = BTreeMap::from([("sex".to_string(), vec![Level::Text("female".into()), Level::Text("male".into())])]);
    policy.datasets.push(DatasetRule {
        name: DATASET.into(),
        one_row_per_patient: true,
        bounds: bounds.into_iter().map(|(c, b)| (c.to_string(), b)).collect(),
        levels,
        ..Default::default()
    });
    policy.validate().unwrap();
    policy
}

/// Under dp a site releases its linear model's statistics once, with noise: the same model
/// again gets the same numbers at no cost; the fit is near the exact one; GLMs are not
/// fitted by dp sites, and asking costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_sites_release_noisy_statistics_once_per_model() {
    let mut network = Network::start(&SITES).await;
    let mut all = Vec::new();
    for (i, site) in SITES.iter().enumerate() {
        let patients = models::patients(site, 30_000, 100 + i as u64);
        let node = network.node_with_noise_key(site, models::catalogue(&patients), dp_policy(), 60 + i as u8);
        network.add_node(node).await;
        all.extend(patients);
    }
    let mut asked = request(pb::ModelFamily::Gaussian, "y");
    asked.covariates.truncate(3); // age, bmi, sex: region's levels would need a grouped count
    let first = network.model(asked.clone()).await.unwrap();
    for s in &first.sites {
        let cost = s.cost.unwrap_or_else(|| panic!("{s:?}"));
        assert_eq!((s.profile.as_str(), cost.repeat), ("dp", false), "{s:?}");
        assert!((cost.epsilon - 1.0).abs() < 1e-12, "epsilon_per_model once: {cost:?}");
    }
    assert!(first.notes.iter().any(|n| n.contains("standard errors do not include the privacy noise")));
    let again = network.model(asked).await.unwrap();
    assert_eq!(coefficients(&again), coefficients(&first), "the same model gets the same numbers");
    assert!(again.sites.iter().all(|s| s.cost.is_some_and(|c| c.repeat && c.epsilon == 0.0)), "{:?}", again.sites);

    // Near the exact pooled fit, and not equal to it (the noise is there).
    let (x, y, _) = models::design(&all, |p| p.y);
    let x = x.columns(0, 4).into_owned();
    let exact = models::ols(&x, &y);
    let (beta, _, names) = coefficients(&first);
    assert_eq!(names, ["(Intercept)", "age", "bmi", "sexmale"]);
    for j in 1..4 {
        let relative = (beta[j] - exact.beta[j]).abs() / exact.beta[j].abs();
        assert!(relative < 0.25 && relative > 0.0, "{}: {} vs {}", names[j], beta[j], exact.beta[j]);
    }

    let error = network.model(request(pb::ModelFamily::Binomial, "event")).await.unwrap_err();
    assert!(error.message().contains("does not fit binomial models (profile dp)"), "{}", error.message());
    // A categorical covariate without declared levels under dp: the grouped count is refused.
    let mut region = request(pb::ModelFamily::Gaussian, "y");
    region.covariates.remove(2);
    let error = network.model(region).await.unwrap_err();
    assert!(error.message().contains("no site answered the grouped count"), "{}", error.message());
    let budgets = network.list_sites().await.sites;
    assert!(budgets.iter().all(|s| s.budgets.iter().all(|b| (b.epsilon_left - 9.0).abs() < 1e-9)), "{budgets:?}");
}
