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

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
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

/// A set of patient keys (ahash: SipHash was a tenth of a cold question's time).
pub(crate) type Keys<'a> = std::collections::HashSet<&'a str, ahash::RandomState>;

/// The distinct patients of one criterion: as keys (the DataFusion route: text, one column),
/// or as ordinals in the criteria index's patient dictionary of this data version.
pub(crate) enum Patients {
    Keys(Vec<RecordBatch>),
    Bits(Bits),
}

pub(crate) type PatientSet = Arc<Patients>;

impl Patients {
    fn bytes(&self) -> usize {
        match self {
            Patients::Keys(batches) => batches.iter().map(RecordBatch::get_array_memory_size).sum(),
            Patients::Bits(bits) => bits.0.len() * 8,
        }
    }
}

/// A set of patient ordinals, one bit each: 100,000 patients in 12.5 KB, and a union or an
/// intersection is a pass over 1,600 words.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub(crate) fn empty(len: usize) -> Self {
        Bits(vec![0; len.div_ceil(64)])
    }

    pub(crate) fn insert(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w |= 1 << (i % 64);
        }
    }

    pub(crate) fn contains(&self, i: u32) -> bool {
        self.0.get(i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub(crate) fn or(&mut self, other: &Bits) {
        self.0.iter_mut().zip(&other.0).for_each(|(a, b)| *a |= b);
    }

    pub(crate) fn and(&mut self, other: &Bits) {
        self.0.iter_mut().zip(&other.0).for_each(|(a, b)| *a &= b);
    }

    pub(crate) fn and_not(&mut self, other: &Bits) {
        self.0.iter_mut().zip(&other.0).for_each(|(a, b)| *a &= !b);
    }

    /// The ordinals in the set, ascending.
    pub(crate) fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let bit = w.trailing_zeros();
                    w &= w - 1;
                    i as u32 * 64 + bit
                })
            })
        })
    }
}

/// The keys of a patient set given as keys.
pub(crate) fn keys(batches: &[RecordBatch]) -> impl Iterator<Item = &str> {
    batches.iter().filter_map(|b| b.column(0).as_string_opt::<i32>()).flat_map(|a| a.iter().flatten())
}

/// Patients in one of the sets.
pub(crate) fn any_of<'a>(sets: &[&'a [RecordBatch]]) -> Keys<'a> {
    sets.iter().flat_map(|s| keys(s)).collect()
}

/// Patients in every set.
pub(crate) fn all_of<'a>(sets: &[&'a [RecordBatch]]) -> Keys<'a> {
    let mut sets = sets.iter();
    let mut out: Keys<'a> = sets.next().map(|s| keys(s).collect()).unwrap_or_default();
    for set in sets {
        let other: Keys<'_> = keys(set).collect();
        out.retain(|k| other.contains(k));
    }
    out
}

/// A set of patient keys as a one-column batch named `name`.
pub(crate) fn batch_of(patients: &Keys<'_>, name: &str) -> Option<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
    let keys: StringArray = patients.iter().map(|k| Some(*k)).collect();
    RecordBatch::try_new(schema, vec![Arc::new(keys) as Arc<dyn Array>]).ok()
}

struct Entry {
    key: String,
    set: PatientSet,
    bytes: usize,
}

/// Patient sets of criteria, most recently used last.
#[derive(Default)]
pub(crate) struct CriterionCache(parking_lot::Mutex<VecDeque<Entry>>);

impl CriterionCache {
    pub(crate) fn get(&self, key: &str) -> Option<PatientSet> {
        let mut entries = self.0.lock();
        let i = entries.iter().position(|e| e.key == key)?;
        let entry = entries.remove(i)?;
        let set = entry.set.clone();
        entries.push_back(entry);
        Some(set)
    }

    /// Keeps a criterion's patients (an empty set too, so that it is not computed again).
    pub(crate) fn insert(&self, key: String, set: Patients) -> PatientSet {
        let bytes = set.bytes();
        let set = Arc::new(set);
        if bytes <= CACHE_BYTES / 4 {
            let mut entries = self.0.lock();
            let mut total: usize = entries.iter().map(|e| e.bytes).sum::<usize>() + bytes;
            while total > CACHE_BYTES {
                match entries.pop_front() {
                    Some(old) => total -= old.bytes,
                    None => break,
                }
            }
            entries.push_back(Entry { key, set: set.clone(), bytes });
        }
        set
    }

    pub(crate) fn clear(&self) {
        self.0.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&str]) -> Vec<RecordBatch> {
        let keys: Keys<'_> = keys.iter().copied().collect();
        vec![batch_of(&keys, "p").unwrap()]
    }

    #[test]
    fn unions_and_intersections_of_patient_keys() {
        let sets = [set(&["a", "b"]), set(&["b", "c"]), set(&[])];
        let all: Vec<&[RecordBatch]> = sets.iter().map(Vec::as_slice).collect();
        assert_eq!(any_of(&all), ["a", "b", "c"].into_iter().collect());
        assert_eq!(all_of(&all[..2]), ["b"].into_iter().collect());
        assert!(all_of(&all).is_empty());
    }

    #[test]
    fn bit_sets() {
        let of = |ones: &[u32]| {
            let mut b = Bits::empty(130);
            ones.iter().for_each(|&i| b.insert(i));
            b
        };
        let mut a = of(&[0, 63, 64, 129]);
        assert_eq!(a.ones().collect::<Vec<_>>(), vec![0, 63, 64, 129]);
        assert!(a.contains(129) && !a.contains(1) && !a.contains(500));
        a.or(&of(&[1]));
        a.and(&of(&[1, 64, 129]));
        assert_eq!(a.ones().collect::<Vec<_>>(), vec![1, 64, 129]);
        a.and_not(&of(&[64]));
        assert_eq!(a.ones().collect::<Vec<_>>(), vec![1, 129]);
        // Out of range: ignored, never a panic.
        a.insert(10_000);
        assert_eq!(a.ones().count(), 2);
    }
}
