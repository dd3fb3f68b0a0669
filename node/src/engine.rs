//! Answers a typed aggregate request: check it, compile it into a DataFusion plan over the
//! local tables, execute it, and pass every computed number through the policy's output
//! checker. Nothing leaves this module except what `verbund_policies::release` built.

use crate::catalog::Catalog;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{DataFrame, ident, lit};
use futures::StreamExt;
use prost::Message;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::Semaphore;
use verbund_policies::{Access, CandidateAggregate, CandidateGroup, Policy};
use verbund_proto::v1 as pb;
use verbund_proto::v1::partial_aggregate::State;
use verbund_query::capped::distinct_up_to_udaf;
use verbund_query::functions::{BinKind, bin_udf, moments_from_array, moments_udaf};
use verbund_query::literal::scalar_to_literal;
use verbund_query::validate::{CheckedAggregate, CheckedFilter, CheckedGrouping, CheckedQuery, check};
use verbund_query::{BinSpec, Moments};

/// Why a node did not answer. Messages are for the researcher: they name columns and
/// limits, never data values or server paths.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    InvalidRequest(String),
    /// The site's policy does not allow this project / role / dataset / column.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
}

impl Refusal {
    pub fn to_proto(&self) -> pb::Refusal {
        let code = match self {
            Refusal::InvalidRequest(_) => pb::RefusalCode::InvalidRequest,
            Refusal::PermissionDenied(_) => pb::RefusalCode::Policy,
            Refusal::ResourceExhausted(_) => pb::RefusalCode::ResourceExhausted,
            Refusal::Internal(_) => pb::RefusalCode::Internal,
        };
        pb::Refusal { code: code as i32, message: self.to_string() }
    }
}

fn internal(e: DataFusionError) -> Refusal {
    let root = e.find_root();
    if matches!(root, DataFusionError::ResourcesExhausted(_)) {
        return Refusal::ResourceExhausted(
            "the site ran out of memory for this query; filter or group more coarsely".into(),
        );
    }
    tracing::error!(error = %root, "query execution failed");
    Refusal::Internal("the site could not execute this query (the error is in the site's log)".into())
}

pub struct Engine {
    catalog: Catalog,
    policy: Policy,
    running: Semaphore,
    /// Queries waiting for a slot in `running`.
    waiting: AtomicU32,
}

const PATIENTS: &str = "__patients";

/// A place in the line for a query slot; leaving (or being dropped while waiting, when the
/// query is cancelled) frees it.
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn join(count: &'a AtomicU32, max: u32) -> Option<Self> {
        count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Self(count))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn group_alias(i: usize) -> String {
    format!("__g{i}")
}

fn agg_alias(j: usize, part: &str) -> String {
    format!("__a{j}{part}")
}

impl Engine {
    pub fn new(catalog: Catalog, policy: Policy) -> Self {
        let running = Semaphore::new(policy.max_concurrent_queries as usize);
        Self { catalog, policy, running, waiting: AtomicU32::new(0) }
    }

    pub fn catalogue(&self) -> &pb::Catalogue {
        self.catalog.catalogue()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Answers one request for a researcher whose token was verified. Dropping the returned
    /// future stops the execution.
    pub async fn answer(&self, query: &pb::AggregateQuery, access: &Access<'_>) -> Result<pb::PartialResult, Refusal> {
        let checked = check(query, self.catalogue()).map_err(|e| Refusal::InvalidRequest(e.0))?;
        self.policy.authorize(access, &checked.dataset, &checked.columns()).map_err(Refusal::PermissionDenied)?;
        let _permit = match self.running.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                // Wait in line (the semaphore is fair), unless the line is full.
                let waiting = Waiting::join(&self.waiting, self.policy.max_queued_queries).ok_or_else(|| {
                    Refusal::ResourceExhausted(format!(
                        "the site is running {} queries with {} more waiting; try again shortly",
                        self.policy.max_concurrent_queries, self.policy.max_queued_queries
                    ))
                })?;
                let permit = self.running.acquire().await.map_err(|e| Refusal::Internal(e.to_string()))?;
                drop(waiting);
                permit
            }
        };
        let groups = self.compute(&checked).await?;
        Ok(verbund_policies::release(&self.policy, groups))
    }

    async fn filtered(&self, q: &CheckedQuery) -> Result<DataFrame, Refusal> {
        let df = self.catalog.ctx.table(q.dataset.as_str()).await.map_err(internal)?;
        match &q.filter {
            Some(f) => df.filter(filter_expr(f)?).map_err(internal),
            None => Ok(df),
        }
    }

    async fn compute(&self, q: &CheckedQuery) -> Result<Vec<CandidateGroup>, Refusal> {
        let group_exprs: Vec<Expr> =
            q.groupings.iter().enumerate().map(|(i, g)| grouping_expr(g).alias(group_alias(i))).collect();
        let mut aggr = vec![self.patients_expr(q, true).alias(PATIENTS)];
        for (j, a) in q.aggregates.iter().enumerate() {
            match a {
                CheckedAggregate::CountRows => aggr.push(count(lit(1i64)).alias(agg_alias(j, ""))),
                CheckedAggregate::CountPatients | CheckedAggregate::Histogram { .. } => {}
                CheckedAggregate::Count { column } => aggr.push(count(ident(column)).alias(agg_alias(j, ""))),
                CheckedAggregate::Sum { column, column_type } | CheckedAggregate::Mean { column, column_type } => {
                    let as_type =
                        if *column_type == pb::ColumnType::Int64 { DataType::Int64 } else { DataType::Float64 };
                    aggr.push(count(ident(column)).alias(agg_alias(j, "_n")));
                    aggr.push(sum(cast(ident(column), as_type)).alias(agg_alias(j, "_s")));
                }
                CheckedAggregate::Moments { column, .. } => {
                    aggr.push(moments_udaf().call(vec![ident(column)]).alias(agg_alias(j, "")))
                }
                CheckedAggregate::SumOfProducts { left, right, integer } => {
                    let as_type = if *integer { DataType::Int64 } else { DataType::Float64 };
                    let product = cast(ident(left), as_type.clone()) * cast(ident(right), as_type);
                    aggr.push(count(product.clone()).alias(agg_alias(j, "_n")));
                    aggr.push(sum(product).alias(agg_alias(j, "_s")));
                }
            }
        }
        let df = self.filtered(q).await?.aggregate(group_exprs.clone(), aggr).map_err(internal)?;
        let batches = self.collect_bounded(df).await?;

        let mut histograms = HashMap::new();
        for (j, a) in q.aggregates.iter().enumerate() {
            if let CheckedAggregate::Histogram { column, spec } = a {
                histograms.insert(j, self.histogram(q, &group_exprs, column, spec).await?);
            }
        }

        let ngroups = q.groupings.len();
        let mut out = Vec::new();
        for batch in &batches {
            let col =
                |name: &str| batch.column_by_name(name).ok_or_else(|| Refusal::Internal(format!("missing {name}")));
            let patients = col(PATIENTS)?.as_primitive::<Int64Type>().clone();
            let mut moments_cols = HashMap::new();
            for (j, a) in q.aggregates.iter().enumerate() {
                if matches!(a, CheckedAggregate::Moments { .. }) {
                    moments_cols.insert(j, moments_from_array(col(&agg_alias(j, ""))?).map_err(internal)?);
                }
            }
            for row in 0..batch.num_rows() {
                let keys = group_keys(batch, ngroups, row)?;
                let key_bytes = encode_keys(&keys);
                let n_patients = patients.value(row).max(0) as u64;
                let mut aggregates = Vec::with_capacity(q.aggregates.len());
                for (j, a) in q.aggregates.iter().enumerate() {
                    let plain = |state| CandidateAggregate::Plain(pb::PartialAggregate { state: Some(state) });
                    let count_of = |name: &str| -> Result<u64, Refusal> {
                        Ok(col(name)?.as_primitive::<Int64Type>().value(row).max(0) as u64)
                    };
                    aggregates.push(match a {
                        CheckedAggregate::CountRows | CheckedAggregate::Count { .. } => {
                            plain(State::Count(pb::CountState { count: count_of(&agg_alias(j, ""))? }))
                        }
                        CheckedAggregate::CountPatients => plain(State::Count(pb::CountState { count: n_patients })),
                        CheckedAggregate::Sum { .. }
                        | CheckedAggregate::Mean { .. }
                        | CheckedAggregate::SumOfProducts { .. } => {
                            let n = count_of(&agg_alias(j, "_n"))?;
                            let s = col(&agg_alias(j, "_s"))?;
                            let sum = if s.is_null(row) {
                                None
                            } else if s.data_type() == &DataType::Int64 {
                                Some(pb::sum_state::Sum::Int64(s.as_primitive::<Int64Type>().value(row)))
                            } else {
                                Some(pb::sum_state::Sum::Float64(s.as_primitive::<Float64Type>().value(row)))
                            };
                            plain(State::Sum(pb::SumState { count: n, sum }))
                        }
                        CheckedAggregate::Moments { .. } => {
                            let m: Moments = moments_cols.get(&j).and_then(|v| v.get(row).copied()).unwrap_or_default();
                            plain(State::Moments(pb::MomentsState {
                                count: m.count,
                                shift: m.shift,
                                mean: m.mean,
                                m2: m.m2,
                            }))
                        }
                        CheckedAggregate::Histogram { spec, .. } => {
                            let (counts, patients) = histograms
                                .get(&j)
                                .and_then(|h| h.get(&key_bytes).cloned())
                                .unwrap_or_else(|| (vec![0; spec.len()], vec![0; spec.len()]));
                            CandidateAggregate::Histogram { counts, patients }
                        }
                    });
                }
                out.push(CandidateGroup { keys, patients: n_patients, aggregates });
            }
        }
        Ok(out)
    }

    /// Distinct patients per group: exact when the query asks for them (`exact_if_asked`
    /// and a `count(DISTINCT <patient key>)` aggregate), otherwise counted only up to the
    /// minimum cell size, which decides release the same way at a fraction of the cost.
    fn patients_expr(&self, q: &CheckedQuery, exact_if_asked: bool) -> Expr {
        if exact_if_asked && q.aggregates.iter().any(|a| matches!(a, CheckedAggregate::CountPatients)) {
            count_distinct(ident(&q.patient_key))
        } else {
            let k = i64::from(self.policy.min_cell_size.max(1));
            distinct_up_to_udaf().call(vec![ident(&q.patient_key), lit(k)])
        }
    }

    /// Row counts and distinct patients per (group, bin) for one histogram aggregate.
    async fn histogram(
        &self,
        q: &CheckedQuery,
        group_exprs: &[Expr],
        column: &str,
        spec: &BinSpec,
    ) -> Result<HashMap<Vec<u8>, (Vec<u64>, Vec<u64>)>, Refusal> {
        let mut groups = group_exprs.to_vec();
        groups.push(bin_expr(column, spec).alias("__bin"));
        let aggr = vec![count(ident(column)).alias("__rows"), self.patients_expr(q, false).alias(PATIENTS)];
        let df = self.filtered(q).await?.aggregate(groups, aggr).map_err(internal)?;
        let batches = self.collect_bounded_by(df, self.policy.max_groups as usize * spec.len()).await?;
        let edge_index: HashMap<u64, usize> = (0..spec.len()).map(|i| (spec.lower_edge(i).to_bits(), i)).collect();
        let ngroups = group_exprs.len();
        let mut out: HashMap<Vec<u8>, (Vec<u64>, Vec<u64>)> = HashMap::new();
        for batch in &batches {
            let bins = batch.column(ngroups).as_primitive::<Float64Type>();
            let rows = batch.column(ngroups + 1).as_primitive::<Int64Type>();
            let patients = batch.column(ngroups + 2).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                if bins.is_null(row) {
                    continue;
                }
                let Some(&i) = edge_index.get(&bins.value(row).to_bits()) else {
                    return Err(Refusal::Internal("histogram bin key does not match its bins".into()));
                };
                let keys = group_keys(batch, ngroups, row)?;
                let entry = out.entry(encode_keys(&keys)).or_insert_with(|| (vec![0; spec.len()], vec![0; spec.len()]));
                entry.0[i] = rows.value(row).max(0) as u64;
                entry.1[i] = patients.value(row).max(0) as u64;
            }
        }
        Ok(out)
    }

    async fn collect_bounded(&self, df: DataFrame) -> Result<Vec<RecordBatch>, Refusal> {
        self.collect_bounded_by(df, self.policy.max_groups as usize).await
    }

    /// Collects a result, refusing as soon as it has more than `max_rows` rows (memory stays
    /// bounded by the policy's group limit).
    async fn collect_bounded_by(&self, df: DataFrame, max_rows: usize) -> Result<Vec<RecordBatch>, Refusal> {
        let mut stream = df.execute_stream().await.map_err(internal)?;
        let mut batches = Vec::new();
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(internal)?;
            rows += batch.num_rows();
            if rows > max_rows {
                return Err(Refusal::ResourceExhausted(format!(
                    "the answer has more groups than this site's limit of {}; group more coarsely or filter",
                    self.policy.max_groups
                )));
            }
            batches.push(batch);
        }
        Ok(batches)
    }
}

/// The group key of one result row: its first `ngroups` columns as wire literals.
fn group_keys(batch: &RecordBatch, ngroups: usize, row: usize) -> Result<Vec<pb::Literal>, Refusal> {
    (0..ngroups)
        .map(|g| {
            let v = ScalarValue::try_from_array(batch.column(g), row).map_err(internal)?;
            scalar_to_literal(&v).map_err(|e| Refusal::Internal(e.to_string()))
        })
        .collect()
}

fn encode_keys(keys: &[pb::Literal]) -> Vec<u8> {
    pb::GroupPartial { keys: keys.to_vec(), aggregates: vec![] }.encode_to_vec()
}

fn bin_expr(column: &str, spec: &BinSpec) -> Expr {
    match spec {
        BinSpec::Fixed { start, width, count } => {
            bin_udf(BinKind::Fixed).call(vec![ident(column), lit(*start), lit(*width), lit(*count as i64)])
        }
        BinSpec::Edges(edges) => {
            let mut args = vec![ident(column)];
            args.extend(edges.iter().map(|e| lit(*e)));
            bin_udf(BinKind::Edges).call(args)
        }
    }
}

fn grouping_expr(g: &CheckedGrouping) -> Expr {
    match g {
        CheckedGrouping::Column { column, .. } => ident(column),
        CheckedGrouping::Bins { column, spec } => bin_expr(column, spec),
    }
}

fn filter_expr(f: &CheckedFilter) -> Result<Expr, Refusal> {
    Ok(match f {
        CheckedFilter::Compare { column, op, value } => {
            let (c, v) = (ident(column), lit(value.clone()));
            match op {
                pb::CompareOp::Eq => c.eq(v),
                pb::CompareOp::Ne => c.not_eq(v),
                pb::CompareOp::Lt => c.lt(v),
                pb::CompareOp::Le => c.lt_eq(v),
                pb::CompareOp::Gt => c.gt(v),
                pb::CompareOp::Ge => c.gt_eq(v),
                pb::CompareOp::Unspecified => {
                    return Err(Refusal::InvalidRequest("a comparison has no operator".into()));
                }
            }
        }
        CheckedFilter::InList { column, values, negated } => {
            ident(column).in_list(values.iter().cloned().map(lit).collect(), *negated)
        }
        CheckedFilter::Between { column, low, high, negated } => {
            let (l, h) = (lit(low.clone()), lit(high.clone()));
            if *negated { ident(column).not_between(l, h) } else { ident(column).between(l, h) }
        }
        CheckedFilter::IsNull { column, negated } => {
            if *negated {
                ident(column).is_not_null()
            } else {
                ident(column).is_null()
            }
        }
        CheckedFilter::And(ops) | CheckedFilter::Or(ops) => {
            let is_and = matches!(f, CheckedFilter::And(_));
            let mut exprs = ops.iter().map(filter_expr);
            let first = exprs.next().ok_or_else(|| Refusal::InvalidRequest("AND / OR without operands".into()))??;
            exprs.try_fold(first, |acc, e| Ok::<_, Refusal>(if is_and { acc.and(e?) } else { acc.or(e?) }))?
        }
        CheckedFilter::Not(inner) => Expr::Not(Box::new(filter_expr(inner)?)),
    })
}
