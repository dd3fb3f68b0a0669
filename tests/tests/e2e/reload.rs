//! New data without a restart: a node whose dataset is a `current` symlink (as `verbund
//! import` writes it) serves a new generation once the symlink moves, and the coordinator
//! learns its new catalogue (here: a column's new type), while the node stays connected.
//! New data in a dataset that only a cohort reads is new data for the question, too: its
//! noise changes with it.

use crate::attacks::raw_policy;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::Int64Type;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use verbund_node::catalogue::Catalogue;
use verbund_node::config::{DatasetConfig, FileFormat};
use verbund_tests::Network;

/// `ward` is text in odd generations and a number in even ones.
fn write_generation(dir: &Path, generation: u32, patients: usize) {
    let ids: Vec<String> = (0..patients).map(|i| format!("p{i}")).collect();
    let mut columns: Vec<(&str, Arc<dyn datafusion::arrow::array::Array>)> =
        vec![("patient_id", Arc::new(StringArray::from(ids)))];
    if generation % 2 == 1 {
        columns.push(("ward", Arc::new(StringArray::from(vec!["A"; patients]))));
    } else {
        columns.push(("ward", Arc::new(Int64Array::from(vec![1; patients]))));
    }
    write_batch(dir, generation, RecordBatch::try_from_iter(columns).unwrap());
}

/// Writes `batch` as generation `generation` of the dataset in `dir` and points `current` at it.
fn write_batch(dir: &Path, generation: u32, batch: RecordBatch) {
    let gen_dir = dir.join(format!("gen-{generation}"));
    std::fs::create_dir_all(&gen_dir).unwrap();
    let file = std::fs::File::create(gen_dir.join("part-0.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    // Swap `current` atomically, as the importer does.
    let temporary = dir.join("current.new");
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(format!("gen-{generation}"), &temporary).unwrap();
    std::fs::rename(&temporary, dir.join("current")).unwrap();
}

async fn count(network: &Network, sql: &str) -> Result<i64, tonic::Status> {
    let (batch, _) = network.query(sql).await?;
    Ok(batch.column(0).as_primitive::<Int64Type>().value(0))
}

#[tokio::test]
async fn a_new_import_is_served_and_announced_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("patients");
    write_generation(&dir, 1, 10);
    let configs = vec![DatasetConfig {
        name: "patients".into(),
        path: dir.join("current"),
        format: Some(FileFormat::Parquet),
        patient_key: "patient_id".into(),
        columns: vec!["patient_id".into(), "ward".into()],
        model: None,
    }];
    let catalogue = Catalogue::open(&configs).await.unwrap();
    let mut network = Network::start(&["site-a"]).await;
    let node = network.node("site-a", catalogue, raw_policy()).with_datasets(configs);
    network.add_node(node).await;
    assert_eq!(count(&network, "SELECT count(*) FROM patients").await.unwrap(), 10);
    let e = count(&network, "SELECT count(*) FROM patients WHERE ward = 1").await.unwrap_err();
    assert!(e.message().contains("cannot be compared with a string column"), "{}", e.message());

    // A second import: more patients, and `ward` is now a number.
    write_generation(&dir, 2, 14);
    let mut served = 0;
    for _ in 0..50 {
        served = count(&network, "SELECT count(*) FROM patients").await.unwrap();
        if served == 14 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, 14, "the new generation is served");
    // The coordinator plans against the new catalogue: the comparison that it refused is now
    // valid, and answered.
    let mut answer = Err(tonic::Status::unknown("not asked"));
    for _ in 0..50 {
        answer = count(&network, "SELECT count(*) FROM patients WHERE ward = 1").await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.unwrap(), 14);
    assert_eq!(network.list_sites().await.sites.len(), 1);
}

fn strings(values: impl IntoIterator<Item = String>) -> Arc<dyn datafusion::arrow::array::Array> {
    Arc::new(StringArray::from(values.into_iter().collect::<Vec<_>>()))
}

/// 60 patients; patients 0..`diabetic` have an E11.9 diagnosis, everyone an I10.
fn write_clinical(dir: &Path, generation: u32, diabetic: usize) {
    let ids = || (0..60).map(|i| format!("p{i}"));
    let patients = RecordBatch::try_from_iter([("resource", strings(ids())), ("patient_id", strings(ids()))]).unwrap();
    if generation == 1 {
        write_batch(&dir.join("patients"), 1, patients);
    }
    let mut rows: Vec<(String, &str)> = ids().map(|p| (p, "I10")).collect();
    rows.extend(ids().take(diabetic).map(|p| (p, "E11.9")));
    let conditions = RecordBatch::try_from_iter([
        ("resource", strings(rows.iter().enumerate().map(|(i, _)| format!("Condition/{i}")))),
        ("patient_id", strings(rows.iter().map(|r| r.0.clone()))),
        ("code", strings(rows.iter().map(|r| r.1.to_string()))),
    ])
    .unwrap();
    write_batch(&dir.join("conditions"), generation, conditions);
}

fn clinical_config(dir: &Path, name: &str, columns: &[&str]) -> DatasetConfig {
    DatasetConfig {
        name: name.into(),
        path: dir.join(name).join("current"),
        format: Some(FileFormat::Parquet),
        patient_key: "patient_id".into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        model: None,
    }
}

/// One site serving generation 1 of `write_clinical` (20 patients with E11.9) from `dir`.
async fn clinical_network(dir: &Path, policy: verbund_policies::Policy) -> (Network, Arc<verbund_node::Node>) {
    write_clinical(dir, 1, 20);
    let configs = vec![
        clinical_config(dir, "patients", &["resource", "patient_id"]),
        clinical_config(dir, "conditions", &["resource", "patient_id", "code"]),
    ];
    let catalogue = Catalogue::open(&configs).await.unwrap();
    let mut network = Network::start(&["site-a"]).await;
    let node = Arc::new(network.node("site-a", catalogue, policy).with_datasets(configs));
    network.add_node(node.clone()).await;
    (network, node)
}

/// Whether the site charged the answer as a repeat (same question, same data, same noise).
async fn repeat(network: &Network, cohort: &verbund_proto::v1::Cohort) -> bool {
    let request = verbund_proto::v1::ResearchQuery { cohort: Some(cohort.clone()), ..Default::default() };
    let (_, response) = network.query_with(request).await.unwrap();
    let cost = response.sites[0].cost.as_ref().unwrap_or_else(|| panic!("a dp answer has a cost: {response:?}"));
    cost.repeat
}

/// The attack: ask the same cohort count before and after an import that adds one patient's
/// diagnosis. Were the noise keyed on the patients dataset only (the one the count reads), it
/// would repeat, and the two answers would differ by exactly the change: whether that patient
/// has the diagnosis. The cohort's dataset is part of the data version, so the noise is new.
#[tokio::test]
async fn an_import_into_a_dataset_a_cohort_reads_gives_the_question_new_noise() {
    use verbund_proto::v1 as pb;
    let data = tempfile::tempdir().unwrap();
    let mut policy = crate::attacks::dp_policy(10.0);
    policy.datasets.clear();
    let (network, node) = clinical_network(data.path(), policy).await;
    let e11 = pb::Criterion {
        dataset: "conditions".into(),
        fixed: Some(pb::Filter {
            kind: Some(pb::filter::Kind::Compare(pb::Comparison {
                column: "code".into(),
                op: pb::CompareOp::Eq as i32,
                value: Some(pb::Literal { value: Some(pb::literal::Value::String("E11.9".into())) }),
            })),
        }),
        ..Default::default()
    };
    let cohort = pb::Cohort { inclusion: vec![pb::CriterionGroup { criteria: vec![e11] }], exclusion: vec![] };
    assert!(!repeat(&network, &cohort).await);
    assert!(repeat(&network, &cohort).await, "the same question on the same data repeats its noise");

    let versions = node.engine().dataset_versions();
    write_clinical(data.path(), 2, 21);
    for _ in 0..50 {
        if node.engine().dataset_versions() != versions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = node.engine().dataset_versions();
    let changed: Vec<&String> = now.iter().zip(&versions).filter(|(a, b)| a != b).map(|((name, _), _)| name).collect();
    assert_eq!(changed, ["conditions"], "only the dataset the cohort reads has new data");
    assert!(!repeat(&network, &cohort).await, "new data in the cohort's dataset, new noise (and a new charge)");
    assert!(repeat(&network, &cohort).await);
}

/// A node keeps each criterion's patients for the data it serves; new data must not be
/// answered from the old sets.
#[tokio::test]
async fn cohort_counts_follow_a_new_import() {
    use verbund_proto::v1 as pb;
    let data = tempfile::tempdir().unwrap();
    let (network, _) = clinical_network(data.path(), raw_policy()).await;
    let e11 = pb::Criterion {
        dataset: "conditions".into(),
        fixed: Some(pb::Filter {
            kind: Some(pb::filter::Kind::InList(pb::InList {
                column: "code".into(),
                values: vec![pb::Literal { value: Some(pb::literal::Value::String("E11.9".into())) }],
                negated: false,
            })),
        }),
        ..Default::default()
    };
    let request = pb::ResearchQuery {
        cohort: Some(pb::Cohort { inclusion: vec![pb::CriterionGroup { criteria: vec![e11] }], exclusion: vec![] }),
        ..Default::default()
    };
    let count = || async {
        let (batch, _) = network.query_with(request.clone()).await.unwrap();
        batch.column(0).as_primitive::<Int64Type>().value(0)
    };
    assert_eq!(count().await, 20);
    assert_eq!(count().await, 20, "asked again (from the node's criterion cache)");
    write_clinical(data.path(), 2, 27);
    let mut served = 0;
    for _ in 0..50 {
        served = count().await;
        if served == 27 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, 27, "the new import's diagnoses count");
}
