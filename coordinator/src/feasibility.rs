//! Feasibility questions: how many distinct patients match a cohort, across all sites. A
//! cohort without SQL is asked as `count(DISTINCT <patient key>)` on the `patients` dataset,
//! so it goes through the same planning, site checks, privacy path and merge as every query.

use verbund_proto::v1 as pb;

/// The model of the dataset a cohort's patients are counted in (docs/fhir-datasets.md).
pub const PATIENTS: &str = "fhir/patients";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CohortError {
    #[error("a query carries a cohort both as CCDL and typed; send one")]
    Twice,
    /// Every problem of a CCDL document, each at its JSON Pointer.
    #[error("{0}")]
    Ccdl(verbund_ccdl::CcdlErrors),
    #[error(
        "a cohort without SQL counts patients in the FHIR patients dataset ('{PATIENTS}'), which no site \
         asked serves to this project; import FHIR data at the sites (verbund import) or add SQL to the cohort"
    )]
    NoPatients,
}

/// The SQL of a cohort count: the cohort's patients in the `patients` dataset.
pub fn count_sql(catalogue: &pb::Catalogue) -> Result<String, CohortError> {
    let patients = verbund_query::cohort::find_dataset(catalogue, PATIENTS).ok_or(CohortError::NoPatients)?;
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    Ok(format!("SELECT count(DISTINCT {}) AS patients FROM {}", quoted(&patients.patient_key), quoted(&patients.name)))
}

/// The cohort of a CCDL document, with the built-in mapping; ages are relative to today (UTC).
pub fn cohort_of_ccdl(ccdl: &str) -> Result<pb::Cohort, CohortError> {
    let today = (verbund_proto::unix_ms() / 86_400_000) as i32;
    let mut cohort = verbund_ccdl::compile(ccdl, verbund_ccdl::Mapping::builtin(), today).map_err(CohortError::Ccdl)?;
    // The mapping names the datasets of docs/fhir-datasets.md; each site resolves the model to
    // its own dataset of that shape.
    for group in cohort.inclusion.iter_mut().chain(cohort.exclusion.iter_mut()) {
        for criterion in &mut group.criteria {
            as_model(criterion);
        }
    }
    Ok(cohort)
}

fn as_model(criterion: &mut pb::Criterion) {
    if !criterion.dataset.contains('/') {
        criterion.dataset = format!("fhir/{}", criterion.dataset);
    }
    for attribute in &mut criterion.attributes {
        if let Some(pb::attribute_filter::Kind::Linked(linked)) = &mut attribute.kind {
            linked.criteria.iter_mut().for_each(as_model);
        }
    }
}

/// The cohort of a researcher's request, typed or as CCDL (at most one of the two).
pub fn cohort_of(typed: Option<&pb::Cohort>, ccdl: &str) -> Result<Option<pb::Cohort>, CohortError> {
    match (typed, ccdl.trim()) {
        (Some(_), ccdl) if !ccdl.is_empty() => Err(CohortError::Twice),
        (Some(cohort), _) => Ok(Some(cohort.clone())),
        (None, "") => Ok(None),
        (None, ccdl) => Ok(Some(cohort_of_ccdl(ccdl)?)),
    }
}
