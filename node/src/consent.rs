//! Which patients a project's answers may count, from FHIR Consent (the `consent_provisions`
//! dataset of `verbund import`) and the site's policy: patients who objected to the project's
//! purpose or to the project are left out, and with `[consent] require`, only patients who
//! permitted every required policy code count. The set is computed once per (project, day,
//! consent data) and narrows every query's rows, before any grouping, bounding or aggregate,
//! in every kind of answer.

use crate::cohort::as_text;
use crate::engine::{Engine, internal};
use crate::refusal::Refusal;
use aws_lc_rs::digest;
use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::JoinType;
use datafusion::datasource::MemTable;
use datafusion::prelude::{DataFrame, col, ident, lit};
use std::sync::Arc;

/// The model of the dataset of consent provisions (docs/fhir-datasets.md).
pub const PROVISIONS: &str = "fhir/consent_provisions";
/// The code system of a provision's purpose naming a kind of research ("commercial").
pub const PURPOSE_SYSTEM: &str = "https://verbund.dev/fhir/CodeSystem/research-purpose";
/// The code system of a provision's purpose naming one project.
pub const PROJECT_SYSTEM: &str = "https://verbund.dev/fhir/CodeSystem/research-project";

const PATIENT: &str = "__consent_patient";

/// The patients a project's answers count.
#[derive(Clone)]
pub(crate) enum Population {
    /// No consent data and no requirement: every patient.
    Everyone,
    /// Every patient except these (their objections).
    Except(Arc<PatientSet>),
    /// Only these (those who permitted what the policy requires, less objections).
    Only(Arc<PatientSet>),
}

pub(crate) struct PatientSet {
    table: Arc<MemTable>,
    /// SHA-256 over the sorted ids: part of the noise's data version, so that a change of
    /// the set (a new objection, a consent that expired today) changes the noise too.
    pub(crate) digest: String,
}

#[derive(Default)]
pub(crate) struct PopulationCache {
    entries: parking_lot::Mutex<Vec<(String, Population)>>,
}

impl PopulationCache {
    pub(crate) fn clear(&self) {
        self.entries.lock().clear();
    }
}

impl Population {
    /// Keeps the rows of `df` whose patient may be counted.
    pub(crate) fn narrow(
        &self,
        ctx: &datafusion::prelude::SessionContext,
        df: DataFrame,
        patient_key: &str,
    ) -> Result<DataFrame, Refusal> {
        let (set, join) = match self {
            Population::Everyone => return Ok(df),
            Population::Except(set) => (set, JoinType::LeftAnti),
            Population::Only(set) => (set, JoinType::LeftSemi),
        };
        let patients = ctx.read_table(set.table.clone()).map_err(internal)?;
        let key = as_text(&df, patient_key);
        // Rows that name no patient belong to nobody who consented or objected: under a
        // requirement they are left out (the semi join drops them), otherwise kept.
        df.join_on(patients, join, [key.eq(col(PATIENT))]).map_err(internal)
    }

    pub(crate) fn digest(&self) -> Option<&str> {
        match self {
            Population::Everyone => None,
            Population::Except(s) | Population::Only(s) => Some(&s.digest),
        }
    }
}

impl Engine {
    /// The population of `project` on `day` (days since 1970-01-01).
    pub(crate) async fn population(&self, project: &str, day: i32) -> Result<Population, Refusal> {
        let require = &self.policy().consent.require;
        let data = self.data();
        let Some(provisions) = verbund_query::cohort::find_dataset(data.catalogue(), PROVISIONS) else {
            if require.is_empty() {
                return Ok(Population::Everyone);
            }
            return Err(Refusal::ConsentUnavailable);
        };
        let provisions = provisions.name.clone();
        let purpose =
            verbund_policies::ProjectRule::of(&self.policy().projects, project).and_then(|r| r.purpose.clone());
        let key = format!("{project}\n{day}\n{}\n{purpose:?}", self.dataset_version(&provisions));
        if let Some((_, p)) = self.populations().entries.lock().iter().find(|(k, _)| *k == key) {
            return Ok(p.clone());
        }
        let population = self.compute_population(&provisions, project, purpose.as_deref(), day).await?;
        let mut entries = self.populations().entries.lock();
        if entries.len() >= 16 {
            entries.remove(0);
        }
        entries.push((key, population.clone()));
        Ok(population)
    }

    async fn compute_population(
        &self,
        dataset: &str,
        project: &str,
        purpose: Option<&str>,
        day: i32,
    ) -> Result<Population, Refusal> {
        let provisions = || async { self.session().table(dataset).await.map_err(internal) };
        let today = lit(datafusion::common::ScalarValue::Date32(Some(day)));
        let active = || {
            ident("status")
                .eq(lit("active"))
                .and(ident("period_start").is_null().or(ident("period_start").lt_eq(today.clone())))
                .and(ident("period_end").is_null().or(ident("period_end").gt_eq(today.clone())))
        };
        let patients = |df: DataFrame| -> Result<DataFrame, Refusal> {
            let key = as_text(&df, "patient_id");
            df.filter(key.clone().is_not_null()).and_then(|df| df.select(vec![key.alias(PATIENT)])).map_err(internal)
        };
        let mut against = ident("purpose_system").eq(lit(PROJECT_SYSTEM)).and(ident("purpose_code").eq(lit(project)));
        if let Some(purpose) = purpose {
            against =
                against.or(ident("purpose_system").eq(lit(PURPOSE_SYSTEM)).and(ident("purpose_code").eq(lit(purpose))));
        }
        let deny = || ident("provision_type").eq(lit("deny"));
        let objections = patients(provisions().await?.filter(active().and(deny()).and(against)).map_err(internal)?)?;

        let require = &self.policy().consent.require;
        if require.is_empty() {
            return Ok(Population::Except(self.patient_set(objections).await?));
        }
        let mut eligible: Option<DataFrame> = None;
        for code in require {
            let with_code = || active().and(ident("code").eq(lit(code.clone())));
            let permits = patients(
                provisions()
                    .await?
                    .filter(with_code().and(ident("provision_type").eq(lit("permit"))))
                    .map_err(internal)?,
            )?;
            let revoked = patients(provisions().await?.filter(with_code().and(deny())).map_err(internal)?)?
                .select(vec![col(PATIENT).alias("__revoked")])
                .map_err(internal)?;
            let permitted =
                permits.join_on(revoked, JoinType::LeftAnti, [col(PATIENT).eq(col("__revoked"))]).map_err(internal)?;
            eligible = Some(match eligible {
                None => permitted,
                Some(e) => {
                    let other = permitted.select(vec![col(PATIENT).alias("__other")]).map_err(internal)?;
                    e.join_on(other, JoinType::LeftSemi, [col(PATIENT).eq(col("__other"))]).map_err(internal)?
                }
            });
        }
        let eligible = eligible.ok_or_else(|| Refusal::internal("no required consent code"))?;
        let objections = objections.select(vec![col(PATIENT).alias("__objected")]).map_err(internal)?;
        let eligible =
            eligible.join_on(objections, JoinType::LeftAnti, [col(PATIENT).eq(col("__objected"))]).map_err(internal)?;
        Ok(Population::Only(self.patient_set(eligible).await?))
    }

    /// Collects a set of patients (column `PATIENT`) into a table to join with, and its digest.
    async fn patient_set(&self, df: DataFrame) -> Result<Arc<PatientSet>, Refusal> {
        let batches = df.distinct().map_err(internal)?.collect().await.map_err(internal)?;
        let mut ids: Vec<String> = Vec::new();
        for b in &batches {
            let column =
                b.column(0).as_string_opt::<i32>().ok_or_else(|| Refusal::internal("patient ids are not text"))?;
            ids.extend(column.iter().flatten().map(str::to_string));
        }
        ids.sort_unstable();
        let mut hash = digest::Context::new(&digest::SHA256);
        for id in &ids {
            hash.update(&(id.len() as u64).to_le_bytes());
            hash.update(id.as_bytes());
        }
        let digest = hex_string(hash.finish().as_ref());
        let schema = Arc::new(Schema::new(vec![Field::new(PATIENT, DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(ids))])
            .map_err(|e| internal(e.into()))?;
        let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(internal)?;
        Ok(Arc::new(PatientSet { table: Arc::new(table), digest }))
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
