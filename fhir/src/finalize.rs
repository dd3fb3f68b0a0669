//! Finalize (decision D7): merge the staged rows of this run with each dataset's current
//! generation, one version per resource (the newest; a newest `DELETE` removes it), write
//! `gen-<N>` and swap `current`.
//!
//! The merge is DataFusion's sort on (`_base`, `_ver` DESC) under a [`FairSpillPool`] with a
//! disk manager in `<out>/.tmp`, so it spills instead of growing; the sorted stream is then
//! cut to the newest version of each resource batch by batch. Medication codes (the
//! reference table is small: one entry per Medication) are copied onto medication uses while
//! they stream, and their `codings` rows written as `derived-medication.parquet` beside the
//! codings' own part, which the next merge does not read back (it derives them anew).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray, StringBuilder};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::ImportError;
use crate::extract::MedStage;
use crate::table::{COLUMNS, DATASETS, Ds, MEDICATION_COLUMNS, ParquetFile, Table, schema_of};

type Codes = Vec<(Option<String>, Option<String>)>;

const DERIVED: &str = "derived-medication.parquet";

/// One more than the highest `gen-<N>` under `out`.
pub fn next_generation(out: &Path) -> u64 {
    let mut max = 0;
    for name in DATASETS {
        let Ok(entries) = std::fs::read_dir(out.join(name)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Some(n) =
                e.file_name().to_str().and_then(|n| n.strip_prefix("gen-")).and_then(|n| n.parse::<u64>().ok())
            {
                max = max.max(n);
            }
        }
    }
    max + 1
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Write { path: path.to_path_buf(), source }
}

fn merge_err(dataset: &str) -> impl Fn(DataFusionError) -> ImportError + '_ {
    move |source| ImportError::Merge { dataset: dataset.to_string(), source }
}

pub async fn finalize(
    out: &Path,
    staging: &Path,
    generation: u64,
    memory_mb: usize,
    meds: Vec<MedStage>,
    tombstones: bool,
) -> Result<BTreeMap<String, u64>, ImportError> {
    let medications = merge_medications(out, meds)?;
    let tmp = out.join(".tmp");
    std::fs::create_dir_all(&tmp).map_err(write_err(&tmp))?;
    let runtime = runtime(&tmp, memory_mb).map_err(merge_err("(runtime)"))?;

    for name in DATASETS {
        let gen_dir = out.join(name).join(format!("gen-{generation}"));
        let _ = std::fs::remove_dir_all(&gen_dir);
        std::fs::create_dir_all(&gen_dir).map_err(write_err(&gen_dir))?;
    }
    let mut rows = BTreeMap::new();
    let mut derived: Option<Table> = None;
    for (i, name) in DATASETS.iter().enumerate() {
        let dir = out.join(name);
        let gen_dir = dir.join(format!("gen-{generation}"));
        if i == Ds::Codings as usize
            && let Some(mut t) = derived.take()
        {
            t.close()?;
        }
        if i == Ds::MedicationUses as usize {
            derived = Some(Table::new(
                COLUMNS[Ds::Codings as usize],
                out.join(DATASETS[Ds::Codings as usize]).join(format!("gen-{generation}")).join(DERIVED),
            ));
        }
        let staged = staging.join(format!("{name}.parquet"));
        let tomb = staging.join("_tombstones.parquet");
        let n = merge_dataset(
            &runtime,
            name,
            COLUMNS[i],
            existing_parts(&dir),
            staged.exists().then_some(staged),
            (tombstones && tomb.exists()).then_some(tomb),
            &gen_dir.join("part-0.parquet"),
            (i == Ds::MedicationUses as usize).then_some((&medications, &mut derived)),
        )
        .await?;
        if i == Ds::Codings as usize && n > 0 {
            sort_codings(&runtime, &gen_dir.join("part-0.parquet")).await?;
        }
        rows.insert((*name).to_string(), n);
    }
    // The derived codings count as codings rows.
    if let Some(count) = derived_rows(out, generation)? {
        *rows.entry(DATASETS[Ds::Codings as usize].to_string()).or_default() += count;
    }
    for name in DATASETS {
        swap(&out.join(name), generation)?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(rows)
}

/// Rewrites the merged codings ordered by (element, system, code, resource): a code
/// criterion then reads only the row groups and pages whose statistics can hold its codes,
/// instead of every coding of every resource. The sort spills like the merge.
async fn sort_codings(runtime: &Arc<RuntimeEnv>, part: &Path) -> Result<(), ImportError> {
    let name = DATASETS[Ds::Codings as usize];
    let err = merge_err(name);
    // Not named part-*: a later merge never reads it back, and it is gone before the swap.
    let unsorted = part.with_file_name("unsorted.parquet");
    std::fs::rename(part, &unsorted).map_err(write_err(part))?;
    let ctx = context(runtime);
    let df =
        ctx.read_parquet(unsorted.to_string_lossy().to_string(), ParquetReadOptions::default()).await.map_err(&err)?;
    ctx.register_table("codings", df.into_view()).map_err(&err)?;
    let sql = "SELECT * FROM codings ORDER BY \"element\", \"system\", \"code\", \"resource\"";
    let mut stream = ctx.sql(sql).await.map_err(&err)?.execute_stream().await.map_err(&err)?;
    let schema = schema_of(COLUMNS[Ds::Codings as usize]);
    let mut file = ParquetFile::create(part, schema.clone())?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(&err)?;
        file.write(&declared_types(&batch, &schema).map_err(|e| err(e.into()))?)?;
    }
    file.close()?;
    std::fs::remove_file(&unsorted).map_err(write_err(&unsorted))?;
    Ok(())
}

/// `batch` with the dataset's declared column types: DataFusion may hand strings back as
/// Utf8View, and the files keep the types of docs/fhir-datasets.md.
fn declared_types(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

fn derived_rows(out: &Path, generation: u64) -> Result<Option<u64>, ImportError> {
    let path = out.join(DATASETS[Ds::Codings as usize]).join(format!("gen-{generation}")).join(DERIVED);
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|source| ImportError::Read { path: path.clone(), source })?;
    Ok(Some(builder.metadata().file_metadata().num_rows().max(0) as u64))
}

fn runtime(tmp: &Path, memory_mb: usize) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let bytes = memory_mb.max(16) * 1024 * 1024;
    RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(bytes)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![tmp.to_path_buf()])),
        )
        .build_arc()
}

fn context(runtime: &Arc<RuntimeEnv>) -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(1).with_batch_size(8192);
    config.options_mut().execution.parquet.schema_force_view_types = false;
    let ctx = SessionContext::new_with_config_rt(config, runtime.clone());
    // `Type/id` of the resource a row follows: an Observation component or a coding row of one
    // is `Observation/<id>#component<i>` (a FHIR id never contains `#`).
    let base = create_udf(
        "fhir_base",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let strings = arrays
                .first()
                .and_then(|a| a.as_string_opt::<i32>())
                .ok_or_else(|| DataFusionError::Internal("fhir_base takes a Utf8 column".into()))?;
            let out: StringArray = strings.iter().map(|v| v.map(|s| s.split('#').next().unwrap_or(s))).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    ctx.register_udf(base);
    ctx
}

/// The parts of the current generation that hold the dataset's own rows.
fn existing_parts(dir: &Path) -> Vec<String> {
    let current = dir.join("current");
    let Ok(entries) = std::fs::read_dir(&current) else {
        return Vec::new();
    };
    let mut parts: Vec<String> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("part-") && n.ends_with(".parquet"))
        })
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter_map(|p| p.to_str().map(str::to_string))
        .collect();
    parts.sort();
    parts
}

fn quote(c: &str) -> String {
    format!("\"{c}\"")
}

#[allow(clippy::too_many_arguments)]
async fn merge_dataset(
    runtime: &Arc<RuntimeEnv>,
    name: &str,
    columns: &[(&str, crate::table::Kind)],
    existing: Vec<String>,
    staged: Option<PathBuf>,
    tombstones: Option<PathBuf>,
    target: &Path,
    mut medication: Option<(&BTreeMap<String, Codes>, &mut Option<Table>)>,
) -> Result<u64, ImportError> {
    let schema = schema_of(columns);
    let mut file = ParquetFile::create(target, schema.clone())?;
    if existing.is_empty() && staged.is_none() {
        file.close()?;
        return Ok(0);
    }
    let err = merge_err(name);
    let ctx = context(runtime);
    let cols: Vec<String> = columns.iter().map(|(c, _)| quote(c)).collect();
    let cols = cols.join(", ");
    let mut parts = Vec::new();
    if let Some(p) = &staged {
        let df =
            ctx.read_parquet(p.to_string_lossy().to_string(), ParquetReadOptions::default()).await.map_err(&err)?;
        ctx.register_table("staged", df.into_view()).map_err(&err)?;
        parts.push(format!("SELECT {cols}, \"_base\", \"_ver\", false AS \"_tomb\" FROM staged"));
    }
    if !existing.is_empty() {
        let df = ctx.read_parquet(existing, ParquetReadOptions::default()).await.map_err(&err)?;
        ctx.register_table("existing", df.into_view()).map_err(&err)?;
        parts.push(format!(
            "SELECT {cols}, fhir_base(\"resource\") AS \"_base\", CAST(0 AS BIGINT) AS \"_ver\", false AS \"_tomb\" FROM existing"
        ));
    }
    if let Some(p) = &tombstones {
        let df =
            ctx.read_parquet(p.to_string_lossy().to_string(), ParquetReadOptions::default()).await.map_err(&err)?;
        ctx.register_table("tombstones", df.into_view()).map_err(&err)?;
        let nulls: Vec<String> =
            columns.iter().map(|(c, k)| format!("CAST(NULL AS {}) AS {}", k.sql(), quote(c))).collect();
        parts.push(format!("SELECT {}, \"_base\", \"_ver\", true AS \"_tomb\" FROM tombstones", nulls.join(", ")));
    }
    let sql = format!("SELECT * FROM ({}) AS merged ORDER BY \"_base\", \"_ver\" DESC", parts.join(" UNION ALL "));
    let mut stream = ctx.sql(&sql).await.map_err(&err)?.execute_stream().await.map_err(&err)?;
    let n = columns.len();
    let mut dedup = Dedup::default();
    let mut written = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(&err)?;
        let mask = dedup.mask(&batch, n).map_err(&err)?;
        let projection: Vec<usize> = (0..n).collect();
        let kept =
            batch.project(&projection).and_then(|b| filter_record_batch(&b, &mask)).map_err(|e| err(e.into()))?;
        if kept.num_rows() == 0 {
            continue;
        }
        let mut kept = declared_types(&kept, &schema).map_err(|e| err(e.into()))?;
        if let Some((meds, derived)) = medication.as_mut() {
            kept = fill_medications(&schema, &kept, meds, derived.as_mut()).map_err(|e| match e {
                Fill::Arrow(a) => err(a.into()),
                Fill::Write(w) => w,
            })?;
        }
        written += kept.num_rows() as u64;
        file.write(&kept)?;
    }
    file.close()?;
    Ok(written)
}

/// Keeps, of rows sorted by (`_base`, `_ver` DESC), those of the newest version of each
/// resource, none when that version is a tombstone.
#[derive(Default)]
struct Dedup {
    base: Option<String>,
    ver: i64,
    keep: bool,
}

impl Dedup {
    fn mask(&mut self, batch: &RecordBatch, n: usize) -> datafusion::error::Result<BooleanArray> {
        let bad = || DataFusionError::Internal("merge columns have unexpected types".into());
        let base = arrow::compute::cast(batch.column(n), &DataType::Utf8)?;
        let base = base.as_string_opt::<i32>().ok_or_else(bad)?;
        let ver = batch.column(n + 1).as_primitive_opt::<Int64Type>().ok_or_else(bad)?;
        let tomb = batch.column(n + 2).as_boolean_opt().ok_or_else(bad)?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let b = base.is_valid(i).then(|| base.value(i));
            let v = ver.value(i);
            if self.base.as_deref() != b {
                self.base = b.map(str::to_string);
                self.ver = v;
                self.keep = !tomb.value(i) && b.is_some();
            }
            out.push(self.keep && v == self.ver);
        }
        Ok(BooleanArray::from(out))
    }
}

enum Fill {
    Arrow(arrow::error::ArrowError),
    Write(ImportError),
}

/// `med_system`/`med_code` from the referenced Medication, and its codings as `codings` rows.
fn fill_medications(
    schema: &SchemaRef,
    batch: &RecordBatch,
    meds: &BTreeMap<String, Codes>,
    derived: Option<&mut Table>,
) -> Result<RecordBatch, Fill> {
    let strings = |i: usize| {
        batch
            .column(i)
            .as_string_opt::<i32>()
            .ok_or_else(|| Fill::Arrow(arrow::error::ArrowError::SchemaError("medication_uses types".into())))
    };
    let (resource, patient, medication, system, code) =
        (strings(0)?, strings(1)?, strings(3)?, strings(4)?, strings(5)?);
    let mut systems = StringBuilder::new();
    let mut codes = StringBuilder::new();
    let mut derived = derived;
    for i in 0..batch.num_rows() {
        if medication.is_valid(i) {
            let found = meds.get(medication.value(i));
            let first = found.and_then(|c| c.first());
            systems.append_option(first.and_then(|(s, _)| s.as_deref()));
            codes.append_option(first.and_then(|(_, c)| c.as_deref()));
            if let (Some(all), Some(t)) = (found, derived.as_deref_mut()) {
                for (s, c) in all {
                    t.row()
                        .s(resource.is_valid(i).then(|| resource.value(i)))
                        .s(patient.is_valid(i).then(|| patient.value(i)))
                        .s(Some("medication"))
                        .s(s.as_deref())
                        .s(c.as_deref())
                        .end()
                        .map_err(Fill::Write)?;
                }
            }
        } else {
            systems.append_option(system.is_valid(i).then(|| system.value(i)));
            codes.append_option(code.is_valid(i).then(|| code.value(i)));
        }
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[4] = Arc::new(systems.finish());
    columns[5] = Arc::new(codes.finish());
    RecordBatch::try_new(schema.clone(), columns).map_err(Fill::Arrow)
}

/// `_reference/medications.parquet`: the previous table with this run's Medications applied
/// (newest wins, DELETE removes), written beside and renamed over.
fn merge_medications(out: &Path, staged: Vec<MedStage>) -> Result<BTreeMap<String, Codes>, ImportError> {
    let dir = out.join("_reference");
    let path = dir.join("medications.parquet");
    let mut meds: BTreeMap<String, Codes> = BTreeMap::new();
    if let Ok(file) = File::open(&path) {
        let read_err = |source| ImportError::Read { path: path.clone(), source };
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build()).map_err(read_err)?;
        for batch in reader {
            let batch = batch.map_err(|e| read_err(e.into()))?;
            let col = |i: usize| batch.column(i).as_string_opt::<i32>();
            let (Some(r), Some(s), Some(c)) = (col(0), col(1), col(2)) else {
                continue;
            };
            for i in 0..batch.num_rows() {
                if r.is_valid(i) {
                    meds.entry(r.value(i).to_string()).or_default().push((
                        s.is_valid(i).then(|| s.value(i).to_string()),
                        c.is_valid(i).then(|| c.value(i).to_string()),
                    ));
                }
            }
        }
    }
    if staged.is_empty() {
        return Ok(meds);
    }
    let mut staged = staged;
    staged.sort_by_key(|m| m.ver);
    for m in staged {
        match m.codes {
            Some(codes) => {
                meds.insert(m.resource, codes);
            }
            None => {
                meds.remove(&m.resource);
            }
        }
    }
    std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
    let tmp = dir.join("medications.parquet.tmp");
    let mut table = Table::new(MEDICATION_COLUMNS, tmp.clone());
    for (resource, codes) in &meds {
        for (s, c) in codes {
            table.row().s(Some(resource)).s(s.as_deref()).s(c.as_deref()).end()?;
        }
    }
    if !table.close()? {
        ParquetFile::create(&tmp, schema_of(MEDICATION_COLUMNS))?.close()?;
    }
    std::fs::rename(&tmp, &path).map_err(write_err(&path))?;
    Ok(meds)
}

/// Points `current` at `gen-<N>` (a new symlink renamed over the old one), keeps the
/// generation it pointed at before and removes every other.
fn swap(dir: &Path, generation: u64) -> Result<(), ImportError> {
    let current = dir.join("current");
    let previous = std::fs::read_link(&current).ok();
    let new = format!("gen-{generation}");
    let tmp = dir.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&new, &tmp).map_err(write_err(&tmp))?;
    std::fs::rename(&tmp, &current).map_err(write_err(&current))?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let keep = name == new || previous.as_deref().is_some_and(|p| p == Path::new(name));
            if name.starts_with("gen-") && !keep {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}
