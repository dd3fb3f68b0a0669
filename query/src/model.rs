//! Checks a model request (`pb::ModelQuery`, docs/regression-plan.md) completely against a
//! dataset's catalogue entry, as `validate::check` does for aggregate requests: every column
//! exposed, not the patient key and of a type its role can use, the outcome not among the
//! covariates, categorical levels well formed, the design within a column limit, filter and
//! cohort through the existing checks. Nodes run it before they build a design; the
//! coordinator runs it too, for an early, precise error. Messages name columns, types, levels
//! and limits from the request and the catalogue, never data values.

use crate::cohort::CheckedCohort;
use crate::literal::{is_numeric, literal_for_column, type_name};
use crate::validate::{
    Budget, CheckedFilter, Columns, InvalidRequest, MAX_FILTER_LITERALS, MAX_FILTER_NODES, check_filter,
};
use datafusion::scalar::ScalarValue;
use std::collections::{BTreeSet, HashSet};
use verbund_proto::v1 as pb;

/// What is wrong with a model request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidModel {
    /// A column, filter or cohort problem, worded as for aggregate requests.
    #[error("{0}")]
    Request(#[from] InvalidRequest),
    #[error(
        "dataset '{0}' has no patient key: a model's rows must be patients, so it needs a dataset with one (e.g. patients)"
    )]
    NoPatientKey(String),
    #[error("the model names no family: choose gaussian (linear), binomial (logistic) or poisson")]
    NoFamily,
    #[error("the model names no outcome")]
    NoOutcome,
    #[error("the {family} family needs {expected} outcome, but '{column}' is a {column_type} column")]
    OutcomeType { family: &'static str, expected: &'static str, column: String, column_type: &'static str },
    #[error("'{0}' is the outcome and cannot also be a covariate")]
    OutcomeAsCovariate(String),
    #[error("covariate '{0}' is listed twice")]
    DuplicateCovariate(String),
    #[error(
        "'{column}' is a {column_type} column: categorical covariates need a string, boolean or integer column (bin other columns first, or use them as numeric covariates without levels)"
    )]
    CategoricalType { column: String, column_type: &'static str },
    #[error("categorical covariate '{column}' needs at least two levels (the first is the reference level), got {got}")]
    TooFewLevels { column: String, got: usize },
    #[error("level {position} of '{column}': {problem}")]
    Level { column: String, position: usize, problem: String },
    #[error("categorical covariate '{column}' lists the level {level} twice")]
    DuplicateLevel { column: String, level: String },
    #[error(
        "the model has {p} design columns (intercept, numeric covariates and one per level besides the reference), more than the {max} allowed; drop covariates or merge levels"
    )]
    TooManyColumns { p: usize, max: usize },
    #[error("the model has no columns: keep the intercept or add a covariate")]
    NoColumns,
    #[error(
        "two design columns would both be named '{0}' (a categorical column's name followed by a level equals another column's name); rename a level or leave one out"
    )]
    DuplicateName(String),
}

/// A covariate with its column resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckedCovariate {
    Numeric {
        column: String,
        column_type: pb::ColumnType,
    },
    /// Dummy-coded against `levels[0]`; `texts` are the levels as the design names them.
    Categorical {
        column: String,
        column_type: pb::ColumnType,
        levels: Vec<ScalarValue>,
        texts: Vec<String>,
    },
}

impl CheckedCovariate {
    pub fn column(&self) -> &str {
        match self {
            CheckedCovariate::Numeric { column, .. } | CheckedCovariate::Categorical { column, .. } => column,
        }
    }
}

/// A model request checked against the catalogue of the site that is to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedModel {
    pub dataset: String,
    pub patient_key: String,
    pub filter: Option<CheckedFilter>,
    pub cohort: Option<CheckedCohort>,
    pub family: pb::ModelFamily,
    pub intercept: bool,
    pub outcome: String,
    pub outcome_type: pb::ColumnType,
    pub covariates: Vec<CheckedCovariate>,
    /// The design columns as R's `model.matrix` names them: `(Intercept)`, `age`, `sexmale`.
    pub names: Vec<String>,
}

impl CheckedModel {
    /// Number of design columns (p).
    pub fn p(&self) -> usize {
        self.names.len()
    }

    /// Every column the model reads from its dataset (outcome, covariates, filter), besides the
    /// patient key; the cohort's columns are the cohort's (`CheckedCohort::columns`).
    pub fn columns(&self) -> Vec<&str> {
        let mut out = BTreeSet::new();
        if let Some(f) = &self.filter {
            f.columns(&mut out);
        }
        out.insert(self.outcome.as_str());
        out.extend(self.covariates.iter().map(CheckedCovariate::column));
        out.into_iter().collect()
    }
}

/// A level as text, as the design names its column (`sex` + `male`) and as the node compares
/// the column's values with it.
pub fn level_text(level: &ScalarValue) -> Option<String> {
    match level {
        ScalarValue::Utf8(Some(s)) => Some(s.clone()),
        ScalarValue::Boolean(Some(b)) => Some(b.to_string()),
        ScalarValue::Int64(Some(v)) => Some(v.to_string()),
        _ => None,
    }
}

/// Checks `model` against the catalogue of the site that is to answer it; the design may have
/// at most `max_columns` columns.
pub fn check_model(
    model: &pb::ModelQuery,
    catalogue: &pb::Catalogue,
    max_columns: usize,
) -> Result<CheckedModel, InvalidModel> {
    let Some(dataset) = catalogue.datasets.iter().find(|d| d.name == model.dataset) else {
        let available = catalogue.datasets.iter().map(|d| d.name.clone()).collect();
        return Err(InvalidRequest::UnknownDataset { dataset: model.dataset.clone(), available }.into());
    };
    if dataset.patient_key.is_empty() {
        return Err(InvalidModel::NoPatientKey(dataset.name.clone()));
    }
    let family = match pb::ModelFamily::try_from(model.family) {
        Ok(pb::ModelFamily::Unspecified) | Err(_) => return Err(InvalidModel::NoFamily),
        Ok(f) => f,
    };
    // The size first, from the request alone, so that nothing below runs over a huge list.
    let p = usize::from(!model.no_intercept)
        + model.covariates.iter().map(|c| if c.levels.is_empty() { 1 } else { c.levels.len() - 1 }).sum::<usize>();
    if p > max_columns {
        return Err(InvalidModel::TooManyColumns { p, max: max_columns });
    }
    if model.no_intercept && model.covariates.is_empty() {
        return Err(InvalidModel::NoColumns);
    }
    let columns = Columns::new(dataset);

    if model.outcome.is_empty() {
        return Err(InvalidModel::NoOutcome);
    }
    let outcome_type = columns.value_column(&model.outcome, "a model's outcome")?;
    let (expected, fits) = match family {
        pb::ModelFamily::Binomial => {
            ("a numeric (0/1) or boolean", is_numeric(outcome_type) || outcome_type == pb::ColumnType::Bool)
        }
        pb::ModelFamily::Poisson => ("a numeric (count)", is_numeric(outcome_type)),
        _ => ("a numeric", is_numeric(outcome_type)),
    };
    if !fits {
        return Err(InvalidModel::OutcomeType {
            family: family_name(family),
            expected,
            column: model.outcome.clone(),
            column_type: type_name(outcome_type),
        });
    }

    let mut seen = HashSet::new();
    let mut covariates = Vec::with_capacity(model.covariates.len());
    for c in &model.covariates {
        if c.column == model.outcome {
            return Err(InvalidModel::OutcomeAsCovariate(c.column.clone()));
        }
        if !seen.insert(c.column.as_str()) {
            return Err(InvalidModel::DuplicateCovariate(c.column.clone()));
        }
        covariates.push(if c.levels.is_empty() {
            let role = "a numeric covariate (give its levels to use it as categorical)";
            CheckedCovariate::Numeric {
                column: c.column.clone(),
                column_type: columns.numeric_column(&c.column, role)?,
            }
        } else {
            check_categorical(c, columns.value_column(&c.column, "a model's covariate")?)?
        });
    }

    let names = design_names(!model.no_intercept, &covariates)?;
    let filter = match &model.filter {
        Some(f) => {
            let mut budget = Budget { nodes: MAX_FILTER_NODES, literals: MAX_FILTER_LITERALS };
            Some(check_filter(f, &columns, 0, &mut budget)?)
        }
        None => None,
    };
    let cohort = match &model.cohort {
        Some(c) => Some(crate::cohort::check_cohort(c, catalogue)?),
        None => None,
    };
    Ok(CheckedModel {
        dataset: dataset.name.clone(),
        patient_key: dataset.patient_key.clone(),
        filter,
        cohort,
        family,
        intercept: !model.no_intercept,
        outcome: model.outcome.clone(),
        outcome_type,
        covariates,
        names,
    })
}

/// The family as R names it.
pub fn family_name(family: pb::ModelFamily) -> &'static str {
    match family {
        pb::ModelFamily::Gaussian => "gaussian",
        pb::ModelFamily::Binomial => "binomial",
        pb::ModelFamily::Poisson => "poisson",
        pb::ModelFamily::Unspecified => "unspecified",
    }
}

fn check_categorical(c: &pb::ModelCovariate, column_type: pb::ColumnType) -> Result<CheckedCovariate, InvalidModel> {
    use pb::ColumnType as T;
    if !matches!(column_type, T::String | T::Bool | T::Int64) {
        return Err(InvalidModel::CategoricalType { column: c.column.clone(), column_type: type_name(column_type) });
    }
    if c.levels.len() < 2 {
        return Err(InvalidModel::TooFewLevels { column: c.column.clone(), got: c.levels.len() });
    }
    let mut levels = Vec::with_capacity(c.levels.len());
    let mut texts: Vec<String> = Vec::with_capacity(c.levels.len());
    for (position, literal) in c.levels.iter().enumerate() {
        let problem = |problem: String| InvalidModel::Level { column: c.column.clone(), position, problem };
        let value = literal_for_column(literal, column_type).map_err(|e| problem(e.to_string()))?;
        // Exactly the column's type: a float 1.0 is no level of an integer column.
        let Some(text) = level_text(&value) else {
            let t = type_name(column_type);
            return Err(problem(format!("levels of a {t} column must be {t} literals")));
        };
        if texts.contains(&text) {
            return Err(InvalidModel::DuplicateLevel { column: c.column.clone(), level: text });
        }
        texts.push(text);
        levels.push(value);
    }
    Ok(CheckedCovariate::Categorical { column: c.column.clone(), column_type, levels, texts })
}

/// R's `model.matrix` names: `(Intercept)`, a numeric covariate's column, and for a
/// categorical one its column followed by each level but the reference (`sexmale`).
fn design_names(intercept: bool, covariates: &[CheckedCovariate]) -> Result<Vec<String>, InvalidModel> {
    let mut names = Vec::new();
    if intercept {
        names.push("(Intercept)".to_owned());
    }
    for c in covariates {
        match c {
            CheckedCovariate::Numeric { column, .. } => names.push(column.clone()),
            CheckedCovariate::Categorical { column, texts, .. } => {
                names.extend(texts.iter().skip(1).map(|t| format!("{column}{t}")));
            }
        }
    }
    let mut unique = HashSet::new();
    if let Some(dup) = names.iter().find(|n| !unique.insert(n.as_str())) {
        return Err(InvalidModel::DuplicateName(dup.clone()));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::example_catalogue;
    use pb::literal::Value;

    fn text(s: &str) -> pb::Literal {
        pb::Literal { value: Some(Value::String(s.into())) }
    }

    fn numeric(column: &str) -> pb::ModelCovariate {
        pb::ModelCovariate { column: column.into(), levels: vec![] }
    }

    fn categorical(column: &str, levels: Vec<pb::Literal>) -> pb::ModelCovariate {
        pb::ModelCovariate { column: column.into(), levels }
    }

    /// bmi ~ age + sex (female, male, diverse), linear.
    fn model() -> pb::ModelQuery {
        pb::ModelQuery {
            dataset: "patients".into(),
            outcome: "bmi".into(),
            covariates: vec![numeric("age"), categorical("sex", vec![text("female"), text("male"), text("diverse")])],
            family: pb::ModelFamily::Gaussian as i32,
            ..Default::default()
        }
    }

    fn err(m: &pb::ModelQuery) -> InvalidModel {
        match check_model(m, &example_catalogue(), 64) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_valid_model_is_resolved_with_r_names() {
        let mut m = model();
        m.filter = Some(pb::Filter {
            kind: Some(pb::filter::Kind::IsNull(pb::IsNull { column: "smoker".into(), negated: true })),
        });
        let c = check_model(&m, &example_catalogue(), 64).unwrap();
        assert_eq!(c.names, ["(Intercept)", "age", "sexmale", "sexdiverse"]);
        assert_eq!((c.p(), c.intercept, c.patient_key.as_str()), (4, true, "patient_id"));
        assert_eq!(c.columns(), ["age", "bmi", "sex", "smoker"]);
        let CheckedCovariate::Categorical { levels, texts, .. } = &c.covariates[1] else { panic!("{c:?}") };
        assert_eq!(levels[0], ScalarValue::Utf8(Some("female".into())), "the first level is the reference");
        assert_eq!(texts, &["female", "male", "diverse"]);
        m.no_intercept = true;
        m.family = pb::ModelFamily::Binomial as i32;
        m.outcome = "smoker".into();
        m.covariates.push(numeric("bmi"));
        let c = check_model(&m, &example_catalogue(), 64).unwrap();
        assert_eq!(c.names, ["age", "sexmale", "sexdiverse", "bmi"], "a boolean outcome for logistic models");
    }

    #[test]
    fn columns_must_exist_and_not_be_the_patient_key() {
        let mut m = model();
        m.dataset = "patient".into();
        assert!(err(&m).to_string().contains("unknown dataset 'patient'; available: patients"));
        let mut m = model();
        m.covariates.push(numeric("weight"));
        assert!(matches!(err(&m), InvalidModel::Request(InvalidRequest::UnknownColumn { .. })), "{}", err(&m));
        let mut m = model();
        m.outcome = "patient_id".into();
        assert!(matches!(err(&m), InvalidModel::Request(InvalidRequest::PatientKeyAsValue { .. })));
        let mut m = model();
        m.covariates.push(categorical("patient_id", vec![text("a"), text("b")]));
        assert!(err(&m).to_string().contains("only available as count(DISTINCT patient_id)"), "{}", err(&m));
        let mut catalogue = example_catalogue();
        catalogue.datasets[0].patient_key.clear();
        let e = check_model(&model(), &catalogue, 64).unwrap_err();
        assert_eq!(e, InvalidModel::NoPatientKey("patients".into()));
    }

    #[test]
    fn types_must_suit_their_role() {
        let mut m = model();
        m.covariates[0] = numeric("sex");
        let e = err(&m);
        assert!(
            e.to_string().contains("numeric covariate (give its levels") && e.to_string().contains("string column")
        );
        let mut m = model();
        m.outcome = "smoker".into();
        assert_eq!(
            err(&m).to_string(),
            "the gaussian family needs a numeric outcome, but 'smoker' is a boolean column"
        );
        m.family = pb::ModelFamily::Poisson as i32;
        assert!(matches!(err(&m), InvalidModel::OutcomeType { family: "poisson", .. }));
        let mut m = model();
        m.covariates[0] = categorical("birth_date", vec![text("2000-01-01"), text("2001-01-01")]);
        assert!(matches!(err(&m), InvalidModel::CategoricalType { .. }), "{}", err(&m));
        let mut m = model();
        m.covariates[0] = categorical(
            "age",
            vec![pb::Literal { value: Some(Value::Int64(1)) }, pb::Literal { value: Some(Value::Float64(2.0)) }],
        );
        assert!(matches!(err(&m), InvalidModel::Level { position: 1, .. }), "{}", err(&m));
        assert!(err(&m).to_string().contains("must be integer literals"));
    }

    #[test]
    fn the_outcome_is_no_covariate_and_covariates_are_listed_once() {
        let mut m = model();
        m.covariates.push(numeric("bmi"));
        assert_eq!(err(&m), InvalidModel::OutcomeAsCovariate("bmi".into()));
        let mut m = model();
        m.covariates.push(numeric("age"));
        assert_eq!(err(&m), InvalidModel::DuplicateCovariate("age".into()));
        let mut m = model();
        m.outcome.clear();
        assert_eq!(err(&m), InvalidModel::NoOutcome);
        let mut m = model();
        m.family = 0;
        assert_eq!(err(&m), InvalidModel::NoFamily);
        m.family = 9;
        assert_eq!(err(&m), InvalidModel::NoFamily);
        let mut m = model();
        m.covariates.clear();
        assert!(check_model(&m, &example_catalogue(), 64).is_ok(), "an intercept-only model");
        m.no_intercept = true;
        assert_eq!(err(&m), InvalidModel::NoColumns);
    }

    #[test]
    fn levels_are_two_or_more_unique_and_not_null() {
        let mut m = model();
        m.covariates[1].levels.truncate(1);
        assert_eq!(err(&m), InvalidModel::TooFewLevels { column: "sex".into(), got: 1 });
        let mut m = model();
        m.covariates[1].levels[2] = text("female");
        assert_eq!(err(&m), InvalidModel::DuplicateLevel { column: "sex".into(), level: "female".into() });
        let mut m = model();
        m.covariates[1].levels[1] = pb::Literal { value: None };
        assert!(err(&m).to_string().starts_with("level 1 of 'sex': NULL"), "{}", err(&m));
        let mut m = model();
        m.covariates[1] = categorical(
            "smoker",
            vec![pb::Literal { value: Some(Value::Bool(false)) }, pb::Literal { value: Some(Value::Bool(true)) }],
        );
        let c = check_model(&m, &example_catalogue(), 64).unwrap();
        assert_eq!(c.names, ["(Intercept)", "age", "smokertrue"]);
        let mut catalogue = example_catalogue();
        let sexmale =
            pb::ColumnInfo { name: "sexmale".into(), r#type: pb::ColumnType::Int64 as i32, levels: Vec::new() };
        catalogue.datasets[0].columns.push(sexmale);
        let mut m = model();
        m.covariates.push(numeric("sexmale"));
        let e = check_model(&m, &catalogue, 64).unwrap_err();
        assert_eq!(e, InvalidModel::DuplicateName("sexmale".into()));
    }

    #[test]
    fn the_design_is_within_max_columns() {
        let m = model();
        assert!(check_model(&m, &example_catalogue(), 4).is_ok(), "at the limit");
        let e = check_model(&m, &example_catalogue(), 3).unwrap_err();
        assert_eq!(e, InvalidModel::TooManyColumns { p: 4, max: 3 });
        let mut m = model();
        m.covariates[1].levels = (0..100_000).map(|i| text(&i.to_string())).collect();
        assert!(matches!(err(&m), InvalidModel::TooManyColumns { p: 100_001, max: 64 }), "counted before checked");
    }

    #[test]
    fn filter_and_cohort_go_through_the_existing_checks() {
        let mut m = model();
        m.filter = Some(pb::Filter { kind: None });
        assert!(matches!(err(&m), InvalidModel::Request(InvalidRequest::Missing(_))), "{}", err(&m));
        let mut m = model();
        m.filter = Some(pb::Filter {
            kind: Some(pb::filter::Kind::IsNull(pb::IsNull { column: "patient_id".into(), negated: false })),
        });
        assert!(matches!(err(&m), InvalidModel::Request(InvalidRequest::PatientKeyAsValue { .. })));
        let mut m = model();
        m.cohort = Some(pb::Cohort::default());
        assert!(err(&m).to_string().contains("at least one inclusion or exclusion group"), "{}", err(&m));
    }
}
