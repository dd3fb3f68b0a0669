//! Minimum cell size: a group (or histogram bin) with fewer than k patients at a site
//! releases none of its numbers, and the answer says that cells were withheld.

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_tests::compare::{Cell, rows};
use verbund_tests::{Network, Synthetic, memory_catalogue, open_policy, run_sql, site_context, status};

const SEED: u64 = 99;
const SCALE: f64 = 0.1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_groups_are_withheld_at_each_site() {
    let data = Synthetic::new(SEED, SCALE).await.unwrap();
    let network = data.network(open_policy(5), &[]).await.unwrap();
    let generated = verbund_synth::generate(SEED, SCALE).unwrap();
    let sql = "SELECT sex, icd10, count(DISTINCT patient_id) AS patients, count(*) AS n, avg(age) AS a \
               FROM conditions GROUP BY sex, icd10";
    let mut total_small = 0;
    for site in &generated {
        let request = pb::ResearchQuery { sql: sql.into(), sites: vec![site.site.clone()], ..Default::default() };
        let (federated, response) = network.query_with(request).await.unwrap();
        let local = run_sql(&site_context(site).unwrap(), sql).await.unwrap();
        let local_rows = rows(&local, 2);
        let (big, small): (Vec<_>, Vec<_>) =
            local_rows.into_iter().partition(|r| matches!(r[2], Cell::Int(p) if p >= 5));
        assert_eq!(status(&response, &site.site).groups as usize, big.len(), "{}", site.site);
        assert_eq!(rows(&federated, 2).len(), big.len());
        // Released groups are exact; withheld groups are absent.
        let key = |r: &[Cell]| format!("{:?}/{:?}", r[0], r[1]);
        let released: HashMap<String, Vec<Cell>> = rows(&federated, 2).into_iter().map(|r| (key(&r), r)).collect();
        for r in &big {
            let got = &released[&key(r)];
            assert_eq!(got[2..4], r[2..4]);
        }
        for r in &small {
            assert!(!released.contains_key(&key(r)), "small group {r:?} released");
        }
        total_small += small.len();
    }
    assert!(total_small > 0, "the test data must contain small groups for this test to mean anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_bins_below_k_are_withheld() {
    let data = Synthetic::new(SEED, SCALE).await.unwrap();
    let network = data.network(open_policy(5), &[]).await.unwrap();
    let generated = verbund_synth::generate(SEED, SCALE).unwrap();
    let site = &generated[1];
    let sql = "SELECT sex, histogram(age, 0, 5, 20) AS h FROM patients WHERE sex != 'diverse' GROUP BY sex";
    let request = pb::ResearchQuery { sql: sql.into(), sites: vec![site.site.clone()], ..Default::default() };
    let (federated, response) = network.query_with(request).await.unwrap();
    let per_bin = "SELECT sex, bin(age, 0, 5, 20) AS b, count(DISTINCT patient_id) AS p FROM patients \
                   WHERE sex != 'diverse' GROUP BY sex, b";
    let local = rows(&run_sql(&site_context(site).unwrap(), per_bin).await.unwrap(), 2);
    let mut expected_withheld = 0;
    for r in rows(&federated, 1) {
        let Cell::List(counts) = &r[1] else { panic!("not a histogram") };
        for (i, count) in counts.iter().enumerate() {
            let patients = local
                .iter()
                .find(|l| l[0] == r[0] && l[1] == Cell::Float(i as f64 * 5.0))
                .map(|l| if let Cell::Int(p) = l[2] { p } else { 0 })
                .unwrap_or(0);
            if patients < 5 {
                // Empty bins too: an empty bin must look like a small one.
                expected_withheld += 1;
                assert_eq!(*count, None, "bin {i} with {patients} patients must be withheld");
            } else {
                assert!(count.unwrap() >= patients, "bin {i} released");
            }
        }
    }
    assert!(expected_withheld > 0, "the test data must contain small bins");
    let note = format!("{expected_withheld} histogram bins withheld");
    assert!(response.notes.iter().any(|n| n.contains(&note)), "{note} in {:?}", response.notes);
}

/// A whole answer below k: nothing of it in the response, not even the group's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_group_leaves_no_trace_in_the_response() {
    let mut network = Network::start(&["registry"]).await;
    let diagnoses =
        ["common", "common", "common", "common", "common", "common", "rare-diagnosis-xq", "rare-diagnosis-xq"];
    let ids: Vec<String> = (0..diagnoses.len()).map(|i| format!("patient-{i}")).collect();
    let batch = RecordBatch::try_from_iter([
        ("patient_id", Arc::new(StringArray::from(ids)) as _),
        ("diagnosis", Arc::new(StringArray::from(diagnoses.to_vec())) as _),
        ("age", Arc::new(Int64Array::from(vec![50, 51, 52, 53, 54, 55, 987_654, 987_655])) as _),
    ])
    .unwrap();
    let node = network.node("registry", memory_catalogue("cases", vec![batch], &["diagnosis", "age"]), open_policy(5));
    network.add_node(node).await;

    let (table, response) =
        network.query("SELECT diagnosis, count(*) AS n, sum(age) AS s FROM cases GROUP BY diagnosis").await.unwrap();
    assert_eq!(table.num_rows(), 1);
    assert_eq!(status(&response, "registry").groups, 1);
    let bytes = response.encode_to_vec();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("rare-diagnosis"), "the withheld group's key leaked");
    assert!(!text.contains(&(987_654i64 + 987_655).to_string()), "the withheld group's sum leaked");
    assert!(response.notes.iter().any(|n| n.contains("withholds")), "{:?}", response.notes);

    // A global aggregate below k: no row at all.
    let (table, response) = network.query("SELECT count(*) AS n FROM cases WHERE age > 1000").await.unwrap();
    assert_eq!(table.num_rows(), 0);
    assert_eq!(status(&response, "registry").groups, 0);
}
