//! The generated population as FHIR R4 JSON, in the shape of the German Medical Informatics
//! Initiative's (MII) core data set: Bulk Data NDJSON (one file per resource type, plain or
//! gzip) or transaction Bundles.
//!
//! What is written, per site and patient (rows of the generated tables, in table order):
//! - `Patient` (`patients` row): gender (`diverse` becomes `other` with the German
//!   `gender-amtlich-de` extension `D`), birthDate, deceasedBoolean, an address with a German
//!   postal code drawn from the patient's region.
//! - `Condition` (`conditions` row): ICD-10-GM and SNOMED CT codings, onsetDateTime and
//!   recordedDate (both the onset date), clinical and verification status.
//! - `Observation` (`observations` row): LOINC code, valueQuantity with UCUM unit, category
//!   laboratory or vital-signs, effectiveDateTime, status final, the visit's Encounter.
//! - `Encounter`, derived (the generator has no admissions table): one ambulatory (`AMB`)
//!   encounter per distinct day of a patient's observations, and one inpatient (`IMP`) stay per
//!   acute diagnosis (myocardial infarction, hip fracture) starting on its onset; the Condition
//!   names it, and the stay names the Condition as its diagnosis.
//! - `Consent`: an MII broad consent for about 90 % of the patients (deterministic in the
//!   patient id and birth date), and an objection to commercial research for about 2 %.
//! - `Specimen`: a serum sample for about 40 % of the patients with type 2 diabetes, linked to
//!   the E11.9 Condition by the MII biobank `Diagnose` extension.
//!
//! Resources are serialised one at a time from the Arrow tables into a buffered writer: memory
//! stays bounded by the generated tables. Output is deterministic: same tables, same bytes.

use crate::{Error, REFERENCE_DAY, Result, SiteData};
use arrow::array::{Array, BooleanArray, Date32Array, Float64Array, RecordBatch, StringArray};
use serde::Serialize;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// How the resources are laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirLayout {
    /// `<Type>.ndjson`, one resource per line.
    Ndjson,
    /// `<Type>.ndjson.gz`, the same gzip-compressed.
    NdjsonGzip,
    /// `bundle-0001.json`, ...: transaction Bundles of at most [`MAX_BUNDLE_ENTRIES`] entries,
    /// a patient and all their resources always in the same Bundle.
    Bundles,
}

/// One site's FHIR output.
#[derive(Debug, Clone)]
pub struct WrittenFhir {
    pub site: String,
    pub files: Vec<PathBuf>,
    pub resources: usize,
}

/// Entries per transaction Bundle at most.
pub const MAX_BUNDLE_ENTRIES: usize = 1000;

/// The resource types written, in file order.
pub const RESOURCE_TYPES: [&str; 6] = ["Patient", "Encounter", "Condition", "Observation", "Specimen", "Consent"];

pub const ICD10GM: &str = "http://fhir.de/CodeSystem/bfarm/icd-10-gm";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// Codes of the MII broad consent's policies (nested provisions).
pub const CONSENT_POLICY: &str = "urn:oid:2.16.840.1.113883.3.1937.777.24.5.3";
/// The purpose an objection denies.
pub const RESEARCH_PURPOSE: &str = "https://verbund.dev/fhir/CodeSystem/research-purpose";
pub const DIAGNOSE_EXTENSION: &str =
    "https://www.medizininformatik-initiative.de/fhir/ext/modul-biobank/StructureDefinition/Diagnose";

const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const FACHABTEILUNG: &str = "http://fhir.de/CodeSystem/dkgev/Fachabteilungsschluessel";
const KONTAKTEBENE: &str = "http://fhir.de/CodeSystem/Kontaktebene";
const KONTAKTART: &str = "http://fhir.de/CodeSystem/kontaktart-de";

/// Per mille of patients with a broad consent, and with an objection to commercial research.
pub const BROAD_CONSENT_PER_MILLE: u64 = 900;
pub const OBJECTION_PER_MILLE: u64 = 20;
/// Per mille of type 2 diabetics with a serum sample.
pub const SPECIMEN_PER_MILLE: u64 = 400;
/// Diagnoses that come with an inpatient stay: (ICD-10-GM, department key, days).
pub const INPATIENT_DIAGNOSES: [(&str, &str, i32); 2] = [("I21.9", "0300", 7), ("S72.00", "1600", 12)];
/// The diagnosis a specimen is linked to.
pub const SPECIMEN_DIAGNOSIS: &str = "E11.9";

const BROAD_CONSENT_CODES: [(&str, &str); 7] = [
    ("2.16.840.1.113883.3.1937.777.24.5.3.6", "MDAT erheben"),
    ("2.16.840.1.113883.3.1937.777.24.5.3.7", "MDAT speichern, verarbeiten"),
    ("2.16.840.1.113883.3.1937.777.24.5.3.8", "MDAT wissenschaftlich nutzen EU DSGVO NIVEAU"),
    ("2.16.840.1.113883.3.1937.777.24.5.3.9", "MDAT zusammenfuehren Dritte"),
    ("2.16.840.1.113883.3.1937.777.24.5.3.19", "BIOMAT erheben"),
    ("2.16.840.1.113883.3.1937.777.24.5.3.20", "BIOMAT lagern verarbeiten"),
    ("2.16.840.1.113883.3.1937.777.24.5.3.22", "BIOMAT wissenschaftlich nutzen EU DSGVO NIVEAU"),
];

/// Writes every site's data as FHIR under `dir/<site>/`.
pub fn write_fhir(dir: &Path, sites: &[SiteData], layout: FhirLayout) -> Result<Vec<WrittenFhir>> {
    sites
        .iter()
        .map(|site| {
            let site_dir = dir.join(&site.site);
            std::fs::create_dir_all(&site_dir).map_err(|error| Error::Io { path: site_dir.clone(), error })?;
            let tables = Tables::of(site)?;
            let (files, resources) = match layout {
                FhirLayout::Ndjson | FhirLayout::NdjsonGzip => {
                    let mut sink = NdjsonSink::new(site_dir, layout == FhirLayout::NdjsonGzip);
                    emit_site(&tables, &mut sink)?;
                    sink.finish()?
                }
                FhirLayout::Bundles => {
                    let mut sink = BundleSink::new(site_dir);
                    emit_site(&tables, &mut sink)?;
                    sink.finish()?
                }
            };
            Ok(WrittenFhir { site: site.site.clone(), files, resources })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Dates, hashes, ids

/// A calendar date, as days since 1970-01-01, written `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(pub i32);

impl Day {
    /// (year, month, day) of the proleptic Gregorian calendar.
    pub fn civil(self) -> (i64, u32, u32) {
        let z = self.0 as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    pub fn from_civil(y: i64, m: u32, d: u32) -> Day {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
        let doy = (153 * mp + 2) / 5 + d as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Day((era * 146_097 + doe - 719_468) as i32)
    }

    /// The same calendar day `years` later (29 February becomes 28 February).
    pub fn plus_years(self, years: i64) -> Day {
        let (y, m, d) = self.civil();
        let d = if m == 2 && d == 29 { 28 } else { d };
        Day::from_civil(y + years, m, d)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.civil();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl Serialize for Day {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic v4-style uuid for a resource: two independent 64-bit hashes of `Type/id`.
pub fn resource_uuid(resource_type: &str, id: &str) -> String {
    let hash = |basis: u64| {
        let h = fnv1a(resource_type.as_bytes(), basis);
        mix(fnv1a(id.as_bytes(), fnv1a(b"/", h)))
    };
    let hi = (hash(0xCBF2_9CE4_8422_2325) & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (hash(0x6C62_272E_07BB_0142) & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// A patient's deterministic draws: `roll(salt) % n`.
struct Dice(u64);

impl Dice {
    fn new(patient_id: &str, birth_day: i32) -> Dice {
        Dice(fnv1a(patient_id.as_bytes(), 0xCBF2_9CE4_8422_2325) ^ ((birth_day as u32 as u64) << 32))
    }
    fn roll(&self, salt: u64, n: u64) -> u64 {
        mix(self.0 ^ mix(salt)) % n.max(1)
    }
    fn day_between(&self, salt: u64, from: i32, to_exclusive: i32) -> Day {
        Day(from + self.roll(salt, (to_exclusive - from).max(1) as u64) as i32)
    }
}

/// A region's German postal code prefixes (two digits) and its ISO 3166-2 code.
fn postal_prefixes(region: &str) -> Option<(&'static [&'static str], &'static str)> {
    Some(match region {
        "Hamburg" => (&["20", "21", "22"], "DE-HH"),
        "Schleswig-Holstein" => (&["23", "24", "25"], "DE-SH"),
        "Niedersachsen" => (&["26", "27", "29", "30", "31", "37", "38", "49"], "DE-NI"),
        "Bayern" => {
            (&["80", "81", "82", "83", "84", "85", "86", "87", "90", "91", "92", "93", "94", "95", "96", "97"], "DE-BY")
        }
        "Baden-Wuerttemberg" => {
            (&["68", "69", "70", "71", "72", "73", "74", "75", "76", "77", "78", "79", "88", "89"], "DE-BW")
        }
        "Nordrhein-Westfalen" => (
            &["32", "33", "40", "41", "42", "44", "45", "46", "47", "48", "50", "51", "52", "53", "57", "58", "59"],
            "DE-NW",
        ),
        "Hessen" => (&["34", "35", "36", "60", "61", "63", "64", "65"], "DE-HE"),
        _ => return None,
    })
}

/// UCUM code → human-readable unit.
fn unit_display(ucum: &str) -> &str {
    match ucum {
        "mm[Hg]" => "mmHg",
        other => other,
    }
}

/// Vital signs by LOINC code; every other observation is a laboratory value.
fn is_vital_sign(loinc: &str) -> bool {
    matches!(loinc, "8480-6" | "29463-7" | "8462-4" | "8867-4" | "39156-5" | "8302-2")
}

// ---------------------------------------------------------------------------------------------
// The generated tables

struct Tables<'a> {
    patients: PatientCols<'a>,
    conditions: ConditionCols<'a>,
    observations: ObservationCols<'a>,
}

struct PatientCols<'a> {
    id: &'a StringArray,
    sex: &'a StringArray,
    birth: &'a Date32Array,
    region: &'a StringArray,
    deceased: &'a BooleanArray,
}

struct ConditionCols<'a> {
    patient: &'a StringArray,
    icd10: &'a StringArray,
    snomed: &'a StringArray,
    description: &'a StringArray,
    onset: &'a Date32Array,
}

struct ObservationCols<'a> {
    patient: &'a StringArray,
    loinc: &'a StringArray,
    value: &'a Float64Array,
    unit: &'a StringArray,
    effective: &'a Date32Array,
}

fn table<'a>(site: &'a SiteData, name: &str) -> Result<&'a RecordBatch> {
    site.tables
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)
        .ok_or_else(|| malformed(site, format!("no table {name}")))
}

fn column<'a, A: Array + 'static>(site: &SiteData, batch: &'a RecordBatch, name: &str) -> Result<&'a A> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| malformed(site, format!("no column {name} of the expected type")))
}

fn malformed(site: &SiteData, what: String) -> Error {
    Error::Encode { path: PathBuf::from(&site.site), error: what.into() }
}

impl<'a> Tables<'a> {
    fn of(site: &'a SiteData) -> Result<Tables<'a>> {
        let p = table(site, "patients")?;
        let c = table(site, "conditions")?;
        let o = table(site, "observations")?;
        Ok(Tables {
            patients: PatientCols {
                id: column(site, p, "patient_id")?,
                sex: column(site, p, "sex")?,
                birth: column(site, p, "birth_date")?,
                region: column(site, p, "region")?,
                deceased: column(site, p, "deceased")?,
            },
            conditions: ConditionCols {
                patient: column(site, c, "patient_id")?,
                icd10: column(site, c, "icd10")?,
                snomed: column(site, c, "snomed")?,
                description: column(site, c, "description")?,
                onset: column(site, c, "onset_date")?,
            },
            observations: ObservationCols {
                patient: column(site, o, "patient_id")?,
                loinc: column(site, o, "loinc")?,
                value: column(site, o, "value")?,
                unit: column(site, o, "unit")?,
                effective: column(site, o, "effective_date")?,
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// FHIR shapes (only what is written)

#[derive(Serialize, Clone, Copy)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

const fn coding<'a>(system: &'a str, code: &'a str, display: Option<&'a str>) -> Coding<'a> {
    Coding { system, code, display }
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: &'a [Coding<'a>],
}

#[derive(Serialize)]
struct Reference {
    reference: String,
}

#[derive(Serialize)]
struct Period {
    start: Day,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<Day>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Extension<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_coding: Option<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_reference: Option<Reference>,
}

#[derive(Serialize)]
struct Extensions<'a> {
    extension: [Extension<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Address<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    postal_code: &'a str,
    state: &'a str,
    country: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PatientRes<'a> {
    resource_type: &'static str,
    id: &'a str,
    gender: &'a str,
    #[serde(rename = "_gender", skip_serializing_if = "Option::is_none")]
    gender_ext: Option<Extensions<'a>>,
    birth_date: Day,
    deceased_boolean: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    address: &'a [Address<'a>],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConditionRes<'a> {
    resource_type: &'static str,
    id: &'a str,
    clinical_status: Concept<'a>,
    verification_status: Concept<'a>,
    code: Concept<'a>,
    subject: Reference,
    #[serde(skip_serializing_if = "Option::is_none")]
    encounter: Option<Reference>,
    onset_date_time: Day,
    recorded_date: Day,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Quantity<'a> {
    value: f64,
    unit: &'a str,
    system: &'a str,
    code: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObservationRes<'a> {
    resource_type: &'static str,
    id: &'a str,
    status: &'a str,
    category: [Concept<'a>; 1],
    code: Concept<'a>,
    subject: Reference,
    #[serde(skip_serializing_if = "Option::is_none")]
    encounter: Option<Reference>,
    effective_date_time: Day,
    value_quantity: Quantity<'a>,
}

#[derive(Serialize)]
struct Diagnosis {
    condition: Reference,
    rank: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EncounterRes<'a> {
    resource_type: &'static str,
    id: &'a str,
    status: &'a str,
    class: Coding<'a>,
    #[serde(rename = "type")]
    kind: &'a [Concept<'a>],
    service_type: Concept<'a>,
    subject: Reference,
    period: Period,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    diagnosis: Vec<Diagnosis>,
}

#[derive(Serialize)]
struct Collection {
    #[serde(rename = "collectedDateTime")]
    collected: Day,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecimenRes<'a> {
    resource_type: &'static str,
    id: &'a str,
    extension: [Extension<'a>; 1],
    status: &'a str,
    #[serde(rename = "type")]
    kind: Concept<'a>,
    subject: Reference,
    collection: Collection,
}

#[derive(Serialize)]
struct Policy<'a> {
    uri: &'a str,
}

#[derive(Serialize)]
struct Provision<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    period: Period,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    code: &'a [Concept<'a>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    purpose: &'a [Coding<'a>],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    provision: Vec<Provision<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsentRes<'a> {
    resource_type: &'static str,
    id: &'a str,
    status: &'a str,
    scope: Concept<'a>,
    category: [Concept<'a>; 1],
    patient: Reference,
    date_time: Day,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    policy: &'a [Policy<'a>],
    provision: Provision<'a>,
}

const ACTIVE: [Coding; 1] = [coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", None)];
const CONFIRMED: [Coding; 1] =
    [coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", None)];
const LABORATORY: [Coding; 1] = [coding(OBS_CATEGORY, "laboratory", Some("Laboratory"))];
const VITAL_SIGNS: [Coding; 1] = [coding(OBS_CATEGORY, "vital-signs", Some("Vital Signs"))];
const RESEARCH_SCOPE: [Coding; 1] = [coding("http://terminology.hl7.org/CodeSystem/consentscope", "research", None)];
const BROAD_CONSENT_CATEGORY: [Coding; 1] = [coding(LOINC, "57016-8", Some("Privacy policy acknowledgment Document"))];
const OBJECTION_CATEGORY: [Coding; 1] = [coding(LOINC, "59284-0", Some("Patient Consent"))];
const COMMERCIAL: [Coding; 1] = [coding(RESEARCH_PURPOSE, "commercial", Some("commercial research"))];
const BROAD_CONSENT_POLICY: [Policy; 1] = [Policy { uri: "urn:oid:2.16.840.1.113883.3.1937.777.24.2.1791" }];
const EINRICHTUNGSKONTAKT: [Coding; 1] = [coding(KONTAKTEBENE, "einrichtungskontakt", None)];
const NORMALSTATIONAER: [Coding; 1] = [coding(KONTAKTART, "normalstationaer", None)];
const SERUM: [Coding; 1] = [coding(SNOMED, "119364003", Some("Serum specimen"))];

// ---------------------------------------------------------------------------------------------
// Emission

/// Where resources go. `begin_patient` announces how many resources the next patient has, so
/// a Bundle writer can keep them together.
trait Sink {
    fn begin_patient(&mut self, resources: usize) -> Result<()>;
    /// A reference to a resource of the current patient.
    fn reference(&self, resource_type: &str, id: &str) -> Reference;
    fn put<R: Serialize>(&mut self, resource_type: &'static str, id: &str, resource: &R) -> Result<()>;
}

/// One encounter of a patient: `Some(day)` ambulatory visits, `None` for inpatient stays.
struct Plan {
    /// Distinct observation days, in order of first appearance: one AMB encounter each.
    visit_days: Vec<i32>,
    /// Condition rows (absolute) with an inpatient stay, and the stay's rule.
    stays: Vec<(usize, &'static str, i32)>,
    /// Condition row the specimen is linked to.
    specimen: Option<usize>,
    consent: bool,
    objection: bool,
}

fn emit_site<S: Sink>(t: &Tables<'_>, sink: &mut S) -> Result<()> {
    let (mut c_row, mut o_row) = (0usize, 0usize);
    let (nc, no) = (t.conditions.patient.len(), t.observations.patient.len());
    let mut plan = Plan { visit_days: Vec::new(), stays: Vec::new(), specimen: None, consent: false, objection: false };
    let mut id = String::with_capacity(64);
    for p in 0..t.patients.id.len() {
        let pid = t.patients.id.value(p);
        let birth = t.patients.birth.value(p);
        let dice = Dice::new(pid, birth);
        let c_end = c_row + (c_row..nc).take_while(|&r| t.conditions.patient.value(r) == pid).count();
        let o_end = o_row + (o_row..no).take_while(|&r| t.observations.patient.value(r) == pid).count();

        plan.visit_days.clear();
        for r in o_row..o_end {
            let day = t.observations.effective.value(r);
            if !plan.visit_days.contains(&day) {
                plan.visit_days.push(day);
            }
        }
        plan.stays.clear();
        plan.specimen = None;
        for r in c_row..c_end {
            let icd = t.conditions.icd10.value(r);
            if let Some(&(_, department, days)) = INPATIENT_DIAGNOSES.iter().find(|(code, _, _)| *code == icd) {
                plan.stays.push((r, department, days));
            }
            if icd == SPECIMEN_DIAGNOSIS && plan.specimen.is_none() && dice.roll(3, 1000) < SPECIMEN_PER_MILLE {
                plan.specimen = Some(r);
            }
        }
        plan.consent = dice.roll(1, 1000) < BROAD_CONSENT_PER_MILLE;
        plan.objection = dice.roll(2, 1000) < OBJECTION_PER_MILLE;
        let count = 1
            + plan.visit_days.len()
            + plan.stays.len()
            + (c_end - c_row)
            + (o_end - o_row)
            + usize::from(plan.specimen.is_some())
            + usize::from(plan.consent)
            + usize::from(plan.objection);
        sink.begin_patient(count)?;

        emit_patient(t, p, &dice, sink)?;
        let subject = |sink: &S| sink.reference("Patient", pid);

        // Encounters: AMB visits, then IMP stays.
        for (k, &day) in plan.visit_days.iter().enumerate() {
            set_id(&mut id, pid, "enc", k + 1);
            let department = if day - birth < 18 * 365 { "1000" } else { "0100" };
            let service = [coding(FACHABTEILUNG, department, None)];
            let res = EncounterRes {
                resource_type: "Encounter",
                id: &id,
                status: "finished",
                class: coding(ACT_CODE, "AMB", Some("ambulatory")),
                kind: &[Concept { coding: &EINRICHTUNGSKONTAKT }],
                service_type: Concept { coding: &service },
                subject: subject(sink),
                period: Period { start: Day(day), end: Some(Day(day)) },
                diagnosis: Vec::new(),
            };
            sink.put("Encounter", &id, &res)?;
        }
        let first_stay = plan.visit_days.len() + 1;
        for (k, &(r, department, days)) in plan.stays.iter().enumerate() {
            set_id(&mut id, pid, "enc", first_stay + k);
            let onset = t.conditions.onset.value(r);
            let service = [coding(FACHABTEILUNG, department, None)];
            let mut cond_id = String::new();
            set_id(&mut cond_id, pid, "cond", r - c_row + 1);
            let res = EncounterRes {
                resource_type: "Encounter",
                id: &id,
                status: "finished",
                class: coding(ACT_CODE, "IMP", Some("inpatient encounter")),
                kind: &[Concept { coding: &EINRICHTUNGSKONTAKT }, Concept { coding: &NORMALSTATIONAER }],
                service_type: Concept { coding: &service },
                subject: subject(sink),
                period: Period { start: Day(onset), end: Some(Day((onset + days).min(REFERENCE_DAY))) },
                diagnosis: vec![Diagnosis { condition: sink.reference("Condition", &cond_id), rank: 1 }],
            };
            sink.put("Encounter", &id, &res)?;
        }

        // Conditions.
        let mut enc_id = String::new();
        for r in c_row..c_end {
            set_id(&mut id, pid, "cond", r - c_row + 1);
            let onset = Day(t.conditions.onset.value(r));
            let codes = [
                coding(ICD10GM, t.conditions.icd10.value(r), None),
                coding(SNOMED, t.conditions.snomed.value(r), Some(t.conditions.description.value(r))),
            ];
            let encounter = plan.stays.iter().position(|(s, _, _)| *s == r).map(|k| {
                set_id(&mut enc_id, pid, "enc", first_stay + k);
                sink.reference("Encounter", &enc_id)
            });
            let res = ConditionRes {
                resource_type: "Condition",
                id: &id,
                clinical_status: Concept { coding: &ACTIVE },
                verification_status: Concept { coding: &CONFIRMED },
                code: Concept { coding: &codes },
                subject: subject(sink),
                encounter,
                onset_date_time: onset,
                recorded_date: onset,
            };
            sink.put("Condition", &id, &res)?;
        }

        // Observations.
        for r in o_row..o_end {
            set_id(&mut id, pid, "obs", r - o_row + 1);
            let loinc = t.observations.loinc.value(r);
            let unit = t.observations.unit.value(r);
            let day = t.observations.effective.value(r);
            let code = [coding(LOINC, loinc, None)];
            let encounter = plan.visit_days.iter().position(|d| *d == day).map(|k| {
                set_id(&mut enc_id, pid, "enc", k + 1);
                sink.reference("Encounter", &enc_id)
            });
            let res = ObservationRes {
                resource_type: "Observation",
                id: &id,
                status: "final",
                category: [Concept { coding: if is_vital_sign(loinc) { &VITAL_SIGNS } else { &LABORATORY } }],
                code: Concept { coding: &code },
                subject: subject(sink),
                encounter,
                effective_date_time: Day(day),
                value_quantity: Quantity {
                    value: t.observations.value.value(r),
                    unit: unit_display(unit),
                    system: UCUM,
                    code: unit,
                },
            };
            sink.put("Observation", &id, &res)?;
        }

        // Specimen.
        if let Some(r) = plan.specimen {
            set_id(&mut id, pid, "spec", 1);
            let mut cond_id = String::new();
            set_id(&mut cond_id, pid, "cond", r - c_row + 1);
            let onset = t.conditions.onset.value(r);
            let res = SpecimenRes {
                resource_type: "Specimen",
                id: &id,
                extension: [Extension {
                    url: DIAGNOSE_EXTENSION,
                    value_coding: None,
                    value_reference: Some(sink.reference("Condition", &cond_id)),
                }],
                status: "available",
                kind: Concept { coding: &SERUM },
                subject: subject(sink),
                collection: Collection { collected: dice.day_between(8, onset, REFERENCE_DAY) },
            };
            sink.put("Specimen", &id, &res)?;
        }

        // Consents.
        let earliest = birth.max(Day::from_civil(2019, 1, 1).0).min(REFERENCE_DAY - 1);
        if plan.consent {
            set_id(&mut id, pid, "consent", 1);
            let date = dice.day_between(4, earliest, REFERENCE_DAY);
            let until = date.plus_years(5);
            let codes: Vec<[Coding; 1]> = BROAD_CONSENT_CODES
                .iter()
                .map(|(code, display)| [coding(CONSENT_POLICY, code, Some(display))])
                .collect();
            let concepts: Vec<[Concept; 1]> = codes.iter().map(|c| [Concept { coding: c }]).collect();
            let res = ConsentRes {
                resource_type: "Consent",
                id: &id,
                status: "active",
                scope: Concept { coding: &RESEARCH_SCOPE },
                category: [Concept { coding: &BROAD_CONSENT_CATEGORY }],
                patient: subject(sink),
                date_time: date,
                policy: &BROAD_CONSENT_POLICY,
                provision: Provision {
                    kind: Some("deny"),
                    period: Period { start: date, end: Some(until) },
                    code: &[],
                    purpose: &[],
                    provision: concepts
                        .iter()
                        .map(|c| Provision {
                            kind: Some("permit"),
                            period: Period { start: date, end: Some(until) },
                            code: c,
                            purpose: &[],
                            provision: Vec::new(),
                        })
                        .collect(),
                },
            };
            sink.put("Consent", &id, &res)?;
        }
        if plan.objection {
            set_id(&mut id, pid, "objection", 1);
            let date = dice.day_between(5, earliest, REFERENCE_DAY);
            let res = ConsentRes {
                resource_type: "Consent",
                id: &id,
                status: "active",
                scope: Concept { coding: &RESEARCH_SCOPE },
                category: [Concept { coding: &OBJECTION_CATEGORY }],
                patient: subject(sink),
                date_time: date,
                policy: &[],
                provision: Provision {
                    kind: None,
                    period: Period { start: date, end: None },
                    code: &[],
                    purpose: &[],
                    provision: vec![Provision {
                        kind: Some("deny"),
                        period: Period { start: date, end: None },
                        code: &[],
                        purpose: &COMMERCIAL,
                        provision: Vec::new(),
                    }],
                },
            };
            sink.put("Consent", &id, &res)?;
        }

        c_row = c_end;
        o_row = o_end;
    }
    if c_row != nc || o_row != no {
        return Err(Error::Encode {
            path: PathBuf::new(),
            error: "conditions or observations are not grouped by patient in patient order".into(),
        });
    }
    Ok(())
}

fn emit_patient<S: Sink>(t: &Tables<'_>, p: usize, dice: &Dice, sink: &mut S) -> Result<()> {
    let pid = t.patients.id.value(p);
    let sex = t.patients.sex.value(p);
    let (gender, gender_ext) = match sex {
        "female" | "male" => (sex, None),
        _ => (
            "other",
            Some(Extensions {
                extension: [Extension {
                    url: "http://fhir.de/StructureDefinition/gender-amtlich-de",
                    value_coding: Some(coding("http://fhir.de/CodeSystem/gender-amtlich-de", "D", Some("divers"))),
                    value_reference: None,
                }],
            }),
        ),
    };
    let postal = t.patients.region.is_valid(p).then(|| postal_prefixes(t.patients.region.value(p))).flatten().map(
        |(prefixes, state)| {
            let prefix = prefixes[dice.roll(6, prefixes.len() as u64) as usize];
            (format!("{prefix}{:03}", dice.roll(7, 1000)), state)
        },
    );
    let address: Vec<Address> =
        postal.iter().map(|(code, state)| Address { kind: "both", postal_code: code, state, country: "DE" }).collect();
    let res = PatientRes {
        resource_type: "Patient",
        id: pid,
        gender,
        gender_ext,
        birth_date: Day(t.patients.birth.value(p)),
        deceased_boolean: t.patients.deceased.is_valid(p) && t.patients.deceased.value(p),
        address: &address,
    };
    sink.put("Patient", pid, &res)
}

fn set_id(buf: &mut String, pid: &str, kind: &str, n: usize) {
    use std::fmt::Write as _;
    buf.clear();
    let _ = write!(buf, "{pid}-{kind}-{n}");
}

// ---------------------------------------------------------------------------------------------
// Sinks

enum Out {
    Plain(BufWriter<File>),
    Gzip(Box<BufWriter<flate2::write::GzEncoder<File>>>),
}

impl Out {
    fn create(path: &Path, gzip: bool) -> Result<Out> {
        let file = File::create(path).map_err(|error| Error::Io { path: path.to_path_buf(), error })?;
        Ok(if gzip {
            Out::Gzip(Box::new(BufWriter::with_capacity(
                1 << 16,
                flate2::write::GzEncoder::new(file, flate2::Compression::fast()),
            )))
        } else {
            Out::Plain(BufWriter::with_capacity(1 << 16, file))
        })
    }

    fn finish(self, path: &Path) -> Result<()> {
        let io = |error| Error::Io { path: path.to_path_buf(), error };
        match self {
            Out::Plain(mut w) => w.flush().map_err(io),
            Out::Gzip(w) => {
                let encoder = (*w).into_inner().map_err(|e| io(e.into_error()))?;
                encoder.finish().map_err(io)?;
                Ok(())
            }
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Plain(w) => w.write(buf),
            Out::Gzip(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.write_all(buf),
            Out::Gzip(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.flush(),
            Out::Gzip(w) => w.flush(),
        }
    }
}

fn encode_error(path: &Path, error: serde_json::Error) -> Error {
    match error.io_error_kind() {
        Some(_) => Error::Io { path: path.to_path_buf(), error: error.into() },
        None => Error::Encode { path: path.to_path_buf(), error: Box::new(error) },
    }
}

struct NdjsonSink {
    dir: PathBuf,
    gzip: bool,
    outs: Vec<Option<(PathBuf, Out)>>,
    resources: usize,
}

impl NdjsonSink {
    fn new(dir: PathBuf, gzip: bool) -> NdjsonSink {
        NdjsonSink { dir, gzip, outs: RESOURCE_TYPES.iter().map(|_| None).collect(), resources: 0 }
    }

    fn finish(self) -> Result<(Vec<PathBuf>, usize)> {
        let mut files = Vec::new();
        for (path, out) in self.outs.into_iter().flatten() {
            out.finish(&path)?;
            files.push(path);
        }
        Ok((files, self.resources))
    }
}

impl Sink for NdjsonSink {
    fn begin_patient(&mut self, _resources: usize) -> Result<()> {
        Ok(())
    }

    fn reference(&self, resource_type: &str, id: &str) -> Reference {
        Reference { reference: format!("{resource_type}/{id}") }
    }

    fn put<R: Serialize>(&mut self, resource_type: &'static str, _id: &str, resource: &R) -> Result<()> {
        let slot = RESOURCE_TYPES.iter().position(|t| *t == resource_type).unwrap_or(0);
        if self.outs[slot].is_none() {
            let ext = if self.gzip { "ndjson.gz" } else { "ndjson" };
            let path = self.dir.join(format!("{resource_type}.{ext}"));
            let out = Out::create(&path, self.gzip)?;
            self.outs[slot] = Some((path, out));
        }
        if let Some((path, out)) = self.outs[slot].as_mut() {
            serde_json::to_writer(&mut *out, resource).map_err(|e| encode_error(path, e))?;
            out.write_all(b"\n").map_err(|error| Error::Io { path: path.clone(), error })?;
        }
        self.resources += 1;
        Ok(())
    }
}

struct BundleSink {
    dir: PathBuf,
    files: Vec<PathBuf>,
    current: Option<(PathBuf, BufWriter<File>)>,
    entries: usize,
    resources: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a, R> {
    full_url: String,
    resource: &'a R,
    request: Request,
}

#[derive(Serialize)]
struct Request {
    method: &'static str,
    url: String,
}

impl BundleSink {
    fn new(dir: PathBuf) -> BundleSink {
        BundleSink { dir, files: Vec::new(), current: None, entries: 0, resources: 0 }
    }

    fn close(&mut self) -> Result<()> {
        if let Some((path, mut w)) = self.current.take() {
            w.write_all(b"]}\n").and_then(|()| w.flush()).map_err(|error| Error::Io { path: path.clone(), error })?;
            self.files.push(path);
        }
        self.entries = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<(Vec<PathBuf>, usize)> {
        self.close()?;
        Ok((self.files, self.resources))
    }
}

impl Sink for BundleSink {
    fn begin_patient(&mut self, resources: usize) -> Result<()> {
        if self.current.is_some() && self.entries + resources > MAX_BUNDLE_ENTRIES {
            self.close()?;
        }
        if self.current.is_none() {
            let path = self.dir.join(format!("bundle-{:04}.json", self.files.len() + 1));
            let file = File::create(&path).map_err(|error| Error::Io { path: path.clone(), error })?;
            let mut w = BufWriter::with_capacity(1 << 16, file);
            w.write_all(br#"{"resourceType":"Bundle","type":"transaction","entry":["#)
                .map_err(|error| Error::Io { path: path.clone(), error })?;
            self.current = Some((path, w));
        }
        Ok(())
    }

    /// Every reference points within the patient's own resources, which share a Bundle.
    fn reference(&self, resource_type: &str, id: &str) -> Reference {
        Reference { reference: format!("urn:uuid:{}", resource_uuid(resource_type, id)) }
    }

    fn put<R: Serialize>(&mut self, resource_type: &'static str, id: &str, resource: &R) -> Result<()> {
        let Some((path, w)) = self.current.as_mut() else {
            return Err(Error::Encode { path: self.dir.clone(), error: "no open bundle".into() });
        };
        if self.entries > 0 {
            w.write_all(b",").map_err(|error| Error::Io { path: path.clone(), error })?;
        }
        let entry = Entry {
            full_url: format!("urn:uuid:{}", resource_uuid(resource_type, id)),
            resource,
            request: Request { method: "PUT", url: format!("{resource_type}/{id}") },
        };
        serde_json::to_writer(&mut *w, &entry).map_err(|e| encode_error(path, e))?;
        self.entries += 1;
        self.resources += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;
    use arrow::array::AsArray;
    use arrow::datatypes::{Date32Type, Float64Type};
    use serde_json::Value;
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::io::Read;

    /// A file's or bundle's resources, each with its bundle fullUrl (None in NDJSON).
    type Group = Vec<(Option<String>, Value)>;

    fn read_text(path: &Path) -> String {
        let bytes = std::fs::read(path).expect("read output");
        if path.extension().is_some_and(|e| e == "gz") {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).expect("gunzip");
            text
        } else {
            String::from_utf8(bytes).expect("utf-8")
        }
    }

    fn read_groups(written: &WrittenFhir, layout: FhirLayout) -> Vec<Group> {
        written
            .files
            .iter()
            .map(|path| {
                let text = read_text(path);
                match layout {
                    FhirLayout::Bundles => {
                        let bundle: Value = serde_json::from_str(&text).expect("bundle parses");
                        assert_eq!(bundle["resourceType"], "Bundle");
                        assert_eq!(bundle["type"], "transaction");
                        let entries = bundle["entry"].as_array().expect("entries");
                        assert!(!entries.is_empty() && entries.len() <= MAX_BUNDLE_ENTRIES);
                        entries
                            .iter()
                            .map(|e| {
                                let r = e["resource"].clone();
                                let (ty, id) =
                                    (r["resourceType"].as_str().expect("type"), r["id"].as_str().expect("id"));
                                assert_eq!(e["request"]["method"], "PUT");
                                assert_eq!(e["request"]["url"], format!("{ty}/{id}"));
                                let full_url = e["fullUrl"].as_str().expect("fullUrl").to_string();
                                assert_eq!(full_url, format!("urn:uuid:{}", resource_uuid(ty, id)));
                                (Some(full_url), r)
                            })
                            .collect()
                    }
                    _ => {
                        let ty =
                            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('.').next()).expect("name");
                        text.lines()
                            .map(|line| {
                                let r: Value = serde_json::from_str(line).expect("line parses");
                                assert_eq!(r["resourceType"], ty, "{} holds only {ty}", path.display());
                                (None, r)
                            })
                            .collect()
                    }
                }
            })
            .collect()
    }

    fn references(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("reference", Value::String(s)) => out.push(s.clone()),
                        _ => references(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }

    fn valid_id(id: &str) -> bool {
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }

    fn strings<'a>(site: &'a SiteData, table: &str, col: &str) -> Vec<&'a str> {
        let batch = super::table(site, table).expect("table");
        batch.column_by_name(col).expect("column").as_string::<i32>().iter().map(|v| v.expect("value")).collect()
    }

    fn dates(site: &SiteData, table: &str, col: &str) -> Vec<i32> {
        let batch = super::table(site, table).expect("table");
        batch.column_by_name(col).expect("column").as_primitive::<Date32Type>().values().to_vec()
    }

    /// Checks one site's output against its tables, independently of the writer's logic.
    fn check_site(site: &SiteData, written: &WrittenFhir, layout: FhirLayout) -> BTreeMap<String, usize> {
        let groups = read_groups(written, layout);
        let mut by_type: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        let mut ids: HashSet<String> = HashSet::new();
        for (_, r) in groups.iter().flatten() {
            let ty = r["resourceType"].as_str().expect("resourceType").to_string();
            let id = r["id"].as_str().expect("id");
            assert!(valid_id(id), "invalid id {id}");
            assert!(ids.insert(format!("{ty}/{id}")), "duplicate {ty}/{id}");
            by_type.entry(ty).or_default().push(r);
        }
        let total: usize = by_type.values().map(Vec::len).sum();
        assert_eq!(total, written.resources);

        // Every reference resolves: within the bundle (urn:uuid) or within the site (Type/id).
        for group in &groups {
            let urls: HashMap<&str, &Value> = group.iter().filter_map(|(u, r)| u.as_deref().map(|u| (u, r))).collect();
            for (_, r) in group {
                let mut refs = Vec::new();
                references(r, &mut refs);
                assert!(!refs.is_empty() || r["resourceType"] == "Patient");
                for reference in refs {
                    if reference.starts_with("urn:uuid:") {
                        assert_eq!(layout, FhirLayout::Bundles);
                        assert!(urls.contains_key(reference.as_str()), "{reference} not in its bundle");
                    } else {
                        assert_ne!(layout, FhirLayout::Bundles, "a bundle references within itself");
                        assert!(ids.contains(&reference), "{reference} does not resolve");
                    }
                }
            }
        }

        let count = |ty: &str| by_type.get(ty).map_or(0, Vec::len);
        let patients = strings(site, "patients", "patient_id");
        let cond_patients = strings(site, "conditions", "patient_id");
        let icd = strings(site, "conditions", "icd10");
        let obs_patients = strings(site, "observations", "patient_id");
        let obs_days = dates(site, "observations", "effective_date");
        assert_eq!(count("Patient"), patients.len());
        assert_eq!(count("Condition"), icd.len());
        assert_eq!(count("Observation"), obs_patients.len());
        let visits: HashSet<(&str, i32)> = obs_patients.iter().copied().zip(obs_days.iter().copied()).collect();
        let stays = icd.iter().filter(|c| **c == "I21.9" || **c == "S72.00").count();
        assert_eq!(count("Encounter"), visits.len() + stays);

        // Consents: ~90 % broad consent, a few objections, at most one of each per patient.
        let consents = by_type.get("Consent").cloned().unwrap_or_default();
        let broad: Vec<&&Value> =
            consents.iter().filter(|c| c["category"][0]["coding"][0]["code"] == "57016-8").collect();
        let objections = consents.len() - broad.len();
        let share = broad.len() as f64 / patients.len() as f64;
        assert!((0.8..=0.97).contains(&share), "broad consent share {share}");
        assert!(objections as f64 <= 0.08 * patients.len() as f64);
        let mut holders = HashSet::new();
        for c in &consents {
            assert_eq!(c["status"], "active");
            assert_eq!(c["scope"]["coding"][0]["code"], "research");
            let kind = c["category"][0]["coding"][0]["code"].as_str().expect("category").to_string();
            assert!(holders.insert((c["patient"]["reference"].to_string(), kind)), "two of a kind for one patient");
        }
        for c in &broad {
            assert_eq!(c["provision"]["type"], "deny");
            let nested = c["provision"]["provision"].as_array().expect("nested provisions");
            assert!(
                nested.iter().all(|p| p["type"] == "permit" && p["code"][0]["coding"][0]["system"] == CONSENT_POLICY)
            );
            assert!(
                nested.iter().any(|p| p["code"][0]["coding"][0]["code"] == "2.16.840.1.113883.3.1937.777.24.5.3.8")
            );
            let (start, end) = (
                nested[0]["period"]["start"].as_str().expect("start"),
                nested[0]["period"]["end"].as_str().expect("end"),
            );
            let years = |d: &str| d[..4].parse::<i32>().expect("year");
            assert_eq!(years(end) - years(start), 5);
            let same_day = if &start[4..] == "-02-29" { "-02-28" } else { &start[4..] };
            assert_eq!(&end[4..], same_day);
        }
        for c in consents.iter().filter(|c| c["category"][0]["coding"][0]["code"] != "57016-8") {
            let nested = &c["provision"]["provision"][0];
            assert_eq!(nested["type"], "deny");
            assert_eq!(nested["purpose"][0]["system"], RESEARCH_PURPOSE);
            assert_eq!(nested["purpose"][0]["code"], "commercial");
        }

        // Specimens point at one of the same patient's E11.9 diagnoses.
        let resolve = |reference: &str| -> Value {
            groups
                .iter()
                .flatten()
                .find(|(u, r)| {
                    u.as_deref() == Some(reference)
                        || format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or(""))
                            == reference
                })
                .map(|(_, r)| r.clone())
                .expect("resolvable")
        };
        let diabetics: HashSet<&str> =
            cond_patients.iter().zip(&icd).filter(|(_, c)| **c == SPECIMEN_DIAGNOSIS).map(|(p, _)| *p).collect();
        assert!(count("Specimen") <= diabetics.len());
        for s in by_type.get("Specimen").into_iter().flatten() {
            assert_eq!(s["type"]["coding"][0]["code"], "119364003");
            assert_eq!(s["extension"][0]["url"], DIAGNOSE_EXTENSION);
            let condition = resolve(s["extension"][0]["valueReference"]["reference"].as_str().expect("diagnosis"));
            assert_eq!(condition["resourceType"], "Condition");
            assert_eq!(condition["code"]["coding"][0]["code"], SPECIMEN_DIAGNOSIS);
            assert_eq!(condition["subject"], s["subject"]);
        }

        // Contents equal the tables, row by row (NDJSON keeps table order).
        if layout != FhirLayout::Bundles {
            let batch = super::table(site, "observations").expect("observations");
            let values = batch.column_by_name("value").expect("value").as_primitive::<Float64Type>().values().to_vec();
            let loinc = strings(site, "observations", "loinc");
            let units = strings(site, "observations", "unit");
            for (i, o) in by_type["Observation"].iter().enumerate() {
                assert_eq!(o["subject"]["reference"], format!("Patient/{}", obs_patients[i]));
                assert_eq!(o["code"]["coding"][0], serde_json::json!({"system": LOINC, "code": loinc[i]}));
                assert_eq!(o["valueQuantity"]["value"].as_f64(), Some(values[i]));
                assert_eq!(o["valueQuantity"]["code"], units[i]);
                assert_eq!(o["valueQuantity"]["system"], UCUM);
                assert_eq!(o["effectiveDateTime"], Day(obs_days[i]).to_string());
                assert_eq!(o["status"], "final");
            }
            let snomed = strings(site, "conditions", "snomed");
            let onset = dates(site, "conditions", "onset_date");
            for (i, c) in by_type["Condition"].iter().enumerate() {
                assert_eq!(c["subject"]["reference"], format!("Patient/{}", cond_patients[i]));
                assert_eq!(c["code"]["coding"][0]["system"], ICD10GM);
                assert_eq!(c["code"]["coding"][0]["code"], icd[i]);
                assert_eq!(c["code"]["coding"][1]["system"], SNOMED);
                assert_eq!(c["code"]["coding"][1]["code"], snomed[i]);
                assert_eq!(c["recordedDate"], Day(onset[i]).to_string());
                assert_eq!(c["onsetDateTime"], Day(onset[i]).to_string());
            }
            let sex = strings(site, "patients", "sex");
            let birth = dates(site, "patients", "birth_date");
            for (i, p) in by_type["Patient"].iter().enumerate() {
                assert_eq!(p["id"], patients[i]);
                let gender = if sex[i] == "diverse" { "other" } else { sex[i] };
                assert_eq!(p["gender"], gender);
                assert_eq!(p["birthDate"], Day(birth[i]).to_string());
                let postal = p["address"][0]["postalCode"].as_str().expect("postal code");
                assert!(postal.len() == 5 && postal.bytes().all(|b| b.is_ascii_digit()));
            }
        }
        by_type.into_iter().map(|(k, v)| (k, v.len())).collect()
    }

    #[test]
    fn every_layout_parses_back_complete_and_resolvable() {
        let sites = generate(3, 0.05).expect("generate");
        let mut counts = Vec::new();
        for layout in [FhirLayout::Ndjson, FhirLayout::NdjsonGzip, FhirLayout::Bundles] {
            let dir = tempfile::tempdir().expect("tempdir");
            let written = write_fhir(dir.path(), &sites, layout).expect("write");
            assert_eq!(written.len(), sites.len());
            let per_layout: Vec<_> = sites.iter().zip(&written).map(|(s, w)| check_site(s, w, layout)).collect();
            for (s, w) in sites.iter().zip(&written) {
                assert_eq!(w.site, s.site);
                assert!(w.files.iter().all(|f| f.starts_with(dir.path().join(&s.site))));
            }
            counts.push(per_layout);
        }
        assert!(counts.iter().all(|c| *c == counts[0]), "layouts hold the same resources");
        let all = &counts[0];
        for ty in RESOURCE_TYPES {
            assert!(all.iter().map(|c| c.get(ty).copied().unwrap_or(0)).sum::<usize>() > 0, "no {ty} at all");
        }
    }

    #[test]
    fn bundles_split_and_keep_patients_together() {
        let sites = generate(5, 0.1).expect("generate");
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_fhir(dir.path(), &sites[..1], FhirLayout::Bundles).expect("write");
        assert!(written[0].files.len() > 1, "600 patients need several bundles");
        let names: Vec<String> =
            written[0].files.iter().map(|f| f.file_name().expect("name").to_string_lossy().into_owned()).collect();
        assert_eq!(names[0], "bundle-0001.json");
        assert_eq!(names[1], "bundle-0002.json");
        // urn:uuid references resolve within their own bundle (checked in check_site).
        check_site(&sites[0], &written[0], FhirLayout::Bundles);
    }

    #[test]
    fn gzip_equals_plain_and_same_seed_same_bytes() {
        let read_all = |dir: &Path, written: &[WrittenFhir]| -> Vec<(PathBuf, Vec<u8>)> {
            written
                .iter()
                .flat_map(|w| w.files.iter())
                .map(|f| (f.strip_prefix(dir).expect("under dir").to_path_buf(), std::fs::read(f).expect("read")))
                .collect()
        };
        for layout in [FhirLayout::Ndjson, FhirLayout::NdjsonGzip, FhirLayout::Bundles] {
            let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
            let wa = write_fhir(a.path(), &generate(11, 0.03).expect("generate"), layout).expect("write");
            let wb = write_fhir(b.path(), &generate(11, 0.03).expect("generate"), layout).expect("write");
            assert_eq!(read_all(a.path(), &wa), read_all(b.path(), &wb), "{layout:?} is deterministic");
            let c = tempfile::tempdir().expect("tempdir");
            let wc = write_fhir(c.path(), &generate(12, 0.03).expect("generate"), layout).expect("write");
            assert_ne!(read_all(a.path(), &wa), read_all(c.path(), &wc), "another seed, other data");
        }
        let sites = generate(11, 0.03).expect("generate");
        let (plain, gz) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let wp = write_fhir(plain.path(), &sites, FhirLayout::Ndjson).expect("write");
        let wg = write_fhir(gz.path(), &sites, FhirLayout::NdjsonGzip).expect("write");
        for (p, g) in wp.iter().zip(&wg) {
            assert_eq!(p.files.len(), g.files.len());
            assert_eq!(p.resources, g.resources);
            for (fp, fg) in p.files.iter().zip(&g.files) {
                assert!(fg.to_string_lossy().ends_with(".ndjson.gz"));
                assert_eq!(read_text(fp), read_text(fg));
            }
        }
    }

    #[test]
    fn days_format_as_calendar_dates() {
        assert_eq!(Day(0).to_string(), "1970-01-01");
        assert_eq!(Day(REFERENCE_DAY).to_string(), "2026-01-01");
        assert_eq!(Day(11_016).to_string(), "2000-02-29");
        assert_eq!(Day(-1).to_string(), "1969-12-31");
        for d in -40_000..40_000 {
            let (y, m, dd) = Day(d).civil();
            assert_eq!(Day::from_civil(y, m, dd), Day(d));
        }
        assert_eq!(Day(11_016).plus_years(5).to_string(), "2005-02-28");
        assert_eq!(Day(REFERENCE_DAY).plus_years(5).to_string(), "2031-01-01");
    }

    #[test]
    fn uuids_are_deterministic_v4_shaped_and_distinct() {
        let u = resource_uuid("Patient", "UKN-000001");
        assert_eq!(u, resource_uuid("Patient", "UKN-000001"));
        assert_ne!(u, resource_uuid("Condition", "UKN-000001"));
        assert_ne!(u, resource_uuid("Patient", "UKN-000002"));
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        let many: HashSet<String> =
            (0..50_000).map(|i| resource_uuid("Observation", &format!("UKN-{i:06}-obs-1"))).collect();
        assert_eq!(many.len(), 50_000);
    }
}
