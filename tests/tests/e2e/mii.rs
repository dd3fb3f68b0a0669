//! The MII's own feasibility material (ccdl/tests/data/mii-ccdl: FHIR bundles and CCDL
//! queries with the patient counts the MII's reference translator asserts), imported with
//! `verbund import` into real nodes and asked through the coordinator's CCDL front-end: on one
//! site, split across three, and under the default privacy profile.

use crate::attacks::{answered, raw_policy};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use verbund_node::catalogue::Catalogue;
use verbund_policies::Policy;
use verbund_proto::v1 as pb;
use verbund_tests::Network;

fn material(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ccdl/tests/data/mii-ccdl").join(name)
}

/// The README's expected counts: (query file, patients), for testData.json.
const TEST_DATA: &[(&str, i64)] = &[
    ("consent.json", 1),
    ("example-all-crits-time.json", 0),
    ("large-query-worst-case-with-time-constraints.json", 0),
    ("test-large-query-more-crit-time-rest-1.json", 0),
    ("SpecimenSQ.json", 0),
    ("SpecimenSQExclusion.json", 159),
    ("SpecimenSQTwoInclusion.json", 0),
    ("SpecimenSQTwoReferenceCriteria.json", 0),
    ("SpecimenSQAndBodySite.json", 0),
];
/// ... and for the MII core data set example bundle.
const KDS: &[(&str, i64)] = &[
    ("EncounterInpatient.json", 2),
    ("EncounterInpatientEinrichtung.json", 2),
    ("EncounterInpatientEinrichtungTimeRestriction.json", 1),
    ("EncounterInpatientAbteilung.json", 0),
];

/// Every query of testData.json with its expected count: the table above and every file of
/// returning-one-patient/ (1 each).
fn test_data_queries() -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = TEST_DATA.iter().map(|(q, n)| (format!("queries/{q}"), *n)).collect();
    let dir = material("queries/returning-one-patient");
    let mut ones: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| format!("queries/returning-one-patient/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    ones.sort();
    assert_eq!(ones.len(), 11, "every file of returning-one-patient/");
    out.extend(ones.into_iter().map(|q| (q, 1)));
    out
}

/// Imports `inputs` into `out` and opens the node's datasets as `verbund import` prints them.
async fn imported(inputs: &[PathBuf], out: &Path) -> Catalogue {
    let summary = verbund_fhir::import(&verbund_fhir::ImportOptions::new(inputs.to_vec(), out.to_path_buf()))
        .await
        .unwrap_or_else(|e| panic!("import of {inputs:?}: {e}"));
    assert!(summary.rows.values().sum::<u64>() > 0, "{summary}");
    let configs = verbund_tests::fhir_datasets(out);
    Catalogue::open(&configs).await.unwrap_or_else(|e| panic!("the imported datasets: {e}"))
}

async fn network(sites: Vec<(&str, Catalogue)>, policy: Policy) -> Network {
    let names: Vec<&str> = sites.iter().map(|(s, _)| *s).collect();
    let mut network = Network::start(&names).await;
    for (i, (site, catalogue)) in sites.into_iter().enumerate() {
        let node = network.node_with_noise_key(site, catalogue, policy.clone(), 80 + i as u8);
        network.add_node(node).await;
    }
    network
}

/// The federated patient count of a CCDL query, with the response.
async fn count(network: &Network, query: &str) -> (Option<i64>, pb::QueryResponse) {
    let ccdl = std::fs::read_to_string(material(query)).unwrap();
    let request = pb::ResearchQuery { ccdl, ..Default::default() };
    let (batch, response) = network.query_with(request).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    let column = batch.column(0);
    // A withheld count is a NULL, or no row at all.
    let released = batch.num_rows() > 0 && column.is_valid(0);
    (released.then(|| column.as_primitive::<Int64Type>().value(0)), response)
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_string(&mut text).unwrap();
    text
}

#[tokio::test]
async fn the_mii_expected_counts_on_one_site_each() {
    let dir = tempfile::tempdir().unwrap();
    let test_data = imported(&[material("testData.json.gz")], &dir.path().join("a")).await;
    let kds = imported(&[material("Bundle-mii-exa-test-data-bundle.json.gz")], &dir.path().join("b")).await;

    let mut network_a = Network::start(&["site-a"]).await;
    let node = std::sync::Arc::new(network_a.node_with_noise_key("site-a", test_data, raw_policy(), 80));
    network_a.add_node(node.clone()).await;
    for (query, expected) in test_data_queries() {
        let (got, response) = count(&network_a, &query).await;
        assert_eq!(answered(&response), 1, "{query}: {response:?}");
        assert_eq!(got, Some(expected), "{query}");
    }
    // By the node's criteria index (the test below asks the same without it).
    assert!(node.engine().criteria_answered_by_index() >= 20, "{}", node.engine().criteria_answered_by_index());
    let network_b = network(vec![("site-b", kds)], raw_policy()).await;
    for (query, expected) in KDS {
        let query = format!("queries/{query}");
        let (got, response) = count(&network_b, &query).await;
        assert_eq!(answered(&response), 1, "{query}: {response:?}");
        assert_eq!(got, Some(*expected), "{query}");
    }
    // The format examples translate; the one with properties no mapping covers says where.
    for query in ["MedicationAdministrationSQ.json", "MedicationRequestSQ.json"] {
        let (got, _) = count(&network_a, &format!("queries/{query}")).await;
        assert!(got.is_some(), "{query}");
    }
    let ccdl = std::fs::read_to_string(material("queries/ccdl-all-properties.json")).unwrap();
    let e = network_a.query_with(pb::ResearchQuery { ccdl, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("/exclusionCriteria/2/1/termCodes/0"), "{}", e.message());
}

/// Splits testData.json by patient over three sites, each in another form: a transaction
/// Bundle, NDJSON, gzip NDJSON. Resources without a patient (Organizations, Medications) go
/// to every site.
fn split_test_data(dir: &Path) -> Vec<PathBuf> {
    let bundle: serde_json::Value = serde_json::from_str(&gunzip(&material("testData.json.gz"))).unwrap();
    let mut per_site: Vec<Vec<serde_json::Value>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let site_of = |patient: &str| patient.bytes().map(usize::from).sum::<usize>() % 3;
    for entry in bundle["entry"].as_array().unwrap() {
        let resource = &entry["resource"];
        let patient = match resource["resourceType"].as_str() {
            Some("Patient") => resource["id"].as_str().map(str::to_string),
            _ => ["subject", "patient"]
                .iter()
                .find_map(|f| resource[*f]["reference"].as_str())
                .map(|r| r.trim_start_matches("Patient/").to_string()),
        };
        match patient {
            Some(p) => per_site[site_of(&p)].push(entry.clone()),
            None => per_site.iter_mut().for_each(|s| s.push(entry.clone())),
        }
    }
    let mut files = Vec::new();
    for (i, entries) in per_site.into_iter().enumerate() {
        let site_dir = dir.join(format!("export-{i}"));
        std::fs::create_dir_all(&site_dir).unwrap();
        match i {
            0 => {
                let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
                std::fs::write(site_dir.join("bundle.json"), bundle.to_string()).unwrap();
            }
            _ => {
                let lines: String = entries.iter().map(|e| format!("{}\n", e["resource"])).collect();
                if i == 1 {
                    std::fs::write(site_dir.join("export.ndjson"), lines).unwrap();
                } else {
                    let file = std::fs::File::create(site_dir.join("export.ndjson.gz")).unwrap();
                    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
                    gz.write_all(lines.as_bytes()).unwrap();
                    gz.finish().unwrap();
                }
            }
        }
        files.push(site_dir);
    }
    files
}

#[tokio::test]
async fn split_across_three_sites_the_counts_add_up_to_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let exports = split_test_data(dir.path());
    let mut sites = Vec::new();
    for (i, (site, export)) in ["site-a", "site-b", "site-c"].into_iter().zip(&exports).enumerate() {
        sites.push((site, imported(std::slice::from_ref(export), &dir.path().join(format!("out-{i}"))).await));
    }
    let network = network(sites, raw_policy()).await;
    let mut nonzero_sites = BTreeMap::new();
    for (query, expected) in test_data_queries() {
        let (got, response) = count(&network, &query).await;
        assert_eq!(answered(&response), 3, "{query}: {response:?}");
        assert_eq!(got, Some(expected), "{query}");
        nonzero_sites.insert(query, response.sites.iter().filter(|s| s.groups > 0).count());
    }
    // 159 women are spread over all three sites.
    assert_eq!(nonzero_sites["queries/SpecimenSQExclusion.json"], 3);
}

#[tokio::test]
async fn under_the_default_policy_the_same_questions_get_private_answers() {
    let dir = tempfile::tempdir().unwrap();
    let test_data = imported(&[material("testData.json.gz")], dir.path()).await;
    let network = network(vec![("site-a", test_data)], Policy::default().allowing(verbund_tests::PROJECT)).await;
    // 159 women: released with noise (ε 1, sensitivity 1: within ±30 except with probability
    // far below 1e-9), and charged.
    let (women, response) = count(&network, "queries/SpecimenSQExclusion.json").await;
    let women = women.expect("159 is far above the threshold");
    assert!((women - 159).abs() <= 30, "{women}");
    // (A discrete Laplace draw of scale 1 is 0 about half the time: the number alone does not
    // show the noise; the profile and the charge do.)
    assert_eq!(response.sites[0].profile, "dp");
    assert!(response.sites[0].cost.as_ref().is_some_and(|c| c.epsilon > 0.0 && !c.repeat), "{response:?}");
    // One patient: below the threshold, so nothing is released about them.
    let (one, _) = count(&network, "queries/returning-one-patient/Diagnose.json").await;
    assert_eq!(one, None, "a count of one is withheld");
}

/// The same expected counts by the node's other route: DataFusion plans over the datasets
/// instead of its in-memory criteria index (which the tests above use).
#[tokio::test]
async fn the_mii_expected_counts_without_the_criteria_index() {
    let dir = tempfile::tempdir().unwrap();
    let test_data = imported(&[material("testData.json.gz")], &dir.path().join("a")).await;
    let mut network = Network::start(&["site-a"]).await;
    let node = std::sync::Arc::new(network.node_with_noise_key("site-a", test_data, raw_policy(), 80));
    network.add_node(node.clone()).await;
    node.engine().use_criteria_index(false);
    for (query, expected) in test_data_queries() {
        let (got, response) = count(&network, &query).await;
        assert_eq!(answered(&response), 1, "{query}: {response:?}");
        assert_eq!(got, Some(expected), "{query}");
    }
    assert_eq!(node.engine().criteria_index_bytes(), 0, "nothing was indexed");
}
