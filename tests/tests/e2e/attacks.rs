//! The attack suite of the privacy engine (issue 12): known attacks on aggregate-query systems,
//! each run against a real three-site network. Every attack is shown to *succeed* against a
//! site that does not defend (profile test-only-raw, or k-only where the attack targets
//! thresholds), so each test can fail; and to fail against the default differentially private
//! profile. Noise keys are fixed, so every noisy answer is the same in every run.

use datafusion::arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::Int64Type;
use std::sync::Arc;
use verbund_coordinator::config::NetworkRules;
use verbund_policies::{DatasetRule, Level, Policy, Profile};
use verbund_proto::v1 as pb;
use verbund_tests::{Network, PROJECT, memory_catalogue};

pub(crate) const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];
/// Planted targets live at site-a: ages 90..90+TARGETS (nobody else is that old), BMI
/// 41.5 + i (nobody else is above 40), ward A.
const TARGETS: usize = 10;

pub(crate) fn target_bmi(i: usize) -> f64 {
    41.5 + i as f64
}

/// One site's cohort: ward A and B, ages 20..79, BMI 18..40, one row per patient; plus the
/// planted targets at site-a, and a rare ward "C" of 3 patients at every site.
pub(crate) fn cohort(site: usize) -> RecordBatch {
    let (mut ids, mut ward, mut age, mut bmi) = (vec![], vec![], vec![], vec![]);
    for i in 0..600 {
        ids.push(format!("s{site}-p{i}"));
        ward.push(if i % 2 == 0 { "A" } else { "B" });
        age.push(20 + (i * 7 + site) as i64 % 60);
        bmi.push(18.0 + ((i * 13 + site * 5) % 220) as f64 / 10.0);
    }
    for i in 0..3 {
        ids.push(format!("s{site}-rare{i}"));
        ward.push("C");
        age.push(50);
        bmi.push(25.0);
    }
    if site == 0 {
        for i in 0..TARGETS {
            ids.push(format!("target{i}"));
            ward.push("A");
            age.push(90 + i as i64);
            bmi.push(target_bmi(i));
        }
    }
    RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("ward", Arc::new(StringArray::from(ward)) as _),
        ("age", Arc::new(Int64Array::from(age)) as _),
        ("bmi", Arc::new(Float64Array::from(bmi)) as _),
    ])
    .unwrap()
}

/// The research default: differential privacy, minimum cell size 5, with the cohort's bounds
/// and levels declared.
pub(crate) fn dp_policy(budget: f64) -> Policy {
    let mut policy = Policy::default().allowing(PROJECT);
    policy.budget.epsilon = budget;
    // Every question with a floor also costs δ 1e-7: room for as many as ε allows.
    policy.budget.delta = budget * 1e-7;
    policy.datasets.push(DatasetRule {
        name: "cohort".into(),
        one_row_per_patient: true,
        bounds: [("age".to_string(), [0.0, 110.0]), ("bmi".to_string(), [10.0, 60.0])].into_iter().collect(),
        levels: [("ward".to_string(), ["A", "B", "C"].into_iter().map(|l| Level::Text(l.into())).collect())]
            .into_iter()
            .collect(),
        ..DatasetRule::default()
    });
    policy.validate().unwrap();
    policy
}

pub(crate) fn raw_policy() -> Policy {
    let policy =
        Policy { profile: Profile::TestOnlyRaw, i_understand_this_releases_raw_numbers: true, ..Policy::default() };
    policy.allowing(PROJECT)
}

pub(crate) fn k_only_policy() -> Policy {
    Policy::with_min_cell_size(5).unwrap().allowing(PROJECT)
}

pub(crate) async fn network(policy: Policy) -> Network {
    network_and_nodes(policy).await.0
}

pub(crate) async fn network_and_nodes(policy: Policy) -> (Network, Vec<Arc<verbund_node::Node>>) {
    network_with_rules(policy, NetworkRules::default()).await
}

pub(crate) async fn network_with_rules(policy: Policy, rules: NetworkRules) -> (Network, Vec<Arc<verbund_node::Node>>) {
    let mut network = Network::start_with_rules(&SITES, rules).await;
    let mut nodes = Vec::new();
    for (i, site) in SITES.iter().enumerate() {
        let catalogue = memory_catalogue("cohort", vec![cohort(i)], &["ward", "age", "bmi"]);
        let node = Arc::new(network.node_with_noise_key(site, catalogue, policy.clone(), 40 + i as u8));
        nodes.push(node.clone());
        network.add_node(node).await;
    }
    (network, nodes)
}

pub(crate) async fn ask(network: &Network, sql: &str) -> (RecordBatch, pb::QueryResponse) {
    network.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// How many sites answered (a refusal at every site is still a response, with the reasons).
pub(crate) fn answered(response: &pb::QueryResponse) -> usize {
    response.sites.iter().filter(|s| s.outcome == pb::SiteOutcome::Answered as i32).count()
}

pub(crate) fn refusals(response: &pb::QueryResponse) -> Vec<&str> {
    response.sites.iter().filter(|s| s.outcome == pb::SiteOutcome::Refused as i32).map(|s| s.message.as_str()).collect()
}

pub(crate) fn float(batch: &RecordBatch, column: usize, row: usize) -> Option<f64> {
    let c = batch.column(column);
    if row >= batch.num_rows() || c.is_null(row) {
        return None;
    }
    Some(match c.data_type() {
        datafusion::arrow::datatypes::DataType::Int64 => c.as_primitive::<Int64Type>().value(row) as f64,
        _ => c.as_any().downcast_ref::<Float64Array>().unwrap().value(row),
    })
}

/// Differencing and the tracker: a sum over a large group, and over the same group less one
/// patient (by a predicate that excludes only them, or by two overlapping cohorts whose
/// difference is them). Raw numbers give each target's BMI exactly; noisy ones do not.
async fn differencing_estimates(network: &Network) -> Vec<(f64, f64)> {
    let (all, response) = ask(network, "SELECT sum(bmi) AS s, count(*) AS n FROM cohort WHERE ward = 'A'").await;
    assert_eq!(answered(&response), 3, "{response:?}");
    let mut estimates = Vec::new();
    for i in 0..TARGETS {
        let age = 90 + i;
        let (less_one, _) =
            ask(network, &format!("SELECT sum(bmi) AS s, count(*) AS n FROM cohort WHERE ward = 'A' AND age <> {age}"))
                .await;
        // The tracker: two overlapping cohorts whose difference is the target.
        let (with, _) =
            ask(network, &format!("SELECT sum(bmi) AS s FROM cohort WHERE ward = 'A' AND (age < 60 OR age = {age})"))
                .await;
        let (without, _) = ask(network, "SELECT sum(bmi) AS s FROM cohort WHERE ward = 'A' AND age < 60").await;
        let value = |b: &RecordBatch| float(b, 0, 0).unwrap_or_else(|| panic!("target {i}: no sum in {b:?}"));
        let by_difference = value(&all) - value(&less_one);
        let by_tracker = value(&with) - value(&without);
        estimates.push((by_difference, by_tracker));
    }
    estimates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_and_trackers_fail_under_differential_privacy() {
    let raw = network(raw_policy()).await;
    for (i, (difference, tracker)) in differencing_estimates(&raw).await.into_iter().enumerate() {
        assert!((difference - target_bmi(i)).abs() < 1e-9, "raw: differencing reveals target {i}: {difference}");
        assert!((tracker - target_bmi(i)).abs() < 1e-9, "raw: the tracker reveals target {i}: {tracker}");
    }
    // 1 + 3 * TARGETS distinct questions (the common ones repeat at no cost).
    let dp = network(dp_policy(40.0)).await;
    let estimates = differencing_estimates(&dp).await;
    // Within 10 % of the bounds' range (5 BMI units) counts as found.
    let found = |pick: fn(&(f64, f64)) -> f64| {
        estimates.iter().enumerate().filter(|(i, e)| (pick(e) - target_bmi(*i)).abs() < 5.0).count()
    };
    assert!(found(|e| e.0) <= 1, "differencing found targets under DP: {estimates:?}");
    assert!(found(|e| e.1) <= 1, "the tracker found targets under DP: {estimates:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_a_question_returns_the_same_numbers_at_no_cost_and_variants_exhaust_the_budget() {
    let dp = network(dp_policy(10.0)).await;
    let sql = "SELECT avg(bmi) AS m, count(DISTINCT patient_id) AS n FROM cohort WHERE ward = 'A'";
    let (first, response) = ask(&dp, sql).await;
    let left = |r: &pb::QueryResponse| r.sites.iter().map(|s| s.cost.unwrap().epsilon_left).collect::<Vec<_>>();
    assert_eq!(left(&response), vec![9.0; 3], "the first answer costs ε 1 at each site");
    for _ in 0..30 {
        let (again, response) = ask(&dp, sql).await;
        assert_eq!(again, first, "a repeat gets the very same numbers: averaging gains nothing");
        assert!(response.sites.iter().all(|s| s.cost.unwrap().repeat), "{:?}", response.sites);
        assert_eq!(left(&response), vec![9.0; 3], "and costs nothing");
    }
    // Variants are new questions and pay, until the budget is spent: 9 more, then refusals.
    let mut fully_answered = 0;
    let mut refusal = None;
    for i in 0..12 {
        let variant = format!("SELECT avg(bmi) AS m FROM cohort WHERE ward = 'A' AND age < {}", 200 + i);
        let (batch, response) = ask(&dp, &variant).await;
        match answered(&response) {
            3 => fully_answered += 1,
            0 => {
                assert_eq!(float(&batch, 0, 0), None, "nothing of a refused answer: {batch:?}");
                refusal = Some(refusals(&response)[0].to_string());
            }
            n => panic!("{n} of 3 sites answered: {response:?}"),
        }
    }
    assert_eq!(fully_answered, 9, "ε 10 pays for 10 questions of ε 1");
    let refusal = refusal.expect("the budget runs out");
    assert!(refusal.contains("privacy budget of project 'study' at this site is spent"), "{refusal}");
    assert!(refusal.contains("ε 0.0 of 10.0") && refusal.contains("renews every 30 days"), "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouping_on_a_near_unique_column_does_not_single_anyone_out() {
    let sql = "SELECT age, count(*) AS n, avg(bmi) AS m FROM cohort GROUP BY age";
    let raw = network(raw_policy()).await;
    let (batch, _) = ask(&raw, sql).await;
    let ages = batch.column(0).as_primitive::<Int64Type>();
    let row = (0..batch.num_rows()).find(|r| ages.value(*r) == 90).expect("raw: the target's age is a group");
    assert_eq!(float(&batch, 1, row), Some(1.0));
    assert_eq!(float(&batch, 2, row), Some(target_bmi(0)), "raw: the target's BMI, alone in its group");

    // The default refuses groups that come from the data alone, and says what to declare.
    let dp = network(dp_policy(10.0)).await;
    let (batch, response) = ask(&dp, sql).await;
    assert_eq!((batch.num_rows(), answered(&response)), (0, 0));
    assert!(refusals(&response).iter().all(|r| r.contains("levels = { age = [...] }")), "{response:?}");

    // With noisy partition selection, only groups whose noisy count passes a threshold show.
    // (Groups of about 30 patients do not pass it either at ε 1: the price of the threshold.)
    let mut open = dp_policy(10.0);
    open.dp.partition_selection = true;
    open.datasets[0].levels.clear();
    let dp = network(open).await;
    let (batch, response) = ask(&dp, sql).await;
    assert_eq!(answered(&response), 3, "{response:?}");
    let ages = batch.column(0).as_primitive::<Int64Type>();
    assert!((0..batch.num_rows()).all(|r| ages.value(r) < 90), "no target's age appears as a group");
    let (batch, _) = ask(&dp, "SELECT ward, count(*) AS n FROM cohort GROUP BY ward").await;
    let wards = batch.column(0).as_string::<i32>();
    let shown: Vec<&str> = (0..batch.num_rows()).map(|r| wards.value(r)).collect();
    assert_eq!(shown, ["A", "B"], "large groups from the data pass the noisy threshold, the rare ward does not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cells_and_refused_answers_carry_nothing() {
    let sql = "SELECT ward, count(*) AS n, avg(bmi) AS m FROM cohort GROUP BY ward";
    let raw = network(raw_policy()).await;
    let (batch, _) = ask(&raw, sql).await;
    assert_eq!(batch.num_rows(), 3, "raw: the rare ward shows");
    assert_eq!(batch.column(0).as_string::<i32>().value(2), "C");
    assert_eq!(float(&batch, 1, 2), Some(9.0), "raw: with its exact size");

    let dp = network(dp_policy(2.0)).await;
    let (batch, response) = ask(&dp, sql).await;
    let wards = batch.column(0).as_string::<i32>();
    assert_eq!((0..batch.num_rows()).map(|r| wards.value(r)).collect::<Vec<_>>(), ["A", "B"]);
    assert!(response.sites.iter().all(|s| s.groups == 2), "no site released ward C: {:?}", response.sites);
    // A refused answer (budget spent) has no numbers at all.
    ask(&dp, "SELECT count(*) AS n FROM cohort WHERE age > 30").await;
    let (batch, response) = ask(&dp, "SELECT count(*) AS n FROM cohort WHERE age > 31").await;
    assert_eq!(answered(&response), 0);
    assert!(refusals(&response).iter().all(|r| r.contains("privacy budget")), "{response:?}");
    assert_eq!(float(&batch, 0, 0), None, "a refused answer has no number");
    assert!(response.sites.iter().all(|s| s.cost.is_none() && s.groups == 0));
}

/// A withheld cell recovered as a total minus the released cells: k-only releases exact
/// totals and the rare ward's count falls out; noise makes the difference useless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_cell_cannot_be_recovered_from_totals() {
    let recover = |network: Network| async move {
        let (by_ward, _) = ask(&network, "SELECT ward, count(*) AS n FROM cohort GROUP BY ward").await;
        let released: f64 = (0..by_ward.num_rows()).filter_map(|r| float(&by_ward, 1, r)).sum();
        let mut estimates = Vec::new();
        for i in 0..5 {
            // Different but equivalent totals (each a new question).
            let (total, _) = ask(&network, &format!("SELECT count(*) AS n FROM cohort WHERE age < {}", 200 + i)).await;
            estimates.push(float(&total, 0, 0).unwrap() - released);
        }
        estimates
    };
    let exact = recover(network(k_only_policy()).await).await;
    // Ward C holds 3 patients at each of 3 sites; the targets are in ward A.
    assert!(exact.iter().all(|e| *e == 9.0), "k-only: total minus released cells is the withheld ward: {exact:?}");
    let noisy = recover(network(dp_policy(10.0)).await).await;
    let hits = noisy.iter().filter(|e| (**e - 9.0).abs() < 0.5).count();
    assert!(hits <= 1, "under DP the difference is noise: {noisy:?}");

    // From one answer: a count beside a histogram whose middle bin (three targets) is withheld.
    let from_one_answer = |network: Network| async move {
        let mut estimates = Vec::new();
        for i in 0..5 {
            let sql = format!(
                "SELECT count(bmi) AS n, histogram_edges(bmi, 10, 41, 44, 60) AS h FROM cohort WHERE age < {}",
                200 + i
            );
            let (batch, _) = ask(&network, &sql).await;
            let list = batch.column(1).as_list::<i32>().value(0);
            let bins = list.as_primitive::<Int64Type>();
            let released: f64 = (0..bins.len()).filter(|b| !bins.is_null(*b)).map(|b| bins.value(b) as f64).sum();
            estimates.push(float(&batch, 0, 0).unwrap() - released);
        }
        estimates
    };
    let exact = from_one_answer(network(k_only_policy()).await).await;
    assert!(
        exact.iter().all(|e| *e == 3.0),
        "k-only: the count minus the released bins is the withheld bin: {exact:?}"
    );
    let noisy = from_one_answer(network(dp_policy(10.0)).await).await;
    let hits = noisy.iter().filter(|e| (**e - 3.0).abs() < 0.5).count();
    assert!(hits <= 1, "under DP the difference is noise: {noisy:?}");
}

/// Two bin systems on one column in one query: their difference isolates one value's range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_bins_do_not_isolate_a_value() {
    let isolate = |network: Network| async move {
        let mut counts = Vec::new();
        for i in 0..TARGETS {
            let (low, high) = (41 + i, 42 + i);
            let sql = format!(
                "SELECT histogram_edges(bmi, 10, {high}, 60) AS wide, histogram_edges(bmi, 10, {low}, 60) AS narrow FROM cohort"
            );
            let (batch, _) = ask(&network, &sql).await;
            let first = |c: usize| {
                let list = batch.column(c).as_list::<i32>().value(0);
                let values = list.as_primitive::<Int64Type>();
                (!values.is_null(0)).then(|| values.value(0))
            };
            counts.push(first(0).zip(first(1)).map(|(w, n)| w - n));
        }
        counts
    };
    let exact = isolate(network(k_only_policy()).await).await;
    assert!(exact.iter().all(|d| *d == Some(1)), "k-only: each target's BMI range is isolated: {exact:?}");
    let noisy = isolate(network(dp_policy(20.0)).await).await;
    let hits = noisy.iter().filter(|d| **d == Some(1)).count();
    assert!(hits <= 2, "under DP the bins' difference is noise: {noisy:?}");
}

/// A sum dominated by one patient: an extreme value is clipped to the declared bound before
/// noise, so neither the value nor its size comes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_extreme_value_cannot_be_read_from_a_sum() {
    let extreme = |policy: Policy| async move {
        let mut network = Network::start(&SITES[..1]).await;
        let mut batch = cohort(1);
        let ids = batch.column(0).as_string::<i32>().iter().map(|s| s.unwrap().to_string()).chain(["whale".into()]);
        let ids: Vec<String> = ids.collect();
        let mut wards: Vec<String> = batch.column(1).as_string::<i32>().iter().map(|s| s.unwrap().into()).collect();
        wards.push("A".into());
        let mut ages: Vec<i64> = batch.column(2).as_primitive::<Int64Type>().values().to_vec();
        ages.push(100);
        let mut bmis: Vec<f64> = batch.column(3).as_any().downcast_ref::<Float64Array>().unwrap().values().to_vec();
        bmis.push(1000.0);
        batch = RecordBatch::try_from_iter([
            ("patient_id", Arc::new(StringArray::from(ids)) as _),
            ("ward", Arc::new(StringArray::from(wards)) as _),
            ("age", Arc::new(Int64Array::from(ages)) as _),
            ("bmi", Arc::new(Float64Array::from(bmis)) as _),
        ])
        .unwrap();
        let catalogue = memory_catalogue("cohort", vec![batch], &["ward", "age", "bmi"]);
        let node = network.node_with_noise_key(SITES[0], catalogue, policy, 7);
        network.add_node(node).await;
        let (all, _) = ask(&network, "SELECT sum(bmi) AS s FROM cohort WHERE ward = 'A'").await;
        let (rest, _) = ask(&network, "SELECT sum(bmi) AS s FROM cohort WHERE ward = 'A' AND age < 100").await;
        float(&all, 0, 0).unwrap() - float(&rest, 0, 0).unwrap()
    };
    assert!((extreme(k_only_policy()).await - 1000.0).abs() < 1e-9, "k-only: the extreme value comes out");
    let noisy = extreme(dp_policy(10.0)).await;
    assert!((noisy - 1000.0).abs() > 300.0, "under DP the value is clipped at 60 and noised: {noisy}");
}

/// 64 different questions at once for the last ε: the ledger never overspends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_for_the_last_budget_never_overspends() {
    let race = |network: Network| async move {
        let network = Arc::new(network);
        let tasks = (0..64).map(|i| {
            let network = network.clone();
            tokio::spawn(async move {
                network.query(&format!("SELECT count(*) AS n FROM cohort WHERE age <> {}", 1000 + i)).await
            })
        });
        let outcomes = futures::future::join_all(tasks).await;
        // Per site: how many questions it answered, and its refusals.
        let mut per_site = vec![(0usize, Vec::new()); SITES.len()];
        for outcome in outcomes {
            let (_, response) = outcome.unwrap().unwrap();
            for s in &response.sites {
                let i = SITES.iter().position(|n| *n == s.site).unwrap();
                if s.outcome == pb::SiteOutcome::Answered as i32 {
                    per_site[i].0 += 1;
                } else {
                    per_site[i].1.push(s.message.clone());
                }
            }
        }
        per_site
    };
    for (answered, _) in race(network(raw_policy()).await).await {
        assert_eq!(answered, 64, "without a budget every question is answered");
    }
    for (answered, refusals) in race(network(dp_policy(10.0)).await).await {
        assert_eq!(answered, 10, "ε 10 pays for exactly 10 questions of ε 1: {refusals:?}");
        assert_eq!(refusals.len(), 54);
        assert!(refusals.iter().all(|r| r.contains("privacy budget")), "{refusals:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_say_how_they_were_protected_and_what_they_cost() {
    let raw = network(raw_policy()).await;
    let (_, response) = ask(&raw, "SELECT count(*) AS n FROM cohort").await;
    assert!(response.notes.iter().any(|n| n.contains("RAW, UNPROTECTED")), "{:?}", response.notes);
    assert!(response.sites.iter().all(|s| s.profile == "test-only-raw"));

    let (dp, nodes) = network_and_nodes(dp_policy(10.0)).await;
    let (batch, response) = ask(&dp, "SELECT count(*) AS n FROM cohort").await;
    assert!(response.sites.iter().all(|s| s.profile == "dp" && s.cost.unwrap().epsilon == 1.0), "{:?}", response.sites);
    assert!(response.notes.iter().any(|n| n.contains("differential-privacy noise")), "{:?}", response.notes);
    let n = float(&batch, 0, 0).unwrap();
    assert!((n - 1819.0).abs() < 60.0 && n != 1819.0, "a noisy total near the truth: {n}");
    // The audit record of each site carries the profile and the cost.
    for node in &nodes {
        let dir = node.audit().unwrap().log().dir().to_path_buf();
        let entries: Vec<_> = verbund_audit::entries(&dir, verbund_audit::Filter::default()).unwrap().collect();
        let answered = entries
            .into_iter()
            .filter_map(Result::ok)
            .find(|e| e.record.privacy_profile.is_some())
            .expect("an answer on record");
        assert_eq!(answered.record.privacy_profile.as_deref(), Some("dp"));
        assert_eq!(answered.record.privacy_cost, Some(1.0));
    }
    // The coordinator's record names each site's cost.
    let dir = dp.coordinator.audit().unwrap().log().dir().to_path_buf();
    let answered = verbund_audit::entries(&dir, verbund_audit::Filter::default())
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| !e.record.sites.is_empty())
        .expect("the coordinator's record of the answer");
    assert!(answered.record.sites.iter().all(|s| s.privacy_cost == Some(1.0)), "{:?}", answered.record.sites);
}

/// The dominance rule with exact numbers (k-only): a cell whose sum is mostly one patient's
/// value is withheld; without the rule (raw) the sum gives that patient's value away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sum_dominated_by_one_patient_is_withheld() {
    let ward_of_ten = || {
        let ids: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let bmi: Vec<f64> = (0..10).map(|i| if i == 0 { 5000.0 } else { 20.0 }).collect();
        RecordBatch::try_from_iter([
            ("patient_id", Arc::new(StringArray::from(ids)) as _),
            ("ward", Arc::new(StringArray::from(vec!["D"; 10])) as _),
            ("age", Arc::new(Int64Array::from(vec![50i64; 10])) as _),
            ("bmi", Arc::new(Float64Array::from(bmi)) as _),
        ])
        .unwrap()
    };
    let sums = |policy: Policy| async move {
        let mut network = Network::start(&SITES[..1]).await;
        let catalogue = memory_catalogue("cohort", vec![cohort(1), ward_of_ten()], &["ward", "age", "bmi"]);
        network.add_node(network.node(SITES[0], catalogue, policy)).await;
        let (batch, _) =
            ask(&network, "SELECT ward, count(*) AS n, sum(bmi) AS s, avg(bmi) AS m FROM cohort GROUP BY ward").await;
        let wards = batch.column(0).as_string::<i32>();
        let d = (0..batch.num_rows()).find(|r| wards.value(*r) == "D").expect("ward D is large enough to show");
        let a = (0..batch.num_rows()).find(|r| wards.value(*r) == "A").unwrap();
        (float(&batch, 1, d), float(&batch, 2, d), float(&batch, 3, d), float(&batch, 2, a))
    };
    let (n, sum, mean, _) = sums(raw_policy()).await;
    assert_eq!((n, sum, mean), (Some(10.0), Some(5180.0), Some(518.0)), "raw: the sum is mostly one patient's BMI");
    let (n, sum, mean, other) = sums(k_only_policy()).await;
    assert_eq!(n, Some(10.0), "the ward itself is shown");
    assert_eq!((sum, mean), (None, None), "k-only: the dominated sum and mean are withheld");
    assert!(other.is_some(), "an ordinary ward's sum is released");
}
