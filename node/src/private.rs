//! Answers a request under differential privacy (profiles dp and feasibility).
//!
//! The order is fixed and each step is a guarantee:
//! 1. the policy plans the request (bounds, levels, noise scales, cost) before anything runs;
//! 2. the project's budget is debited durably (a repeat of the same request over the same
//!    data costs nothing, because it gets the same numbers);
//! 3. the query runs over bounded rows: only rows that name a patient, only declared levels,
//!    at most m rows per patient (chosen by the rows' contents, so the same every time), values
//!    clipped and counted in integer units (exact, order-independent sums);
//! 4. every cell passes through the policy's checker, which adds the noise.

use crate::engine::{Engine, encode_keys, group_keys, grouping_expr, internal};
use crate::refusal::{Exhausted, Refusal};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{Expr, ExprFunctionExt, when};
use datafusion::prelude::{DataFrame, col, ident, lit};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use verbund_ledger::{Allowance, Cost, Debit, Ledger, LedgerError};
use verbund_policies::noise::{NoiseKey, Seed};
use verbund_policies::private::{
    AggregatePlan, AggregateShape, PatientColumn, PrivatePlan, Shape, TrueAggregate, TrueCell, Units,
    empty_private_result, release_private_group,
};
use verbund_policies::{Level, Policy};
use verbund_proto::v1 as pb;
use verbund_query::private::{dp_units_udf, row_order_udf};
use verbund_query::validate::{CheckedAggregate, CheckedGrouping, CheckedQuery};

/// What a node needs for differential privacy: the secret its noise derives from, and the
/// ledger of what each project has spent.
pub struct Privacy {
    pub key: NoiseKey,
    pub ledger: Arc<Ledger>,
}

impl Privacy {
    /// Reads the noise key (creating it, 0600, on first start) and opens (or creates) the
    /// ledger, saying which file is wrong and what to do.
    ///
    /// Creating a key is safe even after one was lost: the ledger identifies a request by a
    /// digest under the key, so under a new key every question is new and charged again,
    /// and no repeat gets fresh noise for free.
    pub fn load(key: &std::path::Path, ledger: &std::path::Path) -> Result<Self, String> {
        if !key.exists() {
            if let Some(dir) = key.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create the noise key's directory {}: {e}", dir.display()))?;
            }
            write_noise_key(key).map_err(|e| format!("cannot create the noise key {}: {e}", key.display()))?;
            tracing::info!(key = %key.display(), "created the noise key (keep it with the ledger; never share it)");
        }
        let bytes = std::fs::read(key).map_err(|e| {
            format!(
                "cannot read the noise key {}: {e}; it must be readable by the node's user only \
                 (or absent, to be created on start)",
                key.display()
            )
        })?;
        warn_if_readable_by_others(key);
        let key = NoiseKey::from_bytes(&bytes).map_err(|e| format!("noise key {}: {e}", key.display()))?;
        if let Some(dir) = ledger.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the ledger's directory {}: {e}", dir.display()))?;
        }
        let ledger = Ledger::open(ledger).map_err(|e| e.to_string())?;
        Ok(Self { key, ledger: Arc::new(ledger) })
    }
}

/// Writes a new random noise key readable by its owner only; refuses to replace one.
pub fn write_noise_key(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut bytes = [0u8; verbund_policies::noise::NOISE_KEY_LEN];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| std::io::Error::other("no system randomness"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(&bytes)?;
    file.sync_all()
}

fn warn_if_readable_by_others(path: &std::path::Path) {
    #[cfg(unix)]
    if let Ok(m) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if m.permissions().mode() & 0o004 != 0 {
            tracing::warn!(path = %path.display(), "the noise key is readable by every user; chmod 600 it");
        }
    }
}

const PATIENTS: &str = "__patients";
const RANK: &str = "__rank";

fn agg_alias(j: usize, part: &str) -> String {
    format!("__a{j}{part}")
}

fn is_integer(catalogue: &pb::Catalogue, dataset: &str, column: &str) -> bool {
    catalogue
        .datasets
        .iter()
        .find(|d| d.name == dataset)
        .and_then(|d| d.columns.iter().find(|c| c.name == column))
        .is_some_and(|c| c.r#type() == pb::ColumnType::Int64)
}

/// The request as the privacy policy sees it.
pub fn shape_of<'a>(q: &'a CheckedQuery, catalogue: &pb::Catalogue) -> Shape<'a> {
    let integer = |column: &str| is_integer(catalogue, &q.dataset, column);
    let mut shape = Shape {
        dataset: &q.dataset,
        group_columns: vec![],
        patient_columns: vec![],
        binned_groupings: 0,
        aggregates: vec![],
    };
    for g in &q.groupings {
        match g {
            CheckedGrouping::Column { column, .. } => shape.group_columns.push(column),
            CheckedGrouping::Bins { .. } => shape.binned_groupings += 1,
            CheckedGrouping::Patient { dataset, column, alias, .. } => {
                shape.patient_columns.push(PatientColumn { dataset, column, alias })
            }
        }
    }
    shape.aggregates = q
        .aggregates
        .iter()
        .map(|a| match a {
            CheckedAggregate::CountRows => AggregateShape::CountRows,
            CheckedAggregate::CountPatients => AggregateShape::CountPatients,
            CheckedAggregate::Count { column } => AggregateShape::Count { column },
            CheckedAggregate::Sum { column, .. } | CheckedAggregate::Mean { column, .. } => {
                AggregateShape::Sum { column, integer: integer(column) }
            }
            CheckedAggregate::Moments { column, .. } => AggregateShape::Moments { column, integer: integer(column) },
            CheckedAggregate::SumOfProducts { left, right, .. } => {
                AggregateShape::Products { left, right, left_integer: integer(left), right_integer: integer(right) }
            }
            CheckedAggregate::Histogram { column, .. } => AggregateShape::Histogram { column },
        })
        .collect();
    shape
}

fn units_expr(column: &str, u: &Units) -> Expr {
    dp_units_udf().call(vec![ident(column), lit(u.low), lit(u.high), lit(u.centre), lit(u.unit)])
}

fn level_literal(level: &Level, column_type: pb::ColumnType) -> Option<ScalarValue> {
    use pb::ColumnType as T;
    match (level, column_type) {
        (Level::Int(i), T::Int64) => Some(ScalarValue::Int64(Some(*i))),
        (Level::Int(i), T::Float64) => Some(ScalarValue::Float64(Some(*i as f64))),
        (Level::Text(s), T::Int64) => s.parse().ok().map(|i| ScalarValue::Int64(Some(i))),
        (Level::Text(s), T::String) => Some(ScalarValue::Utf8(Some(s.clone()))),
        (Level::Int(i), T::String) => Some(ScalarValue::Utf8(Some(i.to_string()))),
        (Level::Bool(b), T::Bool) => Some(ScalarValue::Boolean(Some(*b))),
        _ => None,
    }
}

impl Engine {
    /// Debits the request's cost from the project's budget, durably, before anything runs.
    pub(crate) async fn debit(
        &self,
        privacy: &Privacy,
        project: &str,
        seed: &Seed,
        plan: &PrivatePlan,
    ) -> Result<(Cost, Debit), Refusal> {
        let policy = self.policy();
        let cost = Cost::from_f64(plan.epsilon, plan.delta).map_err(Refusal::internal)?;
        let allowance = allowance(policy)?;
        let ledger = privacy.ledger.clone();
        let (project, digest) = (project.to_string(), seed.ledger_digest());
        let debited =
            tokio::task::spawn_blocking(move || ledger.debit(&project, &digest, cost, &allowance, SystemTime::now()))
                .await
                .map_err(Refusal::internal)?;
        match debited {
            Ok(debit) => Ok((cost, debit)),
            Err(LedgerError::Exhausted(e)) => Err(Refusal::BudgetExhausted(e.to_string())),
            Err(e) => Err(Refusal::internal(format!("privacy ledger: {e}"))),
        }
    }

    /// The rows a private query may see: linked to a patient, within the declared levels, at
    /// most `m` per patient.
    async fn bounded_rows(&self, q: &CheckedQuery, plan: &PrivatePlan) -> Result<DataFrame, Refusal> {
        let mut df = self.filtered(q).await?.filter(self.linked_key(q).is_not_null()).map_err(internal)?;
        let data = self.data();
        for (column, levels) in &plan.levels {
            let attribute = q.groupings.iter().find_map(|g| match g {
                CheckedGrouping::Patient { alias, column_type, .. } if alias == column => Some(*column_type),
                _ => None,
            });
            let column_type = attribute.unwrap_or_else(|| {
                data.catalogue()
                    .datasets
                    .iter()
                    .find(|d| d.name == q.dataset)
                    .and_then(|d| d.columns.iter().find(|c| &c.name == column))
                    .map(|c| c.r#type())
                    .unwrap_or_default()
            });
            let values: Vec<Expr> = levels.iter().filter_map(|l| level_literal(l, column_type)).map(lit).collect();
            df = df.filter(ident(column).in_list(values, false).or(ident(column).is_null())).map_err(internal)?;
        }
        // A patient count in one cell (a feasibility count) is the same over all rows and over
        // the bounded ones: every patient keeps at least one row. Skip the window there.
        if q.groupings.is_empty() && q.aggregates.iter().all(|a| matches!(a, CheckedAggregate::CountPatients)) {
            return Ok(df);
        }
        let mut touched: Vec<&str> = q.columns().into_iter().collect();
        touched.retain(|c| *c != q.patient_key);
        touched.sort_unstable();
        // Rows with equal values in the touched columns are alike to the query, so the hash of
        // those values orders them well enough: which of two equal rows is kept changes
        // nothing. (Two different rows with the same 64-bit hash are the one, negligible, way
        // the choice could depend on arrival order.) With no column touched, all of a
        // patient's rows are alike; the window still wants an order, and the key is constant.
        let order = if touched.is_empty() {
            vec![ident(&q.patient_key).sort(true, true)]
        } else {
            vec![row_order_udf().call(touched.iter().map(|c| ident(*c)).collect()).sort(true, true)]
        };
        let rank = row_number()
            .partition_by(vec![ident(&q.patient_key)])
            .order_by(order)
            .build()
            .map_err(internal)?
            .alias(RANK);
        df.window(vec![rank])
            .and_then(|df| df.filter(col(RANK).lt_eq(lit(plan.rows_per_patient as u64))))
            .map_err(internal)
    }

    pub(crate) async fn compute_private(
        &self,
        q: &CheckedQuery,
        plan: &PrivatePlan,
        seed: &Seed,
    ) -> Result<pb::PartialResult, Refusal> {
        let policy = self.policy();
        let rows = self.bounded_rows(q, plan).await?;
        let pk = ident(&q.patient_key);
        let group_exprs: Vec<Expr> =
            q.groupings.iter().enumerate().map(|(i, g)| grouping_expr(g).alias(format!("__g{i}"))).collect();
        let mut aggr = vec![count_distinct(pk.clone()).alias(PATIENTS)];
        // Distinct patients among the rows where the gate columns are set: one (costly)
        // distinct count per set of columns, shared by the aggregates over the same columns.
        let mut gate_sets: Vec<Vec<String>> = Vec::new();
        let mut contributor_alias = |gates: &[&str], aggr: &mut Vec<Expr>| -> Result<String, Refusal> {
            let mut key: Vec<String> = gates.iter().map(|g| g.to_string()).collect();
            key.sort_unstable();
            let index = match gate_sets.iter().position(|g| *g == key) {
                Some(i) => i,
                None => {
                    let all_set = key.iter().map(|c| ident(c).is_not_null()).reduce(Expr::and).unwrap_or(lit(true));
                    let patients = count_distinct(when(all_set, pk.clone()).end().map_err(internal)?);
                    aggr.push(patients.alias(format!("__c{}", gate_sets.len())));
                    gate_sets.push(key);
                    gate_sets.len() - 1
                }
            };
            Ok(format!("__c{index}"))
        };
        let mut contributors_of: Vec<Option<String>> = vec![None; q.aggregates.len()];
        for (j, (a, p)) in q.aggregates.iter().zip(&plan.aggregates).enumerate() {
            match (a, p) {
                (_, AggregatePlan::Patients) | (_, AggregatePlan::Histogram(_)) => {}
                (_, AggregatePlan::Rows(_)) => aggr.push(count(lit(1i64)).alias(agg_alias(j, "_n"))),
                (CheckedAggregate::Count { column }, AggregatePlan::Count(_)) => {
                    aggr.push(count(ident(column)).alias(agg_alias(j, "_n")));
                    contributors_of[j] = Some(contributor_alias(&[column.as_str()], &mut aggr)?);
                }
                (_, AggregatePlan::Sum { units, squares, .. }) => {
                    let u = units_expr(&units.column, units);
                    aggr.push(count(u.clone()).alias(agg_alias(j, "_n")));
                    aggr.push(sum(u.clone()).alias(agg_alias(j, "_s")));
                    if squares.is_some() {
                        aggr.push(sum(u.clone() * u).alias(agg_alias(j, "_q")));
                    }
                    contributors_of[j] = Some(contributor_alias(&[units.column.as_str()], &mut aggr)?);
                }
                (_, AggregatePlan::Products { left, right, .. }) => {
                    let product = units_expr(&left.column, left) * units_expr(&right.column, right);
                    aggr.push(count(product.clone()).alias(agg_alias(j, "_n")));
                    aggr.push(sum(product).alias(agg_alias(j, "_s")));
                    let gates = [left.column.as_str(), right.column.as_str()];
                    contributors_of[j] = Some(contributor_alias(&gates, &mut aggr)?);
                }
                _ => return Err(Refusal::internal("an aggregate does not match its privacy plan")),
            }
        }
        let df = rows.clone().aggregate(group_exprs.clone(), aggr).map_err(internal)?;
        let mut stream = self.execute(df).await?;

        let mut out = empty_private_result(policy);
        let mut cells: Vec<TrueCell> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let ngroups = q.groupings.len();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(internal)?;
            let value = |name: &str, row: usize| -> Result<i64, Refusal> {
                let c = batch.column_by_name(name).ok_or_else(|| Refusal::internal(format!("missing {name}")))?;
                Ok(if c.is_null(row) { 0 } else { c.as_primitive::<Int64Type>().value(row) })
            };
            for row in 0..batch.num_rows() {
                let patients = value(PATIENTS, row)?.max(0) as u64;
                if patients < plan.floor {
                    out.withheld_groups += 1;
                    continue;
                }
                if cells.len() >= policy.max_groups as usize {
                    return Err(Exhausted::Groups { limit: policy.max_groups }.into());
                }
                let keys = group_keys(&batch, ngroups, row)?;
                let mut aggregates = Vec::with_capacity(plan.aggregates.len());
                for (j, p) in plan.aggregates.iter().enumerate() {
                    let contributors = |row| {
                        let alias = contributors_of[j].as_deref().unwrap_or_default();
                        Ok::<_, Refusal>(value(alias, row)?.max(0) as u64)
                    };
                    aggregates.push(match p {
                        AggregatePlan::Patients => TrueAggregate::Patients,
                        AggregatePlan::Rows(_) => TrueAggregate::Rows(value(&agg_alias(j, "_n"), row)?),
                        AggregatePlan::Count(_) => TrueAggregate::Count {
                            count: value(&agg_alias(j, "_n"), row)?,
                            contributors: contributors(row)?,
                        },
                        AggregatePlan::Sum { units, squares, .. } => {
                            let n = value(&agg_alias(j, "_n"), row)?;
                            fits(n, units.bound.saturating_mul(units.bound))?;
                            TrueAggregate::Sum {
                                count: n,
                                sum: value(&agg_alias(j, "_s"), row)?,
                                squares: if squares.is_some() { value(&agg_alias(j, "_q"), row)? } else { 0 },
                                contributors: contributors(row)?,
                            }
                        }
                        AggregatePlan::Products { left, right, .. } => {
                            let n = value(&agg_alias(j, "_n"), row)?;
                            fits(n, left.bound.saturating_mul(right.bound))?;
                            TrueAggregate::Sum {
                                count: n,
                                sum: value(&agg_alias(j, "_s"), row)?,
                                squares: 0,
                                contributors: contributors(row)?,
                            }
                        }
                        AggregatePlan::Histogram(_) => {
                            let bins = match &q.aggregates[j] {
                                CheckedAggregate::Histogram { spec, .. } => spec.len(),
                                _ => 0,
                            };
                            TrueAggregate::Histogram { counts: vec![0; bins], patients: vec![0; bins] }
                        }
                    });
                }
                index.insert(encode_keys(&keys), cells.len());
                cells.push(TrueCell { keys, patients, aggregates });
            }
        }
        for (j, a) in q.aggregates.iter().enumerate() {
            if let CheckedAggregate::Histogram { column, spec } = a {
                self.private_histogram(&rows, q, &group_exprs, column, spec, &index, &mut cells, j).await?;
            }
        }
        for cell in cells {
            let encoded = encode_keys(&cell.keys);
            match release_private_group(policy, plan, seed, cell, &encoded, &mut out) {
                Ok(Some(group)) => out.groups.push(group),
                Ok(None) => {}
                Err(e) => return Err(Refusal::internal(e)),
            }
        }
        // How many groups were withheld is not a private number (unlike the withheld values
        // and bins, which the released answer shows anyway): it stays in this site's log.
        tracing::info!(withheld_groups = out.withheld_groups, "private answer ready");
        out.withheld_groups = 0;
        Ok(out)
    }

    /// Rows and distinct patients per bin, over the bounded rows, into the cells kept so far.
    #[allow(clippy::too_many_arguments)]
    async fn private_histogram(
        &self,
        rows: &DataFrame,
        q: &CheckedQuery,
        group_exprs: &[Expr],
        column: &str,
        spec: &verbund_query::BinSpec,
        kept: &HashMap<Vec<u8>, usize>,
        cells: &mut [TrueCell],
        aggregate: usize,
    ) -> Result<(), Refusal> {
        if kept.is_empty() {
            return Ok(());
        }
        let patients = count_distinct(ident(&q.patient_key));
        self.per_bin(rows.clone(), group_exprs, column, spec, patients, kept, |c, bin, rows, patients| {
            if let Some(TrueAggregate::Histogram { counts, patients: bin_patients }) =
                cells[c].aggregates.get_mut(aggregate)
            {
                counts[bin] = rows;
                bin_patients[bin] = patients;
            }
        })
        .await
    }
}

/// Refuses a cell whose sums could have overflowed 64 bits (rows × largest value in units).
fn fits(rows: i64, per_row: u64) -> Result<(), Refusal> {
    if (rows.max(0) as u128) * u128::from(per_row) >= (i64::MAX as u128) / 2 {
        return Err(Refusal::internal(
            "a cell has too many rows for the declared resolution of a column; declare a coarser resolution",
        ));
    }
    Ok(())
}

/// The project's allowance per period, from the policy.
pub fn allowance(policy: &Policy) -> Result<Allowance, Refusal> {
    let b = &policy.budget;
    Ok(Allowance {
        per_period: Cost::from_f64(b.epsilon, b.delta).map_err(Refusal::internal)?,
        period: Duration::from_secs(u64::from(b.period_days) * 86_400),
    })
}

/// What an answer cost, for the researcher.
pub fn cost_of(cost: Cost, debit: &Debit) -> pb::PrivacyCost {
    let repeat = matches!(debit, Debit::Repeat { .. });
    let spent = if repeat { Cost::default() } else { cost };
    pb::PrivacyCost {
        epsilon: spent.epsilon(),
        delta: spent.delta(),
        repeat,
        epsilon_left: debit.left().epsilon(),
        delta_left: debit.left().delta(),
        renews_at: unix_seconds(debit.renews_at()),
    }
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
