//! Flight SQL's catalog calls: catalog = a project of the token, schema = "datasets", table =
//! a dataset the project may query at some site (the union of the sites' catalogues, as
//! `verbund sites` shows them), and the server's static SqlInfo.

use crate::Coordinator;
use crate::sites::View;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::SqlInfoDataBuilder;
use arrow_flight::sql::metadata::{GetCatalogsBuilder, GetDbSchemasBuilder, GetTablesBuilder, SqlInfoData};
use arrow_flight::sql::{SqlInfo, SqlSupportedTransaction};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use verbund_security::token::Claims;

/// The one schema of every project.
pub const SCHEMA: &str = "datasets";
/// The one table type.
pub const TABLE: &str = "TABLE";

/// What GetSqlInfo answers, built once.
pub(super) fn sql_info(max_timeout: std::time::Duration) -> Result<SqlInfoData, FlightError> {
    let mut info = SqlInfoDataBuilder::new();
    info.append(SqlInfo::FlightSqlServerName, "verbund coordinator");
    info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    // The Arrow columnar format version.
    info.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    info.append(SqlInfo::FlightSqlServerReadOnly, true);
    info.append(SqlInfo::FlightSqlServerSql, true);
    info.append(SqlInfo::FlightSqlServerSubstrait, false);
    info.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    info.append(SqlInfo::FlightSqlServerCancel, false);
    info.append(SqlInfo::FlightSqlServerStatementTimeout, i32::try_from(max_timeout.as_millis()).unwrap_or(i32::MAX));
    info.append(SqlInfo::SqlDdlCatalog, false);
    info.append(SqlInfo::SqlDdlSchema, false);
    info.append(SqlInfo::SqlDdlTable, false);
    info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    info.build()
}

pub(super) fn catalogs(claims: &Claims, mut builder: GetCatalogsBuilder) -> Result<RecordBatch, FlightError> {
    for project in &claims.projects {
        builder.append(project);
    }
    builder.build()
}

pub(super) fn schemas(claims: &Claims, mut builder: GetDbSchemasBuilder) -> Result<RecordBatch, FlightError> {
    for project in &claims.projects {
        builder.append(project, SCHEMA);
    }
    builder.build()
}

pub(super) fn tables(
    coordinator: &Coordinator,
    claims: &Claims,
    mut builder: GetTablesBuilder,
) -> Result<RecordBatch, FlightError> {
    for project in &claims.projects {
        let sites = coordinator.sites().list_for(&View::Projects(std::slice::from_ref(project)));
        let catalogue = crate::frontend::union_catalogue(sites.iter().filter_map(|s| s.catalogue.as_ref()));
        for dataset in &catalogue.datasets {
            let fields: Vec<Field> = dataset
                .columns
                .iter()
                .filter_map(|c| verbund_query::literal::data_type_of(c.r#type()).map(|t| Field::new(&c.name, t, true)))
                .collect();
            builder.append(project, SCHEMA, &dataset.name, TABLE, &Schema::new(fields))?;
        }
    }
    builder.build()
}
