//! Deterministic encounter-level data for the benchmarks: one row per encounter, about ten
//! encounters per patient, written as one Parquet file (snappy, default row groups).
//!
//! Columns: `patient_id` (int64), `sex`, `age` (int64), `region`, and five float covariates
//! with NULLs where a measurement is missing: `bmi` (10 % NULL), `hba1c` (30 %), `sbp` (5 %),
//! `ldl` (25 %), `glucose` (20 %).

use anyhow::Context;
use arrow::array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const TABLE: &str = "t";
pub const PATIENT_KEY: &str = "patient_id";
pub const COLUMNS: [&str; 9] = ["patient_id", "sex", "age", "region", "bmi", "hba1c", "sbp", "ldl", "glucose"];
/// Bump when the generator changes, so that cached files are not reused.
const GENERATOR_VERSION: u32 = 1;
const BATCH_ROWS: usize = 1 << 20;

const REGIONS: [(&str, f64); 8] = [
    ("DE-NW", 0.22),
    ("DE-BY", 0.16),
    ("DE-BW", 0.13),
    ("DE-NI", 0.10),
    ("DE-HE", 0.08),
    ("DE-SN", 0.05),
    ("DE-BE", 0.04),
    ("DE-HH", 0.02),
];

struct Patient {
    sex: &'static str,
    region: &'static str,
    age: i64,
    /// Per-patient offsets of the covariates (in standard deviations).
    offsets: [f64; 5],
}

/// (mean, sd, minimum, share of NULLs) per covariate, in the order of [`COLUMNS`]`[4..]`.
const COVARIATES: [(f64, f64, f64, f64); 5] = [
    (26.5, 4.5, 12.0, 0.10),   // bmi kg/m²
    (5.8, 0.9, 3.5, 0.30),     // hba1c %
    (128.0, 17.0, 70.0, 0.05), // sbp mmHg
    (125.0, 35.0, 30.0, 0.25), // ldl mg/dl
    (100.0, 25.0, 50.0, 0.20), // glucose mg/dl
];

pub fn schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("patient_id", DataType::Int64, false),
        Field::new("sex", DataType::Utf8, false),
        Field::new("age", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
    ];
    fields.extend(COLUMNS[4..].iter().map(|c| Field::new(*c, DataType::Float64, true)));
    Arc::new(Schema::new(fields))
}

fn pick<R: rand::Rng>(rng: &mut R, choices: &[(&'static str, f64)]) -> &'static str {
    let mut r = rng.random::<f64>() * choices.iter().map(|(_, w)| w).sum::<f64>();
    for (name, w) in choices {
        if r < *w {
            return name;
        }
        r -= w;
    }
    choices[choices.len() - 1].0
}

/// Writes `rows` rows for `rows / 10` patients (at least one) to `path`.
pub fn generate(path: &Path, rows: usize, seed: u64) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let unit = Normal::new(0.0, 1.0).context("standard normal")?;
    let n_patients = (rows / 10).max(1);
    let patients: Vec<Patient> = (0..n_patients)
        .map(|_| {
            let sex = verbund_synth::draw_sex(&mut rng);
            // Older patients have more encounters in a hospital; a skew towards age 60-80.
            let age = (rng.random::<f64>().sqrt() * 95.0) as i64;
            let offsets = [0; 5].map(|_| unit.sample(&mut rng) * 0.8);
            Patient { sex, region: pick(&mut rng, &REGIONS), age, offsets }
        })
        .collect();

    let tmp = path.with_extension("parquet.partial");
    let file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let schema = schema();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))?;
    let mut written = 0;
    while written < rows {
        let n = BATCH_ROWS.min(rows - written);
        let mut id = Int64Builder::with_capacity(n);
        let mut sex = StringBuilder::with_capacity(n, n * 6);
        let mut age = Int64Builder::with_capacity(n);
        let mut region = StringBuilder::with_capacity(n, n * 5);
        let mut covariates: Vec<Float64Builder> = (0..5).map(|_| Float64Builder::with_capacity(n)).collect();
        for _ in 0..n {
            let p = rng.random_range(0..n_patients);
            let patient = &patients[p];
            id.append_value(1_000_000_000 + p as i64);
            sex.append_value(patient.sex);
            age.append_value((patient.age + rng.random_range(0..5)).min(100));
            region.append_value(patient.region);
            for (k, (mean, sd, min, nulls)) in COVARIATES.iter().enumerate() {
                if rng.random_bool(*nulls) {
                    covariates[k].append_null();
                } else {
                    let z = patient.offsets[k] + unit.sample(&mut rng) * 0.6;
                    let v = (mean + z * sd).max(*min);
                    covariates[k].append_value((v * 10.0).round() / 10.0);
                }
            }
        }
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(id.finish()), Arc::new(sex.finish()), Arc::new(age.finish()), Arc::new(region.finish())];
        columns.extend(covariates.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        written += n;
    }
    writer.close()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    Ok(())
}

/// The dataset for `rows` and `seed` under `cache_dir`, generated on first use.
pub fn cached(cache_dir: &Path, rows: usize, seed: u64) -> anyhow::Result<(PathBuf, bool)> {
    let dir = cache_dir.join(format!("encounters-v{GENERATOR_VERSION}-rows{rows}-seed{seed}"));
    let path = dir.join("encounters.parquet");
    if path.exists() {
        return Ok((path, false));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    generate(&path, rows, seed)?;
    Ok((path, true))
}
