//! CCDL front-end: validates a Clinical Cohort Definition Language document (the MII's
//! "structured query") against its JSON Schema and compiles it, through a mapping
//! (docs/ccdl-mapping.md), into a typed [`pb::Cohort`] over the clinical datasets of
//! docs/fhir-datasets.md.
//!
//! Pure: no I/O, no clock (ages are computed from the `today` passed in).

mod compile;
pub mod dates;
mod mapping;
mod ontology;
mod validate;

use std::fmt;

pub use mapping::{
    AgeSpec, AttributeSpec, CodingSpec, ConceptSpec, ElementCoding, FixedSpec, Hierarchy, MAPPING_FORMAT, Mapping,
    MappingError, MappingFile, PerCode, QuantitySpec, ReferenceSpec, RequiredConcept, Rule, TimeSpec, Translation,
    TreeContext, TreeEntry, TreeRoot, ValueSpec,
};
pub use ontology::{OntologyError, import_ontology};
pub use validate::{LEGACY_VERSIONS, MAX_DEPTH, MAX_DOCUMENT_BYTES};
use verbund_proto::v1 as pb;

/// Most criteria in one document (nested reference criteria included).
pub const MAX_CRITERIA: usize = 256;
/// Most codings and prefixes in one compiled cohort, after hierarchy expansion.
pub const MAX_CODES: usize = 50_000;
/// Most groups (inclusion and exclusion together).
pub const MAX_GROUPS: usize = 64;

/// One problem with a document, located by a JSON Pointer into it ("" is the whole document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcdlError {
    pub pointer: String,
    pub message: String,
}

/// Every problem found with a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CcdlErrors(pub Vec<CcdlError>);

impl fmt::Display for CcdlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "ccdl: {}", self.message)
        } else {
            write!(f, "ccdl: {}: {}", self.pointer, self.message)
        }
    }
}

impl fmt::Display for CcdlErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CcdlErrors {}

/// Validates `ccdl_json` and compiles it into a cohort; `today` (days since 1970-01-01) is the
/// reference date for ages.
pub fn compile(ccdl_json: &str, mapping: &Mapping, today: i32) -> Result<pb::Cohort, CcdlErrors> {
    let document =
        validate::parse_and_validate(ccdl_json).map_err(|(errors, document)| annotate(errors, document.as_ref()))?;
    compile::compile_document(&document, mapping, today).map_err(|errors| annotate(errors, Some(&document)))
}

/// Validates `ccdl_json` against the schema only.
pub fn validate(ccdl_json: &str) -> Result<(), CcdlErrors> {
    validate::parse_and_validate(ccdl_json)
        .map(|_| ())
        .map_err(|(errors, document)| annotate(errors, document.as_ref()))
}

/// Adds "(criterion CONTEXT CODE)" to errors located inside a criterion.
fn annotate(errors: Vec<CcdlError>, document: Option<&serde_json::Value>) -> CcdlErrors {
    CcdlErrors(
        errors
            .into_iter()
            .map(|mut e| {
                if let Some(label) = document.and_then(|d| criterion_label(d, &e.pointer)) {
                    e.message = format!("{} (criterion {label})", e.message);
                }
                e
            })
            .collect(),
    )
}

/// "CONTEXT CODE" of the innermost criterion containing `pointer`.
fn criterion_label(document: &serde_json::Value, pointer: &str) -> Option<String> {
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    // A criterion sits at /(inclusion|exclusion)Criteria/i/j, and below it at
    // .../attributeFilters/k/criteria/m.
    let mut end = None;
    if parts.len() >= 3 && matches!(parts[0], "inclusionCriteria" | "exclusionCriteria") {
        end = Some(3);
        if parts.len() >= 7 && parts[3] == "attributeFilters" && parts[5] == "criteria" {
            end = Some(7);
        }
    }
    let end = end?;
    let criterion = document.pointer(&format!("/{}", parts[..end].join("/")))?;
    let context = criterion.pointer("/context/code").and_then(|v| v.as_str()).unwrap_or("?");
    let code = criterion.pointer("/termCodes/0/code").and_then(|v| v.as_str()).unwrap_or("?");
    Some(format!("{context} {code}"))
}
