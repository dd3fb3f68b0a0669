//! Checks a typed cohort (patient-level criteria over clinical datasets, see
//! `docs/fhir-datasets.md`) against the catalogue: every dataset clinical (it has a `resource`
//! column and a patient key), every column exposed and of the type its role needs, every
//! linked criterion one level deep, every size within limits. Errors say where in the cohort
//! (`inclusion[1][0]`) and what is wrong, never a data value.

use crate::validate::{Budget, CheckedFilter, Columns, InvalidRequest, Limit, check_filter};
use crate::validate::{MAX_FILTER_LITERALS, MAX_FILTER_NODES};
use std::collections::{BTreeMap, BTreeSet};
use verbund_proto::v1 as pb;

/// The column every clinical dataset has: the row's FHIR `Type/id`.
pub const RESOURCE: &str = "resource";
/// The model of the dataset of every coding of every coded element.
pub const CODINGS: &str = "fhir/codings";

/// The dataset a criterion, a consent rule or a feasibility count names: by its name, else by
/// its model (`fhir/conditions`: the dataset whose model it is, else, at a site that does not
/// label models, the dataset named `conditions`).
pub fn find_dataset<'a>(catalogue: &'a pb::Catalogue, name: &str) -> Option<&'a pb::DatasetInfo> {
    let datasets = &catalogue.datasets;
    datasets.iter().find(|d| d.name == name).or_else(|| datasets.iter().find(|d| d.model == name)).or_else(|| {
        let plain = name.strip_prefix("fhir/")?;
        datasets.iter().find(|d| d.name == plain && d.model.is_empty())
    })
}

pub const MAX_COHORT_GROUPS: usize = 64;
pub const MAX_COHORT_CRITERIA: usize = 256;
/// Codes and prefixes of one request, after the front-end expanded hierarchies.
pub const MAX_COHORT_CODES: usize = 50_000;

/// Patients who match every inclusion group (one criterion of it) and no exclusion group
/// (every criterion of it).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedCohort {
    pub inclusion: Vec<Vec<CheckedCriterion>>,
    pub exclusion: Vec<Vec<CheckedCriterion>>,
}

/// A patient matches when one row of `dataset` of theirs meets every condition.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedCriterion {
    pub dataset: String,
    pub patient_key: String,
    pub conditions: Vec<Condition>,
    pub fixed: Option<CheckedFilter>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Some coding of `element` is one of the codes.
    Codes(CodeSet),
    Quantity {
        column: String,
        unit: Option<(String, String)>,
        test: QuantityTest,
    },
    /// [start, end] overlaps [after, before]; an absent bound is unbounded.
    Time {
        start: String,
        end: String,
        after: Option<i32>,
        before: Option<i32>,
    },
    /// `via` names a row (of the same patient, where the target has one) that matches one of
    /// the criteria.
    Linked {
        via: String,
        criteria: Vec<CheckedCriterion>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum QuantityTest {
    Compare(pb::CompareOp, f64),
    Range(f64, f64),
}

/// Codes by system; prefixes as (system, prefix).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CodeSet {
    /// The site's codings dataset.
    pub codings: String,
    pub element: String,
    pub codes: BTreeMap<String, BTreeSet<String>>,
    pub prefixes: Vec<(String, String)>,
}

/// What is wrong with a cohort, beyond what the request checks already say.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CohortProblem {
    #[error("a cohort needs at least one inclusion or exclusion group")]
    Empty,
    #[error("a criterion group is empty")]
    EmptyGroup,
    #[error(
        "dataset '{0}' is not a clinical dataset (it has no '{RESOURCE}' column and patient key); \
         criteria need datasets imported from FHIR (verbund import)"
    )]
    NotClinical(String),
    #[error(
        "code criteria need the '{CODINGS}' dataset with columns resource, element, system and code; this site does not serve it"
    )]
    NoCodings,
    #[error("a code match needs an element and at least one code or prefix")]
    EmptyCodes,
    #[error("a value or attribute filter sets nothing")]
    EmptyFilter,
    #[error("column '{column}' must be a {expected} column")]
    ColumnType { column: String, expected: &'static str },
    #[error("the range's minimum is above its maximum")]
    Range,
    #[error("the time restriction's 'after' is later than its 'before'")]
    TimeOrder,
    #[error("a quantity needs a finite value")]
    NotFinite,
    #[error("linked criteria need at least one criterion")]
    EmptyLink,
    #[error("linked criteria cannot be nested")]
    NestedLink,
}

/// Where a problem is: `inclusion[1][0]`, `exclusion[0][2].attributes[1].criteria[0]`.
fn at(path: &str, error: impl Into<InvalidRequest>) -> InvalidRequest {
    InvalidRequest::Cohort { at: path.to_string(), error: Box::new(error.into()) }
}

impl From<CohortProblem> for InvalidRequest {
    fn from(p: CohortProblem) -> Self {
        InvalidRequest::CohortProblem(p)
    }
}

struct Counts {
    criteria: usize,
    codes: usize,
}

pub fn check_cohort(cohort: &pb::Cohort, catalogue: &pb::Catalogue) -> Result<CheckedCohort, InvalidRequest> {
    if cohort.inclusion.is_empty() && cohort.exclusion.is_empty() {
        return Err(CohortProblem::Empty.into());
    }
    let groups = cohort.inclusion.len() + cohort.exclusion.len();
    if groups > MAX_COHORT_GROUPS {
        return Err(Limit::CohortGroups(groups).into());
    }
    let mut counts = Counts { criteria: 0, codes: 0 };
    let mut side = |name: &str, groups: &[pb::CriterionGroup]| -> Result<Vec<Vec<CheckedCriterion>>, InvalidRequest> {
        groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                if group.criteria.is_empty() {
                    return Err(at(&format!("{name}[{g}]"), CohortProblem::EmptyGroup));
                }
                group
                    .criteria
                    .iter()
                    .enumerate()
                    .map(|(c, criterion)| {
                        check_criterion(criterion, catalogue, &format!("{name}[{g}][{c}]"), false, &mut counts)
                    })
                    .collect()
            })
            .collect()
    };
    let inclusion = side("inclusion", &cohort.inclusion)?;
    let exclusion = side("exclusion", &cohort.exclusion)?;
    Ok(CheckedCohort { inclusion, exclusion })
}

fn check_criterion(
    c: &pb::Criterion,
    catalogue: &pb::Catalogue,
    path: &str,
    linked: bool,
    counts: &mut Counts,
) -> Result<CheckedCriterion, InvalidRequest> {
    counts.criteria += 1;
    if counts.criteria > MAX_COHORT_CRITERIA {
        return Err(Limit::CohortCriteria(counts.criteria).into());
    }
    let dataset = clinical(catalogue, &c.dataset).map_err(|e| at(path, e))?;
    let columns = Columns::new(dataset);
    let mut conditions = Vec::new();
    if let Some(codes) = &c.codes {
        conditions.push(code_set(codes, catalogue, counts).map_err(|e| at(path, e))?);
    }
    if let Some(v) = &c.value {
        let checked = match &v.kind {
            Some(pb::value_filter::Kind::Concept(m)) => code_set(m, catalogue, counts),
            Some(pb::value_filter::Kind::Compare(q)) => quantity_compare(q, &columns),
            Some(pb::value_filter::Kind::Range(q)) => quantity_range(q, &columns),
            None => Err(CohortProblem::EmptyFilter.into()),
        };
        conditions.push(checked.map_err(|e| at(&format!("{path}.value"), e))?);
    }
    for (i, a) in c.attributes.iter().enumerate() {
        let here = format!("{path}.attributes[{i}]");
        let checked = match &a.kind {
            Some(pb::attribute_filter::Kind::Concept(m)) => code_set(m, catalogue, counts),
            Some(pb::attribute_filter::Kind::Compare(q)) => quantity_compare(q, &columns),
            Some(pb::attribute_filter::Kind::Range(q)) => quantity_range(q, &columns),
            Some(pb::attribute_filter::Kind::Linked(l)) => {
                if linked {
                    return Err(at(&here, CohortProblem::NestedLink));
                }
                if l.criteria.is_empty() {
                    return Err(at(&here, CohortProblem::EmptyLink));
                }
                string_column(&columns, &l.via, "a linked criterion").map_err(|e| at(&here, e))?;
                let criteria = l
                    .criteria
                    .iter()
                    .enumerate()
                    .map(|(j, t)| check_criterion(t, catalogue, &format!("{here}.criteria[{j}]"), true, counts))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Condition::Linked { via: l.via.clone(), criteria })
            }
            None => Err(CohortProblem::EmptyFilter.into()),
        }
        .map_err(|e| match e {
            e @ InvalidRequest::Cohort { .. } => e,
            e => at(&here, e),
        })?;
        conditions.push(checked);
    }
    if let Some(t) = &c.time {
        conditions.push(time(t, &columns).map_err(|e| at(&format!("{path}.time"), e))?);
    }
    let fixed = match &c.fixed {
        Some(f) => {
            let mut budget = Budget { nodes: MAX_FILTER_NODES, literals: MAX_FILTER_LITERALS };
            Some(check_filter(f, &columns, 0, &mut budget).map_err(|e| at(&format!("{path}.fixed"), e))?)
        }
        None => None,
    };
    Ok(CheckedCriterion { dataset: dataset.name.clone(), patient_key: dataset.patient_key.clone(), conditions, fixed })
}

/// The dataset, if it is clinical: a `resource` column of strings and a patient key.
fn clinical<'a>(catalogue: &'a pb::Catalogue, name: &str) -> Result<&'a pb::DatasetInfo, InvalidRequest> {
    let Some(d) = find_dataset(catalogue, name) else {
        let available = catalogue.datasets.iter().map(|d| d.name.clone()).collect();
        return Err(InvalidRequest::UnknownDataset { dataset: name.into(), available });
    };
    let has_resource = d.columns.iter().any(|c| c.name == RESOURCE && c.r#type() == pb::ColumnType::String);
    if !has_resource || d.patient_key.is_empty() {
        return Err(CohortProblem::NotClinical(name.into()).into());
    }
    Ok(d)
}

fn code_set(m: &pb::CodeMatch, catalogue: &pb::Catalogue, counts: &mut Counts) -> Result<Condition, InvalidRequest> {
    if m.element.is_empty() || (m.codings.is_empty() && m.prefixes.is_empty()) {
        return Err(CohortProblem::EmptyCodes.into());
    }
    let codings = find_dataset(catalogue, CODINGS).ok_or(CohortProblem::NoCodings)?;
    let string = |name: &str| codings.columns.iter().any(|c| c.name == name && c.r#type() == pb::ColumnType::String);
    if !["resource", "element", "system", "code"].iter().all(|c| string(c)) {
        return Err(CohortProblem::NoCodings.into());
    }
    counts.codes += m.codings.len() + m.prefixes.len();
    if counts.codes > MAX_COHORT_CODES {
        return Err(Limit::CohortCodes(counts.codes).into());
    }
    let mut set = CodeSet { codings: codings.name.clone(), element: m.element.clone(), ..Default::default() };
    for c in &m.codings {
        set.codes.entry(c.system.clone()).or_default().insert(c.code.clone());
    }
    set.prefixes = m.prefixes.iter().map(|p| (p.system.clone(), p.code.clone())).collect();
    Ok(Condition::Codes(set))
}

fn string_column(columns: &Columns, name: &str, role: &'static str) -> Result<(), InvalidRequest> {
    if columns.value_column(name, role)? != pb::ColumnType::String {
        return Err(CohortProblem::ColumnType { column: name.into(), expected: "string" }.into());
    }
    Ok(())
}

fn unit(columns: &Columns, unit_column: &str, unit: &str) -> Result<Option<(String, String)>, InvalidRequest> {
    if unit.is_empty() {
        return Ok(None);
    }
    string_column(columns, unit_column, "a unit")?;
    Ok(Some((unit_column.to_string(), unit.to_string())))
}

fn quantity_compare(q: &pb::QuantityCompare, columns: &Columns) -> Result<Condition, InvalidRequest> {
    columns.numeric_column(&q.column, "a quantity filter")?;
    let op = pb::CompareOp::try_from(q.op)
        .ok()
        .filter(|op| *op != pb::CompareOp::Unspecified)
        .ok_or_else(|| crate::validate::Missing::Operator { column: q.column.clone() })?;
    if !q.value.is_finite() {
        return Err(CohortProblem::NotFinite.into());
    }
    Ok(Condition::Quantity {
        column: q.column.clone(),
        unit: unit(columns, &q.unit_column, &q.unit)?,
        test: QuantityTest::Compare(op, q.value),
    })
}

fn quantity_range(q: &pb::QuantityRange, columns: &Columns) -> Result<Condition, InvalidRequest> {
    columns.numeric_column(&q.column, "a quantity filter")?;
    if !q.min.is_finite() || !q.max.is_finite() {
        return Err(CohortProblem::NotFinite.into());
    }
    if q.min > q.max {
        return Err(CohortProblem::Range.into());
    }
    Ok(Condition::Quantity {
        column: q.column.clone(),
        unit: unit(columns, &q.unit_column, &q.unit)?,
        test: QuantityTest::Range(q.min, q.max),
    })
}

fn time(t: &pb::TimeRange, columns: &Columns) -> Result<Condition, InvalidRequest> {
    for column in [&t.start_column, &t.end_column] {
        if columns.value_column(column, "a time restriction")? != pb::ColumnType::Date {
            return Err(CohortProblem::ColumnType { column: column.clone(), expected: "date" }.into());
        }
    }
    if let (Some(after), Some(before)) = (t.after, t.before)
        && after > before
    {
        return Err(CohortProblem::TimeOrder.into());
    }
    Ok(Condition::Time { start: t.start_column.clone(), end: t.end_column.clone(), after: t.after, before: t.before })
}

impl CheckedCohort {
    /// Every (dataset, column) the cohort reads, for the policy's access check. The patient
    /// keys are left out, as for the query's own columns.
    pub fn columns(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for c in self.inclusion.iter().chain(&self.exclusion).flatten() {
            c.collect(&mut out);
        }
        out
    }

    /// Every dataset the cohort reads.
    pub fn datasets(&self) -> BTreeSet<&str> {
        self.columns().into_keys().collect()
    }
}

impl CheckedCriterion {
    fn collect<'a>(&'a self, out: &mut BTreeMap<&'a str, BTreeSet<&'a str>>) {
        let mine = out.entry(self.dataset.as_str()).or_default();
        mine.insert(RESOURCE);
        if let Some(f) = &self.fixed {
            f.columns(mine);
        }
        let mut codings = None;
        let mut linked = Vec::new();
        for c in &self.conditions {
            match c {
                Condition::Codes(set) => codings = Some(set.codings.as_str()),
                Condition::Quantity { column, unit, .. } => {
                    mine.insert(column);
                    if let Some((u, _)) = unit {
                        mine.insert(u);
                    }
                }
                Condition::Time { start, end, .. } => {
                    mine.insert(start);
                    mine.insert(end);
                }
                Condition::Linked { via, criteria } => {
                    mine.insert(via);
                    linked.extend(criteria);
                }
            }
        }
        if let Some(codings) = codings {
            out.entry(codings).or_default().extend(["resource", "element", "system", "code"]);
        }
        for l in linked {
            l.collect(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, t: pb::ColumnType) -> pb::ColumnInfo {
        pb::ColumnInfo { name: name.into(), r#type: t as i32, levels: Vec::new() }
    }

    fn catalogue() -> pb::Catalogue {
        use pb::ColumnType::{Date, Float64, String as S};
        let dataset = |name: &str, columns: Vec<pb::ColumnInfo>| pb::DatasetInfo {
            name: name.into(),
            patient_key: "patient_id".into(),
            columns: [vec![column("patient_id", S), column("resource", S)], columns].concat(),
            model: String::new(),
        };
        pb::Catalogue {
            datasets: vec![
                dataset("patients", vec![column("gender", S), column("birth_date", Date)]),
                dataset(
                    "observations",
                    vec![
                        column("value", Float64),
                        column("value_unit", S),
                        column("effective_start", Date),
                        column("effective_end", Date),
                    ],
                ),
                dataset("specimens", vec![column("diagnosis", S), column("type_code", S)]),
                dataset("conditions", vec![column("recorded_date", Date)]),
                dataset("codings", vec![column("element", S), column("system", S), column("code", S)]),
                pb::DatasetInfo {
                    name: "flat".into(),
                    patient_key: "pid".into(),
                    columns: vec![column("pid", S), column("x", Float64)],
                    model: String::new(),
                },
            ],
        }
    }

    fn codes(element: &str, code: &str) -> pb::CodeMatch {
        pb::CodeMatch {
            element: element.into(),
            codings: vec![pb::Coding { system: "http://loinc.org".into(), code: code.into() }],
            prefixes: vec![],
        }
    }

    fn cohort(criteria: Vec<pb::Criterion>) -> pb::Cohort {
        pb::Cohort { inclusion: vec![pb::CriterionGroup { criteria }], exclusion: vec![] }
    }

    fn lab() -> pb::Criterion {
        pb::Criterion {
            dataset: "observations".into(),
            codes: Some(codes("code", "4548-4")),
            value: Some(pb::ValueFilter {
                kind: Some(pb::value_filter::Kind::Compare(pb::QuantityCompare {
                    column: "value".into(),
                    unit_column: "value_unit".into(),
                    op: pb::CompareOp::Gt as i32,
                    value: 6.5,
                    unit: "%".into(),
                })),
            }),
            time: Some(pb::TimeRange {
                start_column: "effective_start".into(),
                end_column: "effective_end".into(),
                after: Some(10),
                before: Some(20),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lab_criterion_checks_and_names_what_it_reads() {
        let checked = check_cohort(&cohort(vec![lab()]), &catalogue()).expect("valid");
        assert_eq!(checked.inclusion[0][0].conditions.len(), 3);
        let columns = checked.columns();
        assert!(columns["observations"].contains("value_unit"));
        assert!(columns["codings"].contains("code"));
        assert_eq!(find_dataset(&catalogue(), "fhir/observations").map(|d| d.name.as_str()), Some("observations"));
    }

    #[test]
    fn errors_name_the_place_in_the_cohort() {
        let mut bad = lab();
        bad.time.as_mut().expect("time").after = Some(30);
        let e = check_cohort(&cohort(vec![lab(), bad]), &catalogue()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cohort inclusion[0][1].time: the time restriction's 'after' is later than its 'before'"
        );

        let mut unknown = lab();
        unknown.time.as_mut().expect("time").start_column = "nope".into();
        let e = check_cohort(&cohort(vec![unknown]), &catalogue()).unwrap_err();
        assert!(e.to_string().starts_with("cohort inclusion[0][0].time: unknown column 'nope'"), "{e}");

        let flat = pb::Criterion { dataset: "flat".into(), ..Default::default() };
        let e = check_cohort(&cohort(vec![flat]), &catalogue()).unwrap_err();
        assert!(
            matches!(e, InvalidRequest::Cohort { error, .. } if matches!(*error, InvalidRequest::CohortProblem(CohortProblem::NotClinical(_))))
        );
    }

    #[test]
    fn links_are_one_level_deep_and_typed() {
        let link = |criteria| pb::AttributeFilter {
            kind: Some(pb::attribute_filter::Kind::Linked(pb::LinkedCriteria { via: "diagnosis".into(), criteria })),
        };
        let condition = pb::Criterion { dataset: "conditions".into(), ..Default::default() };
        let specimen = pb::Criterion {
            dataset: "specimens".into(),
            attributes: vec![link(vec![condition.clone()])],
            ..Default::default()
        };
        let checked = check_cohort(&cohort(vec![specimen]), &catalogue()).expect("valid");
        assert!(checked.datasets().contains("conditions"));

        let nested = pb::Criterion {
            dataset: "specimens".into(),
            attributes: vec![link(vec![pb::Criterion {
                dataset: "specimens".into(),
                attributes: vec![link(vec![condition])],
                ..Default::default()
            }])],
            ..Default::default()
        };
        let e = check_cohort(&cohort(vec![nested]), &catalogue()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cohort inclusion[0][0].attributes[0].criteria[0].attributes[0]: linked criteria cannot be nested"
        );
    }

    #[test]
    fn code_matches_need_the_codings_dataset_and_stay_within_limits() {
        let mut without = catalogue();
        without.datasets.retain(|d| d.name != "codings");
        let e = check_cohort(&cohort(vec![lab()]), &without).unwrap_err();
        assert!(e.to_string().contains("'fhir/codings' dataset"), "{e}");

        let mut many = lab();
        let codes = many.codes.as_mut().expect("codes");
        codes.codings =
            (0..=MAX_COHORT_CODES).map(|i| pb::Coding { system: "s".into(), code: i.to_string() }).collect();
        let e = check_cohort(&cohort(vec![many]), &catalogue()).unwrap_err();
        assert!(
            matches!(e, InvalidRequest::Cohort { error, .. } if matches!(*error, InvalidRequest::TooLarge(Limit::CohortCodes(_))))
        );
        assert!(matches!(
            check_cohort(&pb::Cohort::default(), &catalogue()),
            Err(InvalidRequest::CohortProblem(CohortProblem::Empty))
        ));
    }
}
