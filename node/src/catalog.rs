//! The node's datasets: registered with DataFusion from Parquet/CSV files (or, for
//! embedding and tests, any table provider), checked against their declared columns, and
//! described as the catalogue the node announces.

use crate::config::{DatasetConfig, FileFormat};
use crate::{Error, Result};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::TableProvider;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use std::sync::Arc;
use verbund_proto::v1 as pb;
use verbund_query::literal::column_type_of;

pub struct Catalog {
    pub(crate) ctx: SessionContext,
    catalogue: pb::Catalogue,
}

impl Catalog {
    pub fn new() -> Self {
        let ctx = SessionContext::new();
        verbund_query::functions::register_all(&ctx);
        Self { ctx, catalogue: pb::Catalogue::default() }
    }

    /// Registers every configured dataset, failing with the dataset's name and the reason
    /// when a file is missing, unreadable or lacks a declared column.
    pub async fn open(datasets: &[DatasetConfig]) -> Result<Self> {
        let mut catalog = Self::new();
        for d in datasets {
            catalog.register_file(d).await?;
        }
        Ok(catalog)
    }

    async fn register_file(&mut self, d: &DatasetConfig) -> Result<()> {
        let dataset_err = |message: String| Error::Dataset { dataset: d.name.clone(), message };
        if !d.path.exists() {
            return Err(dataset_err(format!("file {} does not exist", d.path.display())));
        }
        let path = d.path.to_str().ok_or_else(|| dataset_err("path is not valid UTF-8".into()))?;
        let registered = match d.format()? {
            FileFormat::Parquet => self.ctx.register_parquet(&d.name, path, ParquetReadOptions::default()).await,
            FileFormat::Csv => self.ctx.register_csv(&d.name, path, CsvReadOptions::new().has_header(true)).await,
        };
        registered.map_err(|e| dataset_err(format!("cannot read {}: {}", d.path.display(), e.find_root())))?;
        let provider =
            self.ctx.table_provider(d.name.as_str()).await.map_err(|e| dataset_err(e.find_root().to_string()))?;
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
            infos.push(pb::ColumnInfo { name: column.to_string(), r#type: column_type as i32 });
        }
        self.catalogue.datasets.push(pb::DatasetInfo {
            name: name.to_string(),
            patient_key: patient_key.to_string(),
            columns: infos,
        });
        Ok(())
    }

    pub fn catalogue(&self) -> &pb::Catalogue {
        &self.catalogue
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}
