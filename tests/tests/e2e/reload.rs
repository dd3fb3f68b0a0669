//! New data without a restart: a node whose dataset is a `current` symlink (as `verbund
//! import` writes it) serves a new generation once the symlink moves, and the coordinator
//! learns its new catalogue (here: a column's new type), while the node stays connected.

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
    let gen_dir = dir.join(format!("gen-{generation}"));
    std::fs::create_dir_all(&gen_dir).unwrap();
    let ids: Vec<String> = (0..patients).map(|i| format!("p{i}")).collect();
    let mut columns: Vec<(&str, Arc<dyn datafusion::arrow::array::Array>)> =
        vec![("patient_id", Arc::new(StringArray::from(ids)))];
    if generation % 2 == 1 {
        columns.push(("ward", Arc::new(StringArray::from(vec!["A"; patients]))));
    } else {
        columns.push(("ward", Arc::new(Int64Array::from(vec![1; patients]))));
    }
    let batch = RecordBatch::try_from_iter(columns).unwrap();
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
