//! Checks a typed aggregate request completely against a dataset's catalogue entry: every
//! column exposed and of the right type, every literal comparable, every bin well formed,
//! every limit respected. Nodes run it before planning (they trust no one); the coordinator
//! runs it too, to give the researcher an early, precise error.

use crate::literal::{is_numeric, literal_for_column, type_name};
use crate::{BinSpec, Error};
use datafusion::scalar::ScalarValue;
use std::collections::HashMap;
use verbund_proto::v1 as pb;

pub const MAX_FILTER_NODES: usize = 1000;
pub const MAX_FILTER_DEPTH: usize = 32;
pub const MAX_IN_LIST: usize = 1000;
/// Constants in one filter, the values of every IN list included.
pub const MAX_FILTER_LITERALS: usize = 4096;
pub const MAX_GROUPINGS: usize = 8;
pub const MAX_AGGREGATES: usize = 32;

/// What is wrong with a request. Messages name columns, types and limits from the request
/// and catalogue, never data values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("unknown dataset '{dataset}'; available: {}", available.join(", "))]
    UnknownDataset { dataset: String, available: Vec<String> },
    #[error("unknown column '{column}' in dataset '{dataset}'; its columns are: {}", known.join(", "))]
    UnknownColumn { column: String, dataset: String, known: Vec<String> },
    /// The patient key would single out patients anywhere but in count(DISTINCT key).
    #[error("the patient key '{column}' cannot be used in {role}; it is only available as count(DISTINCT {column})")]
    PatientKeyAsValue { column: String, role: &'static str },
    #[error("{role} needs a numeric column, but '{column}' is a {column_type} column")]
    NotNumeric { column: String, role: &'static str, column_type: &'static str },
    #[error(
        "count(DISTINCT {column}) is not supported: distinct values cannot be merged across sites; \
         only the patient key '{patient_key}' can be counted distinctly"
    )]
    DistinctNotMergeable { column: String, patient_key: String },
    #[error("boolean column '{column}' can only be compared with = or !=")]
    BooleanOrdering { column: String },
    #[error("histogram() bins must be over the histogram's own column")]
    HistogramOverOtherColumn,
    #[error("unknown aggregate kind {0}")]
    UnknownAggregateKind(i32),
    /// A part the request must have is missing.
    #[error("{0}")]
    Missing(Missing),
    /// The request is larger than a node accepts.
    #[error("{0}")]
    TooLarge(Limit),
    #[error("column '{column}': {error}")]
    Literal { column: String, error: Error },
    #[error("{0}")]
    Bins(Error),
    /// A problem inside a cohort, and where: `inclusion[1][0].attributes[0]`.
    #[error("cohort {at}: {error}")]
    Cohort { at: String, error: Box<InvalidRequest> },
    #[error("grouping by a patient attribute needs patient-level data: {0}")]
    PatientAttribute(String),
    #[error("{0}")]
    CohortProblem(crate::cohort::CohortProblem),
}

/// A part of a request that is missing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Missing {
    #[error("a grouping names neither a column, bins nor a patient attribute")]
    GroupingKind,
    #[error("a query needs at least one aggregate, e.g. count(*)")]
    Aggregates,
    #[error("an aggregate has no kind")]
    AggregateKind,
    #[error("histogram() needs bins")]
    HistogramBins,
    #[error("a condition on '{column}' has no value")]
    Value { column: String },
    #[error("comparison on '{column}' has no valid operator")]
    Operator { column: String },
    #[error("AND / OR need at least one operand")]
    Operands,
    #[error("a filter condition is empty")]
    Condition,
    #[error("the request carries no query")]
    Query,
}

/// A limit on the size of a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Limit {
    #[error("at most {MAX_GROUPINGS} groupings are allowed, got {0}")]
    Groupings(usize),
    #[error("at most {MAX_AGGREGATES} aggregates are allowed, got {0}")]
    Aggregates(usize),
    #[error("the filter is nested deeper than {MAX_FILTER_DEPTH} levels")]
    FilterDepth,
    #[error("the filter has more than {MAX_FILTER_NODES} conditions")]
    FilterConditions,
    #[error("the filter has more than {MAX_FILTER_LITERALS} constants (IN lists included)")]
    FilterConstants,
    #[error("IN lists need between 1 and {MAX_IN_LIST} values, got {0}")]
    InList(usize),
    #[error("a cohort has at most {max} criterion groups, got {0}", max = crate::cohort::MAX_COHORT_GROUPS)]
    CohortGroups(usize),
    #[error("a cohort has at most {max} criteria, linked ones included", max = crate::cohort::MAX_COHORT_CRITERIA)]
    CohortCriteria(usize),
    #[error("a cohort has at most {max} codes and prefixes (after hierarchy expansion)", max = crate::cohort::MAX_COHORT_CODES)]
    CohortCodes(usize),
}

impl From<Missing> for InvalidRequest {
    fn from(m: Missing) -> Self {
        InvalidRequest::Missing(m)
    }
}

impl From<Limit> for InvalidRequest {
    fn from(l: Limit) -> Self {
        InvalidRequest::TooLarge(l)
    }
}

/// A filter with columns resolved and literals converted to the column's scalar type.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckedFilter {
    Compare { column: String, op: pb::CompareOp, value: ScalarValue },
    InList { column: String, values: Vec<ScalarValue>, negated: bool },
    Between { column: String, low: ScalarValue, high: ScalarValue, negated: bool },
    IsNull { column: String, negated: bool },
    And(Vec<CheckedFilter>),
    Or(Vec<CheckedFilter>),
    Not(Box<CheckedFilter>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckedGrouping {
    Column {
        column: String,
        column_type: pb::ColumnType,
    },
    Bins {
        column: String,
        spec: BinSpec,
    },
    /// A column of a patient-level dataset, joined on the patient key; `alias` names it in
    /// the joined rows.
    Patient {
        dataset: String,
        key: String,
        column: String,
        column_type: pb::ColumnType,
        alias: String,
    },
}

impl CheckedGrouping {
    /// The name of the grouped column in the query's rows.
    pub fn column(&self) -> &str {
        match self {
            CheckedGrouping::Column { column, .. } | CheckedGrouping::Bins { column, .. } => column,
            CheckedGrouping::Patient { alias, .. } => alias,
        }
    }
}

/// The name of a patient attribute in the query's rows (it cannot collide with a dataset's
/// own column, whose names come from files and never start with `__`).
pub fn patient_attribute_alias(dataset: &str, column: &str) -> String {
    format!("__patient.{dataset}.{column}")
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckedAggregate {
    CountRows,
    CountPatients,
    Count {
        column: String,
    },
    Sum {
        column: String,
        column_type: pb::ColumnType,
    },
    Mean {
        column: String,
        column_type: pb::ColumnType,
    },
    /// Variance and standard deviation, sample or population: all from the same moments.
    Moments {
        column: String,
        kind: pb::AggregateKind,
    },
    Histogram {
        column: String,
        spec: BinSpec,
    },
    /// sum(left * right); integer when both columns are, else floating point.
    SumOfProducts {
        left: String,
        right: String,
        integer: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckedQuery {
    pub dataset: String,
    pub patient_key: String,
    pub filter: Option<CheckedFilter>,
    pub groupings: Vec<CheckedGrouping>,
    pub aggregates: Vec<CheckedAggregate>,
    /// Only rows of the cohort's patients count.
    pub cohort: Option<crate::cohort::CheckedCohort>,
}

impl CheckedFilter {
    /// Adds every column the filter reads to `out`.
    pub fn columns<'a>(&'a self, out: &mut std::collections::BTreeSet<&'a str>) {
        match self {
            CheckedFilter::Compare { column, .. }
            | CheckedFilter::InList { column, .. }
            | CheckedFilter::Between { column, .. }
            | CheckedFilter::IsNull { column, .. } => {
                out.insert(column);
            }
            CheckedFilter::And(ops) | CheckedFilter::Or(ops) => ops.iter().for_each(|o| o.columns(out)),
            CheckedFilter::Not(inner) => inner.columns(out),
        }
    }
}

impl CheckedQuery {
    /// Every column the query reads, besides the patient key (which every query reads to
    /// count patients for the minimum cell size, and which is never released).
    pub fn columns(&self) -> Vec<&str> {
        let mut out = std::collections::BTreeSet::new();
        if let Some(f) = &self.filter {
            f.columns(&mut out);
        }
        for g in &self.groupings {
            match g {
                CheckedGrouping::Column { column, .. } | CheckedGrouping::Bins { column, .. } => out.insert(column),
                // Read from another dataset, see `patient_columns`.
                CheckedGrouping::Patient { .. } => false,
            };
        }
        for a in &self.aggregates {
            match a {
                CheckedAggregate::CountRows | CheckedAggregate::CountPatients => {}
                CheckedAggregate::Count { column }
                | CheckedAggregate::Sum { column, .. }
                | CheckedAggregate::Mean { column, .. }
                | CheckedAggregate::Moments { column, .. }
                | CheckedAggregate::Histogram { column, .. } => {
                    out.insert(column);
                }
                CheckedAggregate::SumOfProducts { left, right, .. } => {
                    out.insert(left);
                    out.insert(right);
                }
            }
        }
        out.into_iter().collect()
    }

    /// The patient attributes the query groups by, as (dataset, column).
    pub fn patient_columns(&self) -> Vec<(&str, &str)> {
        self.groupings
            .iter()
            .filter_map(|g| match g {
                CheckedGrouping::Patient { dataset, column, .. } => Some((dataset.as_str(), column.as_str())),
                _ => None,
            })
            .collect()
    }
}

pub(crate) struct Columns<'a> {
    pub(crate) dataset: &'a pb::DatasetInfo,
    types: HashMap<&'a str, pb::ColumnType>,
}

impl<'a> Columns<'a> {
    pub(crate) fn new(dataset: &'a pb::DatasetInfo) -> Self {
        let types = dataset.columns.iter().map(|c| (c.name.as_str(), c.r#type())).collect();
        Self { dataset, types }
    }

    /// A column usable in filters, groupings and value aggregates: exposed, and not the
    /// patient key (which would single out patients).
    pub(crate) fn value_column(&self, name: &str, role: &'static str) -> Result<pb::ColumnType, InvalidRequest> {
        if name == self.dataset.patient_key {
            return Err(InvalidRequest::PatientKeyAsValue { column: name.into(), role });
        }
        match self.types.get(name) {
            Some(t) => Ok(*t),
            None => {
                let mut known: Vec<String> =
                    self.types.keys().filter(|c| **c != self.dataset.patient_key).map(|c| c.to_string()).collect();
                known.sort_unstable();
                Err(InvalidRequest::UnknownColumn { column: name.into(), dataset: self.dataset.name.clone(), known })
            }
        }
    }

    pub(crate) fn numeric_column(&self, name: &str, role: &'static str) -> Result<pb::ColumnType, InvalidRequest> {
        let t = self.value_column(name, role)?;
        if !is_numeric(t) {
            return Err(InvalidRequest::NotNumeric { column: name.into(), role, column_type: type_name(t) });
        }
        Ok(t)
    }
}

/// Checks `query` against the catalogue of the site that is to answer it.
pub fn check(query: &pb::AggregateQuery, catalogue: &pb::Catalogue) -> Result<CheckedQuery, InvalidRequest> {
    let Some(dataset) = catalogue.datasets.iter().find(|d| d.name == query.dataset) else {
        let available = catalogue.datasets.iter().map(|d| d.name.clone()).collect();
        return Err(InvalidRequest::UnknownDataset { dataset: query.dataset.clone(), available });
    };
    let columns = Columns::new(dataset);

    let filter = match &query.filter {
        Some(f) => {
            let mut budget = Budget { nodes: MAX_FILTER_NODES, literals: MAX_FILTER_LITERALS };
            Some(check_filter(f, &columns, 0, &mut budget)?)
        }
        None => None,
    };

    if query.group_by.len() > MAX_GROUPINGS {
        return Err(Limit::Groupings(query.group_by.len()).into());
    }
    let groupings = query
        .group_by
        .iter()
        .map(|g| match &g.kind {
            Some(pb::grouping::Kind::Column(c)) => {
                Ok(CheckedGrouping::Column { column: c.clone(), column_type: columns.value_column(c, "GROUP BY")? })
            }
            Some(pb::grouping::Kind::Bins(b)) => {
                columns.numeric_column(&b.column, "binning")?;
                let spec = BinSpec::from_proto(b).map_err(InvalidRequest::Bins)?;
                Ok(CheckedGrouping::Bins { column: b.column.clone(), spec })
            }
            Some(pb::grouping::Kind::PatientAttribute(a)) => check_patient_attribute(a, dataset, catalogue),
            None => Err(Missing::GroupingKind.into()),
        })
        .collect::<Result<Vec<_>, InvalidRequest>>()?;

    if query.aggregates.is_empty() {
        return Err(Missing::Aggregates.into());
    }
    if query.aggregates.len() > MAX_AGGREGATES {
        return Err(Limit::Aggregates(query.aggregates.len()).into());
    }
    let aggregates = query.aggregates.iter().map(|a| check_aggregate(a, &columns)).collect::<Result<Vec<_>, _>>()?;
    let cohort = match &query.cohort {
        Some(c) => {
            if dataset.patient_key.is_empty() {
                return Err(crate::cohort::CohortProblem::NotClinical(dataset.name.clone()).into());
            }
            Some(crate::cohort::check_cohort(c, catalogue)?)
        }
        None => None,
    };

    Ok(CheckedQuery {
        dataset: dataset.name.clone(),
        patient_key: dataset.patient_key.clone(),
        filter,
        groupings,
        aggregates,
        cohort,
    })
}

/// A patient attribute: a value column of a dataset with a patient key, for a query over a
/// dataset with one.
fn check_patient_attribute(
    a: &pb::PatientAttribute,
    base: &pb::DatasetInfo,
    catalogue: &pb::Catalogue,
) -> Result<CheckedGrouping, InvalidRequest> {
    if base.patient_key.is_empty() {
        return Err(InvalidRequest::PatientAttribute(format!(
            "dataset '{}' has no patient key, so its rows cannot be linked to patients",
            base.name
        )));
    }
    let Some(dataset) = crate::cohort::find_dataset(catalogue, &a.dataset) else {
        let available = catalogue.datasets.iter().map(|d| d.name.clone()).collect();
        return Err(InvalidRequest::UnknownDataset { dataset: a.dataset.clone(), available });
    };
    if dataset.patient_key.is_empty() {
        return Err(InvalidRequest::PatientAttribute(format!(
            "dataset '{}' has no patient key; patient attributes come from a dataset such as fhir/patients",
            dataset.name
        )));
    }
    let column_type = Columns::new(dataset).value_column(&a.column, "GROUP BY")?;
    Ok(CheckedGrouping::Patient {
        dataset: dataset.name.clone(),
        key: dataset.patient_key.clone(),
        column: a.column.clone(),
        column_type,
        alias: patient_attribute_alias(&dataset.name, &a.column),
    })
}

fn check_aggregate(a: &pb::Aggregate, columns: &Columns) -> Result<CheckedAggregate, InvalidRequest> {
    use pb::AggregateKind as K;
    let kind = K::try_from(a.kind).map_err(|_| InvalidRequest::UnknownAggregateKind(a.kind))?;
    Ok(match kind {
        K::CountRows => CheckedAggregate::CountRows,
        K::CountPatients => {
            // An empty column means "the patient key"; any other column cannot be counted
            // distinctly across sites.
            if !a.column.is_empty() && a.column != columns.dataset.patient_key {
                columns.value_column(&a.column, "count(DISTINCT ...)")?;
                return Err(InvalidRequest::DistinctNotMergeable {
                    column: a.column.clone(),
                    patient_key: columns.dataset.patient_key.clone(),
                });
            }
            CheckedAggregate::CountPatients
        }
        K::Count => {
            columns.value_column(&a.column, "count()")?;
            CheckedAggregate::Count { column: a.column.clone() }
        }
        K::Sum => {
            CheckedAggregate::Sum { column: a.column.clone(), column_type: columns.numeric_column(&a.column, "sum()")? }
        }
        K::Mean => CheckedAggregate::Mean {
            column: a.column.clone(),
            column_type: columns.numeric_column(&a.column, "avg()")?,
        },
        K::VarianceSample | K::VariancePopulation | K::StddevSample | K::StddevPopulation => {
            columns.numeric_column(&a.column, "a variance or standard deviation")?;
            CheckedAggregate::Moments { column: a.column.clone(), kind }
        }
        K::Histogram => {
            let Some(bins) = &a.bins else { return Err(Missing::HistogramBins.into()) };
            if bins.column != a.column {
                return Err(InvalidRequest::HistogramOverOtherColumn);
            }
            columns.numeric_column(&a.column, "histogram()")?;
            CheckedAggregate::Histogram {
                column: a.column.clone(),
                spec: BinSpec::from_proto(bins).map_err(InvalidRequest::Bins)?,
            }
        }
        K::SumOfProducts => {
            let left = columns.numeric_column(&a.column, "sum(a * b)")?;
            let right = columns.numeric_column(&a.other_column, "sum(a * b)")?;
            let integer = left == pb::ColumnType::Int64 && right == pb::ColumnType::Int64;
            CheckedAggregate::SumOfProducts { left: a.column.clone(), right: a.other_column.clone(), integer }
        }
        K::Unspecified => return Err(Missing::AggregateKind.into()),
    })
}

/// What is left of a filter's allowance of conditions and constants.
pub(crate) struct Budget {
    pub(crate) nodes: usize,
    pub(crate) literals: usize,
}

impl Budget {
    fn spend_literals(&mut self, n: usize) -> Result<(), InvalidRequest> {
        self.literals = self.literals.checked_sub(n).ok_or(Limit::FilterConstants)?;
        Ok(())
    }
}

use pb::filter::Kind;

pub(crate) fn check_filter(
    f: &pb::Filter,
    columns: &Columns,
    depth: usize,
    budget: &mut Budget,
) -> Result<CheckedFilter, InvalidRequest> {
    if depth > MAX_FILTER_DEPTH {
        return Err(Limit::FilterDepth.into());
    }
    if budget.nodes == 0 {
        return Err(Limit::FilterConditions.into());
    }
    budget.nodes -= 1;
    match &f.kind {
        Some(Kind::Compare(_)) => budget.spend_literals(1)?,
        Some(Kind::Between(_)) => budget.spend_literals(2)?,
        Some(Kind::InList(l)) => budget.spend_literals(l.values.len())?,
        _ => {}
    }
    let lit = |l: &Option<pb::Literal>, column: &str, t: pb::ColumnType| -> Result<ScalarValue, InvalidRequest> {
        let Some(l) = l else { return Err(Missing::Value { column: column.into() }.into()) };
        literal_for_column(l, t).map_err(|error| InvalidRequest::Literal { column: column.into(), error })
    };
    Ok(match &f.kind {
        Some(Kind::Compare(c)) => {
            let t = columns.value_column(&c.column, "a filter")?;
            let op = pb::CompareOp::try_from(c.op)
                .ok()
                .filter(|op| *op != pb::CompareOp::Unspecified)
                .ok_or_else(|| Missing::Operator { column: c.column.clone() })?;
            if t == pb::ColumnType::Bool && !matches!(op, pb::CompareOp::Eq | pb::CompareOp::Ne) {
                return Err(InvalidRequest::BooleanOrdering { column: c.column.clone() });
            }
            CheckedFilter::Compare { column: c.column.clone(), op, value: lit(&c.value, &c.column, t)? }
        }
        Some(Kind::InList(l)) => {
            let t = columns.value_column(&l.column, "a filter")?;
            if l.values.is_empty() || l.values.len() > MAX_IN_LIST {
                return Err(Limit::InList(l.values.len()).into());
            }
            let values = l
                .values
                .iter()
                .map(|v| {
                    literal_for_column(v, t)
                        .map_err(|error| InvalidRequest::Literal { column: l.column.clone(), error })
                })
                .collect::<Result<Vec<_>, _>>()?;
            CheckedFilter::InList { column: l.column.clone(), values, negated: l.negated }
        }
        Some(Kind::Between(b)) => {
            let t = columns.value_column(&b.column, "a filter")?;
            CheckedFilter::Between {
                column: b.column.clone(),
                low: lit(&b.low, &b.column, t)?,
                high: lit(&b.high, &b.column, t)?,
                negated: b.negated,
            }
        }
        Some(Kind::IsNull(n)) => {
            columns.value_column(&n.column, "a filter")?;
            CheckedFilter::IsNull { column: n.column.clone(), negated: n.negated }
        }
        Some(Kind::And(c)) | Some(Kind::Or(c)) => {
            if c.operands.is_empty() {
                return Err(Missing::Operands.into());
            }
            let ops = c
                .operands
                .iter()
                .map(|o| check_filter(o, columns, depth + 1, budget))
                .collect::<Result<Vec<_>, _>>()?;
            if matches!(f.kind, Some(Kind::And(_))) { CheckedFilter::And(ops) } else { CheckedFilter::Or(ops) }
        }
        Some(Kind::Not(inner)) => CheckedFilter::Not(Box::new(check_filter(inner, columns, depth + 1, budget)?)),
        None => return Err(Missing::Condition.into()),
    })
}

/// A small catalogue for examples and tests: one dataset `patients` keyed by `patient_id`,
/// with `sex`, `age`, `bmi`, `smoker` and `birth_date`, one column of each type.
pub fn example_catalogue() -> pb::Catalogue {
    let col =
        |name: &str, t: pb::ColumnType| pb::ColumnInfo { name: name.into(), r#type: t as i32, levels: Vec::new() };
    pb::Catalogue {
        datasets: vec![pb::DatasetInfo {
            name: "patients".into(),
            patient_key: "patient_id".into(),
            columns: vec![
                col("patient_id", pb::ColumnType::String),
                col("sex", pb::ColumnType::String),
                col("age", pb::ColumnType::Int64),
                col("bmi", pb::ColumnType::Float64),
                col("smoker", pb::ColumnType::Bool),
                col("birth_date", pb::ColumnType::Date),
            ],
            model: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::filter::Kind;
    use pb::literal::Value;

    fn catalogue() -> pb::Catalogue {
        example_catalogue()
    }

    fn count_query(filter: Option<pb::Filter>) -> pb::AggregateQuery {
        pb::AggregateQuery {
            dataset: "patients".into(),
            filter,
            group_by: vec![],
            aggregates: vec![pb::Aggregate { kind: pb::AggregateKind::CountRows as i32, ..Default::default() }],
            cohort: None,
        }
    }

    fn cmp(column: &str, op: pb::CompareOp, v: Value) -> pb::Filter {
        pb::Filter {
            kind: Some(Kind::Compare(pb::Comparison {
                column: column.into(),
                op: op as i32,
                value: Some(pb::Literal { value: Some(v) }),
            })),
        }
    }

    fn err(q: &pb::AggregateQuery) -> InvalidRequest {
        check(q, &catalogue()).unwrap_err()
    }

    #[test]
    fn a_valid_query_is_resolved() {
        let mut q = count_query(Some(cmp("age", pb::CompareOp::Gt, Value::Int64(65))));
        q.group_by.push(pb::Grouping { kind: Some(pb::grouping::Kind::Column("sex".into())) });
        q.aggregates.push(pb::Aggregate {
            kind: pb::AggregateKind::Mean as i32,
            column: "bmi".into(),
            bins: None,
            other_column: String::new(),
        });
        let c = check(&q, &catalogue()).unwrap();
        assert_eq!(c.patient_key, "patient_id");
        assert_eq!(
            c.filter,
            Some(CheckedFilter::Compare {
                column: "age".into(),
                op: pb::CompareOp::Gt,
                value: ScalarValue::Int64(Some(65))
            })
        );
        assert_eq!(c.aggregates.len(), 2);
        assert_eq!(c.columns(), vec!["age", "bmi", "sex"]);
    }

    #[test]
    fn unknown_dataset_and_column_name_the_alternatives() {
        let mut q = count_query(None);
        q.dataset = "patient".into();
        assert_eq!(err(&q).to_string(), "unknown dataset 'patient'; available: patients");
        let q = count_query(Some(cmp("agee", pb::CompareOp::Gt, Value::Int64(1))));
        let InvalidRequest::UnknownColumn { column, known, .. } = err(&q) else { panic!("{}", err(&q)) };
        assert_eq!(column, "agee");
        assert_eq!(known, ["age", "birth_date", "bmi", "sex", "smoker"], "the key is not offered as a filter column");
        assert!(err(&q).to_string().contains("its columns are: age, birth_date, bmi"));
    }

    #[test]
    fn type_mismatches_are_refused() {
        let e = err(&count_query(Some(cmp("age", pb::CompareOp::Eq, Value::String("old".into())))));
        assert!(matches!(&e, InvalidRequest::Literal { column, .. } if column == "age"), "{e}");
        assert!(e.to_string().contains("string literal"), "{e}");
        let e = err(&count_query(Some(cmp("smoker", pb::CompareOp::Lt, Value::Bool(true)))));
        assert!(matches!(e, InvalidRequest::BooleanOrdering { .. }), "{e}");
        let e = err(&count_query(Some(cmp("birth_date", pb::CompareOp::Lt, Value::String("soon".into())))));
        assert!(e.to_string().contains("YYYY-MM-DD"), "{e}");
        let mut q = count_query(None);
        q.aggregates.push(pb::Aggregate {
            kind: pb::AggregateKind::Sum as i32,
            column: "sex".into(),
            bins: None,
            other_column: String::new(),
        });
        assert!(matches!(err(&q), InvalidRequest::NotNumeric { role: "sum()", column_type: "string", .. }));
        assert!(err(&q).to_string().contains("numeric column"));
    }

    #[test]
    fn the_patient_key_is_only_for_distinct_counts() {
        let q = count_query(Some(cmp("patient_id", pb::CompareOp::Eq, Value::String("UKN-000001".into()))));
        assert!(matches!(err(&q), InvalidRequest::PatientKeyAsValue { role: "a filter", .. }));
        let mut q = count_query(None);
        q.group_by.push(pb::Grouping { kind: Some(pb::grouping::Kind::Column("patient_id".into())) });
        assert!(matches!(err(&q), InvalidRequest::PatientKeyAsValue { role: "GROUP BY", .. }));
        assert!(err(&q).to_string().contains("only available as count(DISTINCT patient_id)"));
    }

    #[test]
    fn malformed_requests_are_refused() {
        let mut q = count_query(None);
        q.aggregates.clear();
        assert_eq!(err(&q), Missing::Aggregates.into());
        assert!(err(&q).to_string().contains("at least one aggregate"));
        let q = count_query(Some(pb::Filter { kind: None }));
        assert_eq!(err(&q), Missing::Condition.into());
        let q = count_query(Some(pb::Filter { kind: Some(Kind::And(pb::Conjunction { operands: vec![] })) }));
        assert_eq!(err(&q), Missing::Operands.into());
        let q = count_query(Some(pb::Filter {
            kind: Some(Kind::InList(pb::InList { column: "sex".into(), values: vec![], negated: false })),
        }));
        assert_eq!(err(&q), Limit::InList(0).into());
        let mut q = count_query(None);
        q.aggregates[0].kind = 99;
        assert_eq!(err(&q), InvalidRequest::UnknownAggregateKind(99));
        let mut q = count_query(None);
        q.group_by.push(pb::Grouping {
            kind: Some(pb::grouping::Kind::Bins(BinSpec::Edges(vec![3.0, 1.0]).to_proto("age"))),
        });
        let e = err(&q);
        assert!(matches!(e, InvalidRequest::Bins(_)) && e.to_string().contains("strictly increasing"), "{e}");
    }

    #[test]
    fn deep_filters_are_refused() {
        let mut f = cmp("age", pb::CompareOp::Gt, Value::Int64(1));
        for _ in 0..40 {
            f = pb::Filter { kind: Some(Kind::Not(Box::new(f))) };
        }
        assert_eq!(err(&count_query(Some(f))), Limit::FilterDepth.into());
    }

    #[test]
    fn the_values_of_in_lists_count_against_the_filter_budget() {
        let list = |n: i64| pb::Filter {
            kind: Some(Kind::InList(pb::InList {
                column: "age".into(),
                values: (0..n).map(|v| pb::Literal { value: Some(Value::Int64(v)) }).collect(),
                negated: false,
            })),
        };
        let and = |lists: Vec<pb::Filter>| pb::Filter { kind: Some(Kind::And(pb::Conjunction { operands: lists })) };
        assert!(check(&count_query(Some(and(vec![list(1000), list(1000)]))), &catalogue()).is_ok());
        let e = err(&count_query(Some(and((0..5).map(|_| list(1000)).collect()))));
        assert_eq!(e, Limit::FilterConstants.into());
    }
}
