//! Helpers shared by the import tests: run an import, read a dataset back as text rows.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use verbund_fhir::{ImportOptions, ImportSummary, import};

pub type Rows = Vec<Vec<Option<String>>>;

/// The MII test material, kept gzip-compressed in the repository (ccdl/tests/data/mii-ccdl,
/// Apache-2.0, see the LICENSE there), as a plain file: decompressed once into cargo's
/// temporary directory for tests.
pub fn shared(name: &str) -> PathBuf {
    let plain = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mii-ccdl").join(name);
    if plain.exists() {
        return plain;
    }
    let packed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ccdl/tests/data/mii-ccdl").join(format!("{name}.gz"));
    let mut reader = flate2::read::GzDecoder::new(File::open(&packed).expect("the MII test material"));
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut text).expect("gzip");
    std::fs::create_dir_all(plain.parent().expect("a directory")).expect("cargo's temporary directory");
    // Tests run in parallel: write aside, then rename into place.
    let aside = plain.with_extension(format!("{}-{:?}.tmp", std::process::id(), std::thread::current().id()));
    std::fs::write(&aside, text).expect("write");
    std::fs::rename(&aside, &plain).expect("rename");
    plain
}

pub async fn run(inputs: &[&Path], out: &Path) -> anyhow::Result<ImportSummary> {
    let options = ImportOptions {
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        out: out.to_path_buf(),
        memory_mb: 64,
        progress: false,
    };
    Ok(import(&options).await?)
}

pub fn batches(out: &Path, dataset: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let dir = out.join(dataset).join("current");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    let mut all = Vec::new();
    for f in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&f)?)?.build()?;
        for b in reader {
            all.push(b?);
        }
    }
    Ok(all)
}

/// All rows of a dataset, every column as text (dates as YYYY-MM-DD), sorted.
pub fn rows(out: &Path, dataset: &str) -> anyhow::Result<Rows> {
    let mut rows = Vec::new();
    for b in batches(out, dataset)? {
        let cols = b.columns().iter().map(|c| cast(c, &DataType::Utf8)).collect::<Result<Vec<_>, _>>()?;
        for i in 0..b.num_rows() {
            rows.push(
                cols.iter()
                    .map(|c| {
                        let s = c.as_string::<i32>();
                        s.is_valid(i).then(|| s.value(i).to_string())
                    })
                    .collect(),
            );
        }
    }
    rows.sort();
    Ok(rows)
}

/// The column names of a dataset's files.
pub fn column_names(out: &Path, dataset: &str) -> anyhow::Result<Vec<String>> {
    let b = batches(out, dataset)?;
    let schema = match b.first() {
        Some(b) => b.schema(),
        None => {
            let dir = out.join(dataset).join("current");
            let f = std::fs::read_dir(&dir)?.next().ok_or_else(|| anyhow::anyhow!("no file"))??;
            ParquetRecordBatchReaderBuilder::try_new(File::open(f.path())?)?.schema().clone()
        }
    };
    Ok(schema.fields().iter().map(|f| f.name().clone()).collect())
}

/// Rows as maps column → value, for readable assertions.
pub fn records(out: &Path, dataset: &str) -> anyhow::Result<Vec<std::collections::BTreeMap<String, Option<String>>>> {
    let names = column_names(out, dataset)?;
    Ok(rows(out, dataset)?.into_iter().map(|r| names.iter().cloned().zip(r).collect()).collect())
}

pub fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}
