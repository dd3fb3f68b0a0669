//! Patient attributes for grouping (`Grouping.patient_attribute`): a column of a dataset with
//! one row per patient (e.g. gender of `fhir/patients`), joined to the query's rows on the
//! patient key, as SQL's LEFT JOIN: a row whose patient has no row there gets NULL.
//!
//! A patient must have at most one row in that dataset, so that all of a patient's rows fall
//! into one group (the privacy sensitivities assume it) and the join adds no rows. The node
//! checks it once per version of the dataset and refuses otherwise.

use crate::cohort::as_text;
use crate::engine::{Engine, internal};
use crate::refusal::Refusal;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::common::JoinType;
use datafusion::functions_aggregate::expr_fn::{count, max};
use datafusion::prelude::{DataFrame, col, ident, lit};
use std::collections::HashMap;
use verbund_query::validate::{CheckedGrouping, CheckedQuery, InvalidRequest};

/// Whether a dataset, at a version, has at most one row per patient.
#[derive(Default)]
pub(crate) struct PatientLevelCache(parking_lot::Mutex<HashMap<String, bool>>);

/// A dataset joined for its attributes: (name, patient key, [(column, alias)]).
type Joined<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

/// Versions remembered; older entries are dropped when the cache is full.
const REMEMBERED: usize = 64;

impl Engine {
    /// Adds the patient attributes the query groups by to its rows.
    pub(crate) async fn join_patient_attributes(
        &self,
        mut df: DataFrame,
        q: &CheckedQuery,
    ) -> Result<DataFrame, Refusal> {
        let mut by_dataset: Vec<Joined> = Vec::new();
        for g in &q.groupings {
            if let CheckedGrouping::Patient { dataset, key, column, alias, .. } = g {
                match by_dataset.iter_mut().find(|(d, _, _)| d == dataset) {
                    Some((_, _, columns)) => columns.push((column, alias)),
                    None => by_dataset.push((dataset, key, vec![(column, alias)])),
                }
            }
        }
        for (i, (dataset, key, columns)) in by_dataset.into_iter().enumerate() {
            let attributes = self.session().table(dataset).await.map_err(internal)?;
            let own = as_text(&attributes, key);
            self.require_patient_level(dataset, key, &attributes, own.clone()).await?;
            let joined_key = format!("__patient_key{i}");
            let mut projection = vec![own.alias(joined_key.as_str())];
            projection.extend(columns.iter().map(|(c, alias)| ident(*c).alias(*alias)));
            let attributes = attributes.filter(ident(key).is_not_null()).and_then(|a| a.select(projection));
            let theirs = as_text(&df, &q.patient_key);
            df = df
                .join_on(attributes.map_err(internal)?, JoinType::Left, [theirs.eq(col(joined_key.as_str()))])
                .map_err(internal)?;
        }
        Ok(df)
    }

    /// Refuses a dataset in which some patient has more than one row.
    async fn require_patient_level(
        &self,
        dataset: &str,
        key: &str,
        rows: &DataFrame,
        patient: datafusion::logical_expr::Expr,
    ) -> Result<(), Refusal> {
        let version = format!("{dataset}={}", self.dataset_version(dataset));
        let known = self.patient_level.0.lock().get(&version).copied();
        let one_row_each = match known {
            Some(v) => v,
            None => {
                let most = rows
                    .clone()
                    .filter(ident(key).is_not_null())
                    .and_then(|r| r.aggregate(vec![patient.alias("__p")], vec![count(lit(1)).alias("__rows")]))
                    .and_then(|r| r.aggregate(vec![], vec![max(col("__rows")).alias("__most")]))
                    .map_err(internal)?;
                let batches = most.collect().await.map_err(internal)?;
                let most = batches
                    .first()
                    .filter(|b| b.num_rows() > 0 && b.column(0).is_valid(0))
                    .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
                    .unwrap_or(0);
                let mut cache = self.patient_level.0.lock();
                if cache.len() >= REMEMBERED {
                    cache.clear();
                }
                cache.insert(version, most <= 1);
                most <= 1
            }
        };
        if one_row_each {
            Ok(())
        } else {
            Err(InvalidRequest::PatientAttribute(format!(
                "dataset '{dataset}' has more than one row for some patients at this site; patient attributes come \
                 from a dataset with one row per patient, such as fhir/patients"
            ))
            .into())
        }
    }
}
