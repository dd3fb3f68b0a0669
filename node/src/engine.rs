//! Answers a typed aggregate request: check it, compile it into a DataFusion plan over the
//! local tables, execute it, and pass every computed number through the policy's output
//! checker. Nothing leaves this module except what `verbund_policies::release` built.

use crate::catalogue::Catalogue;
use crate::consent::{Population, PopulationCache};
use crate::private::{Privacy, cost_of, shape_of, unix_seconds};
use crate::refusal::{Exhausted, Refusal};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::functions::core::expr_fn::nullif;
use datafusion::functions::math::expr_fn::abs;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, max, sum};
use datafusion::logical_expr::{Expr, cast};
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::{DataFrame, ident, lit};
use futures::StreamExt;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::Semaphore;
use verbund_policies::noise::Seed;
use verbund_policies::{Access, CandidateAggregate, CandidateGroup, Policy, Profile};
use verbund_proto::v1 as pb;
use verbund_proto::v1::partial_aggregate::State;
use verbund_query::capped::patients_up_to_udaf;
use verbund_query::functions::{BinKind, bin_udf, moments_from_array, moments_udaf};
use verbund_query::literal::scalar_to_literal;
use verbund_query::validate::{
    CheckedAggregate, CheckedFilter, CheckedGrouping, CheckedQuery, InvalidRequest, Missing, check,
};
use verbund_query::{BinSpec, Moments};

pub(crate) fn internal(e: DataFusionError) -> Refusal {
    let root = e.find_root();
    if matches!(root, DataFusionError::ResourcesExhausted(_)) {
        return Exhausted::Memory.into();
    }
    Refusal::internal(root)
}

pub struct Engine {
    /// The datasets as loaded; replaced whole when the data changes on disk.
    catalogue: parking_lot::RwLock<Arc<Catalogue>>,
    /// Held shared by every query for its whole run and exclusively by a reload for its swap:
    /// a query reads one version of the data from its first check to its last number (its
    /// noise is derived from that version).
    swap: tokio::sync::RwLock<()>,
    policy: Policy,
    /// Noise key and budget ledger, for the differentially private profiles.
    privacy: Option<Privacy>,
    running: Semaphore,
    /// Queries waiting for a slot in `running`.
    waiting: AtomicU32,
    /// Each project's population (consent and objections), per day and consent data.
    populations: PopulationCache,
    /// Which datasets (at which version) have one row per patient, for patient attributes.
    pub(crate) patient_level: crate::attributes::PatientLevelCache,
    /// Patient sets of cohort criteria on the data served now.
    pub(crate) criteria: crate::criteria::CriterionCache,
    /// Whether criteria may be answered from the in-memory index (on unless turned off, for
    /// comparing with the DataFusion route).
    criteria_index: std::sync::atomic::AtomicBool,
    /// Criteria the index answered (tests check the index is really used).
    pub(crate) criteria_indexed: std::sync::atomic::AtomicU64,
    /// Models' designs and the rounds of each fit (docs/regression-plan.md §1, rule R8).
    pub(crate) models: crate::model::cache::ModelCache,
}

tokio::task_local! {
    /// The patients the running query may count. Every query runs inside its scope, and
    /// reading the rows without it fails (closed): no code path can skip consent.
    static POPULATION: Population;
}

const PATIENTS: &str = "__patients";

/// Runs `work` with `population` as the patients it may read (see `POPULATION`).
pub(crate) async fn in_population<F: std::future::Future>(population: Population, work: F) -> F::Output {
    POPULATION.scope(population, work).await
}

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

fn contributors_alias(i: usize) -> String {
    format!("__c{i}")
}

impl Engine {
    pub fn new(catalogue: Catalogue, policy: Policy) -> Self {
        let running = Semaphore::new(policy.max_concurrent_queries as usize);
        Self {
            catalogue: parking_lot::RwLock::new(Arc::new(catalogue)),
            swap: tokio::sync::RwLock::new(()),
            policy,
            privacy: None,
            running,
            waiting: AtomicU32::new(0),
            populations: Default::default(),
            patient_level: Default::default(),
            criteria: Default::default(),
            criteria_index: std::sync::atomic::AtomicBool::new(true),
            criteria_indexed: Default::default(),
            models: Default::default(),
        }
    }

    /// Gives the engine its noise key and budget ledger (needed by the dp and feasibility
    /// profiles; without them such a site refuses every query).
    pub fn with_privacy(mut self, privacy: Privacy) -> Self {
        self.privacy = Some(privacy);
        self
    }

    pub fn privacy(&self) -> Option<&Privacy> {
        self.privacy.as_ref()
    }

    /// The datasets as this node serves them now.
    pub fn catalogue(&self) -> pb::Catalogue {
        self.data().catalogue().clone()
    }

    /// The catalogue served now, without copying it (the hot path's way to read it).
    pub(crate) fn data(&self) -> Arc<Catalogue> {
        self.catalogue.read().clone()
    }

    /// Serves `catalogue` from now on: after the queries running have finished (they keep
    /// the data they started with), before any new one starts.
    pub async fn replace_catalogue(&self, catalogue: Catalogue) {
        let _swap = self.swap.write().await;
        *self.catalogue.write() = Arc::new(catalogue);
        self.populations.clear();
        self.criteria.clear();
        self.models.clear();
    }

    /// Forgets the cohort criteria's patient sets (the next questions compute them anew), as
    /// after new data; for measuring the cold path.
    pub fn forget_criteria(&self) {
        self.criteria.clear();
    }

    /// Answers cohort criteria from the in-memory index (the default) or, turned off, only by
    /// DataFusion plans over the datasets: both give the same patients; tests compare them.
    pub fn use_criteria_index(&self, on: bool) {
        self.criteria_index.store(on, Ordering::SeqCst);
        self.criteria.clear();
    }

    pub(crate) fn criteria_index_enabled(&self) -> bool {
        self.criteria_index.load(Ordering::SeqCst)
    }

    /// How many criteria the index has answered since the node started.
    pub fn criteria_answered_by_index(&self) -> u64 {
        self.criteria_indexed.load(Ordering::Relaxed)
    }

    /// Bytes the criteria index of the data served now holds.
    pub fn criteria_index_bytes(&self) -> usize {
        self.data().index.bytes()
    }

    /// The version of each dataset as served now (what a reload compares with the files).
    pub fn dataset_versions(&self) -> Vec<(String, String)> {
        let data = self.data();
        data.catalogue().datasets.iter().map(|d| (d.name.clone(), data.version(&d.name).to_string())).collect()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Answers one request for a researcher whose token was verified. Dropping the returned
    /// future stops the execution.
    pub async fn answer(&self, query: &pb::AggregateQuery, access: &Access<'_>) -> Result<pb::PartialResult, Refusal> {
        let _same_data = self.swap.read().await;
        let data = self.data();
        let checked = check(query, data.catalogue())?;
        self.policy.authorize(access, &checked.dataset, &checked.columns())?;
        if let Some(cohort) = &checked.cohort {
            for (dataset, columns) in cohort.columns() {
                self.policy.authorize(access, dataset, &columns.into_iter().collect::<Vec<_>>())?;
            }
        }
        for (dataset, column) in checked.patient_columns() {
            self.policy.authorize(access, dataset, &[column])?;
        }
        self.check_cells(&checked)?;
        // Under differential privacy, what may be asked and what it costs is decided first.
        let private = self.policy.plan_private(&shape_of(&checked, data.catalogue()))?;
        let _permit = self.slot().await?;
        // Who may be counted today: consent and objections, for this project.
        let day = (unix_seconds(std::time::SystemTime::now()) / 86_400) as i32;
        let population = self.population(access.project, day).await?;
        let Some(plan) = private else {
            let out = POPULATION.scope(population, self.compute(&checked)).await?;
            if self.policy.profile == Profile::TestOnlyRaw {
                tracing::warn!(
                    "released RAW, UNPROTECTED numbers (policy profile test-only-raw: for synthetic test data only)"
                );
            }
            return Ok(out);
        };
        let privacy = self.privacy.as_ref().ok_or(Refusal::PrivacyUnconfigured)?;
        let seed = Seed::for_request(
            &privacy.key,
            &query.encode_to_vec(),
            &self.data_version(&checked, &population),
            &self.policy.mechanism_digest(&checked.dataset),
        );
        let (cost, debit) = self.debit(privacy, access.project, &seed, &plan).await?;
        let mut out = POPULATION.scope(population, self.compute_private(&checked, &plan, &seed)).await?;
        out.cost = Some(cost_of(cost, &debit));
        Ok(out)
    }

    /// Holds the data served now for as long as the guard lives: a reload waits for it (see
    /// `swap`), so a request reads one version of the data from its first check to its last
    /// number.
    pub(crate) async fn same_data(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.swap.read().await
    }

    /// A slot among the `running` requests (queries and model rounds alike), waiting in the
    /// (fair) line unless it is full.
    pub(crate) async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Refusal> {
        if let Ok(permit) = self.running.try_acquire() {
            return Ok(permit);
        }
        let waiting = Waiting::join(&self.waiting, self.policy.max_queued_queries).ok_or_else(|| {
            Refusal::from(Exhausted::Busy {
                running: self.policy.max_concurrent_queries,
                waiting: self.policy.max_queued_queries,
            })
        })?;
        let permit = self.running.acquire().await.map_err(Refusal::internal)?;
        drop(waiting);
        Ok(permit)
    }

    /// The query's rows: its dataset, narrowed by its filter and its cohort.
    pub(crate) async fn filtered(&self, q: &CheckedQuery) -> Result<DataFrame, Refusal> {
        let ctx = self.session();
        let cohort = match &q.cohort {
            Some(cohort) => Some(self.cohort_patients(cohort).await?),
            None => None,
        };
        let (mut df, cohort_applied) = match self.indexed_base(q, cohort.as_ref()).await {
            Some(base) => base,
            None => (ctx.table(q.dataset.as_str()).await.map_err(internal)?, false),
        };
        if let Some(f) = &q.filter {
            df = df.filter(filter_expr(f)?).map_err(internal)?;
        }
        let population = POPULATION
            .try_with(Population::clone)
            .map_err(|_| Refusal::internal("rows were read outside a query's population scope"))?;
        df = population.narrow(&ctx, df, &q.patient_key)?;
        if let Some(cohort) = &cohort
            && !cohort_applied
        {
            df = self.join_cohort(df, &q.patient_key, cohort)?;
        }
        self.join_patient_attributes(df, q).await
    }

    pub(crate) fn session(&self) -> datafusion::prelude::SessionContext {
        self.data().ctx.clone()
    }

    pub(crate) fn populations(&self) -> &PopulationCache {
        &self.populations
    }

    pub(crate) fn dataset_version(&self, dataset: &str) -> String {
        self.data().version(dataset).to_string()
    }

    /// What identifies the data a query reads, for its noise: the version of its dataset and,
    /// with a cohort, of every dataset the cohort reads (an import into one of them changes
    /// the answer, so it must change the noise too, or two answers could be differenced).
    pub(crate) fn data_version(&self, q: &CheckedQuery, population: &Population) -> String {
        let data = self.data();
        let base = data.version(&q.dataset);
        let mut datasets = q.cohort.as_ref().map(|c| c.datasets()).unwrap_or_default();
        datasets.extend(q.patient_columns().into_iter().map(|(d, _)| d));
        let digest = population.digest();
        if datasets.is_empty() && digest.is_none() {
            return base.to_string();
        }
        let mut parts: Vec<String> = vec![format!("{}={base}", q.dataset)];
        parts.extend(datasets.iter().map(|d| format!("{d}={}", data.version(d))));
        if let Some(digest) = digest {
            parts.push(format!("population={digest}"));
        }
        parts.join("\n")
    }

    /// Refuses, before anything runs, a query that could make this node compute more
    /// numbers than the policy allows: possible groups × (aggregates + histogram bins).
    fn check_cells(&self, q: &CheckedQuery) -> Result<(), Refusal> {
        for g in &q.groupings {
            let (column, levels) = match g {
                CheckedGrouping::Bins { column, spec } => (column, spec.len() as u64 + 1),
                CheckedGrouping::Column { column, .. } => match self.policy.declared_levels(&q.dataset, column) {
                    Some(n) => (column, n as u64 + 1),
                    None => continue,
                },
                CheckedGrouping::Patient { dataset, column, .. } => {
                    match self.policy.declared_levels(dataset, column) {
                        Some(n) => (column, n as u64 + 1),
                        None => continue,
                    }
                }
            };
            if levels > u64::from(self.policy.max_levels) {
                return Err(Exhausted::Levels { column: column.clone(), levels, limit: self.policy.max_levels }.into());
            }
        }
        let max_groups = u64::from(self.policy.max_groups);
        let groups = q
            .groupings
            .iter()
            .map(|g| match g {
                // Every bin and the NULL bin.
                CheckedGrouping::Bins { spec, .. } => spec.len() as u64 + 1,
                CheckedGrouping::Column { .. } | CheckedGrouping::Patient { .. } => max_groups,
            })
            .fold(1u64, u64::saturating_mul)
            .min(max_groups);
        let per_group: u64 = q
            .aggregates
            .iter()
            .map(|a| match a {
                CheckedAggregate::Histogram { spec, .. } => spec.len() as u64,
                _ => 1,
            })
            .sum();
        let cells = groups.saturating_mul(per_group);
        if cells > self.policy.max_cells {
            return Err(Exhausted::Cells { cells, limit: self.policy.max_cells }.into());
        }
        Ok(())
    }

    /// The patient key with empty strings as NULL: a row whose key is either has no patient.
    pub(crate) fn linked_key(&self, q: &CheckedQuery) -> Expr {
        let is_string = self
            .catalogue()
            .datasets
            .iter()
            .find(|d| d.name == q.dataset)
            .and_then(|d| d.columns.iter().find(|c| c.name == q.patient_key))
            .is_some_and(|c| c.r#type() == pb::ColumnType::String);
        if is_string { nullif(ident(&q.patient_key), lit("")) } else { ident(&q.patient_key) }
    }

    /// Distinct patients among the rows where every column of `gates` is set, counted up to
    /// the minimum cell size (which decides release the same way at a fraction of the cost
    /// of an exact count). Rows without a patient key count as a patient each.
    fn patients_up_to(&self, q: &CheckedQuery, gates: &[&str]) -> Expr {
        let k = i64::from(self.policy.min_cell_size.max(1));
        let mut args = vec![ident(&q.patient_key), lit(k)];
        args.extend(gates.iter().map(|c| ident(*c)));
        patients_up_to_udaf().call(args)
    }

    /// The group's distinct patients: exact when the query asks for them (a
    /// `count(DISTINCT <patient key>)` aggregate), else counted up to the minimum cell size.
    /// Either way a row without a patient key counts as a patient of its own.
    fn group_patients(&self, q: &CheckedQuery) -> Expr {
        if q.aggregates.iter().any(|a| matches!(a, CheckedAggregate::CountPatients)) {
            let linked = self.linked_key(q);
            count_distinct(linked.clone()) + (count(lit(1i64)) - count(linked))
        } else {
            self.patients_up_to(q, &[])
        }
    }

    async fn compute(&self, q: &CheckedQuery) -> Result<pb::PartialResult, Refusal> {
        let group_exprs: Vec<Expr> =
            q.groupings.iter().enumerate().map(|(i, g)| grouping_expr(g).alias(group_alias(i))).collect();
        let mut aggr = vec![self.group_patients(q).alias(PATIENTS)];
        // The patients behind each value aggregate, one count per set of columns.
        let mut contributors: Vec<Vec<&str>> = Vec::new();
        let mut contributors_of = vec![None; q.aggregates.len()];
        for (j, a) in q.aggregates.iter().enumerate() {
            let gates: Vec<&str> = match a {
                CheckedAggregate::Count { column }
                | CheckedAggregate::Sum { column, .. }
                | CheckedAggregate::Mean { column, .. }
                | CheckedAggregate::Moments { column, .. } => vec![column.as_str()],
                CheckedAggregate::SumOfProducts { left, right, .. } => vec![left.as_str(), right.as_str()],
                CheckedAggregate::CountRows | CheckedAggregate::CountPatients | CheckedAggregate::Histogram { .. } => {
                    continue;
                }
            };
            let index = contributors.iter().position(|c| *c == gates).unwrap_or_else(|| {
                contributors.push(gates);
                contributors.len() - 1
            });
            contributors_of[j] = Some(index);
        }
        for (i, gates) in contributors.iter().enumerate() {
            aggr.push(self.patients_up_to(q, gates).alias(contributors_alias(i)));
        }
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
        let mut stream = self.execute(df).await?;

        let mut out = verbund_policies::empty_result(&self.policy);
        // Released groups only, in arrival order, with their encoded keys.
        let mut groups: Vec<CandidateGroup> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let ngroups = q.groupings.len();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(internal)?;
            let col = |name: &str| {
                batch.column_by_name(name).ok_or_else(|| Refusal::internal(format!("missing column {name}")))
            };
            let patients = col(PATIENTS)?.as_primitive::<Int64Type>().clone();
            let contributor_cols = (0..contributors.len())
                .map(|i| Ok(col(&contributors_alias(i))?.as_primitive::<Int64Type>().clone()))
                .collect::<Result<Vec<_>, Refusal>>()?;
            let mut moments_cols = HashMap::new();
            for (j, a) in q.aggregates.iter().enumerate() {
                if matches!(a, CheckedAggregate::Moments { .. }) {
                    moments_cols.insert(j, moments_from_array(col(&agg_alias(j, ""))?).map_err(internal)?);
                }
            }
            for row in 0..batch.num_rows() {
                let n_patients = patients.value(row).max(0) as u64;
                // A withheld group costs nothing more: its keys are not even read.
                if !self.policy.releasable(n_patients) {
                    out.withheld_groups += 1;
                    continue;
                }
                if groups.len() >= self.policy.max_groups as usize {
                    return Err(Exhausted::Groups { limit: self.policy.max_groups }.into());
                }
                let keys = group_keys(&batch, ngroups, row)?;
                let mut aggregates = Vec::with_capacity(q.aggregates.len());
                for (j, a) in q.aggregates.iter().enumerate() {
                    let count_of = |name: &str| -> Result<u64, Refusal> {
                        Ok(col(name)?.as_primitive::<Int64Type>().value(row).max(0) as u64)
                    };
                    let state = match a {
                        CheckedAggregate::CountRows | CheckedAggregate::Count { .. } => {
                            State::Count(pb::CountState { count: count_of(&agg_alias(j, ""))? })
                        }
                        CheckedAggregate::CountPatients => State::Count(pb::CountState { count: n_patients }),
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
                            State::Sum(pb::SumState { count: n, sum })
                        }
                        CheckedAggregate::Moments { .. } => {
                            let m: Moments = moments_cols.get(&j).and_then(|v| v.get(row).copied()).unwrap_or_default();
                            // The group's own mean as the shift, never a row's value.
                            let m = m.recentred();
                            State::Moments(pb::MomentsState { count: m.count, shift: m.shift, mean: m.mean, m2: m.m2 })
                        }
                        CheckedAggregate::Histogram { spec, .. } => {
                            aggregates.push(CandidateAggregate::Histogram {
                                counts: vec![0; spec.len()],
                                patients: vec![0; spec.len()],
                            });
                            continue;
                        }
                    };
                    let value = pb::PartialAggregate { state: Some(state) };
                    aggregates.push(match contributors_of[j] {
                        Some(c) => CandidateAggregate::Contributed {
                            value,
                            contributors: contributor_cols[c].value(row).max(0) as u64,
                        },
                        None => CandidateAggregate::Plain(value),
                    });
                }
                index.insert(encode_keys(&keys), groups.len());
                groups.push(CandidateGroup { keys, patients: n_patients, aggregates });
            }
        }

        for (j, a) in q.aggregates.iter().enumerate() {
            if let CheckedAggregate::Histogram { column, spec } = a {
                self.histogram(q, &group_exprs, column, spec, &index, &mut groups, j).await?;
            }
        }
        if self.policy.profile == Profile::KOnly {
            for (j, a) in q.aggregates.iter().enumerate() {
                if let Some(value) = summed_value(a) {
                    self.dominance(q, &group_exprs, value, &index, &mut groups, j).await?;
                }
            }
        }
        for group in groups {
            if let Some(g) = verbund_policies::release_group(&self.policy, group, &mut out) {
                out.groups.push(g);
            }
        }
        Ok(out)
    }

    /// Row counts and distinct patients per bin of one histogram aggregate (`aggregate`),
    /// filled into the released groups; rows of withheld groups are passed over.
    #[allow(clippy::too_many_arguments)]
    async fn histogram(
        &self,
        q: &CheckedQuery,
        group_exprs: &[Expr],
        column: &str,
        spec: &BinSpec,
        released: &HashMap<Vec<u8>, usize>,
        groups: &mut [CandidateGroup],
        aggregate: usize,
    ) -> Result<(), Refusal> {
        if released.is_empty() {
            return Ok(());
        }
        let rows = self.filtered(q).await?;
        let patients = self.patients_up_to(q, &[column]);
        self.per_bin(rows, group_exprs, column, spec, patients, released, |g, bin, rows, patients| {
            if let Some(CandidateAggregate::Histogram { counts, patients: bin_patients }) =
                groups[g].aggregates.get_mut(aggregate)
            {
                counts[bin] = rows.max(0) as u64;
                bin_patients[bin] = patients;
            }
        })
        .await
    }

    /// Counts rows and `patients` per (group, bin) of a histogram over `rows`, and hands each
    /// kept group's figures to `fill(group index, bin, rows, patients)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn per_bin(
        &self,
        rows: DataFrame,
        group_exprs: &[Expr],
        column: &str,
        spec: &BinSpec,
        patients: Expr,
        kept: &HashMap<Vec<u8>, usize>,
        mut fill: impl FnMut(usize, usize, i64, u64),
    ) -> Result<(), Refusal> {
        let mut grouping = group_exprs.to_vec();
        grouping.push(bin_expr(column, spec).alias("__bin"));
        let aggr = vec![count(ident(column)).alias("__rows"), patients.alias(PATIENTS)];
        let df = rows.aggregate(grouping, aggr).map_err(internal)?;
        let mut stream = self.execute(df).await?;
        let edge_index: HashMap<u64, usize> = (0..spec.len()).map(|i| (spec.lower_edge(i).to_bits(), i)).collect();
        let ngroups = group_exprs.len();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(internal)?;
            let bins = batch.column(ngroups).as_primitive::<Float64Type>();
            let rows = batch.column(ngroups + 1).as_primitive::<Int64Type>();
            let patients = batch.column(ngroups + 2).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                if bins.is_null(row) {
                    continue;
                }
                let Some(&bin) = edge_index.get(&bins.value(row).to_bits()) else {
                    return Err(Refusal::internal("histogram bin key does not match its bins"));
                };
                let Some(&g) = kept.get(&encode_keys(&group_keys(&batch, ngroups, row)?)) else { continue };
                fill(g, bin, rows.value(row), patients.value(row).max(0) as u64);
            }
        }
        Ok(())
    }

    /// The dominance rule with exact numbers (profile k-only): a sum, mean or cross-product
    /// is withheld where one patient makes up more than `dominance_share` of the sum of its
    /// patients' absolute contributions. Rows without a patient key count as one patient
    /// together, which can only withhold more.
    #[allow(clippy::too_many_arguments)]
    async fn dominance(
        &self,
        q: &CheckedQuery,
        group_exprs: &[Expr],
        value: Expr,
        released: &HashMap<Vec<u8>, usize>,
        groups: &mut [CandidateGroup],
        aggregate: usize,
    ) -> Result<(), Refusal> {
        if released.is_empty() {
            return Ok(());
        }
        let ngroups = group_exprs.len();
        let mut per_patient = group_exprs.to_vec();
        per_patient.push(self.linked_key(q).alias("__patient"));
        let aliases: Vec<Expr> = (0..ngroups).map(|i| datafusion::prelude::col(group_alias(i))).collect();
        let df = self
            .filtered(q)
            .await?
            .aggregate(per_patient, vec![sum(abs(value)).alias("__contribution")])
            .and_then(|df| {
                df.aggregate(
                    aliases,
                    vec![
                        max(datafusion::prelude::col("__contribution")).alias("__largest"),
                        sum(datafusion::prelude::col("__contribution")).alias("__total"),
                    ],
                )
            })
            .map_err(internal)?;
        let mut stream = self.execute(df).await?;
        let share = self.policy.dp.dominance_share;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(internal)?;
            let largest = batch.column(ngroups).as_primitive::<Float64Type>();
            let total = batch.column(ngroups + 1).as_primitive::<Float64Type>();
            for row in 0..batch.num_rows() {
                if largest.is_null(row) || largest.value(row) <= share * total.value(row) {
                    continue;
                }
                let Some(&g) = released.get(&encode_keys(&group_keys(&batch, ngroups, row)?)) else { continue };
                if let Some(CandidateAggregate::Contributed { contributors, .. }) =
                    groups[g].aggregates.get_mut(aggregate)
                {
                    // Withheld like a value with too few contributors: nothing else tells them apart.
                    *contributors = 0;
                }
            }
        }
        Ok(())
    }

    /// Runs a plan under this query's own memory limit: a query that needs more is refused
    /// as too large, without touching what other queries use.
    pub(crate) async fn execute(&self, df: DataFrame) -> Result<SendableRecordBatchStream, Refusal> {
        let base = self.session().runtime_env();
        let limit = (self.policy.max_query_memory_mb as usize).saturating_mul(1024 * 1024);
        let runtime = Arc::new(RuntimeEnv {
            memory_pool: Arc::new(GreedyMemoryPool::new(limit)),
            disk_manager: base.disk_manager.clone(),
            cache_manager: base.cache_manager.clone(),
            object_store_registry: base.object_store_registry.clone(),
        });
        let task = Arc::new(df.task_ctx().with_runtime(runtime));
        let plan = df.create_physical_plan().await.map_err(internal)?;
        execute_stream(plan, task).map_err(internal)
    }
}

/// The group key of one result row: its first `ngroups` columns as wire literals.
pub(crate) fn group_keys(batch: &RecordBatch, ngroups: usize, row: usize) -> Result<Vec<pb::Literal>, Refusal> {
    (0..ngroups)
        .map(|g| {
            let v = ScalarValue::try_from_array(batch.column(g), row).map_err(internal)?;
            scalar_to_literal(&v).map_err(Refusal::internal)
        })
        .collect()
}

pub(crate) fn encode_keys(keys: &[pb::Literal]) -> Vec<u8> {
    pb::GroupPartial { keys: keys.to_vec(), aggregates: vec![] }.encode_to_vec()
}

/// The per-row value a sum-type aggregate adds up, for the dominance rule.
fn summed_value(a: &CheckedAggregate) -> Option<Expr> {
    match a {
        CheckedAggregate::Sum { column, .. } | CheckedAggregate::Mean { column, .. } => {
            Some(cast(ident(column), DataType::Float64))
        }
        CheckedAggregate::SumOfProducts { left, right, .. } => {
            Some(cast(ident(left), DataType::Float64) * cast(ident(right), DataType::Float64))
        }
        _ => None,
    }
}

pub(crate) fn bin_expr(column: &str, spec: &BinSpec) -> Expr {
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

pub(crate) fn grouping_expr(g: &CheckedGrouping) -> Expr {
    match g {
        CheckedGrouping::Column { column, .. } => ident(column),
        CheckedGrouping::Patient { alias, .. } => ident(alias),
        CheckedGrouping::Bins { column, spec } => bin_expr(column, spec),
    }
}

pub(crate) fn filter_expr(f: &CheckedFilter) -> Result<Expr, Refusal> {
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
                    return Err(InvalidRequest::from(Missing::Operator { column: column.clone() }).into());
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
            let exprs = ops.iter().map(filter_expr).collect::<Result<Vec<_>, _>>()?;
            balanced(exprs, &|a, b| if is_and { a.and(b) } else { a.or(b) })
                .ok_or_else(|| InvalidRequest::from(Missing::Operands))?
        }
        CheckedFilter::Not(inner) => Expr::Not(Box::new(filter_expr(inner)?)),
    })
}

/// Combines operands pairwise into a balanced tree: 1000 ORs nest 10 deep instead of 1000,
/// so no later pass over the expression recurses deeply.
pub(crate) fn balanced(mut exprs: Vec<Expr>, combine: &dyn Fn(Expr, Expr) -> Expr) -> Option<Expr> {
    while exprs.len() > 1 {
        let mut next = Vec::with_capacity(exprs.len().div_ceil(2));
        let mut it = exprs.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => combine(a, b),
                None => a,
            });
        }
        exprs = next;
    }
    exprs.pop()
}
