//! `patients_up_to(key, k [, column, ...])`: the distinct patients among the rows where every
//! given column is set, counted only up to `k`. A site needs to know whether the rows behind
//! a number hold at least `min_cell_size` patients, not how many: `min(distinct, k)` decides
//! exactly the same, yet needs at most `k` values per group instead of every patient key.
//! This is what keeps the cell-size check cheap on millions of rows (an exact
//! `count(DISTINCT patient_id)` keeps a hash set of all of them).
//!
//! A row whose key is NULL or an empty string (an unlinked lab value, say) counts as a
//! patient of its own: were it counted as no one, unlinked rows would be released one by one.
//!
//! Keys are compared by a 64-bit hash. Two different patients with the same hash would
//! count once: the count can only come out lower, so a collision can withhold a cell but
//! never release one (and at 64 bits it is vanishingly rare).

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::hash_utils::{HLL_RANDOM_STATE, create_hashes};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const PATIENTS_UP_TO: &str = "patients_up_to";

pub fn patients_up_to_udaf() -> AggregateUDF {
    AggregateUDF::from(PatientsUpTo { signature: Signature::variadic_any(Volatility::Immutable) })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PatientsUpTo {
    signature: Signature,
}

/// The hashes of up to `cap` distinct values.
#[derive(Debug, Default, Clone)]
struct Capped(Vec<u64>);

impl Capped {
    #[inline]
    fn insert(&mut self, hash: u64, cap: usize) {
        if self.0.len() < cap && !self.0.contains(&hash) {
            self.0.push(hash);
        }
    }
}

fn state_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true)))
}

/// A hash no real key is expected to have, new at every call: an unlinked row's patient.
fn unlinked_patient() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // splitmix64 of a counter: distinct for distinct counters.
    let mut z = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Whether each row's key is missing: NULL, or an empty string.
fn unlinked(key: &ArrayRef, row: usize) -> bool {
    if key.is_null(row) {
        return true;
    }
    match key.data_type() {
        DataType::Utf8 => key.as_string::<i32>().value(row).is_empty(),
        DataType::LargeUtf8 => key.as_string::<i64>().value(row).is_empty(),
        DataType::Utf8View => key.as_string_view().value(row).is_empty(),
        _ => false,
    }
}

/// Per row, the patient it belongs to (a fresh one for unlinked rows), or `None` when the
/// row does not count: a gating column is NULL, or the aggregate's filter excludes it.
fn patients(values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<Option<u64>>> {
    let Some(key) = values.first() else { return Ok(Vec::new()) };
    let mut buffer = vec![0; key.len()];
    create_hashes([key], &HLL_RANDOM_STATE, &mut buffer)?;
    let gates = values.get(2..).unwrap_or_default();
    Ok(buffer
        .into_iter()
        .enumerate()
        .map(|(row, hash)| {
            let counts =
                gates.iter().all(|g| g.is_valid(row)) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
            counts.then(|| if unlinked(key, row) { unlinked_patient() } else { hash })
        })
        .collect())
}

fn state_array(sets: &[Capped]) -> ArrayRef {
    let lists = sets.iter().map(|s| Some(s.0.iter().map(|h| Some(*h))));
    Arc::new(ListArray::from_iter_primitive::<UInt64Type, _, _>(lists))
}

fn cap_of(args: &AccumulatorArgs) -> Result<usize> {
    let cap = args.exprs.get(1).and_then(|e| {
        let any: &dyn Any = e.as_ref();
        match any.downcast_ref::<Literal>()?.value() {
            ScalarValue::Int64(Some(k)) => usize::try_from(*k).ok(),
            ScalarValue::UInt32(Some(k)) => usize::try_from(*k).ok(),
            _ => None,
        }
    });
    match cap {
        Some(k) if (1..=10_000).contains(&k) => Ok(k),
        _ => plan_err!("{PATIENTS_UP_TO}(key, k, ...) needs a constant k from 1 to 10000"),
    }
}

impl AggregateUDFImpl for PatientsUpTo {
    fn name(&self) -> &str {
        PATIENTS_UP_TO
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Single { cap: cap_of(&args)?, set: Capped::default() }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}[hashes]", args.name), state_type(), true))])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Grouped { cap: cap_of(&args)?, sets: Vec::new() }))
    }
}

/// Without GROUP BY.
#[derive(Debug)]
struct Single {
    cap: usize,
    set: Capped,
}

impl Accumulator for Single {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if self.set.0.len() >= self.cap {
            return Ok(());
        }
        for hash in patients(values, None)?.into_iter().flatten() {
            self.set.insert(hash, self.cap);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.set.0.len() as i64)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.set.0.capacity() * size_of::<u64>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::try_from_array(&state_array(std::slice::from_ref(&self.set)), 0)?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(lists) = states.first() else { return Ok(()) };
        for list in lists.as_list::<i32>().iter().flatten() {
            for hash in list.as_primitive::<UInt64Type>().iter().flatten() {
                self.set.insert(hash, self.cap);
            }
        }
        Ok(())
    }
}

/// With GROUP BY: one small set per group.
struct Grouped {
    cap: usize,
    sets: Vec<Capped>,
}

impl GroupsAccumulator for Grouped {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.sets.resize_with(total_num_groups, Capped::default);
        let cap = self.cap;
        for (&group, patient) in group_indices.iter().zip(patients(values, opt_filter)?) {
            if let Some(hash) = patient {
                self.sets[group].insert(hash, cap);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let sets = emit_to.take_needed(&mut self.sets);
        Ok(Arc::new(Int64Array::from_iter_values(sets.iter().map(|s| s.0.len() as i64))))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![state_array(&emit_to.take_needed(&mut self.sets))])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.sets.resize_with(total_num_groups, Capped::default);
        let Some(lists) = values.first() else { return Ok(()) };
        let cap = self.cap;
        for (list, &group) in lists.as_list::<i32>().iter().zip(group_indices) {
            let Some(list) = list else { continue };
            let hashes: &UInt64Array = list.as_primitive::<UInt64Type>();
            for hash in hashes.iter().flatten() {
                self.sets[group].insert(hash, cap);
            }
        }
        Ok(())
    }

    /// Each input row as a state of its own (for skipping partial aggregation).
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let sets: Vec<Capped> =
            patients(values, opt_filter)?.into_iter().map(|p| Capped(p.into_iter().collect())).collect();
        Ok(vec![state_array(&sets)])
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.sets.capacity() * size_of::<Capped>() + self.sets.len() * self.cap * size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    /// Compares `min(count(DISTINCT p) + rows without p, k)` with patients_up_to over several
    /// partitions, with and without groups, gating columns, missing keys and duplicates.
    #[tokio::test]
    async fn equals_capped_exact_distinct() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("p", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let partitions: Vec<Vec<RecordBatch>> = (0..3)
            .map(|part| {
                let n = 500;
                let g = Int64Array::from_iter_values((0..n).map(|i| (i * 7 + part) % 13));
                let p = StringArray::from_iter((0..n).map(|i| match i % 23 {
                    0 => None,
                    1 => Some(String::new()),
                    _ => Some(format!("p{}", (i * 31 + part) % 40)),
                }));
                let v = Int64Array::from_iter((0..n).map(|i| (i % 3 != 0).then_some(i)));
                vec![RecordBatch::try_new(schema.clone(), vec![Arc::new(g), Arc::new(p), Arc::new(v)]).unwrap()]
            })
            .collect();
        let ctx = SessionContext::new();
        ctx.register_udaf(patients_up_to_udaf());
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, partitions).unwrap())).unwrap();
        // Exact: linked patients, plus one patient per row without a key.
        let exact = |k: u32, gate: &str| {
            format!(
                "least(count(DISTINCT CASE WHEN {gate} THEN nullif(p, '') END) \
                 + sum(CASE WHEN {gate} AND nullif(p, '') IS NULL THEN 1 ELSE 0 END), {k})"
            )
        };
        for k in [1, 3, 5, 20, 100] {
            let (all, gated) = (exact(k, "true"), exact(k, "v IS NOT NULL"));
            for sql in [
                format!("SELECT g, patients_up_to(p, {k}) AS c, {all} AS e FROM t GROUP BY g"),
                format!("SELECT patients_up_to(p, {k}) AS c, {all} AS e FROM t"),
                format!("SELECT g, patients_up_to(p, {k}, v) AS c, {gated} AS e FROM t GROUP BY g"),
                format!("SELECT patients_up_to(p, {k}, v) AS c, {gated} AS e FROM t"),
            ] {
                let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                let mut rows = 0;
                for b in &batches {
                    let c = b.column_by_name("c").unwrap().as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                    let e = b.column_by_name("e").unwrap();
                    let e = datafusion::arrow::compute::cast(e, &DataType::Int64).unwrap();
                    assert_eq!(c, e.as_primitive::<datafusion::arrow::datatypes::Int64Type>(), "{sql}");
                    rows += b.num_rows();
                }
                assert!(rows > 0, "{sql}");
            }
        }
    }
}
