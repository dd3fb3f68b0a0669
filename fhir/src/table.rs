//! The datasets' schemas (docs/fhir-datasets.md) and the Arrow builders that collect rows and
//! flush them as Parquet row groups, so parsing holds at most one row group per dataset.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::ImportError;

/// Rows per Parquet row group (and per flush of the builders).
pub const ROW_GROUP: usize = 64 * 1024;

/// The datasets, in the order of docs/fhir-datasets.md.
pub const DATASETS: &[&str] = &[
    "patients",
    "conditions",
    "observations",
    "encounters",
    "procedures",
    "medication_uses",
    "specimens",
    "consents",
    "consent_provisions",
    "codings",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Utf8,
    Date,
    F64,
    Bool,
    I64,
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Kind::Utf8 => DataType::Utf8,
            Kind::Date => DataType::Date32,
            Kind::F64 => DataType::Float64,
            Kind::Bool => DataType::Boolean,
            Kind::I64 => DataType::Int64,
        }
    }

    /// The SQL type name DataFusion knows it by.
    pub fn sql(self) -> &'static str {
        match self {
            Kind::Utf8 => "VARCHAR",
            Kind::Date => "DATE",
            Kind::F64 => "DOUBLE",
            Kind::Bool => "BOOLEAN",
            Kind::I64 => "BIGINT",
        }
    }
}

use Kind::{Bool, Date, F64, Utf8};

pub type Columns = &'static [(&'static str, Kind)];

/// Index into [`DATASETS`] and [`COLUMNS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ds {
    Patients = 0,
    Conditions = 1,
    Observations = 2,
    Encounters = 3,
    Procedures = 4,
    MedicationUses = 5,
    Specimens = 6,
    Consents = 7,
    ConsentProvisions = 8,
    Codings = 9,
}

/// The published columns of each dataset, in [`DATASETS`] order.
pub const COLUMNS: [Columns; 10] = [
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("gender", Utf8),
        ("birth_date", Date),
        ("birth_date_end", Date),
        ("deceased", Bool),
        ("deceased_date", Date),
        ("postal_region", Utf8),
    ],
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("code_system", Utf8),
        ("code", Utf8),
        ("onset_start", Date),
        ("onset_end", Date),
        ("recorded_date", Date),
        ("clinical_status", Utf8),
        ("verification_status", Utf8),
        ("encounter", Utf8),
    ],
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("parent", Utf8),
        ("code_system", Utf8),
        ("code", Utf8),
        ("status", Utf8),
        ("value", F64),
        ("value_unit", Utf8),
        ("value_code_system", Utf8),
        ("value_code", Utf8),
        ("effective_start", Date),
        ("effective_end", Date),
        ("encounter", Utf8),
    ],
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("class_system", Utf8),
        ("class_code", Utf8),
        ("status", Utf8),
        ("period_start", Date),
        ("period_end", Date),
        ("part_of", Utf8),
    ],
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("code_system", Utf8),
        ("code", Utf8),
        ("status", Utf8),
        ("performed_start", Date),
        ("performed_end", Date),
        ("encounter", Utf8),
    ],
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("kind", Utf8),
        ("medication", Utf8),
        ("med_system", Utf8),
        ("med_code", Utf8),
        ("status", Utf8),
        ("time_start", Date),
        ("time_end", Date),
    ],
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("type_system", Utf8),
        ("type_code", Utf8),
        ("status", Utf8),
        ("collected_start", Date),
        ("collected_end", Date),
        ("body_site_system", Utf8),
        ("body_site_code", Utf8),
        ("diagnosis", Utf8),
    ],
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("status", Utf8),
        ("research", Bool),
        ("date", Date),
        ("period_start", Date),
        ("period_end", Date),
    ],
    &[
        ("resource", Utf8),
        ("patient_id", Utf8),
        ("status", Utf8),
        ("date", Date),
        ("provision_type", Utf8),
        ("code_system", Utf8),
        ("code", Utf8),
        ("purpose_system", Utf8),
        ("purpose_code", Utf8),
        ("period_start", Date),
        ("period_end", Date),
    ],
    &[("resource", Utf8), ("patient_id", Utf8), ("element", Utf8), ("system", Utf8), ("code", Utf8)],
];

/// Staged rows carry the resource they belong to (`_base`, the `Type/id` a component or coding
/// row follows) and the version within the run (`_ver`, later wins).
pub const STAGING_EXTRA: Columns = &[("_base", Utf8), ("_ver", Kind::I64)];
/// A `DELETE` entry.
pub const TOMBSTONE_COLUMNS: Columns = &[("_base", Utf8), ("_ver", Kind::I64)];
/// `_reference/medications.parquet`: every coding of every Medication, first coding first.
pub const MEDICATION_COLUMNS: Columns = &[("resource", Utf8), ("system", Utf8), ("code", Utf8)];

pub fn schema_of(columns: &[(&str, Kind)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns.iter().map(|(name, kind)| Field::new(*name, kind.data_type(), true)).collect::<Vec<_>>(),
    ))
}

pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .build()
}

/// A Parquet file being written, with its path for error messages.
pub struct ParquetFile {
    path: PathBuf,
    writer: ArrowWriter<File>,
}

impl ParquetFile {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self, ImportError> {
        let file = File::create(path).map_err(|source| ImportError::Write { path: path.to_path_buf(), source })?;
        let writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))
            .map_err(|source| ImportError::Parquet { path: path.to_path_buf(), source })?;
        Ok(Self { path: path.to_path_buf(), writer })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ImportError> {
        self.writer.write(batch).map_err(|source| ImportError::Parquet { path: self.path.clone(), source })
    }

    pub fn close(self) -> Result<(), ImportError> {
        self.writer.close().map(|_| ()).map_err(|source| ImportError::Parquet { path: self.path, source })
    }
}

enum Builder {
    Utf8(StringBuilder),
    Date(Date32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    I64(Int64Builder),
}

impl Builder {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Utf8 => Builder::Utf8(StringBuilder::new()),
            Kind::Date => Builder::Date(Date32Builder::new()),
            Kind::F64 => Builder::F64(Float64Builder::new()),
            Kind::Bool => Builder::Bool(BooleanBuilder::new()),
            Kind::I64 => Builder::I64(Int64Builder::new()),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Utf8(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Utf8(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
        }
    }
}

/// Rows of one dataset (or the tombstones) on their way to a staging Parquet file.
pub struct Table {
    schema: SchemaRef,
    builders: Vec<Builder>,
    rows: usize,
    path: PathBuf,
    file: Option<ParquetFile>,
    pub written: u64,
}

impl Table {
    pub fn new(columns: &[(&str, Kind)], path: PathBuf) -> Self {
        Self {
            schema: schema_of(columns),
            builders: columns.iter().map(|(_, k)| Builder::new(*k)).collect(),
            rows: 0,
            path,
            file: None,
            written: 0,
        }
    }

    /// Starts a row; every column must then be given, in order, and the row ended.
    pub fn row(&mut self) -> Row<'_> {
        Row { table: self, column: 0 }
    }

    fn flush(&mut self) -> Result<(), ImportError> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|source| ImportError::Arrow { path: self.path.clone(), source })?;
        if self.file.is_none() {
            self.file = Some(ParquetFile::create(&self.path, self.schema.clone())?);
        }
        if let Some(file) = self.file.as_mut() {
            file.write(&batch)?;
        }
        self.written += self.rows as u64;
        self.rows = 0;
        Ok(())
    }

    /// Flushes what is left and closes the file; `true` when a file was written.
    pub fn close(&mut self) -> Result<bool, ImportError> {
        self.flush()?;
        match self.file.take() {
            Some(file) => file.close().map(|()| true),
            None => Ok(false),
        }
    }
}

pub struct Row<'a> {
    table: &'a mut Table,
    column: usize,
}

impl Row<'_> {
    fn next(&mut self) -> Option<&mut Builder> {
        let b = self.table.builders.get_mut(self.column);
        self.column += 1;
        b
    }

    pub fn s(mut self, v: Option<&str>) -> Self {
        match self.next() {
            Some(Builder::Utf8(b)) => b.append_option(v),
            other => mismatch(other),
        }
        self
    }

    pub fn d(mut self, v: Option<i32>) -> Self {
        match self.next() {
            Some(Builder::Date(b)) => b.append_option(v),
            other => mismatch(other),
        }
        self
    }

    pub fn f(mut self, v: Option<f64>) -> Self {
        match self.next() {
            Some(Builder::F64(b)) => b.append_option(v),
            other => mismatch(other),
        }
        self
    }

    pub fn b(mut self, v: Option<bool>) -> Self {
        match self.next() {
            Some(Builder::Bool(b)) => b.append_option(v),
            other => mismatch(other),
        }
        self
    }

    pub fn i(mut self, v: i64) -> Self {
        match self.next() {
            Some(Builder::I64(b)) => b.append_value(v),
            other => mismatch(other),
        }
        self
    }

    /// Ends the row (missing columns are NULL) and flushes a full row group.
    pub fn end(mut self) -> Result<(), ImportError> {
        debug_assert_eq!(self.column, self.table.builders.len(), "row has wrong width");
        while self.column < self.table.builders.len() {
            if let Some(b) = self.next() {
                b.append_null();
            }
        }
        self.table.rows += 1;
        if self.table.rows >= ROW_GROUP {
            self.table.flush()?;
        }
        Ok(())
    }
}

/// A value given for a column of another type: a bug in the row code. Keeps the columns
/// the same length (NULL) and fails debug builds.
fn mismatch(builder: Option<&mut Builder>) {
    debug_assert!(false, "column type mismatch");
    if let Some(b) = builder {
        b.append_null();
    }
}
