//! Cohort criteria answered from the in-memory index (`crate::index`): the rows of a coded
//! criterion by lookup, its value, unit and time conditions evaluated on just those rows with
//! the same expressions the DataFusion route filters with, links by the same (reference,
//! patient) equality as its join. A criterion the index cannot answer returns `None` and goes
//! the DataFusion route (`crate::cohort`).

use crate::catalogue::Catalogue;
use crate::cohort::CohortPatients;
use crate::cohort::{overlaps, quantity};
use crate::criteria::Patients;
use crate::criteria::resource_types;
use crate::engine::{Engine, balanced, filter_expr};
use crate::index::{evaluate, gather};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::JoinType;
use datafusion::datasource::MemTable;
use datafusion::prelude::DataFrame;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use verbund_query::cohort::{CheckedCriterion, Condition, RESOURCE};
use verbund_query::validate::CheckedQuery;

type Rows<'a> = Pin<Box<dyn Future<Output = Option<Vec<u32>>> + Send + 'a>>;

impl Engine {
    /// The criterion's patients as a set of patient ordinals, when the index can answer.
    pub(crate) async fn indexed_patients(&self, c: &CheckedCriterion) -> Option<Patients> {
        if !self.criteria_index_enabled() {
            return None;
        }
        let data = self.data();
        let rows = indexed_rows(&data, c).await?;
        let ordinals = data.index.ordinals(data.session(), data.catalogue()).await?;
        let bits = ordinals.of_rows(&c.dataset, &rows)?;
        self.criteria_indexed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Patients::Bits(bits))
    }

    /// The rows of a query that reads nothing of its dataset but the patient key (a
    /// feasibility count), from the index's copy of that column: no file to read, and a
    /// cohort given as patient ordinals applied here rather than by a join. `None` when the
    /// index cannot serve the query; else the rows and whether the cohort was applied.
    pub(crate) async fn indexed_base(
        &self,
        q: &CheckedQuery,
        cohort: Option<&CohortPatients>,
    ) -> Option<(DataFrame, bool)> {
        if !self.criteria_index_enabled()
            || q.filter.is_some()
            || !q.columns().is_empty()
            || !q.patient_columns().is_empty()
        {
            return None;
        }
        let data = self.data();
        let info = data.catalogue().datasets.iter().find(|d| d.name == q.dataset)?;
        resource_types(&info.model)?;
        let mut keys = data.index.column(data.session(), &q.dataset, &q.patient_key).await?;
        let mut applied = false;
        if let Some(CohortPatients { patients: Patients::Bits(bits), join }) = cohort
            && let Some(ordinals) = data.index.ordinals_built()
            && let Some(rows) = ordinals.rows.get(&q.dataset)
            && rows.len() == keys.len()
        {
            // A semi join keeps the rows whose patient is in the set; an anti join keeps the
            // others, rows without a patient included (as the DataFusion route's join does).
            let semi = *join == JoinType::LeftSemi;
            let kept = rows.iter().enumerate().filter_map(|(row, &o)| {
                let keep = if o == u32::MAX { !semi } else { bits.contains(o) == semi };
                keep.then_some(row as u32)
            });
            keys = take(&keys, &UInt32Array::from_iter_values(kept), None).ok()?;
            applied = true;
        }
        let schema = Arc::new(Schema::new(vec![Field::new(&q.patient_key, keys.data_type().clone(), true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![keys]).ok()?;
        let table = MemTable::try_new(schema, vec![vec![batch]]).ok()?;
        Some((data.session().read_table(Arc::new(table)).ok()?, applied))
    }
}

/// Rows of the criterion's dataset that meet all its conditions, sorted.
fn indexed_rows<'a>(data: &'a Catalogue, c: &'a CheckedCriterion) -> Rows<'a> {
    Box::pin(async move {
        let info = data.catalogue().datasets.iter().find(|d| d.name == c.dataset)?;
        resource_types(&info.model)?;
        let (ctx, index) = (data.session(), &data.index);
        // The patient key first: it fixes the dataset's row count.
        index.column(ctx, &c.dataset, &c.patient_key).await?;
        let mut rows: Option<Vec<u32>> = None;
        for condition in &c.conditions {
            if let Condition::Codes(set) = condition {
                let coded = index.coded_rows(ctx, data.catalogue(), set, &c.dataset).await?;
                rows = Some(match rows {
                    Some(r) => intersect(&r, &coded),
                    None => coded,
                });
            }
        }
        let mut rows = match rows {
            Some(rows) => rows,
            None => (0..index.len(&c.dataset)? as u32).collect(),
        };

        let mut tests = Vec::new();
        if let Some(f) = &c.fixed {
            tests.push(filter_expr(f).ok()?);
        }
        for condition in &c.conditions {
            match condition {
                Condition::Quantity { column, unit, test } => tests.push(quantity(column, unit, test)),
                Condition::Time { start, end, after, before } => tests.push(overlaps(start, end, *after, *before)),
                Condition::Codes(_) | Condition::Linked { .. } => {}
            }
        }
        if let Some(test) = balanced(tests, &|a, b| a.and(b)) {
            let mut columns: Vec<String> = test.column_refs().iter().map(|c| c.name.clone()).collect();
            columns.sort();
            columns.dedup();
            let schema = Arc::new(ctx.table(c.dataset.as_str()).await.ok()?.schema().as_arrow().clone());
            let at = UInt32Array::from(rows.clone());
            let batch = gather(index, ctx, &c.dataset, &schema, &columns, Some(&at)).await?;
            let mask = evaluate(ctx, &batch, test)?;
            rows = rows.into_iter().zip(mask.values().iter()).filter_map(|(r, keep)| keep.then_some(r)).collect();
        }

        for condition in &c.conditions {
            if let Condition::Linked { via, criteria } = condition {
                rows = linked(data, c, via, criteria, rows).await?;
            }
        }
        Some(rows)
    })
}

/// The rows whose `via` reference names a row of the same patient matching a target.
async fn linked(
    data: &Catalogue,
    c: &CheckedCriterion,
    via: &str,
    criteria: &[CheckedCriterion],
    rows: Vec<u32>,
) -> Option<Vec<u32>> {
    let (ctx, index) = (data.session(), &data.index);
    let mut targets: Vec<(ArrayRef, ArrayRef, Vec<u32>)> = Vec::new();
    for t in criteria {
        let matching = indexed_rows(data, t).await?;
        let resource = index.text(ctx, &t.dataset, RESOURCE).await?;
        let patient = index.text(ctx, &t.dataset, &t.patient_key).await?;
        targets.push((resource, patient, matching));
    }
    let mut pairs: HashSet<(&str, &str), ahash::RandomState> = HashSet::default();
    for (resource, patient, matching) in &targets {
        let (resource, patient) = (resource.as_string::<i32>(), patient.as_string::<i32>());
        for &r in matching {
            let r = r as usize;
            if resource.is_valid(r) && patient.is_valid(r) {
                pairs.insert((resource.value(r), patient.value(r)));
            }
        }
    }
    let reference = index.text(ctx, &c.dataset, via).await?;
    let patient = index.text(ctx, &c.dataset, &c.patient_key).await?;
    let (reference, patient) = (reference.as_string::<i32>(), patient.as_string::<i32>());
    Some(
        rows.into_iter()
            .filter(|&r| {
                let r = r as usize;
                reference.is_valid(r) && patient.is_valid(r) && pairs.contains(&(reference.value(r), patient.value(r)))
            })
            .collect(),
    )
}

/// Values in both sorted, unique lists.
fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::with_capacity(a.len().min(b.len())));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::intersect;

    #[test]
    fn intersect_keeps_common_values() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[2, 3, 4, 7, 9]), vec![3, 7]);
        assert_eq!(intersect(&[], &[1]), Vec::<u32>::new());
    }
}
