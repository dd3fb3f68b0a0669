//! The clinical model behind the synthetic data: three hospitals of different size and case
//! mix, conditions with ICD-10-GM and SNOMED CT codes, labs and vitals with LOINC codes and
//! units. Prevalences and lab distributions are plausible, not epidemiological truth.

/// A hospital: its size and how its patients differ from the others'.
#[derive(Debug, Clone)]
pub struct SiteProfile {
    pub name: &'static str,
    /// Prefix of patient ids, so ids never collide across sites.
    pub id_prefix: &'static str,
    /// Patients at scale 1.0.
    pub patients: usize,
    /// Age range and the mean age (ages are drawn from a triangular-ish distribution).
    pub min_age: u32,
    pub max_age: u32,
    pub mean_age: f64,
    /// Regions the patients live in, with weights.
    pub regions: &'static [(&'static str, f64)],
    /// Multiplies every condition's base prevalence, by condition index (1.0 when absent).
    pub case_mix: &'static [(&'static str, f64)],
}

pub const SITES: [SiteProfile; 3] = [
    SiteProfile {
        name: "uniklinik-nord",
        id_prefix: "UKN",
        patients: 6000,
        min_age: 18,
        max_age: 98,
        mean_age: 61.0,
        regions: &[("Hamburg", 0.45), ("Schleswig-Holstein", 0.35), ("Niedersachsen", 0.2)],
        case_mix: &[("C50.9", 2.5), ("C34.9", 2.5), ("I21.9", 1.6), ("N18.3", 1.5)],
    },
    SiteProfile {
        name: "klinikum-sued",
        id_prefix: "KLS",
        patients: 3000,
        min_age: 18,
        max_age: 96,
        mean_age: 55.0,
        regions: &[("Bayern", 0.7), ("Baden-Wuerttemberg", 0.3)],
        case_mix: &[("S72.00", 1.8), ("I10.90", 1.2), ("E11.9", 1.2)],
    },
    SiteProfile {
        name: "kinderklinik-west",
        id_prefix: "KKW",
        patients: 1500,
        min_age: 0,
        max_age: 17,
        mean_age: 7.0,
        regions: &[("Nordrhein-Westfalen", 0.8), ("Hessen", 0.2)],
        case_mix: &[("J45.9", 3.0), ("H66.9", 4.0), ("J06.9", 3.0), ("E10.9", 2.0)],
    },
];

/// A condition with its codes and a base prevalence that depends on age.
#[derive(Debug, Clone, Copy)]
pub struct ConditionDef {
    pub icd10: &'static str,
    pub snomed: &'static str,
    pub description: &'static str,
    /// Prevalence at age 0 and at age 90, interpolated linearly.
    pub prevalence_young: f64,
    pub prevalence_old: f64,
    /// Extra factor for female patients (1.0: no difference).
    pub female_factor: f64,
}

pub const CONDITIONS: [ConditionDef; 15] = [
    c("E11.9", "44054006", "Type 2 diabetes mellitus", 0.0, 0.28, 0.85),
    c("E10.9", "46635009", "Type 1 diabetes mellitus", 0.004, 0.006, 1.0),
    c("I10.90", "59621000", "Essential hypertension", 0.01, 0.65, 1.0),
    c("I21.9", "22298006", "Acute myocardial infarction", 0.0, 0.08, 0.6),
    c("I50.9", "84114007", "Heart failure", 0.0, 0.18, 0.9),
    c("J45.9", "195967001", "Asthma", 0.08, 0.06, 1.1),
    c("J44.9", "13645005", "Chronic obstructive pulmonary disease", 0.0, 0.12, 0.8),
    c("C50.9", "254837009", "Malignant neoplasm of breast", 0.0, 0.05, 40.0),
    c("C34.9", "93880001", "Malignant neoplasm of lung", 0.0, 0.03, 0.7),
    c("N18.3", "433144002", "Chronic kidney disease stage 3", 0.0, 0.15, 1.0),
    c("F32.9", "35489007", "Depressive episode", 0.02, 0.09, 1.7),
    c("H66.9", "65363002", "Otitis media", 0.10, 0.005, 1.0),
    c("J06.9", "54150009", "Acute upper respiratory infection", 0.15, 0.05, 1.0),
    c("S72.00", "5913000", "Fracture of neck of femur", 0.0, 0.07, 1.8),
    c("U07.1", "840539006", "COVID-19", 0.08, 0.10, 1.0),
];

const fn c(
    icd10: &'static str,
    snomed: &'static str,
    description: &'static str,
    prevalence_young: f64,
    prevalence_old: f64,
    female_factor: f64,
) -> ConditionDef {
    ConditionDef { icd10, snomed, description, prevalence_young, prevalence_old, female_factor }
}

/// A lab value or vital sign.
#[derive(Debug, Clone, Copy)]
pub struct ObservationDef {
    pub loinc: &'static str,
    pub name: &'static str,
    pub unit: &'static str,
    pub mean: f64,
    pub sd: f64,
    /// Shift of the mean per year of age.
    pub per_year: f64,
    /// (ICD-10 code, shift of the mean) for patients with that condition.
    pub shifted_by: Option<(&'static str, f64)>,
    pub min: f64,
    /// Digits after the decimal point, as a lab system would report.
    pub decimals: i32,
}

pub const OBSERVATIONS: [ObservationDef; 6] = [
    o("4548-4", "hba1c", "%", 5.3, 0.35, 0.006, Some(("E11.9", 2.1)), 3.5, 1),
    o("2345-7", "glucose", "mg/dL", 92.0, 10.0, 0.15, Some(("E11.9", 55.0)), 40.0, 0),
    o("2160-0", "creatinine", "mg/dL", 0.85, 0.18, 0.003, Some(("N18.3", 1.1)), 0.2, 2),
    o("8480-6", "systolic_bp", "mm[Hg]", 108.0, 12.0, 0.45, Some(("I10.90", 18.0)), 70.0, 0),
    o("2093-3", "cholesterol", "mg/dL", 165.0, 32.0, 0.6, None, 90.0, 0),
    o("29463-7", "body_weight", "kg", 20.0, 6.0, 1.1, None, 2.0, 1),
];

#[allow(clippy::too_many_arguments)]
const fn o(
    loinc: &'static str,
    name: &'static str,
    unit: &'static str,
    mean: f64,
    sd: f64,
    per_year: f64,
    shifted_by: Option<(&'static str, f64)>,
    min: f64,
    decimals: i32,
) -> ObservationDef {
    ObservationDef { loinc, name, unit, mean, sd, per_year, shifted_by, min, decimals }
}
