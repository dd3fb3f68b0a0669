//! The FHIR resources written (only what is written), as serde structs that borrow from the
//! generated tables, and the fixed codings they use.

use super::*;

#[derive(Serialize, Clone, Copy)]
pub(super) struct Coding<'a> {
    pub(super) system: &'a str,
    pub(super) code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) display: Option<&'a str>,
}

pub(super) const fn coding<'a>(system: &'a str, code: &'a str, display: Option<&'a str>) -> Coding<'a> {
    Coding { system, code, display }
}

#[derive(Serialize)]
pub(super) struct Concept<'a> {
    pub(super) coding: &'a [Coding<'a>],
}

#[derive(Serialize)]
pub(super) struct Reference {
    pub(super) reference: String,
}

#[derive(Serialize)]
pub(super) struct Period {
    pub(super) start: Day,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) end: Option<Day>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Extension<'a> {
    pub(super) url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) value_coding: Option<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) value_reference: Option<Reference>,
}

#[derive(Serialize)]
pub(super) struct Extensions<'a> {
    pub(super) extension: [Extension<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Address<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) postal_code: &'a str,
    pub(super) state: &'a str,
    pub(super) country: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PatientRes<'a> {
    pub(super) resource_type: &'static str,
    pub(super) id: &'a str,
    pub(super) gender: &'a str,
    #[serde(rename = "_gender", skip_serializing_if = "Option::is_none")]
    pub(super) gender_ext: Option<Extensions<'a>>,
    pub(super) birth_date: Day,
    pub(super) deceased_boolean: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) address: &'a [Address<'a>],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConditionRes<'a> {
    pub(super) resource_type: &'static str,
    pub(super) id: &'a str,
    pub(super) clinical_status: Concept<'a>,
    pub(super) verification_status: Concept<'a>,
    pub(super) code: Concept<'a>,
    pub(super) subject: Reference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) encounter: Option<Reference>,
    pub(super) onset_date_time: Day,
    pub(super) recorded_date: Day,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Quantity<'a> {
    pub(super) value: f64,
    pub(super) unit: &'a str,
    pub(super) system: &'a str,
    pub(super) code: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ObservationRes<'a> {
    pub(super) resource_type: &'static str,
    pub(super) id: &'a str,
    pub(super) status: &'a str,
    pub(super) category: [Concept<'a>; 1],
    pub(super) code: Concept<'a>,
    pub(super) subject: Reference,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) encounter: Option<Reference>,
    pub(super) effective_date_time: Day,
    pub(super) value_quantity: Quantity<'a>,
}

#[derive(Serialize)]
pub(super) struct Diagnosis {
    pub(super) condition: Reference,
    pub(super) rank: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EncounterRes<'a> {
    pub(super) resource_type: &'static str,
    pub(super) id: &'a str,
    pub(super) status: &'a str,
    pub(super) class: Coding<'a>,
    #[serde(rename = "type")]
    pub(super) kind: &'a [Concept<'a>],
    pub(super) service_type: Concept<'a>,
    pub(super) subject: Reference,
    pub(super) period: Period,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) diagnosis: Vec<Diagnosis>,
}

#[derive(Serialize)]
pub(super) struct Collection {
    #[serde(rename = "collectedDateTime")]
    pub(super) collected: Day,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SpecimenRes<'a> {
    pub(super) resource_type: &'static str,
    pub(super) id: &'a str,
    pub(super) extension: [Extension<'a>; 1],
    pub(super) status: &'a str,
    #[serde(rename = "type")]
    pub(super) kind: Concept<'a>,
    pub(super) subject: Reference,
    pub(super) collection: Collection,
}

#[derive(Serialize)]
pub(super) struct Policy<'a> {
    pub(super) uri: &'a str,
}

#[derive(Serialize)]
pub(super) struct Provision<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(super) kind: Option<&'a str>,
    pub(super) period: Period,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) code: &'a [Concept<'a>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) purpose: &'a [Coding<'a>],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) provision: Vec<Provision<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConsentRes<'a> {
    pub(super) resource_type: &'static str,
    pub(super) id: &'a str,
    pub(super) status: &'a str,
    pub(super) scope: Concept<'a>,
    pub(super) category: [Concept<'a>; 1],
    pub(super) patient: Reference,
    pub(super) date_time: Day,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) policy: &'a [Policy<'a>],
    pub(super) provision: Provision<'a>,
}

pub(super) const ACTIVE: [Coding; 1] =
    [coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", None)];
pub(super) const CONFIRMED: [Coding; 1] =
    [coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", None)];
pub(super) const LABORATORY: [Coding; 1] = [coding(OBS_CATEGORY, "laboratory", Some("Laboratory"))];
pub(super) const VITAL_SIGNS: [Coding; 1] = [coding(OBS_CATEGORY, "vital-signs", Some("Vital Signs"))];
pub(super) const RESEARCH_SCOPE: [Coding; 1] =
    [coding("http://terminology.hl7.org/CodeSystem/consentscope", "research", None)];
pub(super) const BROAD_CONSENT_CATEGORY: [Coding; 1] =
    [coding(LOINC, "57016-8", Some("Privacy policy acknowledgment Document"))];
pub(super) const OBJECTION_CATEGORY: [Coding; 1] = [coding(LOINC, "59284-0", Some("Patient Consent"))];
pub(super) const COMMERCIAL: [Coding; 1] = [coding(RESEARCH_PURPOSE, "commercial", Some("commercial research"))];
pub(super) const BROAD_CONSENT_POLICY: [Policy; 1] = [Policy { uri: "urn:oid:2.16.840.1.113883.3.1937.777.24.2.1791" }];
pub(super) const EINRICHTUNGSKONTAKT: [Coding; 1] = [coding(KONTAKTEBENE, "einrichtungskontakt", None)];
pub(super) const NORMALSTATIONAER: [Coding; 1] = [coding(KONTAKTART, "normalstationaer", None)];
pub(super) const SERUM: [Coding; 1] = [coding(SNOMED, "119364003", Some("Serum specimen"))];
