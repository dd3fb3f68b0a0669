//! Feasibility questions: how many distinct patients match a cohort, across all sites. A
//! cohort without SQL is asked as `count(DISTINCT <patient key>)` on the `patients` dataset,
//! so it goes through the same planning, site checks, privacy path and merge as every query.

use verbund_proto::v1 as pb;

/// The dataset a cohort's patients are counted in (docs/fhir-datasets.md).
pub const PATIENTS: &str = "patients";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CohortError {
    #[error(
        "a cohort without SQL counts patients in the '{PATIENTS}' dataset, which no site asked serves \
         to this project; import FHIR data at the sites (verbund import) or add SQL to the cohort"
    )]
    NoPatients,
}

/// The SQL of a cohort count: the cohort's patients in the `patients` dataset.
pub fn count_sql(catalogue: &pb::Catalogue) -> Result<String, CohortError> {
    let patients = catalogue.datasets.iter().find(|d| d.name == PATIENTS).ok_or(CohortError::NoPatients)?;
    let key = patients.patient_key.replace('"', "\"\"");
    Ok(format!("SELECT count(DISTINCT \"{key}\") AS patients FROM {PATIENTS}"))
}
