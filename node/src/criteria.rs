//! Fast paths for cohort criteria, measured on 100,000 patients (BENCHMARKS.md §7):
//!
//! - A criterion that only matches codes on a dataset imported from FHIR (model `fhir/<x>`) is
//!   answered from `codings` alone: every coding row names its resource and patient, and the
//!   resource's type says which dataset it is a row of (docs/fhir-datasets.md). This saves a
//!   join with the whole dataset, and `codings` is ordered by code, so only the row groups that
//!   can hold the codes are read.
//! - Each criterion's patient set is kept, per version of the data, in a bounded cache: the
//!   same criterion in the next question (feasibility queries share their diagnoses and labs)
//!   costs a lookup. Sets are the true patients of one criterion, never released as such: every
//!   number still comes from the query over them, through the same privacy checks. The cache is
//!   cleared whenever the node serves new data (the swap waits for running queries).

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use std::collections::VecDeque;
use std::sync::Arc;

/// Bytes of patient sets kept; a set larger than a quarter of it is not kept.
pub(crate) const CACHE_BYTES: usize = 128 * 1024 * 1024;

/// The FHIR resource types whose rows a dataset of `model` holds.
pub(crate) fn resource_types(model: &str) -> Option<&'static [&'static str]> {
    Some(match model {
        "fhir/patients" => &["Patient"],
        "fhir/conditions" => &["Condition"],
        "fhir/observations" => &["Observation"],
        "fhir/encounters" => &["Encounter"],
        "fhir/procedures" => &["Procedure"],
        "fhir/medication_uses" => &["MedicationRequest", "MedicationAdministration", "MedicationStatement"],
        "fhir/specimens" => &["Specimen"],
        "fhir/consents" => &["Consent"],
        _ => return None,
    })
}

struct Entry {
    key: String,
    table: Arc<MemTable>,
    bytes: usize,
}

/// Patient sets of criteria, most recently used last.
#[derive(Default)]
pub(crate) struct CriterionCache(parking_lot::Mutex<VecDeque<Entry>>);

impl CriterionCache {
    pub(crate) fn get(&self, key: &str) -> Option<Arc<MemTable>> {
        let mut entries = self.0.lock();
        let i = entries.iter().position(|e| e.key == key)?;
        let entry = entries.remove(i)?;
        let table = entry.table.clone();
        entries.push_back(entry);
        Some(table)
    }

    /// Keeps a criterion's patients; `schema` is theirs when no batch came back (an empty set
    /// is kept too, so that it is not computed again).
    pub(crate) fn insert(&self, key: String, schema: SchemaRef, batches: Vec<RecordBatch>) -> Option<Arc<MemTable>> {
        let schema = batches.first().map(RecordBatch::schema).unwrap_or(schema);
        let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let table = Arc::new(MemTable::try_new(schema, vec![batches]).ok()?);
        if bytes <= CACHE_BYTES / 4 {
            let mut entries = self.0.lock();
            let mut total: usize = entries.iter().map(|e| e.bytes).sum::<usize>() + bytes;
            while total > CACHE_BYTES {
                match entries.pop_front() {
                    Some(old) => total -= old.bytes,
                    None => break,
                }
            }
            entries.push_back(Entry { key, table: table.clone(), bytes });
        }
        Some(table)
    }

    pub(crate) fn clear(&self) {
        self.0.lock().clear();
    }
}
