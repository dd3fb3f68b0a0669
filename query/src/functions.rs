//! DataFusion functions shared by the SQL front-end (planning), the node (execution) and the
//! tests (the pooled reference answer):
//!
//! * `bin(x, start, width, count)`, `bin_edges(x, e0, e1, ...)`: the lower edge of x's bin,
//!   NULL outside the bins; used in GROUP BY.
//! * `histogram(x, start, width, count)`, `histogram_edges(x, e0, e1, ...)`: row counts per
//!   bin as a list; values outside the bins are not counted.
//! * `moments(x)`: {count, shift, mean, m2} of the non-null values (see [`Moments`]).

use crate::{BinSpec, Moments};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, ListArray, StructArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::prelude::SessionContext;
use std::any::Any;
use std::sync::Arc;

pub const BIN: &str = "bin";
pub const BIN_EDGES: &str = "bin_edges";
pub const HISTOGRAM: &str = "histogram";
pub const HISTOGRAM_EDGES: &str = "histogram_edges";
pub const MOMENTS: &str = "moments";

/// Registers every verbund function with a session.
pub fn register_all(ctx: &SessionContext) {
    ctx.register_udf(bin_udf(BinKind::Fixed));
    ctx.register_udf(bin_udf(BinKind::Edges));
    ctx.register_udaf(histogram_udaf(BinKind::Fixed));
    ctx.register_udaf(histogram_udaf(BinKind::Edges));
    ctx.register_udaf(moments_udaf());
    ctx.register_udf(crate::private::dp_units_udf());
    ctx.register_udf(crate::private::row_order_udf());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinKind {
    /// `(start, width, count)`
    Fixed,
    /// `(e0, e1, ...)`
    Edges,
}

impl BinKind {
    /// Builds the bin specification from the constant arguments after `x`.
    pub fn spec(self, params: &[f64]) -> Result<BinSpec, crate::Error> {
        match self {
            BinKind::Fixed => {
                let [start, width, count] = params else {
                    return Err(crate::Error::InvalidBins(
                        "fixed-width bins take (column, start, width, count)".into(),
                    ));
                };
                if count.fract() != 0.0 || *count < 0.0 {
                    return Err(crate::Error::InvalidBins(format!(
                        "the number of bins must be a whole number, got {count}"
                    )));
                }
                BinSpec::fixed(*start, *width, *count as usize)
            }
            BinKind::Edges => BinSpec::edges(params.to_vec()),
        }
    }
}

/// A constant numeric argument as f64, for bin parameters.
pub fn scalar_as_f64(value: &ScalarValue) -> Option<f64> {
    if value.is_null() {
        return None;
    }
    match value.cast_to(&DataType::Float64).ok()? {
        ScalarValue::Float64(v) => v,
        _ => None,
    }
}

fn to_f64(array: &ArrayRef) -> Result<Float64Array> {
    Ok(cast(array, &DataType::Float64)?.as_primitive::<Float64Type>().clone())
}

fn spec_error(e: crate::Error) -> DataFusionError {
    DataFusionError::Plan(e.to_string())
}

// ---- bin / bin_edges ----

pub fn bin_udf(kind: BinKind) -> ScalarUDF {
    ScalarUDF::from(BinFn { kind, signature: Signature::variadic_any(Volatility::Immutable) })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct BinFn {
    kind: BinKind,
    signature: Signature,
}

impl ScalarUDFImpl for BinFn {
    fn name(&self) -> &str {
        match self.kind {
            BinKind::Fixed => BIN,
            BinKind::Edges => BIN_EDGES,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if t.is_numeric() || t.is_null() => Ok(DataType::Float64),
            Some(t) => plan_err!("{}() bins numbers, not {t}", self.name()),
            None => plan_err!("{}() needs a column and bin parameters", self.name()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some((x, params)) = args.args.split_first() else {
            return exec_err!("{}() needs a column and bin parameters", self.name());
        };
        let params = params
            .iter()
            .map(|p| match p {
                ColumnarValue::Scalar(s) => scalar_as_f64(s),
                ColumnarValue::Array(_) => None,
            })
            .collect::<Option<Vec<f64>>>();
        let Some(params) = params else {
            return plan_err!("{}() bin parameters must be numeric constants", self.name());
        };
        let spec = self.kind.spec(&params).map_err(spec_error)?;
        let values = to_f64(&x.to_array(args.number_rows)?)?;
        let mut out = Float64Builder::with_capacity(values.len());
        for v in values.iter() {
            out.append_option(v.and_then(|v| spec.key_of(v)));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

// ---- histogram / histogram_edges ----

pub fn histogram_udaf(kind: BinKind) -> AggregateUDF {
    AggregateUDF::from(HistogramFn { kind, signature: Signature::variadic_any(Volatility::Immutable) })
}

/// The result type of the histogram functions: a list of 64-bit counts.
pub fn histogram_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct HistogramFn {
    kind: BinKind,
    signature: Signature,
}

fn constant_f64(expr: &Arc<dyn PhysicalExpr>) -> Option<f64> {
    let any: &dyn Any = expr.as_ref();
    any.downcast_ref::<Literal>().and_then(|l| scalar_as_f64(l.value()))
}

impl AggregateUDFImpl for HistogramFn {
    fn name(&self) -> &str {
        match self.kind {
            BinKind::Fixed => HISTOGRAM,
            BinKind::Edges => HISTOGRAM_EDGES,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if t.is_numeric() || t.is_null() => Ok(histogram_type()),
            Some(t) => plan_err!("{}() counts numbers, not {t}", self.name()),
            None => plan_err!("{}() needs a column and bin parameters", self.name()),
        }
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let params = acc_args.exprs.iter().skip(1).map(constant_f64).collect::<Option<Vec<f64>>>();
        let Some(params) = params else {
            return plan_err!("{}() bin parameters must be numeric constants", self.name());
        };
        let spec = self.kind.spec(&params).map_err(spec_error)?;
        Ok(Box::new(HistogramAccumulator { counts: vec![0; spec.len()], spec }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}[counts]", args.name), histogram_type(), true))])
    }
}

#[derive(Debug)]
struct HistogramAccumulator {
    spec: BinSpec,
    counts: Vec<i64>,
}

fn counts_scalar(counts: &[i64]) -> ScalarValue {
    let list = ListArray::from_iter_primitive::<Int64Type, _, _>([Some(counts.iter().map(|c| Some(*c)))]);
    ScalarValue::List(Arc::new(list))
}

impl Accumulator for HistogramAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(x) = values.first() else { return Ok(()) };
        for v in to_f64(x)?.iter().flatten() {
            if let Some(i) = self.spec.index_of(v) {
                self.counts[i] += 1;
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(counts_scalar(&self.counts))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.counts.capacity() * size_of::<i64>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![counts_scalar(&self.counts)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(lists) = states.first() else { return Ok(()) };
        let lists = lists.as_list::<i32>();
        for i in 0..lists.len() {
            if lists.is_null(i) {
                continue;
            }
            let part = lists.value(i);
            let part = part.as_primitive::<Int64Type>();
            if part.len() != self.counts.len() {
                return exec_err!("histogram states of different lengths cannot be merged");
            }
            for (c, p) in self.counts.iter_mut().zip(part.values().iter()) {
                *c += p;
            }
        }
        Ok(())
    }
}

// ---- moments ----

pub fn moments_udaf() -> AggregateUDF {
    AggregateUDF::from(MomentsFn { signature: Signature::any(1, Volatility::Immutable) })
}

fn moments_fields() -> Fields {
    Fields::from(vec![
        Field::new("count", DataType::UInt64, false),
        Field::new("shift", DataType::Float64, false),
        Field::new("mean", DataType::Float64, false),
        Field::new("m2", DataType::Float64, false),
    ])
}

/// The result type of `moments(x)`.
pub fn moments_type() -> DataType {
    DataType::Struct(moments_fields())
}

/// Reads `moments(x)` results back: one per row of the struct array.
pub fn moments_from_array(array: &ArrayRef) -> Result<Vec<Moments>> {
    let s =
        array.as_struct_opt().ok_or_else(|| DataFusionError::Internal("moments() result is not a struct".into()))?;
    if s.num_columns() != 4 {
        return Err(DataFusionError::Internal("moments() result has unexpected fields".into()));
    }
    let count = s.column(0).as_primitive_opt::<datafusion::arrow::datatypes::UInt64Type>();
    let shift = s.column(1).as_primitive_opt::<Float64Type>();
    let mean = s.column(2).as_primitive_opt::<Float64Type>();
    let m2 = s.column(3).as_primitive_opt::<Float64Type>();
    let (Some(count), Some(shift), Some(mean), Some(m2)) = (count, shift, mean, m2) else {
        return Err(DataFusionError::Internal("moments() result has unexpected fields".into()));
    };
    Ok((0..s.len())
        .map(|i| Moments { count: count.value(i), shift: shift.value(i), mean: mean.value(i), m2: m2.value(i) })
        .collect())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct MomentsFn {
    signature: Signature,
}

impl AggregateUDFImpl for MomentsFn {
    fn name(&self) -> &str {
        MOMENTS
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if t.is_numeric() || t.is_null() => Ok(moments_type()),
            Some(t) => plan_err!("moments() needs a number, not {t}"),
            None => plan_err!("moments() needs one argument"),
        }
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn accumulator(&self, _acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MomentsAccumulator(Moments::default())))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(MomentsGroups(Vec::new())))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(moments_fields()
            .iter()
            .map(|f| Arc::new(f.as_ref().clone().with_name(format!("{}[{}]", args.name, f.name()))))
            .collect())
    }
}

#[derive(Debug)]
struct MomentsAccumulator(Moments);

impl Accumulator for MomentsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(x) = values.first() else { return Ok(()) };
        for v in to_f64(x)?.iter().flatten() {
            self.0.push(v);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let m = self.0;
        let array = StructArray::new(
            moments_fields(),
            vec![
                Arc::new(UInt64Array::from(vec![m.count])),
                Arc::new(Float64Array::from(vec![m.shift])),
                Arc::new(Float64Array::from(vec![m.mean])),
                Arc::new(Float64Array::from(vec![m.m2])),
            ],
            None,
        );
        Ok(ScalarValue::Struct(Arc::new(array)))
    }

    fn size(&self) -> usize {
        size_of::<Self>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let m = self.0;
        Ok(vec![
            ScalarValue::UInt64(Some(m.count)),
            ScalarValue::Float64(Some(m.shift)),
            ScalarValue::Float64(Some(m.mean)),
            ScalarValue::Float64(Some(m.m2)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let total = &mut self.0;
        each_moments(states, |_, m| total.merge(&m))
    }
}

/// The four state columns of many moments.
fn moments_columns(ms: &[Moments]) -> Vec<ArrayRef> {
    vec![
        Arc::new(UInt64Array::from_iter_values(ms.iter().map(|m| m.count))),
        Arc::new(Float64Array::from_iter_values(ms.iter().map(|m| m.shift))),
        Arc::new(Float64Array::from_iter_values(ms.iter().map(|m| m.mean))),
        Arc::new(Float64Array::from_iter_values(ms.iter().map(|m| m.m2))),
    ]
}

/// Reads state columns back, calling `f` with each row's moments.
fn each_moments(states: &[ArrayRef], mut f: impl FnMut(usize, Moments)) -> Result<()> {
    let [count, shift, mean, m2] = states else {
        return exec_err!("moments() state has {} fields, expected 4", states.len());
    };
    let count = count.as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
    let shift = shift.as_primitive::<Float64Type>();
    let (mean, m2) = (mean.as_primitive::<Float64Type>(), m2.as_primitive::<Float64Type>());
    for i in 0..count.len() {
        f(i, Moments { count: count.value(i), shift: shift.value(i), mean: mean.value(i), m2: m2.value(i) });
    }
    Ok(())
}

/// `moments(x)` with GROUP BY: one [`Moments`] per group, updated column-wise.
struct MomentsGroups(Vec<Moments>);

impl GroupsAccumulator for MomentsGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.resize(total_num_groups, Moments::default());
        let Some(x) = values.first() else { return Ok(()) };
        let x = to_f64(x)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if x.is_null(row) || opt_filter.is_some_and(|f| !f.is_valid(row) || !f.value(row)) {
                continue;
            }
            self.0[group].push(x.value(row));
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let ms = emit_to.take_needed(&mut self.0);
        Ok(Arc::new(StructArray::new(moments_fields(), moments_columns(&ms), None)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(moments_columns(&emit_to.take_needed(&mut self.0)))
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.0.resize(total_num_groups, Moments::default());
        let groups = &mut self.0;
        each_moments(values, |row, m| {
            if let Some(&g) = group_indices.get(row) {
                groups[g].merge(&m);
            }
        })
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let Some(x) = values.first() else { return Ok(moments_columns(&[])) };
        let x = to_f64(x)?;
        let ms: Vec<Moments> = (0..x.len())
            .map(|row| {
                let mut m = Moments::default();
                if x.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)) {
                    m.push(x.value(row));
                }
                m
            })
            .collect();
        Ok(moments_columns(&ms))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.0.capacity() * size_of::<Moments>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array as F64, Int64Array};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;

    async fn run(sql: &str) -> Vec<RecordBatch> {
        let x: ArrayRef = Arc::new(F64::from(vec![Some(1.0), Some(5.0), Some(12.0), None, Some(25.0), Some(-3.0)]));
        let g: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 1, 2, 2, 2]));
        let batch = RecordBatch::try_from_iter([("x", x), ("g", g)]).unwrap();
        let ctx = SessionContext::new();
        register_all(&ctx);
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    #[tokio::test]
    async fn bin_groups_by_lower_edge() {
        let out = run("SELECT bin(x, 0, 10, 2) AS b, count(*) AS n FROM t GROUP BY b ORDER BY b NULLS LAST").await;
        let b = out[0].column(0).as_primitive::<Float64Type>();
        let n = out[0].column(1).as_primitive::<Int64Type>();
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![Some(0.0), Some(10.0), None]);
        assert_eq!(n.values().to_vec(), vec![2, 1, 3]);
    }

    #[tokio::test]
    async fn histogram_counts_per_bin() {
        let out = run("SELECT histogram_edges(x, -5, 0, 10, 30) AS h FROM t").await;
        let lists = out[0].column(0).as_list::<i32>();
        let h = lists.value(0);
        assert_eq!(h.as_primitive::<Int64Type>().values().to_vec(), vec![1, 2, 2]);
    }

    #[tokio::test]
    async fn moments_match_variance() {
        let out = run("SELECT g, moments(x) AS m, var_samp(x) AS v FROM t GROUP BY g ORDER BY g").await;
        let m = moments_from_array(out[0].column(1)).unwrap();
        let v = out[0].column(2).as_primitive::<Float64Type>();
        for (i, moments) in m.iter().enumerate() {
            assert!((moments.variance_sample().unwrap() - v.value(i)).abs() < 1e-9);
        }
        assert_eq!(m[1].count, 2);
    }
}
