//! Attacks from the attack review (issue 9, items 1-6), each run against a real network: a
//! site without the defence (k = 1, nothing to protect) shows what the attack reveals, and a
//! site with the defence (k = 5) answers with nothing from which the target can be read.

use crate::resilience::slow_node;
use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use verbund_node::Catalogue;
use verbund_policies::{Access, Policy};
use verbund_proto::v1 as pb;
use verbund_tests::compare::{Cell, rows};
use verbund_tests::{Network, PROJECT, decode, memory_catalogue, open_policy, status, with_token};

/// The target's body-mass index: a value that appears nowhere else in the data.
const TARGET_BMI: f64 = 31.718_281_828;

/// A ward of 400 patients whose BMI and smoking status are not recorded, plus one target
/// patient whose values are; and a second ward of ordinary patients.
fn padded_ward() -> RecordBatch {
    let n = 400;
    let mut ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    let mut ward: Vec<&str> = vec!["A"; n];
    let mut bmi: Vec<Option<f64>> = vec![None; n];
    let mut smoker: Vec<Option<bool>> = vec![None; n];
    ids.push("target".into());
    ward.push("A");
    bmi.push(Some(TARGET_BMI));
    smoker.push(Some(true));
    for i in 0..30 {
        ids.push(format!("q{i}"));
        ward.push("B");
        bmi.push(Some(20.0 + i as f64 / 3.0));
        smoker.push(Some(i % 2 == 0));
    }
    RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("ward", Arc::new(StringArray::from(ward)) as _),
        ("bmi", Arc::new(Float64Array::from(bmi)) as _),
        ("smoker", Arc::new(BooleanArray::from(smoker)) as _),
    ])
    .unwrap()
}

fn catalogue_of(batch: RecordBatch, dataset: &str, columns: &[&str]) -> Catalogue {
    memory_catalogue(dataset, vec![batch], columns)
}

/// A network with the same data at an unprotected site ("open", k = 1) and a protected one
/// ("guarded", k = 5).
async fn open_and_guarded(batch: RecordBatch, dataset: &str, columns: &[&str]) -> Network {
    let mut network = Network::start(&["open", "guarded"]).await;
    for (site, k) in [("open", 1), ("guarded", 5)] {
        let node = network.node(site, catalogue_of(batch.clone(), dataset, columns), open_policy(k));
        network.add_node(node).await;
    }
    network
}

async fn ask(network: &Network, site: &str, sql: &str) -> (RecordBatch, pb::QueryResponse) {
    let request = pb::ResearchQuery { sql: sql.into(), sites: vec![site.into()], ..Default::default() };
    network.query_with(request).await.unwrap_or_else(|e| panic!("{sql} at {site}: {e}"))
}

fn contains_f64(bytes: &[u8], value: f64) -> bool {
    bytes.windows(8).any(|w| w == value.to_le_bytes())
}

/// Item 1: padding a group with rows whose column is NULL no longer releases one patient's
/// value: each number needs k patients among the rows where its column is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padding_a_group_with_nulls_does_not_release_one_patients_value() {
    let network = open_and_guarded(padded_ward(), "vitals", &["ward", "bmi", "smoker"]).await;
    let sql = "SELECT ward, count(*) AS n, count(bmi) AS c, sum(bmi) AS s, avg(bmi) AS m, var_pop(bmi) AS v, \
               sum(bmi * bmi) AS ss, count(smoker) AS cs FROM vitals GROUP BY ward";

    // Without the defence, the padded group gives the target's BMI away.
    let (open, _) = ask(&network, "open", sql).await;
    let open_rows = rows(&open, 1);
    assert_eq!(open_rows[0][0], Cell::Str("A".into()));
    assert_eq!(open_rows[0][4], Cell::Float(TARGET_BMI), "the attack works where nothing protects");

    let (guarded, response) = ask(&network, "guarded", sql).await;
    let guarded_rows = rows(&guarded, 1);
    let ward_a = &guarded_rows[0];
    assert_eq!(ward_a[0], Cell::Str("A".into()));
    assert_eq!(ward_a[1], Cell::Int(401), "the ward itself is big enough to show");
    for (i, name) in
        [(2, "count(bmi)"), (3, "sum"), (4, "avg"), (5, "var_pop"), (6, "sum(a * b)"), (7, "count(smoker)")]
    {
        assert_eq!(ward_a[i], Cell::Null, "{name} of one contributing patient must be withheld");
    }
    let ward_b = &guarded_rows[1];
    assert_eq!(ward_b[2], Cell::Int(30), "values with 30 contributors are released");
    assert!(matches!(ward_b[4], Cell::Float(_)));
    let bytes = response.encode_to_vec();
    assert!(!contains_f64(&bytes, TARGET_BMI), "the target's BMI is in the answer");
    assert!(!contains_f64(&bytes, TARGET_BMI * TARGET_BMI), "the target's BMI squared is in the answer");
    assert!(
        response.notes.iter().any(|n| n.contains("6 values withheld")),
        "the researcher is told values were withheld: {:?}",
        response.notes
    );
}

/// Item 2: rows without a patient key count as a patient each; they never come out one by
/// one as a cell of "0 patients".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_without_a_patient_key_count_as_patients() {
    let ids = vec![Some("p1"), Some("p2"), Some("p3"), Some("p4"), Some("p5"), None, Some(""), None];
    let lab =
        vec!["creatinine"; 5].into_iter().chain(["rare-test-x", "rare-test-x", "rare-test-y"]).collect::<Vec<_>>();
    let value = vec![1.0, 1.1, 1.2, 1.3, 1.4, 777.25, 888.5, 999.75];
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("lab", Arc::new(StringArray::from(lab)) as _),
        ("value", Arc::new(Float64Array::from(value)) as _),
    ])
    .unwrap();
    let catalogue = catalogue_of(batch.clone(), "labs", &["lab", "value"]);
    assert_eq!(catalogue.report_unlinked("labs", "patient_id").await.unwrap(), 3, "unlinked rows are reported at load");

    let network = open_and_guarded(batch, "labs", &["lab", "value"]).await;
    let sql = "SELECT lab, count(*) AS n, sum(value) AS s, count(DISTINCT patient_id) AS p FROM labs GROUP BY lab";
    let (open, _) = ask(&network, "open", sql).await;
    assert_eq!(open.num_rows(), 3, "without a threshold every unlinked row shows");
    let (guarded, response) = ask(&network, "guarded", sql).await;
    let released = rows(&guarded, 1);
    assert_eq!(released.len(), 1, "only the group of five patients is released: {released:?}");
    assert_eq!(released[0][0], Cell::Str("creatinine".into()));
    let bytes = response.encode_to_vec();
    for v in [777.25, 888.5, 999.75, 777.25 + 888.5] {
        assert!(!contains_f64(&bytes, v), "an unlinked value leaked: {v}");
    }
    assert!(!String::from_utf8_lossy(&bytes).contains("rare-test"));
}

/// The response with what differs between any two runs (ids, timings) blanked out.
fn comparable(mut response: pb::QueryResponse) -> pb::QueryResponse {
    response.query_id.clear();
    for s in &mut response.sites {
        s.elapsed_ms = 0.0;
    }
    response
}

/// Item 3: an empty cell and a cell of 1..k-1 patients look exactly the same, so neither a
/// count nor a site's status tells whether a person is a patient there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_cell_and_a_small_one_look_the_same() {
    let n = 40;
    let ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    // The target is the only patient born on this day in this postcode.
    let birth: Vec<i64> = (0..n).map(|i| if i == 0 { 19_470_312 } else { 19_800_101 + i as i64 % 4 }).collect();
    let postcode: Vec<&str> = (0..n).map(|i| if i % 2 == 0 { "24105" } else { "24118" }).collect();
    let age: Vec<i64> = (0..n).map(|i| 30 + i as i64).collect();
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("birth", Arc::new(Int64Array::from(birth)) as _),
        ("postcode", Arc::new(StringArray::from(postcode)) as _),
        ("age", Arc::new(Int64Array::from(age)) as _),
    ])
    .unwrap();
    let network = open_and_guarded(batch, "patients", &["birth", "postcode", "age"]).await;
    let probe = |birth: i64| {
        [
            format!("SELECT count(*) AS n FROM patients WHERE birth = {birth} AND postcode = '24105'"),
            format!("SELECT postcode, count(*) AS n FROM patients WHERE birth = {birth} GROUP BY postcode"),
            format!(
                "SELECT postcode, histogram(age, 0, 10, 10) AS h, count(*) AS n FROM patients \
                 WHERE birth = {birth} OR birth = 19800102 GROUP BY postcode"
            ),
        ]
    };
    let (present, absent) = (probe(19_470_312), probe(19_470_313));
    for (with_target, without) in present.iter().zip(&absent) {
        // Without the defence, the two answers tell the target's presence.
        let (_, a) = ask(&network, "open", with_target).await;
        let (_, b) = ask(&network, "open", without).await;
        assert_ne!(comparable(a), comparable(b), "the probe works where nothing protects: {with_target}");
        let (_, a) = ask(&network, "guarded", with_target).await;
        let (_, b) = ask(&network, "guarded", without).await;
        assert_eq!(comparable(a), comparable(b), "a membership oracle: {with_target}");
    }
}

/// Item 4: the variance state a node sends carries no single patient's value as its shift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_variance_state_carries_no_patients_value() {
    let values: Vec<f64> = (0..50).map(|i| 1e9 + 0.37 * i as f64 + (i * i % 7) as f64 * 0.011).collect();
    let ids: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let group: Vec<&str> = (0..50).map(|i| if i < 25 { "x" } else { "y" }).collect();
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("g", Arc::new(StringArray::from(group)) as _),
        ("value", Arc::new(Float64Array::from(values.clone())) as _),
    ])
    .unwrap();
    let engine = verbund_node::Engine::new(
        catalogue_of(batch, "devices", &["g", "value"]),
        Policy::with_min_cell_size(5).unwrap().allowing(PROJECT),
    );
    let query = pb::AggregateQuery {
        dataset: "devices".into(),
        filter: None,
        group_by: vec![pb::Grouping { kind: Some(pb::grouping::Kind::Column("g".into())) }],
        aggregates: vec![pb::Aggregate {
            kind: pb::AggregateKind::VarianceSample as i32,
            column: "value".into(),
            ..Default::default()
        }],
        cohort: None,
    };
    let projects = vec![PROJECT.to_string()];
    let access = Access { site: "s", project: PROJECT, token_projects: &projects, roles: &[] };
    let partial = engine.answer(&query, &access).await.unwrap();
    assert_eq!(partial.groups.len(), 2);
    for g in &partial.groups {
        let Some(pb::partial_aggregate::State::Moments(m)) = &g.aggregates[0].state else { panic!("no moments") };
        assert!(!values.contains(&m.shift), "the shift {} is a patient's value", m.shift);
        assert_eq!(m.count, 25);
    }
    // Without recentring, the accumulated state's shift is the first value it saw: the check
    // above would catch it.
    let mut raw = verbund_query::Moments::default();
    values[..25].iter().for_each(|v| raw.push(*v));
    assert!(values.contains(&raw.shift));
    assert!(!values.contains(&raw.recentred().shift));
}

/// Item 5: the group limit is decided on the groups that would be released; small groups
/// (withheld anyway) no longer make a site refuse, so the refusal tells nothing about them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_limit_counts_only_released_groups() {
    let mut ids = Vec::new();
    let mut code = Vec::new();
    for g in 0..3 {
        for p in 0..6 {
            ids.push(format!("big{g}-{p}"));
            code.push(format!("common-{g}"));
        }
    }
    for s in 0..40 {
        ids.push(format!("small{s}"));
        code.push(format!("rare-{s}"));
    }
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("code", Arc::new(StringArray::from(code)) as _),
    ])
    .unwrap();
    let mut network = Network::start(&["site"]).await;
    let mut policy = open_policy(5);
    policy.max_groups = 10;
    let node = network.node("site", catalogue_of(batch, "cases", &["code"]), policy);
    network.add_node(node).await;
    let (table, response) = network.query("SELECT code, count(*) AS n FROM cases GROUP BY code").await.unwrap();
    assert_eq!(status(&response, "site").outcome(), pb::SiteOutcome::Answered, "{}", status(&response, "site").message);
    assert_eq!(table.num_rows(), 3, "43 groups, 3 of them released: within the limit of 10");
}

/// Item 6: a researcher sees neither sites' network addresses nor columns beyond their
/// project's; query ids are per researcher, so another's running query stays invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn researchers_see_only_their_projects_columns_and_their_own_queries() {
    let mut network = Network::start(&["site", "b"]).await;
    let policy = Policy::from_toml(&format!(
        "min_cell_size = 1\n[[project]]\nname = \"{PROJECT}\"\ndatasets = [\"vitals\"]\ncolumns = {{ vitals = [\"ward\", \"bmi\"] }}\n"
    ))
    .unwrap();
    let node = network.node("site", catalogue_of(padded_ward(), "vitals", &["ward", "bmi", "smoker"]), policy);
    network.add_node(node).await;

    let researcher = network.pki.token();
    let operator = network.pki.issuer.issue("olga", &[PROJECT], &["operator"], Duration::from_secs(600));
    let mut client = network.client().await;
    let list = |token: &str| with_token(pb::ListSitesRequest::default(), token);
    let seen = client.list_sites(list(&researcher)).await.unwrap().into_inner();
    let site = seen.sites.iter().find(|s| s.site == "site").unwrap();
    assert!(site.remote_addr.is_empty(), "a researcher sees a hospital's address: {}", site.remote_addr);
    let columns: Vec<&str> =
        site.catalogue.as_ref().unwrap().datasets[0].columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["patient_id", "ward", "bmi"], "smoker is not the project's");
    let as_operator = client.list_sites(list(&operator)).await.unwrap().into_inner();
    let site = as_operator.sites.iter().find(|s| s.site == "site").unwrap();
    assert!(site.remote_addr.starts_with("127.0.0.1:"), "operators see where sites connect from");
    assert_eq!(site.catalogue.as_ref().unwrap().datasets[0].columns.len(), 4);
    let e = network.query("SELECT avg(bmi) FROM vitals WHERE smoker").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let listed = e.message().split("Valid fields").nth(1).unwrap_or_default();
    assert!(e.message().contains("smoker") && !listed.contains("smoker"), "{}", e.message());

    // Alice runs a slow query with id "q1" at a second, slow site.
    let (slow, _progress) = slow_node(&network, "b", 60, Duration::from_millis(25));
    network.add_node(slow).await;
    let request = |id: &str| pb::ResearchQuery {
        query_id: id.into(),
        sql: "SELECT count(*) AS n FROM vitals".into(),
        sites: vec!["b".into()],
        project: PROJECT.into(),
        ..Default::default()
    };
    let alice = network.spawn_query(request("q1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Bob uses the same id: his query runs (the id is his), and his cancel cannot reach Alice's.
    let bob = network.pki.issuer.issue("bob", &[PROJECT], &["researcher"], Duration::from_secs(600));
    let found = client.cancel(with_token(pb::CancelRequest { query_id: "q1".into() }, &bob)).await.unwrap();
    assert!(!found.into_inner().found, "bob found alice's query");
    let answer = client.query(with_token(request("q1"), &bob)).await.expect("bob's own q1 runs");
    assert_eq!(answer.get_ref().query_id, "q1");
    let alice = alice.await.unwrap().unwrap().into_inner();
    assert_eq!(status(&alice, "b").outcome(), pb::SiteOutcome::Answered, "alice's query was disturbed");
    assert_eq!(decode(&alice.arrow_ipc).unwrap().num_rows(), 1);
}
