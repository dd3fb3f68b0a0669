//! Converting the MII ontology's `mapping_cql.json` + `mapping_tree.json` into our format.

/// Why an ontology mapping could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum OntologyError {
    #[error("ontology: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ontology: {0}")]
    Unsupported(String),
}

/// Converts the ontology's files into (`mapping.json`, `tree.json`) text.
pub fn import_ontology(_mapping_cql_json: &str, _mapping_tree_json: &str) -> Result<(String, String), OntologyError> {
    Err(OntologyError::Unsupported("not yet".to_string()))
}
