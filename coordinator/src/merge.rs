//! Exact merge of the sites' partial aggregates: counts and sums add, means come from the
//! summed sums and counts, variances from (count, mean, M2) merged with Chan's formula,
//! histograms add bin by bin. The merged table has the columns the researcher selected.
//! A value a site withheld adds nothing; a value (or histogram bin) no site released is NULL.

use crate::frontend::{FederatedPlan, Source};
use datafusion::arrow::array::{ArrayRef, ListArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::common::ScalarValue;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_proto::v1::literal::Value;
use verbund_proto::v1::partial_aggregate::State;
use verbund_query::Moments;
use verbund_query::literal::{literal_to_scalar, type_name};

/// A group key value with a total order (NULL last), so merged groups come out sorted.
#[derive(Debug, Clone, PartialEq)]
struct KeyValue(pb::Literal);

impl Eq for KeyValue {}

impl Ord for KeyValue {
    fn cmp(&self, other: &Self) -> Ordering {
        fn rank(v: &Option<Value>) -> u8 {
            match v {
                Some(Value::Bool(_)) => 0,
                Some(Value::Int64(_)) => 1,
                Some(Value::Float64(_)) => 2,
                Some(Value::Date(_)) => 3,
                Some(Value::String(_)) => 4,
                None => 5,
            }
        }
        match (&self.0.value, &other.0.value) {
            (Some(Value::Bool(a)), Some(Value::Bool(b))) => a.cmp(b),
            (Some(Value::Int64(a)), Some(Value::Int64(b))) => a.cmp(b),
            (Some(Value::Float64(a)), Some(Value::Float64(b))) => a.total_cmp(b),
            (Some(Value::Date(a)), Some(Value::Date(b))) => a.cmp(b),
            (Some(Value::String(a)), Some(Value::String(b))) => a.cmp(b),
            (a, b) => rank(a).cmp(&rank(b)),
        }
    }
}

impl PartialOrd for KeyValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Power sums of noisy parts (count, Σx, Σx²), added across sites in floating point: they
/// are noisy already, so exactness is not what they need.
#[derive(Debug, Clone, Copy, Default)]
struct NoisyParts {
    count: f64,
    sum: f64,
    squares: f64,
}

impl NoisyParts {
    fn add(&mut self, s: &pb::NoisySum) {
        let (n, v, v2) = (s.count as f64, s.sum as f64, s.sum_squares as f64);
        // A row's value is centre + unit · v.
        self.count += n;
        self.sum += s.centre * n + s.unit * v;
        self.squares += s.centre * s.centre * n + 2.0 * s.centre * s.unit * v + s.unit * s.unit * v2;
    }
}

#[derive(Debug, Clone)]
enum Acc {
    /// Exact counts add as they are; noisy ones (signed) too, clamped at 0 when finished.
    Count {
        total: Option<i128>,
        noisy: bool,
    },
    Sum {
        count: u64,
        int: i128,
        float: f64,
        is_float: bool,
        noisy: Option<NoisyParts>,
    },
    Moments(Moments, Option<NoisyParts>),
    Histogram(Vec<Option<i128>>, bool),
}

impl Acc {
    fn empty((kind, bins): (pb::AggregateKind, usize)) -> Acc {
        use pb::AggregateKind as K;
        match kind {
            K::Sum | K::Mean | K::SumOfProducts => {
                Acc::Sum { count: 0, int: 0, float: 0.0, is_float: false, noisy: None }
            }
            K::VarianceSample | K::VariancePopulation | K::StddevSample | K::StddevPopulation => {
                Acc::Moments(Moments::default(), None)
            }
            K::Histogram => Acc::Histogram(vec![None; bins], false),
            K::CountRows | K::CountPatients | K::Count | K::Unspecified => Acc::Count { total: None, noisy: false },
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MalformedAnswer {
    #[error("a group has {got} keys, expected {expected}")]
    KeyCount { got: usize, expected: usize },
    #[error("group key {position} should be of type {expected}")]
    KeyType { position: usize, expected: &'static str },
    #[error("a group has {got} aggregates, expected {expected}")]
    AggregateCount { got: usize, expected: usize },
    #[error("an aggregate does not match the request ({0:?})")]
    Aggregate(pb::AggregateKind),
}

/// Why checked answers could not become the merged table.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("the query selects no column")]
    NoColumns,
    #[error("{0} overflows a 64-bit integer")]
    Overflow(&'static str),
    #[error("no merged value for {0:?}")]
    NoValue(pb::AggregateKind),
    #[error("a group key cannot be converted: {0}")]
    Key(#[from] verbund_query::Error),
    #[error(transparent)]
    Value(#[from] datafusion::error::DataFusionError),
    #[error("the table cannot be built: {0}")]
    Table(#[from] datafusion::arrow::error::ArrowError),
    #[error("the table cannot be encoded: {0}")]
    Encode(datafusion::arrow::error::ArrowError),
}

/// Whether a site's group key has the type the plan expects (NULL fits every type).
fn key_fits(key: &pb::Literal, expected: pb::ColumnType) -> bool {
    use pb::ColumnType as T;
    matches!(
        (&key.value, expected),
        (None, _)
            | (Some(Value::Int64(_)), T::Int64)
            | (Some(Value::Float64(_)), T::Float64)
            | (Some(Value::String(_)), T::String)
            | (Some(Value::Bool(_)), T::Bool)
            | (Some(Value::Date(_)), T::Date)
    )
}

/// What a merge needs to know about each requested aggregate.
fn expected(aggregate: &pb::Aggregate) -> (pb::AggregateKind, usize) {
    let bins =
        aggregate.bins.as_ref().and_then(|b| verbund_query::BinSpec::from_proto(b).ok()).map(|s| s.len()).unwrap_or(0);
    (aggregate.kind(), bins)
}

pub struct Merger<'a> {
    plan: &'a FederatedPlan,
    /// Each requested aggregate's kind and bin count, worked out once per query.
    expected: Vec<(pb::AggregateKind, usize)>,
    /// The accumulators a new group starts with.
    empty: Vec<Acc>,
    groups: BTreeMap<Vec<KeyValue>, (Vec<Acc>, u32)>,
}

/// What the network-level rules left out of a merged answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkSuppression {
    /// Groups with numbers from fewer than `min_sites` sites.
    pub groups: usize,
    /// Numbers (and histogram bins) below `min_total`.
    pub values: usize,
}

impl Acc {
    /// The number of values behind an accumulator (noisy counts included), if it has any.
    fn total(&self) -> Option<f64> {
        match self {
            Acc::Count { total, .. } => total.map(|t| t as f64),
            Acc::Sum { count, noisy, .. } => Some(*count as f64 + noisy.map(|n| n.count).unwrap_or(0.0)),
            Acc::Moments(m, noisy) => Some(m.count as f64 + noisy.map(|n| n.count).unwrap_or(0.0)),
            Acc::Histogram(..) => None,
        }
    }

    /// Withholds what is below `min_total`; returns how many numbers that were.
    fn suppress_below(&mut self, min_total: f64, empty: &Acc) -> usize {
        if let Acc::Histogram(bins, _) = self {
            let mut n = 0;
            for bin in bins.iter_mut().filter(|b| b.is_some_and(|c| (c as f64) < min_total)) {
                *bin = None;
                n += 1;
            }
            return n;
        }
        match self.total() {
            Some(t) if t < min_total => {
                *self = empty.clone();
                if let Acc::Count { total, .. } = self {
                    *total = None;
                }
                1
            }
            _ => 0,
        }
    }
}

impl<'a> Merger<'a> {
    pub fn new(plan: &'a FederatedPlan) -> Self {
        let expected: Vec<_> = plan.request.aggregates.iter().map(expected).collect();
        let empty = expected.iter().copied().map(Acc::empty).collect();
        Self { plan, expected, empty, groups: BTreeMap::new() }
    }

    /// Checks that a site's answer has the shape the request asked for, so a faulty or
    /// hostile node cannot corrupt the merged answer. Returns what is wrong.
    pub fn check_shape(&self, partial: &pb::PartialResult) -> Result<(), MalformedAnswer> {
        use pb::AggregateKind as K;
        let ngroups = self.plan.request.group_by.len();
        for g in &partial.groups {
            if g.keys.len() != ngroups {
                return Err(MalformedAnswer::KeyCount { got: g.keys.len(), expected: ngroups });
            }
            for (i, (key, expected)) in g.keys.iter().zip(&self.plan.group_types).enumerate() {
                if !key_fits(key, *expected) {
                    return Err(MalformedAnswer::KeyType { position: i + 1, expected: type_name(*expected) });
                }
            }
            if g.aggregates.len() != self.plan.request.aggregates.len() {
                return Err(MalformedAnswer::AggregateCount {
                    got: g.aggregates.len(),
                    expected: self.plan.request.aggregates.len(),
                });
            }
            for (&(kind, bins), p) in self.expected.iter().zip(&g.aggregates) {
                let ok = match (&p.state, kind) {
                    (Some(State::Withheld(_)), K::Count | K::Sum | K::Mean | K::SumOfProducts) => true,
                    (
                        Some(State::Withheld(_)),
                        K::VarianceSample | K::VariancePopulation | K::StddevSample | K::StddevPopulation,
                    ) => true,
                    (Some(State::Count(_)), K::CountRows | K::CountPatients | K::Count) => true,
                    (Some(State::Sum(s)), K::Sum | K::Mean | K::SumOfProducts) => s.sum.is_some() || s.count == 0,
                    (
                        Some(State::Moments(m)),
                        K::VarianceSample | K::VariancePopulation | K::StddevSample | K::StddevPopulation,
                    ) => m.mean.is_finite() && m.shift.is_finite() && m.m2.is_finite() && m.m2 >= 0.0,
                    (Some(State::Histogram(h)), K::Histogram) => {
                        h.counts.len() == bins && h.withheld_bins.iter().all(|b| (*b as usize) < bins)
                    }
                    (Some(State::NoisyCount(_)), K::CountRows | K::CountPatients | K::Count) => true,
                    (
                        Some(State::NoisySum(s)),
                        K::Sum
                        | K::Mean
                        | K::SumOfProducts
                        | K::VarianceSample
                        | K::VariancePopulation
                        | K::StddevSample
                        | K::StddevPopulation,
                    ) => s.unit.is_finite() && s.unit > 0.0 && s.centre.is_finite(),
                    (Some(State::NoisyHistogram(h)), K::Histogram) => {
                        h.counts.len() == bins && h.withheld_bins.iter().all(|b| (*b as usize) < bins)
                    }
                    _ => false,
                };
                if !ok {
                    return Err(MalformedAnswer::Aggregate(kind));
                }
            }
        }
        Ok(())
    }

    /// Adds one site's (shape-checked) answer.
    pub fn add(&mut self, partial: &pb::PartialResult) {
        for g in &partial.groups {
            let key: Vec<KeyValue> = g.keys.iter().cloned().map(KeyValue).collect();
            let (accs, sites) = self.groups.entry(key).or_insert_with(|| (self.empty.clone(), 0));
            *sites += 1;
            for (acc, p) in accs.iter_mut().zip(&g.aggregates) {
                match (acc, &p.state) {
                    (Acc::Count { total, .. }, Some(State::Count(c))) => {
                        *total = Some(total.unwrap_or(0) + i128::from(c.count))
                    }
                    (Acc::Count { total, noisy }, Some(State::NoisyCount(c))) => {
                        *total = Some(total.unwrap_or(0) + i128::from(c.count));
                        *noisy = true;
                    }
                    (Acc::Sum { count, int, float, is_float, .. }, Some(State::Sum(s))) => {
                        *count += s.count;
                        match s.sum {
                            Some(pb::sum_state::Sum::Int64(v)) => *int += i128::from(v),
                            Some(pb::sum_state::Sum::Float64(v)) => {
                                *float += v;
                                *is_float = true;
                            }
                            None => {}
                        }
                    }
                    (Acc::Sum { noisy, .. } | Acc::Moments(_, noisy), Some(State::NoisySum(s))) => {
                        noisy.get_or_insert_default().add(s)
                    }
                    (Acc::Moments(m, _), Some(State::Moments(s))) => {
                        m.merge(&Moments { count: s.count, shift: s.shift, mean: s.mean, m2: s.m2 })
                    }
                    (Acc::Histogram(counts, _), Some(State::Histogram(h))) => {
                        add_bins(counts, h.counts.iter().map(|c| i128::from(*c)), &h.withheld_bins)
                    }
                    (Acc::Histogram(counts, noisy), Some(State::NoisyHistogram(h))) => {
                        add_bins(counts, h.counts.iter().map(|c| i128::from(*c)), &h.withheld_bins);
                        *noisy = true;
                    }
                    _ => {}
                }
            }
        }
    }

    /// The network's own floors, after every site's answer is in: groups need numbers from
    /// `min_sites` sites, and numbers `min_total` values behind them (post-processing of what
    /// the sites released; it never replaces their checks).
    pub fn apply_network_rules(&mut self, min_total: u64, min_sites: u32) -> NetworkSuppression {
        let mut out = NetworkSuppression::default();
        if min_sites > 1 {
            let before = self.groups.len();
            self.groups.retain(|_, (_, sites)| *sites >= min_sites);
            out.groups = before - self.groups.len();
        }
        if min_total > 0 {
            for (accs, _) in self.groups.values_mut() {
                for (acc, empty) in accs.iter_mut().zip(&self.empty) {
                    out.values += acc.suppress_below(min_total as f64, empty);
                }
            }
        }
        out
    }

    pub fn finish(self) -> Result<RecordBatch, MergeError> {
        let schema = self.plan.schema.clone();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.plan.outputs.len());
        for (i, source) in self.plan.outputs.iter().enumerate() {
            let data_type = schema.field(i).data_type();
            let values = self
                .groups
                .iter()
                .map(|(key, (accs, _))| match source {
                    Source::Group(g) => Ok(literal_to_scalar(&key[*g].0, data_type)?),
                    Source::Aggregate(a) => finish_aggregate(&self.plan.request.aggregates[*a], &accs[*a], data_type),
                })
                .collect::<Result<Vec<ScalarValue>, MergeError>>()?;
            let array = if values.is_empty() {
                datafusion::arrow::array::new_empty_array(data_type)
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns.push(array);
        }
        if columns.is_empty() {
            return Err(MergeError::NoColumns);
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}

/// Adds one site's bins, passing over those it withheld.
fn add_bins(counts: &mut [Option<i128>], site: impl Iterator<Item = i128>, withheld_bins: &[u32]) {
    let mut withheld = vec![false; counts.len()];
    for b in withheld_bins {
        if let Some(w) = withheld.get_mut(*b as usize) {
            *w = true;
        }
    }
    for ((c, v), withheld) in counts.iter_mut().zip(site).zip(withheld) {
        if !withheld {
            *c = Some(c.unwrap_or(0) + v);
        }
    }
}

/// Exact moments and noisy parts together, as (count, Σx, Σx²); the exact part is moved to
/// power sums, which is precise enough beside noise.
fn pooled_power_sums(m: &Moments, noisy: &NoisyParts) -> (f64, f64, f64) {
    let n = m.count as f64;
    let mean = m.shift + m.mean;
    (n + noisy.count, n * mean + noisy.sum, m.m2 + n * mean * mean + noisy.squares)
}

/// Variance from noisy power sums: NULL without at least two (noisy) rows, never negative.
fn noisy_variance((n, s1, s2): (f64, f64, f64), sample: bool) -> Option<f64> {
    let denominator = if sample { n - 1.0 } else { n };
    (n >= 2.0 && denominator > 0.0).then(|| ((s2 - s1 * s1 / n) / denominator).max(0.0))
}

fn finish_aggregate(
    aggregate: &pb::Aggregate,
    acc: &Acc,
    data_type: &datafusion::arrow::datatypes::DataType,
) -> Result<ScalarValue, MergeError> {
    use pb::AggregateKind as K;
    let value = match (aggregate.kind(), acc) {
        (_, Acc::Count { total, noisy }) => {
            let total = total.map(|t| if *noisy { t.max(0) } else { t });
            ScalarValue::Int64(
                total.map(i64::try_from).transpose().map_err(|_| MergeError::Overflow("a merged count"))?,
            )
        }
        (K::Sum | K::SumOfProducts, Acc::Sum { count, int, float, noisy: Some(n), .. }) => {
            // Rounded, not truncated, where the column is an integer one.
            let sum = (*count > 0 || n.count > 0.0).then_some(*float + *int as f64 + n.sum);
            match data_type {
                datafusion::arrow::datatypes::DataType::Int64 => ScalarValue::Int64(sum.map(|s| s.round() as i64)),
                _ => ScalarValue::Float64(sum),
            }
        }
        (K::Mean, Acc::Sum { count, int, float, noisy: Some(n), .. }) => {
            let total = *count as f64 + n.count;
            ScalarValue::Float64((total >= 1.0).then(|| (*float + *int as f64 + n.sum) / total))
        }
        (K::Sum | K::SumOfProducts, Acc::Sum { count, int, float, is_float, noisy: None }) => {
            match (*count, *is_float) {
                (0, _) => ScalarValue::Float64(None),
                (_, true) => ScalarValue::Float64(Some(*float + *int as f64)),
                (_, false) => {
                    ScalarValue::Int64(Some(i64::try_from(*int).map_err(|_| MergeError::Overflow("the merged sum"))?))
                }
            }
        }
        (K::Mean, Acc::Sum { count, int, float, is_float, noisy: None }) => ScalarValue::Float64(match *count {
            0 => None,
            n if *is_float => Some((*float + *int as f64) / n as f64),
            n => Some(*int as f64 / n as f64),
        }),
        (kind, Acc::Moments(m, Some(noisy))) => {
            let sums = pooled_power_sums(m, noisy);
            let sample = matches!(kind, K::VarianceSample | K::StddevSample);
            let variance = noisy_variance(sums, sample);
            ScalarValue::Float64(match kind {
                K::StddevSample | K::StddevPopulation => variance.map(f64::sqrt),
                _ => variance,
            })
        }
        (K::VarianceSample, Acc::Moments(m, None)) => ScalarValue::Float64(m.variance_sample()),
        (K::VariancePopulation, Acc::Moments(m, None)) => ScalarValue::Float64(m.variance_population()),
        (K::StddevSample, Acc::Moments(m, None)) => ScalarValue::Float64(m.variance_sample().map(f64::sqrt)),
        (K::StddevPopulation, Acc::Moments(m, None)) => ScalarValue::Float64(m.variance_population().map(f64::sqrt)),
        (K::Histogram, Acc::Histogram(counts, noisy)) => {
            let counts = counts
                .iter()
                .map(|c| c.map(|c| if *noisy { c.max(0) } else { c }).and_then(|c| i64::try_from(c).ok()))
                .collect::<Vec<_>>();
            let list = ListArray::from_iter_primitive::<Int64Type, _, _>([Some(counts)]);
            ScalarValue::List(Arc::new(list))
        }
        (kind, _) => return Err(MergeError::NoValue(kind)),
    };
    if &value.data_type() == data_type || value.is_null() && data_type.is_null() {
        return Ok(value);
    }
    Ok(value.cast_to(data_type)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema};

    fn agg(kind: pb::AggregateKind) -> pb::Aggregate {
        pb::Aggregate { kind: kind as i32, column: "x".into(), bins: None, other_column: String::new() }
    }

    fn key(s: &str) -> pb::Literal {
        pb::Literal { value: Some(Value::String(s.into())) }
    }

    fn plan() -> FederatedPlan {
        use pb::AggregateKind as K;
        let mut hist = agg(K::Histogram);
        hist.bins = Some(verbund_query::BinSpec::fixed(0.0, 1.0, 3).unwrap().to_proto("x"));
        let aggregates =
            vec![agg(K::CountRows), agg(K::Sum), agg(K::Mean), agg(K::VarianceSample), agg(K::StddevPopulation), hist];
        let fields = vec![
            Field::new("g", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Int64, true),
            Field::new("m", DataType::Float64, true),
            Field::new("v", DataType::Float64, true),
            Field::new("sd", DataType::Float64, true),
            Field::new("h", verbund_query::functions::histogram_type(), true),
        ];
        FederatedPlan {
            request: pb::AggregateQuery {
                dataset: "t".into(),
                filter: None,
                group_by: vec![pb::Grouping { kind: Some(pb::grouping::Kind::Column("g".into())) }],
                aggregates,
                cohort: None,
            },
            outputs: std::iter::once(Source::Group(0)).chain((0..6).map(Source::Aggregate)).collect(),
            schema: Arc::new(Schema::new(fields)),
            group_types: vec![pb::ColumnType::String],
        }
    }

    /// The partial a site computes for `xs` in group `g`.
    fn partial(g: &str, xs: &[i64]) -> pb::GroupPartial {
        let mut m = Moments::default();
        xs.iter().for_each(|x| m.push(*x as f64));
        let mut h = vec![0u64; 3];
        xs.iter().filter(|x| (0..3).contains(*x)).for_each(|x| h[*x as usize] += 1);
        let st = |s| pb::PartialAggregate { state: Some(s) };
        let sum = pb::SumState { count: xs.len() as u64, sum: Some(pb::sum_state::Sum::Int64(xs.iter().sum())) };
        pb::GroupPartial {
            keys: vec![key(g)],
            aggregates: vec![
                st(State::Count(pb::CountState { count: xs.len() as u64 })),
                st(State::Sum(sum)),
                st(State::Sum(sum)),
                st(State::Moments(pb::MomentsState { count: m.count, shift: m.shift, mean: m.mean, m2: m.m2 })),
                st(State::Moments(pb::MomentsState { count: m.count, shift: m.shift, mean: m.mean, m2: m.m2 })),
                st(State::Histogram(pb::HistogramState { counts: h, withheld_bins: vec![] })),
            ],
        }
    }

    #[test]
    fn merging_site_partials_equals_the_pooled_statistics() {
        let plan = plan();
        let mut merger = Merger::new(&plan);
        let site1 =
            pb::PartialResult { groups: vec![partial("a", &[1, 2, 3]), partial("b", &[0, 0])], ..Default::default() };
        let site2 = pb::PartialResult { groups: vec![partial("a", &[4, 5])], ..Default::default() };
        for p in [&site1, &site2] {
            merger.check_shape(p).unwrap();
            merger.add(p);
        }
        let batch = merger.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        let groups = batch.column(0).as_string::<i32>();
        assert_eq!((groups.value(0), groups.value(1)), ("a", "b"));
        assert_eq!(batch.column(1).as_primitive::<Int64Type>().values().to_vec(), vec![5, 2]);
        assert_eq!(batch.column(2).as_primitive::<Int64Type>().values().to_vec(), vec![15, 0]);
        let f = |c: usize, r: usize| batch.column(c).as_primitive::<Float64Type>().value(r);
        assert!((f(3, 0) - 3.0).abs() < 1e-12);
        assert!((f(4, 0) - 2.5).abs() < 1e-12, "sample variance of 1..5 is 2.5");
        assert!((f(5, 0) - 2f64.sqrt()).abs() < 1e-12, "population sd of 1..5 is sqrt 2");
        let h = batch.column(6).as_list::<i32>().value(0);
        assert_eq!(h.as_primitive::<Int64Type>().values().to_vec(), vec![0, 1, 1]);
    }

    #[test]
    fn empty_and_single_value_groups_give_null_statistics() {
        let plan = plan();
        let mut merger = Merger::new(&plan);
        let p = pb::PartialResult { groups: vec![partial("a", &[]), partial("b", &[7])], ..Default::default() };
        merger.add(&p);
        let batch = merger.finish().unwrap();
        assert!(batch.column(2).is_null(0), "sum of nothing is NULL");
        assert!(batch.column(3).is_null(0), "mean of nothing is NULL");
        assert!(batch.column(4).is_null(1), "sample variance of one value is NULL");
        assert!(!batch.column(5).is_null(1), "population sd of one value is 0");
    }

    #[test]
    fn malformed_partials_are_rejected() {
        let plan = plan();
        let merger = Merger::new(&plan);
        let mut g = partial("a", &[1]);
        g.keys.clear();
        assert!(merger.check_shape(&pb::PartialResult { groups: vec![g], ..Default::default() }).is_err());
        let mut g = partial("a", &[1]);
        g.aggregates.swap(0, 3);
        assert!(merger.check_shape(&pb::PartialResult { groups: vec![g], ..Default::default() }).is_err());
        let mut g = partial("a", &[1]);
        g.aggregates[5] = pb::PartialAggregate {
            state: Some(State::Histogram(pb::HistogramState { counts: vec![1; 7], withheld_bins: vec![] })),
        };
        assert!(merger.check_shape(&pb::PartialResult { groups: vec![g], ..Default::default() }).is_err());
        let mut g = partial("a", &[1]);
        g.keys[0] = pb::Literal { value: Some(Value::Int64(7)) };
        let e = merger.check_shape(&pb::PartialResult { groups: vec![g], ..Default::default() }).unwrap_err();
        assert_eq!(e, MalformedAnswer::KeyType { position: 1, expected: "string" });
        let mut g = partial("a", &[1]);
        g.keys[0] = pb::Literal { value: None };
        assert!(merger.check_shape(&pb::PartialResult { groups: vec![g], ..Default::default() }).is_ok());
        let mut g = partial("a", &[1, 2]);
        g.aggregates[3] = pb::PartialAggregate {
            state: Some(State::Moments(pb::MomentsState { count: 2, shift: 0.0, mean: f64::NAN, m2: 1.0 })),
        };
        assert!(merger.check_shape(&pb::PartialResult { groups: vec![g], ..Default::default() }).is_err());
    }

    #[test]
    fn withheld_values_add_nothing_and_values_no_site_released_are_null() {
        let plan = plan();
        let mut merger = Merger::new(&plan);
        let withheld = pb::PartialAggregate { state: Some(State::Withheld(pb::Withheld {})) };
        let mut a1 = partial("a", &[1, 2, 3]);
        a1.aggregates[1] = withheld.clone();
        a1.aggregates[5] = pb::PartialAggregate {
            state: Some(State::Histogram(pb::HistogramState { counts: vec![0, 1, 0], withheld_bins: vec![0, 2] })),
        };
        let mut a2 = partial("a", &[2, 4]);
        a2.aggregates[1] = withheld.clone();
        a2.aggregates[3] = withheld;
        a2.aggregates[5] = pb::PartialAggregate {
            state: Some(State::Histogram(pb::HistogramState { counts: vec![0, 0, 1], withheld_bins: vec![0] })),
        };
        for p in [
            pb::PartialResult { groups: vec![a1], ..Default::default() },
            pb::PartialResult { groups: vec![a2], ..Default::default() },
        ] {
            merger.check_shape(&p).unwrap();
            merger.add(&p);
        }
        let batch = merger.finish().unwrap();
        assert!(batch.column(2).is_null(0), "a sum withheld at every site is NULL, not 0");
        let f = |c: usize| batch.column(c).as_primitive::<Float64Type>().value(0);
        assert!((f(3) - 12.0 / 5.0).abs() < 1e-12, "the mean merges what both sites released");
        assert!((f(4) - 1.0).abs() < 1e-12, "the variance covers the one site that released it");
        let h = batch.column(6).as_list::<i32>().value(0);
        let h = h.as_primitive::<Int64Type>();
        assert!(h.is_null(0), "a bin withheld everywhere is NULL");
        assert_eq!((h.value(1), h.value(2)), (1, 1));
    }

    #[test]
    fn keys_sort_with_nulls_last() {
        let mut keys = [
            KeyValue(pb::Literal { value: None }),
            KeyValue(pb::Literal { value: Some(Value::Float64(2.0)) }),
            KeyValue(pb::Literal { value: Some(Value::Float64(-1.0)) }),
        ];
        keys.sort();
        assert_eq!(keys[0].0.value, Some(Value::Float64(-1.0)));
        assert_eq!(keys[2].0.value, None);
    }
}
