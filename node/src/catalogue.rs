//! The node's datasets: registered with DataFusion from Parquet/CSV files (or, for
//! embedding and tests, any table provider), checked against their declared columns, and
//! described as the catalogue the node announces.

use crate::config::{DatasetConfig, FileFormat};
use crate::{Error, Result};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::datasource::TableProvider;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext, ident, lit};
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_query::literal::column_type_of;

pub struct Catalogue {
    pub(crate) ctx: SessionContext,
    catalogue: pb::Catalogue,
    /// Per dataset, what identifies its data as loaded: differentially private noise is
    /// derived from it, so new data gets new noise (and a new charge) for every question.
    versions: std::collections::HashMap<String, String>,
    /// The criteria index of this data (filled on first use, dropped with the data).
    pub(crate) index: crate::index::ClinicalIndex,
}

impl Catalogue {
    pub fn new() -> Self {
        // Nothing spills to disk: a query that outgrows its memory limit is refused instead
        // (a node's disk is the hospital's, and a full disk must not take the node down).
        let disk = DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled);
        let ctx = match RuntimeEnvBuilder::new().with_disk_manager_builder(disk).build_arc() {
            Ok(runtime) => SessionContext::new_with_config_rt(SessionConfig::new(), runtime),
            Err(e) => {
                tracing::warn!(error = %e, "cannot configure the query runtime; using DataFusion's defaults");
                SessionContext::new()
            }
        };
        verbund_query::functions::register_all(&ctx);
        Self { ctx, catalogue: pb::Catalogue::default(), versions: Default::default(), index: Default::default() }
    }

    /// Registers every configured dataset, failing with the dataset's name and the reason
    /// when a file is missing, unreadable or lacks a declared column. Datasets with rows
    /// that name no patient are reported in the log.
    pub async fn open(datasets: &[DatasetConfig]) -> Result<Self> {
        let mut catalogue = Self::new();
        for d in datasets {
            catalogue.register_file(d).await?;
            if let Some(model) = &d.model {
                catalogue.set_model(&d.name, model)?;
            }
            catalogue.report_unlinked(&d.name, &d.patient_key).await?;
        }
        Ok(catalogue)
    }

    /// Counts the rows of a dataset whose patient key is NULL or empty, and says so when
    /// there are any: each counts as a patient of its own in every cell-size check.
    pub async fn report_unlinked(&self, dataset: &str, patient_key: &str) -> Result<u64> {
        let dataset_err = |message: String| Error::Dataset { dataset: dataset.into(), message };
        let df = self.ctx.table(dataset).await.map_err(|e| dataset_err(e.find_root().to_string()))?;
        let key = ident(patient_key);
        let is_string = matches!(
            df.schema().field_with_unqualified_name(patient_key).map(|f| f.data_type().clone()),
            Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        );
        let missing = if is_string { key.clone().is_null().or(key.eq(lit(""))) } else { key.is_null() };
        let counted = df
            .filter(missing)
            .and_then(|df| df.aggregate(vec![], vec![count(lit(1i64)).alias("n")]))
            .map_err(|e| dataset_err(e.find_root().to_string()))?;
        let batches = counted.collect().await.map_err(|e| dataset_err(format!("cannot read: {}", e.find_root())))?;
        let unlinked = batches
            .first()
            .filter(|b| b.num_rows() > 0)
            .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>().map(|c| c.value(0)))
            .unwrap_or(0)
            .max(0) as u64;
        if unlinked > 0 {
            tracing::warn!(
                dataset,
                unlinked_rows = unlinked,
                "rows without a patient key ('{patient_key}' NULL or empty): each counts as a patient of its own in cell-size checks; link them to patients to use them fully"
            );
        }
        Ok(unlinked)
    }

    async fn register_file(&mut self, d: &DatasetConfig) -> Result<()> {
        let dataset_err = |message: String| Error::Dataset { dataset: d.name.clone(), message };
        if !d.path.exists() {
            return Err(dataset_err(format!("file {} does not exist", d.path.display())));
        }
        // A `current` symlink (verbund import) is resolved now: the node serves this
        // generation until it reloads, whatever the importer does meanwhile.
        let resolved = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
        let path = resolved.to_str().ok_or_else(|| dataset_err("path is not valid UTF-8".into()))?;
        let registered = match d.format()? {
            FileFormat::Parquet => self.ctx.register_parquet(&d.name, path, ParquetReadOptions::default()).await,
            FileFormat::Csv => self.ctx.register_csv(&d.name, path, CsvReadOptions::new().has_header(true)).await,
        };
        registered.map_err(|e| dataset_err(format!("cannot read {}: {}", d.path.display(), e.find_root())))?;
        let provider =
            self.ctx.table_provider(d.name.as_str()).await.map_err(|e| dataset_err(e.find_root().to_string()))?;
        self.versions.insert(d.name.clone(), dataset_version(&d.path));
        self.describe(&d.name, provider.schema(), &d.patient_key, &d.columns)
    }

    /// Adds a dataset backed by any DataFusion table provider.
    pub fn add_table(
        &mut self,
        name: &str,
        provider: Arc<dyn TableProvider>,
        patient_key: &str,
        columns: &[String],
    ) -> Result<()> {
        if self.catalogue.datasets.iter().any(|d| d.name == name) {
            return Err(Error::Dataset { dataset: name.into(), message: "declared twice".into() });
        }
        let schema = provider.schema();
        self.versions.insert(name.to_string(), format!("table:{name}"));
        self.ctx
            .register_table(name, provider)
            .map_err(|e| Error::Dataset { dataset: name.into(), message: e.find_root().to_string() })?;
        self.describe(name, schema, patient_key, columns)
    }

    fn describe(&mut self, name: &str, schema: SchemaRef, patient_key: &str, columns: &[String]) -> Result<()> {
        let mut names: Vec<&str> = columns.iter().map(String::as_str).collect();
        if !names.contains(&patient_key) {
            names.insert(0, patient_key);
        }
        let mut infos = Vec::with_capacity(names.len());
        for column in names {
            let field = schema.field_with_name(column).map_err(|_| Error::Dataset {
                dataset: name.into(),
                message: format!(
                    "declared column '{column}' is not in the data; the data has: {}",
                    schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
                ),
            })?;
            let column_type = column_type_of(field.data_type()).ok_or_else(|| Error::Dataset {
                dataset: name.into(),
                message: format!(
                    "column '{column}' has type {}, which verbund cannot expose (integers, floats, strings, booleans and dates can be)",
                    field.data_type()
                ),
            })?;
            infos.push(pb::ColumnInfo { name: column.to_string(), r#type: column_type as i32, levels: Vec::new() });
        }
        self.catalogue.datasets.push(pb::DatasetInfo {
            name: name.to_string(),
            patient_key: patient_key.to_string(),
            columns: infos,
            model: String::new(),
        });
        Ok(())
    }

    /// Says what a dataset is ("fhir/conditions": see docs/fhir-datasets.md), so that
    /// criteria naming the model find it whatever the site calls it.
    pub fn set_model(&mut self, dataset: &str, model: &str) -> Result<()> {
        let entry = self.catalogue.datasets.iter_mut().find(|d| d.name == dataset);
        let entry =
            entry.ok_or_else(|| Error::Dataset { dataset: dataset.into(), message: "not registered".into() })?;
        entry.model = model.to_string();
        Ok(())
    }

    /// The DataFusion session the datasets are registered in (for tools such as profilers).
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn catalogue(&self) -> &pb::Catalogue {
        &self.catalogue
    }

    /// The version of a dataset's data as loaded (see `versions`).
    pub fn version(&self, dataset: &str) -> &str {
        self.versions.get(dataset).map(String::as_str).unwrap_or("")
    }

    /// Sets the version of a dataset added with [`Catalogue::add_table`] (tests that change a
    /// table's contents, embedders that know their data's version).
    pub fn set_version(&mut self, dataset: &str, version: impl Into<String>) {
        self.versions.insert(dataset.to_string(), version.into());
    }
}

/// The version of a configured dataset's data on disk, its symlinks resolved (see
/// [`file_version`]): what a reload compares with the version served.
pub fn dataset_version(path: &std::path::Path) -> String {
    file_version(&std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// A file's (or a directory's files') path, size and modification time: changes when the
/// data is replaced.
fn file_version(path: &std::path::Path) -> String {
    let describe = |p: &std::path::Path| match std::fs::metadata(p) {
        Ok(m) => {
            let modified = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            format!("{}:{}:{}", p.display(), m.len(), modified.map(|d| d.as_nanos()).unwrap_or(0))
        }
        Err(_) => p.display().to_string(),
    };
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut files: Vec<String> = entries.filter_map(|e| e.ok()).map(|e| describe(&e.path())).collect();
            files.sort();
            files.join("|")
        }
        Err(_) => describe(path),
    }
}

impl Default for Catalogue {
    fn default() -> Self {
        Self::new()
    }
}
