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

mod emit;
mod resources;
mod sink;
#[cfg(test)]
mod tests;

use emit::{Tables, emit_site};
use sink::{BundleSink, NdjsonSink};

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
        verbund_calendar::civil_from_days(i64::from(self.0))
    }

    pub fn from_civil(y: i64, m: u32, d: u32) -> Day {
        Day(verbund_calendar::days_from_civil(y, m, d) as i32)
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
