//! The few FHIR R4 fields the importer reads (decision D1): our own serde structs, unknown fields
//! ignored, one superset struct for every imported resource type. Only resources whose
//! `resourceType` is imported are parsed with [`AnyResource`] (other types may use the same
//! field names with other JSON types, e.g. `Group.type` is a string).

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Just enough to route a resource and to name it in an issue.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    pub resource_type: Option<String>,
    pub id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Coding {
    pub system: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CodeableConcept {
    #[serde(default)]
    pub coding: Vec<Coding>,
}

impl CodeableConcept {
    /// The first coding (system, code).
    pub fn first(&self) -> (Option<&str>, Option<&str>) {
        match self.coding.first() {
            Some(c) => (c.system.as_deref(), c.code.as_deref()),
            None => (None, None),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Reference {
    pub reference: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Period {
    pub start: Option<String>,
    pub end: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Quantity {
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub code: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub postal_code: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    pub code: Option<CodeableConcept>,
    pub value_quantity: Option<Quantity>,
    pub value_codeable_concept: Option<CodeableConcept>,
    #[serde(default)]
    pub interpretation: Vec<CodeableConcept>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    pub url: Option<String>,
    pub value_reference: Option<Reference>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Collection {
    pub collected_date_time: Option<String>,
    pub collected_period: Option<Period>,
    pub body_site: Option<CodeableConcept>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Policy {
    pub uri: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Provision {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub period: Option<Period>,
    #[serde(default)]
    pub code: Vec<CodeableConcept>,
    #[serde(default)]
    pub purpose: Vec<Coding>,
    #[serde(default)]
    pub provision: Vec<Provision>,
}

/// A contained Medication (only its id and code matter).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainedMedication {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub code: Option<CodeableConcept>,
}

/// Every field of every imported resource type that a dataset needs.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnyResource {
    pub resource_type: String,
    pub status: Option<String>,
    pub subject: Option<Reference>,
    pub patient: Option<Reference>,
    pub encounter: Option<Reference>,
    pub code: Option<CodeableConcept>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub category: Vec<CodeableConcept>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub body_site: Vec<CodeableConcept>,
    // Patient
    pub gender: Option<String>,
    pub birth_date: Option<String>,
    pub deceased_boolean: Option<bool>,
    pub deceased_date_time: Option<String>,
    #[serde(default)]
    pub address: Vec<Address>,
    // Condition
    pub clinical_status: Option<CodeableConcept>,
    pub verification_status: Option<CodeableConcept>,
    pub onset_date_time: Option<String>,
    pub onset_period: Option<Period>,
    pub recorded_date: Option<String>,
    // Observation
    pub value_quantity: Option<Quantity>,
    pub value_codeable_concept: Option<CodeableConcept>,
    #[serde(default)]
    pub interpretation: Vec<CodeableConcept>,
    pub effective_date_time: Option<String>,
    pub effective_instant: Option<String>,
    pub effective_period: Option<Period>,
    #[serde(default)]
    pub component: Vec<Component>,
    // Encounter
    pub class: Option<Coding>,
    #[serde(rename = "type", default, deserialize_with = "one_or_many")]
    pub kind: Vec<CodeableConcept>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub service_type: Vec<CodeableConcept>,
    pub period: Option<Period>,
    /// `Encounter.partOf` is one Reference, `Observation.partOf` and others an array.
    #[serde(default, deserialize_with = "one_or_many")]
    pub part_of: Vec<Reference>,
    // Procedure
    pub performed_date_time: Option<String>,
    pub performed_period: Option<Period>,
    // Medication uses
    pub medication_reference: Option<Reference>,
    pub medication_codeable_concept: Option<CodeableConcept>,
    pub authored_on: Option<String>,
    #[serde(default)]
    pub contained: Vec<Box<RawValue>>,
    // Specimen
    pub collection: Option<Collection>,
    #[serde(default)]
    pub extension: Vec<Extension>,
    // Consent
    pub scope: Option<CodeableConcept>,
    pub date_time: Option<String>,
    #[serde(default)]
    pub policy: Vec<Policy>,
    pub provision: Option<Provision>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

/// An element that is a single value in one resource type and an array in another
/// (`Procedure.category` vs `Condition.category`, `Specimen.type` vs `Encounter.type`).
fn one_or_many<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(match Option::<OneOrMany<T>>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::Many(v)) => v,
        Some(OneOrMany::One(t)) => vec![t],
    })
}

/// A Bundle entry (the resource is parsed separately so that a bad one is reported alone).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub full_url: Option<String>,
    pub resource: Option<Box<RawValue>>,
    pub request: Option<Request>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Request {
    pub method: Option<String>,
    pub url: Option<String>,
}

/// The first pass over a Bundle that uses `urn:` fullUrls.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryHead {
    pub full_url: Option<String>,
    pub resource: Option<Head>,
}
