//! A model's design at this site, built once per model and data version: the model's rows
//! (`Engine::filtered`: filter, consent, cohort), ordered by patient key so that a rebuild is
//! bit-identical whatever the scan order, one row per patient, then the crate's
//! `DesignBuilder` (complete cases: `dropped` = rows − complete) and the rules' `ModelFacts`.

use super::ModelError;
use crate::cohort::as_text;
use crate::engine::{Engine, internal};
use crate::refusal::{Exhausted, Refusal};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::logical_expr::cast;
use datafusion::prelude::{col, ident};
use futures::StreamExt;
use verbund_policies::model::ModelFacts;
use verbund_query::model::{CheckedCovariate, CheckedModel};
use verbund_query::validate::{CheckedAggregate, CheckedQuery};
use verbund_regression::{Design, DesignBuilder, DesignError};

const KEY: &str = "__model_patient";
const OUTCOME: &str = "__model_y";

/// A design and the facts its rules read, shared by the rounds of a fit.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) design: Design,
    pub(crate) facts: ModelFacts,
}

impl Built {
    /// What the design holds in memory, roughly: X and y (the facts are small).
    pub(crate) fn bytes(&self) -> usize {
        self.design.n.saturating_mul(self.design.p() + 1).saturating_mul(8)
    }
}

/// The model's rows as an aggregate query sees them: its dataset, filter and cohort. The
/// columns it reads are listed (as counts, never run) so that `filtered` reads the dataset
/// itself, not the index's copy of the patient key alone, and so that `data_version` covers
/// what the model reads.
pub(crate) fn rows_query(m: &CheckedModel) -> CheckedQuery {
    let mut aggregates = vec![CheckedAggregate::Count { column: m.outcome.clone() }];
    aggregates.extend(m.covariates.iter().map(|c| CheckedAggregate::Count { column: c.column().to_string() }));
    CheckedQuery {
        dataset: m.dataset.clone(),
        patient_key: m.patient_key.clone(),
        filter: m.filter.clone(),
        groupings: Vec::new(),
        aggregates,
        cohort: m.cohort.clone(),
    }
}

/// One covariate's values as read, before the design drops incomplete rows; categorical ones
/// are read from the batches in place (`texts_of`).
enum Values {
    Numeric(Vec<Option<f64>>),
    Text,
}

fn covariate_alias(i: usize) -> String {
    format!("__model_x{i}")
}

impl Engine {
    /// Reads the model's rows (inside the request's population scope) and builds its design.
    /// The outer error is a refusal of the request; the inner one is the crate's, for the
    /// caller to word without data values.
    pub(crate) async fn build_design(
        &self,
        m: &CheckedModel,
        rows: &CheckedQuery,
    ) -> Result<Result<Built, DesignError>, Refusal> {
        let df = self.filtered(rows).await?;
        let mut select =
            vec![as_text(&df, &m.patient_key).alias(KEY), cast(ident(&m.outcome), DataType::Float64).alias(OUTCOME)];
        let mut values = Vec::with_capacity(m.covariates.len());
        for (i, c) in m.covariates.iter().enumerate() {
            // Levels are compared as text, as `level_text` writes them (booleans "true", integers "12").
            let (as_type, empty) = match c {
                CheckedCovariate::Numeric { .. } => (DataType::Float64, Values::Numeric(Vec::new())),
                CheckedCovariate::Categorical { .. } => (DataType::Utf8, Values::Text),
            };
            select.push(cast(ident(c.column()), as_type).alias(covariate_alias(i)));
            values.push(empty);
        }
        let df = df.select(select).and_then(|d| d.sort(vec![col(KEY).sort(true, true)])).map_err(internal)?;
        let mut stream = self.execute(df).await?;

        // The design and its inputs side by side, about twice X: refused like a query over its memory.
        let limit = (self.policy().max_query_memory_mb as usize).saturating_mul(1024 * 1024);
        let row_bytes = (m.p() + m.covariates.len() + 2) * 8 * 2;
        let mut y: Vec<Option<f64>> = Vec::new();
        let mut previous = String::new();
        // The batches stay until the design is built: categorical values are read in place.
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(internal)?;
            if (y.len() + batch.num_rows()).saturating_mul(row_bytes) > limit {
                return Err(Exhausted::Memory.into());
            }
            read_batch(&batch, m, &mut previous, &mut y, &mut values)?;
            batches.push(batch);
        }

        let mut builder = DesignBuilder::new(m.intercept);
        for (i, (c, v)) in m.covariates.iter().zip(&values).enumerate() {
            builder = match (c, v) {
                (CheckedCovariate::Numeric { column, .. }, Values::Numeric(v)) => builder.numeric(column, v),
                (CheckedCovariate::Categorical { column, texts, .. }, Values::Text) => {
                    builder.categorical(column, &texts_of(&batches, i + 2)?, texts)
                }
                _ => return Err(Refusal::internal("a covariate's values were read as the wrong kind")),
            };
        }
        let design = match builder.outcome(&y).build() {
            Ok(design) => design,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = design.check_outcome(super::family_of(m.family)) {
            return Ok(Err(e));
        }
        let facts = ModelFacts::of(&design, m.family);
        Ok(Ok(Built { design, facts }))
    }
}

/// Appends one batch of the sorted rows. A row without a patient key (NULL or empty) is no
/// patient's: its outcome is read as missing, so the design drops it and counts it in
/// `dropped`. Two rows of one patient are adjacent (sorted), which is how they are found.
fn read_batch(
    batch: &RecordBatch,
    m: &CheckedModel,
    previous: &mut String,
    y: &mut Vec<Option<f64>>,
    values: &mut [Values],
) -> Result<(), Refusal> {
    let keys = batch.column(0).as_string_opt::<i32>().ok_or_else(wrong_types)?;
    let outcome = batch.column(1).as_primitive_opt::<Float64Type>().ok_or_else(wrong_types)?;
    for row in 0..batch.num_rows() {
        let key = if keys.is_valid(row) { Some(keys.value(row)).filter(|k| !k.is_empty()) } else { None };
        if let Some(key) = key {
            // `previous` is empty before the first keyed row, and keys here are not empty.
            if previous == key {
                return Err(ModelError::RowsPerPatient { dataset: m.dataset.clone() }.into());
            }
            previous.clear();
            previous.push_str(key);
        }
        y.push(if key.is_some() && outcome.is_valid(row) { Some(outcome.value(row)) } else { None });
    }
    for (i, v) in values.iter_mut().enumerate() {
        if let Values::Numeric(out) = v {
            let a = batch.column(i + 2).as_primitive_opt::<Float64Type>().ok_or_else(wrong_types)?;
            out.extend((0..a.len()).map(|r| a.is_valid(r).then(|| a.value(r))));
        }
    }
    Ok(())
}

/// Column `index` of every batch as text values, borrowed from the batches.
fn texts_of(batches: &[RecordBatch], index: usize) -> Result<Vec<Option<&str>>, Refusal> {
    let mut out = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for batch in batches {
        let a = batch.column(index).as_string_opt::<i32>().ok_or_else(wrong_types)?;
        out.extend(a.iter());
    }
    Ok(out)
}

fn wrong_types() -> Refusal {
    Refusal::internal("a model's rows came back with unexpected column types")
}
