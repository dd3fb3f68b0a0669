//! Converting the MII ontology's `mapping_cql.json` + `mapping_tree.json` into our format.
//!
//! Each ontology entry (context, key) becomes a rule for that one code; entries with the same
//! context, system and target are merged into one rule with a `codes` list. The tree file is
//! already in our `tree.json` format and is checked and passed through. What the entry's
//! FHIR paths mean is translated through the contract of docs/fhir-datasets.md:
//!
//! | resourceType | dataset, code element | value | attributes | time path → columns |
//! |---|---|---|---|---|
//! | Patient | patients, none | `gender` → concept on `gender`; `birthDate` → age | – | – |
//! | Condition | conditions, `code` | – | – | `recordedDate`, `onset` |
//! | Observation | observations, `code` | `value` → concept on `value`, quantity `value`/`value_unit` | – | `effective` |
//! | Procedure | procedures, `code` | – | – | `performed` |
//! | Specimen | specimens, `type` | – | Diagnose extension → reference via `diagnosis`; `collection.bodySite` → `bodySite` | `collection.collected` |
//! | Encounter | encounters, `class` (termCode path) or `type` | – | `type`, `serviceType` | `period` |
//! | Consent | consents, `provision.code` (termCode path `provision.provision.code`) or `primaryCode` on `category` | – | – | – |
//! | MedicationAdministration / -Request / -Statement | medication_uses, `medication`, kind | – | – | `effective`, `authoredOn` |
//!
//! `fixedCriteria` on `provision.provision.code` become one required concept per value. Any
//! other resource type, path or fixed criterion is not converted: the entry is skipped and
//! named in the result's `notes`, so a query using it fails with "no mapping" at its pointer.

use std::collections::HashMap;

use serde::Deserialize;

use crate::mapping::{
    AgeSpec, AttributeSpec, CodingSpec, ConceptSpec, ElementCoding, FixedSpec, Hierarchy, MAPPING_FORMAT, MappingFile,
    QuantitySpec, ReferenceSpec, RequiredConcept, Rule, TimeSpec, TreeRoot, ValueSpec,
};

/// Why an ontology mapping could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum OntologyError {
    #[error("ontology: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ontology: {0}")]
    Unsupported(String),
}

#[derive(Deserialize)]
struct Code {
    system: String,
    code: String,
}

#[derive(Deserialize)]
struct PathSpec {
    path: String,
}

#[derive(Deserialize)]
struct Attribute {
    key: Code,
    path: String,
    #[serde(default)]
    types: Vec<String>,
}

#[derive(Deserialize)]
struct Fixed {
    path: String,
    #[serde(default)]
    value: Vec<Code>,
}

#[derive(Deserialize)]
struct Entry {
    context: Code,
    key: Code,
    #[serde(rename = "resourceType")]
    resource_type: String,
    #[serde(rename = "termCode")]
    term_code: Option<PathSpec>,
    #[serde(rename = "primaryCode")]
    primary_code: Option<Code>,
    value: Option<PathSpec>,
    #[serde(default)]
    attributes: Vec<Attribute>,
    #[serde(rename = "timeRestriction")]
    time_restriction: Option<PathSpec>,
    #[serde(rename = "fixedCriteria", default)]
    fixed_criteria: Vec<Fixed>,
}

const BIOBANK_DIAGNOSE: &str =
    "https://www.medizininformatik-initiative.de/fhir/ext/modul-biobank/StructureDefinition/Diagnose";

fn time(start: &str, end: &str) -> Option<TimeSpec> {
    Some(TimeSpec { start: start.to_string(), end: end.to_string() })
}

/// The rule for one entry, or why it cannot be converted.
fn convert(entry: &Entry) -> Result<Rule, String> {
    let (dataset, default_element, kind) = match entry.resource_type.as_str() {
        "Patient" => ("patients", None, None),
        "Condition" => ("conditions", Some("code"), None),
        "Observation" => ("observations", Some("code"), None),
        "Procedure" => ("procedures", Some("code"), None),
        "Specimen" => ("specimens", Some("type"), None),
        "Encounter" => ("encounters", Some("type"), None),
        "Consent" => ("consents", Some("category"), None),
        "MedicationAdministration" => ("medication_uses", Some("medication"), Some("administration")),
        "MedicationRequest" => ("medication_uses", Some("medication"), Some("request")),
        "MedicationStatement" => ("medication_uses", Some("medication"), Some("statement")),
        other => return Err(format!("resource type {other} has no dataset")),
    };
    let mut rule = Rule {
        context: entry.context.code.clone(),
        systems: vec![entry.key.system.clone()],
        codes: Some(vec![entry.key.code.clone()]),
        hierarchy: Hierarchy::Tree,
        unmapped_message: None,
        per_code: HashMap::new(),
        dataset: dataset.to_string(),
        code_element: default_element.map(str::to_string),
        primary_code: None,
        required: Vec::new(),
        fixed: kind.map(|k| vec![FixedSpec { column: "kind".into(), equals: k.into() }]).unwrap_or_default(),
        value: ValueSpec::default(),
        attributes: Vec::new(),
        time: None,
    };
    if let Some(term) = &entry.term_code {
        let element = match (entry.resource_type.as_str(), term.path.as_str()) {
            ("Encounter", "class") => "class",
            ("Consent", "provision.provision.code") => "provision.code",
            (_, "code") if default_element == Some("code") => "code",
            (r, p) => return Err(format!("termCode path {p} of {r}")),
        };
        rule.code_element = Some(element.to_string());
    }
    if let Some(primary) = &entry.primary_code {
        let element = match entry.resource_type.as_str() {
            "Consent" => "category",
            r => default_element.ok_or_else(|| format!("primaryCode of {r}"))?,
        };
        rule.code_element = None;
        rule.primary_code = Some(ElementCoding {
            element: element.to_string(),
            system: primary.system.clone(),
            code: primary.code.clone(),
        });
    }
    if let Some(value) = &entry.value {
        match (entry.resource_type.as_str(), value.path.as_str()) {
            ("Patient", "gender") => {
                rule.value.concept =
                    Some(ConceptSpec { element: "gender".into(), systems: None, translate: Vec::new() })
            }
            ("Patient", "birthDate") => rule.value.age = Some(AgeSpec { column: "birth_date".into() }),
            ("Observation", "value") => {
                rule.value.concept =
                    Some(ConceptSpec { element: "value".into(), systems: None, translate: Vec::new() });
                rule.value.quantity = Some(QuantitySpec { column: "value".into(), unit_column: "value_unit".into() });
            }
            (r, p) => return Err(format!("value path {p} of {r}")),
        }
    }
    for a in &entry.attributes {
        let concept =
            |element: &str| ConceptSpec { element: element.to_string(), systems: None, translate: Vec::new() };
        let mut spec = AttributeSpec {
            code: a.key.code.clone(),
            systems: Some(vec![a.key.system.clone()]),
            concept: None,
            quantity: None,
            reference: None,
        };
        match (entry.resource_type.as_str(), a.path.as_str()) {
            ("Specimen", p) if p.contains(BIOBANK_DIAGNOSE) && a.types.iter().any(|t| t == "Reference") => {
                spec.reference = Some(ReferenceSpec { via: "diagnosis".into(), dataset: "conditions".into() })
            }
            ("Specimen", "collection.bodySite") => spec.concept = Some(concept("bodySite")),
            ("Encounter", "type") => spec.concept = Some(concept("type")),
            ("Encounter", "serviceType") => spec.concept = Some(concept("serviceType")),
            ("Condition", "bodySite") => spec.concept = Some(concept("bodySite")),
            ("Condition", "category") => spec.concept = Some(concept("category")),
            (r, p) => return Err(format!("attribute {} at path {p} of {r}", a.key.code)),
        }
        rule.attributes.push(spec);
    }
    if let Some(t) = &entry.time_restriction {
        rule.time = match (entry.resource_type.as_str(), t.path.as_str()) {
            ("Condition", "recordedDate") => time("recorded_date", "recorded_date"),
            ("Condition", "onset") => time("onset_start", "onset_end"),
            ("Observation", "effective") => time("effective_start", "effective_end"),
            ("Procedure", "performed") => time("performed_start", "performed_end"),
            ("Specimen", "collection.collected") => time("collected_start", "collected_end"),
            ("Encounter", "period") => time("period_start", "period_end"),
            ("MedicationAdministration" | "MedicationStatement", "effective") => time("time_start", "time_end"),
            ("MedicationRequest", "authoredOn") => time("time_start", "time_end"),
            (r, p) => return Err(format!("time path {p} of {r}")),
        };
    }
    for f in &entry.fixed_criteria {
        match (entry.resource_type.as_str(), f.path.as_str()) {
            ("Consent", "provision.provision.code") => {
                for v in &f.value {
                    rule.required.push(RequiredConcept {
                        element: "provision.code".into(),
                        codings: vec![CodingSpec { system: v.system.clone(), code: v.code.clone() }],
                    });
                }
            }
            (r, p) => return Err(format!("fixed criterion at path {p} of {r}")),
        }
    }
    Ok(rule)
}

/// Converts the ontology's `mapping_cql.json` and `mapping_tree.json` into (`mapping.json`,
/// `tree.json`) text for [`crate::Mapping::from_json`]. Entries that cannot be converted are
/// skipped and listed in the mapping's `notes`; it is an error when none can.
pub fn import_ontology(mapping_cql_json: &str, mapping_tree_json: &str) -> Result<(String, String), OntologyError> {
    let entries: Vec<Entry> = serde_json::from_str(mapping_cql_json)?;
    let trees: Vec<TreeRoot> = serde_json::from_str(mapping_tree_json)?;
    let mut rules: Vec<Rule> = Vec::new();
    let mut notes = Vec::new();
    let mut context_system: Option<String> = None;
    // (context, system) → indices of rules, to merge codes of rules with the same target.
    let mut index: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for entry in &entries {
        match context_system.as_deref() {
            None => context_system = Some(entry.context.system.clone()),
            Some(s) if s != entry.context.system => {
                return Err(OntologyError::Unsupported(format!(
                    "entries name two context systems, '{s}' and '{}'",
                    entry.context.system
                )));
            }
            Some(_) => {}
        }
        let rule = match convert(entry) {
            Ok(rule) => rule,
            Err(why) => {
                notes.push(format!(
                    "skipped context '{}' code '{}' ({}): {why}",
                    entry.context.code, entry.key.code, entry.key.system
                ));
                continue;
            }
        };
        let slot = index.entry((rule.context.clone(), entry.key.system.clone())).or_default();
        if let Some(&i) = slot.iter().find(|&&i| rules[i].same_target(&rule)) {
            if let Some(codes) = rules[i].codes.as_mut()
                && !codes.contains(&entry.key.code)
            {
                codes.push(entry.key.code.clone());
            }
            continue;
        }
        // A code already listed under another target of the same (context, system) would clash.
        if slot.iter().any(|&i| rules[i].codes.as_ref().is_some_and(|c| c.contains(&entry.key.code))) {
            notes.push(format!(
                "skipped context '{}' code '{}' ({}): a second entry with another target",
                entry.context.code, entry.key.code, entry.key.system
            ));
            continue;
        }
        slot.push(rules.len());
        rules.push(rule);
    }
    if rules.is_empty() {
        return Err(OntologyError::Unsupported(format!("no entry could be converted: {}", notes.join("; "))));
    }
    let file = MappingFile {
        format: MAPPING_FORMAT.to_string(),
        context_system: context_system.unwrap_or_default(),
        equivalent_systems: Vec::new(),
        rules,
        notes,
    };
    Ok((serde_json::to_string_pretty(&file)?, serde_json::to_string_pretty(&trees)?))
}
