//! Compiles a checked cohort into DataFusion plans over the clinical datasets: each criterion
//! is a scan of its dataset narrowed by semi joins (codes through `codings`, linked rows
//! through their reference column) and filters (values, units, time overlap), projected to
//! the patients it matches. The cohort then narrows a query's rows by semi joins (inclusion)
//! and anti joins (exclusion) on the patient key, before any grouping, bounding or
//! aggregate: everything downstream, the privacy checks included, is unchanged.

use crate::criteria::{Bits, Keys, PatientSet, Patients, all_of, any_of, batch_of, resource_types};
use crate::engine::{Engine, balanced, filter_expr, internal};
use crate::refusal::Refusal;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::functions::string::expr_fn::starts_with;
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{DataFrame, col, ident, lit};
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_query::cohort::{CheckedCohort, CheckedCriterion, CodeSet, Condition, QuantityTest, RESOURCE};

/// The patient column of a criterion's patient set.
const PATIENT: &str = "__cohort_patient";
/// The resource column of a set of matching rows (codings, linked targets).
const KEY: &str = "__cohort_key";
/// Criteria of one question computed at once.
const CONCURRENT_CRITERIA: usize = 4;

type Rows<'a> = Pin<Box<dyn Future<Output = Result<DataFrame, Refusal>> + Send + 'a>>;
type Sets<'a> = Pin<Box<dyn Future<Output = Result<PatientSet, Refusal>> + Send + 'a>>;

impl Engine {
    /// The cohort's patients, worked out from its criteria's sets: as patient ordinals when
    /// the criteria index gave every set, else as keys.
    pub(crate) async fn cohort_patients(&self, cohort: &CheckedCohort) -> Result<CohortPatients, Refusal> {
        let inclusion = self.patient_sets(&cohort.inclusion);
        let exclusion = self.patient_sets(&cohort.exclusion);
        let (inclusion, exclusion) = futures::try_join!(inclusion, exclusion)?;
        let bits = |groups: &[Vec<PatientSet>]| -> Option<Vec<Vec<Bits>>> {
            let bits = |s: &PatientSet| match &**s {
                Patients::Bits(b) => Some(b.clone()),
                Patients::Keys(_) => None,
            };
            groups.iter().map(|g| g.iter().map(bits).collect()).collect()
        };
        if let (Some(inclusion), Some(exclusion)) = (bits(&inclusion), bits(&exclusion)) {
            return Ok(combine_bits(inclusion, exclusion));
        }
        // Some criterion went the DataFusion route: everything as keys.
        let ordinals = self.data().index.ordinals_built();
        let as_keys = |groups: &[Vec<PatientSet>]| -> Result<Vec<Vec<Vec<RecordBatch>>>, Refusal> {
            let keys = |s: &PatientSet| match &**s {
                Patients::Keys(batches) => Ok(batches.clone()),
                Patients::Bits(bits) => ordinals
                    .as_ref()
                    .and_then(|o| o.batch(bits, PATIENT))
                    .map(|b| vec![b])
                    .ok_or_else(|| Refusal::internal("a criterion's patient ordinals without their dictionary")),
            };
            groups.iter().map(|g| g.iter().map(keys).collect()).collect()
        };
        let (inclusion, exclusion) = (as_keys(&inclusion)?, as_keys(&exclusion)?);
        let (inclusion, exclusion) = (slices(&inclusion), slices(&exclusion));
        let excluded: Keys<'_> = exclusion.iter().flat_map(|group| all_of(group)).collect();
        let mut groups = inclusion.iter().map(|group| any_of(group));
        let (patients, join) = match groups.next() {
            // Only exclusions: everyone but the excluded.
            None => (excluded, JoinType::LeftAnti),
            Some(mut included) => {
                for group in groups {
                    included.retain(|k| group.contains(k));
                }
                included.retain(|k| !excluded.contains(k));
                (included, JoinType::LeftSemi)
            }
        };
        let batch = batch_of(&patients, PATIENT).ok_or_else(|| Refusal::internal("a cohort's patients as a batch"))?;
        Ok(CohortPatients { patients: Patients::Keys(vec![batch]), join })
    }

    /// Keeps the rows of `df` whose patient (`patient_key`) is in the cohort, by one join.
    pub(crate) fn join_cohort(
        &self,
        df: DataFrame,
        patient_key: &str,
        cohort: &CohortPatients,
    ) -> Result<DataFrame, Refusal> {
        let key = as_text(&df, patient_key);
        let batch = match &cohort.patients {
            Patients::Keys(batches) => batches.first().cloned(),
            Patients::Bits(bits) => self.data().index.ordinals_built().and_then(|o| o.batch(bits, PATIENT)),
        }
        .ok_or_else(|| Refusal::internal("a cohort's patients as a batch"))?;
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(internal)?;
        let patients = self.session().read_table(Arc::new(table)).map_err(internal)?;
        df.join_on(patients, cohort.join, [key.eq(col(PATIENT))]).map_err(internal)
    }

    /// The patient sets of every criterion of `groups`, by group, computed a few at a time
    /// (a cold question's criteria are independent; two cores serve two at once).
    async fn patient_sets(&self, groups: &[Vec<CheckedCriterion>]) -> Result<Vec<Vec<PatientSet>>, Refusal> {
        // Boxed first: a stream of borrowing futures straight from an iterator adapter is not
        // provably `Send` to the compiler.
        let mut pending: Vec<Sets<'_>> = Vec::new();
        for c in groups.iter().flatten() {
            pending.push(Box::pin(self.patients(c)));
        }
        let all: Vec<PatientSet> = futures::stream::iter(pending).buffered(CONCURRENT_CRITERIA).try_collect().await?;
        let mut all = all.into_iter();
        Ok(groups.iter().map(|g| all.by_ref().take(g.len()).collect()).collect())
    }

    /// The patients (as text) with a row matching the criterion, each once: from the
    /// criterion cache when this data answered it before, else from the criteria index, else
    /// by DataFusion plans.
    async fn patients(&self, c: &CheckedCriterion) -> Result<PatientSet, Refusal> {
        let key = format!("{c:?}");
        if let Some(set) = self.criteria.get(&key) {
            return Ok(set);
        }
        let patients = match self.indexed_patients(c).await {
            Some(bits) => bits,
            None => Patients::Keys(self.scanned_patients(c).await?),
        };
        Ok(self.criteria.insert(key, patients))
    }

    /// The criterion's patients by DataFusion plans over the datasets.
    async fn scanned_patients(&self, c: &CheckedCriterion) -> Result<Vec<RecordBatch>, Refusal> {
        let set = match self.coded_only(c).await? {
            Some(set) => set,
            None => {
                let rows = self.matching_rows(c).await?;
                let patient = as_text(&rows, &c.patient_key);
                rows.filter(patient.clone().is_not_null())
                    .and_then(|df| df.select(vec![patient.alias(PATIENT)]))
                    .map_err(internal)?
            }
        };
        let batches = set.distinct().map_err(internal)?.collect().await.map_err(internal)?;
        // As text (`as_text` makes Utf8; a cast keeps that true whatever DataFusion returns).
        batches
            .into_iter()
            .map(|b| {
                let keys = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
                RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new(PATIENT, DataType::Utf8, true)])), vec![keys])
            })
            .collect::<Result<_, _>>()
            .map_err(|e| internal(e.into()))
    }

    /// A criterion that only matches codes, on a dataset imported from FHIR: its patients
    /// straight from `codings` (see `crate::criteria`).
    async fn coded_only(&self, c: &CheckedCriterion) -> Result<Option<DataFrame>, Refusal> {
        let ([Condition::Codes(set)], None) = (c.conditions.as_slice(), &c.fixed) else { return Ok(None) };
        let data = self.data();
        let datasets = &data.catalogue().datasets;
        let model = datasets.iter().find(|d| d.name == c.dataset).map(|d| d.model.as_str()).unwrap_or_default();
        let Some(types) = resource_types(model) else { return Ok(None) };
        let Some(codings_key) = datasets.iter().find(|d| d.name == set.codings).map(|d| d.patient_key.clone()) else {
            return Ok(None);
        };
        let codings = self.session().table(set.codings.as_str()).await.map_err(internal)?;
        let of_type =
            balanced(types.iter().map(|t| starts_with(ident(RESOURCE), lit(format!("{t}/")))).collect(), &|a, b| {
                a.or(b)
            })
            .unwrap_or_else(|| lit(false));
        let patient = as_text(&codings, &codings_key);
        let matching = codings
            .filter(code_match(set).and(of_type).and(patient.clone().is_not_null()))
            .and_then(|df| df.select(vec![patient.alias(PATIENT)]))
            .map_err(internal)?;
        Ok(Some(matching))
    }

    /// The rows of the criterion's dataset that meet every one of its conditions.
    fn matching_rows<'a>(&'a self, c: &'a CheckedCriterion) -> Rows<'a> {
        Box::pin(async move {
            let mut df = self.session().table(c.dataset.as_str()).await.map_err(internal)?;
            if let Some(f) = &c.fixed {
                df = df.filter(filter_expr(f)?).map_err(internal)?;
            }
            for condition in &c.conditions {
                df = match condition {
                    Condition::Codes(set) => {
                        let coded = self.coded(set).await?;
                        df.join_on(coded, JoinType::LeftSemi, [ident(RESOURCE).eq(col(KEY))])
                    }
                    Condition::Quantity { column, unit, test } => df.filter(quantity(column, unit, test)),
                    Condition::Time { start, end, after, before } => df.filter(overlaps(start, end, *after, *before)),
                    Condition::Linked { via, criteria } => {
                        let targets = self.linked_targets(criteria).await?;
                        let patient = as_text(&df, &c.patient_key);
                        df.join_on(targets, JoinType::LeftSemi, [ident(via).eq(col(KEY)), patient.eq(col(PATIENT))])
                    }
                }
                .map_err(internal)?;
            }
            Ok(df)
        })
    }

    /// Rows matching one of the linked criteria, as (resource, patient).
    async fn linked_targets(&self, criteria: &[CheckedCriterion]) -> Result<DataFrame, Refusal> {
        let mut out: Option<DataFrame> = None;
        for t in criteria {
            let rows = self.matching_rows(t).await?;
            let patient = as_text(&rows, &t.patient_key);
            let rows = rows.select(vec![ident(RESOURCE).alias(KEY), patient.alias(PATIENT)]).map_err(internal)?;
            out = Some(match out {
                Some(df) => df.union(rows).map_err(internal)?,
                None => rows,
            });
        }
        out.ok_or_else(|| Refusal::internal("a checked linked criterion is empty"))
    }

    /// The resources with a coding of `set.element` in the set, in column `KEY`.
    async fn coded(&self, set: &CodeSet) -> Result<DataFrame, Refusal> {
        let codings = self.session().table(set.codings.as_str()).await.map_err(internal)?;
        codings.filter(code_match(set)).and_then(|df| df.select(vec![ident(RESOURCE).alias(KEY)])).map_err(internal)
    }
}

/// A `codings` row of `set.element` with one of the set's codes. A prefix is also written
/// as a range of codes, which the Parquet reader can prune row groups and pages with.
fn code_match(set: &CodeSet) -> Expr {
    let (system, code) = (ident("system"), ident("code"));
    let mut alternatives: Vec<Expr> = set
        .codes
        .iter()
        .map(|(s, codes)| {
            let matches = match codes.len() {
                1 => code.clone().eq(lit(codes.iter().next().cloned().unwrap_or_default())),
                _ => code.clone().in_list(codes.iter().map(|c| lit(c.clone())).collect(), false),
            };
            system.clone().eq(lit(s.clone())).and(matches)
        })
        .collect();
    alternatives.extend(set.prefixes.iter().map(|(s, p)| {
        let mut prefix = system.clone().eq(lit(s.clone())).and(starts_with(code.clone(), lit(p.clone())));
        if let Some(next) = successor(p) {
            prefix = prefix.and(code.clone().gt_eq(lit(p.clone()))).and(code.clone().lt(lit(next)));
        }
        prefix
    }));
    let any = balanced(alternatives, &|a, b| a.or(b)).unwrap_or_else(|| lit(false));
    ident("element").eq(lit(set.element.clone())).and(any)
}

/// The least string above every string that starts with `prefix` (in byte order), if the
/// prefix's last character can be incremented within ASCII.
fn successor(prefix: &str) -> Option<String> {
    let last = *prefix.as_bytes().last()?;
    if !last.is_ascii() || last == 0x7f {
        return None;
    }
    let mut next = prefix[..prefix.len() - 1].to_string();
    next.push(char::from(last + 1));
    Some(next)
}

/// A cohort's patients, and how a query's rows are narrowed by them: a semi join (those
/// patients) or, for a cohort of exclusions only, an anti join (everyone but them).
pub(crate) struct CohortPatients {
    pub(crate) patients: Patients,
    pub(crate) join: JoinType,
}

fn slices(groups: &[Vec<Vec<RecordBatch>>]) -> Vec<Vec<&[RecordBatch]>> {
    groups.iter().map(|sets| sets.iter().map(Vec::as_slice).collect()).collect()
}

/// Inclusion: in some set of every group; exclusion: in every set of some group.
fn combine_bits(inclusion: Vec<Vec<Bits>>, exclusion: Vec<Vec<Bits>>) -> CohortPatients {
    let and_all = |sets: Vec<Bits>| {
        sets.into_iter().reduce(|mut a, b| {
            a.and(&b);
            a
        })
    };
    let or_all = |sets: Vec<Bits>| {
        sets.into_iter().reduce(|mut a, b| {
            a.or(&b);
            a
        })
    };
    let excluded = or_all(exclusion.into_iter().filter_map(and_all).collect());
    match and_all(inclusion.into_iter().filter_map(or_all).collect()) {
        Some(mut included) => {
            if let Some(excluded) = &excluded {
                included.and_not(excluded);
            }
            CohortPatients { patients: Patients::Bits(included), join: JoinType::LeftSemi }
        }
        None => CohortPatients {
            patients: Patients::Bits(excluded.unwrap_or_else(|| Bits::empty(0))),
            join: JoinType::LeftAnti,
        },
    }
}

/// The patient key as text, so that keys of any type join across datasets.
pub(crate) fn as_text(df: &DataFrame, patient_key: &str) -> Expr {
    match df.schema().field_with_unqualified_name(patient_key).map(|f| f.data_type().clone()) {
        Ok(DataType::Utf8) => ident(patient_key),
        _ => cast(ident(patient_key), DataType::Utf8),
    }
}

pub(crate) fn quantity(column: &str, unit: &Option<(String, String)>, test: &QuantityTest) -> Expr {
    let value = cast(ident(column), DataType::Float64);
    let tested = match test {
        QuantityTest::Compare(op, v) => {
            let v = lit(*v);
            match op {
                pb::CompareOp::Eq => value.eq(v),
                pb::CompareOp::Ne => value.not_eq(v),
                pb::CompareOp::Lt => value.lt(v),
                pb::CompareOp::Le => value.lt_eq(v),
                pb::CompareOp::Gt => value.gt(v),
                pb::CompareOp::Ge => value.gt_eq(v),
                // The check refused it; match nothing rather than everything.
                pb::CompareOp::Unspecified => lit(false),
            }
        }
        QuantityTest::Range(min, max) => value.between(lit(*min), lit(*max)),
    };
    match unit {
        Some((unit_column, unit)) => tested.and(ident(unit_column).eq(lit(unit.clone()))),
        None => tested,
    }
}

/// [start, end] overlaps [after, before]: start ≤ before and (end open or end ≥ after). A row
/// without a start has no time and never matches.
pub(crate) fn overlaps(start: &str, end: &str, after: Option<i32>, before: Option<i32>) -> Expr {
    let day = |d: i32| lit(ScalarValue::Date32(Some(d)));
    let mut e = ident(start).is_not_null();
    if let Some(b) = before {
        e = e.and(ident(start).lt_eq(day(b)));
    }
    if let Some(a) = after {
        e = e.and(ident(end).is_null().or(ident(end).gt_eq(day(a))));
    }
    e
}
