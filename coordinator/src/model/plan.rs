//! A researcher's model request (`pb::ResearchModel`) as the sites are asked it
//! (`pb::ModelQuery`): the condition planned by the SQL front-end, the cohort translated,
//! categorical covariates with their levels agreed across the sites (docs/regression-plan.md §2).

use super::ModelError;
use crate::Coordinator;
use crate::RequestError as Error;
use crate::api::Admitted;
use datafusion::arrow::array::{Array, BooleanArray, Int64Array, StringArray};
use std::cmp::Ordering;
use verbund_proto::v1 as pb;
use verbund_proto::v1::literal::Value;
use verbund_query::model::{CheckedModel, check_model};
use verbund_query::validate::InvalidRequest;
use verbund_security::token::Claims;

/// The most design columns the coordinator plans; each site applies its own, lower limit.
const MAX_COLUMNS: usize = 1024;

/// A model ready for the sites.
pub(crate) struct PlannedModel {
    pub query: pb::ModelQuery,
    pub checked: CheckedModel,
    /// Where each categorical covariate's levels came from.
    pub notes: Vec<String>,
}

/// The total order of levels: numbers numerically, text by bytes, false before true. The first
/// level is the reference unless the researcher names one (as R's `factor`).
fn compare(a: &pb::Literal, b: &pb::Literal) -> Ordering {
    match (&a.value, &b.value) {
        (Some(Value::Int64(x)), Some(Value::Int64(y))) => x.cmp(y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Float64(x)), Some(Value::Float64(y))) => x.total_cmp(y),
        (Some(Value::Date(x)), Some(Value::Date(y))) => x.cmp(y),
        _ => format!("{:?}", a.value).cmp(&format!("{:?}", b.value)),
    }
}

fn text(level: &pb::Literal) -> String {
    match &level.value {
        Some(Value::String(s)) => format!("'{s}'"),
        Some(Value::Int64(v)) => v.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Float64(v)) => v.to_string(),
        Some(Value::Date(d)) => format!("day {d}"),
        None => "(none)".into(),
    }
}

/// The same level, also when the researcher typed a number or boolean as text.
fn same_level(a: &pb::Literal, b: &pb::Literal) -> bool {
    a == b
        || match (&a.value, &b.value) {
            (Some(Value::String(s)), Some(other)) | (Some(other), Some(Value::String(s))) => match other {
                Value::Int64(v) => s.trim().parse::<i64>().ok() == Some(*v),
                Value::Bool(v) => s.trim().parse::<bool>().ok() == Some(*v),
                _ => false,
            },
            _ => false,
        }
}

/// A name as a SQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Coordinator {
    pub(crate) async fn plan_model(
        &self,
        request: &pb::ResearchModel,
        admitted: &Admitted,
        claims: &Claims,
        token: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<PlannedModel, Error> {
        let catalogue = &admitted.catalogue;
        let invalid = |e: verbund_query::model::InvalidModel| Error::Model(ModelError::Invalid(e));
        let Some(dataset) = catalogue.datasets.iter().find(|d| d.name == request.dataset) else {
            let available = catalogue.datasets.iter().map(|d| d.name.clone()).collect();
            return Err(invalid(InvalidRequest::UnknownDataset { dataset: request.dataset.clone(), available }.into()));
        };
        let condition = request.condition.trim();
        let filter = if condition.is_empty() {
            None
        } else {
            let sql = format!("SELECT count(*) FROM {} WHERE {condition}", quoted(&dataset.name));
            self.planner.plan(&sql, catalogue).await.map_err(Error::Query)?.request.filter
        };
        let cohort = crate::feasibility::cohort_of(request.cohort.as_ref(), &request.ccdl)?;

        let mut query = pb::ModelQuery {
            dataset: dataset.name.clone(),
            filter,
            cohort,
            outcome: request.outcome.clone(),
            covariates: Vec::with_capacity(request.covariates.len()),
            family: request.family,
            no_intercept: request.no_intercept,
        };
        // Terms first without levels: the discovery rounds below ask over the model's rows.
        let mut categorical = Vec::new();
        for term in &request.covariates {
            let column = dataset.columns.iter().find(|c| c.name == term.column);
            let text_like = column.is_some_and(|c| {
                matches!(pb::ColumnType::try_from(c.r#type), Ok(pb::ColumnType::String | pb::ColumnType::Bool))
            });
            if (term.categorical || text_like) && column.is_some() {
                categorical.push(query.covariates.len());
            } else if term.reference.is_some() {
                return Err(ModelError::Term {
                    column: term.column.clone(),
                    problem: "a reference level is given, but the covariate is numeric; mark it categorical".into(),
                }
                .into());
            }
            query.covariates.push(pb::ModelCovariate { column: term.column.clone(), levels: vec![] });
        }
        let mut notes = Vec::new();
        let declared_levels = |column: &str| {
            dataset.columns.iter().find(|c| c.name == column).map(|c| c.levels.clone()).unwrap_or_default()
        };
        // Columns without declared levels are counted at the sites, all at once.
        let undeclared: Vec<String> = categorical
            .iter()
            .map(|&i| query.covariates[i].column.clone())
            .filter(|c| declared_levels(c).is_empty())
            .collect();
        let asks = undeclared
            .iter()
            .map(|column| self.discover_levels(request, &query, column, admitted, claims, token, cancel));
        let mut found: Vec<Vec<pb::Literal>> = futures::future::try_join_all(asks).await?;
        for &i in &categorical {
            let column = query.covariates[i].column.clone();
            let declared = declared_levels(&column);
            let mut levels = if declared.is_empty() {
                notes.push(format!(
                    "levels of '{column}' found by a grouped patient count at the sites (levels with fewer than k \
                     patients at every site are not among them; a site with such rows refuses)"
                ));
                let at = undeclared.iter().position(|c| *c == column).unwrap_or_default();
                found.get_mut(at).map(std::mem::take).unwrap_or_default()
            } else {
                notes.push(format!("levels of '{column}' as the sites declare them"));
                declared.clone()
            };
            levels.sort_by(compare);
            levels.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
            if let Some(reference) = request.covariates[i].reference.as_ref() {
                let Some(at) = levels.iter().position(|l| same_level(l, reference)) else {
                    let all: Vec<String> = levels.iter().map(text).collect();
                    return Err(ModelError::Term {
                        column,
                        problem: format!(
                            "the reference level {} is not one of its levels [{}]",
                            text(reference),
                            all.join(", ")
                        ),
                    }
                    .into());
                };
                let reference = levels.remove(at);
                levels.insert(0, reference);
            }
            if levels.len() < 2 {
                return Err(ModelError::Term {
                    column,
                    problem: format!(
                        "{} level(s) found{}; a categorical covariate needs at least two",
                        levels.len(),
                        if declared.is_empty() { " with at least k patients at some site" } else { " declared" }
                    ),
                }
                .into());
            }
            query.covariates[i].levels = levels;
        }
        let checked = check_model(&query, catalogue, MAX_COLUMNS).map_err(invalid)?;
        Ok(PlannedModel { query, checked, notes })
    }

    /// The levels of `column` among the model's complete cases, by an ordinary grouped count
    /// at the sites: it costs what that query costs, and releases only groups of at least k
    /// patients.
    #[allow(clippy::too_many_arguments)]
    async fn discover_levels(
        &self,
        request: &pb::ResearchModel,
        model: &pb::ModelQuery,
        column: &str,
        admitted: &Admitted,
        claims: &Claims,
        token: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Vec<pb::Literal>, Error> {
        let dataset = admitted.catalogue.datasets.iter().find(|d| d.name == model.dataset);
        let key = dataset.map(|d| d.patient_key.clone()).unwrap_or_default();
        if key.is_empty() {
            return Err(
                ModelError::Invalid(verbund_query::model::InvalidModel::NoPatientKey(model.dataset.clone())).into()
            );
        }
        let mut conditions: Vec<String> = std::iter::once(model.outcome.as_str())
            .chain(model.covariates.iter().map(|c| c.column.as_str()))
            .map(|c| format!("{} IS NOT NULL", quoted(c)))
            .collect();
        if !request.condition.trim().is_empty() {
            conditions.push(format!("({})", request.condition.trim()));
        }
        let sql = format!(
            "SELECT {col}, count(DISTINCT {key}) AS patients FROM {ds} WHERE {conditions} GROUP BY {col}",
            col = quoted(column),
            key = quoted(&key),
            ds = quoted(&model.dataset),
            conditions = conditions.join(" AND "),
        );
        // An ordinary query of the researcher's, audited and answered as any other.
        let levels_query = pb::ResearchQuery {
            query_id: String::new(),
            sql,
            sites: admitted.targets.clone(),
            timeout_ms: request.timeout_ms,
            project: request.project.clone(),
            cohort: request.cohort.clone(),
            ccdl: request.ccdl.clone(),
        };
        let levels_error = |why: String| ModelError::Levels { column: column.to_string(), why };
        let ctl = crate::queries::Ctl::inner(cancel);
        let response = match Box::pin(self.query_direct(&levels_query, claims, token, &ctl)).await {
            Ok(response) => response,
            // A column or condition the planner rejects: the researcher's error, said as is.
            Err(e @ Error::Query(_)) => return Err(e),
            Err(e) => return Err(levels_error(e.to_string()).into()),
        };
        if !response.sites.iter().any(|s| s.outcome() == pb::SiteOutcome::Answered) {
            let why: Vec<String> = response.sites.iter().map(|s| format!("{}: {}", s.site, s.message)).collect();
            return Err(levels_error(format!(
                "no site answered the grouped count ({}); declare the levels in the sites' policies",
                why.join("; ")
            ))
            .into());
        }
        let batch = crate::api::decode_ipc(&response.arrow_ipc).map_err(|e| levels_error(e.to_string()))?;
        let values = batch.column(0);
        let mut levels = Vec::new();
        if let Some(a) = values.as_any().downcast_ref::<StringArray>() {
            levels.extend(a.iter().flatten().map(|s| pb::Literal { value: Some(Value::String(s.to_string())) }));
        } else if let Some(a) = values.as_any().downcast_ref::<Int64Array>() {
            levels.extend(a.iter().flatten().map(|v| pb::Literal { value: Some(Value::Int64(v)) }));
        } else if let Some(a) = values.as_any().downcast_ref::<BooleanArray>() {
            levels.extend(a.iter().flatten().map(|v| pb::Literal { value: Some(Value::Bool(v)) }));
        } else {
            return Err(ModelError::Term {
                column: column.to_string(),
                problem: format!("a {} column cannot be categorical", values.data_type()),
            }
            .into());
        }
        Ok(levels)
    }
}
