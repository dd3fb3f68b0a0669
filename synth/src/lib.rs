//! Deterministic synthetic patient data for a demo network of three hospitals.
//!
//! Same seed and scale, same bytes. Each site gets three tables, each keyed by `patient_id`:
//! `patients` (demographics, BMI, smoking), `conditions` (ICD-10-GM and SNOMED CT coded
//! diagnoses with onset dates) and `observations` (labs and vitals with LOINC codes, units
//! and dates). Patient attributes used in research questions (sex, age) are repeated on the
//! event tables, as in a research data mart, so one table answers a question.
//!
//! [`fhir::write_fhir`] writes the same population as FHIR R4 (NDJSON, gzip NDJSON or
//! transaction Bundles), as a hospital's FHIR server would export it.

pub mod fhir;
pub mod model;

use arrow::array::{ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder};
use arrow::record_batch::RecordBatch;
use model::{CONDITIONS, OBSERVATIONS, SITES, SiteProfile};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("scale must be a positive number, got {0}")]
    Scale(f64),
    #[error("cannot write {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("cannot encode {path}: {error}")]
    Encode { path: PathBuf, error: Box<dyn std::error::Error + Send + Sync> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Days since 1970-01-01 of 2026-01-01: the "today" ages are computed at.
pub const REFERENCE_DAY: i32 = 20454;

pub const PATIENT_KEY: &str = "patient_id";

/// One site's generated tables.
#[derive(Debug, Clone)]
pub struct SiteData {
    pub site: String,
    pub tables: Vec<(String, RecordBatch)>,
}

/// A table written to disk.
#[derive(Debug, Clone)]
pub struct WrittenTable {
    pub name: String,
    pub path: PathBuf,
    pub patient_key: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct WrittenSite {
    pub site: String,
    pub tables: Vec<WrittenTable>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
}

/// Names of the demo sites, in order.
pub fn site_names() -> Vec<&'static str> {
    SITES.iter().map(|s| s.name).collect()
}

/// Generates all three sites in memory. `scale` multiplies the number of patients (1.0:
/// 6000 + 3000 + 1500).
pub fn generate(seed: u64, scale: f64) -> Result<Vec<SiteData>> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(Error::Scale(scale));
    }
    Ok(SITES
        .iter()
        .enumerate()
        .map(|(i, profile)| {
            let site_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64 + 1);
            generate_site(profile, site_seed, scale)
        })
        .collect())
}

/// Generates all sites and writes `dir/<site>/<table>.<ext>`.
pub fn write_all(dir: &Path, seed: u64, scale: f64, format: Format) -> Result<Vec<WrittenSite>> {
    generate(seed, scale)?
        .into_iter()
        .map(|site| {
            let site_dir = dir.join(&site.site);
            std::fs::create_dir_all(&site_dir).map_err(|error| Error::Io { path: site_dir.clone(), error })?;
            let tables = site
                .tables
                .iter()
                .map(|(name, batch)| {
                    let ext = match format {
                        Format::Parquet => "parquet",
                        Format::Csv => "csv",
                    };
                    let path = site_dir.join(format!("{name}.{ext}"));
                    write_batch(&path, batch, format)?;
                    Ok(WrittenTable {
                        name: name.clone(),
                        path,
                        patient_key: PATIENT_KEY.to_string(),
                        columns: batch.schema().fields().iter().map(|f| f.name().clone()).collect(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(WrittenSite { site: site.site, tables })
        })
        .collect()
}

/// Writes one batch as Parquet (snappy) or CSV with a header.
pub fn write_batch(path: &Path, batch: &RecordBatch, format: Format) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|error| Error::Io { path: path.to_path_buf(), error })?;
    let encode = |e: Box<dyn std::error::Error + Send + Sync>| Error::Encode { path: path.to_path_buf(), error: e };
    match format {
        Format::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props))
                .map_err(|e| encode(Box::new(e)))?;
            writer.write(batch).map_err(|e| encode(Box::new(e)))?;
            writer.close().map_err(|e| encode(Box::new(e)))?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(file);
            writer.write(batch).map_err(|e| encode(Box::new(e)))?;
        }
    }
    Ok(())
}

struct Patient {
    id: String,
    sex: &'static str,
    age: i64,
    birth_day: i32,
    conditions: Vec<usize>,
}

fn generate_site(profile: &SiteProfile, seed: u64, scale: f64) -> SiteData {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = ((profile.patients as f64 * scale).round() as usize).max(1);
    let unit = Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable!("standard normal is valid"));

    let mut patients = Vec::with_capacity(n);
    let mut p = PatientColumns::default();
    for i in 0..n {
        let sex = draw_sex(&mut rng);
        // Triangular distribution peaking at the site's mean age.
        let (lo, hi, mode) = (profile.min_age as f64, profile.max_age as f64 + 1.0, profile.mean_age);
        let u: f64 = rng.random();
        let split = (mode - lo) / (hi - lo);
        let age_f = if u < split {
            lo + (u * (hi - lo) * (mode - lo)).sqrt()
        } else {
            hi - ((1.0 - u) * (hi - lo) * (hi - mode)).sqrt()
        };
        let age = (age_f.floor() as i64).clamp(profile.min_age as i64, profile.max_age as i64);
        let birth_day = REFERENCE_DAY - (age as i32 * 365) - rng.random_range(1..365);
        let region = weighted(&mut rng, profile.regions);
        let bmi = if rng.random_bool(0.9) {
            let base = if age < 18 { 14.0 + age as f64 * 0.35 } else { 26.5 };
            Some(round_to((base + unit.sample(&mut rng) * if age < 18 { 2.0 } else { 4.5 }).max(11.0), 1))
        } else {
            None
        };
        let smoker = if age < 14 || rng.random_bool(0.15) { None } else { Some(rng.random_bool(0.24)) };

        let mut conditions = Vec::new();
        for (ci, cond) in CONDITIONS.iter().enumerate() {
            let t = (age as f64 / 90.0).min(1.0);
            let mut prevalence = cond.prevalence_young + (cond.prevalence_old - cond.prevalence_young) * t;
            if sex == "female" {
                prevalence *= cond.female_factor;
            } else if cond.female_factor > 10.0 {
                prevalence *= 0.01;
            }
            if let Some((_, f)) = profile.case_mix.iter().find(|(code, _)| *code == cond.icd10) {
                prevalence *= f;
            }
            if rng.random_bool(prevalence.clamp(0.0, 0.95)) {
                conditions.push(ci);
            }
        }

        let id = format!("{}-{:06}", profile.id_prefix, i + 1);
        p.patient_id.append_value(&id);
        p.sex.append_value(sex);
        p.birth_date.append_value(birth_day);
        p.age.append_value(age);
        p.region.append_value(region);
        p.bmi.append_option(bmi);
        p.smoker.append_option(smoker);
        p.deceased.append_value(rng.random_bool((age as f64 / 100.0).powi(3) * 0.2));
        patients.push(Patient { id, sex, age, birth_day, conditions });
    }

    let mut c = ConditionColumns::default();
    let mut o = ObservationColumns::default();
    for pat in &patients {
        for &ci in &pat.conditions {
            let cond = &CONDITIONS[ci];
            // Onset somewhere between birth (or 2010) and the reference day.
            let earliest = pat.birth_day.clamp(14610, REFERENCE_DAY - 1);
            let onset = rng.random_range(earliest..REFERENCE_DAY);
            c.patient_id.append_value(&pat.id);
            c.sex.append_value(pat.sex);
            c.age.append_value(((onset - pat.birth_day) / 365) as i64);
            c.icd10.append_value(cond.icd10);
            c.icd10_group.append_value(&cond.icd10[..3]);
            c.snomed.append_value(cond.snomed);
            c.description.append_value(cond.description);
            c.onset_date.append_value(onset);
        }
        let visits = rng.random_range(1..=4);
        for _ in 0..visits {
            // From 2018-01-01 (or birth) until the reference day.
            let first = pat.birth_day.clamp(17532, REFERENCE_DAY - 1);
            let day = rng.random_range(first..REFERENCE_DAY);
            for obs in &OBSERVATIONS {
                let adult_only = obs.name != "body_weight";
                if (adult_only && pat.age < 12 && obs.name != "glucose") || !rng.random_bool(0.7) {
                    continue;
                }
                let has = |code: &str| pat.conditions.iter().any(|&ci| CONDITIONS[ci].icd10 == code);
                let mut mean = obs.mean + obs.per_year * pat.age.min(70) as f64;
                if let Some((code, shift)) = obs.shifted_by
                    && has(code)
                {
                    mean += shift;
                }
                let value = round_to((mean + unit.sample(&mut rng) * obs.sd).max(obs.min), obs.decimals);
                o.patient_id.append_value(&pat.id);
                o.sex.append_value(pat.sex);
                o.age.append_value(((day - pat.birth_day) / 365) as i64);
                o.loinc.append_value(obs.loinc);
                o.name.append_value(obs.name);
                o.value.append_value(value);
                o.unit.append_value(obs.unit);
                o.effective_date.append_value(day);
            }
        }
    }

    SiteData {
        site: profile.name.to_string(),
        tables: vec![
            ("patients".to_string(), p.finish()),
            ("conditions".to_string(), c.finish()),
            ("observations".to_string(), o.finish()),
        ],
    }
}

/// Administrative sex as German hospital data records it (female, male, a small share diverse).
pub fn draw_sex<R: rand::Rng>(rng: &mut R) -> &'static str {
    let r: f64 = rng.random();
    if r < 0.505 {
        "female"
    } else if r < 0.998 {
        "male"
    } else {
        "diverse"
    }
}

fn weighted<R: rand::Rng>(rng: &mut R, choices: &[(&'static str, f64)]) -> &'static str {
    let total: f64 = choices.iter().map(|(_, w)| w).sum();
    let mut r = rng.random::<f64>() * total;
    for (name, w) in choices {
        if r < *w {
            return name;
        }
        r -= w;
    }
    choices.last().map(|(n, _)| *n).unwrap_or("unknown")
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap_or_else(|e| unreachable!("columns have equal length: {e}"))
}

#[derive(Default)]
struct PatientColumns {
    patient_id: StringBuilder,
    sex: StringBuilder,
    birth_date: Date32Builder,
    age: Int64Builder,
    region: StringBuilder,
    bmi: Float64Builder,
    smoker: BooleanBuilder,
    deceased: BooleanBuilder,
}

impl PatientColumns {
    fn finish(mut self) -> RecordBatch {
        batch(vec![
            ("patient_id", Arc::new(self.patient_id.finish())),
            ("sex", Arc::new(self.sex.finish())),
            ("birth_date", Arc::new(self.birth_date.finish())),
            ("age", Arc::new(self.age.finish())),
            ("region", Arc::new(self.region.finish())),
            ("bmi", Arc::new(self.bmi.finish())),
            ("smoker", Arc::new(self.smoker.finish())),
            ("deceased", Arc::new(self.deceased.finish())),
        ])
    }
}

#[derive(Default)]
struct ConditionColumns {
    patient_id: StringBuilder,
    sex: StringBuilder,
    age: Int64Builder,
    icd10: StringBuilder,
    icd10_group: StringBuilder,
    snomed: StringBuilder,
    description: StringBuilder,
    onset_date: Date32Builder,
}

impl ConditionColumns {
    fn finish(mut self) -> RecordBatch {
        batch(vec![
            ("patient_id", Arc::new(self.patient_id.finish())),
            ("sex", Arc::new(self.sex.finish())),
            ("age", Arc::new(self.age.finish())),
            ("icd10", Arc::new(self.icd10.finish())),
            ("icd10_group", Arc::new(self.icd10_group.finish())),
            ("snomed", Arc::new(self.snomed.finish())),
            ("description", Arc::new(self.description.finish())),
            ("onset_date", Arc::new(self.onset_date.finish())),
        ])
    }
}

#[derive(Default)]
struct ObservationColumns {
    patient_id: StringBuilder,
    sex: StringBuilder,
    age: Int64Builder,
    loinc: StringBuilder,
    name: StringBuilder,
    value: Float64Builder,
    unit: StringBuilder,
    effective_date: Date32Builder,
}

impl ObservationColumns {
    fn finish(mut self) -> RecordBatch {
        batch(vec![
            ("patient_id", Arc::new(self.patient_id.finish())),
            ("sex", Arc::new(self.sex.finish())),
            ("age", Arc::new(self.age.finish())),
            ("loinc", Arc::new(self.loinc.finish())),
            ("name", Arc::new(self.name.finish())),
            ("value", Arc::new(self.value.finish())),
            ("unit", Arc::new(self.unit.finish())),
            ("effective_date", Arc::new(self.effective_date.finish())),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data() {
        let a = generate(7, 0.05).unwrap();
        let b = generate(7, 0.05).unwrap();
        for (sa, sb) in a.iter().zip(&b) {
            for ((_, ta), (_, tb)) in sa.tables.iter().zip(&sb.tables) {
                assert_eq!(ta, tb);
            }
        }
        let c = generate(8, 0.05).unwrap();
        assert_ne!(a[0].tables[0].1, c[0].tables[0].1);
    }

    #[test]
    fn sites_differ_in_size_and_case_mix() {
        let sites = generate(1, 0.2).unwrap();
        let rows: Vec<usize> = sites.iter().map(|s| s.tables[0].1.num_rows()).collect();
        assert_eq!(rows, vec![1200, 600, 300]);
        let ages = sites[2].tables[0].1.column(3).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().clone();
        assert!(ages.values().iter().all(|a| *a < 18), "the children's hospital has only children");
        assert!(sites.iter().all(|s| s.tables[1].1.num_rows() > 0 && s.tables[2].1.num_rows() > 0));
    }

    #[test]
    fn events_happen_after_birth_at_every_scale() {
        for seed in 0..3 {
            for site in generate(seed, 0.3).unwrap() {
                for (name, batch) in &site.tables[1..] {
                    let ages = batch.column(2).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
                    assert!(ages.values().iter().all(|a| *a >= 0), "{name} has an event before birth");
                }
            }
        }
    }

    #[test]
    fn bad_scale_is_refused() {
        assert!(generate(1, 0.0).is_err());
        assert!(generate(1, f64::NAN).is_err());
    }
}
