//! Grouping by a patient attribute (issue 13, plan D19): "mean HbA1c by sex among patients
//! with a type-2 diabetes diagnosis", on the three-site clinical network of `cohorts.rs`,
//! compared with the pooled rows grouped directly in this file.

use crate::attacks::{answered, dp_policy, raw_policy, refusals};
use crate::cohorts::{Site, diagnosis, group, network, with_prefix};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use std::collections::BTreeMap;
use verbund_policies::{DatasetRule, Level};
use verbund_proto::v1 as pb;
use verbund_tests::Network;

const BY_SEX: &str = "SELECT p.gender, avg(o.value) AS mean, count(*) AS n \
    FROM observations o LEFT JOIN patients p ON o.patient_id = p.patient_id \
    WHERE o.value_unit = '%' GROUP BY p.gender";

fn t2d() -> pb::Cohort {
    pb::Cohort { inclusion: vec![group(vec![diagnosis(&[], &["E11"])])], exclusion: vec![] }
}

async fn by_sex(network: &Network, sql: &str) -> Result<(RecordBatch, pb::QueryResponse), tonic::Status> {
    network.query_with(pb::ResearchQuery { sql: sql.into(), cohort: Some(t2d()), ..Default::default() }).await
}

/// (gender → (mean, rows)) from the answer.
fn groups(batch: &RecordBatch) -> BTreeMap<String, (f64, Option<i64>)> {
    let n = batch.column_by_name("n").map(|c| c.as_primitive::<Int64Type>().clone());
    (0..batch.num_rows())
        .map(|r| {
            let gender = batch.column(0).as_string::<i32>().value(r).to_string();
            let mean = batch.column(1).as_primitive::<Float64Type>().value(r);
            (gender, (mean, n.as_ref().map(|n| n.value(r))))
        })
        .collect()
}

/// The same, directly from the pooled rows: each lab joined to its patient's gender.
fn expected(sites: &[Site]) -> BTreeMap<String, (f64, Option<i64>)> {
    let t2d = with_prefix(sites, "E11");
    let gender: BTreeMap<&str, &str> =
        sites.iter().flat_map(|s| &s.patients).map(|(id, g)| (id.as_str(), *g)).collect();
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for lab in sites.iter().flat_map(|s| &s.labs).filter(|l| l.unit == "%" && t2d.contains(&l.patient)) {
        values.entry(gender[lab.patient.as_str()].to_string()).or_default().push(lab.value);
    }
    values.into_iter().map(|(g, v)| (g, (v.iter().sum::<f64>() / v.len() as f64, Some(v.len() as i64)))).collect()
}

#[tokio::test]
async fn mean_hba1c_by_sex_among_t2d_patients_equals_the_pooled_rows() {
    let (network, sites) = network(raw_policy()).await;
    let (batch, response) = by_sex(&network, BY_SEX).await.unwrap();
    assert_eq!(answered(&response), 3, "{response:?}");
    assert_eq!(batch.schema().field(0).name(), "gender");
    let got = groups(&batch);
    let want = expected(&sites);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["female", "male"]);
    for (gender, (mean, n)) in &want {
        let (m, rows) = got[gender];
        assert_eq!(rows, *n, "{gender}");
        assert!((m - mean).abs() < 1e-9, "{gender}: {m} vs {mean}");
    }
    // The two means differ: the grouping really splits by the patient's sex.
    assert!((want["female"].0 - want["male"].0).abs() > 1e-6, "{want:?}");
}

#[tokio::test]
async fn joins_other_than_a_patient_attribute_for_grouping_are_refused_with_the_reason() {
    let (network, _) = network(raw_policy()).await;
    let join = "FROM observations o LEFT JOIN patients p ON o.patient_id = p.patient_id";
    let cases = [
        (
            "SELECT p.gender, count(*) FROM observations o JOIN patients p ON o.patient_id = p.patient_id GROUP BY p.gender"
                .to_string(),
            "Inner JOIN is not supported",
        ),
        (format!("SELECT count(*) {join} WHERE p.gender = 'male'"), "the WHERE condition reads 'p.gender'"),
        (format!("SELECT count(DISTINCT p.resource) {join}"), "an aggregate reads 'p.resource'"),
        (
            "SELECT p.gender, count(*) FROM observations o LEFT JOIN patients p ON o.resource = p.patient_id GROUP BY p.gender"
                .to_string(),
            "the join must be ON o.patient_id = p.patient_id",
        ),
        (
            "SELECT count(*) FROM observations o LEFT JOIN patients p ON o.patient_id = p.patient_id".to_string(),
            "does not group by any of its columns",
        ),
    ];
    for (sql, says) in cases {
        let e = network.query(&sql).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{sql}");
        assert!(e.message().contains(says), "{sql}: '{}' does not say '{says}'", e.message());
    }
    // Conditions have several rows per patient: joined, they would multiply the rows and put
    // one patient into several groups. Every site says so.
    let sql = "SELECT q.code, count(*) FROM observations o LEFT JOIN conditions q ON o.patient_id = q.patient_id \
        GROUP BY q.code";
    let (_, response) = network.query(sql).await.unwrap();
    assert_eq!(answered(&response), 0);
    for refusal in refusals(&response) {
        assert!(refusal.contains("dataset 'conditions' has more than one row for some patients"), "{refusal}");
    }
}

/// Under differential privacy the attribute's levels must be declared at the site, on the
/// dataset they come from; then the grouped means are noisy and charged.
#[tokio::test]
async fn under_differential_privacy_a_patient_attribute_needs_declared_levels() {
    let mut policy = dp_policy(20.0);
    // Up to three HbA1c values per patient, and ε large enough for the noisy thresholds of a
    // mean over ~75 patients per site to pass.
    policy.dp.max_rows_per_patient = 3;
    policy.dp.epsilon_per_query = 5.0;
    policy.datasets.clear();
    policy.datasets.push(DatasetRule {
        name: "observations".into(),
        bounds: [("value".to_string(), [0.0, 20.0])].into_iter().collect(),
        ..DatasetRule::default()
    });
    let (undeclared, _) = network(policy.clone()).await;
    let (_, response) = by_sex(&undeclared, BY_SEX).await.unwrap();
    assert_eq!(answered(&response), 0);
    let refused = refusals(&response);
    assert!(refused[0].contains("grouping by 'gender' of dataset 'patients' needs its levels declared"), "{refused:?}");

    policy.datasets.push(DatasetRule {
        name: "patients".into(),
        levels: [("gender".to_string(), vec![Level::Text("female".into()), Level::Text("male".into())])]
            .into_iter()
            .collect(),
        ..DatasetRule::default()
    });
    policy.validate().unwrap();
    let (declared, sites) = network(policy).await;
    let sql = "SELECT p.gender, avg(o.value) AS mean FROM observations o \
        LEFT JOIN patients p ON o.patient_id = p.patient_id WHERE o.value_unit = '%' GROUP BY p.gender";
    let (batch, response) = by_sex(&declared, sql).await.unwrap();
    assert_eq!(answered(&response), 3, "{response:?}");
    assert!(response.sites.iter().all(|s| s.cost.as_ref().is_some_and(|c| c.epsilon > 0.0)), "{response:?}");
    let got = groups(&batch);
    assert_eq!(got.len(), 2, "{:?} {:?}", response.notes, response.sites);
    for (gender, (mean, _)) in expected(&sites) {
        // Means of a few hundred values in [0, 20], each site's sum and count noised.
        let (m, _) = got[&gender];
        assert!((m - mean).abs() < 1.0, "{gender}: {m} vs {mean}");
    }
}
